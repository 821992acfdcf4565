"""Text exports of SK entries:

- `csv`: the *TYPE5 (or *TYPE4) SK outfile copied with CPYTOIMPF. One column per outfile
  field in layout.py order, optional header row; char fields trimmed or not, numbers with
  or without leading zeros, the timestamp as SAA or ISO text.
- `audit-sk`: rows of SYSTOOLS.AUDIT_JOURNAL_SK saved with their column names, as CSV (header
  row) or JSON (an array of objects, {"...": [rows]}, or one object per line). Names are
  matched case-insensitively; all columns are nullable.

Errors name the record (data row, 1-based), its byte offset in the file, and the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator

from sockgate.errors import ImportRecordError
from sockgate.record import Entry, kind_of, quote

from . import mapping as m
from .layout import TYPE4, TYPE5, Layout, column_limit, text_limit

# Outfile fields whose CPYTOIMPF text is bounded by the field's length (numbers and the
# timestamp have their own checks: a copy may drop zeros or write the timestamp in ISO).
CHAR_FIELDS = frozenset(f.name for f in TYPE5.heading + TYPE5.sk + TYPE4.heading
                        if f.kind == "char" and f.name != "JOSEQN")


class TextLines:
    """Lines of a text file with their byte offsets (decoded one line at a time, so a
    decoding error has an exact place)."""

    def __init__(self, data: bytes, codec: str, file: str):
        self.data, self.codec, self.file = data, codec, file
        if codec.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig") \
                and data[:3] == b"\xef\xbb\xbf":
            self.start = 3
        else:
            self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        """(line number, byte offset, text)."""
        pos = self.start
        data = self.data
        if _single_byte(self.codec):
            # EBCDIC ends lines with X'25' (LF) or X'15' (NEL): split the decoded text; one
            # byte per character, so character offsets are byte offsets
            for no, text in enumerate(data.decode(self.codec).splitlines(keepends=True), 1):
                yield no, pos, text
                pos += len(text)
            return
        for no, raw in enumerate(data[self.start:].splitlines(keepends=True), 1):
            try:
                text = raw.decode(self.codec)
            except UnicodeDecodeError as e:
                raise ImportRecordError(
                    f"line {no}: not {self.codec} text ({e.reason}); pass --ccsid",
                    record=no, offset=pos + e.start, file=self.file) from None
            yield no, pos, text
            pos += len(raw)


def _single_byte(codec: str) -> bool:
    try:
        return len(bytes(range(256)).decode(codec)) == 256
    except UnicodeDecodeError:
        return False


def csv_rows(lines: TextLines) -> Iterator[tuple[int, int, list[str], bytes]]:
    """(line, byte offset, fields, raw bytes) per CSV row; quoted newlines are kept."""
    it = iter(lines)
    current: list[tuple[int, int, str]] = []

    def feed():
        for item in it:
            current.append(item)
            yield item[2]

    reader = csv.reader(feed(), strict=True)
    while True:
        current.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            no, off, _ = current[0] if current else (0, 0, "")
            raise ImportRecordError(f"line {no}: bad CSV ({e})", record=None, offset=off,
                                    file=lines.file) from None
        if not current:
            return
        no, off, _ = current[0]
        raw = "".join(t for _, _, t in current).encode(lines.codec)
        if row and any(c.strip() for c in row):
            yield no, off, row, raw


def _error(e: Exception, record: int, line: int, offset: int, file: str) -> ImportRecordError:
    return ImportRecordError(f"line {line}: {e}", record=record, offset=offset, file=file)


# ---------------------------------------------------------------- CPYTOIMPF

def _layout_for(ncols: int, file: str, line: int, offset: int) -> Layout:
    for lay in (TYPE5, TYPE4):
        if lay.min_columns <= ncols <= len(lay.columns):
            return lay
    raise ImportRecordError(
        f"line {line}: {ncols} columns; a CPYTOIMPF copy of an SK outfile has "
        f"{TYPE5.min_columns}-{len(TYPE5.columns)} (*TYPE5) or {TYPE4.min_columns}-"
        f"{len(TYPE4.columns)} (*TYPE4)", record=1, offset=offset, file=file)


def read_cpytoimpf(lines: TextLines, clock: m.LocalTime, on_bad: Callable | None = None,
                   progress: Callable[[int], None] | None = None) -> Iterator[Entry]:
    layout: Layout | None = None
    index: dict[str, int] = {}
    record = 0
    for line, off, row, raw in csv_rows(lines):
        if layout is None:
            if row[0].strip().upper() == "JOENTL":  # header row (ADDCOLNAM)
                continue
            layout = _layout_for(len(row), lines.file, line, off)
            index = {name: i for i, name in enumerate(layout.columns)}
        record += 1
        try:
            entry = _cpytoimpf_entry(row, layout, index, clock)
        except ValueError as e:
            err = _error(e, record, line, off, lines.file)
            if on_bad is None:
                raise err from None
            on_bad(err, raw)
            continue
        if progress and record % 4096 == 0:
            progress(4096)
        yield entry


def _cpytoimpf_entry(row: list[str], layout: Layout, index: dict[str, int],
                     clock: m.LocalTime) -> Entry:
    if not layout.min_columns <= len(row) <= len(layout.columns):
        raise m.FieldError("row", f"{len(row)} columns, expected {len(layout.columns)} "
                           f"({layout.name}) like the first row")

    def col(name: str) -> str:
        i = index.get(name)
        v = row[i].strip() if i is not None and i < len(row) else ""
        return m.bounded(v, name, text_limit(name)) if name in CHAR_FIELDS else v

    if col("JOCODE") != "T" or col("JOENTT") != "SK":
        raise m.FieldError("JOCODE", f"journal code and entry type are {quote(col('JOCODE'))} "
                           f"{quote(col('JOENTT'))}, not 'T' 'SK'")
    et = m.entry_type(col("entry_type"))
    seq = m.sequence(col("JOSEQN"))
    ts = col("JOTSTP")
    try:
        ts_ns = clock.text(ts)
    except ValueError as e:
        raise m.FieldError("JOTSTP", str(e)) from None
    la = col("local_ip") or col("local_ip15")
    ra = col("remote_ip") or col("remote_ip15")
    la, ra = m.address(la, "local_ip"), m.address(ra, "remote_ip")
    more: dict = {}
    sd = col("socket_descriptor")
    if sd:
        more["socket_descriptor"] = m.binary4(sd, "socket_descriptor")
    _type_specific(et.value, col, more)
    rcv, rlib = col("JORCV"), col("JORCVLIB")
    usr = col("JOUSER")
    return m.make_entry(
        et, ts_ns, ts, col("JOSYNM"), seq, col("JOUSPF") or usr, col("JOJOB"), usr,
        m.job_number(col("JONBR")), col("JOPGMLIB"), col("JOPGM"),
        f"{rlib}/{rcv}" if rlib and rcv else rcv or None,
        m.family(col("address_family"), la, ra), la, m.port(col("local_port"), "local_port"),
        ra, m.port(col("remote_port"), "remote_port"), more,
    )


def _type_specific(code: str, col: Callable[[str], str], more: dict) -> None:
    if code in m.SECURE_TYPES:
        keys = ("secure_version", "secure_properties")
    elif code in m.FILTER_TYPES:
        keys = ("filter_description", "filter_data")
    elif code in m.DHCP_TYPES:
        keys = ("mac_address", "host_name")
    else:
        return
    for k in keys:
        v = col(k)
        if v or k == "filter_description":
            more[k] = v


# ---------------------------------------------------------------- SYSTOOLS.AUDIT_JOURNAL_SK

REQUIRED = ("ENTRY_TYPE", "ENTRY_TIMESTAMP", "SEQUENCE_NUMBER", "SYSTEM_NAME")
# Columns copied into `extra` as they are (snake_case of the column name), when not null.
EXTRA_COLUMNS = ("DHCP_IP_ADDRESS", "SECURE_INFORMATION", "TLS_ERROR_CODE",
                 "TLS_ERROR_DESCRIPTION", "ENTRY_TYPE_DETAIL")


def audit_sk_entry(row: dict, clock: m.LocalTime) -> Entry:
    """One AUDIT_JOURNAL_SK row (keys upper-cased) -> Entry."""
    def col(name: str) -> str:
        v = row.get(name)
        if v is None:
            return ""
        if isinstance(v, (dict, list)):   # JSON: a column holds a scalar
            raise m.FieldError(name, f"{kind_of(v)}, not a value")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            raise m.FieldError(name, "a number too large for any SK field")   # str() of it is slow
        return m.bounded(str(v).strip(), name, column_limit(name))

    missing = [c for c in REQUIRED if not col(c)]
    if missing:
        raise m.FieldError(missing[0], "missing or null")
    et = m.entry_type(col("ENTRY_TYPE"), "ENTRY_TYPE")
    seq = m.sequence(col("SEQUENCE_NUMBER"), "SEQUENCE_NUMBER")
    ts = col("ENTRY_TIMESTAMP")
    try:
        ts_ns = clock.text(ts)
    except ValueError as e:
        raise m.FieldError("ENTRY_TIMESTAMP", str(e)) from None
    job_name, job_user, job_nbr = col("JOB_NAME"), col("JOB_USER"), col("JOB_NUMBER")
    qual = col("QUALIFIED_JOB_NAME")
    if qual and not (job_name and job_user and job_nbr):
        parts = qual.split("/")
        if len(parts) != 3:
            raise m.FieldError("QUALIFIED_JOB_NAME", f"{quote(qual)} is not NUMBER/USER/NAME")
        job_nbr, job_user, job_name = parts
    la = m.address(col("LOCAL_IP_ADDRESS"), "LOCAL_IP_ADDRESS")
    ra = m.address(col("REMOTE_ADDRESS"), "REMOTE_ADDRESS")
    more: dict = {}
    sd = col("SOCKET_DESCRIPTOR")
    if sd:
        more["socket_descriptor"] = m.binary4(sd, "SOCKET_DESCRIPTOR")
    _type_specific(et.value, lambda k: col(k.upper()), more)
    for c in EXTRA_COLUMNS:
        if v := col(c):
            more[c.lower()] = v
    rcv, rlib = col("RECEIVER_NAME"), col("RECEIVER_LIBRARY")
    return m.make_entry(
        et, ts_ns, ts, col("SYSTEM_NAME"), seq, col("USER_NAME") or job_user, job_name,
        job_user, m.job_number(job_nbr, "JOB_NUMBER") if job_nbr else "",
        col("PROGRAM_LIBRARY"), col("PROGRAM_NAME"),
        f"{rlib}/{rcv}" if rlib and rcv else rcv or None,
        m.family(col("ADDRESS_SPACE_TYPE"), la, ra), la, m.port(col("LOCAL_PORT"), "LOCAL_PORT"),
        ra, m.port(col("REMOTE_PORT"), "REMOTE_PORT"), more,
    )


def read_audit_sk_csv(lines: TextLines, clock: m.LocalTime, on_bad: Callable | None = None,
                      progress: Callable[[int], None] | None = None,
                      header_out: Callable[[bytes], None] | None = None) -> Iterator[Entry]:
    header: list[str] | None = None
    record = 0
    for line, off, row, raw in csv_rows(lines):
        if header is None:
            header = [c.strip().upper() for c in row]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ImportRecordError(
                    f"line {line}: header has no {', '.join(missing)} column - not an "
                    "AUDIT_JOURNAL_SK result with column names", record=None, offset=off,
                    file=lines.file)
            if header_out:
                header_out(raw)
            continue
        record += 1
        try:
            if len(row) != len(header):
                raise m.FieldError("row", f"{len(row)} columns, the header has {len(header)}")
            entry = audit_sk_entry(dict(zip(header, row)), clock)
        except ValueError as e:
            err = _error(e, record, line, off, lines.file)
            if on_bad is None:
                raise err from None
            on_bad(err, raw)
            continue
        if progress and record % 4096 == 0:
            progress(4096)
        yield entry


def json_rows(data: bytes, codec: str, file: str) -> Iterator[tuple[int, int, object]]:
    """(record, byte offset, value) from a JSON array, an object holding one array of rows,
    or JSON Lines. Parsed element by element, so an error has a place."""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise ImportRecordError(f"not {codec} text ({e.reason}); pass --ccsid", offset=e.start,
                                file=file) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    dec = json.JSONDecoder(parse_int=_json_int)
    ws = " \t\r\n"

    def byte_off(pos: int) -> int:
        return len(text[:pos].encode(codec)) if not text.isascii() else pos

    def fail(msg: str, pos: int, record: int | None):
        raise ImportRecordError(msg, record=record, offset=byte_off(pos), file=file)

    def decode(pos: int, record: int):
        """(value, end) of the JSON value at pos, or the located error of record."""
        try:
            return dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            fail(f"bad JSON: {e.msg}", e.pos, record)
        except ValueError as e:    # _json_int
            fail(f"bad JSON: {e}", pos, record)
        except RecursionError:     # the decoder recurses once per [ or {
            fail("bad JSON: nested too deeply", pos, record)

    pos = len(text) - len(text.lstrip(ws))
    if text.startswith("{", pos):
        # one object: JSON Lines of rows, or {"name": [rows]}
        first, end = decode(pos, 1)
        rest = text[end:].strip(ws)
        arrays = [v for v in first.values() if isinstance(v, list)] if isinstance(first, dict) else []
        if not rest and len(arrays) == 1 and all(isinstance(r, dict) for r in arrays[0]):
            for i, row in enumerate(arrays[0], 1):
                yield i, pos, row
            return
        record = 0
        while pos < len(text):
            row, end = decode(pos, record + 1)
            record += 1
            yield record, pos, row
            pos = end
            while pos < len(text) and text[pos] in ws:
                pos += 1
        return
    if not text.startswith("[", pos):
        fail("not JSON (expected an array or objects)", pos, None)
    pos += 1
    record = 0
    while True:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        if text.startswith("]", pos):
            return
        if record:
            if not text.startswith(",", pos):
                fail("bad JSON: expected ',' or ']'", pos, record)
            pos += 1
            while pos < len(text) and text[pos] in ws:
                pos += 1
        row, end = decode(pos, record + 1)
        record += 1
        yield record, pos, row
        pos = end


def _json_int(digits: str) -> int:
    # No SK value has more than 20 digits; int() of 5,000 raises ValueError (and is slow before)
    if len(digits) > 40:
        raise ValueError(f"a number of {len(digits)} digits")
    return int(digits)


def read_audit_sk_json(data: bytes, codec: str, file: str, clock: m.LocalTime,
                       on_bad: Callable | None = None,
                       progress: Callable[[int], None] | None = None) -> Iterator[Entry]:
    for record, off, row in json_rows(data, codec, file):
        try:
            if not isinstance(row, dict):
                raise m.FieldError("row", f"a JSON {type(row).__name__}, not an object")
            entry = audit_sk_entry({str(k).upper(): v for k, v in row.items()}, clock)
        except ValueError as e:
            err = ImportRecordError(str(e), record=record, offset=off, file=file)
            if on_bad is None:
                raise err from None
            on_bad(err, json.dumps(row).encode() + b"\n")
            continue
        if progress and record % 4096 == 0:
            progress(4096)
        yield entry
