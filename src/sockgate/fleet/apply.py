"""Apply a signed policy bundle on this host, behind the replay gate.

    verify (size, shape, trusted key's signature, digest) -> group -> version newer than
    the last applied (rollback protection) -> the policy checks on this host -> a running
    daemon loads that policy file -> lock-out guard -> replay gate (this host's kernel
    decisions over the bundle's window: the bundle's policy against the installed one, at
    most max_breaks would break) -> swap the policy file atomically -> the running daemon
    reloads it (SIGHUP) and reports the bundle's digest

Every refusal leaves the policy file and the state as they were. The state file
(`<fleet dir>/policy-state.json`, written atomically) keeps, per group, the last applied
version and digest, and the last result (for `fleet status`). One apply at a time
(`<fleet dir>/policy-apply.lock`).

Results: "applied" (the daemon runs the bundle's policy), "installed" (no daemon is
running: the file is in place and the next `sockgate run` loads it), "refused" (with a
reason code and a message). Problems of the host rather than the bundle (an unsafe fleet
directory, an unreadable state file or journal) raise a SockgateError instead.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sockgate import lockout, safedir
from sockgate.errors import BundleError, BundlePolicyError, PolicyErrors, SockgateError
from sockgate.fleet.bundle import Bundle, PublicKey, check_policy, load_trust, verify
from sockgate.locking import lock_exclusive
from sockgate.policy.model import Policy
from sockgate.record import ALERTS_FILE, FLEET_DIR, JOURNAL_DIR, POLICY_FILE, format_duration, format_time, oneline

STATE_FILE = "policy-state.json"
LOCK_FILE = "policy-apply.lock"
KEYS_DIR = "policy-keys"          # trusted administrator keys: <fleet dir>/policy-keys/*.pub
GROUP_FILE = "group"              # this host's group, one line (the CLI's --group default)
RELOAD_TIMEOUT_S = 30.0
TIMED_OUT = "the daemon did not report"
MAX_GROUPS_REPORTED = 5           # break groups carried in a refusal's result

# reason codes of a refusal
REASONS = {
    "bad-bundle": "unreadable, malformed, or not signed by a trusted key",
    "policy-check": "correctly signed, but its policy does not check on this host (a user or program missing here)",
    "group": "the bundle is for another group",
    "not-newer": "the version is not newer than the last applied one (rollback protection)",
    "lockout": "the policy would reject an administrator's session or an alert channel",
    "replay-gate": "replayed over this host's journal, it would break more decisions than the bundle allows",
    "daemon-policy": "the running daemon loads another policy file",
    "daemon-refused": "the running daemon refused or did not confirm the reload (the old policy was restored)",
}


@dataclass
class ApplyResult:
    result: str                      # applied | installed | refused
    reason: str | None = None        # a REASONS key when refused
    message: str = ""
    version: int | None = None
    group: str | None = None
    digest: str | None = None
    key_id: str | None = None
    previous: dict[str, Any] | None = None     # the last applied {version, digest} of the group
    decisions: int | None = None     # replayed by the gate
    breaks: int | None = None
    opens: int | None = None
    approximated: int | None = None
    max_breaks: int | None = None
    against: str | None = None       # what the gate compared with: the installed policy file, or "journal"
    window: str | None = None        # the gate's replay window (24h unless the bundle says)
    break_groups: list[dict[str, Any]] = field(default_factory=list)
    daemon: str | None = None        # reloaded | not running | ...
    policy_file: str | None = None
    at: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.result == "refused" else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        head = {"applied": "applied", "installed": "installed (no daemon running)", "refused": "REFUSED"}[self.result]
        what = f"version {self.version} ({oneline(self.group)})" if self.version is not None else "bundle"
        lines = [f"{head}: {what}" + (f", sha256 {self.digest}" if self.digest else "")]
        if self.reason:
            lines.append(f"reason: {self.reason}: {self.message}")
        elif self.message:
            lines.append(self.message)
        if self.decisions is not None:
            lines.append(f"replay gate: {self.decisions} decisions of the last {self.window} against "
                         f"{oneline(self.against)}: {self.breaks} would break (allowed {self.max_breaks}), "
                         f"{self.opens} would open, {self.approximated} approximated")
        for g in self.break_groups:
            lines.append(f"  would break {g['count']}x {g['exit']} {oneline(g['user'])} {oneline(g['program'])} "
                         f"{g['network']} port {g['port']} ({g['old_rule']} -> {g['new_rule']}), "
                         f"samples {', '.join(map(str, g['samples']))}")
        if self.previous:
            lines.append(f"previous: version {self.previous.get('version')}, sha256 {self.previous.get('digest')}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- state

def read_state(fleet_dir: str | os.PathLike) -> dict[str, Any]:
    """{"groups": {group: {version, digest, key_id, applied, policy_file}}, "last": result}.
    A missing file is a host that never applied a bundle; an unreadable one is refused,
    not reset (that would undo the rollback protection)."""
    path = Path(fleet_dir) / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"groups": {}, "last": None}
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        state = json.loads(data)
        groups = state["groups"]
        if not isinstance(groups, dict) or not all(
                isinstance(g, dict) and type(g.get("version")) is int for g in groups.values()):
            raise ValueError("bad groups")
    except (ValueError, TypeError, KeyError, RecursionError):
        raise BundleError(f"{path}: unreadable applied-bundle state; it keeps the rollback protection, so it is "
                          "not reset: restore it, or remove it to accept any version again") from None
    state.setdefault("last", None)
    return state


def _write_state(fleet_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    safedir.write_atomic(Path(fleet_dir) / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n",
                         mode=0o600)


def trusted_keys(fleet_dir: str | os.PathLike, files: Iterable[str | os.PathLike] = ()) -> list[PublicKey]:
    """The keys given, else every <fleet dir>/policy-keys/*.pub (a directory others may
    write is refused: they could add a key)."""
    files = list(files)
    if not files:
        d = Path(fleet_dir) / KEYS_DIR
        why = safedir.problem(d)
        if why:
            raise BundleError(f"trusted keys: {why}")
        files = sorted(d.glob("*.pub")) if d.is_dir() else []
        if not files:
            raise BundleError(f"no trusted keys: put the administrator's public key in {d}/ or give --trust")
    return load_trust(files)


def host_group(fleet_dir: str | os.PathLike) -> str | None:
    try:
        return (Path(fleet_dir) / GROUP_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------- the steps

def installed_policy(policy_path: str | os.PathLike) -> Policy | None:
    """The policy the daemon loads from `policy_path` now: the file, else (for the default
    path) the embedded default; None when it cannot be read (the gate then compares with
    the journaled outcomes)."""
    from sockgate.policy.parse import load_configured_policy, load_policy

    try:
        if os.path.exists(policy_path):
            return load_policy(policy_path)
        if os.path.abspath(policy_path) == POLICY_FILE:
            return load_configured_policy(None)
    except (PolicyErrors, SockgateError):
        pass
    return None


def replay_gate(bundle: Bundle, journal_dir: str | os.PathLike, against: Policy | None, now_ns: int):
    """policy.replay over this host's kernel decisions in the bundle's window."""
    from sockgate.journal import Journal
    from sockgate.journal.query import Filter
    from sockgate.policy.replay import DECISION_TYPES, replay

    since = now_ns - bundle.replay_window_ns
    filt = Filter.build(types=DECISION_TYPES, sources=("kernel",), since=since)
    with Journal.open(journal_dir, readonly=True) as j:
        return replay(j.decisions(filter=filt), bundle.policy, against, since_ns=since, compiled=bundle.compiled)


def _daemon_state(pin_dir: str) -> dict[str, Any]:
    from sockgate.kernel.loader import state_path

    try:
        return json.loads(state_path(pin_dir).read_text())
    except (OSError, ValueError):
        return {}


def _same_file(a: str, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _reload(pin_dir: str, bundle: Bundle, journal_dir: str | os.PathLike, timeout: float) -> str | None:
    """SIGHUP the daemon and wait until its run state reports the bundle's digest. None on
    success, else why not (the daemon's journaled refusal, or the timeout)."""
    from sockgate.daemon import signal_daemon
    from sockgate.journal import Journal
    from sockgate.journal.query import Filter

    def journal_last() -> int:
        try:
            with Journal.open(journal_dir, readonly=True) as j:
                return j.last_seq
        except SockgateError:
            return 0

    def refusal(after: int) -> str | None:
        try:
            with Journal.open(journal_dir, readonly=True) as j:
                for e in j.entries(after, filter=Filter.build(types=("policy",))):
                    if e.extra.get("error"):
                        return str(e.extra["error"])
        except SockgateError:
            pass
        return None

    seq = journal_last()
    if not signal_daemon(pin_dir, signal.SIGHUP):
        return "the daemon ended before it could be asked to reload"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _daemon_state(pin_dir).get("policy_digest") == bundle.digest:
            return None
        why = refusal(seq)
        if why:
            return f"the daemon refused the reload: {why}"
        time.sleep(0.05)
    return f"{TIMED_OUT} sha256 {bundle.digest} within {timeout:g} s"


def _restore(policy_path: Path, old: bytes | None, mode: int) -> None:
    if old is None:
        try:
            policy_path.unlink()
        except FileNotFoundError:
            pass
    else:
        safedir.write_atomic(policy_path, old, mode=mode)


# ----------------------------------------------------------------------------- apply

def apply_bundle(raw: bytes, *, trust: list[PublicKey], group: str, fleet_dir: str | os.PathLike = FLEET_DIR,
                 journal_dir: str | os.PathLike = JOURNAL_DIR, policy_path: str | os.PathLike = POLICY_FILE,
                 pin_dir: str | None = None, alerts_file: str | None = None, reload_timeout: float = RELOAD_TIMEOUT_S,
                 now_ns: int | None = None, source: str = "<bundle>") -> ApplyResult:
    """Verify, gate and apply one bundle (the module docstring says the steps). Returns the
    result record; it is also kept as the state's "last"."""
    from sockgate.kernel.loader import DEFAULT_PIN_DIR

    pin_dir = pin_dir or DEFAULT_PIN_DIR
    now_ns = time.time_ns() if now_ns is None else now_ns
    policy_path = Path(os.path.abspath(policy_path))
    fleet_dir = safedir.private_dir(fleet_dir, error=BundleError, what="fleet directory")
    fd = lock_exclusive(fleet_dir / LOCK_FILE, error=BundleError, busy=f"{fleet_dir}: another policy apply is running")
    try:
        state = read_state(fleet_dir)
        res = ApplyResult("refused", group=group, policy_file=str(policy_path), at=format_time(now_ns))
        result = _apply(raw, res, state, trust=trust, group=group, fleet_dir=fleet_dir, journal_dir=journal_dir,
                        policy_path=policy_path, pin_dir=pin_dir, alerts_file=alerts_file,
                        reload_timeout=reload_timeout, now_ns=now_ns, source=source)
        state["last"] = result.to_dict()
        _write_state(fleet_dir, state)
        return result
    finally:
        os.close(fd)


def _apply(raw: bytes, res: ApplyResult, state: dict[str, Any], *, trust, group, fleet_dir, journal_dir,
           policy_path: Path, pin_dir, alerts_file, reload_timeout, now_ns, source) -> ApplyResult:
    from sockgate.daemon import running_pid, signal_daemon
    from sockgate.kernel.loader import Gate

    def refuse(reason: str, message: str) -> ApplyResult:
        res.result, res.reason, res.message = "refused", reason, message
        return res

    try:
        b = verify(raw, trust, source, policy=False)   # the policy is parsed after the cheap checks
    except BundleError as e:
        return refuse("bad-bundle", str(e))
    res.version, res.digest, res.key_id, res.max_breaks = b.version, b.digest, b.key_id, b.max_breaks
    res.window = format_duration(b.replay_window_ns)
    if b.group != group:
        res.group = b.group
        return refuse("group", f"the bundle is for group {oneline(b.group)}, this host is in {oneline(group)}")
    prev = state["groups"].get(group)
    res.previous = {"version": prev["version"], "digest": prev.get("digest")} if prev else None
    if prev and b.version <= prev["version"]:
        same = b.version == prev["version"] and b.digest == prev.get("digest")
        return refuse("not-newer", f"version {b.version} is already applied" if same else
                      f"version {b.version} is not newer than version {prev['version']}, applied "
                      f"{prev.get('applied', '?')}: an older or replayed bundle")
    try:
        b = check_policy(b)
    except BundlePolicyError as e:
        return refuse("policy-check", str(e))
    pid = running_pid(pin_dir)
    if pid:
        loads = _daemon_state(pin_dir).get("policy_source", "")
        if not (_same_file(loads, policy_path) or (loads == "<embedded>" and str(policy_path) == POLICY_FILE)):
            return refuse("daemon-policy", f"the daemon (pid {pid}) loads {oneline(loads) or '?'}, not {policy_path}: "
                          "apply with --policy set to the daemon's policy file")
    alerts = alerts_file or (ALERTS_FILE if os.path.exists(ALERTS_FILE) else None)
    found, _notes = lockout.check(b.policy, alerts, compiled=b.compiled)
    if found:
        return refuse("lockout", "; ".join(found))
    against = installed_policy(policy_path)
    res.against = against.source if against is not None else "journal"
    rep = replay_gate(b, journal_dir, against, now_ns)
    res.decisions, res.breaks, res.opens, res.approximated = rep.decisions, rep.breaks, rep.opens, rep.approximated
    if rep.breaks > b.max_breaks:
        res.break_groups = [g.to_dict() for g in rep.sorted_groups("break")[:MAX_GROUPS_REPORTED]]
        return refuse("replay-gate", f"{rep.breaks} of this host's {rep.decisions} decisions since "
                      f"{format_time(now_ns - b.replay_window_ns)} would break; the bundle allows {b.max_breaks}")

    # the swap: the policy file, then the state (the commit point), then the daemon
    try:
        old, mode = policy_path.read_bytes(), policy_path.stat().st_mode & 0o777
    except FileNotFoundError:
        old, mode = None, 0o644
    except OSError as e:
        raise BundleError(f"{policy_path}: cannot read the installed policy: {e.strerror or e}") from None
    policy_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    safedir.write_atomic(policy_path, b.policy_bytes, mode=mode)
    before = dict(state["groups"])
    state["groups"][group] = {"version": b.version, "digest": b.digest, "key_id": b.key_id,
                              "applied": format_time(now_ns), "policy_file": str(policy_path)}
    try:
        _write_state(fleet_dir, state)
    except BaseException:
        _restore(policy_path, old, mode)
        state["groups"] = before
        raise
    if not pid:
        res.result, res.daemon = "installed", "not running"
        res.message = (f"no sockgate daemon is running for {pin_dir}: {policy_path} holds version {b.version} "
                       "and the next `sockgate run` loads it"
                       + ("; until then the pinned programs enforce the previous policy" if Gate.is_pinned(pin_dir) else ""))
        return res
    why = _reload(pin_dir, b, journal_dir, reload_timeout)
    if why is None:
        res.result, res.daemon = "applied", "reloaded"
        res.message = f"the daemon (pid {pid}) enforces version {b.version}"
        return res
    _restore(policy_path, old, mode)
    state["groups"] = before
    _write_state(fleet_dir, state)
    if why.startswith(TIMED_OUT):   # it may still read either file: make it converge on the restored one
        signal_daemon(pin_dir, signal.SIGHUP)
    res.daemon = "reload refused"
    return refuse("daemon-refused", f"{why}; {policy_path} was restored")
