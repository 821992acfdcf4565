"""The README's "From audit to enforce" walkthrough, step by step, as a new user runs it
(in the test's own cgroup and network namespace): audit -> learn -> check -> replay ->
shadow -> promote. What was seen keeps working, what was not is refused, and the shadow
saw exactly that before it enforced."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TEST_UID, journal_entries, run_script, served, wait_loaded

from sockgate.journal import EntryType

SEEN, UNSEEN = 7331, 7332

AUDIT = """
mode = "audit"
audit_levels = ["*NETCMN", "*NETUDP"]
"""


def _sockgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def _ok(*args: str) -> subprocess.CompletedProcess:
    r = _sockgate(*args)
    assert r.returncode == 0, f"sockgate {' '.join(args)}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _connect(scope, port: int, exe: str) -> str:
    calls = [{"do": "socket", "proto": "tcp", "family": 4},
             {"do": "connect", "addr": "127.0.0.1", "port": port, "timeout": 5}]
    r = run_script(scope, calls, uid=TEST_UID, exe=exe)[1]
    return "ok" if r["ok"] else r["error"]


def test_audit_learn_replay_shadow_promote(scope, tmp_path, tmpfs_python):
    py = tmpfs_python  # the learned rules name the program: one whose identity stat() tells right
    journal, pin = tmp_path / "journal", ["--pin-dir", scope.pin_dir]
    policy_file = scope.write_policy(AUDIT)
    d = scope.daemon(policy_file, journal=journal)
    wait_loaded(d)

    # 1. audit: normal work (a root server on SEEN, a user connecting to it) goes through
    server = scope.start("serve", addr="127.0.0.1", port=SEEN, exe=py, seconds=1200)  # slow TCG guests
    assert json.loads(server.stdout.readline())["listening"] == SEEN
    assert [_connect(scope, SEEN, py) for _ in range(3)] == ["ok"] * 3
    journal_entries(journal, lambda es: sum(e.type == EntryType.ACCEPT for e in es) >= 3)

    # 2. learn, check
    learned = tmp_path / "learned.toml"
    _ok("policy", "learn", "--journal", str(journal), "--since", "1h", "-o", str(learned))
    text = learned.read_text()
    assert 'mode = "enforce"' in text and "[[rule]]" in text
    _ok("policy", "check", str(learned), "--force")  # (--force: this host's own SSH sessions are not the test's)

    # 3. replay against the history it was learned from: exit 0, breaks nothing
    r = _sockgate("policy", "replay", str(learned), "--journal", str(journal), "--since", "1h", "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["breaks"] == 0, r.stdout + r.stderr

    # 4. shadow: the same work shows no difference; something new (UNSEEN) does, and still goes through
    _ok("policy", "shadow", str(learned), *pin)
    assert _connect(scope, SEEN, py) == "ok"
    assert _connect(scope, UNSEEN, py) == "ECONNREFUSED"   # allowed (nothing listens): the learned policy would refuse
    s = json.loads(_ok("status", "--json", *pin).stdout)["shadow"]
    # the connect, and its accept (nobody listens on UNSEEN: the kernel decides it with an
    # unknown owner before it resets the connection), would both be refused
    assert sorted((x["exit"], x["outcome"], x["shadow_rule"], x["shadow_outcome"], x["calls"])
                  for x in s["differences"]) == [("accept", "allowed", "default:accept", "rejected", 1),
                                                 ("connect", "allowed", "default:connect", "rejected", 1)], s
    def samples(es):
        return [e for e in es if e.type == EntryType.SHADOW and e.extra.get("shadow") == "sample"]
    got = samples(journal_entries(journal, lambda es: len(samples(es)) == 2))
    assert sorted((e.extra["exit"], e.uid, e.remote_port if e.extra["exit"] == "connect" else e.local_port)
                  for e in got) == [("accept", None, UNSEEN), ("connect", TEST_UID, UNSEEN)]

    # 6. promote: enforced now, and it is the daemon's policy file (a reload keeps it)
    out = json.loads(_ok("policy", "promote", "--force", *pin, "--json").stdout)
    assert out["file_written"] and policy_file.read_text() == text
    assert _connect(scope, SEEN, py) == "ok"
    assert _connect(scope, UNSEEN, py) == "EPERM"
    _ok("reload", "--force", *pin)
    wait_loaded(d, generation=out["generation"] + 1)
    assert _connect(scope, SEEN, py) == "ok" and _connect(scope, UNSEEN, py) == "EPERM"
    assert len(served(server)) >= 5
