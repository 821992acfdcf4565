"""The Journal: one writer appends, seals and rotates; any number of readers read.

Sequence numbers are gap-free across receivers. append() commits before it returns (in
transactions of BATCH entries, or one transaction with atomic=True), so whatever append
returned survives a kill -9 of the writer. A writer that did not close cleanly leaves the
current receiver marked `writer=open`; the next writer finds that and journals an
INTERRUPTED record before anything else.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import fields as dc_fields
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from sockgate import safedir
from sockgate.errors import JournalBusyError, JournalError
from sockgate.locking import lock_exclusive
from sockgate.journal import _append, seal as sealing, store
from sockgate.record import Code, Entry, EntryType, Outcome, Source, key_addr
from sockgate.journal.query import Filter
from sockgate.journal.store import (
    FIELDS, FORMAT, FORMAT_VERSION, KEY_FILE, LOCK_FILE, META_FILE, VERIFY_KEY_FILE, ZERO_HASH,
    Receiver, create_private_file, dump_extra, fsync_dir, read_journal_meta,
    receiver_name, row_to_entry, scan_directory, write_journal_meta,
)

BATCH = 5000             # entries per transaction when not atomic
SEAL_EVERY = 10_000      # seal after this many entries ...
SEAL_INTERVAL = 60.0     # ... or this many seconds, whichever comes first
_ENTRY_FIELDS = {f.name for f in dc_fields(Entry)}
# Structural records only the journal itself writes (verify relies on their contents).
_INTERNAL = frozenset({EntryType.ROTATE.value, EntryType.CUT.value})


# What the C write path accepts (members are str, so one set holds members and values).
_CODES, _TYPES, _SOURCES, _OUTCOMES = (frozenset(m.value for m in c) for c in (Code, EntryType, Source, Outcome))
if _append.FIELDS != FIELDS:
    raise ImportError("sockgate.journal._append was built for other FIELDS; rebuild it (make)")
if _append.SQLITE_VERSION != sqlite3.sqlite_version:
    # Two SQLite libraries in one process do not see each other's POSIX locks on a file.
    raise ImportError(f"Python's sqlite3 uses SQLite {sqlite3.sqlite_version}, the journal's C write "
                      f"path {_append.SQLITE_VERSION}: build Python against the system libsqlite3")
_SELECT = "SELECT " + ",".join(FIELDS) + " FROM entry"
RARE = 20_000    # tail(): an outcome with fewer entries is read through its index


def _private_dir(d: Path) -> None:
    """The journal directory, created 0700 if missing; refused, with the reason, when someone
    else could write to it (they could delete seal.key or swap receivers)."""
    try:
        safedir.private_dir(d, error=JournalError, what="journal directory")
    except OSError as e:
        raise JournalError(f"{d}: cannot create journal directory: {e.strerror}") from None


def init_journal(directory: str | os.PathLike, *, key_out: str | os.PathLike | None = None) -> tuple[str, str]:
    """Create an empty journal: identity, k_0 and the sealing key state.

    Returns (journal id, verification key text). The verification key is written to
    key_out if given, else to DIR/verification.key (0400) for the administrator to move
    off the host: a verifier that trusts a key lying next to the journal trusts the host."""
    d = Path(directory)
    _private_dir(d)   # it may have been there before us, with anyone's owner and mode
    if (d / META_FILE).exists():
        raise JournalError(f"{d}: a journal already exists here")
    if scan_directory(d) or any(d.iterdir()):
        raise JournalError(f"{d}: directory is not empty; refusing to create a journal in it")
    journal_id = uuid.uuid4().hex
    k0 = sealing.new_k0()
    vkey = sealing.format_verification_key(journal_id, k0)
    if key_out is not None:
        out = Path(key_out)
        try:
            create_private_file(out, (vkey + "\n").encode(), 0o400)
        except FileExistsError:
            raise JournalError(f"{out}: already exists; not overwriting a verification key") from None
        except OSError as e:
            raise JournalError(f"{out}: cannot write verification key: {e.strerror}") from None
    else:
        create_private_file(d / VERIFY_KEY_FILE, (vkey + "\n").encode(), 0o400)
    sealing.write_seal_key(d / KEY_FILE, sealing.SealKey(journal_id, 0, k0), create=True)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "id": journal_id,
            "created_ns": time.time_ns(), "key_fingerprint": sealing.fingerprint(k0)}
    write_journal_meta(d, meta)   # last: its presence means "initialised"
    return journal_id, vkey


class Journal:
    def __init__(self, directory: Path, meta: dict[str, Any], readonly: bool, host: str, sync: str):
        self.directory = directory
        self.id: str = meta["id"]
        self.meta = meta
        self.readonly = readonly
        self.host = host
        self.seal_every = SEAL_EVERY
        self.seal_interval = SEAL_INTERVAL
        self._sync = sync
        self._receivers: dict[int, Receiver] = {}
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._closed = False
        # writer state
        self._head_seq = 0
        self._head_hash = ZERO_HASH
        self._key: sealing.SealKey | None = None
        self._sealed_seq = 0
        self._last_seal_time = time.monotonic()
        self._last_seal_ns: int | None = None   # wall time of the newest seal (None: never sealed)
        self._app: tuple[Receiver, _append.Appender] | None = None
        self._bulk = False

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike, *, create: bool = True, readonly: bool = False,
             host: str | None = None, sync: str = "FULL") -> "Journal":
        d = Path(directory)
        if not d.is_dir():
            if d.exists():
                raise JournalError(f"{d}: not a directory")
            if not create or readonly:
                raise JournalError(f"{d}: no journal here (directory does not exist)")
        if create and not readonly and not (d / META_FILE).exists():
            if d.is_dir() and any(d.iterdir()):
                raise JournalError(f"{d}: not a sockgate journal (no {META_FILE}) and not empty")
            init_journal(d)   # checks the directory's owner and mode
        elif not readonly and d.is_dir():
            _private_dir(d)
        meta = read_journal_meta(d)
        j = cls(d, meta, readonly, host or socket.gethostname(), sync)
        try:
            if readonly:
                j._refresh()
            else:
                j._open_writer()
        except BaseException:
            j._release()
            raise
        return j

    def _open_writer(self) -> None:
        self._lock_fd = lock_exclusive(self.directory / LOCK_FILE, error=JournalError, busy_error=JournalBusyError,
                                       busy=f"{self.directory}: journal is open by another writer")
        self._key = sealing.read_seal_key(self.directory / KEY_FILE)
        if self._key.journal_id != self.id:
            raise JournalError(f"{self.directory / KEY_FILE}: sealing key belongs to another journal")
        self._refresh()
        if not self._receivers:
            self._attach(1, 1, ZERO_HASH)
        cur = self._current()
        self._head_seq, self._head_hash = cur.head()
        last = None
        for r in self._ordered():   # carried seals sit in older receivers: take the newest of all
            row = r.last_seal()
            if row is not None:
                s = sealing.Seal.from_row(row, str(r.path))
                last = s if last is None or s.epoch > last.epoch else last
        # The key is at the epoch after the last seal, or at the last seal's own epoch after a
        # crash between committing that seal and evolving the key (finished here). Anything
        # else is tampering, and refusing keeps a forged epoch (10^15) from sending us evolving.
        expect = last.epoch + 1 if last else 0
        if last is not None and self._key.epoch == last.epoch:
            self._evolve_key()
        if self._key.epoch != expect:
            raise JournalError(
                f"{self.directory / KEY_FILE}: sealing key is at epoch {self._key.epoch}, but the journal's "
                + (f"last seal is epoch {last.epoch}" if last else "has no seal") +
                ": the key file or the seals were tampered with; refusing to write "
                "(run `sockgate journal verify --key`)")
        self._sealed_seq = last.seq if last else 0
        self._last_seal_ns = last.ts_ns if last else None
        if self.meta.get("version") != FORMAT_VERSION:   # a format-1 journal: retention now keeps seals
            self.meta = {**self.meta, "version": FORMAT_VERSION}
            write_journal_meta(self.directory, self.meta)
        interrupted = cur.meta.get("writer") == "open"
        cur.set_meta(writer="open")
        if interrupted:
            self.record(EntryType.INTERRUPTED, last_seq=self._head_seq, receiver=cur.name,
                        unsealed=self._head_seq - self._sealed_seq)

    def _refresh(self) -> None:
        """Pick up receivers created (rotate) or deleted (retain) since we last looked."""
        present = scan_directory(self.directory)
        numbers = {n for n, _ in present}
        for n in list(self._receivers):
            if n not in numbers:
                self._receivers.pop(n).close()
        for n, path in present:
            if n not in self._receivers:
                self._receivers[n] = Receiver.open(path, n, self.id, readonly=self.readonly, sync=self._sync)

    def _ordered(self) -> list[Receiver]:
        return [self._receivers[n] for n in sorted(self._receivers)]

    def _current(self) -> Receiver:
        return self._receivers[max(self._receivers)]

    def _attach(self, number: int, first_seq: int, prev_hash: bytes) -> Receiver:
        path = self.directory / receiver_name(number)
        try:
            r = Receiver.create(path, number, self.id, first_seq, prev_hash, self._sync)
        except FileExistsError:
            raise JournalError(f"{path}: already exists") from None
        self._receivers[number] = r
        return r

    # -- properties ---------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        if self.readonly:
            self._refresh()
            return self._current().head()[0] if self._receivers else 0
        return self._head_seq

    def seal_state(self) -> tuple[int, int, int | None]:
        """The writer's (last seq, last sealed seq, wall time in ns of the newest seal or None).
        Plain reads of what the writer tracks, no lock and no database: safe from another
        thread (the sealed seq is read first, so last - sealed is never negative)."""
        sealed, at = self._sealed_seq, self._last_seal_ns
        return self._head_seq, sealed, at

    @property
    def receivers(self) -> list[Receiver]:
        self._refresh()
        return self._ordered()

    # -- writing ------------------------------------------------------------------------

    def _check_writer(self) -> None:
        if self._closed:
            raise JournalError(f"{self.directory}: journal is closed")
        if self.readonly:
            raise JournalError(f"{self.directory}: journal is open read-only")

    def append(self, entries: Iterable[Entry], *, atomic: bool = False, _internal: bool = False) -> int:
        """Append entries, assigning gap-free seqs (set on the Entry objects too).
        Entries whose ident is already journaled are skipped. Returns the last seq."""
        self._check_writer()
        with self._lock:
            if atomic or self._bulk:
                self._append_batch(list(entries), _internal)
            else:
                # Cut transactions at seal boundaries too, so seals land every seal_every.
                batch: list[Entry] = []
                room = min(BATCH, max(1, self.seal_every - (self._head_seq - self._sealed_seq)))
                for e in entries:
                    batch.append(e)
                    if len(batch) >= room:
                        self._append_batch(batch, _internal)
                        self._maybe_seal()
                        batch = []
                        room = min(BATCH, max(1, self.seal_every - (self._head_seq - self._sealed_seq)))
                if batch:
                    self._append_batch(batch, _internal)
            if not self._bulk:
                self._maybe_seal()
            return self._head_seq

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Every append() inside is one transaction: all of it is committed at the end, or
        nothing (an exception rolls it back). For an import that must be whole, in bounded
        memory. Sealed once, after the commit."""
        self._check_writer()
        with self._lock:
            if self._bulk:
                raise JournalError("bulk() does not nest")
            head = self._head_seq, self._head_hash
            app = self._appender()
            self._bulk = True
            try:
                app.begin()
                yield
                app.commit()
            except BaseException:
                app.rollback()
                self._head_seq, self._head_hash = head
                raise
            finally:
                self._bulk = False
            self._maybe_seal()

    def _appender(self) -> _append.Appender:
        """The C write path into the current receiver (opened on first use)."""
        cur = self._current()
        if self._app is None or self._app[0] is not cur:
            if self._app is not None:
                self._app[1].close()
            self._app = (cur, _append.Appender(
                str(cur.path), self._sync, _CODES, _TYPES, _SOURCES, _OUTCOMES, _INTERNAL,
                dump_extra, busy_ms=store.BUSY_TIMEOUT_MS))
        return self._app[1]

    def _append_batch(self, batch: list[Entry], internal: bool) -> None:
        """Check, chain and insert (in C, see _append.c); its own transaction unless in bulk()."""
        if not batch:
            return
        skip = None
        if len(self._receivers) > 1:  # idents journaled before the last rotate
            idents = [e.ident for e in batch if getattr(e, "ident", None) is not None]
            if idents:
                skip = set()
                for r in self._ordered()[:-1]:
                    skip |= r.known_idents(idents)
        app = self._appender()
        try:
            if not self._bulk:
                app.begin()
            seq, h, _ = app.append(batch, self._head_seq, self._head_hash, self.host, internal, skip)
            if not self._bulk:
                app.commit()
        except BaseException as e:
            if not self._bulk:   # bulk() rolls back the whole transaction itself
                app.rollback()
            if isinstance(e, ValueError):   # a bad entry: nothing of this batch was written
                raise JournalError(str(e)) from None
            if isinstance(e, _append.BusyError):   # SQLITE_BUSY/LOCKED, told by code
                raise JournalBusyError(f"{self._current().path}: write failed, receiver is busy "
                                       f"(held by another process): {e}") from None
            if isinstance(e, _append.WriteError):
                raise JournalError(f"{self._current().path}: write failed: {e}") from None
            raise
        self._head_seq, self._head_hash = seq, h

    def record(self, type: EntryType | str, **fields: Any) -> int:
        """Append one of sockgate's own (SG) records; fields that are not Entry fields
        go to `extra`. Returns its seq."""
        etype = EntryType(type)
        base = {k: v for k, v in fields.items() if k in _ENTRY_FIELDS and k not in ("code", "type", "seq")}
        extra = dict(base.pop("extra", None) or {})
        extra.update({k: v for k, v in fields.items() if k not in _ENTRY_FIELDS})
        base.setdefault("ts_ns", time.time_ns())
        base.setdefault("source", Source.SOCKGATE)
        e = Entry(code=Code.SOCKGATE, type=etype, extra=extra, **base)
        return self.append([e], _internal=etype.value in _INTERNAL)

    def _maybe_seal(self) -> None:
        unsealed = self._head_seq - self._sealed_seq
        if unsealed >= self.seal_every or (
            unsealed and time.monotonic() - self._last_seal_time >= self.seal_interval
        ):
            self.seal()

    def seal(self) -> None:
        """Seal the chain head with the current key, then evolve the key one way."""
        self._check_writer()
        with self._lock:
            if self._head_seq == self._sealed_seq or self._head_seq == 0:
                return
            assert self._key is not None
            cur = self._current()
            if self._head_seq < cur.first_seq:
                return  # nothing in the current receiver (its predecessor was sealed at rotate)
            ts = time.time_ns()
            epoch = self._key.epoch
            mac = sealing.seal_mac(self._key.key, self.id, epoch, self._head_seq, self._head_hash, ts)
            cur.insert_seal((epoch, self._head_seq, self._head_hash, ts, mac))
            self._evolve_key()
            self._sealed_seq = self._head_seq
            self._last_seal_time = time.monotonic()
            self._last_seal_ns = ts

    def _evolve_key(self) -> None:
        assert self._key is not None
        self._key = sealing.SealKey(self.id, self._key.epoch + 1, sealing.evolve(self._key.key))
        sealing.write_seal_key(self.directory / KEY_FILE, self._key)

    def rotate(self) -> str:
        """Detach the current receiver (sealed) and attach a new one. Returns its name."""
        self._check_writer()
        with self._lock:
            old = self._current()
            name = receiver_name(old.number + 1)
            self.record(EntryType.ROTATE, receiver=name, previous=old.name)
            self.seal()
            old.set_meta(state="detached", writer="closed", last_seq=str(self._head_seq))
            new = self._attach(old.number + 1, self._head_seq + 1, self._head_hash)
            new.set_meta(writer="open")
            return new.name

    def retain(self, *, max_age: float | None = None, max_size: int | None = None,
               now: float | None = None, shipped_seq: int | None = None,
               discard_unshipped: bool = False) -> list[str]:
        """Delete whole detached receivers, oldest first, while the oldest is entirely
        older than max_age seconds or the journal is larger than max_size bytes. The cut
        is declared first in a sealed CUT record, so verify accepts it. Returns names.

        shipped_seq: what a fleet collector acknowledged (None: not shipping). A receiver
        holding entries after it is kept, unless discard_unshipped, and then the cut
        record says which entries were deleted unshipped (`unshipped_from`)."""
        self._check_writer()
        now = time.time() if now is None else now
        with self._lock:
            receivers = self._ordered()
            total = sum(r.size() for r in receivers)
            doomed: list[Receiver] = []
            for i, r in enumerate(receivers[:-1]):   # never the attached one
                if shipped_seq is not None and not discard_unshipped and receivers[i + 1].first_seq - 1 > shipped_seq:
                    break   # holds entries the collector does not have yet
                span = r.time_span()
                too_old = max_age is not None and (span is None or span[1] < (now - max_age) * 1e9)
                too_big = max_size is not None and total > max_size
                if not (too_old or too_big):
                    break
                doomed.append(r)
                total -= r.size()
            if not doomed:
                return []
            after = receivers[len(doomed)]
            through = after.first_seq - 1
            unshipped = {} if shipped_seq is None or through <= shipped_seq else {"unshipped_from": shipped_seq + 1}
            self.record(EntryType.CUT, receivers=[r.name for r in doomed], through_seq=through,
                        hash=after.prev_hash.hex(), max_age=max_age, max_size=max_size, **unshipped)
            self.seal()
            # Seals outlive their receivers: they move to the first kept one, so verify --key
            # still checks every epoch from 0 and the cut point is authenticated. An intruder
            # with today's key can then at most cut a prefix, not forge one.
            carried = [row for r in doomed for row in r.seals()]
            after.insert_seals(carried, carried=True)
            names = []
            for r in doomed:
                self._receivers.pop(r.number).close()
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(str(r.path) + suffix)
                    except FileNotFoundError:
                        pass
                names.append(r.name)
            fsync_dir(self.directory)
            return names

    # -- reading ------------------------------------------------------------------------

    def entries(self, after_seq: int = 0, *, filter: Filter | None = None, page: int = 10_000) -> Iterator[Entry]:
        """Entries with seq > after_seq matching filter, ascending seq across receivers.
        Reads in pages, so a long iteration never holds a read transaction open."""
        for r, rows in self._pages(_SELECT, after_seq, filter, page):
            for row in rows:
                yield _to_entry(row, r)

    def decisions(self, after_seq: int = 0, *, filter: Filter | None = None,
                  page: int = 10_000) -> Iterator[tuple]:
        """As `entries`, but DecisionRow-shaped tuples (store.DecisionRow: the columns replay
        and learn read, as stored), read through the C read path (Receiver.scan): the fast
        read of many decisions."""
        for _, rows in self._pages(store.DECISION_SELECT, after_seq, filter, page, scan=True):
            yield from rows

    def _pages(self, select: str, after_seq: int, filter: Filter | None,
               page: int, *, scan: bool = False) -> Iterator[tuple[Receiver, list[tuple]]]:
        """(receiver, rows) pages of `select` (seq first) over matching entries, seq order;
        `scan`: read through Receiver.scan."""
        where, params = (filter or Filter()).where()
        with self._lock:
            if self.readonly:
                self._refresh()
            receivers = self._ordered()
        for i, r in enumerate(receivers):
            nxt = receivers[i + 1].first_seq if i + 1 < len(receivers) else None
            if nxt is not None and nxt - 1 <= after_seq:
                continue
            last = after_seq
            fetch = r.scan if scan else r.fetchall
            while True:
                try:
                    rows = fetch(f"{select} WHERE seq > ? AND {where} ORDER BY seq LIMIT ?", [last, *params, page])
                except JournalError:
                    if not r.path.exists():
                        break   # deleted by retention while we read
                    raise
                if rows:
                    yield r, rows
                if len(rows) < page:
                    break
                last = rows[-1][0]
            after_seq = max(after_seq, last)

    def tail(self, n: int, *, filter: Filter | None = None) -> list[Entry]:
        """The last n matching entries, ascending (newest receivers read first)."""
        f = filter or Filter()
        where, params = f.where()
        out: list[Entry] = []
        for r in reversed(self.receivers):
            # Walking back from the newest entry finds the matches at once when they are
            # common, and reads the whole receiver when there are none (outcome "failed":
            # 1.4 s over 10M entries). Outcomes few enough (a count through their index,
            # stopped at RARE) are found through that index and sorted instead.
            select = _SELECT
            if f.outcomes and r.fetchall(f"SELECT count(*) FROM (SELECT 1 FROM entry WHERE outcome IN "
                                         f"({','.join('?' * len(f.outcomes))}) LIMIT {RARE})", f.outcomes)[0][0] < RARE:
                select = _SELECT + " INDEXED BY entry_outcome_remote"
            rows = r.fetchall(f"{select} WHERE {where} ORDER BY seq DESC LIMIT ?", [*params, n - len(out)])
            out.extend(_to_entry(row, r) for row in rows)
            if len(out) >= n:
                break
        return out[::-1]

    def count(self, filter: Filter | None = None) -> int:
        where, params = (filter or Filter()).where()
        return sum(r.fetchall(f"SELECT count(*) FROM entry WHERE {where}", params)[0][0]
                   for r in self.receivers)

    def top(self, field: str, filter: Filter | None = None, n: int = 10) -> list[tuple[Any, int]]:
        """The n most frequent values of one field among matching entries (merged over
        receivers). For addresses this groups on the indexed sort key."""
        allowed = {"remote_addr", "local_addr", "user", "program", "rule", "remote_port",
                   "local_port", "host", "type", "outcome"}
        if field not in allowed:
            raise JournalError(f"cannot group by {field!r} (one of: {', '.join(sorted(allowed))})")
        where, params = (filter or Filter()).where()
        key = {"remote_addr": "remote_key", "local_addr": "local_key"}.get(field, field)
        counts: dict[Any, int] = {}
        for r in self.receivers:
            # Addresses group on their sort key alone, so the covering index answers it.
            for k, c in r.fetchall(f"SELECT {key}, count(*) FROM entry WHERE {where} GROUP BY {key}", params):
                counts[k] = counts.get(k, 0) + c
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        if key != field:
            return [(key_addr(k), c) for k, c in ranked]
        return ranked

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Seal and mark the writer closed cleanly. Idempotent."""
        if self._closed:
            return
        with self._lock:
            try:
                if not self.readonly and self._receivers:
                    self.seal()
                    self._current().set_meta(writer="closed")
            finally:
                self._closed = True
                self._release()

    def _release(self) -> None:
        if self._app is not None:
            self._app[1].close()
            self._app = None
        for r in self._receivers.values():
            r.close()
        self._receivers.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _to_entry(row: tuple, r: Receiver) -> Entry:
    try:
        return row_to_entry(row)
    except (ValueError, TypeError, KeyError) as e:
        raise JournalError(f"{r.path}: damaged entry at seq {row[0]}: {e}") from None

