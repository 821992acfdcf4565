"""The alert monitor over the whole fleet (`sockgate monitor --store postgresql://...`).

The monitor's logic is the one in `sockgate.monitor.monitor.Monitor`; this module gives it

- `FleetSource`: every host's entries from the store (`sockgate.entry`), with an exact cursor:
  the last seq processed per host id, `{"HOST_ID": SEQ, ...}` (JSON text in the state). A host's
  seqs are contiguous and the collector commits each segment (rows + the host's shipped_seq)
  in one transaction under the host row's lock, so what a reader sees of a host is always a
  prefix 1..shipped_seq: reading `seq > cursor[host] ORDER BY seq` can neither skip nor repeat.
  Across hosts, entries are handed to the engine in arrival order (the collector's received_ns,
  one per segment), each host's in seq order (a k-way merge that never reorders a host).
  Windows and storms use the entries' own timestamps (journal time), as on one host: hosts
  whose segments arrive late still count in the window of their ts; the engine counts an
  entry older than a group's newest at the newest time (docs/monitor.md), so a host shipping
  far behind the others can stretch a window (docs/fleet.md, "Fleet monitor").
  It sleeps on LISTEN `sockgate_entry` (the collector NOTIFYs inside each segment's
  transaction, so the wake-up is delivered at commit) or the poll timeout (timers, retries).
- `PgState`: the state (`sockgate.monitor.state.StateBase`) in the schema `sockgate_monitor`:
  cursor, engine state, outboxes and dead rows commit in ONE PostgreSQL transaction per batch,
  exactly as the SQLite state does. One fleet monitor per database: a session advisory lock,
  held by the state's connection; a second monitor is refused and told who holds it.

Each entry's enrolled host name (the client certificate's, not the entry's own `host` field,
which an IBM i import sets to the IBM i system) is given to the rules as `extra.fleet_host`.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from sockgate.errors import FleetError, JournalError, StateError
from sockgate.fleet import store
from sockgate.fleet.central import row_entry
from sockgate.journal.store import FIELDS
from sockgate.monitor.state import SCHEMA as SQLITE_SCHEMA, StateBase
from sockgate.record import Entry

log = logging.getLogger("sockgate.monitor")

MONITOR_SCHEMA = "sockgate_monitor"
LOCK_KEY = 471503                      # pg_advisory_lock key: one fleet monitor per database
_COLS = ", ".join(f'e."{c}"' for c in FIELDS)

# The SQLite state's tables (monitor/state.py SCHEMA, the one list of them), in PostgreSQL's
# types: the same columns, so StateBase's SQL runs on both.
MONITOR_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {MONITOR_SCHEMA};
SET search_path = {MONITOR_SCHEMA};
""" + (SQLITE_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
       .replace("INTEGER", "bigint").replace("TEXT", "text"))


def _pg():
    import psycopg
    return psycopg


class PgState(StateBase):
    """The monitor state in PostgreSQL (schema sockgate_monitor), one monitor per database."""

    def __init__(self, conn: Any, url: str):
        self.db = conn
        self.url = url

    @classmethod
    def open(cls, url: str) -> "PgState":
        """Connect, take the advisory lock (StateError when another fleet monitor holds it),
        create the tables. A bad URL or an unreachable database is a FleetError."""
        try:
            conn = store.connect(url, autocommit=True)
        except FleetError as e:
            raise FleetError(str(e).replace("bad --db", "bad --store", 1)) from None
        psycopg = _pg()
        try:
            store.ensure_schema(conn)   # the monitor may start before the collector ever ran
        except FleetError:
            conn.close()
            raise
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]
            if not got:
                row = conn.execute("SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l "
                                   "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                                   "AND l.objid = %s AND l.granted AND l.database = "
                                   "(SELECT oid FROM pg_database WHERE datname = current_database())",
                                   (LOCK_KEY,)).fetchone()
                who = (f" (database backend pid {row[0]}, from {row[1] or 'a local socket'}, since "
                       f"{row[2]:%Y-%m-%d %H:%M:%S%z})") if row else ""
                conn.close()
                raise StateError(f"another fleet monitor is running on this database{who}; "
                                 "only one may hold its state")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(471501)")   # with ensure_schema's DDL
                conn.execute(MONITOR_DDL)
            conn.execute(f"SET search_path = {MONITOR_SCHEMA}, {store.SCHEMA}")
            # Transactions (_tx: cursor + engine state + outbox rows, dead rows) commit
            # synchronously; the single statements outside them -- the delete after a send,
            # a retry's attempt count -- do not wait for the WAL flush. A killed monitor loses
            # nothing by it (the server holds the commit and flushes it within
            # wal_writer_delay); only a PostgreSQL crash in that fraction of a second can
            # resend what was just delivered, with its id (delivery is at least once at the
            # transport boundary anyway, docs/monitor.md). The flush per delivered alert was
            # a third of a busy fleet's per-alert cost (bench/fleet_alert.py).
            conn.execute("SET synchronous_commit = off")
        except psycopg.Error as e:
            conn.close()
            raise StateError(f"fleet monitor state: {str(e).strip()}") from None
        return cls(conn, url)

    def close(self) -> None:
        self.db.close()     # ends the session: the advisory lock goes with it

    def describe(self) -> str:
        return f"{MONITOR_SCHEMA} in the fleet database"

    def _x(self, sql: str, params: tuple = ()) -> Any:
        try:
            return self.db.execute(sql.replace("?", "%s"), params)
        except _pg().OperationalError as e:
            # the connection (and with it the advisory lock) is gone: stop rather than run on
            # without the lock; the service manager restarts the monitor, which resumes at
            # the last committed batch
            raise StateError(f"lost the fleet database: {str(e).strip()}") from None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            with self.db.transaction():
                self.db.execute("SET LOCAL synchronous_commit = on")
                yield
        except _pg().OperationalError as e:
            raise StateError(f"lost the fleet database: {str(e).strip()}") from None

def _cursor(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    d = json.loads(text)
    return {int(k): int(v) for k, v in d.items()}


def _text(cur: dict[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(cur.items())}, separators=(",", ":"))


class FleetSource:
    """Every host's entries in the store, in arrival order, with a per-host exact cursor."""

    checkpoints = False   # a checkpoint is of one host's journal: the hosts' own monitors send theirs
    beginning = "{}"      # no host read yet (a host missing from the cursor is read from its seq 1)

    def __init__(self, url: str):
        self.url = url
        self.conn: Any = None
        self.listen: Any = None

    def __str__(self) -> str:
        return "the fleet store"

    def open(self, state: StateBase) -> bool:
        try:
            if self.conn is None:
                self.conn = store.connect(self.url, autocommit=True)
            if self.listen is None:
                self.listen = store.connect(self.url, autocommit=True)
                self.listen.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        except (FleetError, _pg().Error) as e:
            self.close()
            raise JournalError(str(e).strip()) from None
        return True

    def meta(self) -> dict[str, str]:
        return {"source": "fleet"}

    def head(self) -> str:
        """Every host at what the collector holds now (start = "end")."""
        return _text(dict(self._q("SELECT id, shipped_seq FROM host").fetchall()))

    def _q(self, sql: str, params: Any = ()) -> Any:
        try:
            return self.conn.execute(sql, params)
        except _pg().Error as e:
            self.reset()
            raise JournalError(f"fleet store: {str(e).strip()}") from None

    def _entry(self, row: tuple) -> Entry:
        try:
            e = row_entry(row[:len(FIELDS) + 1])
        except (ValueError, TypeError, KeyError) as err:
            raise JournalError(f"host {row[-1]}: damaged entry at seq {row[0]}: {err}") from None
        e.extra["fleet_host"] = row[-1]
        return e

    def upto(self, cursor: str) -> Iterator[Entry]:
        """Every entry up to the cursor, host by host (first_seen baselines)."""
        for hid, seq in sorted(_cursor(cursor).items()):
            with self.conn.transaction():
                with self.conn.cursor(name="monitor_learn") as cur:
                    cur.itersize = 2000
                    cur.execute(f"SELECT {_COLS}, e.raw, h.name FROM entry e JOIN host h ON h.id = e.host_id "
                                "WHERE e.host_id = %s AND e.seq <= %s ORDER BY e.seq", (hid, seq))
                    for row in cur:
                        yield self._entry(row)

    def batches(self, cursor: str | None, n: int) -> Iterator[tuple[list[Entry], str]]:
        cur = _cursor(cursor)
        while True:
            ids = list(cur)
            # one statement, one snapshot: per host with news, its next n entries in seq order
            rows = self._q(
                f"SELECT {_COLS}, e.raw, e.received_ns, e.host_id, h.name FROM host h "
                "LEFT JOIN unnest(%s::int[], %s::bigint[]) AS c(host_id, seq) ON c.host_id = h.id "
                "CROSS JOIN LATERAL (SELECT * FROM entry e WHERE e.host_id = h.id AND e.seq > coalesce(c.seq, 0) "
                "ORDER BY e.seq LIMIT %s) e "
                "WHERE h.shipped_seq > coalesce(c.seq, 0) ORDER BY e.host_id, e.seq",
                (ids, [cur[i] for i in ids], n)).fetchall()
            if not rows:
                return
            per_host: dict[int, list[tuple]] = {}
            for r in rows:
                per_host.setdefault(r[-2], []).append(r)
            # arrival order across hosts, seq order within a host (merge keeps each list's order)
            merged = heapq.merge(*per_host.values(), key=lambda r: r[-3])
            batch = []
            for r in merged:
                batch.append(self._entry(r[:len(FIELDS) + 1] + (r[-1],)))
                cur[r[-2]] = r[0]
                if len(batch) == n:
                    break
            yield batch, _text(cur)

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """Until a NOTIFY (a segment committed), stop, or the timeout (timers, retries)."""
        if self.listen is None:
            stop.wait(timeout)
            return
        import time
        end = time.monotonic() + timeout
        try:
            while not stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    return
                if list(self.listen.notifies(timeout=min(left, 0.25), stop_after=1)):
                    return
        except (_pg().Error, OSError) as e:
            log.warning("monitor: LISTEN connection lost (%s); reconnecting", str(e).strip())
            self._drop("listen")
            stop.wait(min(timeout, 1.0))

    def _drop(self, which: str) -> None:
        c = getattr(self, which)
        setattr(self, which, None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def reset(self) -> None:
        self._drop("conn")

    def close(self) -> None:
        self._drop("conn")
        self._drop("listen")


def open_fleet_monitor(rules_file: str, url: str, **kw: Any):
    """The Monitor over the fleet store: its rules, its FleetSource, its PgState."""
    from sockgate.monitor import Monitor

    state = PgState.open(url)
    try:
        m = Monitor.open(rules_file, FleetSource(url), state, monitor_host=kw.pop("monitor_host", "fleet"), **kw)
    except BaseException:
        state.close()
        raise
    m.engine.ref_of = fleet_ref
    return m


def fleet_ref(e: Entry) -> str:
    """An entry's name in alert ids: its enrolled host and seq (seqs are per host)."""
    return f"{e.extra.get('fleet_host')}:{e.seq}"


__all__ = ["FleetSource", "MONITOR_SCHEMA", "PgState", "open_fleet_monitor"]
