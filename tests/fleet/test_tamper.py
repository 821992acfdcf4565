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


def _count(db: str, name: str) -> int:
    with psycopg.connect(db) as c:
        return c.execute("SELECT count(*) FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
                         "WHERE h.name = %s", (name,)).fetchone()[0]


def test_fleet_retain_drops_old_days_with_a_cut_per_host_and_verify_holds(db, collector, hosts):
    """`fleet retain --max-age 2d`: the day partitions older than two days go, each host with
    rows there gets a cut at the first seal at or past its last seq in them (web1's segment
    runs from 10 days ago into today: its rows up to that seal in today's partition go too),
    a host with only recent rows keeps everything, `fleet verify` (seal MACs too) holds, and
    the host goes on shipping after its cut. --dry-run changes nothing; a second run finds
    nothing to drop."""
    import time

    now = time.time_ns()
    web1, web2 = hosts("web1"), hosts("web2")
    web1.write(100, seal=False, ts_ns=now - 10 * 86400 * 10**9)
    web1.write(50, ts_ns=now - 9 * 86400 * 10**9)           # sealed: the seal's segment ends today
    web1.write(30)
    web2.write(40)
    for h in (web1, web2):
        h.enroll(collector)
        h.shipper().ship_once()
    before = (_count(db, "web1"), _count(db, "web2"))
    code, out, err = run_cli("fleet", "retain", "--max-age", "2d", "--dry-run", "--db", db, "--json")
    assert code == 0, err
    dry = json.loads(out)
    assert dry["dry_run"] and len(dry["partitions"]) == 2 and [c["host"] for c in dry["cuts"]] == ["web1"]
    assert (_count(db, "web1"), _count(db, "web2")) == before
    code, out, err = run_cli("fleet", "retain", "--max-age", "2d", "--db", db, "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["partitions"] == dry["partitions"] and done["cuts"] == dry["cuts"]
    cut = done["cuts"][0]["through_seq"]
    with psycopg.connect(db) as c:
        left = c.execute("SELECT min(seq) FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
                         "WHERE h.name = 'web1'").fetchone()[0]
        assert c.execute("SELECT count(*) FROM sockgate.entry WHERE ts_ns < %s",
                         (now - 2 * 86400 * 10**9,)).fetchone()[0] == 0
    assert left == cut + 1 and _count(db, "web2") == before[1]
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 0, out + err
    web1.write(20)
    assert web1.shipper().ship_once() == _last(web1)
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state), "--json")
    assert code == 0, out + err
    code, out, err = run_cli("fleet", "retain", "--max-age", "2d", "--db", db)
    assert code == 0 and "dropped 0 day partition(s)" in out
    code, out, err = run_cli("fleet", "retain", "--max-age", "soon", "--db", db)
    assert code == 2 and "--max-age" in err and "Traceback" not in err


def _last(h) -> int:
    from sockgate.journal import Journal

    with Journal.open(h.journal_dir, readonly=True) as j:
        return j.last_seq
