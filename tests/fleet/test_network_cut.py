"""A network cut between a host and the collector (issue 15: "a network cut (veth down) for
30 s: afterwards every entry of every host in PostgreSQL exactly once, chains verified").

The real daemon (`sockgate run --fleet-dir`, BPF in the kernel tests' own cgroup and netns)
keeps its own sockets in a network namespace this test makes (nsenter --net), whose only
way to the collector is a veth pair; the collector listens on the root side's address. The
root side goes down for 30 s while the daemon keeps journaling refusals; then it comes
back. Host only (kernel-marked: it loads BPF; shipping does not depend on the backend)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from .conftest import Collector, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernelscope import kconf, kernel_ok, leaves_nothing_behind, scope  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.kernel
PORT = 7362
CUT_S = 30


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def link():
    """A network namespace whose one link is a veth to the root namespace: (netns name,
    root-side interface, root-side address)."""
    tag = uuid.uuid4().hex[:6]
    ns, root_if, ns_if = f"sgcut-{tag}", f"sgcR{tag}", f"sgcN{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    root_addr, ns_addr = f"10.213.{octet}.1", f"10.213.{octet}.2"
    ip("netns", "add", ns)
    try:
        ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{root_addr}/30", "dev", root_if)
        ip("link", "set", root_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, root_if, root_addr
    finally:
        ip("link", "del", root_if, check=False)   # takes its peer with it
        ip("netns", "del", ns, check=False)


def _rejected(db: str, host: str) -> int:
    with psycopg.connect(db) as c:
        return c.execute("SELECT count(*) FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
                         "WHERE h.name = %s AND e.remote_port = %s AND e.outcome = 'rejected'",
                         (host, PORT)).fetchone()[0]


def _wait(db: str, host: str, n: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    while (got := _rejected(db, host)) < n and time.monotonic() < end:
        time.sleep(0.5)
    return got


def test_a_30_second_network_cut_loses_nothing_and_stores_nothing_twice(db, scope, link, tmp_path):
    from sockgate.journal import Journal

    ns, root_if, root_addr = link
    collector = Collector(db, tmp_path / "collector", addr=root_addr).start()
    d = None
    try:
        journal, fleet_dir = tmp_path / "journal", tmp_path / "fleet"
        Journal.open(journal).close()
        code, out, err = run_cli("fleet", "enroll", "--server", collector.url, "--token", collector.token(),
                                 "--name", "cut1", "--fleet-dir", str(fleet_dir), "--journal", str(journal))
        assert code == 0, err
        policy = scope.write_policy(f'audit_levels = ["*NETFAIL"]\n[[rule]]\nname = "no-{PORT}"\n'
                                    f'exit = "connect"\nremote_port = {PORT}\naction = "reject"\n')
        d = scope.daemon(policy, "--fleet-dir", str(fleet_dir), journal=journal,
                         wrap=("nsenter", f"--net=/run/netns/{ns}", "--"))
        kconf.wait_loaded(d)
        for _ in range(5):
            assert scope.client("connect", addr="127.0.0.1", port=PORT)["error"] == "EPERM"
        assert _wait(db, "cut1", 5, 90) == 5          # shipping works over the veth

        ip("link", "set", root_if, "down")
        cut_at = time.monotonic()
        for _ in range(10):                             # journaled during the cut
            assert scope.client("connect", addr="127.0.0.1", port=PORT)["error"] == "EPERM"
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        assert _rejected(db, "cut1") == 5               # nothing crossed the cut
        ip("link", "set", root_if, "up")

        assert _wait(db, "cut1", 15, 120) == 15         # caught up by itself
        time.sleep(2)
        assert _rejected(db, "cut1") == 15              # and nothing twice
        d.send_signal(signal.SIGTERM)
        assert d.wait(timeout=60) == 0
        d = None
        with Journal.open(journal, readonly=True) as j:
            last = j.last_seq
        code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state), "--json")
        assert code == 0, out + err
        rep = {h["host"]: h for h in json.loads(out)["hosts"]}["cut1"]
        assert rep["ok"] and rep["keyed"] and rep["first_seq"] == 1 and rep["last_seq"] <= last
        with psycopg.connect(db) as c:
            n, distinct = c.execute("SELECT count(*), count(DISTINCT seq) FROM sockgate.entry e JOIN sockgate.host h "
                                    "ON h.id = e.host_id WHERE h.name = 'cut1'").fetchone()
        assert n == distinct == rep["last_seq"]          # every seq held once, from 1 on
    finally:
        if d is not None and d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.kill()
        collector.stop()
