"""Fixed-length DSPJRN outfile records (*TYPE5 QASYSKJ5, *TYPE4 QASYSKJ4), transferred in
binary: text fields in EBCDIC (or ASCII), zoned digits as text, Binary(n) big-endian.

Speed (see docs/ibmi.md): one struct unpacks the fields read for every record straight from
the raw bytes, and each is one lookup in a memo of checked values keyed by its raw bytes. A
record the fast path does not take is read field by field (the careful path), which
accepts it or names the bad field. Offsets all come from layout.py.
"""

from __future__ import annotations

import codecs
import gc
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import fields as dc_fields
from itertools import islice
from typing import Any

from sockgate.errors import ImportRecordError, UsageError
from sockgate.record import Code, Entry, Source

from . import mapping as m
from .layout import Layout

CHUNK = 4096  # records per struct.iter_unpack call (and per progress update)

# CCSIDs without a "cpNNN" codec of the same number in Python.
_CCSID_CODECS = {819: "latin-1", 367: "latin-1", 1208: "utf-8", 850: "cp850", 1252: "cp1252"}


def codec_for_ccsid(ccsid: int) -> str:
    name = _CCSID_CODECS.get(ccsid) or f"cp{ccsid:03d}"
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UsageError(
            f"--ccsid {ccsid}: no codec for this CCSID (EBCDIC ones known here: 37, 273, 500, "
            "875, 1026, 1140; ASCII: 819, 850, 1208, 1252)"
        ) from None


def _chars(codec: str, fields: bool) -> str:
    """The 256 characters of a single-byte code page. fields=True, for blank-padded fields:
    control characters that str.strip() would take for white space (tab, line ends, NBSP,
    ...) become SUB (X'1A', what IBM i puts for a character it cannot convert), so stripping
    removes blanks only and such bytes fail the field checks instead of vanishing."""
    chars = bytes(range(256)).decode(codec)
    if fields:
        chars = "".join("\x1a" if c.isspace() and c != " " else c for c in chars)
    return chars


def latin1_table(codec: str, fields: bool = False) -> bytes | None:
    """A bytes.translate table from the code page to Latin-1, or None when the code page has
    characters beyond Latin-1 (CCSID 1140 and its euro sign)."""
    chars = _chars(codec, fields)
    return chars.encode("latin-1") if max(map(ord, chars)) < 256 else None


def ascii_table(codec: str) -> bytes:
    """A bytes.translate table that turns digits and punctuation of the code page into
    ASCII (every character beyond Latin-1 becomes SUB): for the per-record number fields."""
    return "".join(c if ord(c) < 256 else "\x1a" for c in _chars(codec, True)).encode("latin-1")


def decoder(codec: str, fields: bool = False) -> Callable[[bytes], str]:
    """bytes -> str for a single-byte codec: bytes.translate plus a Latin-1 decode, both in
    C, which beats the charmap codec for the short fields read per record."""
    table = latin1_table(codec, fields)
    if table is not None:
        return lambda b: b.translate(table).decode("latin-1")
    table_s = dict(enumerate(_chars(codec, fields)))
    return lambda b: bytes(b).decode("latin-1").translate(table_s)


def check_single_byte(codec: str) -> None:
    """Fixed offsets need one byte per character."""
    try:
        ok = len(bytes(range(256)).decode(codec)) == 256
    except UnicodeDecodeError:
        ok = False
    if not ok:
        raise UsageError(f"records in {codec} cannot be read at fixed offsets: binary outfile "
                         "records need a single-byte CCSID (37, 500, 273, 819, ...)")


def _heading_regex(layout: Layout, codec: str) -> re.Pattern[bytes]:
    """Journal code T, entry type SK, then the year of JOTSTP: marks a record start."""
    digit = b"[" + b"".join(re.escape(str(i).encode(codec)) for i in range(10)) + b"]"
    return re.compile(re.escape("TSK".encode(codec)) + digit * 4 + re.escape("-".encode(codec)))


def detect_record_length(data, layout: Layout, codec: str, file: str = "-") -> int:
    """The record stride: where the heading (T, SK, timestamp) recurs."""
    n = len(data)
    code_at = layout["JOCODE"].start
    pat = _heading_regex(layout, codec)
    if n == 0:
        raise ImportRecordError("empty file", record=1, offset=0, file=file)
    if n < layout.min_length:
        raise ImportRecordError(
            f"truncated: {n} bytes, an SK {layout.name} record has at least {layout.min_length}",
            record=1, offset=0, file=file)
    if not pat.match(data, code_at):
        got = bytes(data[code_at:code_at + 3]).decode(codec, "replace")
        raise ImportRecordError(
            f"journal code and entry type are {got!r}, not 'TSK' - not a {layout.name} SK "
            f"record, or not CCSID {codec} (--ccsid)", record=1, offset=code_at, file=file)
    # every heading must sit at a multiple of the stride
    hits, length = _stride(data, layout, pat)
    if length is None:
        if n <= layout.full_length:
            return n  # a single record (longer ones need --record-length)
        raise ImportRecordError(
            "cannot find the record length: the heading (journal code T, entry type SK) does "
            "not recur; pass --record-length", record=2, offset=layout.min_length, file=file)
    odd = next((h for h in hits if h % length), None)
    if odd is not None:
        raise ImportRecordError(
            f"cannot find the record length: headings recur every {length} bytes, but one is "
            f"at byte {odd + code_at}; pass --record-length", offset=odd + code_at, file=file)
    return length


def _stride(data, layout: Layout, pat: re.Pattern[bytes]) -> tuple[list[int], int | None]:
    """Offsets of the first headings (relative to the first), and the smallest distance
    between two of them (so a record whose heading is damaged cannot double it)."""
    code_at = layout["JOCODE"].start
    hits = [h.start() - code_at for h in islice(pat.finditer(data, code_at), 256)]
    gaps = [b - a for a, b in zip(hits, hits[1:]) if b - a >= layout.min_length]
    return hits, min(gaps) if gaps else None


def check_record_length(data, layout: Layout, codec: str, length: int, file: str = "-") -> None:
    """A --record-length that is a multiple of the real one would read every other record
    as the tail of the one before: refuse it when the headings say so."""
    hits, real = _stride(data, layout, _heading_regex(layout, codec))
    if real is not None and real < length and length % real == 0 and \
            not any(h % real for h in hits):
        inner = next(h for h in hits if h % length) + layout["JOCODE"].start
        raise ImportRecordError(
            f"--record-length {length}: a record heading lies inside record "
            f"{inner // length + 1}; the headings recur every {real} bytes",
            record=inner // length + 1, offset=inner, file=file)


class RecordReader:
    """Entries of a binary outfile. on_bad(error, raw record bytes) makes bad records
    skippable; without it the first bad record raises ImportRecordError."""

    def __init__(self, data, layout: Layout, *, codec: str, clock: m.LocalTime,
                 record_length: int | None = None, file: str = "-"):
        check_single_byte(codec)
        self.buf = data  # slices of it are bytes (bytes, mmap) for the per-field decodes
        self.data = memoryview(data).cast("B")
        self.layout = layout
        self.codec = codec
        self.clock = clock
        self.file = file
        if record_length is None:
            record_length = detect_record_length(self.data, layout, codec, file)
        elif record_length < layout.min_length:
            raise UsageError(
                f"--record-length {record_length}: an SK {layout.name} record has at least "
                f"{layout.min_length} bytes")
        else:
            check_record_length(self.data, layout, codec, record_length, file)
        self.record_length = record_length
        self.count = len(self.data) // record_length
        self.tail = len(self.data) - self.count * record_length  # bytes of a truncated record

    @property
    def total(self) -> int:
        return self.count + (1 if self.tail else 0)

    def raw(self, index: int) -> bytes:
        L = self.record_length
        return bytes(self.data[index * L:(index + 1) * L])

    def entries(self, on_bad: Callable | None = None,
                progress: Callable[[int], None] | None = None) -> Iterator[Entry]:
        """Entries, in record order. The fast path: one struct unpacks the fields read for
        every record straight from the raw bytes (in C, a chunk at a time); each field is then
        one dict lookup in a memo keyed by its raw bytes (_Memo: a distinct text is decoded,
        checked and converted once: jobs, users, programs, addresses, ports repeat). Only the
        sequence number and the timestamp are decoded per record. A record the fast path does
        not take goes to the careful path, which names the bad field or accepts it."""
        L = self.record_length
        data, buf = self.data, self.buf
        plan = _Plan(self.layout, L)
        table = ascii_table(self.codec)
        decode = decoder(self.codec, fields=True)
        plain = decoder(self.codec)  # free text (filter data) keeps its control characters
        careful = self._careful
        types = {code.encode(self.codec): (t, code, m.OUTCOMES[code])
                 for code, t in m.TYPES.items()}
        memo = plan.memos(self.clock, decode)
        jobs, programs, receivers, users, systems, ports, families, addrs, seconds = memo
        secure_t, filter_t, dhcp_t = m.SECURE_TYPES, m.FILTER_TYPES, m.DHCP_TYPES
        special = secure_t | filter_t | dhcp_t  # types with fields read from the record
        f = self.layout.fields

        def span(name: str) -> tuple[int, int]:  # fields a shorter record lacks: (0, 0)
            fld = f.get(name)
            return (fld.start, min(fld.end, L)) if fld and fld.start < L else (0, 0)

        fd0, fd1 = span("filter_description")
        fdat0, fdmax = f["filter_data"].start, f["filter_data"].length
        mac0, mac1 = span("mac_address")
        hn0, hn1 = span("host_name")
        sv0, sv1 = span("secure_version")
        sp0, sp1 = span("secure_properties")
        SOCKET, IBMI, TSK = Code.SOCKET, Source.IBMI, "TSK".encode(self.codec)
        make = _entry
        # entries are made by the million and have no cycles among them: the cyclic GC
        # would only rescan the ones still held (parse_all, the writer's queue) again and again
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for c0 in range(0, self.count, CHUNK):
                c1 = min(c0 + CHUNK, self.count)
                for rec, row in enumerate(plan.unpack(data[c0 * L:c1 * L]), c0):
                    try:
                        (seq, tsk, ts, jobkey, pgmkey, uspf, system, rcvkey, et, l15, lp, r15,
                         rp, sd, fdlen, af, l46, r46) = row
                        t, et, outcome = types[et]
                        seq = seq.translate(table)
                        tsa = ts.translate(table)
                        frac = tsa[20:]
                        if tsk != TSK or not seq.isdigit() or tsa[19:20] != b"." \
                                or not frac.isdigit():
                            raise ValueError
                        job, usr = jobs[jobkey]
                        system = systems[system]
                        seq = int(seq)
                        la = addrs[l46] or addrs[l15] or None
                        ra = addrs[r46] or addrs[r15] or None
                        fam = families[af] or (("ipv6" if ":" in (ra or la) else "ipv4")
                                               if (ra or la) else None)
                        extra = {
                            "socket_descriptor": sd, "ibmi_seq": seq,
                            "ibmi_timestamp": tsa.decode("latin-1"), "job": job,
                        }
                        if rcv := receivers[rcvkey]:
                            extra["ibmi_receiver"] = rcv
                        if et in special:
                            off = rec * L
                        if et in secure_t:
                            if sv1 and (v := decode(buf[off + sv0:off + sv1]).rstrip()):
                                extra["secure_version"] = v
                            if sp1 and (v := decode(buf[off + sp0:off + sp1]).rstrip()):
                                extra["secure_properties"] = v
                        elif et in filter_t:
                            if not 0 <= fdlen <= fdmax:
                                raise ValueError
                            extra["filter_description"] = decode(buf[off + fd0:off + fd1]).rstrip()
                            if fdlen:
                                extra["filter_data"] = plain(buf[off + fdat0:off + fdat0 + fdlen])
                        elif et in dhcp_t:
                            if v := decode(buf[off + mac0:off + mac1]).rstrip():
                                extra["mac_address"] = v
                            if v := decode(buf[off + hn0:off + hn1]).rstrip():
                                extra["host_name"] = v
                        entry = make(
                            SOCKET, t, seconds[ts[:19]] + int(frac) * 1000, IBMI, system,
                            outcome, None, None, users[uspf] or usr or None, None, None,
                            programs[pgmkey], fam, la, ports[lp], ra, ports[rp], extra,
                            f"{system}:{seq}")
                    except (ValueError, KeyError):
                        try:
                            entry = careful(rec * L)
                        except ImportRecordError as e:
                            err = ImportRecordError(e.reason, record=rec + 1, offset=e.offset,
                                                    file=self.file)
                            if on_bad is None:
                                raise err from None
                            on_bad(err, self.raw(rec))
                            continue
                    yield entry
                if progress:
                    progress(c1 - c0)
        finally:
            if gc_was:
                gc.enable()
        if self.tail:
            err = ImportRecordError(
                f"truncated: the last {self.tail} bytes are not a whole {L}-byte record",
                record=self.count + 1, offset=self.count * L, file=self.file)
            if on_bad is None:
                raise err
            on_bad(err, bytes(data[self.count * L:]))

    def _careful(self, off: int) -> Entry:
        """The record at byte `off`, field by field: the Entry, or ImportRecordError naming
        the bad field and its byte offset (the caller adds the record number)."""
        f = self.layout.fields
        data, codec, L = self.data, self.codec, self.record_length
        decode = decoder(codec, fields=True)

        def val(name: str) -> str:
            fld = f.get(name)
            if fld is None or fld.start >= L:
                return ""
            return decode(bytes(data[off + fld.start:off + min(fld.end, L)]))

        field = "JOCODE"
        try:
            tsk = val("JOCODE") + val("JOENTT")
            if tsk != "TSK":
                raise m.FieldError(field, f"journal code and entry type are {tsk!r}, not 'TSK' "
                                   "(wrong record length or CCSID?)")
            field = "JOSEQN"
            seq = m.sequence(val("JOSEQN"))
            field = "JOTSTP"
            ts = val("JOTSTP")
            ts_ns = self.clock.saa(ts)
            field = "JONBR"
            nbr = m.job_number(val("JONBR"))
            field = "entry_type"
            et = m.entry_type(val("entry_type"))
            code = et.value
            field = "local_ip"
            la = m.address(val("local_ip").strip() or val("local_ip15").strip(), field)
            field = "remote_ip"
            ra = m.address(val("remote_ip").strip() or val("remote_ip15").strip(), field)
            field = "local_port"
            lp = m.port(val("local_port").strip(), field)
            field = "remote_port"
            rp = m.port(val("remote_port").strip(), field)
            field = "address_family"
            fam = m.family(val("address_family").strip(), la, ra)
            sd = struct.unpack_from(">i", data, off + f["socket_descriptor"].start)[0]
            more: dict = {"socket_descriptor": sd}
            if code in m.SECURE_TYPES:
                for k in ("secure_version", "secure_properties"):
                    if v := val(k).rstrip():
                        more[k] = v
            elif code in m.FILTER_TYPES:
                field = "filter_data_length"
                more["filter_description"] = val("filter_description").rstrip()
                n = struct.unpack_from(">h", data, off + f[field].start)[0]
                fd = f["filter_data"]
                if not 0 <= n <= fd.length:
                    raise m.FieldError(field, f"{n} is not a length (0-{fd.length})")
                if n:
                    more["filter_data"] = str(data[off + fd.start:off + fd.start + n], codec)
            elif code in m.DHCP_TYPES:
                for k in ("mac_address", "host_name"):
                    if v := val(k).rstrip():
                        more[k] = v
            usr = val("JOUSER").rstrip()
            rcv, rlib = val("JORCV").rstrip(), val("JORCVLIB").rstrip()
            field = "JOSYNM"
            return m.make_entry(
                et, ts_ns, ts, val("JOSYNM").rstrip(), seq, val("JOUSPF").rstrip() or usr,
                val("JOJOB").rstrip(), usr, nbr, val("JOPGMLIB").rstrip(), val("JOPGM").rstrip(),
                f"{rlib}/{rcv}" if rlib and rcv else rcv or None, fam, la, lp, ra, rp, more)
        except ValueError as e:  # FieldError is a ValueError; so are the clock's
            where = f.get(field)
            reason = str(e) if isinstance(e, m.FieldError) else f"{field}: {e}"
            raise ImportRecordError(reason, offset=off + (where.start if where else 0)) from None




class _Memo(dict):
    """A dict that computes the value of a missing key once, with fn (which raises
    ValueError for a bad value: nothing is stored then, and the record goes careful)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[bytes], Any]):
        super().__init__()
        self.fn = fn

    def __missing__(self, key: bytes) -> Any:
        if len(self) > 100_000:
            self.clear()
        value = self[key] = self.fn(key)
        return value


# The fields read for every record, as (first field, last field) groups in record order;
# a group is the raw bytes from the start of its first field to the end of its last.
_HOT = (("JOSEQN", "JOSEQN"), ("JOCODE", "JOENTT"), ("JOTSTP", "JOTSTP"), ("JOJOB", "JONBR"),
        ("JOPGM", "JOPGMLIB"), ("JOUSPF", "JOUSPF"), ("JOSYNM", "JOSYNM"), ("JORCV", "JORCVLIB"),
        ("entry_type", "entry_type"), ("local_ip15", "local_ip15"), ("local_port", "local_port"),
        ("remote_ip15", "remote_ip15"), ("remote_port", "remote_port"),
        ("socket_descriptor", "socket_descriptor"), ("filter_data_length", "filter_data_length"),
        ("address_family", "address_family"), ("local_ip", "local_ip"),
        ("remote_ip", "remote_ip"))
_STRUCT = {"bin2": "h", "bin4": "i"}  # big-endian binary fields come out as ints


class _Plan:
    """One struct over a whole record that yields the hot groups (bytes, or ints for the
    binary fields) and skips the rest."""

    def __init__(self, layout: Layout, length: int):
        self.layout = layout
        fmt, pos = ">", 0
        for first, last in _HOT:
            if last not in layout.fields:
                last = first  # TYPE4 has no JOPGMLIB
            a, z = layout[first].start, layout[last].end
            if a < pos or z > length:
                raise AssertionError(f"layout {layout.name}: {first}..{last} out of order")
            fmt += (f"{a - pos}x" if a > pos else "") + _STRUCT.get(layout[first].kind,
                                                                    f"{z - a}s")
            pos = z
        fmt += f"{length - pos}x" if length > pos else ""
        self.unpack = struct.Struct(fmt).iter_unpack

    def memos(self, clock: m.LocalTime, decode: Callable[[bytes], str]) -> tuple[_Memo, ...]:
        """jobs, programs, receivers, users, systems, ports, families, addrs, seconds:
        raw field bytes -> checked value; each the same function of the text as the careful
        path, so both paths give the same entry."""
        f = self.layout.fields

        def rel(first: str, name: str) -> slice:
            a = f[name].start - f[first].start
            return slice(a, a + f[name].length)

        j_job, j_usr, j_nbr = rel("JOJOB", "JOJOB"), rel("JOJOB", "JOUSER"), rel("JOJOB", "JONBR")
        p_pgm = rel("JOPGM", "JOPGM")
        p_lib = rel("JOPGM", "JOPGMLIB") if "JOPGMLIB" in f else slice(0, 0)
        r_rcv, r_lib = rel("JORCV", "JORCV"), rel("JORCV", "JORCVLIB")

        def job(raw: bytes) -> tuple[str, str]:
            s = decode(raw)
            nbr, name, usr = s[j_nbr], s[j_job].rstrip(), s[j_usr].rstrip()
            if not name:
                raise ValueError  # careful: no job then, like the other formats
            return f"{m.job_number(nbr)}/{usr}/{name}", usr

        def program(raw: bytes) -> str | None:
            s = decode(raw)
            return m.qualified(s[p_lib].rstrip(), s[p_pgm].rstrip())

        def receiver(raw: bytes) -> str | None:
            s = decode(raw)
            rcv, lib = s[r_rcv].rstrip(), s[r_lib].rstrip()
            return f"{lib}/{rcv}" if lib and rcv else rcv or None

        def system(raw: bytes) -> str:
            if not (s := decode(raw).rstrip()):
                raise ValueError
            return s

        def family(raw: bytes) -> str:
            if not (s := decode(raw).strip()):
                return ""  # from the addresses
            if (fam := m.FAMILIES.get(s.upper())) is None:
                raise ValueError
            return fam

        return (_Memo(job), _Memo(program), _Memo(receiver),
                _Memo(lambda raw: decode(raw).rstrip()), _Memo(system),
                _Memo(lambda raw: m.port(decode(raw).strip(), "port")), _Memo(family),
                _Memo(lambda raw: m.address(decode(raw).strip(), "ip") or ""),
                _Memo(lambda raw: clock.second(decode(raw))))


def _entry_factory() -> Callable[..., Entry]:
    """Entry with positional arguments (fastest), if Entry's fields are in the order this
    module was written for; otherwise by keyword."""
    order = ("code", "type", "ts_ns", "source", "host", "outcome", "rule", "uid", "user", "gid",
             "pid", "program", "family", "local_addr", "local_port", "remote_addr",
             "remote_port", "extra", "ident")
    if tuple(f.name for f in dc_fields(Entry))[:len(order)] == order:
        return Entry
    return lambda *args: Entry(**dict(zip(order, args)))


_entry = _entry_factory()
