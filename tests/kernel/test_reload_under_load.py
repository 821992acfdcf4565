"""Atomic swap under load: a connect loop runs while the policy flips between A and B.

A rejects port P1 with EPERM and allows P2; B allows P1 and rejects P2 with EACCES. A
decision that mixed A's and B's tables could show P1->EACCES or P2->EPERM (errno from one
slot, bitmaps from the other) or an out-of-range rule; none may ever appear. The events
(with the generation that decided them) must name rules of that generation's policy.
"""

from __future__ import annotations

import threading
import time

from conftest import TEST_UID, install_text

from sockgate.kernel.events import EventReader

P1, P2 = 7101, 7102
A = f"""
audit_levels = ["*NETCMN"]
[[rule]]
name = "a-rejects-p1"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = {P1}
action = "reject"
"""
B = f"""
errno = "EACCES"
audit_levels = ["*NETCMN"]
[[rule]]
name = "b-allows-p1"
exit = "connect"
remote_port = {P1}
action = "allow"

[[rule]]
name = "b-rejects-p2"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = {P2}
action = "reject"
"""


def test_every_decision_belongs_to_one_policy(scope, gate):
    t0 = time.monotonic()
    install_text(gate, A)
    # long enough for several swaps where an install is slow (the 6.1 guest under TCG)
    seconds = max(4.0, 8 * (time.monotonic() - t0))
    reader = EventReader(gate.maps["sg_events"])
    gen_policy = {gate.state.generation: "A"}
    stop = threading.Event()
    swaps = 0

    def flipper():
        nonlocal swaps
        which = "A"
        while not stop.is_set():
            which = "B" if which == "A" else "A"
            install_text(gate, B if which == "B" else A)
            gen_policy[gate.state.generation] = which
            swaps += 1

    t = threading.Thread(target=flipper)
    t.start()
    try:
        r = scope.client("loop", addr="127.0.0.1", ports=[P1, P2], seconds=seconds)
    finally:
        stop.set()
        t.join()
    counts = r["counts"]
    valid = {f"{P1}:EPERM", f"{P2}:ECONNREFUSED",      # A
             f"{P1}:ECONNREFUSED", f"{P2}:EACCES"}     # B
    assert set(counts) <= valid, counts
    assert swaps >= 5
    assert counts.get(f"{P1}:EPERM") and counts.get(f"{P1}:ECONNREFUSED"), "both policies were observed"

    events = []
    for _ in range(40):
        events += reader.poll(25)
    reader.close()
    rules = {"A": {0: ("rejected", P1)}, "B": {0: ("allowed", P1), 1: ("rejected", P2)}}
    checked = 0
    for e in events:
        if e.exit != "connect" or e.remote_port not in (P1, P2) or e.generation not in gen_policy:
            continue
        which = gen_policy[e.generation]
        if e.rule >= 0:
            assert rules[which][e.rule] == (e.verdict, e.remote_port), (which, e)
        else:
            assert e.verdict == "allowed"
        checked += 1
    assert checked > 50
