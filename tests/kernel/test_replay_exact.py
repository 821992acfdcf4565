"""What the kernel decided on is in the journal (issue 14, item 2): the groups a group rule
tested and the executable's dev:inode, so `policy replay` of a group or program rule is
exact, not approximated, and predicts the real kernel's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TEST_UID, journal_entries, wait_loaded

from sockgate.journal import EntryType

SUP_A, SUP_B = 4601, 4602
PORT = 7321

ENFORCING = '''
audit_levels = ["*NETCMN"]
'''

# the kernel's answer for the same calls, to compare replay with
CANDIDATE = f'''
audit_levels = ["*NETCMN"]
[[rule]]
name = "sup-b-no-{PORT}"
exit = "connect"
group = ["{SUP_B}"]
remote_port = {PORT}
action = "reject"
'''


def _sockgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_groups_are_journaled_and_replay_of_a_group_rule_is_exact_and_right(scope, tmp_path):
    journal = tmp_path / "journal"
    d = scope.daemon(scope.write_policy(ENFORCING), journal=journal)
    wait_loaded(d)
    # three callers: in SUP_B as a supplementary group, in SUP_A only, in none
    for groups in ([SUP_A, SUP_B], [SUP_A], []):
        assert scope.client("connect", addr="127.0.0.1", port=PORT, groups=groups)["error"] == "ECONNREFUSED"

    def three(es):
        return len([e for e in es if e.type == EntryType.CONNECT and e.remote_port == PORT]) == 3
    entries = [e for e in journal_entries(journal, three) if e.type == EntryType.CONNECT and e.remote_port == PORT]
    assert sorted(e.extra["groups"] for e in entries) == sorted(
        [f"{TEST_UID},{SUP_A},{SUP_B}", f"{TEST_UID},{SUP_A}", f"{TEST_UID}"])

    rep = json.loads(_sockgate("policy", "replay", str(scope.write_policy(CANDIDATE, "c.toml")), "--journal",
                               str(journal), "--since", "1h", "--format", "json").stdout)
    assert rep["breaks"] == 1 and rep["approximated"]["decisions"] == 0, rep
    assert rep["groups"]["break"][0]["new_rule"] == f"sup-b-no-{PORT}"

    # and the kernel agrees: under the candidate, exactly the SUP_B caller is refused
    (scope.tmp / "policy.toml").write_text(CANDIDATE)
    d.send_signal(1)
    wait_loaded(d, generation=2)
    got = [scope.client("connect", addr="127.0.0.1", port=PORT, groups=g)["error"]
           for g in ([SUP_A, SUP_B], [SUP_A], [])]
    assert got == ["EPERM", "ECONNREFUSED", "ECONNREFUSED"]
