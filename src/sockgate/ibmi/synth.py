"""Synthetic IBM i SK entries, written in every input format from the layouts in layout.py.

Used by the tests (round trips, fuzzing) and by bench/ibmi_import.py. Real SK samples are
not public, so these follow the documented layouts; where a layout is [I]
the generator and the parser share the same table, which is the point: fix layout.py and both
follow.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from dataclasses import asdict, dataclass

from .layout import TYPE4, TYPE5, Layout


@dataclass
class SkRecord:
    """The values of one SK entry that sockgate maps."""

    entry_type: str = "C"
    seq: int = 1
    ts: str = "2026-11-24-10.15.30.123456"      # SAA, IBM i local time
    system: str = "PROD400"
    job_name: str = "QZDASOINIT"
    job_user: str = "QUSER"
    job_number: str = "123456"
    program: str = "QZDASOINIT"
    program_library: str = "QSYS"
    current_user: str = "ALICE"
    receiver: str = "QAUD0042"
    receiver_library: str = "QSYS"
    family: str = "*IPV4"                       # "*IPV4" | "*IPV6" | ""
    local_ip: str = "10.1.1.10"
    local_port: int | None = 8471
    remote_ip: str = "10.2.3.4"
    remote_port: int | None = 50123
    socket_descriptor: int = 17
    filter_description: str = ""
    filter_data: str = ""
    mac_address: str = ""
    host_name: str = ""
    secure_version: str = ""
    secure_properties: str = ""
    legacy_ip: bool = False   # only the 15-character IP fields are filled (older releases)


def sample(i: int, *, ipv6: bool | None = None, system: str = "PROD400",
           types: str = "ACDFIOPRSUX") -> SkRecord:
    """A deterministic, varied record number i (entry types in turn, IPv4/IPv6 alternating)."""
    t = types[i % len(types)]
    v6 = (i // len(types)) % 2 == 1 if ipv6 is None else ipv6
    sec, frac = divmod(i * 7919, 1_000_000)
    minute, sec = divmod(30 + sec, 60)
    r = SkRecord(
        entry_type=t, seq=1_000_000 + i, system=system,
        ts=f"2026-11-24-10.{15 + minute % 40:02d}.{sec:02d}.{frac:06d}",
        job_number=f"{(100000 + i) % 1000000:06d}", current_user=("ALICE", "BOB", "QTCP")[i % 3],
        socket_descriptor=(i % 500) - 1,
    )
    if v6:
        r.family, r.local_ip, r.remote_ip = "*IPV6", "fd00:20::10", f"2001:db8::{i % 65536:x}"
    else:
        r.local_ip, r.remote_ip = "10.1.1.10", f"10.2.{i // 256 % 256}.{i % 256}"
    r.remote_port = 1024 + i % 60000
    r.local_port = (8471, 23, 992, 25, 67)[i % 5]
    if t in "SX":
        r.secure_version = "TLSV1.2" if i % 2 else "TLSV1.3"
        r.secure_properties = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 ECDSA_SHA512 SECP521R1"
    elif t in "FR":
        r.filter_description = "SPAMFLT"
        r.filter_data = f"From: spam{i}@example.com"
    elif t in "DU":
        r.mac_address = f"00:11:22:33:44:{i % 256:02x}"
        r.host_name = f"pc{i}.example.com"
        r.remote_port = None
    if t == "P":
        r.local_port, r.remote_port = 9999, 40000 + i % 1000
    return r


# ---------------------------------------------------------------- binary outfile records

def field_values(r: SkRecord, layout: Layout) -> dict:
    """Record values keyed by layout field name."""
    v = {
        "JOENTL": layout.full_length - layout.esd_offset + 1, "JOSEQN": r.seq, "JOCODE": "T",
        "JOENTT": "SK", "JOTSTP": r.ts, "JOJOB": r.job_name, "JOUSER": r.job_user,
        "JONBR": r.job_number, "JOPGM": r.program, "JOPGMLIB": r.program_library,
        "JOUSPF": r.current_user, "JOSYNM": r.system, "JORCV": r.receiver,
        "JORCVLIB": r.receiver_library,
        "entry_type": r.entry_type, "address_family": r.family,
        "local_port": "" if r.local_port is None else str(r.local_port),
        "remote_port": "" if r.remote_port is None else str(r.remote_port),
        "socket_descriptor": r.socket_descriptor,
        "filter_description": r.filter_description,
        "filter_data_length": len(r.filter_data), "filter_data": r.filter_data,
        "mac_address": r.mac_address, "host_name": r.host_name,
        "secure_version": r.secure_version, "secure_properties": r.secure_properties,
    }
    if layout.name == "type5":
        v["JOSEQN"] = f"{r.seq:020d}"
    else:
        del v["JOPGMLIB"]
    if r.legacy_ip or ":" not in r.local_ip:
        v["local_ip15"] = r.local_ip if len(r.local_ip) <= 15 else ""
    if r.legacy_ip or ":" not in r.remote_ip:
        v["remote_ip15"] = r.remote_ip if len(r.remote_ip) <= 15 else ""
    if not r.legacy_ip:
        v["local_ip"], v["remote_ip"] = r.local_ip, r.remote_ip
    return v


def encode_fields(values: dict, layout: Layout, codec: str = "cp037",
                  length: int | None = None) -> bytes:
    """One fixed-length record: char blank-padded, zoned as digits, binary big-endian."""
    length = length or layout.full_length
    rec = bytearray(" ".encode(codec) * length)
    for f in layout.heading + layout.sk:
        if f.start >= length:
            continue
        val = values.get(f.name)
        if f.kind in ("bin2", "bin4"):
            raw = struct.pack(">h" if f.kind == "bin2" else ">i", int(val or 0))
        elif f.kind == "hex":
            raw = bytes(f.length)
        elif f.kind == "zoned":
            raw = str(int(val or 0)).zfill(f.length).encode(codec)
        else:
            raw = str(val or "").ljust(f.length).encode(codec)
        if len(raw) != f.length:
            raise ValueError(f"{f.name}: {val!r} does not fit in {f.length} bytes")
        rec[f.start:f.end] = raw[:max(0, min(f.length, length - f.start))]
    return bytes(rec)


def record(r: SkRecord, layout: Layout = TYPE5, codec: str = "cp037",
           length: int | None = None) -> bytes:
    return encode_fields(field_values(r, layout), layout, codec, length)


def outfile(records: list[SkRecord], layout: Layout = TYPE5, codec: str = "cp037",
            length: int | None = None) -> bytes:
    return b"".join(record(r, layout, codec, length) for r in records)


# ---------------------------------------------------------------- CPYTOIMPF (csv)

def cpytoimpf(records: list[SkRecord], layout: Layout = TYPE5, header: bool = True) -> str:
    """A CPYTOIMPF copy: one column per outfile field, char fields quoted and trimmed,
    numbers bare (leading zeros dropped), timestamp as text."""
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    fields = layout.heading + layout.sk
    if header:
        out.write(",".join(f.name.upper() for f in fields) + "\r\n")
    for r in records:
        v = field_values(r, layout)
        row = []
        for f in fields:
            val = v.get(f.name)
            if f.kind in ("zoned", "bin2", "bin4"):
                row.append(int(val or 0))
            elif f.kind == "hex":
                row.append("0000000000000000")
            elif f.name == "JOSEQN":
                row.append(int(val))
            else:
                row.append(str(val or "").rstrip())
        w.writerow(row)
    return out.getvalue()


# ---------------------------------------------------------------- SYSTOOLS.AUDIT_JOURNAL_SK

def audit_sk_row(r: SkRecord) -> dict:
    """One row of SELECT * FROM TABLE(SYSTOOLS.AUDIT_JOURNAL_SK()) (common + SK columns)."""
    ts = r.ts
    iso = f"{ts[:10]} {ts[11:13]}:{ts[14:16]}:{ts[17:19]}.{ts[20:]}"
    blank = lambda s: s or None  # noqa: E731 - columns are nullable
    return {
        "ENTRY_TIMESTAMP": iso, "SEQUENCE_NUMBER": r.seq, "USER_NAME": r.current_user,
        "QUALIFIED_JOB_NAME": f"{r.job_number}/{r.job_user}/{r.job_name}",
        "JOB_NAME": r.job_name, "JOB_USER": r.job_user, "JOB_NUMBER": r.job_number,
        "THREAD": 1, "PROGRAM_LIBRARY": blank(r.program_library), "PROGRAM_NAME": r.program,
        "PROGRAM_LIBRARY_ASP_DEVICE": "*SYSBAS", "PROGRAM_LIBRARY_ASP_NUMBER": 1,
        "REMOTE_PORT": r.remote_port, "REMOTE_ADDRESS": blank(r.remote_ip),
        "SYSTEM_NAME": r.system, "SYSTEM_SEQUENCE_NUMBER": r.seq + 7,
        "RECEIVER_LIBRARY": r.receiver_library, "RECEIVER_NAME": r.receiver,
        "RECEIVER_ASP_DEVICE": "*SYSBAS", "RECEIVER_ASP_NUMBER": 1, "ARM_NUMBER": 1,
        "ENTRY_TYPE": r.entry_type, "ENTRY_TYPE_DETAIL": None,
        "ADDRESS_SPACE_TYPE": blank(r.family), "LOCAL_IP_ADDRESS": blank(r.local_ip),
        "LOCAL_PORT": r.local_port, "SOCKET_DESCRIPTOR": r.socket_descriptor,
        "MAC_ADDRESS": blank(r.mac_address), "HOST_NAME": blank(r.host_name),
        "DHCP_IP_ADDRESS": None, "SECURE_VERSION": blank(r.secure_version),
        "SECURE_PROPERTIES": blank(r.secure_properties), "SECURE_INFORMATION": None,
        "TLS_ERROR_CODE": None, "TLS_ERROR_DESCRIPTION": None,
        "FILTER_DESCRIPTION": blank(r.filter_description), "FILTER_DATA": blank(r.filter_data),
    }


def audit_sk_json(records: list[SkRecord]) -> str:
    return json.dumps([audit_sk_row(r) for r in records], indent=1)


def audit_sk_csv(records: list[SkRecord]) -> str:
    rows = [audit_sk_row(r) for r in records]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(audit_sk_row(SkRecord())), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def build(records: list[SkRecord], fmt: str, codec: str = "cp037") -> bytes:
    """Records in one input format, as the bytes of a file."""
    if fmt == "type5":
        return outfile(records, TYPE5, codec)
    if fmt == "type4":
        return outfile(records, TYPE4, codec)
    if fmt == "csv":
        return cpytoimpf(records, TYPE5).encode()
    if fmt == "csv4":
        return cpytoimpf(records, TYPE4).encode()
    if fmt == "audit-sk-json":
        return audit_sk_json(records).encode()
    if fmt == "audit-sk-csv":
        return audit_sk_csv(records).encode()
    raise ValueError(fmt)


def as_dict(r: SkRecord) -> dict:
    return asdict(r)
