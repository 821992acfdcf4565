"""Filters for show/export/monitor replay, and parsing of sizes.

A Filter becomes one SQL WHERE clause over a receiver (so the indexes do the work) and can
also test an Entry already in hand (`matches`). Values inside one field are ORed, fields
are ANDed, like policy rules. Times follow sockgate.record's grammar (an ISO time without
a zone is local time).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable

from sockgate.errors import UsageError
from sockgate.record import (
    Entry, EntryType, Network, Outcome, Source, addr_key, net_ranges, parse_range, parse_time, quote,
    value_of,
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5T', '4096' -> bytes (powers of 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"bad size {text!r} (use e.g. 500M, 10G)")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))


MAX_SEQ = 2 ** 63 - 1      # sequence numbers are SQLite INTEGERs
MAX_UID = 2 ** 32 - 1      # uid_t; an IBM i user is a name


def _time(text: Any, now_ns: int | None, option: str) -> int:
    try:
        return parse_time(text, now_ns)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def parse_network(text: str, option: str = "address") -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"{option}: bad address or CIDR {quote(text)}") from None


def parse_ports(text: str, option: str = "port") -> tuple[int, int]:
    """'22' or '1024-65535' -> inclusive range."""
    try:
        return parse_range(str(text))
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def is_uid(user: str) -> bool:
    """A --user value of ASCII digits is a uid ("²" is a name: int() would refuse it)."""
    return user.isascii() and user.isdigit()


def _users(values: Iterable[Any]) -> tuple[str, ...]:
    out = tuple(str(u) for u in values)
    for u in out:
        # 5,000 digits would stop int(); 2**64 would overflow SQLite's INTEGER
        if is_uid(u) and (len(u) > 10 or int(u) > MAX_UID):
            raise UsageError(f"--user: uid {quote(u)} out of range (0-{MAX_UID})")
    return out


def _seq(value: Any, option: str) -> int | None:
    if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_SEQ):
        raise UsageError(f"{option}: {quote(value)} is not a sequence number (1-{MAX_SEQ})")
    return value


def _enum_values(kind: type, values: Iterable[Any], what: str) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(kind.parse(v).value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise UsageError(f"{what}: {quote(v)} is not one of: {choices}") from None
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
        """From user text (the CLI's options): validates and converts. A bad value is a
        UsageError that names the option (--since, --user, ...)."""
        return cls(
            types=_enum_values(EntryType, types, "--type"),
            outcomes=_enum_values(Outcome, outcomes, "--outcome"),
            users=_users(users), programs=tuple(programs), rules=tuple(rules),
            hosts=tuple(hosts), sources=_enum_values(Source, sources, "--source"),
            local=tuple(n if not isinstance(n, str) else parse_network(n, "--local") for n in local),
            remote=tuple(n if not isinstance(n, str) else parse_network(n, "--remote") for n in remote),
            ports=tuple(parse_ports(p, "--port") for p in ports),
            local_ports=tuple(parse_ports(p, "--local-port") for p in local_ports),
            remote_ports=tuple(parse_ports(p, "--remote-port") for p in remote_ports),
            since_ns=None if since is None else (since if isinstance(since, int) else _time(since, now_ns, "--since")),
            until_ns=None if until is None else (until if isinstance(until, int) else _time(until, now_ns, "--until")),
            from_seq=_seq(from_seq, "--from-seq"), to_seq=_seq(to_seq, "--to-seq"),
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
            names = [u for u in self.users if not is_uid(u)]
            uids = [int(u) for u in self.users if is_uid(u)]
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
            (is_uid(u) and e.uid == int(u)) or (not is_uid(u) and e.user == u) for u in self.users
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


def last_start(journal: Any, n: int, filter: Filter | None = None) -> int:
    """The seq from which the last n matching entries run (0 when fewer match), so `show
    --last N` can stream them in order instead of holding N entries (Journal.tail does).
    Counts over the indexes, newest receiver first; nothing is held but counts."""
    where, params = (filter or Filter()).where()
    for r in reversed(journal.receivers):
        rows = r.fetchall(f"SELECT seq FROM entry WHERE {where} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                          [*params, n - 1])
        if rows:
            return rows[0][0]
        n -= r.fetchall(f"SELECT count(*) FROM entry WHERE {where}", params)[0][0]
    return 0


# Columns a histogram can split its counts by (bounded: outcomes, rules, entry types).
SERIES_BY = ("outcome", "rule", "type")


def histogram(journal: Any, filter: Filter, step_ns: int, by: str = "outcome") -> dict[int, dict[Any, int]]:
    """Counts of matching entries per time bucket of step_ns (bucket start in ns -> {value of
    `by` -> count}), merged over receivers: one GROUP BY in SQL per receiver, so the rows
    never leave SQLite. The console's charts and the report draw from this."""
    if by not in SERIES_BY:
        raise UsageError(f"cannot split a histogram by {by!r} (one of: {', '.join(SERIES_BY)})")
    if step_ns <= 0:
        raise UsageError("a histogram's step must be positive")
    where, params = filter.where()
    out: dict[int, dict[Any, int]] = {}
    for r in journal.receivers:
        # bucket arithmetic in SQL; ts_ns is never negative for journaled entries
        for b, v, c in r.fetchall(f"SELECT ts_ns / ?, {by}, count(*) FROM entry WHERE {where} "
                                  f"GROUP BY 1, 2", [step_ns, *params]):
            row = out.setdefault(b * step_ns, {})
            row[v] = row.get(v, 0) + c
    return out


def rule_hits(journal: Any, filter: Filter) -> dict[str | None, tuple[int, int]]:
    """rule name -> (matching entries it decided, ts_ns of the newest), merged over receivers."""
    where, params = filter.where()
    out: dict[str | None, tuple[int, int]] = {}
    for r in journal.receivers:
        for rule, c, last in r.fetchall(f"SELECT rule, count(*), max(ts_ns) FROM entry WHERE {where} "
                                        "GROUP BY rule", params):
            n, t = out.get(rule, (0, 0))
            out[rule] = (n + c, max(t, last))
    return out


def top_extra(journal: Any, key: str, filter: Filter, n: int = 10) -> list[tuple[Any, int]]:
    """Like Journal.top, over one key of the entries' `extra` (an IBM i job, a TLS version)."""
    if not re.fullmatch(r"[a-z_]{1,32}", key):
        raise UsageError(f"not an extra key: {quote(key)}")
    where, params = filter.where()
    counts: dict[Any, int] = {}
    for r in journal.receivers:
        for v, c in r.fetchall(f"SELECT json_extract(extra, '$.{key}') AS v, count(*) FROM entry WHERE {where} "
                               "AND v IS NOT NULL GROUP BY v", params):
            counts[v] = counts.get(v, 0) + c
    return sorted(counts.items(), key=lambda kv: -kv[1])[:n]


ROLLUP_NS = 60 * 1_000_000_000   # the rollup's grain: one minute
ROLLUP_FORMAT = "sockgate-rollup-1"


class Rollup:
    """Counts per minute by (outcome, rule) of every entry, per receiver, kept up to date
    incrementally: receivers are append-only, so the entries after the highest seq already
    counted are exactly the new ones (a receiver deleted by retention drops its counts).
    It answers a time-window chart without touching the rows again; `covers` says when."""

    def __init__(self) -> None:
        self._per: dict[int, tuple[int, dict[tuple[int, Any, Any], int]]] = {}

    def update(self, journal: Any) -> None:
        present = set()
        for r in journal.receivers:
            present.add(r.number)
            through, counts = self._per.get(r.number, (0, {}))
            top = through
            for m, o, rule, c, last in r.fetchall(
                    "SELECT ts_ns / ?, outcome, rule, count(*), max(seq) FROM entry WHERE seq > ? GROUP BY 1, 2, 3",
                    [ROLLUP_NS, through]):
                counts[(m, o, rule)] = counts.get((m, o, rule), 0) + c
                top = max(top, last)
            self._per[r.number] = (top, counts)
        for n in set(self._per) - present:
            del self._per[n]

    def save(self, journal: Any, path: str | os.PathLike) -> None:
        """Write the counts to `path` (JSON, whole or not at all, 0600), each receiver's with
        the chain hash at its last counted seq: load() takes them back only while that hash is
        still there. A cache beside the journal, never in it (the journal stays read-only)."""
        from sockgate import safedir

        receivers = []
        for r in journal.receivers:
            through, counts = self._per.get(r.number, (0, {}))
            h = r.hash_at(through)
            if h is not None:
                receivers.append({"number": r.number, "first_seq": r.first_seq, "through": through, "hash": h.hex(),
                                  "counts": [[m, o, rule, c] for (m, o, rule), c in counts.items()]})
        doc = {"format": ROLLUP_FORMAT, "journal": journal.id, "grain_ns": ROLLUP_NS, "receivers": receivers}
        safedir.write_atomic(path, json.dumps(doc, separators=(",", ":")), mode=0o600)

    @classmethod
    def load(cls, journal: Any, path: str | os.PathLike) -> "Rollup":
        """The counts save() wrote, for each receiver whose chain hash at the saved seq is the
        one saved (so the rows counted are the rows there: the hash chains every entry before
        it); none for the others, and none at all when the file is missing, damaged, another
        user's or another journal's. update() then counts only what is after."""
        out = cls()
        try:
            doc = json.loads(_read_own(path))
            if (doc.get("format"), doc.get("journal"), doc.get("grain_ns")) != (ROLLUP_FORMAT, journal.id, ROLLUP_NS):
                return out
            present = {r.number: r for r in journal.receivers}
            for saved in doc["receivers"]:
                r = present.get(saved["number"])
                if r is None or r.first_seq != saved["first_seq"]:
                    continue   # deleted by retention, or not the receiver counted
                through = saved["through"]
                h = r.hash_at(through) if type(through) is int else None
                if h is None or h.hex() != saved["hash"]:
                    continue
                counts = {}
                for m, o, rule, c in saved["counts"]:
                    if not (type(m) is int and type(c) is int and all(v is None or type(v) is str for v in (o, rule))):
                        return cls()
                    counts[(m, o, rule)] = c
                out._per[r.number] = (through, counts)
        except FileNotFoundError:
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()
        return out

    @staticmethod
    def covers(filter: Filter, by: str, step_ns: int) -> bool:
        """Whether histogram(filter, step, by) can come from the rollup: a time window,
        outcomes and rules only, split by outcome or rule, in whole minutes."""
        from dataclasses import replace

        rest = replace(filter, outcomes=(), rules=(), since_ns=None, until_ns=None)
        return rest == Filter() and by in ("outcome", "rule") and step_ns % ROLLUP_NS == 0

    def histogram(self, lo_min: int, hi_min: int, step_ns: int, by: str, outcomes: tuple[str, ...],
                  rules: tuple[str, ...]) -> dict[int, dict[Any, int]]:
        """Like histogram() over the whole minutes [lo_min, hi_min) (minute numbers)."""
        out: dict[int, dict[Any, int]] = {}
        per = step_ns // ROLLUP_NS
        for _, counts in self._per.values():
            for (m, o, rule), c in counts.items():
                if lo_min <= m < hi_min and (not outcomes or o in outcomes) and (not rules or rule in rules):
                    b = m // per * step_ns
                    row = out.setdefault(b, {})
                    k = o if by == "outcome" else rule
                    row[k] = row.get(k, 0) + c
        return out


def _read_own(path: str | os.PathLike) -> bytes:
    """A file of this user's (or root's) that no one else may write, read whole; OSError or
    ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ValueError(f"{path}: not a private file of this user's")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)
