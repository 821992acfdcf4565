"""Compile a Policy into decision tables (the form the kernel and `explain` both use).

Linear bit vector search: every dimension of a decision (exit, user, group, program,
local/remote address, local/remote port) maps its value to a bitmap of the rules that
value allows; the first matching rule is the lowest bit set in all of them. A dimension's
bitmap for a value is

    wildcard | (membership ^ negated)

where wildcard = rules that don't test this field, membership = rules whose field lists
the value, negated = rules whose field is negated. Addresses use longest-prefix match, so
each prefix inherits the membership of every shorter prefix that covers it. Bitmaps are
Python ints here (bit r = rule r), deduplicated into a table of indices.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass, field

from sockgate.errors import PolicyError
from sockgate.policy.model import (
    MAX_BITMAPS, MAX_RULES, Action, Exit, Match, Mode, Outcome, Policy, Protocol, Rule,
)
from sockgate.record import ipv4_packed

# verdict numbers as in the kernel header (SG_ALLOWED, SG_REJECTED, SG_AUDIT_REJECTED)
VERDICT_OF = {Outcome.ALLOWED: 0, Outcome.REJECTED: 1, Outcome.AUDIT_REJECTED: 2}
OUTCOME_OF = {v: k for k, v in VERDICT_OF.items()}
LOCAL, REMOTE = 0, 1
RULES_PER_SUMMARY_WORD = 64 * 64

V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_MAPPED_KEY = (int(V4_MAPPED.network_address), 96)  # all of IPv4


def as_v6(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(128-bit network address, prefix length) with IPv4 v4-mapped."""
    if net.version == 4:
        return (0xFFFF << 32) | int(net.network_address), 96 + net.prefixlen
    return int(net.network_address), net.prefixlen


def addr_as_v6(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if isinstance(addr, str):
        v4 = ipv4_packed(addr)   # the common case, without ipaddress
        if v4 is not None:
            return (0xFFFF << 32) | int.from_bytes(v4, "big")
    a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    return (0xFFFF << 32) | int(a) if a.version == 4 else int(a)


def kernel_dev(st_dev: int) -> int:
    """The kernel's dev_t for a superblock (MAJOR << 20 | MINOR) from stat()'s st_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def program_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return kernel_dev(st.st_dev), st.st_ino


def outcome_for(action: Action, mode: Mode) -> Outcome:
    if action is Action.ALLOW:
        return Outcome.ALLOWED
    return Outcome.REJECTED if mode is Mode.ENFORCE else Outcome.AUDIT_REJECTED


@dataclass
class Compiled:
    """Decision tables. Every *_idx is an index into `bitmaps`."""

    nrules: int
    rules: list[Rule]
    verdicts: list[int]                        # per rule
    default_verdicts: list[int]                # per exit
    bitmaps: list[int] = field(default_factory=list)
    # the exit point is folded into the user dimension: (exit, uid) -> idx, miss per exit
    users: dict[tuple[int, int], int] = field(default_factory=dict)
    user_miss: list[int] = field(default_factory=list)
    groups: dict[int, tuple[int, int]] = field(default_factory=dict)  # gid -> (alone, membership)
    group_miss: int = 0
    group_wild: int = 0
    group_neg: int = 0
    programs: dict[tuple[int, int], int] = field(default_factory=dict)
    program_miss: int = 0
    # per side: {(net128, prefixlen128): idx}; (0, 0) is the default entry
    addrs: list[dict[tuple[int, int], int]] = field(default_factory=lambda: [{}, {}])
    # per side, per protocol class (the protocol dimension rides along with the ports):
    # sorted segments [(first_port, idx)], covering 0..65535
    ports: list[list[list[tuple[int, int]]]] = field(default_factory=lambda: [[], []])
    # what decisions need to know about the caller (the kernel skips the rest)
    needs_groups: bool = True
    needs_program: bool = True
    needs_owner: bool = True
    emit_allowed: bool = False
    emit_rejected: bool = True
    emit_udp: bool = False
    reject_errno: int = 1
    fold_rate: int = 200         # rejection events per user and second before they are counted instead
    digest: str = ""

    @functools.cached_property
    def addr_lengths(self) -> list[list[int]]:
        """Per side, the prefix lengths present, longest first (longest-prefix match)."""
        return [sorted({plen for _, plen in table}, reverse=True) for table in self.addrs]

    @functools.cached_property
    def port_starts(self) -> list[list[list[int]]]:
        """Per side and protocol class, each port segment's first port (for bisect)."""
        return [[[p for p, _ in segs] for segs in side] for side in self.ports]

    @property
    def nsummary(self) -> int:
        return max(1, -(-self.nrules // RULES_PER_SUMMARY_WORD))


class _Interner:
    def __init__(self, out: list[int]):
        self.out = out
        self.index: dict[int, int] = {}

    def __call__(self, bits: int) -> int:
        i = self.index.get(bits)
        if i is None:
            i = self.index[bits] = len(self.out)
            self.out.append(bits)
        return i


def _split(rules: list[Rule], attr: str):
    """(wildcard, negated, [(rule_index, match)]) for one field."""
    wild = neg = 0
    constrained = []
    for r in rules:
        m: Match | None = getattr(r, attr)
        if m is None:
            wild |= 1 << r.index
        else:
            if m.negated:
                neg |= 1 << r.index
            constrained.append((r.index, m))
    return wild, neg, constrained


def compile_policy(policy: Policy) -> Compiled:
    rules = list(policy.rules)
    if len(rules) > MAX_RULES:
        raise PolicyError(f"{len(rules)} rules; the kernel tables hold at most {MAX_RULES}", policy.source)
    for i, r in enumerate(rules):
        if r.index != i:
            raise PolicyError(f"rule {r.name!r} has index {r.index}, expected {i}", policy.source, r.line)
    c = Compiled(
        nrules=len(rules),
        rules=rules,
        verdicts=[VERDICT_OF[outcome_for(r.action, r.effective_mode(policy.mode))] for r in rules],
        default_verdicts=[VERDICT_OF[outcome_for(policy.defaults[e], policy.mode)] for e in Exit],
        emit_allowed=policy.journal_allowed,
        emit_rejected=policy.journal_rejected,
        emit_udp=policy.journal_udp,
        reject_errno=policy.errno,
        fold_rate=policy.fold_rejections,
        digest=policy.digest,
    )
    c.needs_groups = any(r.group for r in rules)
    c.needs_program = any(r.program for r in rules)
    c.needs_owner = any(Exit.ACCEPT in r.exits and (r.user or r.group or r.program) for r in rules)
    intern = _Interner(c.bitmaps)
    exit_bits = [sum(1 << r.index for r in rules if e in r.exits) for e in Exit]

    # users, per exit point (the exit dimension rides along: one bitmap fewer per decision)
    wild, neg, cons = _split(rules, "user")
    members: dict[int, int] = {}
    for ri, m in cons:
        for uid in m.values:
            members[uid] = members.get(uid, 0) | (1 << ri)
    c.user_miss = [intern((wild | neg) & exit_bits[e]) for e in Exit]
    # an entry only where it differs from the miss (a uid named by connect rules alone needs
    # none for listen and accept): a third of the entries, so more users fit the kernel map
    c.users = {}
    for e in Exit:
        for uid, mem in members.items():
            idx = intern((wild | (mem ^ neg)) & exit_bits[e])
            if idx != c.user_miss[e]:
                c.users[(e, uid)] = idx

    # groups
    wild, neg, cons = _split(rules, "group")
    members = {}
    for ri, m in cons:
        for gid in m.values:
            members[gid] = members.get(gid, 0) | (1 << ri)
    c.groups = {gid: (intern(wild | (mem ^ neg)), intern(mem)) for gid, mem in members.items()}
    c.group_miss = intern(wild | neg)
    c.group_wild = intern(wild)
    c.group_neg = intern(neg)

    # programs, by (dev, inode) of the file as it is now
    wild, neg, cons = _split(rules, "program")
    pmembers: dict[tuple[int, int], int] = {}
    for ri, m in cons:
        for path in m.values:
            ident = program_identity(path)
            if ident is None:
                raise PolicyError(f"program {path} does not exist", policy.source, rules[ri].line)
            pmembers[ident] = pmembers.get(ident, 0) | (1 << ri)
    c.programs = {ident: intern(wild | (mem ^ neg)) for ident, mem in pmembers.items()}
    c.program_miss = intern(wild | neg)

    for side, attr in ((LOCAL, "local"), (REMOTE, "remote")):
        c.addrs[side] = _compile_addrs(rules, attr, intern)
    # protocol, folded into both sides' port tables (every decision reads one of them;
    # accept reads both, which ANDs the same protocol bits twice: harmless)
    wild, neg, cons = _split(rules, "protocol")
    proto_bits = []
    for proto in Protocol:
        mem = sum(1 << ri for ri, m in cons if proto in m.values)
        proto_bits.append(wild | (mem ^ neg))
    for side, attr in ((LOCAL, "local_port"), (REMOTE, "remote_port")):
        sweep = _port_sweep(rules, attr)
        c.ports[side] = [_compile_ports(sweep, intern, proto_bits[p]) for p in Protocol]
    _check_fits(c, policy.source)
    return c


def _check_fits(c: Compiled, source: str) -> None:
    """Refuse tables the kernel maps cannot hold (one slot's share of each map)."""
    used = {
        "distinct rule bitmaps": (len(c.bitmaps), MAX_BITMAPS),
        "user entries (uids x exit points)": (len(c.users), MAX_RULES),
        "groups": (len(c.groups), MAX_RULES),
        "programs": (len(c.programs), MAX_RULES),
        "address prefixes": (len(c.addrs[LOCAL]) + len(c.addrs[REMOTE]), MAX_BITMAPS),
    }
    over = [f"{what}: {n:,} (the kernel holds {cap:,})" for what, (n, cap) in used.items() if n > cap]
    if over:
        raise PolicyError("the compiled policy does not fit the kernel tables: " + "; ".join(over)
                          + "; split lists across fewer rules or merge addresses into wider prefixes", source)


def _compile_addrs(rules: list[Rule], attr: str, intern: _Interner) -> dict[tuple[int, int], int]:
    wild, neg, cons = _split(rules, attr)
    members: dict[tuple[int, int], int] = {}
    for ri, m in cons:
        for net in m.values:
            key = as_v6(net)
            members[key] = members.get(key, 0) | (1 << ri)
    members.setdefault((0, 0), 0)
    # IPv6 networks shorter than /96 hold no IPv4 address (sockgate.record.network_contains):
    # the v4-mapped block gets its own entry, and nothing shorter is inherited inside it
    mapped_net, _ = _MAPPED_KEY
    if any(bits and plen < 96 and (mapped_net ^ net) >> (128 - plen) == 0 if plen else bits
           for (net, plen), bits in members.items()):
        members.setdefault(_MAPPED_KEY, 0)
    lengths = sorted({plen for _, plen in members})
    out: dict[tuple[int, int], int] = {}
    for (net, plen), _ in members.items():
        inherited = 0
        floor = 96 if plen >= 96 and net >> 32 == 0xFFFF else 0
        for L in lengths:  # every listed prefix that covers this one (itself included)
            if L < floor:
                continue
            if L > plen:
                break
            mask = ((1 << L) - 1) << (128 - L) if L else 0
            inherited |= members.get((net & mask, L), 0)
        out[(net, plen)] = intern(wild | (inherited ^ neg))
    return out


def _port_sweep(rules: list[Rule], attr: str) -> list[tuple[int, int]]:
    """(first port, rules matching) for each run of ports where the matching set is the
    same, from port 0: one sweep over the range ends, shared by every protocol class."""
    wild, neg, cons = _split(rules, attr)
    events: dict[int, list[tuple[int, int]]] = {}
    for ri, m in cons:
        for lo, hi in m.values:
            events.setdefault(lo, []).append((ri, +1))
            events.setdefault(hi + 1, []).append((ri, -1))
    events.setdefault(0, [])
    counts: dict[int, int] = {}
    membership = 0
    runs: list[tuple[int, int]] = []
    for port in sorted(events):
        if port > 65535:
            break
        for ri, delta in events[port]:
            n = counts.get(ri, 0) + delta
            counts[ri] = n
            if n == 0:
                membership &= ~(1 << ri)
            elif n == 1 and delta == 1:
                membership |= 1 << ri
        bits = wild | (membership ^ neg)
        if not runs or runs[-1][1] != bits:
            runs.append((port, bits))
    return runs


def _compile_ports(sweep: list[tuple[int, int]], intern: _Interner, also: int = -1) -> list[tuple[int, int]]:
    """Port segments of one side; every bitmap is ANDed with `also` (the protocol's)."""
    segments: list[tuple[int, int]] = []
    for port, bits in sweep:
        idx = intern(bits & also)
        if not segments or segments[-1][1] != idx:
            segments.append((port, idx))
    return segments


def port_table(segments: list[tuple[int, int]]) -> list[int]:
    """65536 bitmap indices, one per port, from the segment list."""
    table = [0] * 65536
    bounds = [p for p, _ in segments[1:]] + [65536]
    for (start, idx), end in zip(segments, bounds):
        table[start:end] = [idx] * (end - start)
    return table
