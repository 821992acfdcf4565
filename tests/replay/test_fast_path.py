"""The fast read path (Journal.decisions: DecisionRows as stored, read by the C Reader)
gives replay and learn exactly what the Entry path (Journal.entries) gives, on a journal of
hard cases: IBM i entries, unknown owners, vanished programs, UDP summaries with counts,
extra.groups / extra.exe / extra.protocol present, absent, malformed and of odd JSON types."""

from __future__ import annotations

import random

import pytest
from replaykit import NOW, NS, PROG, journal

from sockgate.errors import JournalError
from sockgate.journal import Filter, Journal
from sockgate.journal.store import decision_row
from sockgate.policy.learn import observe, render
from sockgate.policy.parse import parse_policy
from sockgate.policy.replay import DECISION_TYPES, call_of, replay
from sockgate.policy.synth import decisions

# values a hostile or older writer may have left in extra (flat scalars, as Entry.extra is)
GROUPS = ["1000,27", "101", "0,101,27", "x,y", "", True, 101, 10**30, 1.5, None, "101,\u00b2"]
EXES = ["2049:1234", "nope", 7, None, "1:2:3"]
PROTOCOLS = ["UDP", "tcp", "sctp", None, 17, True, "t\u0063p"]

POLICIES = {
    "candidate": """
        [[rule]]
        name = "no-postgres"
        exit = ["connect"]
        remote_port = [5432]
        action = "reject"
        """,
    "groups-and-sides": f"""
        [defaults]
        connect = "reject"
        accept = "reject"
        [[rule]]
        name = "g101"
        exit = ["connect", "accept"]
        group = [101]
        action = "allow"
        [[rule]]
        name = "prog"
        exit = ["connect"]
        program = ["{PROG}"]
        remote = ["10.0.0.0/8", "2001:db8::/32"]
        action = "allow"
        [[rule]]
        name = "dns-in"
        exit = ["accept"]
        protocol = ["udp"]
        local_port = [53]
        remote_port = ["1024-40000"]
        action = "allow"
        [[rule]]
        name = "listen-low"
        exit = ["listen"]
        local_port = ["1-1023"]
        action = "reject"
        """,
}


def hard_journal(tmp_path):
    rnd = random.Random(14)
    es = list(decisions(4000, 14, start_ns=NOW - 3 * 86400 * NS, span_ns=2 * 86400 * NS, hard=True))
    for e in es:
        r = rnd.random()
        if e.extra.get("owner") == "unknown" or e.source.value == "ibmi":
            continue
        if r < 0.3:
            e.extra["groups"] = rnd.choice(GROUPS)
        if rnd.random() < 0.3:
            e.extra["exe"] = rnd.choice(EXES)
        if rnd.random() < 0.1:
            e.extra["protocol"] = rnd.choice(PROTOCOLS)
        if rnd.random() < 0.02:
            e.extra.pop("protocol", None)
        if rnd.random() < 0.02:
            e.extra["flow"] = rnd.choice(["summary", "first", 1, None])
    journal(tmp_path / "j", es)
    return tmp_path / "j", es


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return hard_journal(tmp_path_factory.mktemp("fast"))


def _policy(name):
    import textwrap
    return parse_policy(textwrap.dedent(POLICIES[name]), f"{name}.toml")


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("against", [False, True])
def test_replay_fast_path_equals_entry_path(hard, name, against):
    jdir, es = hard
    cand = _policy(name)
    other = _policy("candidate" if name != "candidate" else "groups-and-sides") if against else None
    f = Filter(types=DECISION_TYPES)
    with Journal.open(jdir, readonly=True) as j:
        fast = replay(j.decisions(filter=f), cand, other).to_dict()
        slow = replay(j.entries(filter=f), cand, other).to_dict()
    assert fast == slow
    # the journal's hard cases are in it, so the comparison means something
    assert fast["decisions"] > 3000 and fast["skipped"]["udp-summary"]["count"] > 0
    if name == "groups-and-sides":   # tests what entries may lack
        assert {"groups", "ibmi-identity", "program-path"} <= set(fast["approximated"]["reasons"])
    assert fast["breaks"] + fast["opens"] > 0


@pytest.mark.parametrize("generalize", [False, True])
def test_learn_fast_path_equals_entry_path(hard, generalize):
    jdir, _ = hard
    f = Filter(types=DECISION_TYPES)
    with Journal.open(jdir, readonly=True) as j:
        fast = observe(j.decisions(filter=f), generalize=generalize)
        slow = observe(j.entries(filter=f), generalize=generalize)
    assert fast == slow and fast.decisions > 1000 and (generalize or fast.not_learned)
    assert render(fast, source="j", generalize=generalize) == render(slow, source="j", generalize=generalize)


def test_rows_read_back_as_entries_convert(hard):
    """decision_row(Entry) is what Journal.decisions reads for it, and call_of agrees on both."""
    jdir, _ = hard
    with Journal.open(jdir, readonly=True) as j:
        pairs = list(zip(j.decisions(filter=Filter(types=DECISION_TYPES)),
                         j.entries(filter=Filter(types=DECISION_TYPES))))
    assert len(pairs) > 3000
    for row, e in pairs:
        assert tuple(decision_row(e)) == row
        assert call_of(row) == call_of(e)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_cached_parts_decide_as_decide(hard, name, monkeypatch):
    """The Evaluator decides a call it has not seen from cached parts (identity, side bits,
    verdicts): row by row what evaluate.decide says of call_of(row), also with caches small
    enough to be cleared over and over."""
    from sockgate.policy import replay as rp
    from sockgate.journal.store import extra_facts

    jdir, _ = hard
    with Journal.open(jdir, readonly=True) as j:
        rows = [rp.as_row(r) for r in j.decisions(filter=Filter(types=DECISION_TYPES))]
    for cache_max in (rp.Evaluator.CACHE_MAX, 7):
        monkeypatch.setattr(rp.Evaluator, "CACHE_MAX", cache_max)
        ev = rp.Evaluator(_policy(name))
        for r in rows:
            facts = extra_facts(r.extra)
            assert ev.decide_row(r, facts) == ev.decide(call_of(r, facts)), r
            assert ev.verdict(r) == ev.decide(call_of(r)), r
        assert max(map(len, (ev._who, *ev._addr_bits, ev._port_bits, ev._verdicts, ev._cache))) <= cache_max


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("against", [False, True])
def test_replay_counts_as_deciding_each_row_alone(hard, name, against):
    """replay()'s counters (row kinds cached, counted in bulk) are what deciding every row on
    its own with decide(call_of(row)) gives, in any row order, also for rows that lack a
    side's address or port (their "no-local"/"no-remote" depends on it even where no rule
    tests that field: the key says whether it is there)."""
    from sockgate.journal.store import extra_facts
    from sockgate.policy import replay as rp

    jdir, _ = hard
    with Journal.open(jdir, readonly=True) as j:
        rows = [rp.as_row(r) for r in j.decisions(filter=Filter(types=DECISION_TYPES))]
    rnd = random.Random(7)
    for r in rnd.sample(rows, 600):   # the same calls without one side's address or port
        rows.append(r._replace(**{rnd.choice(["local_addr", "local_port", "remote_addr", "remote_port"]): None}))
    rnd.shuffle(rows)
    cand = _policy(name)
    other = _policy("candidate" if name != "candidate" else "groups-and-sides") if against else None
    new, old = rp.Evaluator(cand), rp.Evaluator(other) if other else None
    want = {"decisions": 0, "unchanged": 0, "same_effect": 0, "breaks": 0, "opens": 0, "approximated": 0}
    reasons, skipped = {}, {}
    for r in rows:
        outcome = rp._OUTCOMES[r.outcome]
        if outcome is None:
            continue
        facts = extra_facts(r.extra)
        why = rp.skip_reason(r.rule, facts)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        call = call_of(r, facts)
        nv = new.decide(call)
        ov = old.decide(call) if old else None
        old_outcome, old_rule = (ov.outcome, ov.rule) if ov else (outcome, r.rule or "-")
        approx = nv.approx | (ov.approx if ov else frozenset())
        want["decisions"] += 1
        want["approximated"] += bool(approx)
        for m in approx:
            reasons[m] = reasons.get(m, 0) + 1
        was, now = rp.passes(old_outcome), rp.passes(nv.outcome)
        kind = ("unchanged" if old_outcome is nv.outcome and old_rule == nv.rule else "same_effect") \
            if was == now else "breaks" if was else "opens"
        want[kind] += 1
    rep = replay(rows, cand, other)
    assert {k: getattr(rep, k) for k in want} == want
    assert rep.reasons == reasons and rep.skipped == skipped
    assert reasons.get("no-local", 0) + reasons.get("no-remote", 0) > 0 or name == "candidate"


def test_damaged_outcome_is_a_journal_error(tmp_path):
    """A row whose outcome is no outcome (a damaged receiver) stops replay with a clear error
    on both paths, not a traceback."""
    jdir, _ = hard_journal(tmp_path)
    import sqlite3
    db = sqlite3.connect(jdir / "r000001.sgj")
    db.execute("UPDATE entry SET outcome = 'bogus' WHERE seq = (SELECT min(seq) FROM entry WHERE type = 'C')")
    db.commit()
    db.close()
    f = Filter(types=DECISION_TYPES)
    with Journal.open(jdir, readonly=True) as j:
        for read in (j.decisions, j.entries):
            with pytest.raises(JournalError, match="damaged entry"):
                replay(read(filter=f), _policy("candidate"))
        with pytest.raises(JournalError, match="damaged entry"):
            observe(j.decisions(filter=f))
