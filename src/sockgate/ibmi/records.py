"""Fixed-length DSPJRN outfile records (*TYPE5 QASYSKJ5, *TYPE4 QASYSKJ4), transferred in
binary: text fields in EBCDIC (or ASCII), zoned digits as text, Binary(n) big-endian.

Speed (see docs/ibmi.md): per chunk of records, the byte spans of the fields read for every
record are gathered (struct.iter_unpack + join) and decoded in one call; per record, one
itemgetter of slices yields them all. Offsets all come from layout.py.
"""

from __future__ import annotations

import codecs
import gc
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import fields as dc_fields
from itertools import chain, islice
from operator import itemgetter

from sockgate.errors import ImportRecordError, UsageError
from sockgate.journal.entry import Code, Entry, Source

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


def decoder(codec: str, fields: bool = False) -> Callable[[bytes], str]:
    """bytes -> str for a single-byte codec. A code page whose 256 characters all lie in
    Latin-1 (37, 500, ...) is one bytes.translate plus a Latin-1 decode, both in C, which
    beats the charmap codec for the short fields read per record.

    fields=True: for blank-padded fields. Control characters that str.strip() would take for
    white space (tab, line ends, NBSP, ...) become SUB (X'1A', what IBM i puts for a
    character it cannot convert), so stripping removes blanks only and such bytes fail the
    field checks instead of vanishing."""
    chars = bytes(range(256)).decode(codec)
    if fields:
        chars = "".join("\x1a" if c.isspace() and c != " " else c for c in chars)
    if max(map(ord, chars)) < 256:
        table = chars.encode("latin-1")
        return lambda b: b.translate(table).decode("latin-1")
    table_s = dict(enumerate(chars))  # e.g. CCSID 1140 has the euro sign
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
        """The fast path: every hot field of a record in one C call (itemgetter of slices
        over the chunk's compact text, rstripped by map), plain checks, one Entry. A record
        it cannot take goes to the careful path, which names the bad field or accepts it."""
        L = self.record_length
        data = self.data
        decode = decoder(self.codec, fields=True)
        plain = decoder(self.codec)  # free text (filter data) keeps its control characters
        buf = self.buf
        plan = self._plan = _Plan(self.layout, L)
        K = plan.stride
        hot = plan.hot
        careful = self._careful
        second = self.clock.second
        seconds = self.clock._seconds
        types = m.TYPES
        outcomes = m.OUTCOMES
        families = _FAMILIES
        seen_addr: set[str] = set()
        ports = _PORTS
        secure_t, filter_t, dhcp_t = m.SECURE_TYPES, m.FILTER_TYPES, m.DHCP_TYPES
        unpack_h = struct.Struct(">h").unpack_from
        gather_sd = _gather_plan(self.layout, L, ("socket_descriptor",))[0]
        swap = sys.byteorder == "little"
        f = self.layout.fields
        fl0 = f["filter_data_length"].start
        fd0, fd1 = f["filter_description"].start, f["filter_description"].end
        fdat0, fdmax = f["filter_data"].start, f["filter_data"].length
        mac0, mac1 = f["mac_address"].start, f["mac_address"].end
        hn0, hn1 = f["host_name"].start, f["host_name"].end
        l150, l151 = f["local_ip15"].start, f["local_ip15"].end
        r150, r151 = f["remote_ip15"].start, f["remote_ip15"].end

        def clipped(name: str) -> tuple[int, int]:  # fields a shorter record lacks: (0, 0)
            fld = f.get(name)
            return (fld.start, min(fld.end, L)) if fld and fld.start < L else (0, 0)

        sv0, sv1 = clipped("secure_version")
        sp0, sp1 = clipped("secure_properties")
        rstrip = str.rstrip
        SOCKET, IBMI = Code.SOCKET, Source.IBMI
        # Jobs, programs and receivers repeat: each distinct heading text is parsed once.
        jobs: dict[str, tuple[str, str]] = {}
        programs: dict[str, str] = {}
        receivers: dict[str, str] = {}
        j_job, j_usr, j_nbr = plan.rel("JOJOB", "JOJOB"), plan.rel("JOJOB", "JOUSER"), \
            plan.rel("JOJOB", "JONBR")
        p_pgm = plan.rel("JOPGM", "JOPGM")
        p_lib = plan.rel("JOPGM", "JOPGMLIB") if "JOPGMLIB" in plan.at else slice(0, 0)
        r_rcv, r_lib = plan.rel("JORCV", "JORCV"), plan.rel("JORCV", "JORCVLIB")

        def new_job(key: str) -> tuple[str, str]:
            nbr, name = key[j_nbr], key[j_job].rstrip()
            if not nbr.isdecimal() or len(nbr) != 6 or not name:
                raise ValueError  # the careful path says what is wrong (or takes it)
            usr = key[j_usr].rstrip()
            if len(jobs) > 100_000:
                jobs.clear()
            v = jobs[key] = (f"{nbr}/{usr}/{name}", usr)
            return v

        def new_program(key: str) -> str:
            pgm, lib = key[p_pgm].rstrip(), key[p_lib].rstrip()
            if len(programs) > 100_000:
                programs.clear()
            v = programs[key] = (f"{lib}/{pgm}" if lib else pgm) if pgm else ""
            return v

        def new_receiver(key: str) -> str:
            rcv, lib = key[r_rcv].rstrip(), key[r_lib].rstrip()
            if len(receivers) > 100_000:
                receivers.clear()
            v = receivers[key] = (f"{lib}/{rcv}" if lib else rcv) if rcv else ""
            return v

        make = _entry
        # the entries of one file are kept until the journal takes them all: no cycles among
        # them, so the cyclic GC would only rescan them again and again
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for c0 in range(0, self.count, CHUNK):
                c1 = min(c0 + CHUNK, self.count)
                chunk = data[c0 * L:c1 * L]
                text = decode(plan.gather(chunk))
                sds = array(_I32, gather_sd(chunk))  # socket descriptors, Binary(5)
                if swap:
                    sds.byteswap()
                off = c0 * L - L
                b = -K
                for rec in range(c0, c1):
                    off += L
                    b += K
                    try:
                        (tsk, seq, ts, jobkey, pgmkey, uspf, system, rcvkey, et,
                         lp, rp, af, la, ra) = map(rstrip, hot(text[b:b + K]))
                        t = types[et]
                        if not la:
                            la = decode(buf[off + l150:off + l151]).rstrip() or None
                        if not ra:
                            ra = decode(buf[off + r150:off + r151]).rstrip() or None
                        if (tsk != "TSK" or not seq.isdecimal() or ts[19:20] != "."
                                or not ts[20:].isdecimal() or len(ts) != 26 or not system
                                or (la is not None and la not in seen_addr)
                                or (ra is not None and ra not in seen_addr)):
                            raise ValueError
                        job, usr = jobs.get(jobkey) or new_job(jobkey)
                        pgm = programs.get(pgmkey) or new_program(pgmkey)
                        base = seconds.get(ts[:19])
                        if base is None:
                            base = second(ts[:19])
                        lp = ports[lp]  # KeyError: not a plain port number, be careful
                        rp = ports[rp]
                        fam = families[af] if af else ("ipv6" if ":" in (ra or la or "") else
                                                       "ipv4" if (ra or la) else None)
                        seq = int(seq)
                        extra = {
                            "socket_descriptor": sds[rec - c0],
                            "ibmi_seq": seq, "ibmi_timestamp": ts, "job": job,
                        }
                        if rcvkey and (rcv := receivers.get(rcvkey) or new_receiver(rcvkey)):
                            extra["ibmi_receiver"] = rcv
                        if et in secure_t:
                            if sv1 and (v := decode(buf[off + sv0:off + sv1]).rstrip()):
                                extra["secure_version"] = v
                            if sp1 and (v := decode(buf[off + sp0:off + sp1]).rstrip()):
                                extra["secure_properties"] = v
                        elif et in filter_t:
                            n = unpack_h(data, off + fl0)[0]
                            if not 0 <= n <= fdmax:
                                raise ValueError
                            extra["filter_description"] = decode(buf[off + fd0:off + fd1]).rstrip()
                            if n:
                                extra["filter_data"] = plain(buf[off + fdat0:off + fdat0 + n])
                        elif et in dhcp_t:
                            if v := decode(buf[off + mac0:off + mac1]).rstrip():
                                extra["mac_address"] = v
                            if v := decode(buf[off + hn0:off + hn1]).rstrip():
                                extra["host_name"] = v
                        entry = make(
                            SOCKET, t, base + int(ts[20:]) * 1000, IBMI, system, outcomes[et],
                            None, None, uspf or usr or None, None, None, pgm or None,
                            fam, la, lp, ra, rp, extra, f"{system}:{seq}")
                    except (ValueError, KeyError):
                        try:
                            entry = careful(text, b, off)
                        except ImportRecordError as e:
                            err = ImportRecordError(e.reason, record=rec + 1, offset=e.offset,
                                                    file=self.file)
                            if on_bad is None:
                                raise err from None
                            on_bad(err, self.raw(rec))
                            continue
                        if len(seen_addr) > 100_000:
                            seen_addr.clear()
                        if entry.local_addr:
                            seen_addr.add(entry.local_addr)
                        if entry.remote_addr:
                            seen_addr.add(entry.remote_addr)
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

    def _careful(self, text: str, b: int, off: int) -> Entry:
        """One record, field by field: the Entry, or ImportRecordError naming the bad field
        and its byte offset (record number filled in by the caller)."""
        p = self._plan
        f = self.layout.fields
        data, codec, L = self.data, self.codec, self.record_length
        at = p.at

        def val(name: str) -> str:
            if name not in at:
                return raw(name)
            a, z = at[name]
            return text[b + a:b + z]

        decode = decoder(codec, fields=True)

        def raw(name: str) -> str:
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
            more = {"socket_descriptor": struct.unpack_from(">i", data, off + p.sd0)[0]}
            if code in m.SECURE_TYPES:
                for k in ("secure_version", "secure_properties"):
                    if v := val(k).rstrip():
                        more[k] = v
            elif code in m.FILTER_TYPES:
                field = "filter_data_length"
                more["filter_description"] = raw("filter_description").rstrip()
                n = struct.unpack_from(">h", data, off + f[field].start)[0]
                fd = f["filter_data"]
                if not 0 <= n <= fd.length:
                    raise m.FieldError(field, f"{n} is not a length (0-{fd.length})")
                if n:
                    more["filter_data"] = str(data[off + fd.start:off + fd.start + n], codec)
            elif code in m.DHCP_TYPES:
                for k in ("mac_address", "host_name"):
                    if v := raw(k).rstrip():
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


_FAMILIES = {"*IPV4": "ipv4", "*IPV6": "ipv6"}
_I32 = next(c for c in "ilh" if array(c).itemsize == 4)  # array type of a 4-byte int
# Char(5) port text -> number, one dict lookup that also validates ("" is no port).
_PORTS: dict[str, int | None] = {str(p): p for p in range(65536)}
_PORTS[""] = None


class _Plan:
    """Where the hot fields sit in the compact text of one record."""

    def __init__(self, layout: Layout, length: int):
        self.gather, self.stride, self.at = _gather_plan(layout, length, _HOT)
        at = self.at
        # (first field, last field): one text from the start of the first to the end of the
        # last; JOJOB..JONBR, JOPGM..JOPGMLIB and JORCV..JORCVLIB are adjacent in both layouts.
        # A field the record lacks (TYPE4 program library, pre-7.3 secure fields) reads "".
        hot = (("JOCODE", "JOENTT"), ("JOSEQN", "JOSEQN"), ("JOTSTP", "JOTSTP"),
               ("JOJOB", "JONBR"), ("JOPGM", "JOPGMLIB" if "JOPGMLIB" in at else "JOPGM"),
               ("JOUSPF", "JOUSPF"), ("JOSYNM", "JOSYNM"), ("JORCV", "JORCVLIB"),
               ("entry_type", "entry_type"), ("local_port", "local_port"),
               ("remote_port", "remote_port"), ("address_family", "address_family"),
               ("local_ip", "local_ip"), ("remote_ip", "remote_ip"))
        spans = []
        for first, last in hot:
            if first not in at:
                spans.append(slice(0, 0))
                continue
            a, z = at[first][0], at[last][1]
            if first != last and layout[last].end - layout[first].start != z - a:
                raise AssertionError(f"{first}..{last} are not adjacent in {layout.name}")
            spans.append(slice(a, z))
        self.hot = itemgetter(*spans)
        self.sd0 = layout["socket_descriptor"].start

    def rel(self, first: str, name: str) -> slice:
        """Slice of field `name` inside the combined text that starts at field `first`."""
        a = self.at[name][0] - self.at[first][0]
        return slice(a, a + self.at[name][1] - self.at[name][0])


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


# Fields read for every record; gathered into one compact buffer per chunk, decoded at once.
_HOT = ("JOSEQN", "JOCODE", "JOENTT", "JOTSTP", "JOJOB", "JOUSER", "JONBR", "JOPGM", "JOPGMLIB",
        "JOUSPF", "JOSYNM", "JORCV", "JORCVLIB", "entry_type", "local_port", "remote_port",
        "address_family", "local_ip", "remote_ip")


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
