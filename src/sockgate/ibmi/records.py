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

        def sl(name):
            fld = f[name]
            return fld.start, fld.end

        seq0, seq1 = sl("JOSEQN")
        code0 = f["JOCODE"].start
        ts0, ts1 = sl("JOTSTP")
        job0, job1 = sl("JOJOB")
        usr0, usr1 = sl("JOUSER")
        nbr0, nbr1 = sl("JONBR")
        pgm0, pgm1 = sl("JOPGM")
        plib = f.get("JOPGMLIB")
        plib0, plib1 = (plib.start, plib.end) if plib else (0, 0)
        uspf0, uspf1 = sl("JOUSPF")
        sys0, sys1 = sl("JOSYNM")
        rcv0, rcv1 = sl("JORCV")
        rlib0, rlib1 = sl("JORCVLIB")
        et0 = f["entry_type"].start
        l150, l151 = sl("local_ip15")
        lp0, lp1 = sl("local_port")
        r150, r151 = sl("remote_ip15")
        rp0, rp1 = sl("remote_port")
        sd0 = f["socket_descriptor"].start
        fd0, fd1 = sl("filter_description")
        fl0 = f["filter_data_length"].start
        fdat0, fdat1 = sl("filter_data")
        af0, af1 = sl("address_family")
        la0, la1 = sl("local_ip")
        ra0, ra1 = sl("remote_ip")
        mac0, mac1 = sl("mac_address")
        hn0, hn1 = sl("host_name")
        sv = f.get("secure_version")
        sp = f.get("secure_properties")
        sv0, sv1 = (sv.start, sv.end) if sv and sv.end <= L else (0, 0)
        sp0, sp1 = (sp.start, min(sp.end, L)) if sp and sp.start < L else (0, 0)
        is_t5 = lay.name == "type5"

        for c0 in range(0, self.count, CHUNK):
            c1 = min(c0 + CHUNK, self.count)
            text = str(data[c0 * L:c1 * L], codec)
            for i in range(c1 - c0):
                b = i * L
                rec = c0 + i
                off = rec * L
                field = "record"
                try:
                    field = "JOCODE"
                    if text[b + code0:b + code0 + 3] != "TSK":
                        raise m.FieldError(field, f"journal code and entry type are "
                                           f"{text[b + code0:b + code0 + 3]!r}, not 'TSK' (wrong "
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
                    nbr = job_number(text[b + nbr0:b + nbr1])
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
                        more["filter_description"] = text[b + fd0:b + fd1].rstrip()
                        n = unpack_h(data, off + fl0)[0]
                        if not 0 <= n <= fdat1 - fdat0:
                            raise m.FieldError(field, f"{n} is not a length (0-{fdat1 - fdat0})")
                        more["filter_data"] = text[b + fdat0:b + fdat0 + n]
                    elif code in dhcp_t:
                        v = text[b + mac0:b + mac1].rstrip()
                        if v:
                            more["mac_address"] = v
                        v = text[b + hn0:b + hn1].rstrip()
                        if v:
                            more["host_name"] = v
                    rlib = text[b + rlib0:b + rlib1].rstrip()
                    rcv = text[b + rcv0:b + rcv1].rstrip()
                    field = "JOSYNM"
                    entry = mk(
                        et, ts_ns, ts, text[b + sys0:b + sys1].rstrip(), seq,
                        text[b + uspf0:b + uspf1].rstrip() or text[b + usr0:b + usr1].rstrip(),
                        text[b + job0:b + job1].rstrip(), text[b + usr0:b + usr1].rstrip(), nbr,
                        text[b + plib0:b + plib1].rstrip() if is_t5 else "",
                        text[b + pgm0:b + pgm1].rstrip(),
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
