"""The C read path (_append.Reader, Receiver.scan, Journal.decisions) against the sqlite3
module it replaces for long scans: the same rows, values and types for any stored value;
a repeated text is one object; damage and SQL errors are JournalErrors as with fetchall."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import decision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import JournalError
from sockgate.journal import Journal, _append
from sockgate.journal.store import DECISION_SELECT

value = (st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
         | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=1100) | st.binary(max_size=40))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(value, value, value), max_size=30), params=st.tuples(value, value))
def test_fetch_equals_sqlite3(tmp_path_factory, rows, params):
    path = tmp_path_factory.mktemp("rd") / "t.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (a, b, c)")
        c.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    c.close()
    r = _append.Reader(str(path))
    conn = sqlite3.connect(path)
    try:
        for sql, args in (("SELECT a, b, c FROM t ORDER BY rowid", ()),
                          ("SELECT ?, ?, a FROM t ORDER BY rowid", params)):
            want = conn.execute(sql, args).fetchall()
            for _ in range(2):   # the second time through the kept statement and shared strs
                got = r.fetch(sql, args)
                assert got == want
                assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in want]
    finally:
        conn.close()
        r.close()


def test_repeated_text_is_one_object(tmp_path):
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (a)")
        c.executemany("INSERT INTO t VALUES (?)", [("same text",)] * 3 + [("é" * 3,)] * 2)
    c.close()
    r = _append.Reader(str(path))
    (a,), (b,), (c_,), (d,), (e,) = r.fetch("SELECT a FROM t ORDER BY rowid")
    assert a is b is c_ and d is e and d == "ééé"
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.fetch("SELECT 1")


def test_errors(tmp_path):
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (a)")
        c.execute("INSERT INTO t VALUES (CAST(x'ff61' AS TEXT))")   # not UTF-8
    c.close()
    r = _append.Reader(str(path))
    with pytest.raises(UnicodeDecodeError):
        r.fetch("SELECT a FROM t")
    with pytest.raises(_append.ReadError, match="no such column") as e:
        r.fetch("SELECT nope FROM t")
    assert e.value.code == 1
    with pytest.raises(ValueError, match="placeholders"):
        r.fetch("SELECT ?", ())
    with pytest.raises(TypeError, match="unsupported"):
        r.fetch("SELECT ?", ([],))
    with pytest.raises(OverflowError):
        r.fetch("SELECT ?", (2**64,))
    assert r.fetch("SELECT 1") == [(1,)]   # still usable after each
    with pytest.raises(_append.ReadError):
        _append.Reader(str(tmp_path / "missing.db"))


def test_decisions_read_through_scan_equal_fetchall(jdir):
    with Journal.open(jdir, create=True) as j:
        j.append([decision(i, extra={"protocol": "tcp"} if i % 3 else {}) for i in range(2500)])
    with Journal.open(jdir, readonly=True) as j:
        got = list(j.decisions(page=1000))
        r = j.receivers[0]
        want = r.fetchall(f"{DECISION_SELECT} ORDER BY seq")
    assert got == want and len(got) == 2500
    assert got[0][11] is got[3][11]   # the extra texts, shared


def test_damaged_text_is_a_journal_error(jdir):
    with Journal.open(jdir, create=True) as j:
        j.append([decision(i) for i in range(10)])
    path = jdir / "r000001.sgj"
    c = sqlite3.connect(path)
    c.execute("UPDATE entry SET host = CAST(x'ff' AS TEXT) WHERE seq = 4")
    c.commit()
    c.close()
    with Journal.open(jdir, readonly=True) as j, pytest.raises(JournalError, match="r000001.sgj.*column 'host'"):
        list(j.decisions())   # the column named, as sqlite3 names it


def test_a_page_larger_than_the_kept_buffers(tmp_path):
    """A fetch of more values than the Reader keeps between pages (1 << 20) reads whole, and
    the next fetch after it too (its buffers were dropped, not reused freed)."""
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (a, b, c, d)")
        c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", ((i, f"t{i % 7}", b"x", None) for i in range(300_000)))
    c.close()
    r = _append.Reader(str(path))
    for _ in range(2):
        rows = r.fetch("SELECT a, b, c, d FROM t ORDER BY a")
        assert len(rows) == 300_000 and rows[-1] == (299_999, "t0", b"x", None)
    assert r.fetch("SELECT b FROM t WHERE a < ?", (2,)) == [("t0",), ("t1",)]


def test_one_statement_at_a_time_and_no_fetch_while_busy(tmp_path):
    """sqlite3 refuses a second statement; so does the Reader (it ran only the first). A
    fetch started from a finalizer while the Reader builds its tuples, or a close, is
    refused instead of freeing what the running fetch uses (found: a segfault)."""
    import gc

    path = tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (a, b)")
        c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"x{i % 100}") for i in range(200_000)])
    c.close()
    r = _append.Reader(str(path))
    with pytest.raises(ValueError, match="one SQL statement"):
        r.fetch("SELECT 1; SELECT 2")
    assert r.fetch("SELECT 1;  ") == [(1,)]
    refused = []

    class Reenter:
        def __del__(self):
            for call in (lambda: r.fetch("SELECT 2"), r.close):
                try:
                    call()
                except RuntimeError as e:
                    refused.append(str(e))

    def make_garbage():
        a = Reenter()
        a.cycle = a   # freed only by the collector, which runs while fetch allocates
    gc.collect()
    old = gc.get_threshold()
    gc.set_threshold(100)
    try:
        for _ in range(20):
            make_garbage()
        rows = r.fetch("SELECT a, b FROM t ORDER BY a")
    finally:
        gc.set_threshold(*old)
        gc.collect()
    assert rows == [(i, f"x{i % 100}") for i in range(200_000)]
    assert refused and all("in use" in m or "two threads" in m for m in refused), refused
