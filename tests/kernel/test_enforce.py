"""Real enforcement: programs attached in the test's own cgroup + netns, real sockets,
real errnos. Destinations are loopback addresses inside the test netns, where nothing
listens unless the test starts a server: an allowed connect gets ECONNREFUSED, a
rejected one EPERM (or the policy's errno)."""

from __future__ import annotations

import json
import os
import sys
import time

from conftest import OTHER_GID, TEST_UID, install_text, served

from sockgate.kernel.events import EventReader


def test_connect_rejected_for_test_uid_root_allowed(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "no-5101"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 5101
action = "reject"
""")
    assert scope.client("connect", addr="127.0.0.1", port=5101)["error"] == "EPERM"
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=5101)["error"] == "ECONNREFUSED"
    assert scope.client("connect", addr="127.0.0.1", port=5102)["error"] == "ECONNREFUSED"


def test_group_rule_matches_supplementary_and_primary_group(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "group"
exit = "connect"
group = ["{OTHER_GID}"]
action = "reject"
""")
    assert scope.client("connect", groups=[OTHER_GID], addr="127.0.0.1", port=5201)["error"] == "EPERM"
    assert scope.client("connect", gid=OTHER_GID, addr="127.0.0.1", port=5201)["error"] == "EPERM"
    assert scope.client("connect", groups=[], addr="127.0.0.1", port=5201)["error"] == "ECONNREFUSED"


def test_negated_group_and_user(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "only-group-4343-may-connect-5301"
exit = "connect"
remote_port = 5301
group = ["!{OTHER_GID}"]
action = "reject"

[[rule]]
name = "nobody-but-root-5302"
exit = "connect"
remote_port = 5302
user = ["!0"]
action = "reject"
""")
    assert scope.client("connect", groups=[OTHER_GID], addr="127.0.0.1", port=5301)["error"] == "ECONNREFUSED"
    assert scope.client("connect", groups=[1, 2, 3], addr="127.0.0.1", port=5301)["error"] == "EPERM"
    assert scope.client("connect", addr="127.0.0.1", port=5302)["error"] == "EPERM"
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=5302)["error"] == "ECONNREFUSED"


def test_program_rule_matches_by_inode(scope, gate, tmpfs_python):
    # a copy of this Python, on tmpfs (see the fixture): another inode, the same program
    copy = tmpfs_python
    install_text(gate, f"""
[[rule]]
name = "copied-python-may-not-connect"
exit = "connect"
program = ["{copy}"]
action = "reject"
""")
    os.environ["PYTHONHOME"] = sys.base_prefix  # the copy must find its standard library
    try:
        assert scope.client("connect", exe=copy, addr="127.0.0.1", port=5401)["error"] == "EPERM"
    finally:
        del os.environ["PYTHONHOME"]
    assert scope.client("connect", addr="127.0.0.1", port=5401)["error"] == "ECONNREFUSED"


def test_ipv4_ipv6_and_v4_mapped(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "v4"
exit = "connect"
user = ["{TEST_UID}"]
remote = ["127.0.0.0/8"]
remote_port = 5501
action = "reject"

[[rule]]
name = "v6"
exit = "connect"
user = ["{TEST_UID}"]
remote = ["::1/128"]
remote_port = 5502
action = "reject"
""")
    assert scope.client("connect", addr="127.0.0.1", port=5501)["error"] == "EPERM"
    assert scope.client("connect", addr="::ffff:127.0.0.1", port=5501)["error"] == "EPERM"  # v4-mapped
    assert scope.client("connect", addr="::1", port=5501)["error"] == "ECONNREFUSED"
    assert scope.client("connect", addr="::1", port=5502)["error"] == "EPERM"
    assert scope.client("connect", addr="127.0.0.1", port=5502)["error"] == "ECONNREFUSED"


def test_a_short_ipv6_network_holds_no_ipv4_address(scope, gate):
    """::/0 is every IPv6 address, not IPv4 written v4-mapped (docs/policy.md)."""
    install_text(gate, f"""
[[rule]]
name = "all-v6"
exit = "connect"
user = ["{TEST_UID}"]
remote = ["::/0"]
remote_port = 5503
action = "reject"
""")
    assert scope.client("connect", addr="::1", port=5503)["error"] == "EPERM"
    assert scope.client("connect", addr="::ffff:127.0.0.1", port=5503)["error"] == "ECONNREFUSED"
    assert scope.client("connect", addr="127.0.0.1", port=5503)["error"] == "ECONNREFUSED"


def test_port_ranges_edges(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "range"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = ["6000-6010", "6100"]
action = "reject"
""")
    expect = {5999: "ECONNREFUSED", 6000: "EPERM", 6005: "EPERM", 6010: "EPERM", 6011: "ECONNREFUSED",
              6100: "EPERM", 6101: "ECONNREFUSED"}
    got = {p: scope.client("connect", addr="127.0.0.1", port=p)["error"] for p in expect}
    assert got == expect


def test_udp_connect_is_judged(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "no-dns"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 53
action = "reject"
""")
    assert scope.client("connect", udp=True, addr="127.0.0.1", port=53)["error"] == "EPERM"
    assert scope.client("connect", udp=True, addr="127.0.0.1", port=54)["ok"] is True


def test_listen_rejected_with_eperm_and_custom_errno(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "low-ports-root-only"
exit = "listen"
local_port = ["8000-8100"]
user = ["!0"]
action = "reject"
""")
    assert scope.client("listen", addr="127.0.0.1", port=8050)["error"] == "EPERM"
    assert scope.client("listen", addr="::", port=8050)["error"] == "EPERM"
    assert scope.client("listen", uid=None, addr="127.0.0.1", port=8050)["ok"] is True
    assert scope.client("listen", addr="127.0.0.1", port=9000)["ok"] is True
    # the errno is configurable
    install_text(gate, f"""
errno = "EACCES"
[[rule]]
name = "listen-8050"
exit = "listen"
local_port = 8050
user = ["{TEST_UID}"]
action = "reject"
""")
    assert scope.client("listen", addr="127.0.0.1", port=8050)["error"] == "EACCES"


def _serve(scope, port, uid=None, addr="127.0.0.1"):
    p = scope.start("serve", uid=uid, addr=addr, port=port)
    first = json.loads(p.stdout.readline())
    assert first["listening"] == port
    return p


def test_accept_from_rejected_source_is_refused_at_once(scope, gate):
    install_text(gate, """
[[rule]]
name = "not-from-127.0.0.2"
exit = "accept"
local_port = 9100
remote = ["127.0.0.2/32"]
action = "reject"
""")
    server = _serve(scope, 9100)
    bad = scope.client("connect", uid=None, src="127.0.0.2", addr="127.0.0.1", port=9100, timeout=5)
    good = scope.client("connect", uid=None, src="127.0.0.3", addr="127.0.0.1", port=9100)
    assert bad["error"] == "ECONNREFUSED" and bad["seconds"] < 1.0
    assert good["ok"] is True
    assert served(server) == ["127.0.0.3"]  # accept() never returned the rejected client


def test_accept_rules_test_the_listeners_owner(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "test-user-servers-unreachable"
exit = "accept"
user = ["{TEST_UID}"]
action = "reject"
""")
    mine = _serve(scope, 9201, uid=TEST_UID)
    roots = _serve(scope, 9202, uid=None)
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=9201)["error"] == "ECONNREFUSED"
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=9202)["ok"] is True
    assert served(mine) == [] and served(roots) == ["127.0.0.1"]


def test_accept_ipv6(scope, gate):
    install_text(gate, """
[[rule]]
name = "v6-accept"
exit = "accept"
local_port = 9301
remote = ["::1"]
action = "reject"
""")
    server = _serve(scope, 9301, addr="::")
    assert scope.client("connect", uid=None, addr="::1", port=9301)["error"] == "ECONNREFUSED"
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=9301)["ok"] is True
    assert served(server) == ["::ffff:127.0.0.1"]


def test_audit_mode_reports_but_never_blocks(scope, gate):
    install_text(gate, f"""
mode = "audit"
audit_levels = ["*NETFAIL"]
[[rule]]
name = "would-reject"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 5601
action = "reject"
""")
    reader = EventReader(gate.maps["sg_events"])
    try:
        reader.poll(0)
        assert scope.client("connect", addr="127.0.0.1", port=5601)["error"] == "ECONNREFUSED"
        deadline, events = time.monotonic() + 3, []
        while time.monotonic() < deadline and not events:
            events = [e for e in reader.poll(100) if e.exit == "connect" and e.remote_port == 5601]
        assert len(events) == 1
        e = events[0]
        assert (e.verdict, e.rule, e.euid, e.remote_addr) == ("audit-rejected", 0, TEST_UID, "127.0.0.1")
        assert e.comm.startswith("python")
    finally:
        reader.close()


def test_per_rule_audit_mode_inside_enforcing_policy(scope, gate):
    install_text(gate, f"""
[[rule]]
name = "audit-only"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 5701
action = "reject"
mode = "audit"

[[rule]]
name = "enforced"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 5702
action = "reject"
""")
    assert scope.client("connect", addr="127.0.0.1", port=5701)["error"] == "ECONNREFUSED"
    assert scope.client("connect", addr="127.0.0.1", port=5702)["error"] == "EPERM"


def test_events_plus_drops_equal_selected_decisions(scope, gate):
    install_text(gate, """
audit_levels = ["*NETCMN"]
""")
    reader = EventReader(gate.maps["sg_events"])
    try:
        before = gate.stats()
        r = scope.client("loop", addr="127.0.0.1", ports=[5801], seconds=1.0)
        n = sum(r["counts"].values())
        got = 0
        for _ in range(20):
            got += len(reader.poll(50))
        after = gate.stats()
        selected = after["selected"] - before["selected"]
        dropped = after["dropped"] - before["dropped"]
        assert selected >= n            # at least one connect decision per attempt (+ accepts)
        assert got + dropped == selected
    finally:
        reader.close()


def test_accept_owner_of_a_listener_on_an_unbound_socket(scope, gate):
    """listen() without bind(): the kernel picks the port; the owner still comes from the
    listening socket (recorded at listen()), so owner rules hold."""
    install_text(gate, f"""
[[rule]]
name = "test-user-servers-unreachable"
exit = "accept"
user = ["{TEST_UID}"]
action = "reject"
""")
    p = scope.start("serve", uid=TEST_UID, addr="127.0.0.1", port=0, unbound=True)
    port = json.loads(p.stdout.readline())["listening"]
    assert scope.client("connect", uid=None, addr="127.0.0.1", port=port)["error"] == "ECONNREFUSED"
    assert served(p) == []


def test_listeners_from_before_the_load_are_indexed(scope):
    """A server already listening when sockgate loads: found through /proc, its socket
    duplicated with pidfd_getfd and indexed, so accept rules on its owner apply."""
    from sockgate.kernel.loader import Gate
    from sockgate.kernel.owners import seed_owners

    server = _serve(scope, 9401, uid=TEST_UID)  # serves until told, past a slow load (8 s in the 6.1 guest)
    g = Gate.load(scope.pin_dir, scope_cgroup=scope.cgroup, netns=scope.netns)
    try:
        install_text(g, f"""
[[rule]]
name = "test-user-servers-unreachable"
exit = "accept"
user = ["{TEST_UID}"]
action = "reject"
""")
        # the daemon seeds from its own netns; here we enter the test netns to do the same
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        ns = os.open(scope.netns, os.O_RDONLY)
        try:
            assert libc.setns(ns, 0x40000000) == 0
            n, total = seed_owners(g.maps["sg_listeners"], g.maps["sg_owners"])
        finally:
            libc.setns(own, 0x40000000)
            os.close(own)
            os.close(ns)
        assert n >= 1 and total >= n
        assert scope.client("connect", uid=None, addr="127.0.0.1", port=9401)["error"] == "ECONNREFUSED"
    finally:
        g.unload()
    assert served(server) == []


def test_a_reader_that_keeps_up_loses_nothing(scope, gate):
    """Two connect loops (one per CPU) against a reader draining all the time: every
    selected decision arrives and none is dropped. (The consumer position was once written
    through struct.pack_into, which zeroes the 8 bytes before filling them: producers that
    read the 0 saw a full ring and dropped ~1 event in 100k.) The loops are paced so the
    ring wraps several times while a reader that merely shares the CPUs keeps up: unpaced,
    a CI machine under load starved the reader for the ~0.4 s the 4 MiB ring lasts."""
    import threading

    install_text(gate, """
audit_levels = ["*NETCMN"]
""")
    reader = EventReader(gate.maps["sg_events"])
    got, stop = [0], threading.Event()

    def drain():
        while not stop.is_set():
            got[0] += len(reader.poll_raw(20))

    t = threading.Thread(target=drain)
    try:
        before = gate.stats()
        t.start()
        loops = [scope.start("loop", uid=TEST_UID, addr="127.0.0.1", ports=[5811 + i], seconds=6.0, rate=4000)
                 for i in range(2)]
        attempts = sum(sum(json.loads(p.communicate(timeout=60)[0].splitlines()[-1])["counts"].values())
                       for p in loops)
        time.sleep(0.3)
        stop.set()
        t.join()
        got[0] += len(reader.read_raw())
        after = gate.stats()
        selected = after["selected"] - before["selected"]
        assert selected >= attempts
        assert after["dropped"] - before["dropped"] == 0
        assert got[0] == selected
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        reader.close()


def test_held_events_are_read_again_by_the_next_reader(scope, gate):
    """The daemon reads with hold=True and gives the ring's space back only once the
    journal has committed: a reader that dies in between (kill -9 before the commit) leaves
    the records to the next one, which reads them again; released records are not."""
    install_text(gate, f"""
audit_levels = ["*NETFAIL"]
[[rule]]
name = "no-5611"
exit = "connect"
user = ["{TEST_UID}"]
remote_port = 5611
action = "reject"
""")
    EventReader(gate.maps["sg_events"]).close()
    first = EventReader(gate.maps["sg_events"])
    first.poll(0)
    first.close()
    for _ in range(3):
        assert scope.client("connect", addr="127.0.0.1", port=5611)["error"] == "EPERM"
    a = EventReader(gate.maps["sg_events"])
    try:
        got, deadline = [], time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += [t for t in a.poll_raw(20, hold=True)]
        assert len(got) == 3 and a.holding
    finally:
        a.close()                                   # died before "the commit": nothing released
    b = EventReader(gate.maps["sg_events"])
    try:
        again = b.poll_raw(0, hold=True)
        assert again == got, "held records were lost with their reader"
        b.release(b.read_pos)
        assert not b.holding
    finally:
        b.close()
    c = EventReader(gate.maps["sg_events"])
    try:
        assert c.poll_raw(0) == [], "released records came back"
    finally:
        c.close()
