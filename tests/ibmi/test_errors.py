"""Bad input: a located ImportRecordError every time, never a traceback, nothing committed."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import ImportRecordError, UsageError
from sockgate.ibmi import layout, synth
from sockgate.ibmi.importer import import_file, parse_all
from sockgate.ibmi.mapping import LocalTime

from .conftest import FORMATS, SAMPLES, build, journal_entries

L5 = layout.TYPE5.full_length
UTC = LocalTime("UTC")


def patch(data: bytes, record: int, field: str, text: str, codec="cp037", lay=layout.TYPE5,
          length=L5) -> bytes:
    f = lay[field]
    b = bytearray(data)
    at = (record - 1) * length + f.start
    b[at:at + f.length] = text.ljust(f.length).encode(codec)
    return bytes(b)


def error_of(data: bytes, **kw) -> ImportRecordError:
    with pytest.raises(ImportRecordError) as ex:
        parse_all(data, clock=UTC, **kw)
    return ex.value


@pytest.mark.parametrize("field,text,reason", [
    ("JONBR", "12A4_6", "job number"),
    ("JOSEQN", "12345X", "sequence number"),
    ("JOTSTP", "2026-13-24-10.15.30.000000", "month must be in 1..12"),
    ("JOTSTP", "2026-11-24 10:15:30.000000", "not a timestamp"),
    ("entry_type", "Z", "not an SK entry type"),
    ("remote_port", "99999", "not a port number"),
    ("local_port", "8O", "not a port number"),
    ("address_family", "*IPX", "not *IPV4 or *IPV6"),
    ("remote_ip", "10.0.0.1;rm", "not an IP address"),
    ("JOSYNM", "", "blank"),
])
def test_bad_field_names_record_offset_and_reason(field, text, reason):
    data = patch(build("type5"), 3, field, text)
    e = error_of(data)
    assert e.record == 3
    assert e.offset == 2 * L5 + layout.TYPE5[field].start
    assert reason in e.reason
    assert f"record 3 (byte offset {e.offset})" in str(e)


def test_wrong_ccsid():
    ascii_data = build("type5-ascii")
    e = error_of(ascii_data, fmt="type5", ccsid=37)
    assert (e.record, e.offset) == (1, 25) and "CCSID" in e.reason


def test_truncated_last_record():
    data = build("type5")[:-100]
    e = error_of(data)
    assert (e.record, e.offset) == (22, 21 * L5) and "truncated" in e.reason


def test_truncated_single_record():
    e = error_of(build("type5")[:700])
    assert e.record == 1 and "truncated" in e.reason


def test_wrong_record_length():
    e = error_of(build("type5"), record_length=L5 - 1)
    assert e.record == 2 and e.offset == (L5 - 1) + 25 and "TSK" in e.reason


def test_record_length_too_short_is_a_usage_error():
    with pytest.raises(UsageError):
        parse_all(build("type5"), record_length=100, clock=UTC)


def test_csv_bad_row_names_line_and_offset():
    data = build("csv")
    lines = data.split(b"\r\n")
    lines[4] = lines[4].replace(b'"SK"', b'"ZZ"', 1)
    data = b"\r\n".join(lines)
    e = error_of(data)
    assert e.record == 4 and "line 5" in e.reason
    assert e.offset == sum(len(x) + 2 for x in lines[:4])


def test_audit_sk_json_bad_element():
    rows = [synth.audit_sk_row(r) for r in SAMPLES[:4]]
    rows[2]["SEQUENCE_NUMBER"] = "twelve"
    data = json.dumps(rows).encode()
    e = error_of(data)
    assert e.record == 3 and "SEQUENCE_NUMBER" in e.reason
    assert data[e.offset:e.offset + 1] == b"{"


def test_audit_sk_csv_missing_column():
    data = build("audit-sk-csv").replace(b"SEQUENCE_NUMBER", b"SEQ", 1)
    with pytest.raises((ImportRecordError, UsageError)):
        parse_all(data, fmt="audit-sk", clock=UTC)


def test_not_utf8_text():
    data = build("audit-sk-csv").replace(b"QUSER", b"QUS\xffR", 1)
    e = error_of(data)
    assert "--ccsid" in e.reason and data[e.offset] == 0xFF


def test_error_commits_nothing(tmp_path, jdir):
    f = tmp_path / "bad.bin"
    f.write_bytes(patch(build("type5"), 20, "JONBR", "ABCDEF"))
    with pytest.raises(ImportRecordError):
        import_file(str(f), jdir, utc_offset="UTC")
    assert journal_entries(jdir, source=None) == []


# ---------------------------------------------------------------- fuzzing

def mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice"]))
    n = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, n - 1))]
    at = draw(st.integers(0, n - 1))
    if kind == "flip":
        k = draw(st.integers(1, 8))
        return data[:at] + draw(st.binary(min_size=k, max_size=k)) + data[at + k:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=40)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 40)):]
    return data[:at] + data[draw(st.integers(0, n - 1)):]


@st.composite
def bad_inputs(draw):
    fmt = draw(st.sampled_from(FORMATS))
    recs = SAMPLES[draw(st.integers(0, 18)):][:draw(st.integers(1, 4))]
    data = build(fmt, recs)
    for _ in range(draw(st.integers(1, 3))):
        if len(data) > 1:
            data = mutate(data, draw)
    kw = {}
    if draw(st.booleans()):
        kw["ccsid"] = draw(st.sampled_from([37, 500, 273, 819, 1252]))
    if fmt.startswith("type") and draw(st.booleans()):
        kw["record_length"] = draw(st.integers(layout.TYPE4.min_length, L5 + 50))
    if draw(st.booleans()):
        kw["fmt"] = draw(st.sampled_from(["type5", "type4", "csv", "audit-sk"]))
    return data, kw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_inputs())
def test_fuzzed_inputs_parse_or_fail_cleanly(case):
    data, kw = case
    try:
        entries = parse_all(data, clock=UTC, **kw)
    except ImportRecordError as e:
        assert e.reason and str(e)
        return
    except UsageError:
        # the usage errors: a record length too short, or binary records in a CCSID that is
        # not a complete single-byte code page (1252 leaves bytes undefined)
        assert "record_length" in kw or kw.get("ccsid") == 1252
        return
    for e in entries:  # whatever parsed is a well-formed SK entry
        assert e.ident == f"{e.host}:{e.extra['ibmi_seq']}" and e.ts_ns >= 0
        assert e.local_port is None or 0 <= e.local_port <= 65535


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(bad_inputs())
def test_fuzzed_import_is_all_or_nothing(tmp_path_factory, case):
    data, kw = case
    d = tmp_path_factory.mktemp("fuzz")
    f = d / "in"
    f.write_bytes(data)
    jdir = str(d / "journal")
    try:
        s = import_file(str(f), jdir, fmt=kw.get("fmt", "auto"), ccsid=kw.get("ccsid"),
                        record_length=kw.get("record_length"), utc_offset="UTC")
    except (ImportRecordError, UsageError):
        import os
        if os.path.exists(jdir):
            assert journal_entries(jdir, source=None) == []
        return
    assert len(journal_entries(jdir)) == s.imported == s.records


def test_damaged_heading_of_record_2_is_named_not_skipped():
    # The stride must not become two records long when record 2's heading is broken.
    data = patch(build("type5"), 2, "JOCODE", "X")
    e = error_of(data)
    assert (e.record, e.offset) == (2, L5 + 25)


def test_stray_heading_inside_a_record_needs_record_length():
    rec = synth.sample(3)
    rec.filter_data = "xx TSK2026-11 xx"  # text that looks like a heading, inside record 3
    recs = SAMPLES[:2] + [rec] + SAMPLES[3:6]
    data = synth.outfile(recs, codec="cp037")
    try:
        got = parse_all(data, clock=UTC)
        assert len(got) == 6
    except ImportRecordError as e:
        assert "--record-length" in e.reason
    got = parse_all(data, clock=UTC, record_length=L5)
    assert got[2].extra["filter_data"] == "xx TSK2026-11 xx"


# ---------------------------------------------------------------- targeted properties

EBCDIC_DIGITS = set(range(0xF0, 0xFA))


@settings(max_examples=150, deadline=None)
@given(record=st.integers(1, 22), field=st.sampled_from(["JONBR", "JOSEQN"]),
       pos=st.integers(0, 5), byte=st.integers(0, 255).filter(lambda b: b not in EBCDIC_DIGITS
                                                                 and b != 0x40))
def test_bad_zoned_digit_is_located(record, field, pos, byte):
    data = bytearray(build("type5"))
    f = layout.TYPE5[field]
    at = (record - 1) * L5 + f.end - 1 - pos  # one of the last six digits
    data[at] = byte
    e = error_of(bytes(data))
    assert e.record == record and e.offset == (record - 1) * L5 + f.start
    assert field in e.reason


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(1, 22 * L5 - 1).filter(lambda n: n % L5))
def test_truncation_is_located(cut):
    data = build("type5")[:cut]
    if layout.TYPE5.min_length <= cut <= L5:
        # one record without its last fields: what a record from before 7.3 looks like
        [entry] = parse_all(data, fmt="type5", clock=UTC)
        assert entry.ident == f"PROD400:{SAMPLES[0].seq}"
        return
    e = error_of(data, fmt="type5")
    if cut < layout.TYPE5.min_length:
        assert e.record == 1 and "truncated" in e.reason
    elif cut < L5 + 33:  # record 2 cut inside its heading: the stride cannot be seen
        assert "--record-length" in e.reason
    else:
        assert e.record == cut // L5 + 1 and e.offset == cut // L5 * L5
        assert "truncated" in e.reason


@settings(max_examples=100, deadline=None)
@given(length=st.integers(layout.TYPE5.min_length, 2 * L5).filter(lambda n: n != L5))
def test_wrong_stride_never_imports(length):
    with pytest.raises(ImportRecordError) as ex:
        parse_all(build("type5"), record_length=length, clock=UTC)
    assert ex.value.record is not None


@settings(max_examples=30, deadline=None)
@given(ccsid=st.sampled_from([37, 273, 500, 1140]), ascii_data=st.booleans())
def test_wrong_ccsid_is_record_1(ccsid, ascii_data):
    data = build("type5-ascii" if ascii_data else "type5")
    kw = {"ccsid": ccsid} if ascii_data else {"ccsid": 819}
    e = error_of(data, fmt="type5", **kw)
    assert (e.record, e.offset) == (1, 25) and "TSK" in e.reason
