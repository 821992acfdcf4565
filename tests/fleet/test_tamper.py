"""Tampering caught: rows edited or deleted in PostgreSQL (fleet verify names host and
seq), and a host that rewrote its local journal after shipping (refused and flagged)."""

from __future__ import annotations

import json
import sqlite3

import psycopg
import pytest

from .conftest import run_cli
from sockgate.errors import FleetRefused
from sockgate.journal.store import FIELDS, chain_next


def test_database_edits_named_by_host_and_seq(db, collector, hosts):
    names = ("web1", "web2", "web3", "web4")
    for n in names:
        h = hosts(n)
        h.write(400)
        h.enroll(collector)
        h.shipper().ship_once()
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 0, out + err
    with psycopg.connect(db) as c:   # the database's administrator at work
        hid = {n: c.execute("SELECT id FROM sockgate.host WHERE name = %s", (n,)).fetchone()[0] for n in names}
        c.execute("UPDATE sockgate.entry SET remote_addr = '10.9.9.9', remote_inet = '10.9.9.9' "
                  "WHERE host_id = %s AND seq = 42", (hid["web1"],))
        c.execute("DELETE FROM sockgate.entry WHERE host_id = %s AND seq = 77", (hid["web2"],))
        # hide an entry from --remote queries by its search column alone
        c.execute("UPDATE sockgate.entry SET remote_inet = '192.168.0.1' WHERE host_id = %s AND seq = 5",
                  (hid["web4"],))
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False and "web1 at seq 42" in doc["errors"][0]["message"]
    reps = {r["host"]: r for r in doc["hosts"]}
    assert reps["web1"]["bad_seq"] == 42 and "altered" in reps["web1"]["error"]
    assert reps["web2"]["bad_seq"] == 77 and "missing" in reps["web2"]["error"]
    assert reps["web4"]["bad_seq"] == 5 and "remote_inet" in reps["web4"]["error"]
    assert reps["web3"]["ok"] and reps["web3"]["entries"] == 400 and reps["web3"]["keyed"]
    code, out, err = run_cli("fleet", "verify", "--db", db, "--host", "web3")
    assert code == 0 and "not authenticated (no --state)" in out
    # the last verify is what status reports
    code, out, err = run_cli("fleet", "status", "--db", db, "--json")
    st = {r["host"]: r for r in json.loads(out)}
    assert st["web3"]["last_verify"] == "ok" and st["web1"]["last_verify"].startswith("FAILED at seq 42")
    code, out, err = run_cli("fleet", "verify", "--db", db, "--host", "nosuch")
    assert code == 2 or code == 1
    assert "no such enrolled host" in err and "Traceback" not in err


def test_forged_seal_in_database(db, collector, hosts):
    h = hosts("web1")
    h.write(100)
    h.write(100)
    h.enroll(collector)
    h.shipper().ship_once()
    with psycopg.connect(db) as c:
        # an administrator rewrites an entry, its hash and every later hash, and the seals'
        # chain hashes: only the MAC (k_epoch from the key in the collector's state) is out of reach
        rows = c.execute("SELECT seq, " + ",".join(f'"{f}"' for f in FIELDS[1:]) + ", hash FROM sockgate.entry "
                         "ORDER BY seq").fetchall()
        base = bytes(c.execute("SELECT base_hash FROM sockgate.host").fetchone()[0])
        hh = base
        for r in rows:
            vals = list(r[:-1])
            if vals[0] == 50:
                vals[FIELDS.index("program")] = "/usr/bin/innocent"
            hh = chain_next(hh, vals)
            c.execute("UPDATE sockgate.entry SET program = %s, hash = %s WHERE seq = %s",
                      (vals[FIELDS.index("program")], hh, vals[0]))
            c.execute("UPDATE sockgate.seal SET hash = %s WHERE seq = %s", (hh, vals[0]))
        c.execute("UPDATE sockgate.host SET head_hash = %s", (hh,))
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 1 and "forged" in out
    # without the keys, the recomputed chain looks whole: say so
    code, out, err = run_cli("fleet", "verify", "--db", db)
    assert code == 0 and "not authenticated" in out


def rewrite_local(journal_dir, seq: int, program: str) -> None:
    """Root on the host: change an entry in the receiver and recompute every later hash."""
    path = journal_dir / "r000001.sgj"
    c = sqlite3.connect(path)
    with c:
        rows = c.execute("SELECT " + ",".join(FIELDS) + ", hash FROM entry WHERE seq >= ? ORDER BY seq",
                         (seq - 1,)).fetchall()
        h = bytes(rows[0][-1])
        for r in rows[1:]:
            vals = list(r[:-1])
            if vals[0] == seq:
                vals[FIELDS.index("program")] = program
            h = chain_next(h, vals)
            c.execute("UPDATE entry SET program = ?, hash = ? WHERE seq = ?", (vals[FIELDS.index("program")], h, vals[0]))
    c.close()


def test_host_rewrites_history_after_shipping(db, collector, hosts):
    h = hosts("web1")
    h.write(300)
    h.enroll(collector)
    s = h.shipper()
    assert s.ship_once() == 300
    rewrite_local(h.journal_dir, 120, "/usr/bin/innocent")
    h.write(100)                           # journaling goes on, on top of the rewritten chain
    with pytest.raises(FleetRefused, match="rewritten after shipping"):
        s.ship_once()
    with psycopg.connect(db) as c:
        assert c.execute("SELECT count(*) FROM sockgate.entry").fetchone()[0] == 300
        assert c.execute("SELECT program FROM sockgate.entry WHERE seq = 120").fetchone()[0] == "/usr/sbin/nginx"
    with pytest.raises(FleetRefused, match="flagged"):   # and it stays refused
        s.ship_once()
    code, out, err = run_cli("fleet", "status", "--db", db)
    assert code == 0 and "FLAGGED" in out and "rewritten after shipping" in out
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 1 and "web1" in err and "rewritten" in err
