"""The daemon: kernel events -> journal (-> monitor), policy loads, signals.

    policy --compile--> kernel tables (atomic swap)      SIGHUP: reload the policy file
    ring buffer --decode+enrich--> journal entries        SIGTERM/SIGINT: seal and stop
    kernel drop counter --> gap records                    programs stay pinned: enforcement
    journal --> monitor thread (if alert rules exist)      outlives the daemon until `unload`
    --metrics: Prometheus endpoint, read at scrape time (sockgate.metrics)
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import gc
import json
import os
import pwd
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sockgate import lockout, safedir
from sockgate.errors import KernelError, SockgateError, UsageError
from sockgate.journal import Journal
from sockgate.journal.query import Filter
from sockgate.kernel import events as kevents
from sockgate.kernel import counts as kcounts
from sockgate.kernel import flows as kflows
from sockgate.kernel import folds as kfolds
from sockgate.kernel import shadow as kshadow
from sockgate.kernel import layout as L
from sockgate.kernel import tables
from sockgate.kernel.loader import DEFAULT_PIN_DIR, STATE_DIR, Gate, remove_pins
from sockgate.kernel.owners import seed_owners
from sockgate.locking import lock_exclusive, release_and_remove
from sockgate.policy.compile import compile_policy
from sockgate.policy.model import Policy
from sockgate.policy.parse import load_configured_policy, parse_policy
from sockgate.record import ALERTS_FILE, JOURNAL_DIR, MAPPED_PREFIX, MONITOR_STATE_DIR, POLICY_FILE, Code, Entry, EntryType, Outcome, Source

# exit numbers (SG_EXIT_*) and verdicts (SG_*) as the kernel reports them
_EXITS = kevents.EXIT_NAMES
# entry type per exit point, for stream sockets and for UDP (IBM i's O and I entries)
_ENTRY_TYPES = (EntryType.CONNECT, EntryType.LISTEN, EntryType.ACCEPT)
_UDP_ENTRY_TYPES = (EntryType.UDP_OUTBOUND, EntryType.LISTEN, EntryType.UDP_INBOUND)
_OUTCOMES = (Outcome.ALLOWED, Outcome.REJECTED, Outcome.AUDIT_REJECTED)
_PROTOCOLS = {6: "tcp", 17: "udp", 136: "udplite", 262: "mptcp", 132: "sctp"}
_UDP = (17, 136)
_SPECIAL_RULES = {L.RULE_LISTEN_REFUSED: "listen-refused", L.RULE_UNPARSED: "unparsed-address"}
DEFAULT_ALERTS = ALERTS_FILE
DEFAULT_MONITOR_STATE = MONITOR_STATE_DIR
CLOCK_KEEP_NS = 10_000_000  # a pinned ring's clock offset is kept while within 10 ms of the clock
MERGE_MAX = 50_000  # entries per journal transaction when the writer catches up
FLOW_SWEEP_S = 1.0  # how often UDP flow counts become summary entries
DETACH_CHECK_S = 1.0  # how often the daemon checks its programs are still attached


@dataclass
class RunOptions:
    policy: str | None = None
    journal_dir: str | None = JOURNAL_DIR   # None: no journal
    scope_cgroup: str | None = None
    netns: str | None = None
    pin_dir: str = DEFAULT_PIN_DIR
    backend: str = "auto"
    alerts: str | None = None
    monitor_state: str = DEFAULT_MONITOR_STATE
    print_events: bool = False
    force: bool = False          # start even if the policy locks out a guarded call (sockgate.lockout)
    metrics: str | None = None   # a loopback ADDRESS:PORT or unix:PATH (sockgate.metrics)
    fleet_dir: str | None = None  # enrolled with a collector: ship the journal (sockgate.fleet.ship)


def lock_file(pin_dir: str) -> Path:
    return STATE_DIR / (pin_dir.strip("/").replace("/", "_") + ".lock")


def hold_daemon_lock(pin_dir: str) -> int:
    """The running daemon holds an flock on its lock file (the kernel drops it when the
    process ends, kill -9 included) with its pid written inside. Returns the held fd."""
    safedir.private_dir(STATE_DIR, error=KernelError, what="run state directory")
    fd = lock_exclusive(lock_file(pin_dir), error=KernelError,
                        busy=f"another sockgate daemon runs for {pin_dir} (pid {running_pid(pin_dir)})")
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def running_pid(pin_dir: str) -> int | None:
    """The pid of the daemon holding the lock now; None if no process holds it (a pid
    number alone may have been recycled)."""
    try:
        fd = os.open(lock_file(pin_dir), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        try:
            return int(os.pread(fd, 32, 0) or b"0") or None
        except ValueError:
            return None
    finally:
        os.close(fd)


def control_path(pin_dir: str) -> Path:
    return STATE_DIR / (pin_dir.strip("/").replace("/", "_") + ".control.json")


def result_path(pin_dir: str) -> Path:
    return STATE_DIR / (pin_dir.strip("/").replace("/", "_") + ".control-result.json")


def request(pin_dir: str, action: str, timeout: float = 60, **args) -> dict:
    """Ask the running daemon to act (a request file in the root-only run directory, then
    SIGUSR2) and wait for its answer. Raises the daemon's refusal as a SockgateError."""
    if os.geteuid() != 0:  # the request file and the daemon's signal are root's alone
        raise KernelError("asking the daemon to load, drop or promote a policy needs root")
    req_id = os.urandom(8).hex()
    safedir.private_dir(STATE_DIR, error=KernelError, what="run state directory")
    safedir.write_atomic(control_path(pin_dir), json.dumps({"id": req_id, "action": action, **args}), 0o600)
    if not signal_daemon(pin_dir, signal.SIGUSR2):
        control_path(pin_dir).unlink(missing_ok=True)
        raise KernelError(f"no sockgate daemon is running for {pin_dir} (`sockgate run` first)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = json.loads(result_path(pin_dir).read_text())
        except (OSError, ValueError):
            reply = None
        if reply and reply.get("id") == req_id:
            result_path(pin_dir).unlink(missing_ok=True)
            if not reply.get("ok"):
                err = {"LockoutError": SockgateError, "UsageError": UsageError}.get(reply.get("kind"), KernelError)
                e = err(reply.get("error", "refused"))
                e.exit_code = int(reply.get("exit_code", 1))
                raise e
            return reply
        time.sleep(0.05)
    raise KernelError(f"the daemon did not answer within {timeout:.0f} s (see its log)")


def signal_daemon(pin_dir: str, sig: int) -> int | None:
    """Signal the daemon by a pidfd opened while it held the lock: never a process that
    took over its pid number after it ended. Returns the pid signalled."""
    pid = running_pid(pin_dir)
    if not pid:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        if running_pid(pin_dir) != pid:  # it ended between the two looks: the pidfd may be another's
            return None
        signal.pidfd_send_signal(pidfd, sig)
        return pid
    except ProcessLookupError:
        return None
    finally:
        os.close(pidfd)


# Enricher.entries unpacks ring-buffer tuples by position (the hot path); the order is the
# BTF-checked mirror's, and this fails at import if they ever part.
assert kevents.EVENT_FIELDS == ("boot_ns", "ino", "cookie", "dev", "pid", "tid", "uid", "euid", "gid", "egid",
                                "rule", "generation", "exit", "verdict", "family", "flags", "protocol",
                                "local_port", "remote_port", "pad", "local_addr", "remote_addr", "comm",
                                "exe_name", "ngroups", "groups", "shadow_rule", "shadow_generation",
                                "shadow_verdict", "pad2"), \
    kevents.EVENT_FIELDS


class Enricher:
    """Turns kernel events into journal entries: names for ids, paths for executables,
    rule names for rule indexes (per policy generation, so a reload mid-batch is exact)."""

    def __init__(self, host: str):
        self.host = host
        self.rule_names: dict[int, list[str]] = {}
        self._users: dict[int, str | None] = {}
        self._paths: dict[tuple[int, int], str] = {}
        # the same few addresses and names recur: text made once per distinct raw value
        self.addr = functools.lru_cache(maxsize=65536)(kevents.addr_text)
        self.name = functools.lru_cache(maxsize=65536)(kevents.c_string)
        self.group_text = functools.lru_cache(maxsize=65536)(
            lambda raw, n: ",".join(map(str, kevents.group_list(raw, n))))

    def user(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def program(self, pid: int, dev: int, ino: int, exe_name: str) -> str | None:
        key = (dev, ino)
        path = self._paths.get(key)
        if path is None and pid:
            try:
                path = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                return exe_name or None  # the process is gone: the kernel's file name
            if os.path.basename(path) == exe_name:  # same file, not an exec since the event
                self._paths[key] = path
        return path

    def rule(self, rule: int, generation: int, exit: str) -> str:
        if rule < 0:
            return _SPECIAL_RULES.get(rule) or f"default:{exit}"
        names = self.rule_names.get(generation, ())
        return names[rule] if rule < len(names) else f"#{rule}"

    def entries(self, raw: list[tuple], offset_ns: int, released: set[int] | None = None) -> list[Entry]:
        """Journal entries straight from ring-buffer tuples (this runs per decision).
        Release notices (sockets whose UDP flows are final) go into `released`."""
        out = []
        host, user, program, rule, addr, name = self.host, self.user, self.program, self.rule, self.addr, self.name
        group_text = self.group_text
        for (boot_ns, ino, cookie, dev, pid, tid, uid, euid, gid, egid, rule_i, gen, exit_i, verdict, family,
             flags, proto, lport, rport, _pad, laddr, raddr, comm, exe_name, ngroups, groups, srule, sgen, sverdict,
             _pad2) in raw:
            if flags & L.EV_RELEASED:
                if released is not None:
                    released.add(cookie)
                continue
            exit_name = _EXITS[exit_i]
            known = euid != L.UID_UNKNOWN
            extra = {"comm": name(comm), "real_uid": uid} if known else {"owner": "unknown"}
            if known and ino:  # what a program rule matched on (kernel dev_t:inode); replay uses it
                extra["exe"] = f"{dev}:{ino}"
            if known and ngroups:  # and the groups a group rule tested (effective gid first)
                extra["groups"] = group_text(groups, ngroups)
            extra["protocol"] = _PROTOCOLS.get(proto, proto)
            extra["generation"] = gen
            if flags & L.EV_FLOW:
                extra["flow"] = "first"  # later datagrams of the flow come as counted summaries
                extra["socket"] = cookie
            out.append(Entry(
                Code.SOCKET, (_UDP_ENTRY_TYPES if proto in _UDP else _ENTRY_TYPES)[exit_i], boot_ns + offset_ns,
                Source.KERNEL, host,
                _OUTCOMES[verdict], rule(rule_i, gen, exit_name),
                euid if known else None, user(euid) if known else None, egid if known else None,
                pid or None, program(pid, dev, ino, name(exe_name)) if known else None,
                "ipv6" if family == kevents.AF_INET6 else "ipv4",
                addr(laddr) if exit_i else None, lport if exit_i else None,
                addr(raddr) if exit_i != 1 else None, rport if exit_i != 1 else None,
                extra,
            ))
            if flags & L.EV_SHADOW:  # not a decision: the first call the shadow policy decides otherwise
                e = out.pop()
                out.append(replace(e, code=Code.SOCKGATE, type=EntryType.SHADOW, extra={
                    **e.extra, "shadow": "sample", "exit": exit_name, "entry_type": e.type.value,
                    "shadow_outcome": _OUTCOMES[sverdict].value, "shadow_rule": rule(srule, sgen, exit_name),
                    "shadow_generation": sgen}))
        return out


def flow_summaries(enricher: "Enricher", counts: list[kflows.FlowCount], now_ns: int, journal_allowed: bool,
                   journal_rejected: bool) -> list[Entry]:
    """Summary entries (O/I, extra count) for the datagrams counted in UDP flows since the
    last sweep, for the outcomes the audit levels select."""
    out = []
    for c in counts:
        k, f = c.key, c.flow
        if c.new <= 0 or not (journal_allowed if f.verdict == L.ALLOWED else journal_rejected):
            continue
        exit_name = _EXITS[k.exit]
        peer_raw = bytes(k.peer)
        peer = enricher.addr(peer_raw)
        outbound = k.exit == L.EXIT_CONNECT
        out.append(Entry(
            Code.SOCKET, _UDP_ENTRY_TYPES[k.exit], now_ns, Source.KERNEL, enricher.host, _OUTCOMES[f.verdict],
            enricher.rule(f.rule, k.generation, exit_name),
            k.uid if outbound else None, enricher.user(k.uid) if outbound else None, f.gid if outbound else None,
            None, None, "ipv4" if peer_raw[:12] == MAPPED_PREFIX else "ipv6", None, None, peer, k.peer_port,
            {"flow": "summary", "count": c.new, "socket": k.cookie, "protocol": "udp",
             "generation": k.generation},
        ))
    return out


def fold_summaries(enricher: "Enricher", swept: list[kcounts.Count], now_ns: int) -> list[Entry]:
    """Summary entries for the rejections counted, not sent, since the last sweep (a user past
    the policy's fold_rejections per second): one per (user, exit, rule, verdict), extra count."""
    out = []
    for c in swept:
        if c.new <= 0:
            continue
        k = c.key
        exit_name = _EXITS[k.exit]
        known = k.uid != L.UID_UNKNOWN
        extra = {"folded": "summary", "count": c.new, "generation": k.generation}
        if k.udp:
            extra["protocol"] = "udp"
        out.append(Entry(
            Code.SOCKET, (_UDP_ENTRY_TYPES if k.udp else _ENTRY_TYPES)[k.exit], now_ns, Source.KERNEL, enricher.host,
            _OUTCOMES[k.verdict], enricher.rule(k.rule, k.generation, exit_name),
            k.uid if known else None, enricher.user(k.uid) if known else None, extra=extra,
        ))
    return out


def shadow_summaries(enricher: "Enricher", swept: list[kcounts.Count], now_ns: int) -> list[Entry]:
    """Summary entries (type shadow, extra count) for the calls where the shadow policy
    decided otherwise since the last sweep, one per pair of deciding rules."""
    out = []
    for c in swept:
        if c.new <= 0:
            continue
        k = c.key
        exit_name = _EXITS[k.exit]
        out.append(Entry(
            Code.SOCKGATE, EntryType.SHADOW, now_ns, Source.KERNEL, enricher.host, _OUTCOMES[k.verdict],
            enricher.rule(k.rule, k.generation, exit_name),
            extra={"shadow": "summary", "count": c.new, "exit": exit_name,
                   "shadow_outcome": _OUTCOMES[k.shadow_verdict].value,
                   "shadow_rule": enricher.rule(k.shadow_rule, k.shadow_generation, exit_name),
                   "generation": k.generation, "shadow_generation": k.shadow_generation},
        ))
    return out


class Daemon:
    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.gate: Gate | None = None
        self.journal: Journal | None = None
        self.reader: kevents.EventReader | None = None
        self.policy: Policy | None = None
        self.enricher = Enricher(os.uname().nodename)
        self.stop_event = threading.Event()
        self.reload_requested = False
        self.control_requested = False
        self.monitor_thread: threading.Thread | None = None
        self.shipper_thread: threading.Thread | None = None
        self.policy_thread: threading.Thread | None = None   # fleet policy delivery (sockgate.fleet.deliver)
        self.monitor = None                 # the built-in Monitor, when alert rules exist
        self.metrics = None                 # the metrics endpoint (sockgate.metrics.Endpoint)
        self._last_dropped = 0
        self._released: set[int] = set()   # sockets whose UDP flows are final
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._next_detach_check = 0.0
        # Journal writes run on their own thread (the journal's C write path releases the GIL
        # while it hashes, inserts and syncs), in order, through a bounded queue of entry
        # batches and records: if the journal falls behind, the ring buffer fills and the
        # kernel's drop counter turns the loss into gap records.
        self._writes: queue.Queue = queue.Queue(maxsize=64)
        self._writer: threading.Thread | None = None
        self.writer_error: BaseException | None = None
        self._lock_fd: int | None = None
        self._detached: set[str] = set()  # programs already journaled as detached
        self._journaled_tail: list[Entry] | None = None  # on a reopen, until the first batch
        self.log = lambda msg: print(f"sockgate: {msg}", file=sys.stderr, flush=True)

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        o = self.opts
        policy = load_configured_policy(o.policy)      # a bad policy stops us before any change
        compiled = compile_policy(policy)
        if not o.force:
            lockout.guard(policy, self._alerts_file(), compiled, self.log)
        self._lock_fd = hold_daemon_lock(o.pin_dir)    # one daemon per pin directory
        if o.metrics:  # bound now: a bad or taken address stops us before any change
            from sockgate.metrics import Endpoint
            self.metrics = Endpoint.bind(o.metrics)
        if o.journal_dir:
            self.log(f"opening journal {o.journal_dir}")
            self.journal = Journal.open(o.journal_dir)
            self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
            self._writer.start()
            if o.fleet_dir:   # not enrolled, or enrolled for another journal: stop before any change
                from sockgate.fleet.ship import start_shipper
                journal = self.journal
                self.shipper_thread = start_shipper(o.fleet_dir, o.journal_dir, self.stop_event, self.log,
                                                    request_seal=lambda: self._writes.put(journal.seal))
        if Gate.is_pinned(o.pin_dir):
            if self.journal:  # what a killed daemon journaled but had not given back is read again
                self._journaled_tail = self.journal.tail(kevents.RING_RECORDS_MAX,  # at most a ring's worth
                                                         filter=Filter(sources=(Source.KERNEL.value,)))
            self.gate = Gate.open(o.pin_dir)
            self.log(f"reopened pinned programs at {o.pin_dir} (enforcement never stopped)")
            # events still buffered from the running generation need its rule names
            st = self.gate.state
            self.enricher.rule_names[st.generation] = list(st.rule_names)
            if st.shadow:  # and a shadow's samples
                self.enricher.rule_names[st.shadow.generation] = list(st.shadow.rule_names)
            for what, want, have in (("scope cgroup", o.scope_cgroup, self.gate.state.scope_cgroup),
                                     ("netns", o.netns, self.gate.state.netns)):
                if want and os.path.realpath(want) != os.path.realpath(have):
                    raise KernelError(f"already loaded with {what} {have}, not {want}; `sockgate unload` first")
            self._record_start()
            self._install(policy, compiled)
        else:
            def prepare(gate: Gate) -> None:  # fail closed: the policy is in place before any hook
                self.gate = gate
                self._record_start()
                self._install(policy, compiled)

            self.gate = Gate.load(o.pin_dir, scope_cgroup=o.scope_cgroup, netns=o.netns, backend=o.backend,
                                  prepare=prepare)
            self.log(f"attached {self.gate.state.backend} backend at {self.gate.state.scope_cgroup}"
                     f" (accept in {self.gate.state.netns})")
        if not o.netns or os.path.realpath(o.netns) == os.path.realpath("/proc/self/ns/net"):
            n, total = seed_owners(self.gate.maps["sg_listeners"], self.gate.maps["sg_owners"])
            self.log(f"indexed {n} of {total} existing listening sockets"
                     + (f"; {total - n} could not be reached (their owners count as unknown for accept rules)"
                        if n < total else ""))
        self.reader = kevents.EventReader(self.gate.maps["sg_events"], offset_ns=self._clock_offset())
        self._start_monitor()
        if self.metrics:
            self._serve_metrics()
        if o.fleet_dir and o.journal_dir:   # last: applying a bundle signals us and reads our run state
            from sockgate.fleet.deliver import start_fetcher
            self.policy_thread = start_fetcher(o.fleet_dir, o.journal_dir, self.stop_event, self.log,
                                               policy_path=o.policy or POLICY_FILE, pin_dir=o.pin_dir,
                                               alerts_file=self._alerts_file())

    def _clock_offset(self) -> int:
        """The wall-clock offset events are stamped with: the pinned ring's own, so an event
        read twice (see already_journaled) has one timestamp, unless the clock has moved
        off it by more than CLOCK_KEEP_NS since (slewed or stepped): then today's."""
        st, now = self.gate.state, kevents.boot_to_realtime_offset()
        if not st.clock_offset_ns or abs(now - st.clock_offset_ns) > CLOCK_KEEP_NS:
            st.clock_offset_ns = now
            self.gate.save_state()
        return st.clock_offset_ns

    def _serve_metrics(self) -> None:
        from sockgate.metrics import DaemonCollector

        m, t = self.monitor, self.monitor_thread
        self.metrics.serve(DaemonCollector(
            gate=self.gate, journal=self.journal, writes=self._writes if self.journal else None,
            policy=lambda: self.policy, monitor_state=self.opts.monitor_state if m else None,
            channels=m.channels if m else (), monitor_alive=lambda: t is not None and t.is_alive()))
        self.log(f"metrics at {self.metrics.address}")

    def _record_start(self) -> None:
        self._last_dropped = self.gate.stats()["dropped"]
        self._record(EntryType.DAEMON_START, backend=self.gate.state.backend,
                     scope=self.gate.state.scope_cgroup, netns=self.gate.state.netns, pid=os.getpid())

    def _install(self, policy: Policy, compiled=None) -> None:
        compiled = compiled or compile_policy(policy)
        names = self._names_for_next(policy)
        info = tables.install(self.gate, compiled, rule_names=names, source=policy.source,
                              mode=policy.mode.value, audit_levels=sorted(policy.audit_levels))
        self.policy = policy
        self._record(EntryType.POLICY_LOADED, digest=policy.digest, rules=len(policy.rules),
                     policy_file=policy.source, generation=info["generation"], mode=policy.mode.value)
        self.log(f"policy {policy.source} loaded: {len(policy.rules)} rules, generation {info['generation']}, "
                 f"{info['seconds'] * 1000:.0f} ms")

    def _names_for_next(self, policy: Policy) -> list[str]:
        """Rule names of the generation about to be loaded, for its events."""
        names = [r.name for r in policy.rules]
        st = self.gate.state
        generation = st.last_generation + 1
        names_by_gen = self.enricher.rule_names
        names_by_gen[generation] = names
        keep = {st.generation, st.shadow.generation if st.shadow else 0}
        for old in [g for g in names_by_gen if g < generation - 3 and g not in keep]:  # only recent events
            del names_by_gen[old]                                                       # can still be queued
        return names

    # -- shadow mode (sockgate policy shadow | promote) -------------------------------------

    def shadow(self, text: str, source: str) -> dict:
        """Load a candidate as the shadow policy (replacing one already there)."""
        policy = parse_policy(text, source)
        compiled = compile_policy(policy)
        info = tables.install(self.gate, compiled, rule_names=self._names_for_next(policy), source=source,
                              mode=policy.mode.value, audit_levels=sorted(policy.audit_levels), shadow=True,
                              text=text)
        self._record(EntryType.SHADOW, shadow="loaded", digest=policy.digest, rules=len(policy.rules),
                     policy_file=source, shadow_generation=info["generation"], mode=policy.mode.value,
                     generation=self.gate.state.generation)
        self.log(f"shadow policy {source} loaded: {len(policy.rules)} rules, generation {info['generation']}")
        return {"digest": policy.digest, "generation": info["generation"], "rules": len(policy.rules)}

    def shadow_off(self) -> dict:
        was = self.gate.state.shadow
        if was is None:
            raise UsageError("no shadow policy is loaded")
        tables.shadow_off(self.gate)
        self._sweep_counts()  # the pairs of the shadow just turned off are final: last counts now
        self._record(EntryType.SHADOW, shadow="off", digest=was.policy_digest, policy_file=was.policy_source,
                     shadow_generation=was.generation)
        self.log(f"shadow policy {was.policy_source} turned off")
        return {"digest": was.policy_digest, "generation": was.generation}

    def promote(self, force: bool = False) -> dict:
        """The shadow becomes the enforcing policy, atomically (lock-out guarded unless forced)."""
        sh = self.gate.state.shadow
        if sh is None:
            raise UsageError("no shadow policy is loaded: `sockgate policy shadow CANDIDATE` first")
        policy = parse_policy(sh.policy_text, sh.policy_source)
        compiled = compile_policy(policy)
        if policy.digest != sh.policy_digest:
            raise KernelError("the shadow's stored policy text does not match its digest; load it again")
        if not force:
            lockout.guard(policy, self._alerts_file(), compiled, self.log)
        tables.promote(self.gate, errno=compiled.reject_errno, audit_levels=sorted(policy.audit_levels))
        self.policy = policy
        self._sweep_counts()
        self._record(EntryType.POLICY_LOADED, digest=policy.digest, rules=len(policy.rules),
                     policy_file=sh.policy_source, generation=sh.generation, mode=policy.mode.value,
                     promoted="shadow")
        self.log(f"shadow policy {sh.policy_source} promoted: generation {sh.generation} enforces now")
        return {"digest": policy.digest, "generation": sh.generation, "rules": len(policy.rules),
                "policy_text": sh.policy_text, "reload_file": self.opts.policy or POLICY_FILE}

    def _control(self) -> None:
        """One request of `sockgate policy shadow|promote` (sockgate.daemon.request)."""
        path = control_path(self.opts.pin_dir)
        try:
            req = json.loads(path.read_text())
            path.unlink()
        except (OSError, ValueError):
            return
        try:
            action = req.get("action")
            if action == "shadow":
                result = self.shadow(str(req["text"]), str(req["source"]))
            elif action == "off":
                result = self.shadow_off()
            elif action == "promote":
                result = self.promote(bool(req.get("force")))
            else:
                raise UsageError(f"unknown control action {action!r}")
            reply = {"ok": True, **result}
        except SockgateError as e:
            reply = {"ok": False, "error": str(e), "kind": type(e).__name__, "exit_code": e.exit_code}
        safedir.write_atomic(result_path(self.opts.pin_dir), json.dumps({"id": req.get("id"), **reply}), 0o600)

    def _alerts_file(self) -> str | None:
        return self.opts.alerts or (DEFAULT_ALERTS if os.path.exists(DEFAULT_ALERTS) else None)

    def _start_monitor(self) -> None:
        rules = self._alerts_file()
        if not rules or not self.opts.journal_dir:
            return
        from sockgate.monitor import Monitor  # the monitor is optional at run time

        monitor = self.monitor = Monitor.open(rules, self.opts.journal_dir, self.opts.monitor_state)

        def run():
            try:
                monitor.run(self.stop_event)
            finally:
                monitor.close()

        self.monitor_thread = threading.Thread(target=run, name="monitor", daemon=True)
        self.monitor_thread.start()
        self.log(f"monitor running with {rules}")

    def _write_loop(self) -> None:
        """Jobs in order. Entry batches queued back to back are appended as one (one
        commit, one fsync): when the journal falls behind, its transactions grow instead
        of the backlog."""
        pending = None
        while True:
            job = pending if pending is not None else self._writes.get()
            pending = None
            if job is None:
                return
            try:
                if isinstance(job, list):
                    release = getattr(job, "release", None)
                    while len(job) < MERGE_MAX:
                        try:
                            nxt = self._writes.get_nowait()
                        except queue.Empty:
                            break
                        if not isinstance(nxt, list):
                            pending = nxt
                            break
                        job += nxt
                        release = getattr(nxt, "release", release)
                    if job:
                        self.journal.append(job)
                    if release is not None:  # committed: the ring may reuse their space
                        self.reader.release(release)
                else:
                    job()
            except BaseException as e:  # the main loop stops on it; nothing is dropped silently
                self.writer_error = e
                self.stop_event.set()
                return

    def _record(self, type: EntryType, **fields) -> None:
        if self.journal:
            journal = self.journal
            self._writes.put(lambda: journal.record(type, **fields))
        if self.opts.print_events:
            print(json.dumps({"record": type.value, **fields}), flush=True)

    def reload(self, force: bool = False) -> None:
        try:
            policy = load_configured_policy(self.opts.policy)
            compiled = compile_policy(policy)
            if not force:
                lockout.guard(policy, self._alerts_file(), compiled, self.log)
            self._install(policy, compiled)
        except SockgateError as e:
            self.log(f"reload refused, the previous policy stays in force:\n{e}")
            self._record(EntryType.POLICY_LOADED, error=str(e)[:2000], policy_file=self.opts.policy or "(default)")

    def stop(self) -> None:
        """Seal and close the journal, drop our handles and the lock: every step runs even
        when an earlier one fails (the first failure is raised at the end)."""
        self.stop_event.set()
        errors = []

        def step(fn):
            try:
                fn()
            except BaseException as e:
                errors.append(e)

        if self.metrics:  # first: no scrape reads what the steps below close
            step(self.metrics.close)
            self.metrics = None
        if self.monitor_thread:
            step(lambda: self.monitor_thread.join(timeout=10))
        if self.shipper_thread:   # what it did not ship stays in the journal for the next run
            step(lambda: self.shipper_thread.join(timeout=10))
        if self.policy_thread:    # an apply in progress finishes (its steps are atomic)
            step(lambda: self.policy_thread.join(timeout=10))
        if self.reader:  # closed after the writer: its last job gives the ring's space back
            step(lambda: self._drain(self.reader.poll_raw(0, hold=self.journal is not None), sweep=True))
        if self.journal:
            if self._writer and self._writer.is_alive():
                self._record(EntryType.DAEMON_STOP, pid=os.getpid(), programs="stay attached until `sockgate unload`")
                self._writes.put(None)
                step(self._writer.join)
            step(self.journal.close)
            self.journal = None
        if self.reader:
            step(self.reader.close)
        if self.gate:
            step(self.gate.close)
        if self._lock_fd is not None:  # last: until here, we are the daemon of this pin dir
            step(functools.partial(release_and_remove, self._lock_fd, lock_file(self.opts.pin_dir)))
            self._lock_fd = None
        if self.writer_error:
            errors.insert(0, self.writer_error)
        if errors:
            raise errors[0]

    # -- the loop -------------------------------------------------------------------------

    def _drain(self, batch: list[tuple], sweep: bool = False) -> None:
        if batch:
            offset = self.reader.offset_ns
            if self.journal:
                entries = self.enricher.entries(batch, offset, self._released)
                if self._journaled_tail is not None:
                    again = already_journaled(self._journaled_tail, entries)
                    if again:
                        self.log(f"{again} events the previous daemon journaled were read again: not journaled twice")
                    entries, self._journaled_tail = entries[again:], None
                self._writes.put(RingBatch(entries, self.reader.read_pos))
            if self.opts.print_events:
                out = sys.stdout
                for ev in kevents.decode_tuples(batch, offset):
                    out.write(json.dumps(asdict(ev)) + "\n")
                out.flush()
        dropped = self.gate.stats()["dropped"]
        if dropped > self._last_dropped:
            self._record(EntryType.GAP, dropped=dropped - self._last_dropped)
            self._last_dropped = dropped
        if sweep or time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + FLOW_SWEEP_S
            self._sweep_counts()

    def _sweep_counts(self) -> None:
        """Kernel counts -> summary entries: UDP flows, shadow differences. The kernel's
        seen-marks move only after the journal has them (on the writer thread, in order)."""
        if not self.journal or not self.policy:
            return
        m, st = self.gate.maps, self.gate.state
        now = time.time_ns()
        counts = kflows.sweep(m["sg_flows"], m["sg_flows_seen"], st.generation, self._released)
        self._released = set()
        live = (st.generation, st.shadow.generation) if st.shadow else None
        differs = kshadow.sweep(m["sg_shadow"], m["sg_shadow_seen"], live)
        folded = kfolds.sweep(m["sg_folded"], m["sg_folded_seen"], st.generation)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 10
            kfolds.prune_rates(m["sg_rates"])
        if not counts and not differs and not folded:
            return
        entries = (flow_summaries(self.enricher, counts, now, self.policy.journal_udp, self.policy.journal_rejected)
                   + shadow_summaries(self.enricher, differs, now) + fold_summaries(self.enricher, folded, now))
        journal = self.journal

        def write():
            if entries:
                journal.append(entries)
            kcounts.mark_journaled(m["sg_flows"], m["sg_flows_seen"], counts)
            kcounts.mark_journaled(m["sg_shadow"], m["sg_shadow_seen"], differs)
            kcounts.mark_journaled(m["sg_folded"], m["sg_folded_seen"], folded)

        self._writes.put(write)

    def handle_signals(self) -> None:
        """SIGHUP reloads; SIGTERM and SIGINT stop cleanly (seal, daemon-stop record)."""
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", "guarded"))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "reload_requested", "force"))  # `reload --force`
        signal.signal(signal.SIGUSR2, lambda *_: setattr(self, "control_requested", True))   # `policy shadow|promote`
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())

    def run(self) -> None:
        give_back_memory()
        while not self.stop_event.is_set():
            if self.reload_requested:
                force, self.reload_requested = self.reload_requested == "force", False
                self.reload(force=force)
                give_back_memory()
            if self.control_requested:
                self.control_requested = False
                self._control()
                give_back_memory()
            if not Gate.is_pinned(self.opts.pin_dir):
                self.log("programs were detached (unpinned) under us; stopping")
                self._record(EntryType.DETACHED, by="unpinned while running")
                break
            # held records (journaled, not yet committed) silence the kernel's wakeup: look sooner
            self._drain(self.reader.poll_raw(10 if self.reader.holding else 100, hold=self.journal is not None))
            if time.monotonic() >= self._next_detach_check:
                self._next_detach_check = time.monotonic() + DETACH_CHECK_S
                self._check_attached()

    def _check_attached(self) -> None:
        """Someone else (root) detaching or unpinning some of our programs: journal it once
        per program; what stays attached keeps being journaled."""
        gone = set(self.gate.detached()) - self._detached
        if gone:
            self._detached |= gone
            self.log(f"programs detached by someone else: {', '.join(sorted(gone))}")
            self._record(EntryType.DETACHED, by="detached by someone else while running",
                         programs=",".join(sorted(gone)))


class RingBatch(list):
    """Entries from the ring, and the ring position to give back once they are committed."""

    def __init__(self, entries: list[Entry], release: int):
        super().__init__(entries)
        self.release = release


def _same_event(a: Entry, b: Entry) -> bool:
    """One kernel event journaled by two readers of the ring (stamped with the ring's one
    clock offset: the same nanosecond), not a look-alike from a tight loop."""
    return (a.ts_ns, a.type, a.outcome, a.pid, a.uid, a.rule, a.local_addr, a.local_port, a.remote_addr,
            a.remote_port) == (b.ts_ns, b.type, b.outcome, b.pid, b.uid, b.rule, b.local_addr, b.local_port,
                               b.remote_addr, b.remote_port)


def already_journaled(tail: list[Entry], batch: list[Entry]) -> int:
    """How many entries at the start of `batch` (the first read after a reopen) end `tail`
    (the journal's last kernel entries), in order. The ring gives records back only after
    the journal commits them, so a daemon killed between its commit and that release left
    them to be read again: exactly a suffix of the journal, as a prefix of this batch."""
    if not tail or not batch:
        return 0
    start = max(0, len(tail) - len(batch))
    for i in range(start, len(tail)):
        k = len(tail) - i
        if _same_event(tail[i], batch[0]) and all(_same_event(tail[i + j], batch[j]) for j in range(k)):
            return k
    return 0


def give_back_memory() -> None:
    """After a load: a compile's tables (~80 MB for 10k rules, mostly big ints that glibc
    keeps in its heap once freed) go back to the system, not into the daemon's idle RSS."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; elsewhere the heap keeps it
    if trim is not None:
        trim(0)


def run(opts: RunOptions) -> None:
    d = Daemon(opts)
    # before start(): a stop asked for while starting (the policy already loaded, say) is
    # then a clean stop right after it, not death by the default SIGTERM action
    d.handle_signals()
    try:
        d.start()
    except BaseException:
        d.stop()
        raise
    try:
        d.run()
    finally:
        d.stop()


def unload(pin_dir: str = DEFAULT_PIN_DIR, journal_dir: str | None = None, timeout: float = 10) -> list[str]:
    """Stop a running daemon, detach and unpin everything, journal it."""
    if signal_daemon(pin_dir, signal.SIGTERM):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running_pid(pin_dir):
            time.sleep(0.05)
    if lock_file(pin_dir).exists():  # left by a daemon that was killed: ours now, then gone
        try:
            # taken without writing our pid: nobody may take unload for the daemon and signal it
            fd = lock_exclusive(lock_file(pin_dir), error=KernelError, busy="still held")
            release_and_remove(fd, lock_file(pin_dir))
        except KernelError:
            pass  # still held (a daemon slow to stop): its own stop removes it
    removed = remove_pins(pin_dir)
    if removed and journal_dir and os.path.isdir(journal_dir):
        try:
            with Journal.open(journal_dir, create=False) as j:
                j.record(EntryType.DETACHED, by="sockgate unload", uid=os.getuid(), pins=len(removed))
        except SockgateError:
            pass  # unloading must not fail because the journal is unusable
    return removed


def status(pin_dir: str = DEFAULT_PIN_DIR) -> dict:
    if not Gate.is_pinned(pin_dir):
        return {"loaded": False, "pin_dir": pin_dir, "daemon_pid": running_pid(pin_dir)}
    gate = Gate.open(pin_dir)
    try:
        st = gate.state
        hits, defaults = gate.hits()
        stats = gate.stats()
        return {
            "loaded": True,
            "pin_dir": pin_dir,
            "backend": st.backend,
            "scope_cgroup": st.scope_cgroup,
            "netns": st.netns,
            "daemon_pid": running_pid(pin_dir),
            "policy": {"source": st.policy_source, "digest": st.policy_digest, "generation": st.generation,
                       "rules": len(st.rule_names), "mode": st.mode, "audit_levels": st.audit_levels,
                       "errno": st.errno},
            "counters": stats,
            "rules": [{"index": i, "name": n, "hits": h} for i, (n, h) in enumerate(zip(st.rule_names, hits))],
            "defaults": {e: defaults[i] for i, e in enumerate(("connect", "listen", "accept"))},
            "shadow": _shadow_status(gate),
        }
    finally:
        gate.close()


def _shadow_status(gate: Gate) -> dict | None:
    """The shadow policy and where it decided otherwise, per pair of deciding rules."""
    st, sh = gate.state, gate.state.shadow
    if sh is None:
        return None

    def name(rule: int, names: list[str], exit: str) -> str:
        return names[rule] if 0 <= rule < len(names) else _SPECIAL_RULES.get(rule) or f"default:{exit}"

    live = [(k, n) for k, n in kshadow.pairs(gate.maps["sg_shadow"])
            if (k.generation, k.shadow_generation) == (st.generation, sh.generation)]
    diffs = sorted(({"exit": _EXITS[k.exit], "rule": name(k.rule, st.rule_names, _EXITS[k.exit]),
                     "outcome": _OUTCOMES[k.verdict].value,
                     "shadow_rule": name(k.shadow_rule, sh.rule_names, _EXITS[k.exit]),
                     "shadow_outcome": _OUTCOMES[k.shadow_verdict].value, "calls": n} for k, n in live),
                   key=lambda d: -d["calls"])
    hits, defaults = gate.hits(shadow=True)
    return {"source": sh.policy_source, "digest": sh.policy_digest, "generation": sh.generation,
            "rules": len(sh.rule_names), "mode": sh.mode, "since_ns": sh.since_ns,
            "differences": diffs, "calls_differing": sum(d["calls"] for d in diffs),
            "rule_hits": [{"index": i, "name": n, "hits": h} for i, (n, h) in enumerate(zip(sh.rule_names, hits))],
            "default_hits": {e: defaults[i] for i, e in enumerate(("connect", "listen", "accept"))}}
