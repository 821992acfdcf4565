"""A signed policy bundle applied to a host with the real daemon running (issue 15, item 6):
the replay gate over the host's own journal, the atomic swap, the daemon's reload confirmed
by its digest, and refusals that leave the old policy enforcing."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TEST_UID, journal_entries, run_script, wait_loaded
from cryptography.hazmat.primitives.asymmetric import ed25519

from sockgate.fleet import apply as A
from sockgate.fleet import bundle as B
from sockgate.journal import EntryType

P_NEW, P_USED = 7351, 7352

CURRENT = """
audit_levels = ["*NETCMN"]
"""


def _candidate(port: int) -> str:
    return f"""
audit_levels = ["*NETCMN"]
[[rule]]
name = "no-{port}"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = {port}
action = "reject"
"""


def _connect(scope, port: int) -> str:
    r = run_script(scope, [{"do": "socket", "proto": "tcp", "family": 4},
                           {"do": "connect", "addr": "127.0.0.1", "port": port, "timeout": 5}], uid=TEST_UID)[1]
    return "ok" if r["ok"] else r["error"]


def _digest(scope) -> str:
    r = subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", "status", "--json",
                        "--pin-dir", scope.pin_dir], capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout)["policy"]["digest"]


def test_a_bundle_applies_through_the_gate_and_the_daemon_reload(scope, tmp_path):
    journal, fleet = tmp_path / "journal", tmp_path / "fleet"
    policy_file = scope.write_policy(CURRENT)
    d = scope.daemon(policy_file, journal=journal)
    wait_loaded(d)
    private = ed25519.Ed25519PrivateKey.generate()
    trust = [B.public_of(private)]

    def apply(text: str, version: int, **kw):
        raw = B.sign(text.encode(), private, version=version, group="web")[0]
        return A.apply_bundle(raw, trust=trust, group="web", fleet_dir=fleet, journal_dir=journal,
                              policy_path=kw.get("policy_path", policy_file), pin_dir=scope.pin_dir,
                              reload_timeout=60)

    # history: this host's user connects to P_USED (allowed, journaled)
    assert _connect(scope, P_USED) == "ECONNREFUSED"
    journal_entries(journal, lambda es: any(e.type == EntryType.CONNECT and e.remote_port == P_USED for e in es))

    # v1 rejects only P_NEW, which the last 24 h never used: the gate passes, the daemon reloads
    r = apply(_candidate(P_NEW), 1)
    assert (r.result, r.breaks, r.daemon) == ("applied", 0, "reloaded"), r.text()
    assert _digest(scope) == r.digest and policy_file.read_text() == _candidate(P_NEW)
    assert _connect(scope, P_NEW) == "EPERM"

    # v2 would reject what this host used: refused by the gate, v1 stays in force
    r = apply(_candidate(P_USED), 2)
    assert (r.result, r.reason, r.breaks) == ("refused", "replay-gate", 1), r.text()
    assert policy_file.read_text() == _candidate(P_NEW) and _connect(scope, P_USED) == "ECONNREFUSED"

    # an older version (rollback) and a file the daemon does not load: refused, nothing changes
    r = apply(CURRENT, 1)
    assert (r.result, r.reason) == ("refused", "not-newer"), r.text()
    other = tmp_path / "other.toml"
    r = apply(_candidate(P_NEW) + "\n", 3, policy_path=other)
    assert (r.result, r.reason) == ("refused", "daemon-policy"), r.text()
    assert not other.exists() and _digest(scope) == A.read_state(fleet)["groups"]["web"]["digest"]
    assert _connect(scope, P_NEW) == "EPERM"
