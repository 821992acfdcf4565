"""Generate SK entries in every input format -> import -> read back from the journal ->
every mapped field matches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.ibmi import layout, records, synth
from sockgate.ibmi.importer import import_file, parse_all, sniff
from sockgate.ibmi.mapping import LocalTime

from .conftest import FORMATS, SAMPLES, actual, build, expected, journal_entries

SNIFFED = {"type5": "type5", "type5-ascii": "type5", "type4": "type4", "csv": "csv",
           "csv4": "csv", "audit-sk-json": "audit-sk", "audit-sk-csv": "audit-sk"}


def test_layouts_tile_the_record():
    for lay in (layout.TYPE5, layout.TYPE4):
        layout.check(lay)
        assert all(f.tag in ("V", "V2", "D", "I") for f in lay.heading + lay.sk)
    assert layout.TYPE5.esd_offset == 610 and layout.TYPE4.esd_offset == 224
    # the SK fields sit at the same distance from the ESD start in both outfiles
    j4 = {f.name: f.offset - 224 for f in layout.TYPE4.sk}
    assert all(j4[f.name] == f.offset - 610 for f in layout.TYPE5.sk if f.name in j4)


def test_samples_cover_every_type_and_family():
    assert {r.entry_type for r in SAMPLES} == set("ACDFIOPRSUX")
    assert {(r.entry_type, ":" in r.remote_ip) for r in SAMPLES} == \
        {(t, v6) for t in "ACDFIOPRSUX" for v6 in (False, True)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff(fmt):
    assert sniff(build(fmt)) == SNIFFED[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_the_journal(fmt, tmp_path, jdir):
    f = tmp_path / "in"
    f.write_bytes(build(fmt))
    s = import_file(str(f), jdir, utc_offset="+01:00")
    assert (s.records, s.imported, s.already_present, s.bad) == (22, 22, 0, 0)
    assert s.format == SNIFFED[fmt]
    assert s.systems == ["PROD400"]
    assert s.by_type == {t: 2 for t in "ACDFIOPRSUX"}
    got = journal_entries(jdir)
    assert [actual(e) for e in got] == [expected(r, fmt, 3600) for r in SAMPLES]
    # the import is recorded once, as an SG import record
    imports = [e for e in journal_entries(jdir, source=None) if e.type.value == "import"]
    assert len(imports) == 1
    assert imports[0].extra["imported"] == 22 and imports[0].extra["systems"] == "PROD400"


@pytest.mark.parametrize("fmt", ["type5", "type4"])
def test_legacy_15_character_addresses(fmt):
    recs = [synth.sample(i, ipv6=False) for i in range(11)]
    for r in recs:
        r.legacy_ip = True
    got = parse_all(build(fmt, recs), clock=LocalTime("UTC"))
    assert [(e.local_addr, e.remote_addr, e.family) for e in got] == \
        [(r.local_ip, r.remote_ip, "ipv4") for r in recs]


def test_ipv6_does_not_use_the_15_character_fields():
    data = bytearray(synth.record(synth.sample(11, ipv6=True)))
    lay = layout.TYPE5
    f = lay["local_ip15"]
    assert bytes(data[f.start:f.end]) == " ".encode("cp037") * 15
    [e] = parse_all(bytes(data), clock=LocalTime("UTC"))
    assert e.family == "ipv6" and e.local_addr == "fd00:20::10"


def test_record_length_is_detected_with_unknown_trailing_fields():
    # records longer than the known layout (newer releases add fields at the end)
    data = synth.outfile(SAMPLES, length=layout.TYPE5.full_length + 123)
    got = parse_all(data, clock=LocalTime("UTC"))
    assert [e.ident for e in got] == [f"PROD400:{r.seq}" for r in SAMPLES]


def test_pre_73_records_without_secure_fields():
    recs = [synth.sample(i) for i in range(11)]
    data = synth.outfile(recs, length=layout.TYPE5.min_length)
    got = parse_all(data, clock=LocalTime("UTC"))
    s = [e for e in got if e.type.value == "S"][0]
    assert "secure_version" not in s.extra and s.outcome.value == "allowed"


def test_explicit_ccsid_500_and_record_length():
    data = synth.outfile(SAMPLES, codec="cp500")
    got = parse_all(data, fmt="type5", ccsid=500, record_length=layout.TYPE5.full_length,
                    clock=LocalTime("UTC"))
    assert [actual(e) for e in got] == [expected(r, "type5") for r in SAMPLES]


def test_cpytoimpf_without_header_and_two_systems():
    recs = SAMPLES + [synth.sample(i, system="DEV400") for i in range(3)]
    data = synth.cpytoimpf(recs, header=False).encode()
    got = parse_all(data, clock=LocalTime("UTC"))
    assert len(got) == 25 and {e.host for e in got} == {"PROD400", "DEV400"}
    assert got[-1].ident == f"DEV400:{recs[-1].seq}"


def test_audit_sk_json_lines_and_wrapped_object():
    import json
    rows = [synth.audit_sk_row(r) for r in SAMPLES[:5]]
    lines = "\n".join(json.dumps(r) for r in rows).encode()
    wrapped = json.dumps({"rows": rows}).encode()
    for data in (lines, wrapped):
        got = parse_all(data, clock=LocalTime("UTC"))
        assert [actual(e) for e in got] == [expected(r, "audit-sk-json") for r in SAMPLES[:5]]


def test_audit_sk_timestamp_with_zone_wins_over_utc_offset():
    row = synth.audit_sk_row(SAMPLES[0])
    row["ENTRY_TIMESTAMP"] = "2026-11-24T10:15:30.5+02:00"
    import json
    [e] = parse_all(json.dumps([row]).encode(), clock=LocalTime("-05:00"))
    assert e.ts_ns == 1795508130_500_000_000  # 08:15:30.5Z


def test_utc_offset_zone_name_follows_dst():
    summer = LocalTime("Europe/Berlin").saa("2026-07-01-12.00.00.000000")
    winter = LocalTime("Europe/Berlin").saa("2026-01-01-12.00.00.000000")
    utc = LocalTime("UTC")
    assert utc.saa("2026-07-01-12.00.00.000000") - summer == 2 * 3600 * 10**9
    assert utc.saa("2026-01-01-12.00.00.000000") - winter == 3600 * 10**9


@pytest.mark.parametrize("fmt", ["type5", "type5-ascii", "type4"])
def test_fast_and_careful_paths_agree(fmt):
    data = build(fmt)
    lay = layout.LAYOUTS[fmt[:5]]
    reader = records.RecordReader(data, lay, codec="latin-1" if "ascii" in fmt else "cp037",
                                  clock=LocalTime("UTC"))
    careful = [reader._careful(i * reader.record_length) for i in range(reader.count)]
    assert [actual(e) for e in careful] == [expected(r, fmt) for r in SAMPLES]
    assert [actual(e) for e in reader.entries()] == [actual(e) for e in careful]


_name = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$@_", max_size=10)


@st.composite
def sk_records(draw):
    v6 = draw(st.booleans())
    ip = (st.ip_addresses(v=6) if v6 else st.ip_addresses(v=4)).map(str)
    r = synth.sample(draw(st.integers(0, 10_000)))
    r.entry_type = draw(st.sampled_from("ACDFIOPRSUX"))
    r.system = draw(_name.filter(bool).map(lambda s: s[:8]))
    r.job_name, r.job_user, r.current_user = draw(_name), draw(_name), draw(_name)
    r.program, r.program_library = draw(_name), draw(_name)
    r.receiver, r.receiver_library = draw(_name), draw(_name)
    r.local_ip = draw(st.one_of(st.just(""), ip))
    r.remote_ip = draw(st.one_of(st.just(""), ip))
    r.family = draw(st.sampled_from(["", "*IPV6" if v6 else "*IPV4"]))
    r.legacy_ip = not v6 and draw(st.booleans())
    r.local_port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    r.remote_port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    r.socket_descriptor = draw(st.integers(-2**31, 2**31 - 1))
    text = st.text(alphabet=" abcdefghijklmnopqrstuvwxyz0123456789.:_-", max_size=30)
    r.secure_version, r.secure_properties = draw(text)[:10], draw(text)
    r.filter_description, r.filter_data = draw(text)[:10], draw(text)
    r.mac_address, r.host_name = draw(text), draw(text)
    return r


CODECS = {"cp037": 37, "cp500": 500, "cp1140": 1140, "latin-1": 819}


@settings(max_examples=150, deadline=None)
@given(recs=st.lists(sk_records(), min_size=1, max_size=8), fmt=st.sampled_from(["type5", "type4"]),
       codec=st.sampled_from(sorted(CODECS)))
def test_fast_and_careful_paths_agree_on_any_valid_record(recs, fmt, codec):
    # The fast path (struct + memos) and the careful, field-by-field path must give the
    # same entry for every valid record; the careful one is also what names bad fields.
    recs = [synth.SkRecord(**{**synth.as_dict(r), "seq": i + 1}) for i, r in enumerate(recs)]
    data = synth.outfile(recs, layout.LAYOUTS[fmt], codec)
    reader = records.RecordReader(data, layout.LAYOUTS[fmt], codec=records.codec_for_ccsid(
        CODECS[codec]), clock=LocalTime("UTC"))
    fast = list(reader.entries())
    careful = [reader._careful(i * reader.record_length) for i in range(len(recs))]
    assert [actual(e) for e in fast] == [actual(e) for e in careful]


def test_ccsid_1140_with_euro_sign():
    # 1140 = 37 plus the euro sign, a character beyond Latin-1
    recs = [synth.sample(i) for i in range(22)]
    recs[8].secure_properties = "COST 5€"  # an S entry
    got = parse_all(synth.outfile(recs, codec="cp1140"), fmt="type5", ccsid=1140,
                    clock=LocalTime("UTC"))
    want = [expected(r, "type5") for r in recs]
    assert [actual(e) for e in got] == want
    assert got[8].extra["secure_properties"] == "COST 5€"
