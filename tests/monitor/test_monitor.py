"""The monitor end to end: journal → state → channels, with outages, restarts and
SIGKILL, counted at real receivers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sockgate.journal import Journal
from sockgate.monitor import Monitor, load_rules, replay
from sockgate.monitor.state import StateError

from .conftest import HTTPReceiver, S, SyslogReceiver, T0, entry, wait_for

SRC = str(Path(__file__).resolve().parents[2] / "src")


def write_rules(tmp_path: Path, url: str, extra: str = "", start: str = "beginning") -> Path:
    p = tmp_path / "alerts.toml"
    p.write_text(f"""
[monitor]
start = "{start}"
channels = ["hook"]
storm = 0   # these tests count deliveries against replay(), which has no wall clock
[channel.hook]
type = "webhook"
url = "{url}"
timeout = "2s"
retry_initial = "50ms"
retry_max = "200ms"

[[alert]]
name = "rejected"
suppress = 0
match = {{ outcome = "rejected" }}
message = "{{user}} refused {{remote}}"

[[alert]]
name = "burst"
kind = "threshold"
count = 5
window = "1h"
group_by = ["remote_addr"]
suppress = 0
match = {{ type = "A", outcome = "rejected" }}
{extra}
""")
    return p


def batch(n: int, start: int = 0) -> list:
    rnd = random.Random(start)
    out = []
    for i in range(start, start + n):
        out.append(entry(rnd.choice("AC"), rnd.choice(["rejected", "allowed"]), ts=i,
                         user=f"u{i % 7}", remote_addr=f"10.0.0.{i % 4}", remote_port=1000 + i))
    return out


@pytest.fixture
def journal(tmp_path):
    j = Journal.open(tmp_path / "journal")
    yield j
    j.close()


def expected_ids(rules: Path, j: Journal) -> list[str]:
    return [a.id for a in replay(load_rules(str(rules)), j.entries(0))]


def test_step_delivers_each_alert_once(tmp_path, journal, http_receiver):
    rules = write_rules(tmp_path, http_receiver.url)
    journal.append(batch(50))
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        n = m.step()
        assert n == len(expected_ids(rules, journal)) > 0
        assert http_receiver.ids() == expected_ids(rules, journal)
        assert m.step() == 0
        journal.append(batch(10, start=50))
        m.step()
    assert http_receiver.ids() == expected_ids(rules, journal)
    # a restart neither repeats nor misses
    journal.append(batch(10, start=60))
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        m.step()
    ids = http_receiver.ids()
    assert ids == expected_ids(rules, journal) and len(set(ids)) == len(ids)
    h = {k.lower(): v for k, v in http_receiver.headers[0].items()}
    assert h["idempotency-key"] == ids[0]


def test_channel_down_then_back_gets_everything_once(tmp_path, journal):
    rec = HTTPReceiver()    # not started: the channel is down
    rules = write_rules(tmp_path, rec.url)
    journal.append(batch(30))
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        raised = m.step()
        assert raised > 0 and m.delivered == 0
        q = m.state.queue_sizes()["hook"]
        assert q[0] == raised and "ConnectError" in q[2]
        journal.append(batch(20, start=30))
        for _ in range(5):       # still down: retried with backoff, nothing lost
            m.step()
            time.sleep(0.05)
        rec.start()
        try:
            assert wait_for(lambda: (m.step(), m.state.queue_sizes().get("hook") is None)[1], timeout=10)
            ids = rec.ids()
            assert ids == expected_ids(rules, journal) and len(set(ids)) == len(ids)
            # goes down again mid-stream, comes back on another restart of the monitor
            rec.stop()
            journal.append(batch(20, start=50))
            m.step()
        finally:
            rec.stop()
    rec.start()
    try:
        with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
            assert wait_for(lambda: (m.step(), m.state.queue_sizes().get("hook") is None)[1], timeout=10)
        ids = rec.ids()
        assert ids == expected_ids(rules, journal) and len(set(ids)) == len(ids)
    finally:
        rec.stop()


def test_syslog_tcp_outage(tmp_path, journal):
    rec = SyslogReceiver("tcp")
    p = tmp_path / "alerts.toml"
    p.write_text(f"""
[monitor]
start = "beginning"
[channel.log]
type = "syslog"
url = "tcp://127.0.0.1:{rec.port}"
timeout = "1s"
retry_initial = "20ms"
retry_max = "50ms"
[[alert]]
name = "any"
channels = ["log"]
suppress = 0
match = {{ outcome = "rejected" }}
""")
    journal.append(batch(20))
    with Monitor.open(p, journal.directory, tmp_path / "state") as m:
        n = m.step()
        rec.start()
        try:
            assert wait_for(lambda: (m.step(), len(rec.messages) >= n)[1])
            time.sleep(0.1)
            m.step()
            ids = [msg.split(b' id="')[1].split(b'"')[0].decode() for msg in rec.messages]
            assert sorted(ids) == sorted(expected_ids(p, journal)) and len(ids) == n
        finally:
            rec.stop()


def test_permanent_failure_is_kept_dead_and_queue_moves_on(tmp_path, journal, http_receiver):
    rules = write_rules(tmp_path, http_receiver.url)
    journal.append(batch(10))
    http_receiver.status = 400
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        raised = m.step()
        assert m.state.dead_count() == raised and m.state.queue_sizes() == {}
        http_receiver.status = 200
        journal.append(batch(10, start=10))
        m.step()
    assert len(http_receiver.ids()) > 0


def test_repeat_summary_by_wall_clock_survives_restart(tmp_path, journal, http_receiver):
    p = tmp_path / "alerts.toml"
    p.write_text(f"""
[monitor]
start = "beginning"
[channel.hook]
type = "webhook"
url = "{http_receiver.url}"
[[alert]]
name = "svc"
channels = ["hook"]
suppress = "1m"
dedup_by = ["user"]
match = {{ type = "C", outcome = "rejected" }}
""")
    journal.append([entry("C", ts=i, user="svc") for i in range(10)])
    now = [T0 + 20 * S]
    with Monitor.open(p, journal.directory, tmp_path / "state", clock=lambda: now[0]) as m:
        assert m.step() == 1
    now[0] = T0 + 61 * S    # the window (opened at T0) ended: the 9 repeats are reported
    with Monitor.open(p, journal.directory, tmp_path / "state", clock=lambda: now[0]) as m:
        assert m.step() == 1
        assert m.step() == 0
    bodies = http_receiver.bodies
    assert [b["id"] for b in bodies] == ["svc/1", "svc/1/repeat/1"]
    assert bodies[1]["count"] == 9 and bodies[1]["repeat"] is True


def test_start_end_learns_baseline_from_journal(tmp_path, journal, http_receiver):
    extra = """
[[alert]]
name = "new-port"
kind = "first_seen"
key = ["program", "local_port"]
match = { type = "L" }
"""
    rules = write_rules(tmp_path, http_receiver.url, extra, start="end")
    journal.append(batch(20) + [entry("L", "allowed", ts=30, program="/usr/sbin/sshd", local_port=22)])
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        assert m.step() == 0       # history is baseline, not news
        journal.append([entry("L", "allowed", ts=40, program="/usr/sbin/sshd", local_port=22),
                        entry("L", "allowed", ts=41, program="/usr/bin/nc", local_port=4444)])
        assert m.step() == 1
    assert http_receiver.ids() == [f"new-port/{journal.last_seq}"]
    # a first_seen rule added later learns its baseline from the journal, too
    rules2 = write_rules(tmp_path, http_receiver.url, extra.replace("new-port", "new-port-2"), start="end")
    with Monitor.open(rules2, journal.directory, tmp_path / "state") as m:
        assert m.step() == 0


def test_second_monitor_on_same_state_is_refused(tmp_path, journal, http_receiver):
    rules = write_rules(tmp_path, http_receiver.url)
    with Monitor.open(rules, journal.directory, tmp_path / "state"):
        with pytest.raises(StateError, match="another monitor"):
            Monitor.open(rules, journal.directory, tmp_path / "state")


def test_run_follows_until_stopped(tmp_path, journal, http_receiver):
    rules = write_rules(tmp_path, http_receiver.url)
    stop = threading.Event()
    with Monitor.open(rules, journal.directory, tmp_path / "state") as m:
        t = threading.Thread(target=m.run, args=(stop,), kwargs={"poll_interval": 0.02})
        t.start()
        try:
            journal.append(batch(15))
            assert wait_for(lambda: http_receiver.ids() == expected_ids(rules, journal))
        finally:
            stop.set()
            t.join(5)
        assert not t.is_alive()


MONITOR_PROC = """
import sys, threading
from sockgate.monitor import Monitor
m = Monitor.open(sys.argv[1], sys.argv[2], sys.argv[3], batch=7)
m.run(threading.Event(), poll_interval=0.01)
"""


def test_sigkill_mid_stream_no_duplicates_no_misses(tmp_path, journal, http_receiver):
    """A real monitor process is SIGKILLed repeatedly while the journal grows; every alert
    reaches the receiver. Duplicates are possible only for a message that was delivered
    in the instant before the kill (at-least-once at the transport boundary): at most one
    per kill, and the idempotency key identifies them."""
    rules = write_rules(tmp_path, http_receiver.url)
    env = dict(os.environ, PYTHONPATH=SRC)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", MONITOR_PROC, str(rules), str(journal.directory),
                                 str(tmp_path / "state")], env=env, stderr=subprocess.DEVNULL)

    rnd = random.Random(7)
    kills = 0
    written = 0
    behind: list[int] = []   # alerts not yet delivered at each kill
    proc = spawn()
    try:
        for round_ in range(6):
            for _ in range(4):
                journal.append(batch(25, start=written))
                written += 25
                time.sleep(rnd.uniform(0.0, 0.08))
            # kill while it is working (entries pending or being delivered)
            time.sleep(rnd.uniform(0.05, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            behind.append(len(expected_ids(rules, journal)) - len(set(http_receiver.ids())))
            proc = spawn()
        want = expected_ids(rules, journal)
        assert wait_for(lambda: set(http_receiver.ids()) >= set(want), timeout=30)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.kill()
        proc.wait()
    got = http_receiver.ids()
    print("undelivered at each kill:", behind, "duplicates:", len(got) - len(set(got)))
    assert any(b > 0 for b in behind), "no kill landed mid-stream"
    assert set(got) == set(want), "missed or invented alerts"
    dups = len(got) - len(set(got))
    assert dups <= kills
    # the engine side is exact: ids are deterministic, each raised once (in journal order per channel)
    firsts = list(dict.fromkeys(got))
    assert firsts == want


def test_unusable_channel_file_is_a_rules_error(tmp_path, journal):
    from sockgate.errors import RulesErrors
    p = tmp_path / "alerts.toml"
    p.write_text('[channel.log]\ntype = "syslog"\nurl = "tls://127.0.0.1:6514"\nca_file = "/nonexistent/ca.pem"\n'
                 '[[alert]]\nname = "a"\nchannels = ["log"]\n')
    with pytest.raises(RulesErrors) as ei:
        Monitor.open(p, journal.directory, tmp_path / "state")
    assert str(ei.value).startswith(f"{p}:1: channel 'log': ") and "/nonexistent/ca.pem" in str(ei.value)
    assert not (tmp_path / "state").exists()
