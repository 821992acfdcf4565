"""The monitor's durable state: one SQLite file (state.db in the state directory).

    meta    cursor (last journal seq processed), journal id
    rules   per rule: fingerprint (state is dropped when a rule's definition changes) and
            whether a first_seen baseline has been learned
    windows threshold windows        seen   first_seen baselines
    open    open (deduplicated) alerts
    storm   per rule, its storm window (alerts sent, and those folded into its report)
    outbox  per channel, alerts not yet delivered (attempts, next try, last error)
    dead    alerts a receiver refused for good (kept, logged, listed by `--status`)

commit() writes the cursor, every changed piece of engine state and the new alerts' outbox
rows in ONE transaction: after a crash the state is either before or after a batch, never
between, so a batch is neither re-alerted nor lost.

`StateBase` holds the logic once, over portable SQL (`?` parameters, `ON CONFLICT` upserts,
which SQLite and PostgreSQL both speak); `State` is the SQLite implementation, and
`sockgate.fleet.monitor.PgState` the PostgreSQL one (`monitor --store`). An implementation
supplies the connection, `_x(sql, params)` and `_tx()` (one transaction).
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from sockgate.errors import StateError
from sockgate.locking import lock_exclusive
from sockgate.safedir import private_dir, private_file
from sockgate.monitor.engine import Alert, Engine, OpenAlert, Storm

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, baseline INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS windows (rule TEXT NOT NULL, grp TEXT NOT NULL, ts TEXT NOT NULL, PRIMARY KEY (rule, grp));
CREATE TABLE IF NOT EXISTS seen (rule TEXT NOT NULL, k TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (rule, k));
CREATE TABLE IF NOT EXISTS "open" (rule TEXT NOT NULL, k TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (rule, k));
CREATE TABLE IF NOT EXISTS storm (rule TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, alert_id TEXT NOT NULL,
    payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, created INTEGER NOT NULL, UNIQUE (channel, alert_id));
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, alert_id TEXT NOT NULL,
    payload TEXT NOT NULL, attempts INTEGER NOT NULL, error TEXT, created INTEGER NOT NULL, died INTEGER NOT NULL);
"""


def _k(t: tuple) -> str:
    return json.dumps(list(t), separators=(",", ":"))


class StateBase:
    """The monitor state's logic over one SQL connection (see the module docstring)."""

    db: Any

    def _x(self, sql: str, params: tuple = ()) -> Any:
        """Execute one statement (`?` parameters); returns a cursor."""
        raise NotImplementedError

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction: committed on leaving, rolled back on any exception."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the state is, for log lines."""
        raise NotImplementedError

    # ------------------------------------------------------------------ meta

    def get(self, key: str) -> str | None:
        row = self._x("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _put(self, key: str, value: str) -> None:
        self._x("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value))

    # ------------------------------------------------------------------ engine state

    def load(self, engine: Engine) -> list[str]:
        """Load engine state; drop the state of rules whose definition changed or that are
        gone. Returns the names of first_seen rules whose baseline must be (re)learned."""
        known = {n: (fp, b) for n, fp, b in self._x("SELECT name, fingerprint, baseline FROM rules").fetchall()}
        relearn = []
        with self._tx():
            for name, _ in known.items():
                r = engine.by_name.get(name)
                if r is None or r.fingerprint != known[name][0]:
                    for t in ("windows", "seen", '"open"', "storm"):
                        self._x(f"DELETE FROM {t} WHERE rule = ?", (name,))
                    self._x("DELETE FROM rules WHERE name = ?", (name,))
            for r in engine.rules:
                prev = known.get(r.name)
                if prev is None or prev[0] != r.fingerprint:
                    self._x("INSERT INTO rules (name, fingerprint, baseline) VALUES (?, ?, 0) ON CONFLICT (name) "
                            "DO UPDATE SET fingerprint = excluded.fingerprint, baseline = 0", (r.name, r.fingerprint))
                    if r.kind == "first_seen":
                        relearn.append(r.name)
                elif r.kind == "first_seen" and not prev[1]:
                    relearn.append(r.name)
        from collections import deque
        for rule, grp, ts in self._x("SELECT rule, grp, ts FROM windows").fetchall():
            r = engine.by_name[rule]
            engine.windows[rule][tuple(json.loads(grp))] = deque(json.loads(ts), maxlen=r.count)
        for rule, k, ts in self._x("SELECT rule, k, ts FROM seen").fetchall():
            engine.seen[rule][tuple(json.loads(k))] = ts
        for rule, k, data in self._x('SELECT rule, k, data FROM "open"').fetchall():
            engine.open[(rule, tuple(json.loads(k)))] = OpenAlert.from_json(data)
        for rule, data in self._x("SELECT rule, data FROM storm").fetchall():
            engine.storms[rule] = Storm.from_json(data)
        engine.recompute_expiry()
        return relearn

    def commit(self, engine: Engine, alerts: Iterable[Alert], *, cursor: int | str | None = None,
               now_ns: int = 0, baselined: Iterable[str] = (), meta: dict[str, str] | None = None) -> int:
        """One transaction: cursor, dirty engine state, outbox rows. Returns rows enqueued.
        The cursor is the entry source's (a seq for the local journal, a text for the fleet)."""
        x = self._x
        n = 0
        with self._tx():
            if cursor is not None:
                self._put("cursor", str(cursor))
            for k, v in (meta or {}).items():
                self._put(k, v)
            for rule, g in engine.dirty_windows:
                dq = engine.windows.get(rule, {}).get(g)
                if dq:
                    x("INSERT INTO windows (rule, grp, ts) VALUES (?, ?, ?) ON CONFLICT (rule, grp) "
                      "DO UPDATE SET ts = excluded.ts", (rule, _k(g), json.dumps(list(dq))))
                else:
                    x("DELETE FROM windows WHERE rule = ? AND grp = ?", (rule, _k(g)))
            for rule, k in engine.dirty_seen:
                ts = engine.seen.get(rule, {}).get(k)
                if ts is not None:
                    x("INSERT INTO seen (rule, k, ts) VALUES (?, ?, ?) ON CONFLICT (rule, k) DO UPDATE SET ts = excluded.ts",
                      (rule, _k(k), ts))
            for rule, k in engine.dirty_open:
                oa = engine.open.get((rule, k))
                if oa is not None:
                    x('INSERT INTO "open" (rule, k, data) VALUES (?, ?, ?) ON CONFLICT (rule, k) '
                      "DO UPDATE SET data = excluded.data", (rule, _k(k), oa.to_json()))
                else:
                    x('DELETE FROM "open" WHERE rule = ? AND k = ?', (rule, _k(k)))
            for rule in engine.dirty_storms:
                st = engine.storms.get(rule)
                if st is not None:
                    x("INSERT INTO storm (rule, data) VALUES (?, ?) ON CONFLICT (rule) DO UPDATE SET data = excluded.data",
                      (rule, st.to_json()))
                else:
                    x("DELETE FROM storm WHERE rule = ?", (rule,))
            for name in baselined:
                x("UPDATE rules SET baseline = 1 WHERE name = ?", (name,))
            for a in alerts:
                payload = json.dumps(a.payload, separators=(",", ":"))
                for ch in a.channels:
                    cur = x("INSERT INTO outbox (channel, alert_id, payload, created) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (channel, alert_id) DO NOTHING", (ch, a.id, payload, now_ns))
                    n += cur.rowcount
        engine.reset_dirty()
        return n

    # ------------------------------------------------------------------ outbox

    def channels(self) -> list[str]:
        """The channels with queued alerts."""
        return [r[0] for r in self._x("SELECT DISTINCT channel FROM outbox").fetchall()]

    def due(self, channel: str, now_ns: int, limit: int = 100) -> list[tuple[int, str, dict[str, Any], int]]:
        rows = self._x("SELECT id, alert_id, payload, attempts FROM outbox WHERE channel = ? AND next_try <= ? "
                       "ORDER BY id LIMIT ?", (channel, now_ns, limit)).fetchall()
        return [(i, aid, json.loads(p), att) for i, aid, p, att in rows]

    def head_blocked(self, channel: str, now_ns: int) -> bool:
        """True while the oldest queued alert of a channel waits for its retry time."""
        row = self._x("SELECT next_try FROM outbox WHERE channel = ? ORDER BY id LIMIT 1", (channel,)).fetchone()
        return row is not None and row[0] > now_ns

    def delivered(self, row_id: int) -> None:
        self._x("DELETE FROM outbox WHERE id = ?", (row_id,))

    def failed(self, row_id: int, attempts: int, next_try: int, error: str) -> None:
        self._x("UPDATE outbox SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                (attempts, next_try, error[:500], row_id))

    def kill(self, row_id: int, error: str, now_ns: int) -> None:
        with self._tx():
            self._x("INSERT INTO dead (channel, alert_id, payload, attempts, error, created, died) "
                    "SELECT channel, alert_id, payload, attempts + 1, ?, created, ? FROM outbox WHERE id = ?",
                    (error[:500], now_ns, row_id))
            self._x("DELETE FROM outbox WHERE id = ?", (row_id,))

    def queue_sizes(self) -> dict[str, tuple[int, int, str | None]]:
        """channel -> (queued, max attempts, last error)."""
        out = {}
        for ch, n, att in self._x("SELECT channel, count(*), max(attempts) FROM outbox GROUP BY channel").fetchall():
            err = self._x("SELECT last_error FROM outbox WHERE channel = ? AND last_error IS NOT NULL "
                          "ORDER BY id LIMIT 1", (ch,)).fetchone()
            out[ch] = (n, att, err[0] if err else None)
        return out

    def dead_count(self) -> int:
        return self._x("SELECT count(*) FROM dead").fetchone()[0]


class State(StateBase):
    """The SQLite state (STATE/state.db), one monitor per directory (a lock file)."""

    def __init__(self, db: sqlite3.Connection, directory: Path, lock_fd: int | None):
        self.db = db
        self.directory = directory
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "State":
        d = Path(directory)
        private_dir(d, error=StateError, what="monitor state directory")
        fd = lock_exclusive(d / "lock", error=StateError,
                            busy=f"{d}: another monitor is running with this state directory")
        try:
            # SQLite creates the file with the umask's mode (and its -wal/-shm with the file's)
            private_file(d / "state.db", error=StateError)
        except StateError:
            os.close(fd)
            raise
        try:
            db = sqlite3.connect(d / "state.db", isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            os.close(fd)
            raise StateError(f"{d / 'state.db'}: {e}") from None
        return cls(db, d, fd)

    @classmethod
    def open_readonly(cls, directory: str | os.PathLike) -> "State":
        """A read-only view for another thread or process (the daemon's metrics): no lock,
        no schema changes; the running monitor keeps writing through its own connection."""
        d = Path(directory)
        try:
            db = sqlite3.connect(f"file:{d / 'state.db'}?mode=ro", uri=True, isolation_level=None)
            db.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as e:
            raise StateError(f"{d / 'state.db'}: {e}") from None
        return cls(db, d, None)

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def describe(self) -> str:
        return str(self.directory)

    def _x(self, sql: str, params: tuple = ()) -> Any:
        return self.db.execute(sql, params)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def cursor(self) -> int | None:
        v = self.get("cursor")
        return int(v) if v is not None else None

