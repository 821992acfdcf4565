"""Engine semantics: matching, threshold windows (edges included), first_seen baselines,
dedup folding with counts."""

from __future__ import annotations

import pytest

from sockgate.monitor.engine import Engine
from sockgate.monitor.parse import parse_rules

from .conftest import S, T0, entry

HEAD = """
[monitor]
channels = ["c"]
[channel.c]
type = "command"
argv = ["true"]
[lists]
svc = ["svc-*", "backup"]
mgmt = ["10.20.0.0/16"]
"""


def engine(alerts: str) -> Engine:
    return Engine(parse_rules(HEAD + alerts))


def fired(eng: Engine, entries) -> list[str]:
    out = eng.process_all(entries)
    return [a.id for a in out]


def run(alerts: str, entries) -> list:
    return engine(alerts).process_all(entries)


def seqd(entries):
    for i, e in enumerate(entries, 1):
        e.seq = i
    return entries


@pytest.mark.parametrize("match,hits", [
    ('{ type = "C" }', [1, 2, 4, 5]),
    ('{ type = ["connect", "A"] }', [1, 2, 3, 4, 5]),
    ('{ outcome = "!allowed" }', [1, 2, 3, 6]),      # entries without an outcome match a negation
    ('{ user = "@svc" }', [1, 2, 5]),
    ('{ user = ["@svc", "!svc-ok"] }', [1, 5]),
    ('{ user = "!@svc", type = "C" }', [4]),
    ('{ remote = "@mgmt" }', [2]),
    ('{ remote = "!10.0.0.0/8", type = "C" }', [4, 5]),   # ::ffff:10.20.1.1 is 10.20.1.1
    ('{ remote = "::ffff:10.20.0.0/112" }', [2]),   # mapped networks compare as IPv4
    ('{ remote = "10.20.0.0/16" }', [2]),
    ('{ remote_port = ["25", "1-22"] }', [1, 4]),
    ('{ remote_port = 443 }', [2]),
    ('{ program = "/usr/bin/*" }', [1, 2, 3]),
    ('{ source = "ibmi" }', [5]),
    ('{ code = "SG" }', [6]),
    ('{ type = "detach" }', [6]),
    ('{ uid = "1000-1999" }', [3, 4]),
    ('{ extra.tls = "1.2" }', [5]),
    ('{ extra = { tls = ["1.*"] } }', [5]),
    ('{ host = "web*", outcome = "rejected" }', [1, 2]),
])
def test_match_fields(match, hits):
    entries = seqd([
        entry("C", "rejected", user="svc-app", program="/usr/bin/curl", remote_addr="10.1.2.3", remote_port=25, host="web1"),
        entry("C", "rejected", user="svc-ok", program="/usr/bin/curl", remote_addr="::ffff:10.20.1.1", remote_port=443, host="web2"),
        entry("A", "audit-rejected", user="alice", uid=1000, program="/usr/bin/nc", remote_addr="10.9.9.9"),
        entry("C", "allowed", user="bob", uid=1500, remote_addr="192.0.2.1", remote_port=22),
        entry("C", "allowed", user="backup", source="ibmi", remote_addr="2001:db8::1", extra={"tls": "1.2"}),
        entry("detach", None, source="sockgate", user=None),
    ])
    alerts = run(f'[[alert]]\nname = "a"\nsuppress = 0\nmatch = {match}\n', entries)
    assert [a.payload["entry"]["seq"] for a in alerts] == hits


def test_index_only_tests_candidate_rules():
    eng = engine('[[alert]]\nname = "a"\nmatch = { type = "L" }\n'
                 '[[alert]]\nname = "b"\nmatch = { type = "C", outcome = "rejected" }\n'
                 '[[alert]]\nname = "c"\nmatch = { outcome = "!allowed" }\n')
    from sockgate.record import EntryType, Outcome, Source
    names = lambda t, o: [r.name for r, _ in eng.index[(t, o, Source.KERNEL)]]
    assert names(EntryType.LISTEN, Outcome.ALLOWED) == ["a"]
    assert names(EntryType.CONNECT, Outcome.REJECTED) == ["b", "c"]
    assert names(EntryType.ACCEPT, Outcome.ALLOWED) == []
    assert names(EntryType.GAP, None) == ["c"]


def test_message_template():
    [a] = run('[[alert]]\nname = "a"\nseverity = "crit"\n'
              'message = "{{literal}} {user} {remote} {type_name} {extra.errno} {pid} {alert}/{severity}"\n',
              seqd([entry("C", user="svc", remote_addr="2001:db8::1", remote_port=443, extra={"errno": 13})]))
    assert a.payload["message"] == "{literal} svc [2001:db8::1]:443 connect 13 - a/critical"
    assert a.payload["severity"] == "critical"


THRESH = """
[[alert]]
name = "flood"
kind = "threshold"
count = 3
window = "10s"
group_by = ["remote_addr"]
suppress = 0
match = { type = "A", outcome = "rejected" }
"""


def test_threshold_window_edges():
    # 3 matches spanning just under the window fire; exactly the window does not.
    eng = engine(THRESH)
    a = fired(eng, seqd([entry("A", ts=0, remote_addr="1.1.1.1"), entry("A", ts=5, remote_addr="1.1.1.1"),
                         entry("A", ts=9.999999999, remote_addr="1.1.1.1")]))
    assert a == ["flood/3"]
    eng = engine(THRESH)
    es = seqd([entry("A", ts=0, remote_addr="1.1.1.1"), entry("A", ts=5, remote_addr="1.1.1.1"),
               entry("A", ts=10, remote_addr="1.1.1.1"),          # 0..10: exactly the window: no
               entry("A", ts=14.9, remote_addr="1.1.1.1")])       # 5..14.9: yes
    out = eng.process_all(es)
    assert [x.id for x in out] == ["flood/4"]
    p = out[0].payload
    assert p["count"] == 3 and p["group"] == {"remote_addr": "1.1.1.1"}
    assert p["first_ts_ns"] == T0 + 5 * S and p["last_ts_ns"] == T0 + int(14.9 * S)
    assert p["message"] == "flood: 3 matching entries within 10s for remote_addr=1.1.1.1"


def test_threshold_groups_and_reset():
    eng = engine(THRESH)
    es = seqd([entry("A", ts=i, remote_addr=f"1.1.1.{i % 2}") for i in range(6)]
              + [entry("A", ts=6, remote_addr="1.1.1.1", outcome="allowed")])   # not matching
    # addresses alternate: .0 at 0,2,4 and .1 at 1,3,5 -> both groups reach 3
    assert fired(eng, es) == ["flood/5", "flood/6"]
    # after firing the window starts over: 2 more for .0 do not fire
    assert fired(eng, seqd([entry("A", ts=7, remote_addr="1.1.1.0"), entry("A", ts=8, remote_addr="1.1.1.0")])) == []


def test_threshold_out_of_order_timestamps_are_clamped():
    eng = engine(THRESH)
    # an imported batch with old timestamps after newer ones counts at the newest time
    es = seqd([entry("A", ts=100, remote_addr="x"), entry("A", ts=1, remote_addr="x"), entry("A", ts=2, remote_addr="x")])
    assert len(fired(eng, es)) == 1


def test_threshold_repeats_fold_while_open():
    eng = engine(THRESH.replace("suppress = 0", 'suppress = "1m"'))
    es = seqd([entry("A", ts=i, remote_addr="1.1.1.1") for i in range(10)])
    out = eng.process_all(es)
    assert [a.id for a in out] == ["flood/3"]
    # the 7 matches after the alert opened are counted, not dropped
    out = []
    eng.tick(T0 + 62 * S, out)
    assert [a.id for a in out] == ["flood/3/repeat/1"]
    assert out[0].payload["count"] == 7 and out[0].payload["repeat"] is True


FIRST = """
[[alert]]
name = "new-listener"
kind = "first_seen"
key = ["program", "local_port"]
match = { type = "L", outcome = "allowed" }
"""


def test_first_seen_and_baseline():
    eng = engine(FIRST)
    eng.learning = True
    assert fired(eng, seqd([entry("L", "allowed", program="/usr/sbin/sshd", local_port=22)])) == []
    eng.learning = False
    es = [entry("L", "allowed", ts=1, seq=10, program="/usr/sbin/sshd", local_port=22),   # baseline
          entry("L", "allowed", ts=2, seq=11, program="/usr/bin/nc", local_port=4444),    # new
          entry("L", "allowed", ts=3, seq=12, program="/usr/bin/nc", local_port=4444),    # seen
          entry("L", "allowed", ts=4, seq=13, program="/usr/sbin/sshd", local_port=2222), # new port
          entry("L", "rejected", ts=5, seq=14, program="/usr/bin/x", local_port=1)]       # not matched
    out = eng.process_all(es)
    assert [a.id for a in out] == ["new-listener/11", "new-listener/13"]
    assert out[0].payload["group"] == {"program": "/usr/bin/nc", "local_port": 4444}


def test_first_seen_forget_edge():
    eng = engine(FIRST + 'forget = "1h"\n')
    es = [entry("L", "allowed", ts=0, seq=1, program="p", local_port=1),
          entry("L", "allowed", ts=3599, seq=2, program="p", local_port=1),       # seen 59:59 ago
          entry("L", "allowed", ts=3599 + 3600, seq=3, program="p", local_port=1)]  # exactly 1h since last: new
    assert fired(eng, es) == ["new-listener/1", "new-listener/3"]


EVERY = """
[[alert]]
name = "svc"
suppress = "5m"
message = "{user} refused {remote_addr}"
match = { type = "C", outcome = "rejected", user = "@svc" }
"""


def test_dedup_folds_with_count_never_drops():
    eng = engine(EVERY)
    es = seqd([entry("C", ts=i, user="svc-a", remote_addr="1.1.1.1", remote_port=1000 + i) for i in range(5)]
              + [entry("C", ts=10, user="svc-b", remote_addr="1.1.1.1")])
    assert fired(eng, es) == ["svc/1", "svc/6"]            # a different message is its own alert
    out = []
    eng.tick(T0 + 299 * S, out)
    assert out == []                                        # window still open
    eng.tick(T0 + 300 * S, out)                             # svc/1's window ends (svc/6 had no repeats)
    assert [a.id for a in out] == ["svc/1/repeat/1"]
    p = out[0].payload
    assert p["count"] == 4 and p["repeat_of"] == "svc/1" and "[repeated 4 more times from" in p["message"]
    assert p["entry"]["seq"] == 5                          # the latest repeat
    # the alert stays open one more window after a repeat report; quiet -> closes
    out = []
    eng.tick(T0 + 600 * S, out)
    assert out == [] and eng.open == {}
    # next occurrence is a new alert
    assert fired(eng, [entry("C", ts=700, seq=50, user="svc-a", remote_addr="1.1.1.1")]) == ["svc/50"]


def test_dedup_storm_is_one_notification_per_window():
    eng = engine(EVERY)
    es = seqd([entry("C", ts=i * 10, user="svc-a", remote_addr="1.1.1.1") for i in range(100)])  # 0..990s
    out = eng.process_all(es)
    eng.flush(out)
    # first alert + one repeat report per 5-minute window, counts add up to every entry
    assert out[0].id == "svc/1"
    assert len(out) == 5
    assert sum(a.payload["count"] for a in out) == 100


def test_dedup_by_fields():
    eng = engine(EVERY.replace('message = "{user} refused {remote_addr}"', 'dedup_by = ["user"]'))
    es = seqd([entry("C", ts=i, user="svc-a", remote_addr=f"1.1.1.{i}") for i in range(3)])
    assert fired(eng, es) == ["svc/1"]


def test_suppress_zero_means_every_entry():
    es = seqd([entry("C", ts=0, user="svc-a", remote_addr="1.1.1.1") for _ in range(3)])
    assert len(run(EVERY.replace('"5m"', "0"), es)) == 3


DISTINCT = """
[[alert]]
name = "spread"
kind = "threshold"
count = 3
window = "60s"
group_by = ["remote_addr"]
distinct = "host"
suppress = 0
match = { outcome = "rejected" }
"""


def test_threshold_distinct_counts_values_not_matches(tmp_path):
    """`distinct = "host"` (issue 15: one remote refused on N hosts in a minute): repeats
    from one host do not add up; 3 distinct hosts within the window fire, listing them;
    a host seen again moves to the newest; the window holds across a save and reload."""
    from sockgate.monitor.state import State

    eng = engine(DISTINCT)
    r = "203.0.113.9"
    es = seqd([entry("A", ts=0, host="web1", remote_addr=r)] * 1 + [entry("A", ts=i, host="web1", remote_addr=r)
                                                                    for i in range(1, 6)])
    assert fired(eng, es) == []                                     # six refusals, one host
    out = eng.process_all([entry("A", ts=10, seq=7, host="web2", remote_addr=r),
                           entry("A", ts=11, seq=8, host="web2", remote_addr="198.51.100.1")])   # other group
    assert out == []
    st = State.open(tmp_path / "state")
    st.commit(eng, [], cursor=8)
    st.close()
    eng2 = engine(DISTINCT)
    st = State.open(tmp_path / "state")
    st.load(eng2)
    st.close()
    out = eng2.process_all([entry("A", ts=20, seq=9, host="web3", remote_addr=r)])
    assert [a.id for a in out] == ["spread/9"]
    p = out[0].payload
    assert p["count"] == 3 and p["distinct"] == {"field": "host", "values": ["web1", "web2", "web3"]}
    assert p["first_ts_ns"] == T0 + 5 * S                           # web1's newest
    # outside the window: web1 at 100, web2 at 170, web3 at 175 -> 170-100 >= 60: no
    eng = engine(DISTINCT)
    assert fired(eng, seqd([entry("A", ts=t, host=h, remote_addr=r)
                            for t, h in ((100, "web1"), (170, "web2"), (175, "web3"))])) == []


def test_threshold_distinct_rule_errors():
    from sockgate.errors import RulesErrors

    for bad, msg in (('distinct = ["host", "user"]', "expected one field name"),
                     ('distinct = "nosuch"', "unknown field 'nosuch'"),
                     ('distinct = "remote_addr"', "also in group_by")):
        with pytest.raises(RulesErrors, match=msg):
            engine(DISTINCT.replace('distinct = "host"', bad))
    with pytest.raises(RulesErrors, match="distinct"):
        engine(DISTINCT.replace('kind = "threshold"', 'kind = "first_seen"\nkey = ["host"]')
               .replace("count = 3\n", "").replace('window = "60s"\n', "").replace('group_by = ["remote_addr"]\n', ""))
