"""The daemon's Prometheus endpoint: `sockgate run --metrics 127.0.0.1:9477` or `unix:PATH`.

Every value is read when Prometheus scrapes (a custom collector, no background polling),
on the endpoint's own thread:

    kernel counters, verdicts, links   through the daemon's Gate (libbpf map reads)
    journal seal state, write queue    plain reads of what the writer tracks, never its connection
    monitor outbox and dead alerts     a read-only SQLite connection of its own, per scrape

Labels are bounded: exit points, outcomes, the backend's program names, monitor channel
names; never an address, a user or a program; rule names only when the policy asks
(`metrics_per_rule = true`). The endpoint has no authentication and no TLS, so it binds a
loopback address or a unix socket only. The metrics and their meaning: docs/metrics.md.
"""

from __future__ import annotations

import os
import queue
import socket
import socketserver
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sockgate.errors import MetricsError, StateError
from sockgate.kernel.events import EXIT_NAMES, VERDICT_NAMES
from sockgate.kernel.loader import BACKENDS
from sockgate.listen import Address, clear_stale_socket
from sockgate.listen import parse_address as _parse_address

if TYPE_CHECKING:
    from sockgate.journal import Journal
    from sockgate.kernel.loader import Gate
    from sockgate.policy.model import Policy

_WHY = ("The metrics endpoint has no authentication or TLS, so it listens only on 127.0.0.0/8, ::1 or a "
        "unix socket (put a reverse proxy with TLS in front of it to scrape from elsewhere)")


def parse_address(text: str) -> Address:
    """`--metrics`' value: a loopback ADDRESS:PORT or unix:PATH. Anything else is a usage
    error: nothing guards the endpoint but the address it listens on."""
    return _parse_address(text, option="--metrics", why=_WHY)


# -- the HTTP server ------------------------------------------------------------------------

class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        if not isinstance(self.client_address, tuple):  # a unix socket peer has no address
            self.client_address = ("local", 0)
        super().setup()

    def log_message(self, format: str, *args) -> None:
        """Scrapes are not logged."""


class _TCPServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    application = None

    def __init__(self, path: str):
        super().__init__(path, _Handler)
        # what WSGIServer.setup_environ gives a TCP server (its server_bind wants a host and port)
        self.base_environ = {"SERVER_NAME": "localhost", "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PORT": "0",
                             "REMOTE_HOST": "", "CONTENT_LENGTH": "", "SCRIPT_NAME": ""}

    def get_app(self):
        return self.application

    def set_app(self, app) -> None:
        self.application = app


class Endpoint:
    """The listening socket, bound early (a taken port stops the daemon before it changes
    anything), then served from a thread once there is something to report."""

    def __init__(self, address: Address, server: socketserver.BaseServer):
        self.address = address
        self._server = server
        self._thread: threading.Thread | None = None
        self._inode = os.stat(address.path).st_ino if address.path else None

    @classmethod
    def bind(cls, text: str) -> "Endpoint":
        a = parse_address(text)
        try:
            if a.path:
                clear_stale_socket(a.path, option="--metrics", error=MetricsError)
                server = _UnixServer(a.path)
                os.chmod(a.path, 0o660)  # root and the socket's group: grant a scraper by group
            else:
                server = (_TCP6Server if ":" in a.host else _TCPServer)((a.host, a.port), _Handler)
        except OSError as e:
            raise MetricsError(f"--metrics {text}: cannot listen: {e.strerror or e}") from None
        return cls(a, server)

    def serve(self, collector: Collector) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._server.set_app(make_wsgi_app(registry))
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        if self._inode is not None:
            try:
                if os.stat(self.address.path).st_ino == self._inode:  # still ours: not a successor's
                    os.unlink(self.address.path)
            except FileNotFoundError:
                pass
            self._inode = None


# -- what a scrape reads -------------------------------------------------------------------

def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class DaemonCollector(Collector):
    """The daemon's state at scrape time. Every source is optional: a daemon without a
    journal has no journal metrics, one without alert rules no monitor metrics.

    gate             the loaded programs (kernel counters, verdicts, links)
    journal, writes  the journal the daemon writes and its queue of write jobs
    policy           returns the policy in force (its `metrics_per_rule`)
    monitor_state    the running monitor's state directory; channels its configured channels;
                     monitor_alive whether its thread still runs
    """

    def __init__(self, *, gate: "Gate | None" = None, journal: "Journal | None" = None,
                 writes: queue.Queue | None = None, policy: Callable[[], "Policy | None"] = lambda: None,
                 monitor_state: str | os.PathLike | None = None, channels: Iterable[str] = (),
                 monitor_alive: Callable[[], bool] = lambda: True):
        self.gate = gate
        self.journal = journal
        self.writes = writes
        self.policy = policy
        self.monitor_state = monitor_state
        self.channels = tuple(channels)
        self.monitor_alive = monitor_alive
        self._verdicts: tuple[int, tuple[list[int], list[int]]] | None = None  # (generation, verdicts)

    def collect(self) -> Iterator[Metric]:
        if self.gate is not None:
            yield from self._kernel(self.gate)
        if self.journal is not None:
            yield from self._journal(self.journal)
        if self.monitor_state is not None:
            yield from self._monitor()

    # -- kernel

    def _verdicts_of(self, gate: "Gate") -> tuple[list[int], list[int]]:
        """The kernel's verdicts change only with the policy: read once per generation."""
        generation = gate.state.generation
        if self._verdicts is None or self._verdicts[0] != generation:
            self._verdicts = (generation, gate.verdicts())
        return self._verdicts[1]

    def _kernel(self, gate: "Gate") -> Iterator[Metric]:
        st = gate.state
        stats = gate.stats()
        yield _counter("sockgate_decisions", "Decisions the kernel made since the programs were loaded (every exit "
                       "point and outcome, UDP datagrams of known flows included)", stats["decisions"])
        yield _counter("sockgate_events_selected", "Decisions the audit levels selected for the journal",
                       stats["selected"])
        yield _counter("sockgate_events_dropped", "Selected decisions lost because the ring buffer was full "
                       "(each loss is journaled as a gap record)", stats["dropped"])
        yield _counter("sockgate_udp_datagrams_dropped", "Inbound UDP datagrams refused", stats["udp_dropped"])
        yield _counter("sockgate_udp_flow_table_full", "UDP decisions made without a flow slot (flow table full: "
                       "each such datagram is judged and journaled on its own)", stats["flows_full"])

        hits, default_hits = gate.hits()
        verdicts, default_verdicts = self._verdicts_of(gate)
        by_outcome = dict.fromkeys(VERDICT_NAMES, 0)
        for n, v in zip(hits, verdicts):
            by_outcome[VERDICT_NAMES[v]] += n
        rules = CounterMetricFamily("sockgate_rule_decisions", "Decisions made by a rule of the policy in force, by "
                                    "the rule's outcome (restarts at each policy load)", labels=["outcome"])
        for outcome, n in by_outcome.items():
            rules.add_metric([outcome], n)
        yield rules
        defaults = CounterMetricFamily("sockgate_default_decisions", "Decisions no rule matched (the exit point's "
                                       "default), plus built-in refusals (unreadable address, connection to a "
                                       "listener whose listen was refused), per exit point (restarts at each "
                                       "policy load)", labels=["exit"])
        default_info = GaugeMetricFamily("sockgate_policy_default_info", "The outcome of each exit point's default "
                                         "in the policy in force", labels=["exit", "outcome"])
        for exit_name, n, v in zip(EXIT_NAMES, default_hits, default_verdicts):
            defaults.add_metric([exit_name], n)
            default_info.add_metric([exit_name, VERDICT_NAMES[v]], 1)
        yield defaults
        yield default_info
        policy = self.policy()
        if policy is not None and policy.metrics_per_rule:
            per_rule = CounterMetricFamily("sockgate_rule_hits", "Decisions made by each rule of the policy in force "
                                           "(metrics_per_rule = true; restarts at each policy load)", labels=["rule"])
            for name, n in zip(st.rule_names, hits):
                per_rule.add_metric([name], n)
            yield per_rule

        info = GaugeMetricFamily("sockgate_policy_info", "The policy in force: sha256 of its file, global mode",
                                 labels=["digest", "mode"])
        info.add_metric([st.policy_digest, st.mode], 1)
        yield info
        yield _gauge("sockgate_policy_generation", "Policy loads since the programs were loaded", st.generation)
        yield _gauge("sockgate_policy_rules", "Rules in the policy in force", len(st.rule_names))
        backend = GaugeMetricFamily("sockgate_backend_info", "The kernel backend in use", labels=["backend"])
        backend.add_metric([st.backend], 1)
        yield backend
        gone = set(gate.detached())
        attached = GaugeMetricFamily("sockgate_program_attached", "1 while the program is attached, 0 once its link "
                                     "is detached or unpinned", labels=["program"])
        for name in BACKENDS[st.backend]:
            attached.add_metric([name], 0 if name in gone else 1)
        yield attached

    # -- journal

    def _journal(self, journal: "Journal") -> Iterator[Metric]:
        head, sealed, sealed_at = journal.seal_state()
        yield _gauge("sockgate_journal_last_seq", "Sequence number of the newest journal entry", head)
        yield _gauge("sockgate_journal_unsealed_entries", "Journal entries written since the last seal", head - sealed)
        if sealed_at is not None:
            yield _gauge("sockgate_journal_last_seal_age_seconds", "Seconds since the newest seal",
                         max(0.0, time.time() - sealed_at / 1e9))
        if self.writes is not None:
            yield _gauge("sockgate_journal_queue_depth", "Write jobs (entry batches, records) waiting for the journal "
                         f"writer; at {self.writes.maxsize} the reader waits and the ring buffer fills",
                         self.writes.qsize())

    # -- monitor

    def _monitor(self) -> Iterator[Metric]:
        from sockgate.monitor.state import State

        yield _gauge("sockgate_monitor_up", "1 while the built-in monitor's thread runs", int(self.monitor_alive()))
        try:
            state = State.open_readonly(self.monitor_state)
            try:
                sizes, dead = state.queue_sizes(), state.dead_count()
            finally:
                state.close()
        except (StateError, sqlite3.Error):
            return  # no state yet (the monitor is starting): nothing to report
        outbox = GaugeMetricFamily("sockgate_monitor_outbox", "Alerts waiting to be delivered, per channel",
                                   labels=["channel"])
        attempts = GaugeMetricFamily("sockgate_monitor_outbox_attempts_max", "Failed attempts of the channel's "
                                     "most-retried waiting alert (0: delivering)", labels=["channel"])
        for channel in sorted(set(self.channels) | set(sizes)):
            queued, tried, _ = sizes.get(channel, (0, 0, None))
            outbox.add_metric([channel], queued)
            attempts.add_metric([channel], tried or 0)
        yield outbox
        yield attempts
        yield _gauge("sockgate_monitor_dead_alerts", "Alerts a receiver refused for good (kept in the "
                     "monitor's state.db, table dead)", dead)
