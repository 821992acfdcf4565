"""`sockgate monitor --store`: the alert monitor over every host's entries in PostgreSQL.

Real parts only: PostgreSQL (pgserver), the real collector subprocess, real journals shipped by
the real shipper, the monitor as a `sockgate monitor --store` subprocess (kill -9 is real), and
the monitor tests' real HTTP webhook receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from .conftest import CLI, Proc, cli_env, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor.conftest import HTTPReceiver, wait_for  # noqa: E402

REMOTE = "203.0.113.9"


def rules(tmp_path: Path, url: str, body: str) -> Path:
    f = tmp_path / "alerts.toml"
    f.write_text(f"""
[monitor]
start = "beginning"
channels = ["hook"]
storm = 0

[channel.hook]
type = "webhook"
url = "{url}"
retry_initial = "100ms"
retry_max = "200ms"
{body}
""")
    return f


THRESHOLD = """
[[alert]]
name = "remote-refused-fleetwide"
kind = "threshold"
match = { type = "connect", outcome = "rejected" }
group_by = ["remote_addr"]
count = 6
window = "1m"
suppress = "10m"
message = "{remote_addr} refused {count} times across the fleet (last on {extra.fleet_host})"
"""

EVERY = """
[[alert]]
name = "every-reject"
kind = "every"
match = { outcome = "rejected" }
suppress = "0"
message = "{extra.fleet_host} seq {seq}"
"""


class MonitorProc(Proc):
    """`sockgate monitor --store DB` in a subprocess; kill() is kill -9."""

    def __init__(self, db: str, rules_file: Path, log: Path, poll: str = "30"):
        self.args = [sys.executable, "-c", CLI, "monitor", "--store", db, "--rules", str(rules_file), "--poll", poll]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "MonitorProc":
        f = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=f, stderr=f, env=cli_env())
        f.close()
        if wait:
            assert wait_for(lambda: b"monitor: following" in self.log.read_bytes() or self.proc.poll() is not None,
                            30), self.log.read_text()[-2000:]
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
        return self


@pytest.fixture
def receiver():
    r = HTTPReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def monitors():
    made: list[MonitorProc] = []

    def make(*a, **kw) -> MonitorProc:
        m = MonitorProc(*a, **kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.stop()


def test_threshold_across_hosts_woken_by_notify(db, collector, hosts, receiver, monitors, tmp_path):
    """One remote refused once on each of 6 hosts → exactly one alert with count 6, naming a
    host; the last host's segment reaches the webhook through NOTIFY, well before the 30 s poll."""
    fleet = []
    for i in range(6):
        h = hosts(f"web{i}")
        h.enroll(collector)
        fleet.append((h, h.shipper()))
    m = monitors(db, rules(tmp_path, receiver.url, THRESHOLD), tmp_path / "monitor.log").start()
    time.sleep(1.0)   # the first step ran (nothing yet); from now on it sleeps on LISTEN (poll 30 s)
    for h, s in fleet[:5]:
        h.write(1, remote=REMOTE)
        s.ship_once()
    time.sleep(1.0)
    assert receiver.ids() == []          # 5 of 6: nothing yet
    h, s = fleet[5]
    h.write(1, remote=REMOTE)
    t0 = time.monotonic()
    s.ship_once()                        # the collector's own insert path (segment transaction + NOTIFY)
    assert wait_for(lambda: receiver.ids(), 10), (tmp_path / "monitor.log").read_text()[-2000:]
    latency = time.monotonic() - t0
    assert latency < 5.0, latency        # the poll is 30 s: this was the NOTIFY
    time.sleep(1.0)
    assert len(receiver.bodies) == 1, receiver.ids()
    a = receiver.bodies[0]
    assert a["kind"] == "threshold" and a["count"] == 6 and a["group"] == {"remote_addr": REMOTE}
    assert a["monitor_host"] == "fleet"
    assert a["entry"]["extra"]["fleet_host"] == "web5" and a["id"] == "remote-refused-fleetwide/web5:1"
    assert f"{REMOTE} refused 6 times across the fleet (last on web5)" == a["message"]
    # the state is in PostgreSQL: cursor per host, outbox drained
    with psycopg.connect(db) as c:
        cur = c.execute("SELECT value FROM sockgate_monitor.meta WHERE key = 'cursor'").fetchone()[0]
        assert c.execute("SELECT count(*) FROM sockgate_monitor.outbox").fetchone()[0] == 0
        held = dict(c.execute("SELECT id::text, shipped_seq FROM sockgate.host").fetchall())
    assert json.loads(cur) == held and len(held) == 6


def test_threshold_over_distinct_hosts(db, collector, hosts, receiver, monitors, tmp_path):
    """`distinct = "extra.fleet_host"` (the enrolled, authenticated name): one host refusing
    the remote 5 times does not fire; 3 distinct hosts do, once, listing the hosts."""
    rule = THRESHOLD.replace("count = 6", 'count = 3\ndistinct = "extra.fleet_host"')
    fleet = []
    for i in range(3):
        h = hosts(f"db{i}")
        h.enroll(collector)
        fleet.append((h, h.shipper()))
    monitors(db, rules(tmp_path, receiver.url, rule), tmp_path / "monitor.log", poll="1").start()
    h, s = fleet[0]
    h.write(5, remote=REMOTE)
    s.ship_once()
    time.sleep(2.0)
    assert receiver.ids() == []              # 5 refusals, one host
    for h, s in fleet[1:]:
        h.write(1, remote=REMOTE)
        s.ship_once()
    assert wait_for(lambda: receiver.ids(), 10), (tmp_path / "monitor.log").read_text()[-2000:]
    time.sleep(1.0)
    assert len(receiver.bodies) == 1, receiver.ids()
    a = receiver.bodies[0]
    assert a["count"] == 3 and a["distinct"] == {"field": "extra.fleet_host", "values": ["db0", "db1", "db2"]}


def test_exactly_once_across_kill9(db, collector, hosts, receiver, monitors, tmp_path):
    """Three hosts' 1,200 rejections; the monitor is killed (-9) as it starts its first batch
    and five times while it delivers; after the last restart every alert has arrived, each id at most once more
    than once per kill (the send that the killed process could not mark delivered), and the
    outbox is empty."""
    for i in range(3):
        h = hosts(f"db{i}")
        h.enroll(collector)
        h.write(400)
        h.shipper().ship_once()
    with psycopg.connect(db) as c:
        expected = {f"every-reject/{n}:{seq}" for n, seq in c.execute(
            "SELECT h.name, e.seq FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
            "WHERE e.outcome = 'rejected'")}
    assert len(expected) == 1200
    f = rules(tmp_path, receiver.url, EVERY)
    log = tmp_path / "monitor.log"
    # first kill: as the run loop starts its first step (reading and evaluating the batch,
    # before its transaction commits): nothing of it may count
    m = monitors(db, f, log, poll="0.5").start()
    m.kill()
    kills = 1
    for target in (50, 250, 500, 800, 1000):
        m = monitors(db, f, log, poll="0.5").start(wait=False)
        assert wait_for(lambda: len(set(receiver.ids())) >= target or m.proc.poll() is not None, 60), \
            log.read_text()[-2000:]
        assert m.proc.poll() is None, log.read_text()[-2000:]
        m.kill()
        kills += 1
    m = monitors(db, f, log, poll="0.5").start()
    assert wait_for(lambda: set(receiver.ids()) >= expected, 60), (len(set(receiver.ids())), log.read_text()[-2000:])
    time.sleep(1.0)
    got = receiver.ids()
    assert set(got) == expected
    assert len(got) - len(expected) <= kills, len(got) - len(expected)
    with psycopg.connect(db) as c:
        assert c.execute("SELECT count(*) FROM sockgate_monitor.outbox").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM sockgate_monitor.dead").fetchone()[0] == 0


def test_second_monitor_refused(db, collector, receiver, monitors, tmp_path):
    f = rules(tmp_path, receiver.url, EVERY)
    monitors(db, f, tmp_path / "m1.log").start()
    code, out, err = run_cli("monitor", "--store", db, "--rules", str(f), "--once", timeout=60)
    assert code == 1, err
    assert "another fleet monitor is running on this database" in err and "Traceback" not in err


def test_bad_store_and_usage(db, receiver, tmp_path):
    f = rules(tmp_path, receiver.url, EVERY)
    code, out, err = run_cli("monitor", "--store", "mysql://x", "--rules", str(f), "--once")
    assert code == 2 and "expected a postgresql://... URL" in err and "Traceback" not in err
    code, out, err = run_cli("monitor", "--store", "postgresql://127.0.0.1:1/none", "--rules", str(f), "--once")
    assert code == 1 and "cannot connect to the fleet database" in err and "Traceback" not in err
    code, out, err = run_cli("monitor", "--store", "postgresql://[bad", "--rules", str(f), "--once")
    assert code in (1, 2) and "Traceback" not in err and err.strip(), err
    code, out, err = run_cli("monitor", "--store", db, "--journal", str(tmp_path), "--rules", str(f), "--once")
    assert code == 2 and "--store and --journal are exclusive" in err
    # --once over an empty fleet: runs, raises nothing
    code, out, err = run_cli("monitor", "--store", db, "--rules", str(f), "--once")
    assert code == 0 and "0 alerts raised" in err, err


FIRST_SEEN = """
[[alert]]
name = "new-program"
kind = "first_seen"
match = { type = "connect" }
key = ["program"]
message = "{program} connects for the first time (on {extra.fleet_host})"
"""


def test_start_end_learns_the_fleet_and_resumes(db, collector, hosts, receiver, tmp_path):
    """start = "end": what the fleet holds is the baseline (learned from every host up to its
    shipped seq), not news; a program new to the whole fleet alerts once; a reopened monitor
    (the state and the first_seen baseline from PostgreSQL) does not alert it again."""
    from sockgate.fleet.monitor import open_fleet_monitor

    f = rules(tmp_path, receiver.url, FIRST_SEEN)
    f.write_text(f.read_text().replace('start = "beginning"', 'start = "end"'))
    a, b = hosts("a"), hosts("b")
    for h in (a, b):
        h.enroll(collector)
        h.write(20)
        h.shipper().ship_once()
    with open_fleet_monitor(str(f), db) as m:
        assert m.step() == 0                       # the baseline: /usr/sbin/nginx on both
        b.write(1, program="/usr/bin/nc")
        b.write(1)
        b.shipper().ship_once()
        assert m.step() == 1
        assert receiver.ids() == [f"new-program/b:{b.n - 1}"]   # b's entry seqs are 1..b.n
    a.write(1, program="/usr/bin/nc")                # known to the fleet now: no alert
    a.shipper().ship_once()
    with open_fleet_monitor(str(f), db) as m:
        assert m.step() == 0
    assert len(receiver.bodies) == 1
    assert receiver.bodies[0]["message"] == "/usr/bin/nc connects for the first time (on b)"
