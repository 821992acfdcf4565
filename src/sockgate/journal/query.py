"""Filters for show/export/monitor replay, and parsing of sizes.

A Filter becomes one SQL WHERE clause over a receiver (so the indexes do the work) and can
also test an Entry already in hand (`matches`). Values inside one field are ORed, fields
are ANDed, like policy rules. Times follow sockgate.record's grammar (an ISO time without
a zone is local time).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable

from sockgate.errors import UsageError
from sockgate.record import (
    Entry, EntryType, Network, Outcome, Source, addr_key, net_ranges, parse_range, parse_time, value_of,
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5T', '4096' -> bytes (powers of 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"bad size {text!r} (use e.g. 500M, 10G)")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))


def _time(text: Any, now_ns: int | None) -> int:
    try:
        return parse_time(text, now_ns)
    except ValueError as e:
        raise UsageError(str(e)) from None


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"bad address or CIDR {text!r}") from None


def parse_ports(text: str) -> tuple[int, int]:
    """'22' or '1024-65535' -> inclusive range."""
    try:
        return parse_range(str(text))
    except ValueError:
        raise UsageError(f"bad port or range {text!r}") from None


def _enum_values(kind: type, values: Iterable[Any], what: str) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(kind.parse(v).value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise UsageError(f"bad {what} {v!r} (one of: {choices})") from None
    return tuple(out)


@dataclass(frozen=True)
class Filter:
    """What show/export/replay select. Empty fields match everything."""

    types: tuple[str, ...] = ()          # EntryType values: A C L ... or policy/gap/...
    outcomes: tuple[str, ...] = ()       # allowed, rejected, audit-rejected, failed
    users: tuple[str, ...] = ()          # names, or uids as digits
    programs: tuple[str, ...] = ()       # paths; shell wildcards allowed (*, ?)
    rules: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()        # kernel, ibmi, sockgate
    local: tuple[Network, ...] = ()      # CIDRs
    remote: tuple[Network, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()         # local or remote port in range
    local_ports: tuple[tuple[int, int], ...] = ()
    remote_ports: tuple[tuple[int, int], ...] = ()
    since_ns: int | None = None          # inclusive
    until_ns: int | None = None          # exclusive
    from_seq: int | None = None          # inclusive
    to_seq: int | None = None            # inclusive

    @classmethod
    def build(cls, *, types=(), outcomes=(), users=(), programs=(), rules=(), hosts=(), sources=(),
              local=(), remote=(), ports=(), local_ports=(), remote_ports=(),
              since=None, until=None, from_seq=None, to_seq=None, now_ns: int | None = None) -> "Filter":
        """From user text (CLI options, monitor config): validates and converts."""
        return cls(
            types=_enum_values(EntryType, types, "entry type"),
            outcomes=_enum_values(Outcome, outcomes, "outcome"),
            users=tuple(str(u) for u in users), programs=tuple(programs), rules=tuple(rules),
            hosts=tuple(hosts), sources=_enum_values(Source, sources, "source"),
            local=tuple(n if not isinstance(n, str) else parse_network(n) for n in local),
            remote=tuple(n if not isinstance(n, str) else parse_network(n) for n in remote),
            ports=tuple(parse_ports(p) for p in ports),
            local_ports=tuple(parse_ports(p) for p in local_ports),
            remote_ports=tuple(parse_ports(p) for p in remote_ports),
            since_ns=None if since is None else (since if isinstance(since, int) else _time(since, now_ns)),
            until_ns=None if until is None else (until if isinstance(until, int) else _time(until, now_ns)),
            from_seq=from_seq, to_seq=to_seq,
        )

    # -- SQL ------------------------------------------------------------------------------

    def where(self) -> tuple[str, list[Any]]:
        """(' AND '-joined SQL condition or '1', parameters)."""
        conds: list[str] = []
        params: list[Any] = []

        def any_of(column: str, values: tuple[str, ...]) -> None:
            if values:
                conds.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(values)

        any_of("type", self.types)
        # Address searches go through the (outcome, remote_key, ts_ns) index; entries that
        # carry an address always carry an outcome, so naming every outcome changes nothing
        # but lets the planner use it (a second index on remote_key alone cost ~7 us per insert).
        any_of("outcome", self.outcomes or (tuple(o.value for o in Outcome) if self.remote else ()))
        any_of("rule", self.rules)
        any_of("host", self.hosts)
        any_of("source", self.sources)
        if self.users:
            names = [u for u in self.users if not u.isdigit()]
            uids = [int(u) for u in self.users if u.isdigit()]
            parts = []
            if names:
                parts.append(f"user IN ({','.join('?' * len(names))})")
                params.extend(names)
            if uids:
                parts.append(f"uid IN ({','.join('?' * len(uids))})")
                params.extend(uids)
            conds.append("(" + " OR ".join(parts) + ")")
        if self.programs:
            parts = []
            for p in self.programs:
                parts.append("program GLOB ?" if any(c in p for c in "*?[") else "program = ?")
                params.append(p)
            conds.append("(" + " OR ".join(parts) + ")")
        for column, nets in (("local_key", self.local), ("remote_key", self.remote)):
            if nets:
                parts = []
                for lo, hi in (span for net in nets for span in net_ranges(net)):
                    parts.append(f"{column} BETWEEN ? AND ?")
                    params.extend((lo, hi))
                conds.append("(" + " OR ".join(parts) + ")")
        for columns, ranges in ((("local_port", "remote_port"), self.ports),
                                (("local_port",), self.local_ports),
                                (("remote_port",), self.remote_ports)):
            if ranges:
                parts = []
                for col in columns:
                    for lo, hi in ranges:
                        parts.append(f"{col} BETWEEN ? AND ?")
                        params.extend((lo, hi))
                conds.append("(" + " OR ".join(parts) + ")")
        if self.since_ns is not None:
            conds.append("ts_ns >= ?")
            params.append(self.since_ns)
        if self.until_ns is not None:
            conds.append("ts_ns < ?")
            params.append(self.until_ns)
        if self.from_seq is not None:
            conds.append("seq >= ?")
            params.append(self.from_seq)
        if self.to_seq is not None:
            conds.append("seq <= ?")
            params.append(self.to_seq)
        return (" AND ".join(conds) or "1"), params

    # -- in Python ------------------------------------------------------------------------

    def matches(self, e: Entry) -> bool:
        val = value_of
        if self.types and val(e.type) not in self.types:
            return False
        if self.outcomes and val(e.outcome) not in self.outcomes:
            return False
        if self.rules and e.rule not in self.rules:
            return False
        if self.hosts and e.host not in self.hosts:
            return False
        if self.sources and val(e.source) not in self.sources:
            return False
        if self.users and not any(
            (u.isdigit() and e.uid == int(u)) or (not u.isdigit() and e.user == u) for u in self.users
        ):
            return False
        if self.programs and not (e.program and any(fnmatch.fnmatchcase(e.program, p) for p in self.programs)):
            return False
        for addr, nets in ((e.local_addr, self.local), (e.remote_addr, self.remote)):
            if nets:
                k = addr_key(addr)
                if k is None or not any(lo <= k <= hi for net in nets for lo, hi in net_ranges(net)):
                    return False
        for ports, ranges in (((e.local_port, e.remote_port), self.ports),
                              ((e.local_port,), self.local_ports),
                              ((e.remote_port,), self.remote_ports)):
            if ranges and not any(p is not None and lo <= p <= hi for p in ports for lo, hi in ranges):
                return False
        if self.since_ns is not None and e.ts_ns < self.since_ns:
            return False
        if self.until_ns is not None and e.ts_ns >= self.until_ns:
            return False
        if e.seq is not None:
            if self.from_seq is not None and e.seq < self.from_seq:
                return False
            if self.to_seq is not None and e.seq > self.to_seq:
                return False
        return True
