"""Enrolment and shipping into PostgreSQL; fleet verify over the rows."""

from __future__ import annotations

import psycopg

import pytest

from .conftest import run_cli


def count(db: str, host: str | None = None) -> int:
    with psycopg.connect(db) as c:
        if host:
            return c.execute("SELECT count(*) FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
                             "WHERE h.name = %s", (host,)).fetchone()[0]
        return c.execute("SELECT count(*) FROM sockgate.entry").fetchone()[0]


def test_enroll_ship_verify(db, collector, hosts):
    web1 = hosts("web1")
    last = web1.write(500)
    web1.enroll(collector)
    s = web1.shipper()
    assert s.ship_once() == last
    assert count(db, "web1") == last
    # again: nothing new, nothing stored twice
    assert s.ship_once() == last
    assert count(db, "web1") == last
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 0, out + err
    assert f"web1: {last} entries (seq 1..{last})" in out and "authenticated" in out


def test_daemon_shipper_thread_asks_for_seals(db, collector, hosts, tmp_path):
    """What `sockgate run --fleet-dir` starts (fleet.ship.start_shipper), with a live journal
    writer that never seals on its own: the shipper asks it to, and ships."""
    import threading
    import time

    from .conftest import decision
    from sockgate.errors import FleetError
    from sockgate.fleet.ship import start_shipper
    from sockgate.journal import Journal

    h = hosts("web1")
    code, out, err = run_cli("fleet", "enroll", "--server", collector.url, "--token", collector.token(),
                             "--name", "web1", "--fleet-dir", str(h.fleet_dir), "--journal", str(h.journal_dir))
    assert code == 0, err
    assert "enrolled as web1" in out and "move" in out
    assert oct((h.fleet_dir / "client.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FleetError, match="not enrolled"):
        start_shipper(tmp_path / "nowhere", h.journal_dir, threading.Event(), print)
    j = Journal.open(h.journal_dir)
    j.seal_every, j.seal_interval = 10**9, 10**9     # only the shipper's requests seal
    stop = threading.Event()
    logs = []
    t = start_shipper(h.fleet_dir, h.journal_dir, stop, logs.append, request_seal=j.seal, seal_after=0.2)
    try:
        j.append([decision(i) for i in range(250)])
        end = time.monotonic() + 30
        while count(db, "web1") < 251 and time.monotonic() < end:   # 250 + the interrupted/start record
            time.sleep(0.2)
        assert count(db, "web1") == j.last_seq
    finally:
        stop.set()
        t.join(15)
        j.close()
    assert any("shipping" in m for m in logs)
    code, out, err = run_cli("fleet", "ship", "--once", "--fleet-dir", str(h.fleet_dir), "--journal", str(h.journal_dir))
    assert code == 0 and "through seq" in out, err


def test_a_waiting_rejection_is_sealed_and_shipped_at_once(db, collector, hosts):
    """Seal requests are rate-limited (seal_after, here 60 s), except while a rejection waits:
    then one every urgent_seal_after. An allowed entry alone waits; a rejection arrives in
    well under a second, the allowed entries before it with it."""
    import threading
    import time

    from .conftest import decision
    from sockgate.fleet.ship import start_shipper
    from sockgate.journal import Journal, Outcome

    h = hosts("web2")
    h.enroll(collector)
    j = Journal.open(h.journal_dir)
    j.seal_every, j.seal_interval = 10**9, 10**9     # only the shipper's requests seal
    stop = threading.Event()
    t = start_shipper(h.fleet_dir, h.journal_dir, stop, lambda m: None, request_seal=j.seal, seal_after=60)
    try:
        j.append([decision(0, outcome=Outcome.ALLOWED)])  # the first request is at once; then the limit runs
        end = time.monotonic() + 10
        while count(db, "web2") < j.last_seq and time.monotonic() < end:
            time.sleep(0.05)
        shipped = count(db, "web2")
        assert shipped == j.last_seq
        j.append([decision(i, outcome=Outcome.ALLOWED) for i in range(5)])
        time.sleep(1.5)
        assert count(db, "web2") == shipped, "allowed entries alone were sealed before seal_after"
        t0 = time.monotonic()
        j.append([decision(10, outcome=Outcome.REJECTED)])
        while count(db, "web2") < j.last_seq and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        took = time.monotonic() - t0
        assert count(db, "web2") == j.last_seq == shipped + 6
        assert took < 5, f"a rejection took {took:.1f} s to ship"   # typically ~0.3-0.6 s; bench/fleet_alert.py measures
    finally:
        stop.set()
        t.join(15)
        j.close()
