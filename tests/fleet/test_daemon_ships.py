"""The real daemon ships (issue 15, item 3): `sockgate run --fleet-dir` in the kernel tests'
own cgroup and network namespace, its kernel decisions arriving in PostgreSQL through the
mutual-TLS collector, verifiable there. It loads BPF, so it is a kernel test (host only:
shipping does not depend on the backend; tests/kernel runs the backends in the guest)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psycopg
import pytest

from .conftest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernelscope import kconf, kernel_ok, leaves_nothing_behind, scope  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.kernel
PORT = 7361


def _shipped(db: str, host: str, port: int) -> int:
    with psycopg.connect(db) as c:
        return c.execute("SELECT count(*) FROM sockgate.entry e JOIN sockgate.host h ON h.id = e.host_id "
                         "WHERE h.name = %s AND e.remote_port = %s AND e.outcome = 'rejected'",
                         (host, port)).fetchone()[0]


def test_sockgate_run_with_a_fleet_dir_ships_its_decisions(db, collector, scope, tmp_path):
    from sockgate.journal import Journal

    journal, fleet_dir = tmp_path / "journal", tmp_path / "fleet"
    Journal.open(journal).close()
    code, out, err = run_cli("fleet", "enroll", "--server", collector.url, "--token", collector.token(),
                             "--name", "gate1", "--fleet-dir", str(fleet_dir), "--journal", str(journal))
    assert code == 0, err
    policy = scope.write_policy(f"""
audit_levels = ["*NETFAIL"]
[[rule]]
name = "no-{PORT}"
exit = "connect"
remote_port = {PORT}
action = "reject"
""")
    d = scope.daemon(policy, "--fleet-dir", str(fleet_dir), journal=journal)
    kconf.wait_loaded(d)
    for _ in range(3):
        assert scope.client("connect", addr="127.0.0.1", port=PORT)["error"] == "EPERM"

    end = time.monotonic() + 90
    while _shipped(db, "gate1", PORT) < 3 and time.monotonic() < end:
        time.sleep(0.5)
    assert _shipped(db, "gate1", PORT) == 3
    code, out, err = run_cli("fleet", "show", "--db", db, "--host", "gate1", "--outcome", "rejected")
    assert code == 0 and out.count(f"no-{PORT}") == 3, out + err
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=30)
    code, out, err = run_cli("fleet", "verify", "--db", db, "--state", str(collector.state))
    assert code == 0 and "gate1" in out, out + err
