"""Export formats, show/top through the CLI, and Filter SQL == Filter.matches."""

from __future__ import annotations

import csv
import io
import json

from conftest import T0, decision, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.journal import Code, Entry, EntryType, Filter, Journal, Outcome, Source
from sockgate.journal.export import cef_ext_escape, cef_header_escape, sd_escape, to_cef, to_rfc5424
from sockgate.journal.verify import verify


def tricky() -> Entry:
    return Entry(Code.SOCKET, EntryType.ACCEPT, T0, Source.IBMI, host="AS400 A", outcome=Outcome.ALLOWED,
                 user="QUSER", program="QSYS/QTVTELNET", local_addr="2001:db8::1", local_port=23,
                 remote_addr="2001:db8::99", remote_port=51000, rule='a=b|c\\d]"e\nf',
                 extra={"job": "123456/QUSER/QTVDEVICE", "odd key]": 'v="1"'}, ident="AS400:1", seq=7)


def test_cef_escaping_and_fields():
    line = to_cef(tricky())
    header, _, ext = line.partition("|cs") if False else (None, None, None)
    parts = line.split("|")
    assert parts[:5] == ["CEF:0", "sockgate", "sockgate", parts[3], "SK-A"]
    assert "\n" not in line
    assert r"cs1=a\=b|c\\d]\"e\nf".replace('\\"', '"') in line
    # accept: the remote side is the source, the listener's process is the destination
    assert "c6a2=2001:db8::99 spt=51000" in line and "c6a3=2001:db8::1 dpt=23" in line
    assert "duser=QUSER" in line and "deviceDirection=0" in line
    assert cef_header_escape("a|b\\c\nd") == "a\\|b\\\\c d"
    assert cef_ext_escape("x=1\\2\r\n") == "x\\=1\\\\2\\n"


def test_rfc5424_structure():
    line = to_rfc5424(tricky())
    assert line.startswith("<110>1 2026-01-01T00:00:00.000000Z AS400_A sockgate - SK-A [sk@32473 seq=\"7\"")
    assert r'rule="a=b|c\\d\]\"e' in line
    assert r'[sgx@32473 job="123456/QUSER/QTVDEVICE" odd_key_="v=\"1\""]' in line
    assert " \ufeffAccept allowed QUSER" in line
    assert sd_escape('a"b\\c]') == 'a\\"b\\\\c\\]'
    rej = to_rfc5424(decision(1))
    assert rej.startswith("<108>1 ")          # facility 13 (audit), severity 4 (warning)


def test_cli_show_export_top(jdir, tmp_path):
    with Journal.open(jdir, host="web1") as j:
        j.append(decision(i, outcome=Outcome.ALLOWED if i % 3 == 0 else Outcome.REJECTED,
                          remote=f"198.51.100.{i % 7}") for i in range(60))
        j.append([tricky()])
    jd = ["--journal", str(jdir)]
    code, out, err = run_cli("journal", "show", *jd, "--outcome", "rejected", "--remote", "198.51.100.0/30",
                             "--format", "json")
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert rows and all(r["outcome"] == "rejected" and r["remote_addr"].rsplit(".", 1)[1] in "0123" for r in rows)
    code, out, err = run_cli("journal", "show", *jd, "--type", "A", "--format", "csv")
    recs = list(csv.DictReader(io.StringIO(out)))
    assert [r["ident"] for r in recs] == ["AS400:1"] and json.loads(recs[0]["extra"])["job"]
    code, out, err = run_cli("journal", "show", *jd, "-n", "2", "--from-seq", "10", "--to-seq", "40")
    assert code == 0 and "39" in out and "40" in out and " 38 " not in out
    code, out, err = run_cli("journal", "show", *jd, "--user", "nobody")
    assert code == 0 and "no matching entries" in out
    for fmt in ("cef", "rfc5424", "json", "csv"):
        code, out, err = run_cli("journal", "export", *jd, "--format", fmt, "--since", "2025-12-31", "--until",
                                 "2026-01-02")
        assert code == 0, err
        n = len(list(csv.reader(io.StringIO(out)))) if fmt == "csv" else len(out.splitlines())
        assert n == 61 + (fmt == "csv")
    code, out, err = run_cli("journal", "top", *jd, "--outcome", "rejected", "--json")
    top = json.loads(out)
    assert sum(t["count"] for t in top) == 40 and top[0]["remote_addr"].startswith("198.51.100.")
    code, out, err = run_cli("journal", "rotate", *jd)
    assert code == 0 and "r000002.sgj" in out
    code, out, err = run_cli("journal", "retain", *jd, "--max-size", "1K")
    assert code == 0 and "r000001.sgj" in out
    assert verify(jdir).ok
    code, out, err = run_cli("journal", "retain", *jd)
    assert code == 2


def test_cli_init_key_out(tmp_path):
    key = tmp_path / "usb" / "k"
    key.parent.mkdir()
    code, out, err = run_cli("journal", "init", "--journal", str(tmp_path / "j"), "--key-out", str(key))
    assert code == 0, err
    assert str(key) in out and key.read_text().strip() not in out   # never printed (issue 13)
    assert not (tmp_path / "j" / "verification.key").exists()
    code, out, err = run_cli("journal", "init", "--journal", str(tmp_path / "j"))
    assert code == 1 and "already exists" in err


# -- properties ---------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
addrs = st.one_of(st.none(), st.ip_addresses().map(str), text)
entries = st.builds(
    Entry, code=st.sampled_from(list(Code)), type=st.sampled_from([t for t in EntryType if t not in (EntryType.CUT, EntryType.ROTATE)]),
    ts_ns=st.integers(0, 2**62), source=st.sampled_from(list(Source)), host=text,
    outcome=st.one_of(st.none(), st.sampled_from(list(Outcome))), rule=st.one_of(st.none(), text),
    uid=st.one_of(st.none(), st.integers(0, 2**32)), user=st.one_of(st.none(), text),
    program=st.one_of(st.none(), text), local_addr=addrs, remote_addr=addrs,
    local_port=st.one_of(st.none(), st.integers(0, 65535)), remote_port=st.one_of(st.none(), st.integers(0, 65535)),
    extra=st.dictionaries(text, st.one_of(st.integers(-2**53, 2**53), text, st.booleans(), st.none()), max_size=3),
)
filters = st.builds(
    Filter.build, outcomes=st.lists(st.sampled_from([o.value for o in Outcome]), max_size=2),
    types=st.lists(st.sampled_from(["A", "C", "L", "gap"]), max_size=2),
    remote=st.lists(st.sampled_from(["10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0", "192.0.2.7/32"]), max_size=2),
    ports=st.lists(st.sampled_from(["22", "1-1023", "1024-65535"]), max_size=2),
    users=st.lists(st.sampled_from(["root", "0", "www-data"]), max_size=2),
    since=st.one_of(st.none(), st.integers(0, 2**62)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(entries, min_size=1, max_size=25), flt=filters)
def test_roundtrip_verify_and_filter_agree(tmp_path_factory, batch, flt):
    d = tmp_path_factory.mktemp("p") / "j"
    with Journal.open(d, host="h") as j:
        j.append(batch)
        back = list(j.entries())
        by_sql = [e.seq for e in j.entries(filter=flt)]
        newest = [e.seq for e in j.tail(5, filter=flt)]
    assert verify(d).ok
    assert newest == by_sql[-5:]
    for a, b in zip(batch, back):
        assert b.to_dict() == a.to_dict() | {"host": a.host or "h", "family": b.family}
    assert by_sql == [e.seq for e in back if flt.matches(e)]
