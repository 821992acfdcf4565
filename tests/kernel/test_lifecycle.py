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


def test_unload_unmounts_a_bpffs_sockgate_mounted_once_it_is_empty(tmp_path):
    """A bpffs sockgate had to mount is unmounted by the unload that leaves it holding only
    the kernel's own entries (maps.debug, progs.debug); another program's pins there keep it
    mounted; a bpffs sockgate did not mount is never unmounted. (Found: `make run` then
    `sockgate unload` left a bpffs mounted at /sys/fs/bpf.)"""
    import os

    from sockgate.kernel.loader import _mounted_marker, claim_pin_dir, ensure_bpffs, release_bpffs, remove_pins

    base = str(tmp_path / "bpf")
    pin = f"{base}/sockgate-x"
    try:
        assert ensure_bpffs(pin) and bpffs_mounted(base) and _mounted_marker(base).exists()
        claim_pin_dir(pin)
        os.mkdir(f"{base}/someone-else")          # another program's pin directory
        remove_pins(pin)
        assert bpffs_mounted(base) and _mounted_marker(base).exists()
        os.rmdir(f"{base}/someone-else")
        claim_pin_dir(pin)
        remove_pins(pin)                            # the last of it: unmounted
        assert not bpffs_mounted(base) and not _mounted_marker(base).exists()
        subprocess.run(["mount", "-t", "bpf", "bpf", base], check=True)   # not ours
        assert not release_bpffs(base) and bpffs_mounted(base)
        subprocess.run(["umount", base], check=True)
        assert ensure_bpffs(pin)                    # ours, then unmounted by someone and mounted again
        subprocess.run(["umount", base], check=True)
        other = tmp_path / "other"
        other.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)  # takes the freed mount ID
        try:
            subprocess.run(["mount", "-t", "bpf", "bpf", base], check=True)
            assert not release_bpffs(base) and bpffs_mounted(base), "unmounted a bpffs someone else mounted"
            assert not _mounted_marker(base).exists()   # the stale note is dropped
        finally:
            subprocess.run(["umount", str(other)], check=False)
    finally:
        while bpffs_mounted(base):
            subprocess.run(["umount", base], check=False)
        _mounted_marker(base).unlink(missing_ok=True)
