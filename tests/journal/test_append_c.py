"""The C write path (_append.c) against the Python definitions verify relies on: the bytes
it hashes are store.canonical(row) and its `extra` is store.dump_extra(extra), for any text,
numbers and extras; bad entries are refused with the entry's index, nothing written."""

from __future__ import annotations

import pytest
from conftest import T0, decision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import JournalError
from sockgate.journal import Code, Entry, EntryType, Journal, Outcome, Source
from sockgate.journal.verify import verify
from sockgate.journal import _append
from sockgate.journal.store import FIELDS, canonical, dump_extra

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
maybe_text = st.none() | text
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalar = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | text
extra_value = scalar | st.floats(allow_nan=False) | st.lists(scalar, max_size=3)


def test_fields_match_the_store():
    assert _append.FIELDS == FIELDS


@given(st.tuples(int64, st.integers(min_value=0, max_value=2**63 - 1), text, text, text, text,
                 maybe_text, maybe_text, st.none() | int64, maybe_text, st.none() | int64,
                 st.none() | int64, maybe_text, maybe_text, maybe_text,
                 st.none() | st.integers(0, 65535), maybe_text, st.none() | st.integers(0, 65535),
                 text, maybe_text))
def test_canonical_is_byte_identical(values):
    assert _append.canonical(values) == canonical(values)


@st.composite
def entries(draw):
    n = draw(st.integers(1, 20))
    out = []
    for i in range(n):
        out.append(Entry(
            Code.SOCKET, draw(st.sampled_from(list(EntryType)[:12])), draw(st.integers(0, 2**62)),
            draw(st.sampled_from(list(Source))), draw(text), draw(st.none() | st.sampled_from(list(Outcome))),
            draw(maybe_text), draw(st.none() | int64), draw(maybe_text), draw(st.none() | int64),
            draw(st.none() | int64), draw(maybe_text), draw(st.none() | st.sampled_from(["ipv4", "ipv6"])),
            draw(st.none() | st.sampled_from(["10.0.0.1", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "x"]) | text),
            draw(st.none() | st.integers(0, 65535)),
            draw(st.none() | st.sampled_from(["192.0.2.7", "2001:db8::7", "300.1.1.1"]) | text),
            draw(st.none() | st.integers(0, 65535)),
            draw(st.dictionaries(text, extra_value, max_size=6)),
        ))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=entries())
def test_what_c_writes_verifies_and_reads_back(tmp_path_factory, batch):
    """verify() recomputes every hash in Python: it passes only if C hashed the same bytes."""
    d = tmp_path_factory.mktemp("j") / "journal"
    with Journal.open(d, host="h") as j:
        j.append(batch)
        back = list(j.entries())
    assert verify(d).ok
    assert len(back) == len(batch)
    for want, got in zip(batch, back):
        assert got.extra == {k: v if isinstance(v, (type(None), bool, int, str, float, list)) else str(v)
                             for k, v in want.extra.items()}
        assert (got.host, got.user, got.remote_addr, got.ts_ns) == (want.host or "h", want.user,
                                                                      want.remote_addr, want.ts_ns)
        row_extra = dump_extra(want.extra)
        assert dump_extra(got.extra) == row_extra


def test_family_and_address_keys_as_python_did(jdir):
    with Journal.open(jdir) as j:
        es = [decision(0, remote="2001:db8::1", family=None), decision(1, remote="::ffff:10.0.0.1", family=None),
              decision(2, remote="not-an-address", local_addr="10.9.9.9", family=None),
              decision(3, remote=None, remote_addr=None, local_addr=None, family=None)]
        j.append(es)
        got = [e.family for e in j.entries()]
        keys = [bytes(r[0]) if r[0] else None
                for r in j._current().fetchall("SELECT remote_key FROM entry ORDER BY seq")]
    assert got == ["ipv6", "ipv6", "ipv4", None]
    assert keys[0] == bytes.fromhex("20010db8000000000000000000000001")
    assert keys[1] == bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert keys[2] is None and keys[3] is None


@pytest.mark.parametrize("change, match", [
    (dict(ts_ns=-1), "entry 1: bad ts_ns"),
    (dict(ts_ns=1.5), "entry 1: bad ts_ns"),
    (dict(uid="0"), "entry 1: bad uid"),
    (dict(local_port=65536), "entry 1: bad local_port"),
    (dict(user=7), "entry 1: user must be text"),
    (dict(outcome="maybe"), "entry 1: not a valid code/type/source/outcome"),
    (dict(type=EntryType.CUT), "entry 1: 'cut' records are written by the journal itself"),
    (dict(extra=[1]), "entry 1: extra must be a dict"),
])
def test_bad_entries_are_refused_before_anything_is_written(jdir, change, match):
    with Journal.open(jdir) as j:
        j.append([decision(0)])
        bad = decision(2)
        for k, v in change.items():
            setattr(bad, k, v)
        with pytest.raises(JournalError, match=match):
            j.append([decision(1), bad], atomic=True)
        assert j.last_seq == 1
        with pytest.raises(JournalError, match="not a journal Entry"):
            j.append([object()])
        assert j.append([decision(3)]) == 2
    assert verify(jdir).ok


def test_bulk_is_one_transaction(jdir):
    with Journal.open(jdir) as j:
        j.append([decision(0)])
        with pytest.raises(RuntimeError):
            with j.bulk():
                j.append([decision(i) for i in range(1, 1000)])
                j.append([decision(i) for i in range(1000, 2000)])
                raise RuntimeError("the import failed half-way")
        assert j.last_seq == 1 and len(list(j.entries())) == 1
        with j.bulk():
            j.append([decision(i) for i in range(1, 30_000)])
            j.append([decision(i) for i in range(30_000, 30_010)])
        assert j.last_seq == 30_010
    rep = verify(jdir)
    assert rep.ok and rep.entries == 30_010
    with Journal.open(jdir, readonly=True) as j:
        assert j.count() == 30_010 and list(j.entries(30_009))[0].ts_ns == T0 + 30_009 * 1_000_000
