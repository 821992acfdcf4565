"""`sockgate ibmi import` end to end: files, stdin, --skip-bad, re-import, --json, exit codes."""

from __future__ import annotations

import json

from sockgate.ibmi import layout

from .conftest import SAMPLES, build, journal_entries
from .test_errors import patch

L5 = layout.TYPE5.full_length


def test_import_file_then_reimport_adds_nothing(run, tmp_path, jdir):
    f = tmp_path / "sk.bin"
    f.write_bytes(build("type5"))
    code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--utc-offset", "UTC"])
    assert code == 0, err
    assert "Imported 22 new entries" in out and "PROD400" in out
    assert "A  Accept" in out and "X  Failed System SSL/TLS connection" in out
    assert "2026-11-24T10:15:30.000000Z" in out
    assert "read as UTC" in out
    assert len(journal_entries(jdir)) == 22
    code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--json",
                          "--utc-offset", "UTC"])
    s = json.loads(out)
    assert code == 0 and (s["records"], s["imported"], s["already_present"]) == (22, 0, 22)
    assert len(journal_entries(jdir)) == 22
    # every import (even one that adds nothing) leaves its SG import record
    assert [e.extra["imported"] for e in journal_entries(jdir, source=None)
            if e.type.value == "import"] == [22, 0]


def test_same_entries_in_another_format_are_already_present(run, tmp_path, jdir):
    for fmt in ("type5", "audit-sk-json", "csv"):
        f = tmp_path / fmt
        f.write_bytes(build(fmt))
        code, out, _ = run(["ibmi", "import", str(f), "--journal", jdir, "--json"])
        assert code == 0
    assert json.loads(out)["already_present"] == 22
    assert len(journal_entries(jdir)) == 22


def test_stdin(run, jdir):
    code, out, err = run(["ibmi", "import", "-", "--journal", jdir, "--json", "--utc-offset",
                          "+02:00"], stdin=build("audit-sk-csv"))
    assert code == 0, err
    s = json.loads(out)
    assert s["file"] == "<stdin>" and s["format"] == "audit-sk" and s["imported"] == 22
    assert s["time_zone"] == "UTC+02:00" and s["first"] == "2026-11-24T08:15:30.000000Z"


def test_bad_record_stops_import_exit_1(run, tmp_path, jdir):
    f = tmp_path / "bad.bin"
    f.write_bytes(patch(build("type5"), 7, "JONBR", "12X456"))
    code, out, err = run(["ibmi", "import", str(f), "--journal", jdir])
    assert code == 1 and out == ""
    assert f"{f}: record 7 (byte offset {6 * L5 + 74}): JONBR" in err
    assert "Traceback" not in err
    assert journal_entries(jdir, source=None) == []


def test_skip_bad_writes_bad_records_and_imports_the_rest(run, tmp_path, jdir):
    data = patch(patch(build("type5"), 7, "JONBR", "12X456"), 9, "entry_type", "Q")
    f, bad = tmp_path / "in.bin", tmp_path / "bad.bin"
    f.write_bytes(data)
    code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--skip-bad", str(bad),
                          "--json"])
    assert code == 0, err
    s = json.loads(out)
    assert (s["records"], s["imported"], s["bad"]) == (20, 20, 2)
    assert [b["record"] for b in s["bad_records"]] == [7, 9]
    assert bad.read_bytes() == data[6 * L5:7 * L5] + data[8 * L5:9 * L5]
    got = {e.extra["ibmi_seq"] for e in journal_entries(jdir)}
    assert got == {r.seq for i, r in enumerate(SAMPLES) if i not in (6, 8)}


def test_skip_bad_audit_sk_csv_keeps_header(run, tmp_path, jdir):
    data = build("audit-sk-csv").replace(b",QUSER,", b",QUSER,", 1)
    lines = data.split(b"\n")
    lines[3] = lines[3].replace(b"2026-11-24", b"2026-99-24", 1)
    f, bad = tmp_path / "in.csv", tmp_path / "bad.csv"
    f.write_bytes(b"\n".join(lines))
    code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--skip-bad", str(bad)])
    assert code == 0 and "bad 1" in out and "skipped record 3" in err
    assert bad.read_bytes() == lines[0] + b"\n" + lines[3] + b"\n"


def test_dry_run_writes_nothing(run, tmp_path, jdir):
    f = tmp_path / "sk.csv"
    f.write_bytes(build("csv"))
    code, out, _ = run(["ibmi", "import", str(f), "--journal", jdir, "--dry-run"])
    assert code == 0 and "Dry run: 22 entries parsed" in out
    import os
    assert not os.path.exists(jdir)


def test_usage_errors_exit_2(run, tmp_path, jdir):
    f = tmp_path / "sk.bin"
    f.write_bytes(build("type5"))
    cases = [
        ["ibmi", "import", str(tmp_path / "missing"), "--journal", jdir],
        ["ibmi", "import", str(f), "--journal", jdir, "--format", "xml"],
        ["ibmi", "import", str(f), "--journal", jdir, "--ccsid", "99999"],
        ["ibmi", "import", str(f), "--journal", jdir, "--utc-offset", "Mars/Olympus"],
        ["ibmi", "import", str(f), "--journal", jdir, "--record-length", "10"],
    ]
    for args in cases:
        code, out, err = run(args)
        assert code == 2, (args, err)
        assert "Traceback" not in err


def test_unknown_format_is_bad_data(run, tmp_path, jdir):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello, world\n")
    code, _, err = run(["ibmi", "import", str(f), "--journal", jdir])
    assert code == 1 and "--format" in err


def test_bad_record_after_chunks_were_written_rolls_back(run, tmp_path, jdir, monkeypatch):
    # Entries go to the journal in chunks while the file is still being read; a bad record
    # after some chunks were written still leaves nothing (one transaction).
    from sockgate.ibmi import importer
    monkeypatch.setattr(importer, "CHUNK", 5)
    data = patch(build("type5"), 12, "JONBR", "12X456")
    f = tmp_path / "in.bin"
    f.write_bytes(data)
    code, _, err = run(["ibmi", "import", str(f), "--journal", jdir])
    assert code == 1 and "record 12" in err
    assert journal_entries(jdir, source=None) == []  # two chunks were written, then rolled back
    code, out, _ = run(["ibmi", "import", str(f), "--journal", jdir, "--json",
                        "--skip-bad", str(tmp_path / "bad")])
    s = json.loads(out)
    assert code == 0 and (s["records"], s["imported"], s["bad"]) == (21, 21, 1)
    assert [e.extra["ibmi_seq"] for e in journal_entries(jdir)] == \
        [r.seq for i, r in enumerate(SAMPLES) if i != 11]
