"""Fixtures for tests that attach real BPF programs.

Safety: every test gets its own cgroup v2 child and its own network namespace; programs
attach there only, pins live in a per-test bpffs directory, and everything is detached,
unpinned and removed in the fixture's finally, also when the test fails. Only the
processes a test started (all inside its own cgroup) are ever killed.

Skips happen only where the kernel or privileges lack the feature; with CI=true they
fail instead, so CI cannot pass with the kernel tests silently skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sockgate.errors import SockgateError

HERE = Path(__file__).parent
CLIENT = HERE / "sockclient.py"
TEST_UID, TEST_GID, OTHER_GID = 4242, 4242, 4343
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def backend() -> str:
    """--backend / SOCKGATE_BACKEND (tests/vm runs the suite with lsm in a guest); read when
    used, since pytest may import this file before the option is parsed."""
    return os.environ.get("SOCKGATE_BACKEND", "auto")


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.kernel)


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"kernel test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _mounted_at(path: str) -> bool:
    """Anything mounted at path (os.path.ismount misses a bind mount of the same fs)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _sockgate_links() -> set[int]:
    """Ids of BPF links whose program is one of sockgate's (names start with sg_)."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    try:
        progs = json.loads(subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
        links = json.loads(subprocess.run([bpftool, "-j", "link", "show"], capture_output=True, text=True).stdout or "[]")
    except (OSError, ValueError):
        return set()
    ours = {p["id"] for p in progs if p.get("name", "").startswith("sg_")}
    return {l["id"] for l in links if l.get("prog_id") in ours}


@pytest.fixture(scope="session", autouse=True)
def leaves_nothing_behind():
    """After the kernel tests: no sockgate link they made is still attached, none of their
    pins, netns or cgroups remain, and a bpffs they had to mount is unmounted again."""
    if os.geteuid() != 0:
        yield
        return
    from sockgate.kernel.loader import KERNEL_BPFFS_ENTRIES, bpffs_mounted, cgroup2_root

    had_bpffs = bpffs_mounted()
    if not had_bpffs:
        # As systemd does, before anything runs: the tests expect a bpffs the host already has
        # (a daemon that mounts one itself unmounts it at unload, under the next test's feet).
        # 1777, as some distributions mount it, so the pin-directory squatting tests have teeth.
        subprocess.run(["mount", "-t", "bpf", "-o", "mode=1777", "bpf", "/sys/fs/bpf"], check=True)
    new_dirs = [d for d in (Path("/run/sockgate"), Path("/run/netns")) if not d.exists()]
    before = _sockgate_links()
    yield
    leaked = _sockgate_links() - before
    left = [str(p) for p in Path("/sys/fs/bpf").glob("sockgate-*")] if bpffs_mounted() else []
    left += [f"netns {p.name}" for p in Path("/run/netns").glob("sgtest-*")] if Path("/run/netns").exists() else []
    try:
        left += [str(p) for p in Path(cgroup2_root()).glob("sockgate-test-*")]
    except SockgateError:
        pass
    # ours to unmount only while it holds nobody's pins (a daemon started beside the tests
    # would lose its programs with it)
    if not had_bpffs and bpffs_mounted() and {p.name for p in Path("/sys/fs/bpf").iterdir()} <= KERNEL_BPFFS_ENTRIES:
        subprocess.run(["umount", "/sys/fs/bpf"], check=False)
    for d in new_dirs:  # made by this session (pin state, `ip netns add`): gone if empty
        while _mounted_at(str(d)):  # iproute2 bind-mounts /run/netns onto itself
            if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
                break
        try:
            d.rmdir()
        except OSError:
            left.append(f"{d} (still in use)")
    assert not leaked and not left, f"kernel tests left behind: links {sorted(leaked)} {left}"


@pytest.fixture(scope="session")
def kernel_ok():
    if os.geteuid() != 0:
        _unavailable("needs root")
    from sockgate.kernel import layout
    from sockgate.kernel.loader import Gate, cgroup2_root, remove_pins

    if not layout.OBJECT.exists():
        _unavailable(f"{layout.OBJECT} not built (make bpf)")
    try:
        cgroup2_root()
    except SockgateError as e:
        _unavailable(str(e))
    if shutil.which("ip") is None:
        _unavailable("iproute2 (ip) is not installed")
    pin = f"/sys/fs/bpf/sockgate-probe-{os.getpid()}"
    try:
        g = Gate.load(pin, attach=False, backend=backend())
        g.close()
    except SockgateError as e:
        _unavailable(f"BPF programs ({backend()} backend) do not load here: {' '.join(str(e).split())[:300]}")
    finally:
        remove_pins(pin)
    return True


@dataclass
class Scope:
    cgroup: str
    netns: str
    netns_name: str
    pin_dir: str
    tmp: Path
    procs: list = field(default_factory=list)

    def client(self, op: str, *, uid: int | None = TEST_UID, gid: int | None = None, groups=(),
               exe: str | None = None, **args) -> dict:
        """Run one socket operation in this scope as `uid` (None: root) and return its result."""
        a = {"cgroup": self.cgroup, "netns": self.netns, "op": op, **args}
        if uid is not None:
            a.update(uid=uid, gid=gid if gid is not None else uid, groups=list(groups))
        r = subprocess.run([exe or sys.executable, str(CLIENT), json.dumps(a)], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"client failed: {r.stderr}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def start(self, op: str, *, uid: int | None = None, exe: str | None = None, **args) -> subprocess.Popen:
        """Start a long-running client (e.g. a server); returns after its first line."""
        a = {"cgroup": self.cgroup, "netns": self.netns, "op": op, **args}
        if uid is not None:
            a.update(uid=uid, gid=uid, groups=[])
        p = subprocess.Popen([exe or sys.executable, str(CLIENT), json.dumps(a)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def daemon(self, policy: Path, *extra: str, journal: Path | None = None, drop_caps: str = "",
               wrap: tuple[str, ...] = ()) -> subprocess.Popen:
        """`sockgate run` in this scope; drop_caps ("cap_sys_admin,..."): without those
        capabilities (capsh drops them from the bounding set before exec); wrap: a command
        it runs under (e.g. nsenter into another network namespace for its own sockets)."""
        args = list(wrap)
        args += ["capsh", f"--drop={drop_caps}", "--", "-c", 'exec "$0" "$@"'] if drop_caps else []
        args += [sys.executable, "-c", "from sockgate.cli import main; main()", "run", "--policy", str(policy),
                "--scope-cgroup", self.cgroup, "--netns", self.netns, "--pin-dir", self.pin_dir]
        args += ["--journal", str(journal)] if journal else ["--no-journal"]
        args += ["--backend", backend()]
        p = subprocess.Popen(args + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(HERE.parent.parent / "src")})
        self.procs.append(p)
        return p

    def write_policy(self, text: str, name: str = "policy.toml") -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p


def served(p: subprocess.Popen) -> list[str]:
    """Stop a `serve` client (close its stdin) and return the peers it accepted."""
    out, _ = p.communicate(timeout=20)
    return json.loads(out.strip().splitlines()[-1])["peers"]


@pytest.fixture
def scope(kernel_ok, tmp_path):
    from sockgate.kernel.loader import cgroup2_root, remove_pins

    tag = uuid.uuid4().hex[:8]
    cg = os.path.join(cgroup2_root(), f"sockgate-test-{tag}")
    ns = f"sgtest-{tag}"
    os.mkdir(cg)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    s = Scope(cgroup=cg, netns=f"/run/netns/{ns}", netns_name=ns, pin_dir=f"/sys/fs/bpf/sockgate-test-{tag}",
              tmp=tmp_path)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield s
    finally:
        for p in s.procs:           # only what this test started
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        remove_pins(s.pin_dir)
        from sockgate.daemon import lock_file
        lock_file(s.pin_dir).unlink(missing_ok=True)
        _empty_cgroup(cg)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _empty_cgroup(cg: str) -> None:
    """Kill what is left in the test's own cgroup (all started by the test), then remove it."""
    for _ in range(50):
        try:
            pids = [int(p) for p in Path(cg, "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    try:
        os.rmdir(cg)
    except OSError:
        pass


@pytest.fixture
def tmpfs_python(scope):
    """This Python copied onto /run (tmpfs here and in the test guest): another inode for a
    program rule to name, and one whose identity stat() tells right: on overlayfs (the guest's
    root) stat() reports the overlay's device while the kernel sees the file underneath (the
    limit README states)."""
    d = Path(f"/run/sockgate-test-{os.getpid()}-{scope.netns_name}-py")
    d.mkdir(mode=0o755)
    copy = d / "python3"
    shutil.copy2(os.path.realpath(sys.executable), copy)
    try:
        yield str(copy)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gate(scope):
    """Programs loaded and attached in the test scope, without a daemon."""
    from sockgate.kernel.loader import Gate

    g = Gate.load(scope.pin_dir, scope_cgroup=scope.cgroup, netns=scope.netns, backend=backend())
    try:
        yield g
    finally:
        g.unload()


def install_text(gate, text: str):
    """Parse, compile and install a policy given as TOML text; returns the Policy."""
    from sockgate.kernel import tables
    from sockgate.policy.compile import compile_policy
    from sockgate.policy.parse import parse_policy

    p = parse_policy(text, "test.toml")
    tables.install(gate, compile_policy(p))
    return p


# ---- helpers for the bypass suite (tests/kernel/test_bypass*.py) ------------------------

OTHER_UID = 4343       # a second unprivileged test user (its primary group is OTHER_GID)


def run_script(scope: Scope, calls: list[dict], *, uid: int | None = None, on_sync=None,
               timeout: float = 120, exe: str | None = None) -> list[dict]:
    """Run sockclient.py's "script" op in the scope (as root unless uid) and return one result
    per call. A {"do": "sync", "tag": T} call stops the client until on_sync(T) returned."""
    a = {"cgroup": scope.cgroup, "netns": scope.netns, "op": "script", "calls": calls}
    if uid is not None:
        a.update(uid=uid, gid=uid, groups=[])
    arg = json.dumps(a)
    if len(arg) > 64_000:  # past the kernel's limit for one argument: hand it over in a file
        f = scope.tmp / f"script-{uuid.uuid4().hex[:8]}.json"
        f.write_text(arg)
        f.chmod(0o644)
        arg = f"@{f}"
    p = subprocess.Popen([exe or sys.executable, str(CLIENT), arg], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scope.procs.append(p)
    deadline = time.monotonic() + timeout
    last = None
    try:
        for line in p.stdout:
            msg = json.loads(line)
            if "sync" in msg:
                if on_sync is not None:
                    on_sync(msg["sync"])
                p.stdin.write("\n")
                p.stdin.flush()
            else:
                last = msg
            if time.monotonic() > deadline:
                raise AssertionError(f"script client ran longer than {timeout:.0f} s")
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    if p.returncode != 0 or last is None:
        raise AssertionError(f"script client failed (rc {p.returncode}): {p.stderr.read()}")
    return last["results"]


def wait_loaded(p: subprocess.Popen, generation: int = 1, timeout: float = 60) -> str:
    """Read a daemon's stderr until it reports the policy generation loaded, and, on a
    first start, its programs attached (the policy is installed before they are: fail
    closed; a test that looks at links right after "loaded" would race the attach)."""
    seen = []
    loaded = False
    deadline = time.monotonic() + timeout
    os.set_blocking(p.stderr.fileno(), False)
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if line:
            seen.append(line)
            loaded = loaded or f"generation {generation}," in line
            if loaded and (generation != 1 or any("attached " in s or "reopened" in s for s in seen)):
                return "".join(seen)
        elif p.poll() is not None:
            break
        else:
            time.sleep(0.05)
    rest = p.stderr.read() if p.poll() is not None else ""
    raise AssertionError(f"daemon did not load generation {generation} in {timeout:.0f} s:\n{''.join(seen)}{rest or ''}")


def journal_entries(journal: Path, want=None, timeout: float = 10.0) -> list:
    """The journal's entries; with want(entries) -> bool, re-read until it holds (or timeout)."""
    from sockgate.journal import Journal

    deadline = time.monotonic() + timeout
    while True:
        entries = []
        if journal.exists():
            try:
                with Journal.open(journal, readonly=True) as j:
                    entries = list(j.entries())
            except SockgateError:
                entries = []
        if want is None or want(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)
