"""Exactly once through kill -9 of the collector (mid-segment) and of the shipper, and a
cut (the collector stopped for a while): afterwards every entry in PostgreSQL once, the
chain verified."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg

from .conftest import CLI, Collector, cli_env, run_cli
from sockgate.journal import Journal


def held(db: str) -> tuple[int, int, int]:
    with psycopg.connect(db) as c:
        return c.execute("SELECT count(*), count(DISTINCT (host_id, seq)), coalesce(max(shipped_seq), 0) "
                         "FROM sockgate.entry, (SELECT max(shipped_seq) AS shipped_seq FROM sockgate.host) h"
                         ).fetchone()


def aborted(db: str) -> int:
    with psycopg.connect(db) as c:
        return c.execute("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def shipper_proc(host) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, "fleet", "ship", "--fleet-dir", str(host.fleet_dir),
                             "--journal", str(host.journal_dir)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=open(host.fleet_dir.parent / "shipper.log", "ab"))


def wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_collector_and_shipper_and_cut(db, tmp_path, hosts):
    col = Collector(db, tmp_path / "collector").start()
    h = hosts("web1")
    h.enroll(col)
    stop = threading.Event()
    from .conftest import decision

    def writer():   # the daemon's part: journal and seal, in batches big enough to be slow to ingest
        with Journal.open(h.journal_dir) as j:
            i = 0
            while not stop.is_set():
                j.append([decision(i + k) for k in range(1500)])
                j.seal()
                i += 1500
                time.sleep(0.2)

    w = threading.Thread(target=writer)
    w.start()
    ship = shipper_proc(h)
    kills = 0
    try:
        # kill -9 the collector while segments are in flight, three times
        for _ in range(3):
            wait_for(lambda: held(db)[2] > 0 or False, 30, "shipping to start")
            time.sleep(0.35)
            col.kill()
            kills += 1
            time.sleep(0.3)
            col.start()
        # kill -9 the shipper, start another
        time.sleep(0.5)
        os.kill(ship.pid, signal.SIGKILL)
        ship.wait(10)
        time.sleep(0.5)
        ship = shipper_proc(h)
        # the cut: the collector gone for a while, the host keeps journaling
        col.stop()
        time.sleep(4)
        during = held(db)
        col.start()
        time.sleep(1)
    finally:
        stop.set()
        w.join()
    with Journal.open(h.journal_dir, readonly=True) as j:
        last = j.last_seq
    t_stop = time.monotonic()
    try:
        wait_for(lambda: held(db)[2] == last, 90, f"the collector to catch up to seq {last}")
    finally:
        ship.terminate()
        ship.wait(10)
        col.stop()
    print(f"caught up {time.monotonic() - t_stop:.1f}s after the writer stopped; {last} entries; "
          f"aborted transactions {aborted(db)}")
    total, distinct, shipped = held(db)
    assert total == distinct == shipped == last, (total, distinct, shipped, last)
    assert during[2] < last     # the host went on journaling during the cut, and caught up after
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(col.state))
    assert code == 0, out + err
    assert f"web1: {last} entries (seq 1..{last})" in out
    assert kills == 3
