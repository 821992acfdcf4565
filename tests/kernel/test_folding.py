"""No user can fill the journal with rejections (issue 11, item 5): past the policy's
fold_rejections per user and second, the kernel counts a user's rejections instead of
sending each, and the daemon journals exact summaries. Nothing is lost: the entries and the
summaries' counts add up to every rejected call; other users are not affected."""

from __future__ import annotations

from conftest import OTHER_UID, TEST_UID, journal_entries, run_script, wait_loaded

from sockgate.journal import EntryType

PORT = 7341
N = 60

POLICY = f"""
audit_levels = ["*NETFAIL"]
fold_rejections = 5
[[rule]]
name = "no-{PORT}"
exit = "connect"
remote_port = {PORT}
action = "reject"
"""


def _rejected_connects(scope, uid: int, n: int) -> list[str]:
    calls = []
    for i in range(n):
        calls += [{"do": "socket", "sock": f"s{i}", "proto": "tcp", "family": 4},
                  {"do": "connect", "sock": f"s{i}", "addr": "127.0.0.1", "port": PORT},
                  {"do": "close", "sock": f"s{i}"}]
    return [r.get("error") for c, r in zip(calls, run_script(scope, calls, uid=uid)) if c["do"] == "connect"]


def test_a_flood_of_rejections_folds_into_exact_summaries(scope, tmp_path):
    journal = tmp_path / "journal"
    d = scope.daemon(scope.write_policy(POLICY), journal=journal)
    wait_loaded(d)
    assert _rejected_connects(scope, TEST_UID, N) == ["EPERM"] * N   # enforcement is unchanged
    assert _rejected_connects(scope, OTHER_UID, 3) == ["EPERM"] * 3

    def mine(es, uid):
        single = [e for e in es if e.type == EntryType.CONNECT and e.uid == uid and "folded" not in e.extra]
        folded = [e for e in es if e.type == EntryType.CONNECT and e.uid == uid and e.extra.get("folded")]
        return single, folded

    def complete(es):
        single, folded = mine(es, TEST_UID)
        return len(single) + sum(e.extra["count"] for e in folded) == N
    # both users' entries: the other's 3 may be committed just after the first's last summary
    entries = journal_entries(journal, lambda es: complete(es) and len(mine(es, OTHER_UID)[0]) >= 3, timeout=20)
    single, folded = mine(entries, TEST_UID)
    assert complete(entries), (len(single), [e.extra for e in folded])
    assert 5 <= len(single) < N and folded  # the first 5 of each second one by one, the rest counted
    assert all(e.rule == f"no-{PORT}" and e.outcome.value == "rejected" and e.extra["folded"] == "summary"
               for e in folded)
    other_single, other_folded = mine(entries, OTHER_UID)
    assert len(other_single) == 3 and not other_folded  # another user's own budget

