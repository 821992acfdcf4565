"""Sealing and verify: every kind of tampering is found and named by sequence number."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import decision, run_cli

from sockgate.errors import JournalError
from sockgate.journal import EntryType, Journal
from sockgate.journal import seal as sealing
from sockgate.journal.store import canonical
from sockgate.journal.verify import verify

import hashlib


def make(jdir: Path, n: int = 300, receivers: int = 1, seal_every: int = 50) -> tuple[str, bytes]:
    """A closed journal of n decisions over `receivers` receivers; returns the key."""
    with Journal.open(jdir, host="h") as j:
        j.seal_every = seal_every
        per = n // receivers
        for r in range(receivers):
            if r:
                j.rotate()
            j.append(decision(r * per + i) for i in range(per))
    key = sealing.read_verification_key(jdir / "verification.key")
    os.rename(jdir / "verification.key", jdir.parent / "vkey")  # off the host
    return key


def db(jdir: Path, n: int = 1) -> sqlite3.Connection:
    return sqlite3.connect(jdir / f"r{n:06d}.sgj", isolation_level=None)


def bad(jdir: Path, key) -> tuple[int | None, str | None]:
    rep = verify(jdir, key)
    return rep.bad_seq, rep.error


def test_untouched_journal_verifies(jdir):
    key = make(jdir, 300, receivers=3)
    rep = verify(jdir, key)
    assert rep.ok and rep.keyed, rep.error
    assert rep.entries == rep.last_seq == 300 + 2     # two ROTATE records
    assert rep.sealed_through == rep.last_seq and rep.receivers == 3
    assert not rep.warnings


def test_edit_a_field(jdir):
    key = make(jdir)
    db(jdir).execute("UPDATE entry SET remote_addr = '10.9.9.9' WHERE seq = 123")
    assert bad(jdir, key)[0] == 123


def test_edit_a_field_and_recompute_hashes_is_caught_by_the_seal(jdir):
    key = make(jdir, seal_every=50)
    c = db(jdir)
    c.execute("UPDATE entry SET outcome = 'allowed' WHERE seq = 123")
    _rechain(c, 123)
    seq, err = bad(jdir, key)
    assert seq == 101 and "rewritten" in err   # 101..150 is the segment no seal vouches for now


def test_delete_an_entry(jdir):
    key = make(jdir)
    db(jdir).execute("DELETE FROM entry WHERE seq = 77")
    assert bad(jdir, key) == (77, "entry 77 is missing")


def test_insert_an_entry(jdir):
    key = make(jdir)
    c = db(jdir)
    c.execute("UPDATE entry SET seq = -seq WHERE seq > 200")
    c.execute("UPDATE entry SET seq = 1 - seq WHERE seq < 0")          # shift 201.. up by one
    c.execute("UPDATE seal SET seq = seq + 1 WHERE seq > 200")
    c.execute("INSERT INTO entry SELECT 201, ts_ns, code, type, source, host, outcome, rule, uid, user, gid, pid,"
              " program, family, local_addr, local_port, '203.0.113.7', remote_port, extra, ident, local_key,"
              " remote_key, hash FROM entry WHERE seq = 200")
    assert bad(jdir, key)[0] == 201


def test_swap_two_entries(jdir):
    key = make(jdir)
    c = db(jdir)
    c.execute("UPDATE entry SET seq = -1 WHERE seq = 40")
    c.execute("UPDATE entry SET seq = 40 WHERE seq = 41")
    c.execute("UPDATE entry SET seq = 41 WHERE seq = -1")
    assert bad(jdir, key)[0] == 40


def test_truncate_the_tail(jdir):
    key = make(jdir)
    c = db(jdir)
    c.execute("DELETE FROM entry WHERE seq > 280")
    seq, err = bad(jdir, key)
    assert seq == 281 and "cut off" in err
    c.execute("DELETE FROM seal WHERE seq > 280")   # and hide the seals that covered them
    seq, err = bad(jdir, key)
    assert seq == 281 and "truncated" in err


def test_delete_a_middle_receiver(jdir):
    key = make(jdir, 300, receivers=3)
    with Journal.open(jdir, readonly=True) as j:
        second = j.receivers[1].first_seq
    for suffix in ("", "-wal", "-shm"):
        Path(f"{jdir}/r000002.sgj{suffix}").unlink(missing_ok=True)
    seq, err = bad(jdir, key)
    assert seq == second and "without a declared cut" in err


def test_delete_the_oldest_receiver_without_a_cut(jdir):
    key = make(jdir, 300, receivers=3)
    (jdir / "r000001.sgj").unlink()
    seq, err = bad(jdir, key)
    assert seq == 1 and "entries 1..101 are missing" in err and "no declared cut" in err


def test_retention_is_a_declared_sealed_cut(jdir):
    key = make(jdir, 300, receivers=3)
    with Journal.open(jdir) as j:
        first_kept = j.receivers[2].first_seq
        gone = j.retain(max_size=1)          # everything but the attached receiver
    assert gone == ["r000001.sgj", "r000002.sgj"]
    rep = verify(jdir, key)
    assert rep.ok, rep.error
    assert rep.cut_through == first_kept - 1 and rep.first_seq == first_kept
    with Journal.open(jdir, readonly=True) as j:
        cut = [e for e in j.entries() if e.type == EntryType.CUT][0]
    assert cut.extra["through_seq"] == first_kept - 1


def test_forward_security_current_key_cannot_reseal_the_past(jdir):
    """The attacker steals the key file *now* (epoch t), edits an old entry, recomputes
    every hash and re-seals every seal with the key they hold. Still detected."""
    key = make(jdir, seal_every=50)
    state = sealing.read_seal_key(jdir / "seal.key")
    c = db(jdir)
    c.execute("UPDATE entry SET user = 'root', uid = 0 WHERE seq = 60")
    _rechain(c, 60, seals=True)
    for epoch, seq, h, ts in c.execute("SELECT epoch, seq, hash, ts_ns FROM seal WHERE seq >= 60").fetchall():
        mac = sealing.seal_mac(state.key, state.journal_id, epoch, seq, h, ts)
        c.execute("UPDATE seal SET mac = ? WHERE epoch = ?", (mac, epoch))
    seq, err = bad(jdir, key)
    assert seq == 51 and "forged" in err, err
    # Dropping the later seals and sealing once with the stolen epoch does not help either.
    c.execute("DELETE FROM seal WHERE epoch > 0")
    last, h, ts = c.execute("SELECT seq, hash, ts_ns FROM entry ORDER BY seq DESC LIMIT 1").fetchone()
    c.execute("INSERT INTO seal VALUES (?, ?, ?, ?, ?)", (state.epoch, last, h, ts,
              sealing.seal_mac(state.key, state.journal_id, state.epoch, last, h, ts)))
    seq, err = bad(jdir, key)
    assert seq == 51 and "missing" in err, err


def test_key_file_replaced_is_detected(jdir):
    key = make(jdir)
    (jdir / "seal.key").unlink()
    sealing.write_seal_key(jdir / "seal.key", sealing.SealKey(key[0], 2, os.urandom(32)), create=True)
    rep = verify(jdir, key)
    assert not rep.ok and "does not derive" in rep.error


def test_wrong_key_is_a_clear_error(jdir, tmp_path):
    make(jdir)
    other = tmp_path / "other"
    Journal.open(other).close()
    with pytest.raises(JournalError, match="verification key is for journal"):
        verify(jdir, sealing.read_verification_key(other / "verification.key"))


def test_verify_without_key_checks_chain_and_warns(jdir):
    make(jdir)
    rep = verify(jdir, None)
    assert rep.ok and not rep.keyed and any("NOT checked" in w for w in rep.warnings)
    db(jdir).execute("UPDATE entry SET rule = 'x' WHERE seq = 5")
    assert verify(jdir, None).bad_seq == 5


def test_unsealed_tail_is_reported_not_failed(jdir):
    j = Journal.open(jdir)
    j.seal_every = 100
    j.append(decision(i) for i in range(130))
    rep = verify(jdir)
    assert rep.ok and rep.sealed_through == 100
    assert any("30 entries after seq 100 not sealed" in w for w in rep.warnings)
    j.close()
    assert not verify(jdir).warnings[1:]


# -- through the CLI ----------------------------------------------------------------------

def test_cli_verify_exit_codes(jdir, tmp_path):
    make(jdir, receivers=2)
    keyfile = str(jdir.parent / "vkey")
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", keyfile)
    assert code == 0, err
    assert "OK: seals authenticated" in out
    db(jdir, 2).execute("UPDATE entry SET remote_port = 26 WHERE seq = 200")
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", keyfile)
    assert code == 1
    assert "FAILED at seq 200" in err and "Traceback" not in err


def _rechain(c: sqlite3.Connection, start: int, seals: bool = False) -> None:
    """What an attacker with write access does: recompute every hash from `start` on."""
    from sockgate.journal.store import FIELDS

    prev = c.execute("SELECT hash FROM entry WHERE seq = ?", (start - 1,)).fetchone()[0]
    for row in c.execute(f"SELECT {','.join(FIELDS)} FROM entry WHERE seq >= ? ORDER BY seq", (start,)).fetchall():
        prev = hashlib.sha256(prev + canonical(row)).digest()
        c.execute("UPDATE entry SET hash = ? WHERE seq = ?", (prev, row[0]))
    if seals:
        c.execute("UPDATE seal SET hash = (SELECT hash FROM entry WHERE entry.seq = seal.seq)")


def test_format_1_journal_reads_upgrades_and_names_an_unauthenticatable_cut(jdir):
    """A version-1 writer deleted seals with their receivers. Such a journal still reads and
    takes writes (journal.json is upgraded); a cut it made fails verify, saying why."""
    import json

    key = make(jdir, 300, receivers=3)
    with Journal.open(jdir) as j:
        first_kept = j.receivers[2].first_seq
        j.retain(max_size=1)
    c = db(jdir, 3)
    c.execute("DELETE FROM seal WHERE seq < ?", (first_kept,))      # what a version-1 retain left
    c.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
    meta = json.loads((jdir / "journal.json").read_text())
    (jdir / "journal.json").write_text(json.dumps({**meta, "version": 1}))
    with Journal.open(jdir, readonly=True) as j:
        assert j.last_seq == 303 and len(list(j.entries())) == 303 - first_kept + 1
    seq, err = bad(jdir, key)
    assert seq == 1 and "format-1 writer" in err
    with Journal.open(jdir) as j:
        j.append([decision(999)])
    assert json.loads((jdir / "journal.json").read_text())["version"] == 2


def test_verify_json_reports_the_cut_span(jdir):
    import json

    make(jdir, 300, receivers=3)
    with Journal.open(jdir) as j:
        j.retain(max_size=1)
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", str(jdir.parent / "vkey"), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["ok"] and rep["cut_through"] == 202 and len(rep["cut_span"]) == 2
    code, out, err = run_cli("journal", "verify", "--journal", str(jdir), "--key", str(jdir.parent / "vkey"))
    assert code == 0 and "entries 1..202, sealed from " in out
