"""Fixed-length DSPJRN outfile records (*TYPE5 QASYSKJ5, *TYPE4 QASYSKJ4), transferred in
binary: text fields in EBCDIC (or ASCII), zoned digits as text, Binary(n) big-endian.

Speed: records are decoded a chunk at a time (one codec call for thousands of records), fields
are str slices at offsets taken from layout.py, and the binary fields are read with
struct.unpack_from on the raw bytes. Nothing is copied per record except the fields used.
"""

from __future__ import annotations

import codecs
import re
import struct
from itertools import chain
from collections.abc import Callable, Iterator

from sockgate.errors import ImportRecordError, UsageError
from sockgate.journal.entry import Entry

from . import mapping as m
from .layout import Layout

CHUNK = 4096  # records decoded per codec call

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


def is_ebcdic(codec: str) -> bool:
    return "T".encode(codec) == b"\xe3"


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
    if not pat.match(data, code_at):
        got = bytes(data[code_at:code_at + 3]).decode(codec, "replace")
        raise ImportRecordError(
            f"journal code and entry type are {got!r}, not 'TSK' - not a {layout.name} SK "
            f"record, or not CCSID {codec} (--ccsid)", record=1, offset=code_at, file=file)
    if n < layout.min_length:
        raise ImportRecordError(
            f"truncated: {n} bytes, an SK {layout.name} record has at least {layout.min_length}",
            record=1, offset=0, file=file)
    for hit in pat.finditer(data, code_at + layout.min_length):
        length = hit.start() - code_at
        count = n // length
        if all(pat.match(data, code_at + k * length) for k in range(2, min(count, 64))):
            return length
    if n < 2 * layout.min_length:
        return n  # a single record
    raise ImportRecordError(
        "cannot find the record length: the heading (journal code T, entry type SK) does not "
        "recur; pass --record-length", record=2, offset=layout.min_length, file=file)


class RecordReader:
    """Entries of a binary outfile. on_bad(record, offset, raw, error) makes bad records
    skippable; without it the first bad record raises ImportRecordError."""

    def __init__(self, data, layout: Layout, *, codec: str, clock: m.LocalTime,
                 record_length: int | None = None, file: str = "-"):
        check_single_byte(codec)
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
        L = self.record_length
        lay = self.layout
        f = lay.fields
        data = self.data
        codec = self.codec
        clock_saa = self.clock.saa
        file = self.file
        mk = m.make_entry
        types = m.TYPES
        port, address, family, job_number = m.port, m.address, m.family, m.job_number
        secure_t, filter_t, dhcp_t = m.SECURE_TYPES, m.FILTER_TYPES, m.DHCP_TYPES
        unpack_i = struct.Struct(">i").unpack_from
        unpack_h = struct.Struct(">h").unpack_from
        gather, K, at = _gather_plan(lay, L, _HOT)

        def raw(name):  # 0-based start/end in the record of a field read on demand
            fld = f.get(name)
            return (fld.start, min(fld.end, L)) if fld and fld.start < L else (0, 0)

        seq0, seq1 = at["JOSEQN"]
        code0, code1 = at["JOCODE"][0], at["JOENTT"][1]
        ts0, ts1 = at["JOTSTP"]
        job0, job1 = at["JOJOB"]
        usr0, usr1 = at["JOUSER"]
        nbr0, nbr1 = at["JONBR"]
        pgm0, pgm1 = at["JOPGM"]
        plib0, plib1 = at.get("JOPGMLIB", (0, 0))
        uspf0, uspf1 = at["JOUSPF"]
        sys0, sys1 = at["JOSYNM"]
        rcv0, rcv1 = at["JORCV"]
        rlib0, rlib1 = at["JORCVLIB"]
        et0 = at["entry_type"][0]
        l150, l151 = at["local_ip15"]
        lp0, lp1 = at["local_port"]
        r150, r151 = at["remote_ip15"]
        rp0, rp1 = at["remote_port"]
        af0, af1 = at["address_family"]
        la0, la1 = at["local_ip"]
        ra0, ra1 = at["remote_ip"]
        sv0, sv1 = at.get("secure_version", (0, 0))
        sp0, sp1 = at.get("secure_properties", (0, 0))
        sd0 = f["socket_descriptor"].start
        fl0 = f["filter_data_length"].start
        fd0, fd1 = raw("filter_description")
        fdat0, fdat1 = raw("filter_data")
        mac0, mac1 = raw("mac_address")
        hn0, hn1 = raw("host_name")

        for c0 in range(0, self.count, CHUNK):
            c1 = min(c0 + CHUNK, self.count)
            text = gather(data[c0 * L:c1 * L]).decode(codec)
            for i in range(c1 - c0):
                b = i * K
                rec = c0 + i
                off = rec * L
                field = "JOCODE"
                try:
                    if text[b + code0:b + code1] != "TSK":
                        raise m.FieldError(field, f"journal code and entry type are "
                                           f"{text[b + code0:b + code1]!r}, not 'TSK' (wrong "
                                           "record length or CCSID?)")
                    field = "JOSEQN"
                    s = text[b + seq0:b + seq1].strip()
                    if not (s.isascii() and s.isdigit()):
                        raise m.FieldError(field, f"{s!r} is not a sequence number")
                    seq = int(s)
                    field = "JOTSTP"
                    ts = text[b + ts0:b + ts1]
                    ts_ns = clock_saa(ts)
                    field = "JONBR"
                    nbr = text[b + nbr0:b + nbr1]
                    if not (nbr.isascii() and nbr.isdigit()):
                        nbr = job_number(nbr)
                    field = "entry_type"
                    code = text[b + et0]
                    et = types.get(code)
                    if et is None:
                        raise m.FieldError(field, f"{code!r} is not an SK entry type "
                                           "(A C D F I O P R S U X)")
                    field = "local_ip"
                    la = text[b + la0:b + la1].rstrip() or text[b + l150:b + l151].rstrip()
                    la = address(la, field) if la else None
                    field = "remote_ip"
                    ra = text[b + ra0:b + ra1].rstrip() or text[b + r150:b + r151].rstrip()
                    ra = address(ra, field) if ra else None
                    field = "local_port"
                    lp = port(text[b + lp0:b + lp1].strip(), field)
                    field = "remote_port"
                    rp = port(text[b + rp0:b + rp1].strip(), field)
                    field = "address_family"
                    af = text[b + af0:b + af1].rstrip()
                    fam = "ipv4" if af == "*IPV4" else "ipv6" if af == "*IPV6" else family(af, la, ra)
                    more = {"socket_descriptor": unpack_i(data, off + sd0)[0]}
                    if code in secure_t:
                        if sv1:
                            v = text[b + sv0:b + sv1].rstrip()
                            if v:
                                more["secure_version"] = v
                        if sp1:
                            v = text[b + sp0:b + sp1].rstrip()
                            if v:
                                more["secure_properties"] = v
                    elif code in filter_t:
                        field = "filter_data_length"
                        more["filter_description"] = str(data[off + fd0:off + fd1], codec).rstrip()
                        n = unpack_h(data, off + fl0)[0]
                        if not 0 <= n <= fdat1 - fdat0:
                            raise m.FieldError(field, f"{n} is not a length (0-{fdat1 - fdat0})")
                        if n:
                            more["filter_data"] = str(data[off + fdat0:off + fdat0 + n], codec)
                    elif code in dhcp_t:
                        v = str(data[off + mac0:off + mac1], codec).rstrip()
                        if v:
                            more["mac_address"] = v
                        v = str(data[off + hn0:off + hn1], codec).rstrip()
                        if v:
                            more["host_name"] = v
                    rlib = text[b + rlib0:b + rlib1].rstrip()
                    rcv = text[b + rcv0:b + rcv1].rstrip()
                    usr = text[b + usr0:b + usr1].rstrip()
                    field = "JOSYNM"
                    entry = mk(
                        et, ts_ns, ts, text[b + sys0:b + sys1].rstrip(), seq,
                        text[b + uspf0:b + uspf1].rstrip() or usr,
                        text[b + job0:b + job1].rstrip(), usr, nbr,
                        text[b + plib0:b + plib1].rstrip(), text[b + pgm0:b + pgm1].rstrip(),
                        f"{rlib}/{rcv}" if rlib and rcv else rcv or None,
                        fam, la, lp, ra, rp, more,
                    )
                except ValueError as e:  # FieldError is a ValueError; so are the clock's
                    where = f.get(field)
                    fo = off + (where.start if where else 0)
                    reason = str(e) if isinstance(e, m.FieldError) else f"{field}: {e}"
                    err = ImportRecordError(reason, record=rec + 1, offset=fo, file=file)
                    if on_bad is None:
                        raise err from None
                    on_bad(err, self.raw(rec))
                    continue
                yield entry
            if progress:
                progress(c1 - c0)
        if self.tail:
            err = ImportRecordError(
                f"truncated: the last {self.tail} bytes are not a whole {L}-byte record",
                record=self.count + 1, offset=self.count * L, file=file)
            if on_bad is None:
                raise err
            on_bad(err, bytes(data[self.count * L:]))


# Fields read for every record; gathered into one compact buffer per chunk, decoded at once.
_HOT = ("JOSEQN", "JOCODE", "JOENTT", "JOTSTP", "JOJOB", "JOUSER", "JONBR", "JOPGM", "JOPGMLIB",
        "JOUSPF", "JOSYNM", "JORCV", "JORCVLIB", "entry_type", "local_ip15", "local_port",
        "remote_ip15", "remote_port", "address_family", "local_ip", "remote_ip",
        "secure_version", "secure_properties")


def _gather_plan(layout: Layout, length: int, names) -> tuple[Callable, int, dict]:
    """A function bytes-of-N-records -> bytes holding only the byte spans of `names`
    (nearby fields merged), the compact stride, and each field's (start, end) in it."""
    fields = sorted((layout.fields[n] for n in names if n in layout.fields
                     and layout.fields[n].start < length), key=lambda x: x.start)
    spans: list[list[int]] = []
    for fld in fields:
        end = min(fld.end, length)
        if spans and fld.start - spans[-1][1] <= 48:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([fld.start, end])
    fmt, pos, where, cpos = ">", 0, {}, 0
    for a, z in spans:
        fmt += (f"{a - pos}x" if a > pos else "") + f"{z - a}s"
        for fld in fields:
            if a <= fld.start < z:
                where[fld.name] = (cpos + fld.start - a, cpos + min(fld.end, z) - a)
        cpos += z - a
        pos = z
    fmt += f"{length - pos}x" if length > pos else ""
    iter_unpack = struct.Struct(fmt).iter_unpack
    join = b"".join
    from_iterable = chain.from_iterable

    def gather(buf) -> bytes:
        return join(from_iterable(iter_unpack(buf)))

    return gather, cpos, where
