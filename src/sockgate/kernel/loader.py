"""Load, attach, pin, reopen and unload sockgate's kernel programs.

State lives under a bpffs pin directory (default /sys/fs/bpf/sockgate):
    maps/<name>    every map, so a restarted daemon (or `status`) reopens the same tables
    links/<prog>   every attachment, so enforcement survives the daemon being killed
and /run/sockgate/<pin dir>.json holds scope, backend, policy digest and rule names for
`status` (bpffs holds only BPF objects; /run, like the pins, is gone after a reboot).
Removing the pins detaches everything (`unload`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sockgate import safedir
from sockgate.errors import KernelError
from sockgate.kernel import layout as L
from sockgate.kernel import libbpf

DEFAULT_PIN_DIR = "/sys/fs/bpf/sockgate"
STATE_DIR = Path("/run/sockgate")


def state_path(pin_dir: str) -> Path:
    return STATE_DIR / (pin_dir.strip("/").replace("/", "_") + ".json")
# every map of the object, pinned (a restarted daemon and `status` reopen them)
MAP_NAMES = ("sg_config", "sg_policy", "sg_rules", "sg_bitmaps", "sg_users", "sg_groups", "sg_programs",
             "sg_addrs", "sg_ports", "sg_owners", "sg_listeners", "sg_listener_cookies", "sg_listener_keys",
             "sg_flows", "sg_flows_seen", "sg_shadow", "sg_shadow_seen", "sg_rates", "sg_folded", "sg_folded_seen", "sg_refused_listeners", "sg_hits", "sg_stats", "sg_events",
             "sg_scratch", "sg_sync", "sg_sync_inner", "sg_scope")

# Programs both backends attach: UDP binds (listen rules), socket release (owners, flow
# counts), listen() (the listener index; on cgroup also the judgement of never-bound
# listeners), TCP accept (sk_lookup refuses a client at once), inbound UDP datagrams.
_COMMON = {
    "sg_bind4": "cgroup",
    "sg_bind6": "cgroup",
    "sg_release": "cgroup",
    "sg_listen_cb": "cgroup",
    "sg_accept": "netns",
    "sg_ingress": "cgroup",
}
# backend -> {program name: attach kind}
BACKENDS = {
    # cgroup hooks: connect and sends with an address (and connected UDP-Lite sends, which
    # have no connect hook); TCP listen rules at bind()
    "cgroup": {"sg_connect4": "cgroup", "sg_connect6": "cgroup", "sg_sendmsg4": "cgroup",
               "sg_sendmsg6": "cgroup", "sg_egress": "cgroup", **_COMMON},
    # BPF LSM: connect(), sends with an address and listen() themselves (any errno, unbound
    # listen() too)
    "lsm": {"sg_lsm_connect": "lsm", "sg_lsm_sendmsg": "lsm", "sg_lsm_sctp_connectx": "lsm",
            "sg_lsm_listen": "lsm", **_COMMON},
}
# backend -> sg_config flags
BACKEND_FLAGS = {"cgroup": L.CFG_LISTEN_AT_BIND, "lsm": 0}
TEST_PROGRAM = "sg_probe"  # decide() under BPF_PROG_TEST_RUN: loaded only for the differential test
ALL_PROGRAMS = tuple(dict.fromkeys([p for b in BACKENDS.values() for p in b] + [TEST_PROGRAM]))
BACKEND_PREFERENCE = ("lsm", "cgroup")


@dataclass
class ShadowState:
    slot: int
    generation: int
    policy_source: str
    policy_digest: str
    rule_names: list[str]
    mode: str
    since_ns: int           # when it was loaded
    policy_text: str = ""   # what `policy promote` writes to the daemon's policy file


@dataclass
class PinState:
    backend: str
    scope_cgroup: str
    netns: str
    policy_source: str = ""
    policy_digest: str = ""
    generation: int = 0
    active_slot: int = 0
    rule_names: list[str] = field(default_factory=list)
    errno: int = 1
    mode: str = "enforce"
    audit_levels: list[str] = field(default_factory=list)
    shadow: ShadowState | None = None   # a candidate decided beside the active policy, never enforced
    clock_offset_ns: int = 0            # wall clock - boot clock the ring's events are stamped with

    def __post_init__(self):
        if isinstance(self.shadow, dict):  # as read back from the state file
            self.shadow = ShadowState(**self.shadow)

    @property
    def last_generation(self) -> int:
        """The newest generation handed out (active or shadow): the next load's is one more."""
        return max(self.generation, self.shadow.generation if self.shadow else 0)


def cgroup2_root() -> str:
    """Mount point of the cgroup v2 hierarchy (unified or hybrid layout)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if parts[sep + 1] == "cgroup2":
                return parts[4]
    raise KernelError("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)")


def bpffs_mount_id(path: str = "/sys/fs/bpf") -> int | None:
    """The mount ID of the bpffs mounted exactly at `path` (the topmost), or None. (mountinfo:
    the ID is field 1, the mount point field 5, the filesystem type the first after " - ".)"""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            parts = fields.split()
            if parts[4] == path:
                found = int(parts[0]) if fs.split()[0] == "bpf" else None  # a later mount hides earlier ones
    return found


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    return bpffs_mount_id(path) is not None


def _mounted_marker(base: str) -> Path:
    """Where sockgate notes that it mounted the bpffs at `base` (bpffs holds no plain files)."""
    return STATE_DIR / (base.strip("/").replace("/", "_") + ".bpffs")


# what the kernel itself puts in every bpffs (bpf_preload's iterators): not anyone's pins
KERNEL_BPFFS_ENTRIES = frozenset({"maps.debug", "progs.debug"})


def ensure_bpffs(pin_dir: str) -> bool:
    """Mount bpffs at pin_dir's parent unless one is there; True if we mounted it (noted
    with its mount ID, so `unload` unmounts that mount, and no other, once it holds nothing
    but the kernel's own entries). (Mounting again would hide the pins of the mount below:
    they could never be removed.)"""
    base = str(Path(pin_dir).parent)
    if bpffs_mounted(base):
        return False
    Path(base).mkdir(parents=True, exist_ok=True)
    # 0700, not the 1777 some distributions mount it with: nobody else may create the pin directory
    r = subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", base], capture_output=True, text=True)
    if r.returncode != 0:
        raise KernelError(f"cannot mount bpffs at {base}: {r.stderr.strip()}")
    safedir.private_dir(STATE_DIR, error=KernelError, what="run state directory")
    _mounted_marker(base).write_text(f"{bpffs_mount_id(base)}\n")
    return True


def release_bpffs(base: str) -> bool:
    """Unmount the bpffs at `base` if it is the one sockgate mounted (same mount ID: not one
    someone mounted there since; the kernel reuses freed IDs, so an empty bpffs mounted there
    since may still pass, which costs nothing: it holds no pins) and nothing but the kernel's
    own entries is left in it (another program's pins keep it mounted). True if unmounted."""
    marker = _mounted_marker(base)
    try:
        ours = int(marker.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if bpffs_mount_id(base) != ours:  # gone, or someone else's now: the note is stale
        marker.unlink()
        return False
    if any(p.name not in KERNEL_BPFFS_ENTRIES for p in Path(base).iterdir()):
        return False
    if subprocess.run(["umount", base], capture_output=True, text=True).returncode != 0:
        return False
    marker.unlink()
    return True


def claim_pin_dir(pin_dir: str) -> None:
    """Create the pin directory as sockgate's own (root, 0700). bpffs is often mounted 1777:
    a directory someone else made there first is removed if it holds no pins (only what
    can load BPF can pin, and that is root here), else refused. Afterwards nobody else
    can rename or remove what is in it (the parent is sticky, the directory private)."""
    for _ in range(5):
        reason = safedir.problem(pin_dir)
        if reason is None:
            break
        p = Path(pin_dir)
        if not p.is_dir() or p.is_symlink() or any(not d.is_dir() or d.is_symlink() for d in p.rglob("*")):
            raise KernelError(f"pin directory {pin_dir} is not sockgate's ({reason}) and holds files; "
                              f"remove it yourself after checking what it is")
        shutil.rmtree(p)  # fd-based: follows no symlink
    else:
        raise KernelError(f"pin directory {pin_dir} keeps being re-created by someone else ({reason})")
    safedir.private_dir(pin_dir, error=KernelError, what="pin directory")


def lsm_active() -> bool:
    """Is BPF among the kernel's active LSMs? (The kernel may still refuse to load them.)"""
    try:
        return "bpf" in open("/sys/kernel/security/lsm").read().split(",")
    except OSError:
        return True  # securityfs not mounted: let the load decide


def candidate_backends(requested: str = "auto") -> list[str]:
    if requested == "auto":
        return [b for b in BACKEND_PREFERENCE if b != "lsm" or lsm_active()]
    if requested not in BACKENDS:
        raise KernelError(f"unknown backend {requested!r} (choose auto, {', '.join(BACKENDS)})")
    return [requested]


class Gate:
    """A loaded (or reopened) sockgate instance: its map fds and pin directory."""

    def __init__(self, pin_dir: str, maps: dict[str, int], state: PinState, progs: dict[str, int] | None = None,
                 obj=None):
        self.pin_dir = pin_dir
        self.maps = maps
        self.state = state
        self.progs = progs or {}
        self._obj = obj

    # -- lifecycle -----------------------------------------------------------------------

    @staticmethod
    def is_pinned(pin_dir: str = DEFAULT_PIN_DIR) -> bool:
        """Pinned by sockgate: a directory another user made is not a loaded sockgate."""
        return ((Path(pin_dir) / "links").exists() or (Path(pin_dir) / "maps").exists()) \
            and safedir.problem(pin_dir) is None

    def detached(self) -> list[str]:
        """The backend's programs that are no longer attached: link pin removed, or the link
        detached in place (`bpftool link detach`: its cgroup or netns reads as 0)."""
        gone = []
        for name, kind in BACKENDS[self.state.backend].items():
            try:
                fd = libbpf.obj_get(str(Path(self.pin_dir) / "links" / name))
            except KernelError:
                gone.append(name)
                continue
            try:
                if kind != "lsm" and not libbpf.link_target(fd):
                    gone.append(name)
            finally:
                os.close(fd)
        return gone

    @classmethod
    def load(cls, pin_dir: str = DEFAULT_PIN_DIR, *, scope_cgroup: str | None = None, netns: str | None = None,
             backend: str = "auto", attach: bool = True, object_path: Path | None = None,
             prepare=None, with_probe: bool = False) -> "Gate":
        """Load the object, pin its maps, attach the backend's programs and pin the links.

        `prepare(gate)` runs after the maps exist and before any program is attached: the
        daemon installs the policy there, so the first decision already has it (a failing
        install leaves nothing attached, instead of everything allowed)."""
        if os.geteuid() != 0:
            raise KernelError("loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
        obj_path = Path(object_path or L.OBJECT)
        if not obj_path.exists():
            raise KernelError(f"{obj_path} is missing; build it with `make bpf`")
        scope_cgroup = scope_cgroup or cgroup2_root()
        netns = netns or "/proc/self/ns/net"  # the daemon's own (the host's, under systemd)
        for p, what in ((scope_cgroup, "cgroup"), (netns, "network namespace")):
            if not os.path.exists(p):
                raise KernelError(f"{what} {p} does not exist")
        if attach and cls.is_pinned(pin_dir):
            raise KernelError(f"sockgate is already loaded at {pin_dir}; `sockgate unload` first")
        ensure_bpffs(pin_dir)
        if attach:
            claim_pin_dir(pin_dir)
        refusals = []
        for candidate in candidate_backends(backend):
            try:
                obj, maps, progs = cls._load_object(obj_path, candidate, with_probe)
                backend = candidate
                break
            except KernelError as e:
                refusals.append(f"{candidate}: {str(e).splitlines()[0]}")
        else:
            raise KernelError("no kernel backend loads here:\n  " + "\n  ".join(refusals))
        state = PinState(backend=backend, scope_cgroup=scope_cgroup, netns=netns)
        gate = cls(pin_dir, maps, state, progs, obj)
        if attach:
            try:
                gate._pin_maps()
                gate._write_config()
                if prepare:
                    prepare(gate)
                gate._attach(obj, backend, scope_cgroup, netns)
                gate.save_state()
            except BaseException:
                gate.unload()
                raise
        return gate

    @staticmethod
    def _load_object(obj_path: Path, backend: str, with_probe: bool = False):
        """Open and load the object with only `backend`'s programs (and the probe if asked:
        every program loaded is verified, which takes seconds on slow machines)."""
        lib = libbpf.lib()
        libbpf.take_log()
        obj = libbpf.check_ptr(lib.bpf_object__open_file(str(obj_path).encode(), None), f"open {obj_path}")
        try:
            mismatches = L.layout_mismatches(lambda name: libbpf.btf_struct(obj, name))
            if mismatches:  # before anything is loaded: tables written in the wrong layout would misjudge
                raise KernelError(f"{obj_path} does not match sockgate's layout (rebuild with `make bpf`):\n  "
                                  + "\n  ".join(mismatches))
            wanted = set(BACKENDS[backend]) | ({TEST_PROGRAM} if with_probe else set())
            for name in ALL_PROGRAMS:
                prog = libbpf.check_ptr(lib.bpf_object__find_program_by_name(obj, name.encode()), f"find {name}")
                lib.bpf_program__set_autoload(prog, name in wanted)
            libbpf.check_rc(lib.bpf_object__load(obj), f"load the {backend} programs (the verifier's log follows)")
            maps = {n: libbpf.check_rc(lib.bpf_map__fd(
                libbpf.check_ptr(lib.bpf_object__find_map_by_name(obj, n.encode()), f"find map {n}")), n)
                for n in MAP_NAMES}
            progs = {n: lib.bpf_program__fd(lib.bpf_object__find_program_by_name(obj, n.encode()))
                     for n in wanted}
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        return obj, maps, progs

    @classmethod
    def open(cls, pin_dir: str = DEFAULT_PIN_DIR) -> "Gate":
        """Reopen a pinned instance (restarted daemon, `status`, `unload`)."""
        state_file = state_path(pin_dir)
        if not cls.is_pinned(pin_dir):
            raise KernelError(f"sockgate is not loaded (nothing pinned at {pin_dir})")
        if not state_file.exists():
            raise KernelError(f"{state_file} is missing although {pin_dir} is pinned; `sockgate unload` cleans up")
        try:
            state = PinState(**json.loads(state_file.read_text()))
        except (ValueError, TypeError) as e:
            raise KernelError(f"{state_file} is unreadable ({e}); `sockgate unload` removes it") from None
        maps = {}
        for n in MAP_NAMES:
            p = Path(pin_dir) / "maps" / n
            if p.exists():
                maps[n] = libbpf.obj_get(str(p))
        return cls(pin_dir, maps, state)

    def _pin_maps(self) -> None:
        d = Path(self.pin_dir) / "maps"
        d.mkdir(mode=0o700, exist_ok=True)
        lib = libbpf.lib()
        for n in MAP_NAMES:
            m = lib.bpf_object__find_map_by_name(self._obj, n.encode())
            libbpf.check_rc(lib.bpf_map__pin(m, str(d / n).encode()), f"pin map {n}")

    def _attach(self, obj, backend: str, scope_cgroup: str, netns: str) -> None:
        lib = libbpf.lib()
        d = Path(self.pin_dir) / "links"
        d.mkdir(mode=0o700, exist_ok=True)
        cg_fd = os.open(scope_cgroup, os.O_RDONLY | os.O_DIRECTORY)
        ns_fd = os.open(netns, os.O_RDONLY)
        try:
            # LSM programs see every task: they test membership of the scope cgroup
            libbpf.map_update(self.maps["sg_scope"], ctypes.c_uint32(0), ctypes.c_uint32(cg_fd))
            for name, kind in BACKENDS[backend].items():
                prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                if kind == "lsm":
                    link = libbpf.check_ptr(lib.bpf_program__attach(prog), f"attach {name}")
                elif kind == "cgroup":
                    link = libbpf.check_ptr(lib.bpf_program__attach_cgroup(prog, cg_fd), f"attach {name} to {scope_cgroup}")
                else:
                    link = libbpf.check_ptr(lib.bpf_program__attach_netns(prog, ns_fd), f"attach {name} to {netns}")
                libbpf.check_rc(lib.bpf_link__pin(link, str(d / name).encode()), f"pin link {name}")
                # destroy only closes our fd; the pin holds the attachment (disconnect would
                # skip that close and keep the link alive as long as this process lives)
                lib.bpf_link__destroy(link)
        finally:
            os.close(cg_fd)
            os.close(ns_fd)

    def _write_config(self) -> None:
        cfg = L.Config(active_slot=self.state.active_slot, ringbuf_wakeup_bytes=256 * ctypes.sizeof(L.Event),
                       flags=BACKEND_FLAGS[self.state.backend], netns_ino=os.stat(self.state.netns).st_ino)
        libbpf.map_update(self.maps["sg_config"], ctypes.c_uint32(0), cfg)

    def save_state(self) -> None:
        p = state_path(self.pin_dir)
        safedir.private_dir(p.parent, error=KernelError, what="run state directory")
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        os.replace(tmp, p)

    def close(self) -> None:
        """Drop our handles; pinned programs keep enforcing."""
        for fd in self.maps.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.maps = {}
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)
            self._obj = None

    def unload(self) -> None:
        """Detach everything and remove every pin."""
        self.close()
        remove_pins(self.pin_dir)

    # -- kernel syncing --------------------------------------------------------------------

    def wait_for_programs(self) -> None:
        """Return once no program can still be reading what it read before this call."""
        inner = self.maps["sg_sync_inner"]
        libbpf.map_update(self.maps["sg_sync"], ctypes.c_uint32(0), ctypes.c_int(inner))

    # -- counters ----------------------------------------------------------------------------

    def _percpu_sum(self, map_name: str, index: int) -> int:
        ncpu = libbpf.num_possible_cpus()
        buf = (ctypes.c_uint64 * ncpu)()
        if not libbpf.map_lookup(self.maps[map_name], ctypes.c_uint32(index), buf):
            return 0
        return sum(buf)

    def stats(self) -> dict[str, int]:
        """The kernel's counters since load (never reset by a policy swap): decisions made,
        selected for the journal, dropped (ring buffer full), inbound UDP datagrams
        refused, UDP decisions made without a flow slot (flow table full)."""
        return {
            "decisions": self._percpu_sum("sg_stats", L.STAT_DECISIONS),
            "selected": self._percpu_sum("sg_stats", L.STAT_SELECTED),
            "dropped": self._percpu_sum("sg_stats", L.STAT_DROPPED),
            "udp_dropped": self._percpu_sum("sg_stats", L.STAT_UDP_DROPPED),
            "flows_full": self._percpu_sum("sg_stats", L.STAT_FLOWS_FULL),
            "shadow_unkeyed": self._percpu_sum("sg_stats", L.STAT_SHADOW_UNKEYED),
            "folded_unkeyed": self._percpu_sum("sg_stats", L.STAT_FOLDED_UNKEYED),
        }

    def hits(self, shadow: bool = False) -> tuple[list[int], list[int]]:
        """(per-rule hit counts, per-exit default counts) of the active policy (or the shadow's:
        it decides every call too)."""
        sh = self.state.shadow if shadow else None
        slot, names = (sh.slot, sh.rule_names) if sh else (self.state.active_slot, self.state.rule_names)
        base = slot * L.HIT_SLOTS
        rules = [self._percpu_sum("sg_hits", base + i) for i in range(len(names))]
        defaults = [self._percpu_sum("sg_hits", base + L.MAX_RULES + e) for e in range(L.EXITS)]
        return rules, defaults

    def verdicts(self) -> tuple[list[int], list[int]]:
        """(per-rule verdicts, per-exit default verdicts) of the active policy as the kernel
        holds them (SG_ALLOWED, SG_REJECTED, SG_AUDIT_REJECTED): what each hit counter counts."""
        slot = self.state.active_slot
        info, hdr = L.RuleInfo(), L.PolicyHeader()
        rules = [info.verdict if libbpf.map_lookup(self.maps["sg_rules"], ctypes.c_uint32(slot * L.MAX_RULES + i),
                                                   info) else L.ALLOWED
                 for i in range(len(self.state.rule_names))]
        libbpf.map_lookup(self.maps["sg_policy"], ctypes.c_uint32(slot), hdr)
        return rules, list(hdr.default_verdict)


def remove_pins(pin_dir: str) -> list[str]:
    """Unpin links (detaching programs), maps and state. Returns what was removed."""
    removed = []
    sp = state_path(pin_dir)
    if sp.exists():
        sp.unlink()
        removed.append(str(sp))
    base = Path(pin_dir)
    if not os.path.lexists(base):  # never pinned (attach=False), or removed already
        release_bpffs(str(base.parent))
        return removed
    reason = safedir.problem(base)
    if reason:  # another user's directory (or a symlink planted in it) must not steer what root deletes
        raise KernelError(f"{pin_dir} is not sockgate's pin directory ({reason}); nothing removed")
    for sub in ("links", "maps"):
        d = base / sub
        if d.is_dir() and not d.is_symlink():
            for p in sorted(d.iterdir()):
                p.unlink()
                removed.append(str(p))
            d.rmdir()
    for p in base.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()
        removed.append(str(p))
    base.rmdir()
    release_bpffs(str(base.parent))
    return removed
