"""The metrics endpoint without the kernel: a real journal on disk, a real monitor state.db,
the daemon's kind of write queue, served over TCP and a unix socket and read back with
prometheus_client's own parser. (The kernel half: tests/kernel/test_daemon.py.)"""

from __future__ import annotations

import http.client
import os
import queue
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from sockgate.errors import MetricsError, UsageError  # noqa: E402
from sockgate.journal import EntryType, Journal  # noqa: E402
from sockgate.metrics import Address, DaemonCollector, Endpoint, parse_address  # noqa: E402
from sockgate.monitor.engine import Alert, Engine  # noqa: E402
from sockgate.monitor.model import RuleSet  # noqa: E402
from sockgate.monitor.state import State  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from exposition text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def scrape_unix(path: str) -> str:
    c = _UnixHTTP(path)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert r.status == 200
        return r.read().decode()
    finally:
        c.close()


# -- addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:9477", Address(host="127.0.0.1", port=9477)),
    ("127.1.2.3:1", Address(host="127.1.2.3", port=1)),
    ("localhost:9477", Address(host="127.0.0.1", port=9477)),
    ("[::1]:9477", Address(host="::1", port=9477)),
    ("unix:/run/sockgate/metrics.sock", Address(path="/run/sockgate/metrics.sock")),
])
def test_loopback_and_unix_addresses_are_accepted(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text, says", [
    ("0.0.0.0:9477", "not a loopback address"),
    ("10.1.2.3:9477", "not a loopback address"),
    ("[::]:9477", "not a loopback address"),
    ("[::ffff:10.0.0.1]:9477", "not a loopback address"),
    ("metrics.example.org:9477", "not an IP address"),
    ("127.0.0.1", "expected ADDRESS:PORT"),
    ("127.0.0.1:0", "expected ADDRESS:PORT"),
    ("127.0.0.1:70000", "expected ADDRESS:PORT"),
    ("unix:metrics.sock", "must be absolute"),
])
def test_anything_else_is_refused_with_the_reason(text, says):
    with pytest.raises(UsageError) as ei:
        parse_address(text)
    assert says in str(ei.value) and text in str(ei.value)


# -- the collector over a real journal and a real monitor state ------------------------------------

@pytest.fixture
def journal(tmp_path):
    j = Journal.open(tmp_path / "journal")
    yield j
    j.close()


@pytest.fixture
def monitor_state(tmp_path):
    """A monitor state.db with two alerts queued for `hook` (one failed twice) and one dead."""
    d = tmp_path / "monitor"
    st = State.open(d)
    engine = Engine(RuleSet(path="alerts.toml"), "host")
    alerts = [Alert(f"a{i}", "r", ("hook",), {"n": i}) for i in range(3)]
    st.commit(engine, alerts, now_ns=1)
    (first, *_), *_ = st.due("hook", 10)
    st.failed(first, 2, 0, "connection refused")
    st.kill(st.due("hook", 10)[-1][0], "HTTP 400", 5)
    yield d
    st.close()


def test_journal_and_monitor_metrics_at_scrape_time(journal, monitor_state):
    writes: queue.Queue = queue.Queue(maxsize=64)
    endpoint = Endpoint.bind(f"127.0.0.1:{free_port()}")
    try:
        endpoint.serve(DaemonCollector(journal=journal, writes=writes, monitor_state=monitor_state,
                                       channels=["hook", "syslog"], monitor_alive=lambda: True))
        url = f"http://{endpoint.address}/metrics"

        def scrape() -> dict:
            with urllib.request.urlopen(url, timeout=5) as r:
                return samples(r.read().decode())

        journal.record(EntryType.DAEMON_START, pid=1)
        journal.seal()
        time.sleep(0.05)
        for i in range(3):
            journal.record(EntryType.POLICY_LOADED, generation=i)
        writes.put(None)
        writes.put(None)
        m = scrape()
        head, sealed, _ = journal.seal_state()
        assert m[("sockgate_journal_last_seq", ())] == head == sealed + 3
        assert m[("sockgate_journal_unsealed_entries", ())] == 3
        assert 0.05 <= m[("sockgate_journal_last_seal_age_seconds", ())] < 30
        assert m[("sockgate_journal_queue_depth", ())] == 2
        assert m[("sockgate_monitor_up", ())] == 1
        assert m[("sockgate_monitor_outbox", (("channel", "hook"),))] == 2
        assert m[("sockgate_monitor_outbox", (("channel", "syslog"),))] == 0  # configured, nothing queued
        assert m[("sockgate_monitor_outbox_attempts_max", (("channel", "hook"),))] == 2
        assert m[("sockgate_monitor_dead_alerts", ())] == 1
        assert not [k for k in m if k[0].startswith(("sockgate_decisions", "sockgate_program"))]  # no gate, none

        journal.seal()  # read live: the next scrape sees it
        writes.get()
        m = scrape()
        assert m[("sockgate_journal_unsealed_entries", ())] == 0
        assert m[("sockgate_journal_last_seal_age_seconds", ())] < 0.05 + 1
        assert m[("sockgate_journal_queue_depth", ())] == 1
    finally:
        endpoint.close()


def test_a_journal_never_sealed_has_no_seal_age_and_a_missing_monitor_state_only_up(tmp_path, journal):
    c = DaemonCollector(journal=journal, monitor_state=tmp_path / "not-yet", monitor_alive=lambda: False)
    names = {s.name: s.value for fam in c.collect() for s in fam.samples}
    assert "sockgate_journal_last_seal_age_seconds" not in names
    assert names["sockgate_monitor_up"] == 0 and "sockgate_monitor_outbox" not in names


def test_unix_socket_endpoint_replaces_a_stale_socket_and_removes_its_own(tmp_path, journal):
    path = str(tmp_path / "metrics.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves
    endpoint = Endpoint.bind(f"unix:{path}")
    try:
        assert os.stat(path).st_mode & 0o777 == 0o660
        with pytest.raises(MetricsError, match="another process is serving"):
            Endpoint.bind(f"unix:{path}")
        endpoint.serve(DaemonCollector(journal=journal))
        assert ("sockgate_journal_last_seq", ()) in samples(scrape_unix(path))
    finally:
        endpoint.close()
    assert not os.path.exists(path)
    Path(path).write_text("not a socket")
    with pytest.raises(MetricsError, match="not a socket"):
        Endpoint.bind(f"unix:{path}")


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(MetricsError, match="cannot listen"):
            Endpoint.bind(f"127.0.0.1:{s.getsockname()[1]}")


def test_ipv6_loopback_serves(journal):
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    endpoint = Endpoint.bind(f"[::1]:{port}")
    try:
        endpoint.serve(DaemonCollector(journal=journal))
        with urllib.request.urlopen(f"http://{endpoint.address}/metrics", timeout=5) as r:
            assert ("sockgate_journal_last_seq", ()) in samples(r.read().decode())
    finally:
        endpoint.close()
