"""Journal.open / append / entries / last_seq / record: the daemon's API."""

from __future__ import annotations

import os
from pathlib import Path
import stat

import pytest
from conftest import T0, decision

from sockgate.errors import JournalError
from sockgate.journal import Code, Entry, EntryType, Filter, Journal, Outcome, Source


def test_append_assigns_gap_free_seqs_and_reads_back(jdir):
    with Journal.open(jdir, host="h1") as j:
        assert j.last_seq == 0
        es = [decision(i) for i in range(12_345)]
        assert j.append(es) == 12_345
        assert [e.seq for e in es[:3]] == [1, 2, 3]
        assert j.last_seq == 12_345
        back = list(j.entries())
    assert [e.seq for e in back] == list(range(1, 12_346))
    first = back[0]
    assert first.host == "h1" and first.family == "ipv4" and first.remote_addr == "10.1.0.0"
    assert first.to_dict() | {"seq": None, "host": ""} == es[0].to_dict() | {"seq": None, "host": "", "family": "ipv4"}


def test_entries_after_seq_and_filter(jdir):
    with Journal.open(jdir) as j:
        j.append(decision(i, outcome=Outcome.ALLOWED if i % 2 else Outcome.REJECTED) for i in range(100))
        assert [e.seq for e in j.entries(95)] == [96, 97, 98, 99, 100]
        rej = list(j.entries(filter=Filter.build(outcomes=["rejected"], remote=["10.1.0.0/28"])))
        assert [e.seq for e in rej] == [1, 3, 5, 7, 9, 11, 13, 15]


def test_idents_make_reimport_idempotent_across_receivers(jdir):
    def ibmi(n):
        return Entry(Code.SOCKET, EntryType.ACCEPT, T0 + n, Source.IBMI, ident=f"SYS1:{n}")

    with Journal.open(jdir) as j:
        assert j.append([ibmi(1), ibmi(2), ibmi(2)]) == 2
        j.rotate()
        before = j.last_seq
        assert j.append([ibmi(1), ibmi(2), ibmi(3)]) == before + 1
        assert [e.ident for e in j.entries(filter=Filter.build(sources=["ibmi"]))] == ["SYS1:1", "SYS1:2", "SYS1:3"]


def test_atomic_append_is_all_or_nothing(jdir):
    with Journal.open(jdir) as j:
        j.append([decision(0)])
        bad = [decision(1), decision(2), decision(3, remote_port=70000)]
        with pytest.raises(JournalError, match="remote_port"):
            j.append(bad, atomic=True)
        assert j.last_seq == 1
        assert j.append([decision(4)], atomic=True) == 2
        assert [e.seq for e in j.entries()] == [1, 2]


def test_record_sg_entries(jdir):
    with Journal.open(jdir) as j:
        s = j.record(EntryType.POLICY_LOADED, digest="ab" * 32, rules=3)
        g = j.record(EntryType.GAP, dropped=17, after_seq=s)
        e = list(j.entries())[-1]
    assert g == s + 1
    assert e.code == Code.SOCKGATE and e.type == EntryType.GAP and e.source == Source.SOCKGATE
    assert e.extra == {"dropped": 17, "after_seq": s}


def test_readonly_reader_sees_writer_commits(jdir):
    w = Journal.open(jdir)
    w.append([decision(i) for i in range(10)])
    r = Journal.open(jdir, readonly=True)
    assert r.last_seq == 10
    w.append([decision(i) for i in range(10, 15)])
    w.rotate()
    w.append([decision(99)])
    assert r.last_seq == w.last_seq
    assert [e.seq for e in r.entries(9)] == list(range(10, w.last_seq + 1))
    with pytest.raises(JournalError, match="read-only"):
        r.append([decision(1)])
    r.close()
    w.close()


def test_second_writer_is_refused(jdir):
    with Journal.open(jdir):
        with pytest.raises(JournalError, match="another writer"):
            Journal.open(jdir)


def test_unclean_close_is_recorded_as_interrupted(jdir):
    j = Journal.open(jdir)
    j.append([decision(i) for i in range(5)])
    j._release()  # what a crash leaves: no seal, no clean-close mark
    with Journal.open(jdir) as j2:
        last = list(j2.entries())[-1]
        assert last.type == EntryType.INTERRUPTED and last.extra["last_seq"] == 5
    with Journal.open(jdir) as j3:   # closed cleanly this time: no new record
        assert list(j3.entries())[-1].seq == 6


def test_permissions(jdir):
    with Journal.open(jdir) as j:
        j.append([decision(0)])
    assert stat.S_IMODE(os.stat(jdir).st_mode) == 0o700
    for name in os.listdir(jdir):
        mode = stat.S_IMODE(os.stat(jdir / name).st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))


def test_a_group_readable_directory_makes_group_readable_receivers(tmp_path):
    """The console's read-only group (docs/console.md): with the journal directory chgrp'd
    and 0750, every receiver made later (rotation) and journal.json are 0640 in that group,
    their -wal/-shm too (SQLite copies the database's mode and owner), the keys stay root's
    alone; a member of the group (uid and gid 65534 here) reads every entry, before and
    after a rotation. Without the group bit nothing changes (test_permissions)."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="sg-group-", dir="/tmp"))
    try:
        top.chmod(0o755)
        d = top / "journal"
        d.mkdir(mode=0o750)
        os.chown(d, 0, 65534)
        d.chmod(0o750)
        with Journal.open(d) as j:
            j.append([decision(i) for i in range(3)])
            j.rotate()
            j.append([decision(i) for i in range(3, 5)])
            modes = {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in d.iterdir()
                     if p.name.startswith("r0") or p.name == "journal.json"}
            assert len([n for n in modes if n.endswith(".sgj")]) == 2
            assert all(m == (0o640, 65534) for m in modes.values()), modes
            for key in ("seal.key", "verification.key"):
                if (d / key).exists():
                    st = (d / key).stat()
                    assert st.st_mode & 0o077 == 0 and st.st_gid == 0, key
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:   # the group member reads the journal
                try:
                    os.close(r)
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    with Journal.open(d, readonly=True) as rj:
                        os.write(w, str(len(list(rj.entries()))).encode())
                finally:
                    os._exit(0)
            os.close(w)
            got = os.read(r, 100).decode()
            os.close(r)
            os.waitpid(pid, 0)
            assert got == str(j.last_seq), got
    finally:
        shutil.rmtree(top)


def test_receivers_are_created_with_large_pages(jdir):
    """page_size only takes before WAL mode is set: every receiver, also after a rotate."""
    import sqlite3

    from sockgate.journal.store import PAGE_SIZE

    with Journal.open(jdir) as j:
        j.append([decision(0)])
        j.rotate()
        j.append([decision(1)])
    receivers = sorted(jdir.glob("r*.sgj"))
    assert len(receivers) == 2
    for path in receivers:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        finally:
            conn.close()


def test_missing_directory_readonly(tmp_path):
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(tmp_path / "nope", readonly=True)
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(tmp_path / "nope", create=False)


@pytest.mark.parametrize("rare", [1, 10_000])
def test_tail_finds_the_newest_matches_whether_an_outcome_is_rare_or_common(jdir, monkeypatch, rare):
    """tail() walks back from the newest entry, or (an outcome with fewer than RARE entries)
    reads that outcome's index and sorts: the same newest n either way, over receivers."""
    from sockgate.journal import journal

    monkeypatch.setattr(journal, "RARE", rare)
    with Journal.open(jdir) as j:
        for part in range(3):
            j.append([decision(part * 100 + i, outcome=Outcome.FAILED if i % 40 == 7 else Outcome.ALLOWED)
                      for i in range(100)])
            j.rotate()
        for outcomes in (["failed"], ["failed", "allowed"], ["rejected"]):
            f = Filter.build(outcomes=outcomes)
            want = [e.seq for e in j.entries(filter=f)]
            assert [e.seq for e in j.tail(4, filter=f)] == want[-4:]
            assert [e.seq for e in j.tail(1000, filter=f)] == want
