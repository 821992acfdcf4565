"""Replay journaled decisions through a candidate policy's compiled tables.

Every socket decision in the journal (kernel A/C/L and UDP O/I entries, imported IBM i SK
A/C/I/O entries) is turned back into the call it was (`call_of`), decided again by
`evaluate.decide` over `compile_policy(candidate)` — the tables the kernel would get —
and compared with the journaled outcome (or with a second policy, evaluated the same
way). Differences are aggregated into a bounded number of groups, so memory does not grow
with the journal; evaluations are cached per distinct call.

Replay reads `DecisionRow`s (sockgate.journal.store: the columns a decision needs, as
stored, `Journal.decisions`) and decodes each distinct extra once (`FactsCache`), so a call
seen before costs a few dict hits. Entries are accepted too (converted by `decision_row`):
the results are the same, tests/replay/test_fast_path.py holds both paths to it.

Exactness: a decision is *approximated* when a rule that could have decided it tests a
field the entry does not carry (supplementary groups, the executable's dev:inode, an IBM i
entry's Linux identity). `REASONS` says why, per reason; every report format counts them.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

from sockgate.journal.store import (
    DECISION_KEY, DECISION_SIDES, DecisionRow, ExtraFacts, FactsCache, check_decision_row, damaged_row, decision_row, decision_rows,
    extra_facts,
)
from sockgate.policy.compile import LOCAL, OUTCOME_OF, REMOTE, Compiled, addr_as_v6, compile_policy, program_identity
from sockgate.policy.evaluate import decide, first_rule, lookup_addr, lookup_port, who_bits
from sockgate.policy.model import UID_UNKNOWN, Exit, Outcome, Policy, Protocol
from sockgate.record import EntryType, Source, format_time, ipv4_packed

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


def as_row(e) -> DecisionRow:
    """A DecisionRow (as Journal.decisions reads it), a plain tuple in its order, or an Entry."""
    if isinstance(e, DecisionRow):
        return e
    return DecisionRow._make(e) if isinstance(e, tuple) else decision_row(e)


def protocol_of(facts: ExtraFacts, type: str, source: str) -> tuple[Protocol, bool]:
    """(protocol class, known): extra.protocol, else IBM i's type (O/I are UDP, A/C TCP)."""
    p = PROTOCOL_OF_NAME.get(str("" if facts.protocol is None else facts.protocol).lower())
    if p is not None:
        return p, True
    if type in UDP_TYPES:
        return Protocol.UDP, True
    return Protocol.TCP, source == Source.IBMI


def skip_reason(rule: str | None, facts: ExtraFacts) -> str | None:
    """Why a decision-type entry is not replayed, or None. UDP flow summaries count the later
    datagrams of a flow whose decision is its first entry (extra.flow = "first")."""
    if rule in SKIP_RULES:
        return rule
    if facts.flow == "summary":
        return "udp-summary"
    if facts.folded == "summary":
        return "folded"
    return None


SKIP_WHY = {**SKIP_RULES, "udp-summary": "UDP flow summaries (their flow's decision is its first entry)",
            "folded": "rejection summaries (a user past fold_rejections per second: counted, no addresses)"}


def call_of(e, facts: ExtraFacts | None = None) -> Call:
    """The call a decision-type entry journals (see REASONS for what may be missing); `e` is
    a DecisionRow (or its tuple) or an Entry, `facts` its extra's, if decoded already."""
    r = as_row(e)
    ex, uid, gids, program, ident, proto, missing = identity_of(r, extra_facts(r.extra) if facts is None else facts)
    local = remote = None
    if ex is not Exit.CONNECT:
        if r.local_addr is None or r.local_port is None:
            missing |= {"no-local"}
        local = (r.local_addr or "::", r.local_port or 0)
    if ex is not Exit.LISTEN:
        if r.remote_addr is None or r.remote_port is None:
            missing |= {"no-remote"}
        remote = (r.remote_addr or "::", r.remote_port or 0)
    return Call(ex, uid, gids, program, ident, local, remote, proto, missing)


def identity_of(r: DecisionRow, x: ExtraFacts) -> tuple[Exit, int, tuple[int, ...], str | None,
                                                         tuple[int, int] | None, Protocol, frozenset[str]]:
    """call_of without the sides: (exit, uid, gids, program, ident, protocol, missing), what
    the row's DECISION_KEY fields and its extra's facts say."""
    ex = EXIT_OF_TYPE[r.type]
    missing: set[str] = set()
    ibmi = r.source == Source.IBMI
    # the kernel decides an unknown accept owner as SG_UID_UNKNOWN with no groups or program:
    # replaying it that way is exact (extra.owner = "unknown")
    owner_unknown = x.owner == "unknown"
    if r.uid is not None:
        uid = r.uid
    else:
        uid = UID_UNKNOWN
        if not owner_unknown:
            missing.add("ibmi-identity" if ibmi else "no-uid")
    gids = _int_list(x.groups) if x.groups is not None else None
    if gids is None:
        if r.gid is not None:
            gids = (r.gid,)
            missing.add("groups")
        else:
            gids = (UID_UNKNOWN,)
            if not owner_unknown and not ibmi:
                missing.add("no-uid")
    ident = _ident(x.exe) if x.exe is not None else None
    program = r.program
    if ident is None and not owner_unknown and not ibmi:
        missing.add("program-path" if program and program.startswith("/") else "no-program")
    proto, known = protocol_of(x, r.type, r.source)
    if not known:
        missing.add("protocol")
    return ex, uid, gids, program, ident, proto, frozenset(missing)


Sides = dict[Exit, tuple[bool, bool, bool, bool]]


def key_getters(sides: Sides | None = None, also: tuple[int, ...] = ()) -> dict[str, operator.itemgetter]:
    """Per decision entry type (its stored letter): what builds a row's cache key with its
    ExtraFacts: the DecisionRow fields a decision depends on (type, source, identity) and
    the sides it is decided on. A connect's local side and a listen's
    remote side are not; `sides` (per exit: keep the local address, local port, remote
    address, remote port) leaves out what no rule tests, so an accept's ephemeral client
    port does not defeat the cache. `also`: more DecisionRow indexes, first in the key.

    A side's field left out still counts by whether it is there at all: an entry without
    it is missing "no-local"/"no-remote", which approximates a decision when a rule tests
    the side's other field; then the key ends with `field is None`."""
    out = {}
    for t, ex in EXIT_OF_TYPE.items():
        keep = (sides or _ALL_SIDES)[ex]
        get = operator.itemgetter(*also, *DECISION_KEY, *(i for i, k in zip(DECISION_SIDES, keep) if k))
        absent = tuple(DECISION_SIDES[j] for a, p in ((0, 1), (2, 3)) if keep[a] != keep[p]
                       for j in (a, p) if not keep[j])
        out[t.value] = _with_absent(get, absent) if absent else get
    return out


def _with_absent(get: operator.itemgetter, absent: tuple[int, ...]):
    if len(absent) == 1:
        i = absent[0]
        return lambda row: (get(row), row[i] is None)
    return lambda row: (get(row), *(row[i] is None for i in absent))


_ALL_SIDES = {Exit.CONNECT: (False, False, True, True), Exit.LISTEN: (True, True, False, False),
              Exit.ACCEPT: (True, True, True, True)}
_ALL_GETTERS = key_getters()


def call_key(e) -> tuple:
    """What a decision depends on, as a hashable key (the evaluation cache's)."""
    r = as_row(e)
    return _ALL_GETTERS[r.type](r), extra_facts(r.extra)


def cache_sides(*evaluators: "Evaluator") -> Sides:
    """key_getters' `sides` for these policies: an address or port only where a rule tests it."""
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
    """One policy's compiled tables, deciding journaled calls (cached per distinct call).

    A call not seen before is decided from cached parts (evaluate.decide in its three
    parts): the caller's identity (DECISION_KEY fields and extra facts: user, groups and
    program bits, protocol, what is missing), each side's address and port bits, the
    verdict per (deciding rule, what is missing). Replaying a policy that tests remote
    addresses meets every (caller, address, port) anew, but few callers and addresses;
    tests/replay/test_fast_path.py holds the parts to `decide(call_of(row))` row by row."""

    CACHE_MAX = 1 << 18   # distinct calls kept (and of each part); cleared when full: memory stays bounded

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
        self._who: dict[tuple, tuple[Exit, Protocol, int, frozenset[str]]] = {}
        self._addr_bits: tuple[dict[str, int], dict[str, int]] = ({}, {})   # per side (LOCAL, REMOTE)
        self._port_bits: dict[tuple[int, int, int], int] = {}
        self._verdicts: dict[tuple, Verdict] = {}

    def verdict(self, e, key: tuple | None = None) -> Verdict:
        """The verdict for a DecisionRow (or Entry); `key` its cache key, if built already."""
        key = call_key(e) if key is None else key
        v = self._cache.get(key)
        if v is None:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            v = self._cache[key] = self.decide_row(as_row(e), key[1])
        return v

    def decide_row(self, r: DecisionRow, facts: ExtraFacts) -> Verdict:
        """decide(call_of(r, facts)), from the cached parts (not cached itself: `verdict` is)."""
        c = self.c
        wkey = _IDENTITY(r), facts
        who = self._who.get(wkey)
        if who is None:
            ex, uid, gids, program, ident, proto, missing = identity_of(r, facts)
            if ident is None and program and program.startswith("/"):
                ident = _path_identity(program)   # match by path, as it is on this host
            who = _put(self._who, wkey, (ex, proto, who_bits(c, int(ex), uid, gids, ident), missing))
        ex, proto, cand, missing = who
        if ex is not Exit.CONNECT:
            if r.local_addr is None or r.local_port is None:
                missing |= {"no-local"}
            cand &= self._side(LOCAL, r.local_addr or "::", r.local_port or 0, proto)
        if ex is not Exit.LISTEN:
            if r.remote_addr is None or r.remote_port is None:
                missing |= {"no-remote"}
            cand &= self._side(REMOTE, r.remote_addr or "::", r.remote_port or 0, proto)
        verdict, rule = first_rule(c, int(ex), cand)
        vkey = ex, verdict, rule, missing
        v = self._verdicts.get(vkey)
        if v is None:
            v = _put(self._verdicts, vkey, self._verdict(ex, verdict, rule, missing))
        return v

    def _side(self, side: int, addr: str, port: int, proto: Protocol) -> int:
        a = self._addr_bits[side].get(addr)
        if a is None:
            a = _put(self._addr_bits[side], addr, self.c.bitmaps[lookup_addr(self.c, side, _v6.__wrapped__(addr))])
        p = self._port_bits.get((side, proto, port))
        if p is None:
            p = _put(self._port_bits, (side, proto, port), self.c.bitmaps[lookup_port(self.c, side, port, proto)])
        return a & p

    def decide(self, call: Call) -> Verdict:
        """The verdict for a Call, by evaluate.decide itself (the reference the parts are held to)."""
        ident = call.ident
        if ident is None and call.program and call.program.startswith("/"):
            ident = _path_identity(call.program)   # match by path, as it is on this host
        laddr, lport = call.local or ("::", 0)
        raddr, rport = call.remote or ("::", 0)
        verdict, rule = decide(self.c, int(call.exit), call.uid, call.gids, ident, _v6(laddr), lport,
                               _v6(raddr), rport, int(call.protocol))
        return self._verdict(call.exit, verdict, rule, call.missing)

    def _verdict(self, ex: Exit, verdict: int, rule: int, missing: frozenset[str]) -> Verdict:
        name = f"default:{ex.label}" if rule < 0 else self.policy.rules[rule].name
        approx: frozenset[str] = frozenset()
        if missing:
            # rules that could have decided instead: every one up to the decider (all, if none did)
            could = -1 if rule < 0 else (2 << rule) - 1
            tests = self.tests[ex]
            approx = frozenset(m for m in missing if any(tests.get(f, 0) & could for f in REASONS[m][0]))
        return Verdict(OUTCOME_OF[verdict], name, approx)


_IDENTITY = operator.itemgetter(*DECISION_KEY)


def _put(cache: dict, key, value):
    """cache[key] = value, the cache cleared first when full (Evaluator.CACHE_MAX); the value."""
    if len(cache) >= Evaluator.CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


@functools.lru_cache(maxsize=1 << 14)
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

@functools.lru_cache(maxsize=1 << 16)   # every break or open asks: a journal's remote addresses recur
def network_of(addr: str | None) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address is in: how replay groups remote peers."""
    if not addr:
        return "-"
    v4 = ipv4_packed(addr)   # the common case, without ipaddress
    if v4 is not None:
        return f"{v4[0]}.{v4[1]}.{v4[2]}.0/24"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def service_port(exit: Exit, local_port: int | None, remote_port: int | None) -> int | None:
    """The port that says what the call was for: a connect's remote port, a listen's or an
    accept's local port (a client's ephemeral port says nothing)."""
    return remote_port if exit is Exit.CONNECT else local_port


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

    def add(self, ts_ns: int, host: str | None, seq: int | None, approximated: bool) -> None:
        if not self.count or ts_ns < self.first_ns:
            self.first_ns = ts_ns
        if ts_ns > self.last_ns:
            self.last_ns = ts_ns
        self.count += 1
        self.approximated += approximated
        h = host or "-"
        if h in self.hosts:
            self.hosts[h] += 1
        elif len(self.hosts) < MAX_HOSTS:
            self.hosts[h] = 1
        else:
            self.more_hosts += 1
        if len(self.samples) < MAX_SAMPLES and seq is not None:
            self.samples.append(seq)

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


# stored outcome text -> Outcome (None: not a decision); anything else is a damaged entry
_OUTCOMES: dict[str | None, Outcome | None] = {**{o.value: o for o in Outcome}, None: None}
_DAMAGED = object()


def replay(entries: Iterable, candidate: Policy, against: Policy | None = None, *,
           since_ns: int | None = None, until_ns: int | None = None, compiled: Compiled | None = None) -> Report:
    """Replay decision-type entries (any others are ignored) through `candidate` (`compiled`:
    its tables, if the caller has them). The old outcome is the journaled one, or
    `against`'s. `entries`: Journal.decisions rows (fast) or Entries. Streams: one pass,
    bounded state.

    The hot loop: what a row comes to (skipped, unchanged, same effect, break, open, and
    what approximates it) depends only on its journaled outcome and rule, its extra and the
    fields its verdicts are cached on; a row of a kind seen before (most) is one key and one
    dict hit, counted on the cached `_Kind`; breaks and opens are grouped row by row."""
    new = Evaluator(candidate, compiled)
    old = Evaluator(against) if against is not None else None
    rep = Report(candidate.source, against.source if against is not None else None, since_ns, until_ns)
    groups = rep.groups
    sides = cache_sides(new, *([old] if old is not None else []))
    row_keys = key_getters(sides, also=_ROW_ALSO)
    exit_of = {t.value: ex for t, ex in EXIT_OF_TYPE.items()}
    outcomes, passing, skip_rules = _OUTCOMES, PASSING, SKIP_RULES
    facts_cache = FactsCache()
    known, facts_miss = facts_cache.known, facts_cache.miss
    listen = Exit.LISTEN
    kinds: dict[tuple, _Kind] = {}

    def kind_of(row: tuple) -> _Kind:
        """What a row of this key comes to: the per-row replay, done once per key."""
        check_decision_row(row)   # an edited journal's odd types stop here, named, not deep inside
        outcome = outcomes.get(row[3], _DAMAGED)
        if outcome is _DAMAGED:
            raise damaged_row(row, f"outcome {row[3]!r}")
        if outcome is None:
            return _Kind(_IGNORE)
        rule = row[4]
        facts = known.get(row[11]) or facts_miss(row)
        if rule in skip_rules or facts.flow == "summary" or facts.folded == "summary":
            return _Kind(_SKIP, why=skip_reason(rule, facts))
        # no Evaluator.verdict cache here: the row kinds are that cache, on a finer key
        r = DecisionRow._make(row)
        nv = new.decide_row(r, facts)
        approx = nv.approx
        if old is not None:
            ov = old.decide_row(r, facts)
            old_outcome, old_rule = ov.outcome, ov.rule
            approx = approx | ov.approx
        else:
            old_outcome, old_rule = outcome, rule or "-"
        was = old_outcome in passing
        if was == (nv.outcome in passing):
            kind = _UNCHANGED if old_outcome is nv.outcome and old_rule == nv.rule else _SAME
        else:
            kind = _BREAK if was else _OPEN
        return _Kind(kind, approx=approx, old_outcome=old_outcome, old_rule=old_rule, new=nv,
                     exit=exit_of[row[6]], approximated=bool(approx))

    row = None
    try:
        for row in decision_rows(entries):   # the hot loop: one dict hit once a row's kind has been seen
            rk = row_keys.get(row[6])
            if rk is None:
                continue
            k = rk(row)
            kind = kinds.get(k)
            if kind is None:
                kind = kind_of(row)
                if len(kinds) >= _KINDS_MAX:   # bounded: count what the kinds hold, then forget them
                    _tally(rep, kinds.values())
                    kinds.clear()
                kinds[k] = kind
            kind.count += 1
            if kind.kind < _BREAK:
                continue
            seq, ts_ns, host, _, _, user, _, _, uid, _, program, _, _, lp, ra, rp = row
            ex = kind.exit
            user = user or (str(uid) if uid is not None else "-")
            gkey = (kind.kind, ex, program, user, network_of(ra if ex is not listen else None),
                    service_port(ex, lp, rp), kind.old_rule, kind.new.rule, kind.old_outcome)
            g = groups.get(gkey)
            if g is None:
                label = "break" if kind.kind == _BREAK else "open"
                if len(groups) >= rep.MAX_GROUPS:   # bounded: the rest are counted, not grouped
                    rep.other[label] = rep.other.get(label, 0) + 1
                    continue
                g = groups[gkey] = Group(label, ex.label, program or "-", user, gkey[4], gkey[5], kind.old_rule,
                                         kind.new.rule, kind.old_outcome.value, kind.new.outcome.value)
            g.add(ts_ns, host, seq, kind.approximated)
    except (TypeError, ValueError, AttributeError):
        if row is not None:
            check_decision_row(row)   # a damaged field the row's kind did not look at: named
        raise
    _tally(rep, kinds.values())
    return rep


# What a row comes to, in replay(): ignored (no outcome), skipped, or a replayed decision
_IGNORE, _SKIP, _UNCHANGED, _SAME, _BREAK, _OPEN = range(6)
_KINDS_MAX = 1 << 16   # row kinds kept (each a key of ~12 values): cleared, after counting, when full
# DecisionRow indexes a row's kind depends on besides key_getters': outcome, rule, extra
_ROW_ALSO = tuple(DecisionRow._fields.index(f) for f in ("outcome", "rule", "extra"))


@dataclass(eq=False, slots=True)
class _Kind:
    kind: int
    why: str | None = None               # _SKIP: skip_reason
    approx: frozenset[str] = frozenset()
    old_outcome: Outcome | None = None
    old_rule: str | None = None
    new: Verdict | None = None
    exit: Exit | None = None
    approximated: bool = False           # bool(approx)
    count: int = 0                       # rows of this kind not yet in the report


def _tally(rep: Report, kinds: Iterable[_Kind]) -> None:
    """Add the rows counted on `kinds` to the report's counters."""
    for k in kinds:
        n, kind = k.count, k.kind
        k.count = 0
        if not n or kind == _IGNORE:
            continue
        if kind == _SKIP:
            rep.skipped[k.why] = rep.skipped.get(k.why, 0) + n
            continue
        rep.decisions += n
        if k.approx:
            rep.approximated += n
            for r in k.approx:
                rep.reasons[r] = rep.reasons.get(r, 0) + n
        if kind == _UNCHANGED:
            rep.unchanged += n
        elif kind == _SAME:
            rep.same_effect += n
        elif kind == _BREAK:
            rep.breaks += n
            rep.approximated_breaks += n if k.approx else 0
        else:
            rep.opens += n
            rep.approximated_opens += n if k.approx else 0
