"""Shadow mode with the real daemon: a candidate decides every call beside the enforcing
policy, the kernel counts where they differ, the journal holds samples and exact counts,
and those counts are what `policy replay` predicts for the same traffic; promotion makes
the candidate enforce, atomically; --off drops it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import TEST_UID, journal_entries, run_script, served, wait_loaded

from sockgate.journal import EntryType

P_CONNECT, P_OTHER, P_ACCEPT = 7311, 7312, 7313

# everything goes through, and everything is journaled: the history replay reads
ENFORCING = """
audit_levels = ["*NETCMN"]
"""

CANDIDATE = f"""
audit_levels = ["*NETCMN"]
[[rule]]
name = "no-7311"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = {P_CONNECT}
action = "reject"

[[rule]]
name = "no-accept-7313"
exit = "accept"
local_port = {P_ACCEPT}
action = "reject"
"""


def _sockgate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", "from sockgate.cli import main; main()", *args],
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"sockgate {' '.join(args)}: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _status(scope) -> dict:
    return json.loads(_sockgate("status", "--json", "--pin-dir", scope.pin_dir).stdout)


def _connects(scope, port: int, n: int, uid: int | None = TEST_UID) -> list[dict]:
    calls = []
    for i in range(n):
        calls += [{"do": "socket", "sock": f"c{i}", "proto": "tcp", "family": 4},
                  {"do": "connect", "sock": f"c{i}", "addr": "127.0.0.1", "port": port, "timeout": 5},
                  {"do": "close", "sock": f"c{i}"}]
    return [r for c, r in zip(calls, run_script(scope, calls, uid=uid)) if c["do"] == "connect"]


def _shadow_entries(entries, kind: str) -> list:
    return [e for e in entries if e.type == EntryType.SHADOW and e.extra.get("shadow") == kind]


def test_shadow_counts_what_replay_predicts_then_promote_enforces(scope, tmp_path):
    journal = tmp_path / "journal"
    d = scope.daemon(scope.write_policy(ENFORCING), journal=journal)
    wait_loaded(d)
    candidate = scope.write_policy(CANDIDATE, "candidate.toml")
    out = _sockgate("policy", "shadow", str(candidate), "--pin-dir", scope.pin_dir, "--json")
    shadow_gen = json.loads(out.stdout)["generation"]
    assert shadow_gen == 2

    server = scope.start("serve", addr="127.0.0.1", port=P_ACCEPT, seconds=1200)
    assert json.loads(server.stdout.readline())["listening"]
    # the enforcing policy lets all of it through; the candidate would reject 5 + 2 of it
    assert all(r["ok"] for r in _connects(scope, P_ACCEPT, 2, uid=0))       # accept: 2 differ
    assert all(r["error"] == "ECONNREFUSED" for r in _connects(scope, P_CONNECT, 5))  # 5 differ
    assert all(r["error"] == "ECONNREFUSED" for r in _connects(scope, P_OTHER, 3))    # same verdict
    assert all(r["error"] == "ECONNREFUSED" for r in _connects(scope, P_CONNECT, 2, uid=0))  # not the rule's user
    assert len(served(server)) == 2

    s = _status(scope)
    sh = s["shadow"]
    assert sh["generation"] == shadow_gen and sh["source"] == str(candidate)
    got = {(x["exit"], x["rule"], x["outcome"], x["shadow_rule"], x["shadow_outcome"]): x["calls"]
           for x in sh["differences"]}
    assert got == {("connect", "default:connect", "allowed", "no-7311", "rejected"): 5,
                   ("accept", "default:accept", "allowed", "no-accept-7313", "rejected"): 2}, sh
    hits = {r["name"]: r["hits"] for r in sh["rule_hits"]}
    assert hits == {"no-7311": 5, "no-accept-7313": 2}
    assert s["policy"]["generation"] == 1  # the enforcing policy is untouched
    text = _sockgate("status", "--pin-dir", scope.pin_dir).stdout
    assert "shadow:" in text and "differing: 7 calls" in text and "no-accept-7313" in text, text

    # the journal: one sample per pair (who and where), summaries with the exact counts
    def complete(es):
        return sum(e.extra["count"] for e in _shadow_entries(es, "summary")) == 7 and len(_shadow_entries(es, "sample")) == 2
    entries = journal_entries(journal, complete, timeout=20)
    assert complete(entries), [e for e in entries if e.type == EntryType.SHADOW]
    sample = {e.extra["exit"]: e for e in _shadow_entries(entries, "sample")}
    c = sample["connect"]
    assert (c.uid, c.remote_port, c.rule, c.extra["shadow_rule"], c.extra["shadow_outcome"]) == \
        (TEST_UID, P_CONNECT, "default:connect", "no-7311", "rejected")
    assert sample["accept"].local_port == P_ACCEPT and sample["accept"].extra["entry_type"] == "A"
    loaded = [e for e in entries if e.type == EntryType.SHADOW and e.extra.get("shadow") == "loaded"]
    assert loaded and loaded[0].extra["shadow_generation"] == shadow_gen

    # replay of the candidate over the same journal predicts exactly those calls
    rep = json.loads(_sockgate("policy", "replay", str(candidate), "--journal", str(journal), "--since", "1h",
                               "--format", "json", check=False).stdout)
    assert rep["breaks"] == 7 and rep["opens"] == 0, rep
    by_rule = {}
    for g in rep["groups"]["break"]:
        by_rule[g["new_rule"]] = by_rule.get(g["new_rule"], 0) + g["count"]
    assert by_rule == {"no-7311": 5, "no-accept-7313": 2}, rep["groups"]

    # promote: the candidate enforces now, in one swap; the daemon's file is left alone here
    out = json.loads(_sockgate("policy", "promote", "--keep-file", "--pin-dir", scope.pin_dir, "--json").stdout)
    assert out["generation"] == shadow_gen and out["file_written"] is False
    assert all(r["error"] == "EPERM" for r in _connects(scope, P_CONNECT, 2))
    s = _status(scope)
    assert s["shadow"] is None and s["policy"]["generation"] == shadow_gen
    # a slot's hit counters run from its load: 5 decided in shadow, 2 enforced since
    assert s["policy"]["source"] == str(candidate) and s["rules"][0] == {"index": 0, "name": "no-7311", "hits": 7}
    entries = journal_entries(journal, lambda es: any(e.extra.get("promoted") for e in es))
    assert [e.extra["generation"] for e in entries if e.extra.get("promoted") == "shadow"] == [shadow_gen]


def test_shadow_off_stops_counting_and_promote_without_a_shadow_is_refused(scope, tmp_path):
    journal = tmp_path / "journal"
    d = scope.daemon(scope.write_policy(ENFORCING), journal=journal)
    wait_loaded(d)
    r = _sockgate("policy", "promote", "--pin-dir", scope.pin_dir, check=False)
    assert r.returncode == 2 and "no shadow policy is loaded" in r.stderr and "Traceback" not in r.stderr
    r = _sockgate("policy", "shadow", "--off", "--pin-dir", scope.pin_dir, check=False)
    assert r.returncode == 2 and "no shadow policy" in r.stderr

    bad = scope.write_policy("[[rule]]\nname = 1\n", "bad.toml")
    r = _sockgate("policy", "shadow", str(bad), "--pin-dir", scope.pin_dir, check=False)
    assert r.returncode == 1 and f"{bad}:" in r.stderr and "Traceback" not in r.stderr

    _sockgate("policy", "shadow", str(scope.write_policy(CANDIDATE, "candidate.toml")), "--pin-dir", scope.pin_dir)
    _connects(scope, P_CONNECT, 3)
    _sockgate("policy", "shadow", "--off", "--pin-dir", scope.pin_dir)
    _connects(scope, P_CONNECT, 4)  # not counted any more
    s = _status(scope)
    assert s["shadow"] is None and s["policy"]["generation"] == 1
    # the last counts of the pair turned off are journaled before it is forgotten
    entries = journal_entries(journal, lambda es: any(e.extra.get("shadow") == "off" for e in es))
    assert sum(e.extra["count"] for e in _shadow_entries(entries, "summary")) == 3
    time.sleep(1.5)  # a sweep later: nothing more
    entries = journal_entries(journal)
    assert sum(e.extra["count"] for e in _shadow_entries(entries, "summary")) == 3
