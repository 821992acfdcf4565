"""Where the two backends differ, each difference pinned down by a test that states what
each backend does (README, "Backends"). The suite runs on the cgroup backend on the host
and on the LSM backend in a guest (tests/vm, SOCKGATE_BACKEND=lsm)."""

from __future__ import annotations

from conftest import TEST_UID, install_text, served

LISTEN_RULE = f"""
[[rule]]
name = "test-user-may-not-listen"
exit = "listen"
user = ["{TEST_UID}"]
action = "reject"
"""


def test_status_names_the_backend(gate):
    assert gate.state.backend in ("lsm", "cgroup")


def test_listen_on_an_unbound_socket(scope, gate):
    """LSM judges listen() itself and fails it. The cgroup backend sees no bind(); it judges
    the listen when the socket starts listening (sockops, port known), cannot fail the call,
    and refuses every connection to that socket instead."""
    import json

    install_text(gate, LISTEN_RULE)
    r = scope.client("listen", addr="127.0.0.1", port=0, unbound=True)
    if gate.state.backend == "lsm":
        assert r["error"] == "EPERM"
        return
    assert r["ok"] is True
    server = scope.start("serve", uid=TEST_UID, addr="127.0.0.1", port=0, unbound=True)
    port = json.loads(server.stdout.readline())["listening"]
    c = scope.client("connect", uid=None, addr="127.0.0.1", port=port)
    assert c["error"] == "ECONNREFUSED" and c["seconds"] < 1
    assert served(server) == []


def test_where_a_listen_rejection_lands(scope, gate):
    """cgroup: bind() fails (the only hook with the port); LSM: bind() works, listen() fails."""
    install_text(gate, LISTEN_RULE)
    r = scope.client("bind", addr="127.0.0.1", port=8201)
    assert r["error"] == "EPERM"
    assert r["failed"] == ("listen" if gate.state.backend == "lsm" else "bind")


def test_a_client_that_binds_before_connecting(scope, gate):
    """cgroup: any TCP bind() is a listen decision, so a client binding a source port in a
    rejected range is refused; LSM: only listen() is, so the client is not."""
    install_text(gate, f"""
[[rule]]
name = "no-listen-8300s"
exit = "listen"
local_port = "8300-8399"
user = ["{TEST_UID}"]
action = "reject"
""")
    r = scope.client("connect", addr="127.0.0.1", port=5901, src="127.0.0.1", src_port=8350)
    if gate.state.backend == "lsm":
        assert r["error"] == "ECONNREFUSED"
    else:
        assert r["error"] == "EPERM"
