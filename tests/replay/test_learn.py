"""policy learn: learn -> check -> replay breaks nothing, on seeded random journals."""

from __future__ import annotations

import json
import os
import stat
import tomllib

import pytest
from replaykit import NOW, NS, PROG, entry, journal, sockgate

from sockgate.policy.learn import merge_addresses, merge_ports
from sockgate.policy.synth import decisions
from sockgate.record import EntryType, Outcome


def check(policy):
    # --force: the lock-out guard judges this host's live SSH sessions, which a test does not
    # control (a learned default-deny policy rejects any session its journal never saw)
    p = sockgate("policy", "check", "--force", policy)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode


def learn(tmp_path, j, *args):
    out = tmp_path / "learned.toml"
    p = sockgate("policy", "learn", "--journal", j, "--since", "30d", "-o", out, *args)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return out


def replay_json(policy, j):
    p = sockgate("policy", "replay", policy, "--journal", j, "--since", "30d", "--format", "json")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_learned_policy_checks_and_breaks_nothing_of_its_history(tmp_path, seed):
    j = journal(tmp_path / "j", decisions(1500, seed, start_ns=NOW - 8 * 86400 * NS))
    out = learn(tmp_path, j)
    assert check(out) == 0
    rc, rep = replay_json(out, j)
    # nothing that went through would be rejected; what was rejected at one time and went
    # through at another (or lies in a merged network or port range) may open: exit 2
    assert rep["breaks"] == 0 and rc in (0, 2), rep["groups"]["break"]
    doc = tomllib.loads(out.read_text())
    assert doc["defaults"] == {"connect": "reject", "listen": "reject", "accept": "reject"}
    for r in doc["rule"]:   # never any user or any program without --generalize
        assert r["user"] and r["program"] and r["action"] == "allow"


@pytest.mark.parametrize("seed", [21, 22])
def test_what_cannot_be_named_is_listed_and_breaks_exactly_that(tmp_path, seed):
    es = list(decisions(1500, seed, start_ns=NOW - 8 * 86400 * NS, hard=True))
    j = journal(tmp_path / "j", es)
    out = learn(tmp_path, j)
    text = out.read_text()
    not_learned = sum(int(line.split("NOT LEARNED: ")[1].split()[0]) for line in text.splitlines()
                      if "NOT LEARNED" in line)
    assert not_learned > 0
    rc, rep = replay_json(out, j)
    assert rep["breaks"] == not_learned and rc == 3
    # --generalize learns them too (any user / any program), and then nothing breaks
    out = learn(tmp_path, j, "--generalize")
    assert "NOT LEARNED" not in out.read_text()
    rc, rep = replay_json(out, j)
    assert rep["breaks"] == 0 and rc in (0, 2)


def test_evidence_ports_and_ephemeral_ports(tmp_path):
    es = [entry(local=("192.0.2.10", 40000 + i), remote=("10.0.0.9", 8000 + i % 4), host=f"h{i % 2}")
          for i in range(8)]
    es += [entry(EntryType.ACCEPT, local=("192.0.2.10", 22), remote=("10.5.0.1", 50000 + i)) for i in range(3)]
    es += [entry(outcome=Outcome.REJECTED, rule="x", remote=("10.7.0.1", 25))]   # blocked: not learned
    j = journal(tmp_path / "j", es)
    out = learn(tmp_path, j)
    doc = tomllib.loads(out.read_text())
    by_exit = {r["exit"][0]: r for r in doc["rule"]}
    assert set(by_exit) == {"connect", "accept"}
    assert by_exit["connect"]["remote_port"] == ["8000-8003"] and by_exit["connect"]["remote"] == ["10.0.0.9"]
    assert "local_port" not in by_exit["connect"]                       # a client's port says nothing
    assert by_exit["accept"]["local_port"] == [22] and "remote_port" not in by_exit["accept"]
    text = out.read_text()
    assert "# evidence: 8 decisions" in text and "hosts h0, h1" in text and "sample seq 1" in text


def test_min_count_leaves_rare_rules_out_and_says_so(tmp_path):
    es = [entry(remote=("10.0.0.1", 443)) for _ in range(5)] + [entry(uid=1001, user="u1001")]
    out = learn(tmp_path, journal(tmp_path / "j", es), "--min-count", "2")
    text = out.read_text()
    assert text.count("[[rule]]") == 1 and "NOT LEARNED: 1 decisions: rules seen fewer times than --min-count" in text


def test_hostile_program_and_user_names_cannot_inject_toml(tmp_path):
    d = tmp_path / 'bin"\n[[rule]]\nexit = ["connect"]\naction = "allow"\n#'
    d.mkdir()
    prog = d / "agent\\\"x"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    es = [entry(program=str(prog), user='evil\n[[rule]]\nexit=["listen"]\naction="allow"', remote=("10.0.0.1", 443))]
    j = journal(tmp_path / "j", es)
    out = learn(tmp_path, j)
    doc = tomllib.loads(out.read_text())
    assert len(doc["rule"]) == 1 and doc["rule"][0]["program"] == [str(prog)]
    assert check(out) == 0
    rc, rep = replay_json(out, j)
    assert rc == 0 and rep["breaks"] == 0


def test_written_atomically(tmp_path):
    j = journal(tmp_path / "j", [entry()])
    out = tmp_path / "learned.toml"
    out.write_text("old\n")
    learn(tmp_path, j)
    assert out.read_text().startswith("# Learned by") and stat.S_IMODE(os.stat(out).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    p = sockgate("policy", "learn", "--journal", j, "--since", "30d", "-o", tmp_path / "no" / "such" / "x.toml")
    assert p.returncode == 1 and "cannot write" in p.stderr and "Traceback" not in p.stderr


def test_empty_range_is_an_error(tmp_path):
    j = journal(tmp_path / "j", [entry(ts_ns=NOW - 40 * 86400 * NS)])
    p = sockgate("policy", "learn", "--journal", j, "-o", tmp_path / "x.toml")
    assert p.returncode == 1 and "no decisions that went through" in p.stderr and not (tmp_path / "x.toml").exists()


def test_dense_networks_only():
    dense = [f"10.1.2.{i}" for i in range(0, 256, 2)]          # half of a /24
    assert merge_addresses(dense) == ["10.1.2.0/24"]
    assert merge_addresses(["10.1.2.1", "10.1.2.200", "192.0.2.7"]) == ["10.1.2.1", "10.1.2.200", "192.0.2.7"]
    assert merge_addresses([f"10.1.2.{i}" for i in range(4)]) == ["10.1.2.0/30"]   # exact
    assert merge_addresses([f"10.1.2.{i}" for i in range(0, 16, 2)]) == [f"10.1.2.{i}" for i in range(0, 16, 2)]
    assert merge_addresses([f"10.1.2.{i}" for i in range(0, 32, 2)]) == ["10.1.2.0/27"]
    assert merge_addresses(["::ffff:10.0.0.1", "2001:db8::1"]) == ["10.0.0.1", "2001:db8::1"]
    assert merge_ports([443, 22, 8000, 8001, 8002, 80]) == [22, 80, 443, "8000-8002"]


def test_program_must_exist_to_be_named(tmp_path):
    es = [entry(program="/opt/gone/bin/agent"), entry(program=PROG)]
    out = learn(tmp_path, journal(tmp_path / "j", es))
    assert "NOT LEARNED: 1 decisions: the program is not an executable on this host" in out.read_text()


def test_folded_summaries_are_neither_learned_nor_replayed(tmp_path):
    """A user past fold_rejections in audit mode: the daemon writes counted summaries without
    addresses. Learning from one would allow the user anything; replay cannot decide them."""
    from replaykit import entry, journal

    from sockgate.journal import Journal
    from sockgate.policy.learn import observe
    from sockgate.policy.parse import parse_policy
    from sockgate.policy.replay import replay
    from sockgate.record import Outcome

    jdir = journal(tmp_path / "j", [entry(outcome=Outcome.AUDIT_REJECTED, local=None, remote=None,
                                          folded="summary", count=500)])
    with Journal.open(jdir, readonly=True) as j:
        learned = observe(j.decisions())
        rep = replay(j.decisions(), parse_policy("", "allow.toml"))
    assert learned.decisions == 0 and learned.not_learned == {"folded": 1}
    assert rep.decisions == 0 and rep.skipped == {"folded": 1}
