"""Learn a least-privilege policy from journaled decisions, as TOML a person reviews.

One allow rule per (exit point, user, program, protocol) that was seen going through
(allowed, or audit-rejected: it went through), narrowed to where it went: remote networks
(merged into a CIDR only where dense, see `merge_addresses`) and service ports (ranges only
where contiguous). Ephemeral client ports are never learned (a connect's local port, an
accept's remote port). Every exit point defaults to reject. Without `generalize` no rule
widens to any user or any program: a decision whose user or program the policy language
cannot name (IBM i profiles, an executable gone from this host, an unknown accept owner)
is not learned, and the file says how many and why. With `generalize`, rules are per
(exit, program, protocol) for any user, and unnameable programs become "any program".

The text is parsed back with the policy parser before it is returned: what learn writes
is what `policy check` accepts. Names in comments are journal text (attacker-controlled):
comments go through record.oneline and values through toml_string, so no name can end a
comment or a string.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

from sockgate.policy.model import Exit, Protocol
from sockgate.policy.parse import _program_value, parse_policy
from sockgate.journal.store import FactsCache, damaged_row, decision_rows
from sockgate.policy.replay import (
    EXIT_OF_TYPE, PASSING, PROTOCOL_NAME, SKIP_RULES, _DAMAGED, _OUTCOMES, protocol_of,
)
from sockgate.record import format_time, oneline

MAX_HOSTS = 8

NOT_LEARNED_WHY = {
    "no-uid": "no Linux uid in the entry (IBM i user profiles; accepts whose owner the kernel did not know)",
    "no-program": "the program is not an executable on this host (no path, IBM i LIB/PGM, or gone)",
    "min-count": "rules seen fewer times than --min-count",
    "folded": "summaries of a user's audit-rejections past fold_rejections per second (no addresses)",
}


@dataclass
class Seen:
    """What one learned rule covers, and its evidence."""

    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    first_seq: int | None = None
    hosts: set[str] = field(default_factory=set)
    users: dict[int, str | None] = field(default_factory=dict)
    addrs: set[str] = field(default_factory=set)     # remote addresses (connect, accept)
    ports: set[int] = field(default_factory=set)     # service ports

    def add(self, ts_ns: int, seq: int | None, host: str | None, uid: int | None, user: str | None,
            remote_addr: str | None, port: int | None) -> None:
        """One decision; remote_addr None for a listen (its remote side is not decided on)."""
        if not self.count or ts_ns < self.first_ns:
            self.first_ns = ts_ns
        if ts_ns > self.last_ns:
            self.last_ns = ts_ns
        self.count += 1
        if self.first_seq is None:
            self.first_seq = seq
        if len(self.hosts) < MAX_HOSTS:
            self.hosts.add(host or "-")
        if uid is not None and uid not in self.users and len(self.users) < MAX_HOSTS:
            self.users[uid] = user
        if remote_addr:
            self.addrs.add(remote_addr)
        if port is not None:
            self.ports.add(port)


@dataclass
class Learned:
    rules: dict[tuple, Seen] = field(default_factory=dict)
    not_learned: dict[str, int] = field(default_factory=dict)
    decisions: int = 0          # that went through, and so were learned from
    first_ns: int | None = None
    last_ns: int | None = None


def observe(entries: Iterable, *, generalize: bool = False) -> Learned:
    """One pass over decisions (Journal.decisions rows, or Entries): what went through, per
    rule key. The per-row work is a few dict hits: whether a program can be named and a
    call's protocol are cached per distinct value."""
    out = Learned()
    rules, not_learned = out.rules, out.not_learned
    programs: dict[str | None, bool] = {}   # path -> nameable in a policy on this host
    protocols: dict[tuple, Protocol] = {}   # (extra.protocol, type, source) -> protocol class
    facts_cache = FactsCache()
    known, facts_miss = facts_cache.known, facts_cache.miss
    exit_of = {t.value: ex for t, ex in EXIT_OF_TYPE.items()}
    outcomes, passing, skip_rules, listen, connect = _OUTCOMES, PASSING, SKIP_RULES, Exit.LISTEN, Exit.CONNECT
    decisions, first_ns, last_ns = 0, None, None
    for row in decision_rows(entries):
        seq, ts_ns, host, outcome, rule, user, typ, source, uid, gid, program, extra, la, lp, ra, rp = row
        ex = exit_of.get(typ)
        if ex is None:
            continue
        o = outcomes.get(outcome, _DAMAGED)
        if o is _DAMAGED:
            raise damaged_row(row, f"outcome {outcome!r}")
        if o not in passing or rule in skip_rules:
            continue
        facts = known.get(extra) or facts_miss(row)
        if facts.flow == "summary":
            continue
        if facts.folded == "summary":  # audit-rejections counted without addresses: nothing to narrow by
            not_learned["folded"] = not_learned.get("folded", 0) + 1
            continue
        ok = programs.get(program)
        if ok is None:
            ok = programs[program] = _nameable(program)
        if not ok:
            program = None
        if not generalize and (uid is None or program is None):
            why = "no-uid" if uid is None else "no-program"
            not_learned[why] = not_learned.get(why, 0) + 1
            continue
        decisions += 1
        if first_ns is None or ts_ns < first_ns:
            first_ns = ts_ns
        if last_ns is None or ts_ns > last_ns:
            last_ns = ts_ns
        pk = (facts.protocol, typ, source)
        proto = protocols.get(pk)
        if proto is None:
            proto = protocols[pk] = protocol_of(facts, typ, source)[0]
        key = (ex, None if generalize else uid, program, proto)
        seen = rules.get(key)
        if seen is None:
            seen = rules[key] = Seen()
        seen.add(ts_ns, seq, host, uid, user, ra if ex is not listen else None, rp if ex is connect else lp)
    out.decisions, out.first_ns, out.last_ns = decisions, first_ns, last_ns
    return out


def _nameable(path: str | None) -> bool:
    """Whether a policy can name this program on this host (an executable path)."""
    if not path:
        return False
    try:
        _program_value(path)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- merging

DENSE_PREFIX = {4: 24, 6: 120}   # never wider than this; a block is written whole only if
DENSE_FILL = 0.5                 # at least this share of its addresses was seen,
DENSE_MIN = 16                   # and at least this many (4 of a /29 is no evidence of a /29)


def merge_addresses(addrs: Iterable[str]) -> list[str]:
    """Addresses as networks: a block up to /24 (IPv6 /120) becomes one CIDR when at least
    half of its addresses, and 16 or more, were seen; the rest stay single hosts. Adjacent
    results are merged only exactly (collapse), so nothing else is added."""
    by_version: dict[int, set[int]] = {4: set(), 6: set()}
    for a in addrs:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        by_version[ip.version].add(int(ip))
    nets: list = []
    for version, values in by_version.items():
        bits = 32 if version == 4 else 128
        span = bits - DENSE_PREFIX[version]
        net_cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        blocks: dict[int, list[int]] = {}
        for v in values:
            blocks.setdefault(v >> span, []).append(v)
        for base, members in blocks.items():
            _dense(sorted(members), base << span, span, bits, net_cls, nets)
    collapsed = []
    for version in (4, 6):
        collapsed += ipaddress.collapse_addresses(n for n in nets if n.version == version)
    return [str(n.network_address) if n.num_addresses == 1 else str(n) for n in collapsed]


def _dense(members: list[int], start: int, span: int, bits: int, net_cls, out: list) -> None:
    size = 1 << span
    if span >= 2 and len(members) >= max(DENSE_MIN, size * DENSE_FILL):
        out.append(net_cls((start, bits - span)))
        return
    if span == 0 or len(members) <= 1 and span < 2:
        out.extend(net_cls((m, bits)) for m in members)
        return
    half = start + (size >> 1)
    lo = [m for m in members if m < half]
    hi = [m for m in members if m >= half]
    if lo:
        _dense(lo, start, span - 1, bits, net_cls, out)
    if hi:
        _dense(hi, half, span - 1, bits, net_cls, out)


def merge_ports(ports: Iterable[int]) -> list[int | str]:
    """Ports as values: contiguous runs become "N-M", others stay single."""
    out: list[int | str] = []
    run: list[int] = []
    for p in sorted(set(ports)):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [p]
    if run:
        out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return out


# ----------------------------------------------------------------------------- TOML

_TOML_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
_TOML_UNSAFE = re.compile('["\\\\\x00-\x1f\x7f\ud800-\udfff]')


def toml_string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped (a lone
    surrogate, which TOML cannot hold, becomes U+FFFD)."""
    def esc(m: re.Match) -> str:
        c = m.group()
        if "\ud800" <= c <= "\udfff":
            return "\ufffd"
        return _TOML_ESC.get(c) or f"\\u{ord(c):04x}"

    return '"' + _TOML_UNSAFE.sub(esc, s) + '"'


def _value(v: int | str) -> str:
    return str(v) if isinstance(v, int) else toml_string(v)


def _array(values: list) -> str:
    return "[" + ", ".join(_value(v) for v in values) + "]"


def _comment(text: str) -> str:
    return "# " + oneline(text)


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _rule_name(ex: Exit, uid: int | None, users: dict[int, str | None], program: str | None, proto: Protocol,
               taken: set[str]) -> str:
    who = "any-user" if uid is None else (users.get(uid) or f"uid{uid}")
    prog = program.rsplit("/", 1)[-1] if program else "any-program"
    base = _NAME_UNSAFE.sub("_", f"{ex.label}-{prog}-{who}-{PROTOCOL_NAME[proto]}")[:100].strip("_") or ex.label
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def render(learned: Learned, *, source: str, min_count: int = 1, generalize: bool = False,
           now_ns: int | None = None) -> str:
    """The learned policy's TOML text (checked by the parser before it is returned)."""
    rules = sorted(learned.rules.items(),
                   key=lambda kv: (int(kv[0][0]), kv[0][1] if kv[0][1] is not None else -1, kv[0][2] or "",
                                   int(kv[0][3])))
    kept = [(k, s) for k, s in rules if s.count >= min_count]
    dropped = sum(s.count for k, s in rules if s.count < min_count)
    not_learned = dict(learned.not_learned)
    if dropped:
        not_learned["min-count"] = dropped
    span = (f"{format_time(learned.first_ns)} to {format_time(learned.last_ns)}" if learned.first_ns is not None
            else "nothing")
    lines = [
        _comment(f"Learned by `sockgate policy learn` from {source}: {learned.decisions} decisions that went "
                 f"through, {span}."),
        "# Least privilege: each rule allows what was seen, no more; every exit point defaults to reject.",
        "# Review every rule (evidence above it), then try it: `sockgate policy replay THIS-FILE`,",
        "# `sockgate policy check THIS-FILE`, and mode = \"audit\" or shadow mode before enforcing.",
    ]
    if generalize:
        lines.append("# --generalize: rules hold for any user; unnameable programs became any program.")
    for why, n in sorted(not_learned.items()):
        lines.append(_comment(f"NOT LEARNED: {n} decisions: {NOT_LEARNED_WHY[why]} (replay reports them as breaks)"))
    lines += ["", 'mode = "enforce"', 'audit_levels = ["*NETFAIL"]', "", "[defaults]",
              *(f'{ex.label} = "reject"' for ex in Exit)]
    taken: set[str] = set()
    for (ex, uid, program, proto), s in kept:
        users = ", ".join(f"{u} ({n})" if n else str(u) for u, n in sorted(s.users.items()))
        lines += ["", _comment(f"evidence: {s.count} decisions, first {format_time(s.first_ns)}, last "
                               f"{format_time(s.last_ns)}, hosts {', '.join(sorted(s.hosts))}, sample seq "
                               f"{s.first_seq}"),
                  _comment(f"users: {users or '-'}; program: {program or 'any'}")]
        lines += ["[[rule]]", f"name = {toml_string(_rule_name(ex, uid, s.users, program, proto, taken))}",
                  f'exit = ["{ex.label}"]']
        if uid is not None:
            lines.append(f"user = [{uid}]")
        if program is not None:
            lines.append(f"program = [{toml_string(program)}]")
        lines.append(f'protocol = ["{PROTOCOL_NAME[proto]}"]')
        if ex is not Exit.LISTEN and s.addrs:
            lines.append(f"remote = {_array(merge_addresses(s.addrs))}")
        if s.ports:
            lines.append(f"{'remote_port' if ex is Exit.CONNECT else 'local_port'} = {_array(merge_ports(s.ports))}")
        lines.append('action = "allow"')
    text = "\n".join(lines) + "\n"
    parse_policy(text, "<learned>")   # raises PolicyErrors (file:line) if learn ever wrote nonsense
    return text
