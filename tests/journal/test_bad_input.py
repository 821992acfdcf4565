"""Corrupt or foreign files give a JournalError with a clear message, never a traceback."""

from __future__ import annotations

import shutil

import pytest
from conftest import decision, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import JournalError, UsageError
from sockgate.journal import EntryType, Filter, Journal
from sockgate.journal.verify import verify


@pytest.fixture
def journal(jdir):
    with Journal.open(jdir) as j:
        j.append(decision(i) for i in range(200))
    return jdir


def both_fail(jdir, match):
    with pytest.raises(JournalError, match=match):
        Journal.open(jdir, readonly=True)
    with pytest.raises(JournalError, match=match):
        Journal.open(jdir)
    with pytest.raises(JournalError, match=match):
        verify(jdir)


def test_foreign_file_in_directory(journal):
    (journal / "notes.txt").write_text("hello")
    both_fail(journal, "unexpected file 'notes.txt'")


def test_receiver_replaced_by_garbage(journal):
    (journal / "r000001.sgj").write_bytes(b"\x00garbage" * 100)
    both_fail(journal, "not an SQLite file")


def test_receiver_is_some_other_sqlite_database(journal):
    import sqlite3

    (journal / "r000002.sgj").unlink(missing_ok=True)
    c = sqlite3.connect(journal / "r000002.sgj")
    c.execute("CREATE TABLE t (x)")
    c.close()
    both_fail(journal, "not a journal receiver")


def test_receiver_of_another_journal(journal, tmp_path):
    other = tmp_path / "other"
    Journal.open(other).close()
    shutil.copy(other / "r000001.sgj", journal / "r000002.sgj")
    both_fail(journal, "belongs to another journal")


def test_corrupt_journal_json(journal):
    (journal / "journal.json").write_text("{not json")
    both_fail(journal, "corrupt")


def test_corrupt_seal_key(journal):
    (journal / "seal.key").write_bytes(b"x" * 256)
    with pytest.raises(JournalError, match="sealing key file is corrupt"):
        Journal.open(journal)


def test_directory_that_is_not_a_journal(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "something").write_text("x")
    with pytest.raises(JournalError, match="not a sockgate journal"):
        Journal.open(d)


def test_bad_entry_is_refused_without_writing(jdir):
    with Journal.open(jdir) as j:
        for bad in (decision(0, type="Q"), decision(0, uid="33"), decision(0, ts_ns=-1),
                    decision(0, extra=[1]), decision(0, user=5), decision(0, type=EntryType.CUT)):
            with pytest.raises(JournalError):
                j.append([bad])
        assert j.last_seq == 0


def test_filter_usage_errors():
    for kw in ({"since": "yesterday-ish"}, {"remote": ["10.0.0.300/24"]}, {"ports": ["70000"]},
               {"outcomes": ["maybe"]}, {"types": ["Z"]}):
        with pytest.raises(UsageError):
            Filter.build(**kw)


def test_cli_errors_are_messages(journal, tmp_path):
    (journal / "r000001.sgj").write_bytes(b"junk" * 10)
    for args, want in ((["journal", "show", "--journal", str(journal)], 1),
                       (["journal", "verify", "--journal", str(journal)], 1),
                       (["journal", "show", "--journal", str(tmp_path / "none")], 1),
                       (["journal", "show", "--journal", str(journal), "--since", "soon"], 2),
                       (["journal", "verify", "--journal", str(journal), "--key", str(tmp_path / "nokey")], 1)):
        code, out, err = run_cli(*args)
        assert code == want, (args, err)
        assert "Traceback" not in err and err.startswith("sockgate:"), err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupted_receiver_never_crashes(tmp_path_factory, data):
    """Overwrite random bytes of a receiver: open/read/verify either work (bytes that did
    not matter), report tampering, or raise JournalError. Nothing else."""
    src = _template(tmp_path_factory)
    d = tmp_path_factory.mktemp("fuzz") / "j"
    shutil.copytree(src, d)
    path = d / "r000001.sgj"
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        off = data.draw(st.integers(0, len(raw) - 1))
        raw[off] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    try:
        rep = verify(d)
        assert rep.ok or rep.error
        with Journal.open(d, readonly=True) as j:
            list(j.entries())
    except JournalError as e:
        assert str(e)


_TEMPLATE = {}


def _template(factory):
    if "d" not in _TEMPLATE:
        d = factory.mktemp("tmpl") / "j"
        with Journal.open(d) as j:
            j.seal_every = 40
            j.append(decision(i) for i in range(150))
        for side in ("r000001.sgj-wal", "r000001.sgj-shm"):
            (d / side).unlink(missing_ok=True)
        _TEMPLATE["d"] = d
    return _TEMPLATE["d"]
