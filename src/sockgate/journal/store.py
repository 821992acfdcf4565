"""Receivers: the SQLite files a journal is made of.

A journal directory holds `journal.json` (identity), `seal.key` (the evolving sealing key,
see seal.py), a `lock` file (one writer at a time) and receivers `r000001.sgj`,
`r000002.sgj`, ... Each receiver is one SQLite database in WAL mode holding a contiguous
run of sequence numbers; its `meta` table names the journal it belongs to, its first
sequence number and the chain hash just before it, so the chain can be checked even
after retention deleted the receivers before it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from sockgate.errors import JournalBusyError, JournalError
from sockgate.record import Code, Entry, EntryType, Outcome, Source

FORMAT = "sockgate-journal"
# 2: retention carries the seals of the receivers it deletes into the first kept one, so
# every epoch from 0 stays checkable (verify requires it). 1 deleted them with the receiver;
# a version-1 journal reads and writes as before (opening it for writing upgrades it), but
# verify fails on a cut made by a version-1 writer, since that cut cannot be authenticated.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "journal.json"
KEY_FILE = "seal.key"
LOCK_FILE = "lock"
VERIFY_KEY_FILE = "verification.key"
RECEIVER_RE = re.compile(r"^r(\d{6})\.sgj$")
# SQLite side files of a receiver, and our own temporary files: tolerated in the directory.
_SIDE_RE = re.compile(r"^r\d{6}\.sgj-(wal|shm|journal)$|^\.tmp-")
_KNOWN = {META_FILE, KEY_FILE, LOCK_FILE, VERIFY_KEY_FILE}
ZERO_HASH = bytes(32)
BUSY_TIMEOUT_MS = 10_000   # how long a writer waits for SQLite's lock before "busy"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# What reading a damaged receiver can raise (a flipped byte in a text column fails decoding).
DB_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)

# Entry fields in their stored (and hashed) order. The chain hash of an entry covers
# exactly these values as stored, so verify needs nothing but the row.
FIELDS = (
    "seq", "ts_ns", "code", "type", "source", "host", "outcome", "rule", "uid", "user",
    "gid", "pid", "program", "family", "local_addr", "local_port", "remote_addr",
    "remote_port", "extra", "ident",
)
# Columns of an entry row: the hashed fields plus derived search keys and the hash.
COLUMNS = FIELDS + ("local_key", "remote_key", "hash")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE entry (
    seq INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    code TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL, host TEXT NOT NULL,
    outcome TEXT, rule TEXT, uid INTEGER, user TEXT, gid INTEGER, pid INTEGER,
    program TEXT, family TEXT,
    local_addr TEXT, local_port INTEGER, remote_addr TEXT, remote_port INTEGER,
    extra TEXT NOT NULL, ident TEXT,
    local_key BLOB, remote_key BLOB,   -- 16-byte sortable address (IPv4 as ::ffff:a.b.c.d)
    hash BLOB NOT NULL                 -- sha256(previous hash || canonical(row))
);
-- time ranges (show --since/--until, retention)
CREATE INDEX entry_ts ON entry (ts_ns);
-- "rejections from 10.1.2.0/24 today" is one range scan; "top remotes by rejections"
-- is a covering scan of one outcome prefix, already grouped by address.
CREATE INDEX entry_outcome_remote ON entry (outcome, remote_key, ts_ns);
CREATE UNIQUE INDEX entry_ident ON entry (ident) WHERE ident IS NOT NULL;
CREATE TABLE seal (
    epoch INTEGER PRIMARY KEY,         -- i: the MAC uses key k_i (k_{i+1} = H(k_i))
    seq INTEGER NOT NULL,              -- last entry covered
    hash BLOB NOT NULL,                -- chain hash at seq
    ts_ns INTEGER NOT NULL,
    mac BLOB NOT NULL
);
"""


_CANON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def canonical(values: tuple | list) -> bytes:
    """The bytes an entry's chain hash covers: its FIELDS values, as stored, in order, as a
    compact JSON array (UTF-8)."""
    return _CANON.encode(values).encode()


def chain_next(prev: bytes, values: tuple | list) -> bytes:
    """h_n = sha256(h_{n-1} || canonical(entry_n)): the one chain step, for the local
    verifier and the fleet collector alike."""
    return hashlib.sha256(prev + canonical(values)).digest()


_EXTRA = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


def dump_extra(extra: dict[str, Any] | None) -> str:
    return _EXTRA.encode(extra) if extra else "{}"


_CODE = {m.value: m for m in Code}
_TYPE = {m.value: m for m in EntryType}
_SOURCE = {m.value: m for m in Source}
_OUTCOME = {m.value: m for m in Outcome}
_OUTCOME[None] = None
_loads = json.JSONDecoder().decode


def row_to_entry(row: sqlite3.Row | tuple) -> Entry:
    """A stored row (FIELDS order) back into an Entry. Positional and table-driven: this
    runs once per displayed or exported entry."""
    (seq, ts_ns, code, etype, source, host, outcome, rule, uid, user, gid, pid, program, family,
     local_addr, local_port, remote_addr, remote_port, extra, ident) = row[:20]
    return Entry(_CODE[code], _TYPE[etype], ts_ns, _SOURCE[source], host, _OUTCOME[outcome], rule, uid,
                 user, gid, pid, program, family, local_addr, local_port, remote_addr, remote_port,
                 _loads(extra) if extra != "{}" else {}, ident, seq)


# ----------------------------------------------------------------------------- decision rows

class DecisionRow(NamedTuple):
    """A socket decision as `policy replay` and `policy learn` read it (`Journal.decisions`):
    exactly the columns they use, as stored, so the journal's 10,000,000 rows need no Entry
    each. Enumerations stay their stored text ("C", "kernel", "allowed"; the str enums of
    sockgate.record compare and hash equal to it). `extra` is the stored JSON text: rows
    that share it (most do: the same program, user and protocol) share one decode of the
    keys replay and learn use (`ExtraFacts`). `decision_row` makes one from an Entry."""

    seq: int | None
    ts_ns: int
    host: str
    outcome: str | None
    rule: str | None
    user: str | None
    type: str
    source: str
    uid: int | None
    gid: int | None
    program: str | None
    extra: str                  # JSON text, as stored (dump_extra)
    local_addr: str | None
    local_port: int | None
    remote_addr: str | None
    remote_port: int | None


# DecisionRow indexes of what a decision depends on besides extra: type .. program, the sides
DECISION_KEY = tuple(range(DecisionRow._fields.index("type"), DecisionRow._fields.index("program") + 1))
DECISION_SIDES = tuple(DecisionRow._fields.index(f) for f in ("local_addr", "local_port", "remote_addr", "remote_port"))
DECISION_SELECT = "SELECT " + ", ".join(DecisionRow._fields) + " FROM entry"


class ExtraFacts(NamedTuple):
    """The extra keys a decision's replay depends on, each None when absent, a string when
    present (None and absent read alike, and any value as its str(): replay interprets
    groups, exe and protocol through str() and compares flow and owner with strings; as a
    cache key, True and 1 must not be one value)."""

    flow: Any                   # "first"; "summary": a UDP flow summary (not replayed)
    owner: Any                  # "unknown": the kernel did not know an accept's owner
    groups: Any                 # "g1,g2,...", primary first, as the kernel saw them
    exe: Any                    # "DEV:INODE" (the kernel's dev_t)
    protocol: Any               # "tcp", "udp", ...
    folded: Any                 # "summary": a user's rejections counted, not sent one by one (not replayed)


def extra_facts(text: str) -> ExtraFacts:
    """ExtraFacts of a stored extra (JSON text; a damaged one is a ValueError)."""
    x = _loads(text) if text != "{}" else {}
    if not isinstance(x, dict):
        raise ValueError(f"extra is not an object: {text[:40]!r}")
    return ExtraFacts(*(v if v is None or type(v) is str else str(v) for v in (x.get(k) for k in ExtraFacts._fields)))


def damaged_row(row: tuple, what: str) -> JournalError:
    """The error for a stored row that does not read back (seq first in the row)."""
    return JournalError(f"damaged entry at seq {row[0]}: {what}")


# DecisionRow fields and the types a row written by sockgate has there (SQLite keeps
# whatever type an edited file puts in a column)
_INT_FIELDS = {"ts_ns", "uid", "gid", "local_port", "remote_port"}
_ROW_TYPES = tuple((i, name, (int,) if name == "ts_ns" else (str,) if name in ("host", "type", "source", "extra")
                    else (int, type(None)) if name in _INT_FIELDS else (str, type(None)))
                   for i, name in enumerate(DecisionRow._fields) if name != "seq")


def check_decision_row(row: tuple) -> None:
    """Raise damaged_row unless every field of a DecisionRow tuple has the type sockgate
    writes there (an edited journal: a port as text, a program as a blob, a NUL in a path)."""
    for i, name, types in _ROW_TYPES:
        v = row[i]
        if not isinstance(v, types) or isinstance(v, bool):
            raise damaged_row(row, f"{name} is {type(v).__name__}")
        if isinstance(v, str) and "\0" in v:
            raise damaged_row(row, f"{name} holds a NUL byte")


class FactsCache:
    """extra text -> ExtraFacts, bounded (cleared when full: memory stays flat)."""

    MAX = 1 << 16

    def __init__(self) -> None:
        self.known: dict[str, ExtraFacts] = {}

    def miss(self, row: tuple) -> ExtraFacts:
        text = row[11]
        try:
            f = extra_facts(text)
        except (ValueError, TypeError) as e:
            raise damaged_row(row, str(e)) from None
        if len(self.known) >= self.MAX:
            self.known.clear()
        self.known[text] = f
        return f


def decision_row(e: Entry) -> DecisionRow:
    """An Entry as the DecisionRow the journal would read for it."""
    return DecisionRow(e.seq, e.ts_ns, e.host, _value(e.outcome), e.rule, e.user, _value(e.type), _value(e.source),
                       e.uid, e.gid, e.program, dump_extra(e.extra), e.local_addr, e.local_port, e.remote_addr,
                       e.remote_port)


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def decision_rows(items: Iterable[Any]) -> Iterator[tuple]:
    """DecisionRows from Journal.decisions (passed through) or from Entries (converted)."""
    it = iter(items)
    for first in it:
        rest = itertools.chain((first,), it)
        return rest if isinstance(first, tuple) else map(decision_row, rest)
    return iter(())


def write_error(path: Path | str, what: str, e: sqlite3.Error) -> JournalError:
    """An SQLite failure as a JournalError; SQLITE_BUSY/SQLITE_LOCKED (by their code, not
    their message) as JournalBusyError: another process holds the receiver."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return JournalBusyError(f"{path}: {what}: receiver is busy (held by another process): {e}")
    return JournalError(f"{path}: {what}: {e}")


def create_private_file(path: Path, data: bytes = b"", mode: int = 0o600, *, group_read: bool = False) -> None:
    """A new file of `mode`. `group_read` (journal data: receivers, journal.json): when the
    directory grants its group read access (`chgrp GROUP DIR; chmod 0750 DIR`, the read-only
    group of docs/console.md), the file gets that group and 0640, so receivers made by later
    rotations are readable by the group too. Keys never ask for it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if group_read:
            d = os.stat(path.parent)
            if d.st_mode & stat.S_IRGRP and not d.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.fchown(fd, -1, d.st_gid)
                os.fchmod(fd, 0o640)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def receiver_name(number: int) -> str:
    return f"r{number:06d}.sgj"


def scan_directory(directory: Path) -> list[tuple[int, Path]]:
    """The receivers in a journal directory, oldest first. Anything we did not put
    there is refused: an audit directory with foreign files in it is not trusted."""
    receivers = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise JournalError(f"{directory}: cannot read journal directory: {e.strerror}") from None
    for name in names:
        m = RECEIVER_RE.match(name)
        if m:
            receivers.append((int(m.group(1)), directory / name))
        elif name not in _KNOWN and not _SIDE_RE.match(name):
            raise JournalError(
                f"{directory}: unexpected file {name!r} in the journal directory "
                "(not a receiver; move it elsewhere)"
            )
    return receivers


SQLITE_NOTADB = 26   # "file is not a database"


class Receiver:
    """One receiver file. The journal holds one per file; all SQL lives here."""

    def __init__(self, path: Path, number: int, conn: sqlite3.Connection, meta: dict[str, str],
                 readonly: bool = False):
        self.path = path
        self.number = number
        self.conn = conn
        self.meta = meta
        self.readonly = readonly
        self._reader: Any = None   # scan()'s _append.Reader, opened on first use
        self._reader_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def first_seq(self) -> int:
        return int(self.meta["first_seq"])

    @property
    def prev_hash(self) -> bytes:
        return bytes.fromhex(self.meta["prev_hash"])

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, number: int, journal_id: str, first_seq: int, prev_hash: bytes,
               sync: str = "FULL") -> "Receiver":
        create_private_file(path, group_read=True)   # SQLite gives its -wal and -shm this mode and group
        conn = _connect(path, readonly=False, sync=sync, new=True)
        try:
            conn.executescript(SCHEMA)
            meta = {
                "format": FORMAT, "version": str(FORMAT_VERSION), "journal": journal_id,
                "receiver": str(number), "first_seq": str(first_seq),
                "prev_hash": prev_hash.hex(), "state": "attached", "writer": "closed",
            }
            with conn:
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        except sqlite3.Error as e:
            conn.close()
            raise JournalError(f"{path}: cannot create receiver: {e}") from None
        fsync_dir(path.parent)
        return cls(path, number, conn, meta)

    @classmethod
    def open(cls, path: Path, number: int, journal_id: str, *, readonly: bool,
             sync: str = "FULL") -> "Receiver":
        # The file is only ever opened through SQLite: closing any other descriptor of it would
        # drop every POSIX lock this process holds on it (its other connections' too), and a
        # writer elsewhere would then take itself for the last user and reset the WAL under
        # them (seen as "database disk image is malformed" by a long-lived reader).
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise JournalError(f"{path}: cannot read receiver: {e.strerror}") from None
        if not os.access(path, os.R_OK):
            raise JournalError(f"{path}: cannot read receiver: permission denied")
        if size < 100:  # shorter than SQLite's header (an empty file SQLite would take for a new database)
            raise JournalError(f"{path}: not a journal receiver (not an SQLite file: corrupt or foreign)")
        conn = _connect(path, readonly=readonly, sync=sync)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("SELECT seq FROM entry LIMIT 1").fetchall()
            conn.execute("SELECT epoch FROM seal LIMIT 1").fetchall()
        except DB_ERRORS as e:
            conn.close()
            if getattr(e, "sqlite_errorcode", 0) & 0xFF == SQLITE_NOTADB:
                raise JournalError(f"{path}: not a journal receiver (not an SQLite file: corrupt or foreign)") from None
            raise JournalError(f"{path}: not a journal receiver ({e})") from None
        problem = None
        if meta.get("format") != FORMAT:
            problem = "not a sockgate receiver"
        elif meta.get("version") not in {str(v) for v in READABLE_VERSIONS}:
            problem = f"receiver format version {meta.get('version')} is not supported"
        elif meta.get("journal") != journal_id:
            problem = f"belongs to another journal ({meta.get('journal')})"
        elif meta.get("receiver") != str(number):
            problem = f"names itself receiver {meta.get('receiver')}, not {number} (renamed?)"
        else:
            try:
                int(meta["first_seq"]), bytes.fromhex(meta["prev_hash"])
            except (KeyError, ValueError):
                problem = "damaged meta table"
        if problem:
            conn.close()
            raise JournalError(f"{path}: {problem}")
        return cls(path, number, conn, meta, readonly)

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.conn.close()

    # -- reading ------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        """(last seq, its chain hash), or (first_seq - 1, prev_hash) when empty."""
        rows = self.fetchall("SELECT seq, hash FROM entry ORDER BY seq DESC LIMIT 1")
        row = rows[0] if rows else None
        if row is None:
            return self.first_seq - 1, self.prev_hash
        return row[0], bytes(row[1])

    def hash_at(self, seq: int) -> bytes | None:
        """The chain hash stored with entry seq, or None when this receiver has no such entry."""
        rows = self.fetchall("SELECT hash FROM entry WHERE seq = ?", [seq])
        return bytes(rows[0][0]) if rows else None

    def last_seal(self) -> tuple | None:
        """(epoch, seq, hash, ts_ns, mac) of the newest seal in this receiver, as stored."""
        rows = self.fetchall("SELECT epoch, seq, hash, ts_ns, mac FROM seal ORDER BY epoch DESC LIMIT 1")
        return tuple(rows[0]) if rows else None

    def seals(self) -> list[tuple]:
        """Every seal row (epoch, seq, hash, ts_ns, mac), epoch order, as stored (verify
        checks the types)."""
        return self.fetchall("SELECT epoch, seq, hash, ts_ns, mac FROM seal ORDER BY epoch")

    def time_span(self) -> tuple[int, int] | None:
        row = self.fetchall("SELECT min(ts_ns), max(ts_ns) FROM entry")[0]
        return None if row[0] is None else (row[0], row[1])

    def size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def known_idents(self, idents: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(idents), 500):
            part = idents[i:i + 500]
            q = f"SELECT ident FROM entry WHERE ident IN ({','.join('?' * len(part))})"
            found.update(r[0] for r in self.fetchall(q, part))
        return found

    def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except DB_ERRORS as e:
            raise JournalError(f"{self.path}: {e}") from None

    def scan(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """As fetchall, through the journal's C read path (_append.Reader: its own connection,
        opened as this one is): ~3x faster per row, and a text value repeated across rows is
        one str object (for scans of many rows: Journal.decisions)."""
        from sockgate.journal import _append   # here: reading and verifying work without the C extension

        params = tuple(params)
        with self._reader_lock:
            try:
                if self._reader is None:
                    # no mmap: a scan reads each page once, in order, and SQLite's page cache
                    # keeps the process's memory flat (mmap'd pages count in its RSS, up to
                    # MMAP_BYTES of a long receiver) at the same CPU cost (measured on 1M rows)
                    self._reader = _append.Reader(str(self.path), self.readonly, busy_ms=BUSY_TIMEOUT_MS)
                return self._reader.fetch(sql, params)
            except _append.ReadError as e:
                raise JournalError(f"{self.path}: {e}") from None
            except UnicodeDecodeError as e:
                reason = e.reason
        # text that is not UTF-8: the same page through sqlite3, whose error names the column
        # and the value (a JournalError from fetchall)
        self.fetchall(sql, params)
        raise JournalError(f"{self.path}: corrupt receiver: text that is not UTF-8 ({reason})")

    def iterate(self, sql: str, params: Iterable[Any] = ()) -> Iterator[tuple]:
        """Stream rows; a receiver that turns out corrupt mid-way is a JournalError."""
        try:
            yield from self.conn.execute(sql, tuple(params))
        except DB_ERRORS as e:
            raise JournalError(f"{self.path}: corrupt receiver: {e}") from None

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, tuple(params))
        except sqlite3.DatabaseError as e:
            raise write_error(self.path, sql.split(" ", 1)[0].lower(), e) from None

    # -- writing ------------------------------------------------------------------------

    def set_meta(self, **values: str) -> None:
        self.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())
            self.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.meta.update(values)

    def insert_seal(self, seal: tuple) -> None:
        """One seal row, in its own transaction (entries go through the C write path)."""
        self.insert_seals([seal])

    def insert_seals(self, seals: list[tuple], *, carried: bool = False) -> None:
        """Seal rows in one transaction. carried: copies of seals from receivers retention
        is about to delete; one already here (a retain that crashed before deleting) is kept."""
        verb = "INSERT OR IGNORE" if carried else "INSERT"
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(f"{verb} INTO seal VALUES (?, ?, ?, ?, ?)", seals)
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            self._rollback()
            raise write_error(self.path, "write failed", e) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# 16 KiB pages for new receivers: with the entry rows and the remote-address index (random
# inserts) SQLite itself writes ~25% more entries/s than with 4 KiB (bench/sqlite_floor.c).
# A file keeps the page size it was created with.
PAGE_SIZE = 16384
MMAP_BYTES = 1 << 31   # SQLite's default ceiling; larger receivers are read past it as usual


def _connect(path: Path, *, readonly: bool, sync: str, new: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            # queries read pages in place instead of copying each one out of the page cache
            # (a /24's rejections are rows scattered over the whole receiver)
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        else:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            if new:
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode fixes it
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when append() returns, and a seal row is never
            # behind the key file that already evolved past it.
            conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorcode", 0) & 0xFF == SQLITE_NOTADB:
            raise JournalError(f"{path}: not a journal receiver (not an SQLite file: corrupt or foreign)") from None
        raise JournalError(f"{path}: cannot open receiver: {e}") from None


def write_journal_meta(directory: Path, meta: dict[str, Any]) -> None:
    """journal.json, replaced atomically (its presence means "initialised")."""
    tmp = directory / f".tmp-{META_FILE}"
    try:
        tmp.unlink()   # left by a crash
    except FileNotFoundError:
        pass
    create_private_file(tmp, json.dumps(meta, indent=1).encode(), group_read=True)
    os.replace(tmp, directory / META_FILE)
    fsync_dir(directory)


def read_journal_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise JournalError(f"{directory}: not a sockgate journal (no {META_FILE})") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise JournalError(f"{path}: unreadable or corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("id"), str):
        raise JournalError(f"{path}: not a sockgate journal")
    if meta.get("version") not in READABLE_VERSIONS:
        raise JournalError(f"{path}: journal format version {meta.get('version')} is not supported")
    return meta
