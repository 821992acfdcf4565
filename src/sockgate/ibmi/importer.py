"""`sockgate ibmi import`: read a file of IBM i SK entries, journal them, summarize.

All or nothing: the file is read once, and its entries go to the journal in one transaction
(Journal.bulk) that commits only after the last record parsed, so a bad record leaves the
journal as it was, in bounded memory. Parsing (this thread) and writing (a writer thread in
the journal's C write path, which releases the GIL) overlap. With
`skip_bad` bad records are written to that file (as they were in the input) and the rest is
imported. Entries are identified by SYSTEM:SEQUENCE, so importing the same data twice adds
no entries (the journal skips known idents); each successful import adds one SG `import`
record that says what happened.
"""

from __future__ import annotations

import mmap
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Protocol

from sockgate.errors import ImportConflictError, ImportRecordError, UsageError
from sockgate.record import Entry, EntryType, addr_key, format_time
from sockgate.safedir import private_file

from . import delimited, records
from .layout import LAYOUTS
from .mapping import LocalTime

FORMATS = ("auto", "type5", "type4", "csv", "audit-sk")
_EBCDIC_TSK = "TSK".encode("cp037")  # the same in every EBCDIC CCSID with Latin letters


class Progress(Protocol):
    def start(self, total: int | None, description: str) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------- input

def read_input(path: str) -> tuple[str, Any, Callable[[], None]]:
    """(display name, bytes-like data, close). Files are memory-mapped; '-' is stdin."""
    if path == "-":
        return "<stdin>", sys.stdin.buffer.read(), lambda: None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return path, b"", lambda: None
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None
    finally:
        os.close(fd)

    def close() -> None:
        try:
            mm.close()
        except BufferError:  # a view is still referenced (an error traceback): GC closes it
            pass

    return path, mm, close


def sniff(data, ccsid: int | None = None, file: str = "-") -> str:
    """The input format, from the first bytes."""
    head = bytes(data[:65536])
    for name, lay in LAYOUTS.items():
        c = lay["JOCODE"].start
        if head[c:c + 3] in (_EBCDIC_TSK, b"TSK"):
            return name
    codec = records.codec_for_ccsid(ccsid) if ccsid else "utf-8"
    text = head.decode(codec, "replace").lstrip("\ufeff \t\r\n")
    if text[:1] in ("[", "{"):
        return "audit-sk"
    first = text.split("\n", 1)[0].upper()
    cols = [c.strip().strip('"').strip() for c in first.split(",")]
    if "ENTRY_TYPE" in cols and "SEQUENCE_NUMBER" in cols:
        return "audit-sk"
    if cols[:1] == ["JOENTL"] or cols[2:4] == ["T", "SK"]:
        return "csv"
    raise ImportRecordError(
        "cannot tell the input format (not an SK outfile, CPYTOIMPF copy or AUDIT_JOURNAL_SK "
        "result); pass --format type5, type4, csv or audit-sk", record=1, offset=0, file=file)


# ---------------------------------------------------------------- summary

@dataclass
class Summary:
    file: str
    format: str
    records: int = 0            # entries parsed from the file
    imported: int = 0           # new in the journal
    already_present: int = 0    # identity (SYSTEM:SEQUENCE) already journaled, or repeated
    bad: int = 0                # bad records written to --skip-bad
    by_type: dict[str, int] = field(default_factory=dict)
    systems: list[str] = field(default_factory=list)
    first: str | None = None    # UTC ISO 8601 of the oldest entry
    last: str | None = None
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    time_zone: str = ""
    dry_run: bool = False
    skip_bad_file: str | None = None
    bad_records: list[dict] = field(default_factory=list)  # the first 100: record, offset, reason
    journal: str | None = None
    import_seq: int | None = None  # seq of the SG import record
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Tally:
    """Counts entries as they stream past."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.systems: set[str] = set()
        self.lo: int | None = None
        self.hi: int | None = None

    def watch(self, entries: Iterator[Entry]) -> Iterator[Entry]:
        types, systems = self.types, self.systems
        lo = hi = None
        for e in entries:
            types[e.type.value] += 1
            systems.add(e.host)
            t = e.ts_ns
            if lo is None or t < lo:
                lo = t
            if hi is None or t > hi:
                hi = t
            yield e
        self.lo, self.hi = lo, hi


# ---------------------------------------------------------------- parsing

def parse(data, *, fmt: str = "auto", ccsid: int | None = None,
          record_length: int | None = None, clock: LocalTime | None = None, file: str = "-",
          on_bad: Callable[[ImportRecordError, bytes], None] | None = None,
          progress: Progress | None = None,
          header_out: Callable[[bytes], None] | None = None) -> tuple[str, Iterator[Entry]]:
    """(format, entries) of one input. Pure: nothing is written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    clock = clock or LocalTime("local")
    if len(data) == 0:
        raise ImportRecordError("empty input, no records", record=1, offset=0, file=file)
    if fmt == "auto":
        fmt = sniff(data, ccsid, file)
    if record_length is not None and fmt not in ("type5", "type4"):
        raise UsageError("--record-length applies to --format type5 and type4 only")
    advance = progress.advance if progress else None
    if fmt in ("type5", "type4"):
        lay = LAYOUTS[fmt]
        if ccsid:
            codec = records.codec_for_ccsid(ccsid)
        else:
            c = lay["JOCODE"].start
            codec = "latin-1" if bytes(data[c:c + 3]) == b"TSK" else "cp037"
        reader = records.RecordReader(data, lay, codec=codec, clock=clock,
                                      record_length=record_length, file=file)
        if progress:
            progress.start(reader.total, f"{fmt} records")
        return fmt, reader.entries(on_bad, advance)
    codec = records.codec_for_ccsid(ccsid) if ccsid else "utf-8"
    data = bytes(data)
    if progress:
        progress.start(data.count(b"\n") + 1, f"{fmt} rows")
    if fmt == "csv":
        lines = delimited.TextLines(data, codec, file)
        return fmt, delimited.read_cpytoimpf(lines, clock, on_bad, advance)
    head = bytes(data[:4096]).decode(codec, "replace").lstrip("\ufeff \t\r\n")
    if head[:1] in ("[", "{"):
        return fmt, delimited.read_audit_sk_json(data, codec, file, clock, on_bad, advance)
    lines = delimited.TextLines(data, codec, file)
    return fmt, delimited.read_audit_sk_csv(lines, clock, on_bad, advance, header_out)


def parse_all(data, **kw) -> list[Entry]:
    """Every entry of an input, or ImportRecordError at the first bad record."""
    return list(parse(data, **kw)[1])


# ---------------------------------------------------------------- conflicts

# What an SK entry says, compared when its identity (SYSTEM:SEQUENCE) is already known. Only
# facts every input format gives alike: not the timestamp text as written (SAA or ISO), and a
# field one format lacks (*TYPE4 has no program library and no TLS fields) is not a difference.
FACTS = ("type", "ts_ns", "outcome", "user", "local_port", "remote_port")
EXTRA_FACTS = ("job", "socket_descriptor", "ibmi_receiver", "filter_description", "filter_data",
               "mac_address", "host_name", "secure_version", "secure_properties")
MAX_CONFLICTS = 100   # listed; the import fails on the first file anyway


def differences(new: Entry, old: Entry) -> list[str]:
    """The FACTS (and addresses, program, EXTRA_FACTS) in which two entries of one ident differ."""
    out = [f for f in FACTS if getattr(new, f) != getattr(old, f)]
    for f in ("local_addr", "remote_addr"):
        if addr_key(getattr(new, f)) != addr_key(getattr(old, f)):   # one address, any spelling
            out.append(f)
    a, b = new.program or "", old.program or ""
    if ("/" in a) != ("/" in b):   # LIB/PGM against *TYPE4's PGM: compare the program
        a, b = a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]
    if a != b:
        out.append("program")
    out += [k for k in EXTRA_FACTS if k in new.extra and k in old.extra and new.extra[k] != old.extra[k]]
    return out


def _digest(e: Entry) -> int:
    """hash() of what differences() compares, for repeats within one file (one format: no
    other spellings to allow for; one process: hash() is stable for its life)."""
    x = e.extra
    return hash((e.type, e.ts_ns, e.outcome, e.user, e.local_addr, e.local_port, e.remote_addr,
                 e.remote_port, e.program, *map(x.get, EXTRA_FACTS)))


class Conflicts:
    """Passes a file's entries through and notes each one whose ident the journal already
    holds with other facts, or an earlier record of the same file holds. The journal skips
    a known ident, so without this a crafted file imported first would stand in for the
    real record for good. Identical repeats pass (they are "already present").

    Memory: one small int pair per entry (about 100 bytes) to find repeats within the file;
    the journal is asked once per chunk, over its ident index."""

    def __init__(self, journal_dir: str, file: str, bad: Callable[[], int]):
        from sockgate.journal import Journal

        self.file, self.bad = file, bad
        self.reader = Journal.open(journal_dir, readonly=True)   # what is committed
        self.seen: dict[int, int] = {}   # hash(ident) -> record << 64 | digest & (2**64 - 1)
        self.errors: list[ImportRecordError] = []
        self.details: list[dict] = []
        self.count = 0

    def close(self) -> None:
        self.reader.close()

    def watch(self, entries: Iterator[Entry]) -> Iterator[Entry]:
        chunk: list[tuple[int, Entry]] = []
        n = 0
        for e in entries:
            n += 1
            chunk.append((n + self.bad(), e))   # bad records came before it, in file order
            if len(chunk) >= CHUNK:
                self._check(chunk)
                yield from (e for _, e in chunk)
                chunk = []
        self._check(chunk)
        yield from (e for _, e in chunk)

    def _check(self, chunk: list[tuple[int, Entry]]) -> None:
        journaled = self._journaled([e.ident for _, e in chunk if e.ident])
        seen, mask = self.seen, (1 << 64) - 1
        for record, e in chunk:
            old = journaled.get(e.ident)
            if old is not None:
                diff = differences(e, old)
                if diff:
                    self._add(record, e, diff, f"journaled as seq {old.seq}", old.seq)
                continue
            key, digest = hash(e.ident), _digest(e) & mask
            first = seen.get(key)
            if first is None:
                seen[key] = record << 64 | digest
            elif first & mask != digest:
                self._add(record, e, [], f"record {first >> 64} of this file", None)

    def _journaled(self, idents: list[str]) -> dict[str, Entry]:
        from sockgate.journal.store import FIELDS, row_to_entry

        found: dict[str, Entry] = {}
        if not idents:
            return found
        for r in self.reader.receivers:
            for i in range(0, len(idents), 500):
                part = idents[i:i + 500]
                rows = r.fetchall(f"SELECT {','.join(FIELDS)} FROM entry WHERE ident IN "
                                  f"({','.join('?' * len(part))})", part)
                found.update((row[-1], row_to_entry(row)) for row in rows)
        return found

    def _add(self, record: int, e: Entry, fields: list[str], where: str, seq: int | None) -> None:
        self.count += 1
        if len(self.errors) >= MAX_CONFLICTS:
            return
        what = f"differs in {', '.join(fields)}" if fields else "has other content"
        self.errors.append(ImportRecordError(
            f"conflict: {e.ident} is already {where}, and this record {what} "
            "(nothing imported; find out which is genuine)", record=record, file=self.file))
        self.details.append({"record": record, "ident": e.ident, "seq": seq, "fields": fields})

    def raise_any(self) -> None:
        if self.count:
            more = self.count - len(self.errors)
            if more:
                self.errors.append(ImportRecordError(f"... and {more} more conflicts", file=self.file))
            raise ImportConflictError(self.errors, self.details)


# ---------------------------------------------------------------- import

CHUNK = 8192   # entries per hand-over from the parser to the journal writer
_END = object()


class _Aborted(Exception):
    """The parser stopped (a bad record, Ctrl-C): roll the import back."""


def _checked(conflicts: Conflicts, entries: Iterator[Entry]) -> Iterator[Entry]:
    """The entries, then ImportConflictError if any conflicted: raised before the last
    chunk is handed over, so the bulk transaction rolls back (all or nothing)."""
    yield from conflicts.watch(entries)
    conflicts.raise_any()


def journal_entries(journal, entries: Iterator[Entry]) -> int:
    """Write entries (parsed on this thread) to the journal on a writer thread, in one bulk
    transaction: everything or, if parsing or writing fails, nothing. Returns the last seq."""
    chunks: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def write() -> None:
        chunk = None
        try:
            with journal.bulk():
                while (chunk := chunks.get()) is not _END:
                    if chunk is _Aborted:
                        raise _Aborted
                    journal.append(chunk)
        except BaseException as e:
            failure.append(e)
            while chunk is not _END and chunk is not _Aborted:  # let the parser finish putting
                chunk = chunks.get()

    writer = threading.Thread(target=write, name="import-writer")
    writer.start()
    try:
        chunk: list[Entry] = []
        for e in entries:
            chunk.append(e)
            if len(chunk) >= CHUNK:
                if failure:
                    break
                chunks.put(chunk)
                chunk = []
        if chunk and not failure:
            chunks.put(chunk)
    except BaseException:
        chunks.put(_Aborted)
        writer.join()
        raise
    chunks.put(_END)
    writer.join()
    if failure:
        raise failure[0]
    return journal.last_seq


def import_file(path: str, journal_dir: str | None, *, fmt: str = "auto", ccsid: int | None = None,
                record_length: int | None = None, utc_offset: str = "local",
                skip_bad: str | None = None, dry_run: bool = False,
                progress: Progress | None = None) -> Summary:
    started = time.perf_counter()
    clock = LocalTime(utc_offset)
    name, data, close = read_input(path)
    bad_out: IO[bytes] | None = None
    summary = Summary(file=name, format=fmt, time_zone=clock.describe, dry_run=dry_run,
                      skip_bad_file=skip_bad, journal=None if dry_run else journal_dir)

    def on_bad(err: ImportRecordError, raw: bytes) -> None:
        summary.bad += 1
        if len(summary.bad_records) < 100:
            summary.bad_records.append(
                {"record": err.record, "offset": err.offset, "reason": err.reason})
        bad_out.write(raw)

    def header_out(raw: bytes) -> None:
        bad_out.write(raw)

    journal = None
    try:
        if skip_bad:
            try:
                # bad records are the input's data: 0600 whatever the umask, like the journal
                private_file(skip_bad, error=UsageError)
                bad_out = open(skip_bad, "wb")
            except UsageError as e:
                raise UsageError(f"--skip-bad: {e}") from None
            except OSError as e:
                raise UsageError(f"--skip-bad {skip_bad}: {e.strerror}") from None
        if not dry_run:
            from sockgate.journal import Journal
            journal = Journal.open(journal_dir)  # early: a bad journal fails before parsing
        tally = Tally()
        fmt_used, entries = parse(
            data, fmt=fmt, ccsid=ccsid, record_length=record_length, clock=clock, file=name,
            on_bad=on_bad if skip_bad else None, progress=progress,
            header_out=header_out if skip_bad else None)
        summary.format = fmt_used
        if journal is not None:
            before = journal.last_seq
            conflicts = Conflicts(journal_dir, name, lambda: summary.bad)
            try:
                after = journal_entries(journal, _checked(conflicts, tally.watch(entries)))
            finally:
                conflicts.close()
        else:
            for _ in tally.watch(entries):
                pass
        entries = None
        if progress:
            progress.stop()
        summary.records = sum(tally.types.values())
        summary.by_type = dict(sorted(tally.types.items()))
        summary.systems = sorted(tally.systems)
        summary.first_ts_ns, summary.last_ts_ns = tally.lo, tally.hi
        summary.first = format_time(tally.lo) if tally.lo is not None else None
        summary.last = format_time(tally.hi) if tally.hi is not None else None
        if journal is not None:
            summary.imported = after - before
            summary.already_present = summary.records - summary.imported
            summary.import_seq = journal.record(
                EntryType.IMPORT, file=name, format=fmt_used, records=summary.records,
                imported=summary.imported, already_present=summary.already_present,
                bad=summary.bad, systems=",".join(summary.systems),
                first_ts_ns=tally.lo, last_ts_ns=tally.hi, time_zone=clock.describe)
    finally:
        if progress:
            progress.stop()
        if journal is not None:
            journal.close()
        if bad_out is not None:
            bad_out.close()
        close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
