"""Replay journaled decisions through a candidate policy's compiled tables.

Every socket decision in the journal (kernel A/C/L and UDP O/I entries, imported IBM i SK
A/C/I/O entries) is turned back into the call it was (`call_of`), decided again by
`evaluate.decide` over `compile_policy(candidate)` — the tables the kernel would get —
and compared with the journaled outcome (or with a second policy, evaluated the same
way). Differences are aggregated into a bounded number of groups, so memory does not grow
with the journal; evaluations are cached per distinct call.

Exactness: a decision is *approximated* when a rule that could have decided it tests a
field the entry does not carry (supplementary groups, the executable's dev:inode, an IBM i
entry's Linux identity). `REASONS` says why, per reason; every report format counts them.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from sockgate.policy.compile import OUTCOME_OF, Compiled, addr_as_v6, compile_policy, program_identity
from sockgate.policy.evaluate import decide
from sockgate.policy.model import UID_UNKNOWN, Exit, Outcome, Policy, Protocol
from sockgate.record import EntryType, Source, format_time

# Journaled types that are socket decisions, and the exit point that made them.
EXIT_OF_TYPE: dict[EntryType, Exit] = {
    EntryType.CONNECT: Exit.CONNECT, EntryType.UDP_OUTBOUND: Exit.CONNECT,
    EntryType.LISTEN: Exit.LISTEN,
    EntryType.ACCEPT: Exit.ACCEPT, EntryType.UDP_INBOUND: Exit.ACCEPT,
}
DECISION_TYPES = tuple(t.value for t in EXIT_OF_TYPE)
UDP_TYPES = frozenset({EntryType.UDP_OUTBOUND, EntryType.UDP_INBOUND})

# extra.protocol as the daemon writes it -> the policy's protocol class
PROTOCOL_OF_NAME = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "udplite": Protocol.UDP,
                    "mptcp": Protocol.MPTCP, "sctp": Protocol.SCTP}
PROTOCOL_NAME = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.MPTCP: "mptcp", Protocol.SCTP: "sctp"}

# Where an entry carries what the kernel decided on, once the daemon journals it (issue 14,
# item 2): extra.groups = "g1,g2,..." (primary first, as the kernel saw them) and
# extra.exe = "DEV:INODE" (the kernel's dev_t). Replay uses them when present: exact.
EXTRA_GROUPS = "groups"
EXTRA_EXE = "exe"

# Kernel entries whose rule is no policy rule (the daemon's _SPECIAL_RULES): not replayable.
SKIP_RULES = {
    "listen-refused": "accepts refused because their listen was refused (the listen is replayed)",
    "unparsed-address": "calls whose address the kernel could not read (refused whatever the policy)",
}

# reason -> (the rule fields it leaves unknown, why)
REASONS: dict[str, tuple[frozenset[str], str]] = {
    "groups": (frozenset({"group"}),
               "supplementary groups are not journaled: only the primary gid could be tested"),
    "program-path": (frozenset({"program"}),
                     "the entry has the program's path, not its dev:inode: matched by that path on this host"),
    "no-program": (frozenset({"program"}), "the entry names no executable path"),
    "ibmi-identity": (frozenset({"user", "group", "program"}),
                      "IBM i entry: a user profile and LIB/PGM, no Linux uid, groups or executable"),
    "no-uid": (frozenset({"user", "group"}), "the entry has no uid or gid"),
    "protocol": (frozenset({"protocol"}), "the entry does not say which protocol (TCP assumed)"),
    "no-local": (frozenset({"local", "local_port"}), "the entry has no local address or port"),
    "no-remote": (frozenset({"remote", "remote_port"}), "the entry has no remote address or port"),
}


@dataclass(frozen=True)
class Call:
    """A journaled decision as the call it was, as far as its entry tells."""

    exit: Exit
    uid: int
    gids: tuple[int, ...]
    program: str | None                 # executable path (or IBM i LIB/PGM)
    ident: tuple[int, int] | None       # (dev, inode) from the entry, when journaled
    local: tuple[str, int] | None
    remote: tuple[str, int] | None
    protocol: Protocol
    missing: frozenset[str]             # REASONS keys


def _int_list(text: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        return None


def _ident(text: Any) -> tuple[int, int] | None:
    dev, _, ino = str(text).partition(":")
    try:
        return int(dev), int(ino)
    except ValueError:
        return None


def protocol_of(e) -> tuple[Protocol, bool]:
    """(protocol class, known): extra.protocol, else IBM i's type (O/I are UDP, A/C TCP)."""
    p = PROTOCOL_OF_NAME.get(str(e.extra.get("protocol", "")).lower())
    if p is not None:
        return p, True
    if e.type in UDP_TYPES:
        return Protocol.UDP, True
    return Protocol.TCP, e.source is Source.IBMI


def skip_reason(e) -> str | None:
    """Why a decision-type entry is not replayed, or None. UDP flow summaries count the later
    datagrams of a flow whose decision is its first entry (extra.flow = "first")."""
    if e.rule in SKIP_RULES:
        return e.rule
    if e.extra.get("flow") == "summary":
        return "udp-summary"
    if e.extra.get("folded") == "summary":
        return "folded"
    return None


SKIP_WHY = {**SKIP_RULES, "udp-summary": "UDP flow summaries (their flow's decision is its first entry)",
            "folded": "rejection summaries (a user past fold_rejections per second: counted, no addresses)"}


def call_of(e) -> Call:
    """The call a decision-type entry journals (see REASONS for what may be missing)."""
    ex = EXIT_OF_TYPE[e.type]
    missing: set[str] = set()
    ibmi = e.source is Source.IBMI
    extra = e.extra
    # the kernel decides an unknown accept owner as SG_UID_UNKNOWN with no groups or program:
    # replaying it that way is exact (extra.owner = "unknown")
    owner_unknown = extra.get("owner") == "unknown"
    if e.uid is not None:
        uid = e.uid
    else:
        uid = UID_UNKNOWN
        if not owner_unknown:
            missing.add("ibmi-identity" if ibmi else "no-uid")
    gids = _int_list(extra[EXTRA_GROUPS]) if EXTRA_GROUPS in extra else None
    if gids is None:
        if e.gid is not None:
            gids = (e.gid,)
            missing.add("groups")
        else:
            gids = (UID_UNKNOWN,)
            if not owner_unknown and not ibmi:
                missing.add("no-uid")
    ident = _ident(extra[EXTRA_EXE]) if EXTRA_EXE in extra else None
    program = e.program
    if ident is None and not owner_unknown and not ibmi:
        missing.add("program-path" if program and program.startswith("/") else "no-program")
    proto, known = protocol_of(e)
    if not known:
        missing.add("protocol")
    local = remote = None
    if ex is not Exit.CONNECT:
        if e.local_addr is None or e.local_port is None:
            missing.add("no-local")
        local = (e.local_addr or "::", e.local_port or 0)
    if ex is not Exit.LISTEN:
        if e.remote_addr is None or e.remote_port is None:
            missing.add("no-remote")
        remote = (e.remote_addr or "::", e.remote_port or 0)
    return Call(ex, uid, gids, program, ident, local, remote, proto, frozenset(missing))


def call_key(e, sides: dict[Exit, tuple[bool, bool, bool, bool]] | None = None) -> tuple:
    """What a decision depends on, as a hashable key (the evaluation cache's). A connect's
    local side and a listen's remote side are not decided on; `sides` (per exit: keep the
    local address, local port, remote address, remote port) leaves out what no rule tests,
    so an accept's ephemeral client port does not defeat the cache."""
    ex = EXIT_OF_TYPE[e.type]
    la, lp, ra, rp = (sides or _ALL_SIDES)[ex]
    x = e.extra
    return (ex, e.uid, e.gid, e.program, x.get(EXTRA_GROUPS), x.get(EXTRA_EXE), x.get("owner"), x.get("protocol"),
            e.source is Source.IBMI, e.type in UDP_TYPES,
            e.local_addr if la else None, e.local_port if lp else None,
            e.remote_addr if ra else None, e.remote_port if rp else None)


_ALL_SIDES = {Exit.CONNECT: (False, False, True, True), Exit.LISTEN: (True, True, False, False),
              Exit.ACCEPT: (True, True, True, True)}


def cache_sides(*evaluators: "Evaluator") -> dict[Exit, tuple[bool, bool, bool, bool]]:
    """call_key's `sides` for these policies: an address or port only where a rule tests it."""
    out = {}
    for ex, keep in _ALL_SIDES.items():
        tested = set().union(*(ev.tests[ex] for ev in evaluators))
        out[ex] = tuple(k and f in tested for k, f in zip(keep, ("local", "local_port", "remote", "remote_port")))
    return out


@functools.lru_cache(maxsize=4096)
def _path_identity(path: str) -> tuple[int, int] | None:
    return program_identity(path)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    rule: str                            # rule name, or "default:<exit>" as the daemon journals it
    approx: frozenset[str]               # REASONS that could have changed this decision


class Evaluator:
    """One policy's compiled tables, deciding journaled calls (cached per distinct call)."""

    CACHE_MAX = 1 << 18   # distinct calls kept; cleared when full, so memory stays bounded

    def __init__(self, policy: Policy, compiled: Compiled | None = None):
        self.policy = policy
        self.c = compiled or compile_policy(policy)
        # per exit, per field: rules at that exit testing it (bit r = rule r)
        self.tests: dict[Exit, dict[str, int]] = {ex: {} for ex in Exit}
        for r in policy.rules:
            for ex in r.exits:
                for f in ("protocol", "user", "group", "program", "local", "remote", "local_port", "remote_port"):
                    if getattr(r, f) is not None:
                        self.tests[ex][f] = self.tests[ex].get(f, 0) | (1 << r.index)
        self._cache: dict[tuple, Verdict] = {}

    def verdict(self, e, key: tuple | None = None) -> Verdict:
        key = call_key(e) if key is None else key
        v = self._cache.get(key)
        if v is None:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            v = self._cache[key] = self.decide(call_of(e))
        return v

    def decide(self, call: Call) -> Verdict:
        ident = call.ident
        if ident is None and call.program and call.program.startswith("/"):
            ident = _path_identity(call.program)   # match by path, as it is on this host
        laddr, lport = call.local or ("::", 0)
        raddr, rport = call.remote or ("::", 0)
        verdict, rule = decide(self.c, int(call.exit), call.uid, call.gids, ident, _v6(laddr), lport,
                               _v6(raddr), rport, int(call.protocol))
        name = f"default:{call.exit.label}" if rule < 0 else self.policy.rules[rule].name
        approx: frozenset[str] = frozenset()
        if call.missing:
            # rules that could have decided instead: every one up to the decider (all, if none did)
            could = -1 if rule < 0 else (2 << rule) - 1
            tests = self.tests[call.exit]
            approx = frozenset(m for m in call.missing
                               if any(tests.get(f, 0) & could for f in REASONS[m][0]))
        return Verdict(OUTCOME_OF[verdict], name, approx)


def _v6(addr: str) -> int:
    try:
        return addr_as_v6(addr)
    except ValueError:
        return 0


PASSING = frozenset({Outcome.ALLOWED, Outcome.AUDIT_REJECTED})


def passes(outcome: Outcome | None) -> bool:
    """Whether the call went through: allowed, or rejected in audit mode only."""
    return outcome in PASSING


# ----------------------------------------------------------------------------- aggregation

@functools.lru_cache(maxsize=1 << 14)
def network_of(addr: str | None) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address is in: how replay groups remote peers."""
    if not addr:
        return "-"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def service_port(exit: Exit, e) -> int | None:
    """The port that says what the call was for: a connect's remote port, a listen's or an
    accept's local port (a client's ephemeral port says nothing)."""
    return e.remote_port if exit is Exit.CONNECT else e.local_port


MAX_HOSTS = 8      # per group, shown; more are counted
MAX_SAMPLES = 5    # sample seqs per group


@dataclass
class Group:
    kind: str                 # "break" | "open"
    exit: str
    program: str
    user: str
    network: str
    port: int | None
    old_rule: str
    new_rule: str
    old_outcome: str
    new_outcome: str
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    hosts: dict[str, int] = field(default_factory=dict)
    more_hosts: int = 0
    samples: list[int] = field(default_factory=list)
    approximated: int = 0

    def add(self, e, approximated: bool) -> None:
        if not self.count or e.ts_ns < self.first_ns:
            self.first_ns = e.ts_ns
        self.last_ns = max(self.last_ns, e.ts_ns)
        self.count += 1
        self.approximated += approximated
        h = e.host or "-"
        if h in self.hosts:
            self.hosts[h] += 1
        elif len(self.hosts) < MAX_HOSTS:
            self.hosts[h] = 1
        else:
            self.more_hosts += 1
        if len(self.samples) < MAX_SAMPLES and e.seq is not None:
            self.samples.append(e.seq)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "exit": self.exit, "program": self.program, "user": self.user,
            "network": self.network, "port": self.port, "old_rule": self.old_rule, "new_rule": self.new_rule,
            "old_outcome": self.old_outcome, "new_outcome": self.new_outcome,
            "count": self.count, "approximated": self.approximated,
            "first": format_time(self.first_ns), "last": format_time(self.last_ns),
            "hosts": sorted(self.hosts), "more_hosts": self.more_hosts, "samples": self.samples,
        }


@dataclass
class Report:
    candidate: str
    against: str | None          # None: the journaled outcomes
    since_ns: int | None
    until_ns: int | None
    decisions: int = 0           # replayed
    unchanged: int = 0
    same_effect: int = 0         # outcome or rule differ, the call goes through (or not) alike
    breaks: int = 0
    opens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    approximated: int = 0
    approximated_breaks: int = 0
    approximated_opens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    groups: dict[tuple, Group] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)   # per kind: decisions past MAX_GROUPS

    MAX_GROUPS = 5000

    @property
    def exit_code(self) -> int:
        """0 no change, 2 only opens, 3 something breaks (documented in --help and docs)."""
        return 3 if self.breaks else 2 if self.opens else 0

    @property
    def result(self) -> str:
        return "breaks" if self.breaks else "opens" if self.opens else "no-change"

    def sorted_groups(self, kind: str) -> list[Group]:
        return sorted((g for g in self.groups.values() if g.kind == kind), key=lambda g: (-g.count, g.first_ns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result, "exit_code": self.exit_code,
            "candidate": self.candidate, "against": self.against or "journal",
            "since": None if self.since_ns is None else format_time(self.since_ns),
            "until": None if self.until_ns is None else format_time(self.until_ns),
            "decisions": self.decisions, "unchanged": self.unchanged, "same_effect": self.same_effect,
            "breaks": self.breaks, "opens": self.opens,
            "skipped": {k: {"count": n, "why": SKIP_WHY[k]} for k, n in sorted(self.skipped.items())},
            "approximated": {
                "decisions": self.approximated, "in_breaks": self.approximated_breaks,
                "in_opens": self.approximated_opens,
                "reasons": {k: {"count": n, "why": REASONS[k][1]} for k, n in sorted(self.reasons.items())},
            },
            "groups": {kind: [g.to_dict() for g in self.sorted_groups(kind)] for kind in ("break", "open")},
            "other": self.other,
        }


def replay(entries: Iterable, candidate: Policy, against: Policy | None = None, *,
           since_ns: int | None = None, until_ns: int | None = None, compiled: Compiled | None = None) -> Report:
    """Replay decision-type entries (any others are ignored) through `candidate` (`compiled`:
    its tables, if the caller has them). The old outcome is the journaled one, or
    `against`'s. Streams: one pass, bounded state."""
    new = Evaluator(candidate, compiled)
    old = Evaluator(against) if against is not None else None
    rep = Report(candidate.source, against.source if against is not None else None, since_ns, until_ns)
    groups, skipped, reasons = rep.groups, rep.skipped, rep.reasons
    sides = cache_sides(new, *([old] if old is not None else []))
    n = dict.fromkeys(("decisions", "unchanged", "same_effect", "breaks", "opens", "approximated",
                       "approximated_breaks", "approximated_opens"), 0)
    exit_of, passing, skip_rules, nverdict, ncache = EXIT_OF_TYPE, PASSING, SKIP_RULES, new.verdict, new._cache
    ibmi, udp_types = Source.IBMI, UDP_TYPES
    for e in entries:   # the hot loop: a dict lookup per entry once its call has been seen
        ex = exit_of.get(e.type)
        if ex is None or e.outcome is None:
            continue
        if e.rule in skip_rules or e.extra.get("flow") == "summary":
            why = skip_reason(e)
            skipped[why] = skipped.get(why, 0) + 1
            continue
        la, lp, ra, rp = sides[ex]
        x = e.extra   # call_key, inlined: this line runs per entry
        key = (ex, e.uid, e.gid, e.program, x.get(EXTRA_GROUPS), x.get(EXTRA_EXE), x.get("owner"), x.get("protocol"),
               e.source is ibmi, e.type in udp_types, e.local_addr if la else None, e.local_port if lp else None,
               e.remote_addr if ra else None, e.remote_port if rp else None)
        nv = ncache.get(key) or nverdict(e, key)
        approx = nv.approx
        if old is not None:
            ov = old.verdict(e, key)
            old_outcome, old_rule = ov.outcome, ov.rule
            approx = approx | ov.approx
        else:
            old_outcome, old_rule = e.outcome, e.rule or "-"
        n["decisions"] += 1
        if approx:
            n["approximated"] += 1
            for r in approx:
                reasons[r] = reasons.get(r, 0) + 1
        was = old_outcome in passing
        if was == (nv.outcome in passing):
            n["unchanged" if old_outcome == nv.outcome and old_rule == nv.rule else "same_effect"] += 1
            continue
        kind = "break" if was else "open"
        n["breaks" if was else "opens"] += 1
        if approx:
            n["approximated_breaks" if was else "approximated_opens"] += 1
        user = e.user or (str(e.uid) if e.uid is not None else "-")
        gkey = (kind, ex, e.program, user, network_of(e.remote_addr if ex is not Exit.LISTEN else None),
                service_port(ex, e), old_rule, nv.rule, old_outcome)
        g = groups.get(gkey)
        if g is None:
            if len(groups) >= rep.MAX_GROUPS:   # bounded: the rest are counted, not grouped
                rep.other[kind] = rep.other.get(kind, 0) + 1
                continue
            g = groups[gkey] = Group(kind, ex.label, e.program or "-", user, gkey[4], gkey[5], old_rule, nv.rule,
                                     old_outcome.value, nv.outcome.value)
        g.add(e, bool(approx))
    for k, v in n.items():
        setattr(rep, k, v)
    return rep
