"""Central queries and verification over the fleet's PostgreSQL store.

`where()` is the one translation of a journal Filter (sockgate.journal.query) to
PostgreSQL: addresses become `inet <<= cidr` (the GiST inet_ops index), times prune the
day partitions, and --host names enrolled hosts (or the entry's own host field, for
IBM i systems imported on a host).

`verify()` re-checks every host's chain and seals from the rows alone: each row's hash is
recomputed with the journal's own chain step, the inet columns against the addresses, the
seals against the chain and (with the collector's state directory, which holds the hosts'
verification keys) their MACs, and the host's progress columns against the rows. A row
edited, inserted or deleted by whoever administers the database is named by host and seq.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sockgate.errors import FleetError, JournalError
from sockgate.fleet import store
from sockgate.journal import seal as sealing
from sockgate.journal.query import Filter, is_uid
from sockgate.journal.store import FIELDS, ZERO_HASH, chain_next, row_to_entry
from sockgate.record import Entry, unmap_network

_COLS = ", ".join(f'e."{c}"' for c in FIELDS)
_NF = len(FIELDS)


def _glob_like(p: str) -> str:
    out = []
    for c in p:
        out.append({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c))
    return "".join(out)


def where(filt: Filter) -> tuple[str, list[Any]]:
    """(SQL condition over `entry e JOIN host h`, parameters) for a journal Filter."""
    conds: list[str] = []
    params: list[Any] = []

    def any_of(col: str, values: tuple) -> None:
        if values:
            conds.append(f"{col} = ANY(%s)")
            params.append(list(values))

    any_of("e.type", filt.types)
    any_of("e.outcome", filt.outcomes)
    any_of("e.rule", filt.rules)
    any_of("e.source", filt.sources)
    if filt.hosts:
        conds.append("(h.name = ANY(%s) OR e.host = ANY(%s))")
        params += [list(filt.hosts), list(filt.hosts)]
    if filt.users:
        names = [u for u in filt.users if not is_uid(u)]
        uids = [int(u) for u in filt.users if is_uid(u)]
        conds.append("(e.\"user\" = ANY(%s) OR e.uid = ANY(%s))")
        params += [names, uids]
    if filt.programs:
        parts = []
        for p in filt.programs:
            if any(c in p for c in "*?"):
                parts.append("e.program LIKE %s")
                params.append(_glob_like(p))
            else:
                parts.append("e.program = %s")
                params.append(p)
        conds.append("(" + " OR ".join(parts) + ")")
    for col, nets in (("e.local_inet", filt.local), ("e.remote_inet", filt.remote)):
        if nets:
            conds.append("(" + " OR ".join(f"{col} <<= %s::inet" for _ in nets) + ")")
            params += [str(unmap_network(n)) for n in nets]
    for cols, ranges in ((("e.local_port", "e.remote_port"), filt.ports), (("e.local_port",), filt.local_ports),
                         (("e.remote_port",), filt.remote_ports)):
        if ranges:
            parts = []
            for c in cols:
                for lo, hi in ranges:
                    parts.append(f"{c} BETWEEN %s AND %s")
                    params += [lo, hi]
            conds.append("(" + " OR ".join(parts) + ")")
    for cond, v in (("e.ts_ns >= %s", filt.since_ns), ("e.ts_ns < %s", filt.until_ns),
                    ("e.seq >= %s", filt.from_seq), ("e.seq <= %s", filt.to_seq)):
        if v is not None:
            conds.append(cond)
            params.append(v)
    return (" AND ".join(conds) or "true"), params


def _entry(row: tuple) -> Entry:
    vals = json.loads(row[_NF]) if row[_NF] is not None else row[:_NF]
    return row_to_entry(vals)


row_entry = _entry   # (FIELDS..., raw) as stored -> Entry; the fleet monitor reads rows with it


def entries(conn: Any, filt: Filter, *, last: int | None = None) -> Iterator[tuple[str, Entry]]:
    """(enrolled host name, Entry) in time order; streamed with a server-side cursor."""
    cond, params = where(filt)
    sql = f"SELECT {_COLS}, e.raw, h.name FROM entry e JOIN host h ON h.id = e.host_id WHERE {cond}"
    if last:
        sql = f"SELECT * FROM ({sql} ORDER BY e.ts_ns DESC, h.name DESC, e.seq DESC LIMIT {int(last)}) t " \
              "ORDER BY ts_ns, name, seq"
    else:
        sql += " ORDER BY e.ts_ns, h.name, e.seq"
    with conn.transaction():
        with conn.cursor(name="fleet_show") as cur:
            cur.itersize = 2000
            cur.execute(sql, params)
            for row in cur:
                try:
                    yield row[-1], _entry(row)
                except (ValueError, TypeError, KeyError) as e:
                    raise FleetError(f"host {row[-1]}: damaged entry at seq {row[0]}: {e}") from None


TOP_FIELDS = ("host", "remote_addr", "local_addr", "user", "program", "rule", "remote_port", "local_port",
              "type", "outcome")


def top(conn: Any, by: str, filt: Filter, n: int = 10) -> list[tuple[Any, int]]:
    if by not in TOP_FIELDS:
        raise FleetError(f"cannot group by {by!r} (one of: {', '.join(TOP_FIELDS)})")
    col = {"host": "h.name", "remote_addr": "host(e.remote_inet)", "local_addr": "host(e.local_inet)",
           "user": 'e."user"'}.get(by, f"e.{by}")
    cond, params = where(filt)
    rows = conn.execute(f"SELECT {col}, count(*) FROM entry e JOIN host h ON h.id = e.host_id WHERE {cond} "
                        f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s", [*params, n]).fetchall()
    conn.commit()
    return [(v, c) for v, c in rows]


# -- status ---------------------------------------------------------------------------------

def status(conn: Any, now_ns: int | None = None) -> list[dict[str, Any]]:
    """Per host: last seen, shipped seq, lag (age of the newest entry held), policy, verify;
    its group, the policy version it reports running and its last push result
    (sockgate.fleet.push.policy_status)."""
    from sockgate.fleet.push import policy_status

    now = now_ns or time.time_ns()
    out = []
    pushed = policy_status(conn)
    for h in store.hosts(conn):
        newest = None
        if h["shipped_seq"]:
            r = conn.execute("SELECT ts_ns FROM entry WHERE host_id = %s AND seq = %s",
                             (h["id"], h["shipped_seq"])).fetchone()
            newest = r[0] if r else None
        out.append({"host": h["name"], "journal": h["journal_id"], "enrolled_ns": h["enrolled_ns"],
                    "last_seen_ns": h["last_seen_ns"], "shipped_seq": h["shipped_seq"],
                    "lag_s": None if newest is None else max(0.0, (now - newest) / 1e9),
                    "policy_digest": h["policy_digest"], "policy_version": h["policy_version"],
                    "flag": h["flag"], "last_verify_ns": h["last_verify_ns"], "last_verify": h["last_verify"],
                    "revoked_ns": h["revoked_ns"], "revoked_why": h["revoked_why"],
                    **pushed.get(h["name"], {"group": None, "policy_applied": None, "last_push": None})})
    conn.commit()
    return out


# -- verify ---------------------------------------------------------------------------------

@dataclass
class HostVerify:
    host: str
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seals: int = 0
    keyed: bool = False
    bad_seq: int | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def verify(conn: Any, state_dir: str | Path | None = None, hosts: tuple[str, ...] = (),
           record: bool = True) -> list[HostVerify]:
    """Verify every host (or those named) from the rows; with the collector's state
    directory, seal MACs too. Records the outcome in host.last_verify (owner connection)."""
    from sockgate.fleet.pki import CA

    ca = CA.open(state_dir, create=False) if state_dir is not None else None
    reports = []
    all_hosts = store.hosts(conn)
    conn.commit()
    names = {h["name"] for h in all_hosts}
    for n in hosts:
        if n not in names:
            raise FleetError(f"--host {n}: no such enrolled host")
    for h in all_hosts:
        if hosts and h["name"] not in hosts:
            continue
        rep = HostVerify(h["name"])
        try:
            _verify_host(conn, h, ca, rep)
        except _Bad as b:
            rep.bad_seq, rep.error = b.seq, b.reason
        finally:
            conn.rollback()
        if h["flag"]:
            rep.warnings.append(f"flagged by the collector: {h['flag']}")
            if rep.ok:
                rep.error = f"flagged by the collector: {h['flag']}"
        reports.append(rep)
        if record:
            conn.execute("UPDATE host SET last_verify_ns = %s, last_verify = %s WHERE id = %s",
                         (time.time_ns(), "ok" if rep.ok else f"FAILED at seq {rep.bad_seq}: {rep.error}"[:500],
                          h["id"]))
            conn.commit()
    return reports


def _verify_host(conn: Any, h: dict, ca: Any, rep: HostVerify) -> None:
    hid = h["id"]
    k = None
    if ca is not None:
        try:
            kid, k = sealing.read_verification_key(ca.key_path(h["name"]))
        except JournalError as e:
            raise _Bad(None, f"no verification key for {h['name']} in the collector's state: {e}") from None
        if kid != h["journal_id"]:
            raise _Bad(None, "the verification key held is of another journal than the host row names")
        rep.keyed = True
    else:
        rep.warnings.append("no --state: chain and seal order checked, seal MACs NOT checked")
    seals = [sealing.Seal(*(bytes(v) if isinstance(v, memoryview) else v for v in r)) for r in conn.execute(
        "SELECT epoch, seq, hash, ts_ns, mac FROM seal WHERE host_id = %s ORDER BY epoch", (hid,)).fetchall()]
    cut = conn.execute("SELECT through_seq, hash FROM cut WHERE host_id = %s ORDER BY through_seq DESC LIMIT 1",
                       (hid,)).fetchone()
    # the first seal kept (seals are never dropped) fixes the epoch we start from
    expected = (cut[0] + 1) if cut else h["first_seq"]
    if expected is None:
        if seals:
            raise _Bad(1, "seals are stored but the host holds no entries")
        return
    # the chain hash before the first entry held (the host's word for its history before
    # it enrolled; the first seal, MACed, vouches for everything from there)
    h_prev = bytes(cut[1]) if cut else bytes(h["base_hash"] or ZERO_HASH)
    if k is not None and seals:
        for _ in range(seals[0].epoch):
            k = sealing.evolve(k)
    si = 0
    for i, s in enumerate(seals):
        if i and (s.epoch != seals[i - 1].epoch + 1 or s.seq <= seals[i - 1].seq):
            raise _Bad(seals[i - 1].seq + 1, f"seal {s.epoch} does not follow seal {seals[i - 1].epoch}: seals "
                                             "were removed or inserted")
        if k is not None:
            if not s.authentic(k, h["journal_id"]):
                raise _Bad(s.seq, f"seal {s.epoch} at seq {s.seq} is forged (MAC does not check)")
            k = sealing.evolve(k)
    while si < len(seals) and seals[si].seq < expected:
        si += 1
    if cut and (si == 0 or seals[si - 1].seq != cut[0] or not hmac.compare_digest(seals[si - 1].hash, bytes(cut[1]))):
        raise _Bad(cut[0] + 1, "the declared cut is not at a seal with its chain hash: the cut is not authentic")
    rep.first_seq = expected
    with conn.cursor(name=f"fleet_verify_{hid}") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT {_COLS}, e.raw, e.hash, host(e.local_inet), host(e.remote_inet) FROM entry e "
                    "WHERE e.host_id = %s AND e.seq >= %s ORDER BY e.seq", (hid, expected))
        for row in cur:
            seq = row[0]
            if seq != expected:
                raise _Bad(expected, f"entry {expected} is missing" if seq > expected else f"entry {seq} is stored twice")
            vals = row[:_NF]
            if row[_NF] is not None:
                try:
                    exact = json.loads(row[_NF])
                    assert isinstance(exact, list) and len(exact) == _NF
                except (ValueError, AssertionError):
                    raise _Bad(seq, f"entry {seq} was altered (raw values unreadable)") from None
                if [v if not isinstance(v, str) else v.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
                        for v in exact] != list(vals):
                    raise _Bad(seq, f"entry {seq} was altered (columns differ from its exact values)")
                vals = exact
            try:
                hh = chain_next(h_prev, vals)
            except (TypeError, ValueError):
                raise _Bad(seq, f"entry {seq} holds values of the wrong type") from None
            if not hmac.compare_digest(hh, bytes(row[_NF + 1])):
                raise _Bad(seq, f"entry {seq} was altered (hash mismatch)")
            for got, addr, name in ((row[_NF + 2], vals[FIELDS.index("local_addr")], "local_inet"),
                                    (row[_NF + 3], vals[FIELDS.index("remote_addr")], "remote_inet")):
                if got != store.inet(addr):
                    raise _Bad(seq, f"entry {seq} was altered ({name} does not match its address)")
            if si < len(seals) and seals[si].seq == seq:
                if not hmac.compare_digest(seals[si].hash, hh):
                    raise _Bad(seq, f"seal {seals[si].epoch} at seq {seq} does not match the chain: entries "
                                    "up to it were rewritten")
                si += 1
                rep.seals += 1
            h_prev = hh
            expected += 1
            rep.entries += 1
    rep.last_seq = expected - 1
    if si < len(seals):
        raise _Bad(expected, f"there is a seal for seq {seals[si].seq}, but the rows end at seq {expected - 1}: "
                             "entries were deleted")
    if rep.last_seq != h["shipped_seq"] or not hmac.compare_digest(h_prev or ZERO_HASH, bytes(h["head_hash"])):
        raise _Bad(min(rep.last_seq, h["shipped_seq"]) + 1,
                   f"the rows end at seq {rep.last_seq}, but the collector acknowledged seq {h['shipped_seq']} "
                   "with another chain head: entries were deleted or the host row edited")


# -- retention ------------------------------------------------------------------------------

def retain(conn: Any, before_ns: int, *, dry_run: bool = False) -> dict[str, Any]:
    """Drop the day partitions that end at or before `before_ns`, declaring a cut per host
    first (docs/fleet.md, Retention), all in one transaction of the schema owner:

    - per host with rows in those days: the cut is at the first seal at or past its highest
      seq there (segments end at seals, so one exists), with that seal's chain hash;
    - the host's rows up to the cut that lie in kept partitions (a segment across midnight,
      imported entries with older times) are deleted, so what stays starts right after it;
    - host.first_seq/base_hash move to the cut: the collector then refuses a segment from
      before it plainly (nothing there to compare with) instead of flagging the host.

    A cut only moves forward. `fleet verify` starts each host at its cut, where a stored
    seal vouches for the hash. Returns what was (or, dry_run, would be) done."""
    days = [p for p in store.partitions(conn) if p[2] <= before_ns]
    out: dict[str, Any] = {"before_ns": before_ns, "partitions": [p[0] for p in days], "cuts": [],
                           "deleted_from_kept": 0, "dry_run": dry_run}
    if not days:
        conn.rollback()
        return out
    names = ", ".join(f"{store.SCHEMA}.{p[0]}" for p in days)
    try:
        _retain(conn, days, names, before_ns, dry_run, out)
    except _DryRun:   # rolled back: nothing done
        pass
    return out


def _retain(conn: Any, days: list, names: str, before_ns: int, dry_run: bool, out: dict[str, Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(471503)")   # one retain at a time
        highest = conn.execute(
            f"SELECT host_id, max(seq) FROM ({' UNION ALL '.join(f'SELECT host_id, seq FROM {store.SCHEMA}.{p[0]}' for p in days)}) d "
            "GROUP BY host_id").fetchall()
        for hid, top in highest:
            h = conn.execute("SELECT name FROM host WHERE id = %s FOR UPDATE", (hid,)).fetchone()
            old = conn.execute("SELECT max(through_seq) FROM cut WHERE host_id = %s", (hid,)).fetchone()[0]
            seal = conn.execute("SELECT seq, hash FROM seal WHERE host_id = %s AND seq >= %s ORDER BY seq LIMIT 1",
                                (hid, top)).fetchone()
            if seal is None:
                raise FleetError(f"{h[0]}: no seal at or past seq {top} (the collector stores only sealed segments: "
                                 "the store was edited)")
            through, chash = seal[0], bytes(seal[1])
            if old is not None and through <= old:
                continue
            kept = conn.execute("SELECT count(*) FROM entry WHERE host_id = %s AND seq <= %s AND ts_ns >= %s",
                                (hid, through, before_ns)).fetchone()[0]
            out["cuts"].append({"host": h[0], "through_seq": through, "deleted_from_kept": kept})
            out["deleted_from_kept"] += kept
            if dry_run:
                continue
            conn.execute("INSERT INTO cut (host_id, through_seq, hash, declared_ns, reason) VALUES (%s, %s, %s, %s, %s)",
                         (hid, through, chash, time.time_ns(), f"fleet retain: partitions before {before_ns}"))
            conn.execute("DELETE FROM entry WHERE host_id = %s AND seq <= %s AND ts_ns >= %s", (hid, through, before_ns))
            conn.execute("UPDATE host SET first_seq = %s, base_hash = %s WHERE id = %s", (through + 1, chash, hid))
        if dry_run:
            raise _DryRun
        conn.execute(f"DROP TABLE {names}")


class _DryRun(Exception):
    pass
