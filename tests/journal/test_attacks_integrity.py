"""Issue 13, journal side, written as the attacks: a root intruder who holds the journal
directory and the *current* sealing key (seal.key), but not k_0 (kept off the host).

What must hold: they can at most remove a prefix of history, and verify then names it with
its time span; a declared cut (retention) keeps every seal, so verify --key checks every
epoch from 0; an off-host checkpoint catches a journal that no longer holds its head."""

from __future__ import annotations

import json
import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import decision, run_cli
from test_verify import db, make

from sockgate.errors import JournalBusyError, JournalError
from sockgate.journal import Code, Entry, EntryType, Journal, Source
from sockgate.journal import seal as sealing
from sockgate.journal.store import KEY_FILE, Receiver, receiver_name, scan_directory
from sockgate.journal.verify import verify


def wipe_receivers(jdir: Path) -> None:
    for name in os.listdir(jdir):
        if name.startswith("r0"):
            os.unlink(jdir / name)


@contextmanager
def deadline(seconds: int):
    """A hang is a failure, not a stuck test run."""
    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def forge_history(jdir: Path, key_id: str, first_seq: int, prev_hash: bytes, entries: list,
                  number: int = 9, seals: list[tuple] = ()) -> None:
    """The intruder's rewrite: one new receiver starting at first_seq after prev_hash, opening
    with a "retention" cut record that declares exactly that start, then the doctored history,
    sealed with the stolen seal.key (and the key evolved, as the writer would)."""
    from sockgate.journal import _append
    from sockgate.journal.journal import _CODES, _INTERNAL, _OUTCOMES, _SOURCES, _TYPES
    from sockgate.journal.store import dump_extra

    stolen = sealing.read_seal_key(jdir / KEY_FILE)
    r = Receiver.create(jdir / receiver_name(number), number, key_id, first_seq, prev_hash)
    with r.conn:   # optionally: keep copies of the genuine seals
        r.conn.executemany("INSERT INTO seal VALUES (?, ?, ?, ?, ?)", seals)
    cut = Entry(Code.SOCKGATE, EntryType.CUT, entries[0].ts_ns, Source.SOCKGATE, "h",
                extra=dict(receivers=["r000001.sgj"], through_seq=first_seq - 1, hash=prev_hash.hex(),
                           max_age=None, max_size=1))
    app = _append.Appender(str(r.path), "FULL", _CODES, _TYPES, _SOURCES, _OUTCOMES, _INTERNAL, dump_extra)
    app.begin()
    seq, h, _ = app.append([cut, *entries], first_seq - 1, prev_hash, "h", True)
    app.commit()
    app.close()
    ts = entries[-1].ts_ns
    r.insert_seal((stolen.epoch, seq, h, ts, sealing.seal_mac(stolen.key, key_id, stolen.epoch, seq, h, ts)))
    r.close()
    sealing.write_seal_key(jdir / KEY_FILE, sealing.SealKey(key_id, stolen.epoch + 1, sealing.evolve(stolen.key)))


# -- finding 1: a forged cut with only seal.key --------------------------------------------

def test_forged_retention_cut_with_stolen_seal_key_is_caught(jdir):
    key = make(jdir, receivers=3)
    with Journal.open(jdir, readonly=True) as j:
        genuine = list(j.entries())
    victim = genuine[122]   # the entry the intruder wants gone
    wipe_receivers(jdir)
    doctored = [e for e in genuine if e.seq != victim.seq and e.type not in (EntryType.ROTATE,)]
    for e in doctored:
        e.seq = None
    forge_history(jdir, key[0], 2, os.urandom(32), doctored)
    rep = verify(jdir, key)
    assert not rep.ok, "a cut forged with the stolen seal.key passed verify --key"
    assert rep.bad_seq == 1 and "entries 1..1 are missing, and seals 0.." in rep.error, rep.error
    assert "up to the oldest seal left" in rep.error   # the time span of what is gone
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", str(jdir.parent / "vkey"))
    assert code == 1 and "Traceback" not in err


def test_forged_cut_inside_sealed_history_is_caught_even_keeping_the_seals(jdir):
    """Keeping copies of the genuine seals does not help: those after the forged cut point
    vouch for chain hashes the doctored history does not have."""
    key = make(jdir, receivers=3)
    seals = []
    for n, _ in scan_directory(jdir):
        seals += db(jdir, n).execute("SELECT epoch, seq, hash, ts_ns, mac FROM seal ORDER BY epoch").fetchall()
    with Journal.open(jdir, readonly=True) as j:
        genuine = list(j.entries())
    cut_at = seals[1]   # a genuine seal point early on
    rest = [e for e in genuine if e.seq > cut_at[1] and e.seq != 222 and e.type != EntryType.ROTATE]
    for e in rest:
        e.seq = None
    wipe_receivers(jdir)
    forge_history(jdir, key[0], cut_at[1] + 1, bytes(cut_at[2]), rest, seals=seals)
    rep = verify(jdir, key)
    assert not rep.ok and "does not match the chain" in rep.error, rep.error


def test_the_most_a_stolen_key_allows_is_a_visible_prefix_cut(jdir):
    """Cutting exactly at the last seal made before the theft is the intruder's best case:
    verify reports it as a cut, with the authenticated time span of what is gone."""
    key = make(jdir, receivers=3)
    seals = []
    for n, _ in scan_directory(jdir):
        seals += db(jdir, n).execute("SELECT epoch, seq, hash, ts_ns, mac FROM seal ORDER BY epoch").fetchall()
    last = seals[-1]
    wipe_receivers(jdir)
    forge_history(jdir, key[0], last[1] + 1, bytes(last[2]), [decision(999)], seals=seals)
    rep = verify(jdir, key)
    assert rep.ok, rep.error
    assert rep.cut_through == last[1] and rep.cut_span is not None
    assert rep.cut_span[1] == last[3]   # the deleted history was sealed up to this (authenticated) time


def test_retention_keeps_every_seal_so_epoch_0_stays_checkable(jdir):
    key = make(jdir, receivers=3)
    with Journal.open(jdir) as j:
        j.retain(max_size=1)
        j.append([decision(1000)])
    rep = verify(jdir, key)
    assert rep.ok and rep.keyed, rep.error
    assert rep.seals == rep.last_epoch + 1 and rep.cut_span is not None
    # twice over: the first kept receiver's carried seals move on with it
    with Journal.open(jdir) as j:
        j.rotate()
        j.append([decision(1001)])
        j.retain(max_size=1)
    rep = verify(jdir, key)
    assert rep.ok, rep.error
    assert rep.seals == rep.last_epoch + 1


def test_deleting_the_seals_a_cut_kept_is_a_missing_prefix(jdir):
    key = make(jdir, receivers=3)
    with Journal.open(jdir) as j:
        j.retain(max_size=1)
    for n, _ in scan_directory(jdir):
        db(jdir, n).execute("DELETE FROM seal WHERE epoch < 3")
    rep = verify(jdir, key)
    assert not rep.ok and rep.bad_seq == 1 and "and seals 0..2 with them" in rep.error, rep.error


# -- finding 2: seal.key, derived columns, epochs -------------------------------------------

def test_deleting_seal_key_fails_a_keyed_verify(jdir):
    key = make(jdir, receivers=1)
    c = db(jdir, 1)
    c.execute("DELETE FROM entry WHERE seq > 250")          # truncate the tail ...
    c.execute("DELETE FROM seal WHERE seq > 250")
    (jdir / KEY_FILE).unlink()                              # ... and hide it
    rep = verify(jdir, key)
    assert not rep.ok and "sealing key missing" in rep.error, rep.error
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", str(jdir.parent / "vkey"))
    assert code == 1 and "Traceback" not in err


def test_corrupt_seal_key_fails_a_keyed_verify(jdir):
    key = make(jdir, receivers=1)
    (jdir / KEY_FILE).write_bytes(b"garbage")
    rep = verify(jdir, key)
    assert not rep.ok and "corrupt" in rep.error


@pytest.mark.parametrize("column", ["remote_key", "local_key"])
def test_editing_an_address_key_is_caught(jdir, column):
    """The search keys are not hashed: verify recomputes them, so an entry cannot be hidden
    from --remote or `top` by rewriting its key."""
    key = make(jdir, receivers=1)
    db(jdir, 1).execute(f"UPDATE entry SET {column} = ? WHERE seq = 77", (bytes(16),))
    rep = verify(jdir, key)
    assert rep.bad_seq == 77 and column in rep.error, rep.error
    db(jdir, 1).execute(f"UPDATE entry SET {column} = NULL WHERE seq = 78")
    assert verify(jdir, key).bad_seq == 77


def _stamp_epoch(jdir: Path, epoch: int) -> None:
    st = sealing.read_seal_key(jdir / KEY_FILE)
    sealing.write_seal_key(jdir / KEY_FILE, sealing.SealKey(st.journal_id, epoch, st.key))


def test_huge_epoch_in_seal_key_neither_hangs_verify_nor_the_writer(jdir):
    key = make(jdir, receivers=1)
    _stamp_epoch(jdir, 10**15)
    with deadline(20):
        rep = verify(jdir, key)
        assert not rep.ok and "epoch" in rep.error, rep.error
        with pytest.raises(JournalError, match="epoch"):
            Journal.open(jdir)
    _stamp_epoch(jdir, 2**64)   # past what a seal can encode
    with deadline(20):
        assert "corrupt" in verify(jdir, key).error
        with pytest.raises(JournalError, match="corrupt"):
            Journal.open(jdir)


def test_huge_epoch_in_a_seal_row_neither_hangs_verify_nor_the_writer(jdir):
    key = make(jdir, receivers=1)
    db(jdir, 1).execute("UPDATE seal SET epoch = ? WHERE epoch = (SELECT max(epoch) FROM seal)", (10**15,))
    with deadline(20):
        rep = verify(jdir, key)
        assert not rep.ok and "seal" in rep.error, rep.error
        with pytest.raises(JournalError, match="epoch"):
            Journal.open(jdir)
    db(jdir, 1).execute("UPDATE seal SET seq = 'x' WHERE epoch = ?", (10**15,))   # epoch itself is a rowid
    with deadline(20):
        assert "malformed seal" in verify(jdir, key).error
        with pytest.raises(JournalError, match="malformed seal"):
            Journal.open(jdir)


# -- checkpoints ----------------------------------------------------------------------------

def test_checkpoint_catches_truncation_and_replacement(jdir, tmp_path):
    from sockgate.journal.verify import checkpoint

    key = make(jdir, receivers=1)
    cp = checkpoint(jdir)
    assert set(cp) >= {"journal", "epoch", "seq", "hash", "ts_ns", "time"}
    assert verify(jdir, key, checkpoint=cp).ok
    assert verify(jdir, None, checkpoint=cp).ok
    # truncated (entries and the seals that covered them)
    c = db(jdir, 1)
    c.execute("DELETE FROM entry WHERE seq > 260")
    c.execute("DELETE FROM seal WHERE seq > 260")
    rep = verify(jdir, None, checkpoint=cp)
    assert not rep.ok and "checkpoint" in rep.error, rep.error
    # replaced wholesale by a fresh journal
    for name in os.listdir(jdir):
        os.unlink(jdir / name)
    os.rmdir(jdir)
    with Journal.open(jdir) as j:
        j.append(decision(i) for i in range(300))
    rep = verify(jdir, None, checkpoint=cp)
    assert not rep.ok and "checkpoint" in rep.error, rep.error


def test_checkpoint_survives_retention(jdir):
    from sockgate.journal.verify import checkpoint

    key = make(jdir, receivers=3)
    cp = checkpoint(jdir)
    with Journal.open(jdir) as j:
        j.retain(max_size=1)
    assert verify(jdir, key, checkpoint=cp).ok


def test_cli_checkpoint_and_verify_checkpoint(jdir, tmp_path):
    make(jdir, receivers=1)
    code, out, err = run_cli("journal", "checkpoint", "--journal", str(jdir))
    assert code == 0, err
    cp = json.loads(out)
    assert cp["seq"] == 300 and cp["journal"]
    f = tmp_path / "cp.json"
    f.write_text(out)
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--checkpoint", str(f))
    assert code == 0, err
    db(jdir, 1).execute("DELETE FROM seal WHERE seq > 280")
    db(jdir, 1).execute("DELETE FROM entry WHERE seq > 280")
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--checkpoint", str(f))
    assert code == 1 and "checkpoint" in err and "Traceback" not in err
    for hostile in ("{not json", "[" * 100_000, '{"checkpoint": "sgcp1", "epoch": 1e999}', "9" * 5000):
        f.write_text(hostile)
        code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--checkpoint", str(f))
        assert code == 1 and "not a sockgate checkpoint" in err and "Traceback" not in err, err


# -- finding 6, journal side: directory owner and mode, file modes, the key never printed ----

@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])   # writable by others (sockgate.safedir's rule)
def test_precreated_open_directory_is_refused(jdir, mode):
    jdir.mkdir()
    jdir.chmod(mode)
    with pytest.raises(JournalError, match="mode"):
        Journal.open(jdir)
    code, out, err = run_cli("journal", "init", "--journal", str(jdir))
    assert code == 1 and "mode" in err and "Traceback" not in err
    assert os.listdir(jdir) == []


def test_existing_journal_opened_up_is_refused_for_writing(jdir):
    Journal.open(jdir).close()
    jdir.chmod(0o777)
    with pytest.raises(JournalError, match="0777"):
        Journal.open(jdir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_directory_owned_by_another_user_is_refused(jdir):
    jdir.mkdir(mode=0o700)
    os.chown(jdir, 65534, 65534)
    with pytest.raises(JournalError, match="owned by uid 65534"):
        Journal.open(jdir)


def test_every_file_is_private_even_under_umask_000(jdir):
    old = os.umask(0)
    try:
        with Journal.open(jdir) as j:
            j.append([decision(0)])
            j.rotate()
            j.append([decision(1)])
            modes = {n: stat.S_IMODE(os.stat(jdir / n).st_mode) for n in os.listdir(jdir)}
    finally:
        os.umask(old)
    assert modes.pop("verification.key") == 0o400
    assert "r000001.sgj-wal" in modes or "r000002.sgj-wal" in modes
    assert all(m == 0o600 for m in modes.values()), modes


def test_init_key_out_never_prints_the_key(tmp_path):
    key = tmp_path / "usb" / "k"
    key.parent.mkdir()
    code, out, err = run_cli("journal", "init", "--journal", str(tmp_path / "j"), "--key-out", str(key))
    assert code == 0, err
    secret = key.read_text().strip().rsplit(":", 1)[1]
    assert secret not in out and secret not in err
    assert str(key) in out


# -- issue 12 leftover: a busy receiver recognised by SQLite's code --------------------------

def test_busy_receiver_is_recognised_by_sqlite_code(jdir, monkeypatch):
    from sockgate.journal import _append, store

    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 50)
    with Journal.open(jdir) as j:
        j.append([decision(0)])
        other = db(jdir, 1)
        other.execute("BEGIN IMMEDIATE")     # someone else holds the write lock
        try:
            with pytest.raises(JournalBusyError, match="busy|locked"):
                j.append([decision(1)])
        finally:
            other.execute("ROLLBACK")
        assert j.append([decision(2)]) == 2
    assert issubclass(_append.BusyError, _append.WriteError)


def test_address_keys_agree_between_c_and_verify_for_long_scopes(jdir):
    """A scope longer than any address: both sides drop it before anything else."""
    with Journal.open(jdir) as j:
        j.append([decision(0, remote="fe80::1%" + "x" * 80, local_addr="fe80::2%" + "y" * 60)])
    rep = verify(jdir)
    assert rep.ok, rep.error
