"""Load/unload leave nothing behind, in the same process that loaded (the daemon tests
only show it across processes, where exit closes every fd anyway)."""

from __future__ import annotations

import subprocess

from conftest import _sockgate_links, backend

from sockgate.kernel.loader import Gate, bpffs_mounted


def _bpffs_mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for l in f if l.split()[4] == "/sys/fs/bpf" and l.partition(" - ")[2].startswith("bpf "))


def test_unload_detaches_at_once_in_the_loading_process(scope):
    before = _sockgate_links()
    g = Gate.load(scope.pin_dir, scope_cgroup=scope.cgroup, netns=scope.netns, backend=backend())
    assert len(_sockgate_links() - before) >= 4
    g.unload()
    assert _sockgate_links() - before == set()
    shown = subprocess.run(["bpftool", "cgroup", "show", scope.cgroup], capture_output=True, text=True)
    assert shown.stdout.strip() == ""


def test_loading_twice_mounts_bpffs_once(scope):
    g = Gate.load(scope.pin_dir, scope_cgroup=scope.cgroup, netns=scope.netns, backend=backend())
    try:
        g2 = Gate.load(scope.pin_dir + "-second", attach=False, backend=backend())
        g2.close()
        assert bpffs_mounted() and _bpffs_mounts() == 1
    finally:
        g.unload()
