"""policy replay: real journals on disk, the real CLI in a subprocess."""

from __future__ import annotations

import json
import random

import pytest
from replaykit import ALLOW_ALL, NO_MAIL, NOW, NS, PROG, entry, journal, policy, sockgate

from sockgate.policy import naive
from sockgate.policy.evaluate import Query
from sockgate.policy.parse import parse_policy
from sockgate.policy.replay import Evaluator, Report, call_of, replay
from sockgate.policy.synth import decisions
from sockgate.record import EntryType, Outcome, Source



def run_json(*args):
    p = sockgate("policy", "replay", *args, "--format", "json")
    assert "Traceback" not in p.stderr
    return p.returncode, json.loads(p.stdout) if p.stdout.strip().startswith("{") else None, p


def test_own_policy_against_its_journal_shows_no_change(tmp_path):
    j = journal(tmp_path / "j", [entry(remote=("10.0.0.1", 443 + i % 3)) for i in range(30)])
    rc, rep, _ = run_json(policy(tmp_path, ALLOW_ALL), "--journal", j)
    assert rc == 0 and rep["result"] == "no-change"
    assert rep["decisions"] == 30 and rep["unchanged"] == 30 and rep["breaks"] == rep["opens"] == 0


def test_breaks_are_grouped_and_counted_exactly(tmp_path):
    es = ([entry(remote=(f"10.0.0.{i}", 25), host=f"h{i % 2}", ts_ns=NOW - (100 - i) * NS) for i in range(7)]
          + [entry(remote=(f"10.1.0.{i}", 25), uid=1001, user="u1001") for i in range(3)]
          + [entry(remote=("10.0.0.1", 443)) for _ in range(5)])
    j = journal(tmp_path / "j", es)
    rc, rep, _ = run_json(policy(tmp_path, NO_MAIL), "--journal", j)
    assert rc == 3 and rep["breaks"] == 10 and rep["opens"] == 0 and rep["unchanged"] == 5
    g1, g2 = rep["groups"]["break"]
    assert (g1["count"], g1["user"], g1["network"], g1["port"]) == (7, "u1000", "10.0.0.0/24", 25)
    assert (g1["old_rule"], g1["new_rule"], g1["new_outcome"]) == ("default:connect", "no-mail", "rejected")
    assert g1["hosts"] == ["h0", "h1"] and g1["samples"] == [1, 2, 3, 4, 5]
    assert g1["first"] < g1["last"]
    assert (g2["count"], g2["user"], g2["network"]) == (3, "u1001", "10.1.0.0/24")
    table = sockgate("policy", "replay", policy(tmp_path, NO_MAIL), "--journal", j)
    assert table.returncode == 3 and "WOULD BREAK" in table.stdout and "would break: 10" in table.stdout


def test_only_opens_exit_2(tmp_path):
    es = [entry(outcome=Outcome.REJECTED, rule="no-mail", remote=("10.0.0.1", 25)) for _ in range(4)]
    es += [entry(outcome=Outcome.AUDIT_REJECTED, rule="no-mail", remote=("10.0.0.2", 25))]  # went through
    j = journal(tmp_path / "j", es)
    rc, rep, _ = run_json(policy(tmp_path, ALLOW_ALL), "--journal", j)
    assert rc == 2 and rep["opens"] == 4 and rep["breaks"] == 0 and rep["same_effect"] == 1


def test_removing_a_rule_reports_exactly_what_it_allowed(tmp_path):
    current = """\
    [defaults]
    accept = "reject"
    [[rule]]
    name = "ssh"
    exit = ["accept"]
    local_port = [22]
    action = "allow"
    [[rule]]
    name = "web"
    exit = ["accept"]
    local_port = [443]
    action = "allow"
    """
    rnd = random.Random(3)
    es = [entry(EntryType.ACCEPT, local=("192.0.2.10", rnd.choice((22, 443, 8080))),
                remote=(f"10.9.{rnd.randrange(4)}.{rnd.randrange(250)}", rnd.randrange(32768, 60000)))
          for _ in range(200)]
    j = journal(tmp_path / "j", es)
    cur = policy(tmp_path, current, "current.toml")
    cand = policy(tmp_path, current.replace('    [[rule]]\n    name = "web"', '    [[rule]]\n    name = "webx"')
                  .replace("local_port = [443]", "local_port = [444]"), "cand.toml")
    rc, rep, _ = run_json(cand, "--against", cur, "--journal", j)
    assert rc == 3
    assert rep["breaks"] == sum(1 for e in es if e.local_port == 443) and rep["opens"] == 0
    assert {g["old_rule"] for g in rep["groups"]["break"]} == {"web"}
    assert {g["port"] for g in rep["groups"]["break"]} == {443}


def test_approximations_are_counted_per_reason(tmp_path):
    es = [entry(remote=("10.0.0.1", 443)) for _ in range(6)]                                  # kernel, gid only
    es += [entry(EntryType.ACCEPT, uid=None, user=None, gid=None, program=None, owner="unknown",
                 local=("192.0.2.10", 22), remote=("10.0.0.7", 50000)) for _ in range(2)]    # exact: kernel did so
    es += [entry(source=Source.IBMI, uid=None, user="QUSER", gid=None, program="QSYS/QTMHHTTP", rule=None,
                 remote=("10.0.0.2", 443)) for _ in range(3)]
    j = journal(tmp_path / "j", es)
    groups = policy(tmp_path, f"""\
    [[rule]]
    exit = ["connect", "accept"]
    group = [0]
    action = "allow"
    [[rule]]
    exit = ["connect"]
    program = ["{PROG}"]
    action = "allow"
    """)
    rc, rep, _ = run_json(groups, "--journal", j)
    reasons = {k: v["count"] for k, v in rep["approximated"]["reasons"].items()}
    assert reasons == {"groups": 6, "program-path": 6, "ibmi-identity": 3}
    assert rep["approximated"]["decisions"] == 9
    for fmt in ("table", "html"):
        out = sockgate("policy", "replay", groups, "--journal", j, "--format", fmt).stdout
        assert "supplementary groups are not journaled" in out and "ibmi-identity" in out
    # a candidate on ports only depends on nothing the entries lack
    rc, rep, _ = run_json(policy(tmp_path, NO_MAIL, "ports.toml"), "--journal", j)
    assert rc == 0 and rep["approximated"]["decisions"] == 0


def test_exact_when_the_entry_carries_groups_and_identity(tmp_path):
    import os

    from sockgate.policy.compile import kernel_dev
    st = os.stat(PROG)
    es = [entry(groups="1000,27", exe=f"{kernel_dev(st.st_dev)}:{st.st_ino}") for _ in range(3)]
    j = journal(tmp_path / "j", es)
    cand = policy(tmp_path, f"""\
    [defaults]
    connect = "reject"
    [[rule]]
    exit = ["connect"]
    group = [27]
    program = ["{PROG}"]
    action = "allow"
    """)
    rc, rep, _ = run_json(cand, "--journal", j)
    assert rc == 0 and rep["approximated"]["decisions"] == 0 and rep["same_effect"] == 3


def test_summaries_and_consequences_are_skipped_and_said(tmp_path):
    es = [entry(EntryType.UDP_OUTBOUND, remote=("10.0.0.53", 53), flow="first"),
          entry(EntryType.UDP_OUTBOUND, remote=("10.0.0.53", 53), flow="summary", count=99),
          entry(EntryType.ACCEPT, outcome=Outcome.REJECTED, rule="listen-refused", local=("0.0.0.0", 80))]
    j = journal(tmp_path / "j", es)
    rc, rep, _ = run_json(policy(tmp_path, ALLOW_ALL), "--journal", j)
    assert rc == 0 and rep["decisions"] == 1
    assert {k: v["count"] for k, v in rep["skipped"].items()} == {"udp-summary": 1, "listen-refused": 1}


def test_hostile_names_are_escaped(tmp_path):
    evil = '<script>alert(1)</script>"\n[[rule]]\x1b[2J'
    es = [entry(program="/opt/" + evil, user=evil, remote=("10.0.0.1", 25), host=evil) for _ in range(2)]
    j = journal(tmp_path / "j", es)
    cand = policy(tmp_path, NO_MAIL)
    page = sockgate("policy", "replay", cand, "--journal", j, "--format", "html")
    assert page.returncode == 3
    assert "<script>" not in page.stdout and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.stdout
    assert "src=" not in page.stdout and "http" not in page.stdout.split("</head>")[1]   # self-contained
    table = sockgate("policy", "replay", cand, "--journal", j)
    assert "\x1b" not in table.stdout and "\n[[rule]]" not in table.stdout and "\\n[[rule]]" in table.stdout
    out = tmp_path / "r.html"
    p = sockgate("policy", "replay", cand, "--journal", j, "--format", "html", "-O", out)
    assert p.returncode == 3 and out.read_text().endswith("</html>\n") and "<script>" not in out.read_text()


@pytest.mark.parametrize("case", ["no-journal", "empty-range", "bad-policy", "missing-policy", "bad-type"])
def test_bad_input_gets_a_clear_error(tmp_path, case):
    j = journal(tmp_path / "j", [entry(ts_ns=NOW - 30 * 86400 * NS)])   # older than the default 7d
    cand = policy(tmp_path, NO_MAIL)
    args = {"no-journal": (cand, "--journal", tmp_path / "nope"),
            "empty-range": (cand, "--journal", j),
            "bad-policy": (policy(tmp_path, "[[rule]]\nexit = [\"connect\"]\naction = \"maybe\"\n", "bad.toml"),
                           "--journal", j),
            "missing-policy": (tmp_path / "missing.toml", "--journal", j),
            "bad-type": (cand, "--journal", j, "--type", "policy")}[case]
    p = sockgate("policy", "replay", *args)
    assert "Traceback" not in p.stderr and p.returncode in (1, 2), p.stderr
    msg = {"no-journal": "no journal here", "empty-range": "no journaled decisions",
           "bad-policy": "bad.toml:3:", "missing-policy": "missing.toml", "bad-type": "decision entries only"}[case]
    assert msg in p.stderr
    if case != "bad-type":
        assert p.returncode == 1


def test_groups_are_bounded(monkeypatch):
    monkeypatch.setattr(Report, "MAX_GROUPS", 3)
    es = [entry(remote=(f"10.{i}.0.1", 25)) for i in range(10)]
    for i, e in enumerate(es):
        e.seq = i + 1
    rep = replay(es, parse_policy(NO_MAIL, "c.toml"))
    assert rep.breaks == 10 and len(rep.groups) == 3 and rep.other == {"break": 7}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_decides_as_the_naive_oracle(seed):
    """The evaluator (compiled tables) against the first-match oracle, on synthetic calls."""
    rnd = random.Random(seed)
    text = "[defaults]\nconnect = \"reject\"\naccept = \"reject\"\n"
    for i in range(12):
        field = rnd.choice(['remote = ["10.0.0.0/8"]', f"remote_port = [{rnd.choice((25, 53, 443, 5432))}]",
                            f"user = [{rnd.randrange(1000, 1100)}]", f'program = ["{PROG}"]', "group = [101]"])
        text += (f'[[rule]]\nexit = ["{rnd.choice(("connect", "accept"))}"]\n{field}\n'
                 f'action = "{rnd.choice(("allow", "reject"))}"\n')
    pol = parse_policy(text, "r.toml")
    ev = Evaluator(pol)
    for e in decisions(400, seed, start_ns=NOW, hard=True):
        if e.type.value not in "CAO I" or e.outcome is None:
            continue
        call = call_of(e)
        want = naive.decide(pol, Query(call.exit, call.uid, call.gids, call.program, call.local, call.remote,
                                       call.protocol))
        got = ev.decide(call)
        assert got.outcome == want.outcome and got.rule == (want.rule_name or f"default:{call.exit.label}")


def test_unknown_owner_uid_is_the_kernels():
    from sockgate.kernel import layout as L
    from sockgate.policy.model import UID_UNKNOWN
    assert UID_UNKNOWN == L.UID_UNKNOWN


@pytest.mark.parametrize("column, value", [
    ("program", "CAST('/usr/bin/x' || char(0) || 'y' AS TEXT)"),   # os.stat raised ValueError
    ("program", "X'2f62696e'"),                                      # a blob: TypeError
    ("remote_port", "'abc'"),                                        # text: TypeError in a sort
    ("uid", "'x'"),
    ("remote_port", "2.5"),
])
def test_an_edited_row_of_the_wrong_type_is_named_not_a_traceback(tmp_path, column, value):
    """SQLite keeps whatever type an edited receiver puts in a column: replay names the row
    and the field (verify says the entry was altered), and never raises from deep inside."""
    import sqlite3

    j = journal(tmp_path / "j", [entry(remote=("10.0.0.1", 25)) for _ in range(10)])
    c = sqlite3.connect(j / "r000001.sgj")
    c.execute(f"UPDATE entry SET {column} = {value} WHERE seq = 5")
    c.commit()
    c.close()
    p = sockgate("policy", "replay", policy(tmp_path, NO_MAIL), "--journal", j)   # it tests every field here
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"damaged entry at seq 5: {column}" in p.stderr, p.stderr
    # a policy that tests no port: a damaged port is never read (verify is what finds the edit)
    p = sockgate("policy", "replay", policy(tmp_path, ALLOW_ALL), "--journal", j)
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr, p.stderr
