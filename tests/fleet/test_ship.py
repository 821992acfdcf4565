"""Enrolment and shipping into PostgreSQL; fleet verify over the rows."""

from __future__ import annotations

import psycopg

from conftest import run_cli


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
