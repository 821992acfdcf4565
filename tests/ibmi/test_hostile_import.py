"""Issue 13, findings 5, 6 and 7 (IBM i side), written as the attacks: a crafted file that
pre-empts the real record with the same SYSTEM:SEQ, oversized fields, impossible
addresses, deeply nested or 5,000-digit JSON, and --skip-bad files under umask 000.
Each gets a located error (record number), never a traceback, and the journal keeps
all or nothing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import ImportConflictError, ImportRecordError
from sockgate.ibmi import synth
from sockgate.ibmi.importer import import_file, parse_all
from sockgate.ibmi.mapping import LocalTime

from .conftest import SAMPLES, build, journal_entries
from .test_errors import patch

UTC = LocalTime("UTC")
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _json(rows) -> bytes:
    return json.dumps(rows).encode()


def rows(recs=SAMPLES[:5]):
    return [synth.audit_sk_row(r) for r in recs]


# ---------------------------------------------------------------- finding 7: conflicts

def test_forged_record_imported_first_is_a_conflict_not_a_silent_skip(run, tmp_path, jdir):
    real = SAMPLES[:6]
    forged = [replace(real[2], current_user="NOBODY", remote_ip="10.9.9.9")]
    f_forged, f_real = tmp_path / "forged.bin", tmp_path / "real.bin"
    f_forged.write_bytes(build("type5", forged))
    f_real.write_bytes(build("type5", real))
    code, _, err = run(["ibmi", "import", str(f_forged), "--journal", jdir, "--utc-offset", "UTC"])
    assert code == 0, err
    code, out, err = run(["ibmi", "import", str(f_real), "--journal", jdir, "--utc-offset", "UTC"])
    # before: exit 0, "already present 1", the forged entry silently kept as the truth
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert f"{f_real}: record 3" in err and f"{real[2].system}:{real[2].seq}" in err
    assert "user" in err and "remote_addr" in err and "conflict" in err
    # all or nothing: none of the real file's other records went in
    assert [e.user for e in journal_entries(jdir)] == ["NOBODY"]


def test_conflicts_are_listed_in_json(run, tmp_path, jdir):
    first = [replace(r, current_user="MALLORY") for r in SAMPLES[:3]]
    (tmp_path / "a").write_bytes(build("audit-sk-json", first))
    (tmp_path / "b").write_bytes(build("audit-sk-json", SAMPLES[:5]))
    assert run(["ibmi", "import", str(tmp_path / "a"), "--journal", jdir])[0] == 0
    code, out, err = run(["ibmi", "import", str(tmp_path / "b"), "--journal", jdir, "--json"])
    assert code == 1
    d = json.loads(out)
    assert d["ok"] is False and [c["record"] for c in d["conflicts"]] == [1, 2, 3]
    assert all(c["fields"] == ["user"] for c in d["conflicts"])
    assert all("user" in e["message"] and "record" in e["message"] for e in d["errors"])


def test_identical_reimport_and_other_formats_still_skip_silently(run, tmp_path, jdir):
    for fmt in ("type5", "csv", "audit-sk-json", "audit-sk-csv", "type5"):
        f = tmp_path / fmt
        f.write_bytes(build(fmt))
        code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--json"])
        assert code == 0, err
    assert json.loads(out)["already_present"] == 22
    assert len(journal_entries(jdir)) == 22


def test_type4_after_type5_is_not_a_conflict(run, tmp_path, jdir):
    # *TYPE4 carries no program library and no TLS fields: missing is not different
    for fmt in ("type5", "type4"):
        f = tmp_path / fmt
        f.write_bytes(build(fmt))
        code, out, err = run(["ibmi", "import", str(f), "--journal", jdir, "--json"])
        assert code == 0, err


def test_conflict_within_one_file(tmp_path, jdir):
    recs = [SAMPLES[0], SAMPLES[1], replace(SAMPLES[0], remote_port=1)]
    f = tmp_path / "in.bin"
    f.write_bytes(build("type5", recs))
    with pytest.raises(ImportConflictError) as ex:
        import_file(str(f), jdir, utc_offset="UTC")
    assert ex.value.errors[0].record == 3 and "record 1 of this file" in str(ex.value)
    assert journal_entries(jdir, source=None) == []
    # the same record twice, unchanged, is just "already present"
    f.write_bytes(build("type5", [SAMPLES[0], SAMPLES[1], SAMPLES[0]]))
    s = import_file(str(f), jdir, utc_offset="UTC")
    assert (s.records, s.imported, s.already_present) == (3, 2, 1)


def test_conflict_after_rotate_is_found_in_older_receivers(tmp_path, jdir):
    from sockgate.journal import Journal

    f = tmp_path / "a.bin"
    f.write_bytes(build("type5", SAMPLES[:2]))
    import_file(str(f), jdir, utc_offset="UTC")
    with Journal.open(jdir) as j:
        j.rotate()
    f.write_bytes(build("type5", [replace(SAMPLES[1], job_name="EVIL")]))
    with pytest.raises(ImportConflictError) as ex:
        import_file(str(f), jdir, utc_offset="UTC")
    assert "job" in str(ex.value)


# ---------------------------------------------------------------- finding 7: field bounds

@pytest.mark.parametrize("column,value,reason", [
    ("USER_NAME", "A" * 50_000_000, "USER_NAME: 50000000 characters"),
    ("SYSTEM_NAME", "S" * 9, "SYSTEM_NAME: 9 characters"),
    ("PROGRAM_NAME", "P" * 11, "PROGRAM_NAME"),
    ("JOB_NAME", "J" * 11, "JOB_NAME"),
    ("FILTER_DATA", "x" * 515, "FILTER_DATA"),
    ("FILTER_DESCRIPTION", "f" * 11, "FILTER_DESCRIPTION"),
    ("ENTRY_TYPE_DETAIL", "d" * 201, "ENTRY_TYPE_DETAIL"),
    ("REMOTE_ADDRESS", "999.999.999.999", "not an IP address"),
    ("LOCAL_IP_ADDRESS", "10.0.0.1.5", "not an IP address"),
    ("REMOTE_ADDRESS", "1:2:3", "not an IP address"),
    ("SEQUENCE_NUMBER", "9" * 21, "SEQUENCE_NUMBER"),
    ("SOCKET_DESCRIPTOR", "9" * 30, "SOCKET_DESCRIPTOR"),
    ("LOCAL_PORT", "0" * 40 + "80", "LOCAL_PORT"),
])
def test_audit_sk_field_bounds_and_addresses(column, value, reason):
    rs = rows()
    rs[3][column] = value
    with pytest.raises(ImportRecordError) as ex:
        parse_all(_json(rs), clock=UTC)
    assert ex.value.record == 4 and reason in ex.value.reason, ex.value.reason
    assert len(str(ex.value)) < 400   # the message quotes a short piece, not 50 MB


def test_csv_field_bounds():
    data = build("csv", SAMPLES[:3]).replace(b'"ALICE"', b'"' + b"A" * 5000 + b'"')
    with pytest.raises(ImportRecordError) as ex:
        parse_all(data, clock=UTC)
    assert ex.value.record == 1 and "JOUSPF" in ex.value.reason


def test_binary_address_validated():
    data = patch(build("type5"), 5, "remote_ip", "999.999.999.999")
    with pytest.raises(ImportRecordError) as ex:
        parse_all(data, clock=UTC)
    assert ex.value.record == 5 and "not an IP address" in ex.value.reason


def test_valid_addresses_still_accepted():
    rs = rows()
    rs[0]["REMOTE_ADDRESS"], rs[1]["REMOTE_ADDRESS"] = "::ffff:10.1.2.3", "fe80::1%eth0"
    es = parse_all(_json(rs), clock=UTC)
    assert es[0].remote_addr == "::ffff:10.1.2.3" and es[1].remote_addr == "fe80::1%eth0"


# ---------------------------------------------------------------- finding 5: hostile JSON

@pytest.mark.parametrize("make,record", [
    (lambda rs: "[" + json.dumps(rs[0]) + "," + "[" * 100_000 + "]" * 100_000 + "]", 2),
    (lambda rs: json.dumps(rs[:1])[:-1] + ',{"SEQUENCE_NUMBER": ' + "9" * 5000 + "}]", 2),
    (lambda rs: json.dumps(rs[:1])[:-1] + ',{"LOCAL_PORT": ' + "9" * 5000 + "}]", 2),
    (lambda rs: json.dumps(rs[:1])[:-1] + ',{"SEQUENCE_NUMBER": 1e999}]', 2),
    (lambda rs: json.dumps(rs[:1])[:-1] + ',{"USER_NAME": ' + "[" * 50 + "]" * 50 + "}]", 2),
    # {"name": [rows]} is decoded whole: its error is the document's, record 1 at offset 0
    (lambda rs: '{"rows": [' + json.dumps(rs[0]) + ',' + "{\"a\":" * 100_000 + "1" + "}" * 100_000 + "]}", 1),
    (lambda rs: json.dumps(rs[0]) + "\n" + "[" * 100_000, 2),
])
def test_hostile_json_is_a_located_error(make, record, tmp_path, jdir):
    data = make(rows()).encode()
    with pytest.raises(ImportRecordError) as ex:
        parse_all(data, clock=UTC)
    assert ex.value.record == record, str(ex.value)
    f = tmp_path / "in.json"
    f.write_bytes(data)
    p = subprocess.run([sys.executable, "-c", "import sys; from sockgate.cli import main; main(sys.argv[1:])",
                        "ibmi", "import", str(f), "--journal", jdir],
                       capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 1 and f"record {record}" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not os.path.exists(jdir) or journal_entries(jdir, source=None) == []


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                       max_leaves=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(sorted(synth.audit_sk_row(SAMPLES[0]))), _values),
                max_size=4))
def test_fuzzed_audit_sk_values_parse_or_fail_cleanly(changes):
    """Any JSON value in any column: an entry whose fields fit the SK layout, or an
    ImportRecordError naming the record; never another exception."""
    rs = rows()
    for i, col, v in changes:
        rs[i][col] = v
    try:
        data = json.dumps(rs).encode()
    except ValueError:   # NaN is not JSON; json.dumps writes it anyway, the parser must cope
        return
    try:
        es = parse_all(data, clock=UTC)
    except ImportRecordError as e:
        assert e.record is not None and 1 <= e.record <= 5 and e.reason
        return
    for e in es:
        assert e.user is None or len(e.user) <= 10
        assert len(e.host) <= 8 and e.ident == f"{e.host}:{e.extra['ibmi_seq']}"
        assert e.local_port is None or 0 <= e.local_port <= 65535


# ---------------------------------------------------------------- finding 6: --skip-bad mode

def test_skip_bad_file_is_0600_under_umask_000(tmp_path, jdir):
    data = patch(build("type5"), 3, "JONBR", "12X456")
    f, bad = tmp_path / "in.bin", tmp_path / "bad.bin"
    f.write_bytes(data)
    code = ("import os, sys; os.umask(0); from sockgate.cli import main; main(sys.argv[1:])")
    for _ in range(2):   # created, then overwritten
        p = subprocess.run([sys.executable, "-c", code, "ibmi", "import", str(f), "--journal", jdir,
                            "--skip-bad", str(bad), "--dry-run"],
                           capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, p.stderr
        assert stat.S_IMODE(bad.stat().st_mode) == 0o600, oct(bad.stat().st_mode)
        bad.chmod(0o666)
