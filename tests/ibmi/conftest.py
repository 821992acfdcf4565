"""Helpers for the ibmi tests: expected journal values of a synthetic SK record, a journal
in a temp dir, and a CLI runner that returns (exit code, stdout, stderr)."""

from __future__ import annotations

import io
import sys
from datetime import datetime, timezone

import pytest

from sockgate.ibmi import synth
from sockgate.ibmi.mapping import OUTCOMES
from sockgate.journal import Journal

# Every entry type, IPv4 and IPv6, in every format.
SAMPLES = [synth.sample(i) for i in range(22)]
FORMATS = ["type5", "type5-ascii", "type4", "csv", "csv4", "audit-sk-json", "audit-sk-csv"]


def build(fmt: str, recs=SAMPLES) -> bytes:
    if fmt == "type5-ascii":
        return synth.build(recs, "type5", codec="latin-1")
    return synth.build(recs, fmt)


def expected(r: synth.SkRecord, fmt: str, offset_s: int = 0) -> dict:
    """The journal values that SK record r must come back as (offset_s: the --utc-offset)."""
    t = r.ts
    local = datetime(int(t[0:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]),
                     int(t[17:19]), tzinfo=timezone.utc)
    ts_ns = (int(local.timestamp()) - offset_s) * 1_000_000_000 + int(t[20:26]) * 1000
    type4 = fmt in ("type4", "csv4")
    audit = fmt.startswith("audit-sk")
    extra = {
        "ibmi_seq": r.seq,
        "ibmi_timestamp": t if not audit else f"{t[:10]} {t[11:13]}:{t[14:16]}:{t[17:19]}.{t[20:]}",
        "ibmi_receiver": f"{r.receiver_library}/{r.receiver}",
        "job": f"{r.job_number}/{r.job_user}/{r.job_name}",
        "socket_descriptor": r.socket_descriptor,
    }
    t_ = r.entry_type
    if t_ in "SX" and not type4:
        extra["secure_version"] = r.secure_version
        extra["secure_properties"] = r.secure_properties
    if t_ in "FR":
        extra["filter_description"] = r.filter_description
        extra["filter_data"] = r.filter_data
    if t_ in "DU":
        extra["mac_address"] = r.mac_address
        extra["host_name"] = r.host_name
    return {
        "code": "SK", "type": r.entry_type, "source": "ibmi", "ts_ns": ts_ns,
        "host": r.system, "user": r.current_user, "outcome": OUTCOMES[t_].value,
        "program": r.program if type4 else f"{r.program_library}/{r.program}",
        "family": "ipv6" if ":" in r.remote_ip else "ipv4",
        "local_addr": r.local_ip, "local_port": r.local_port,
        "remote_addr": r.remote_ip, "remote_port": r.remote_port,
        "ident": f"{r.system}:{r.seq}", "extra": extra,
    }


def actual(e) -> dict:
    d = e.to_dict()
    return {k: d[k] for k in ("code", "type", "source", "ts_ns", "host", "user", "outcome",
                              "program", "family", "local_addr", "local_port", "remote_addr",
                              "remote_port", "ident", "extra")}


def journal_entries(path, source="ibmi"):
    j = Journal.open(path, readonly=True)
    try:
        return [e for e in j.entries() if source is None or e.source.value == source]
    finally:
        j.close()


@pytest.fixture
def jdir(tmp_path):
    return str(tmp_path / "journal")


@pytest.fixture
def run(monkeypatch, capsys):
    """run(args, stdin=b"") -> (exit code, stdout, stderr), through sockgate.cli.main."""
    from sockgate.cli import main

    def runner(args, stdin: bytes = b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        with pytest.raises(SystemExit) as ex:
            main(list(args))
        out, err = capsys.readouterr()
        return ex.value.code, out, err

    return runner
