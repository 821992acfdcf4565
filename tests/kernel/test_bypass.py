"""The bypass suite (issue 11, "Airtight exit points"): every socket path to an address is
judged by its exit point, the same on both backends, with the caller's identity at the
moment of the call, and every refusal is journaled.

Each test runs one scripted client (sockclient.py's "script" op) in its own scope: root
sets up receivers and listeners, switches its effective ids to the test user (or forks a
child as that user) for the calls under test, and switches back to see what arrived. A
test compares a {call: outcome} map with the expected one, so a failure lists every path
that leaked at once. Outcomes: "ok", an errno name, or "ETIMEDOUT" (nothing arrived
within the short receive timeout).

Destinations are loopback addresses of the test netns: a TCP connect that is allowed and
finds no listener gets ECONNREFUSED, a refused one EPERM (or the policy's errno).
"""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest
from conftest import OTHER_UID, TEST_UID, install_text, journal_entries, run_script, wait_loaded

UNSUPPORTED = ("EPROTONOSUPPORT", "ESOCKTNOSUPPORT")
# how long a journal check waits for the daemon to write what it must (it stops waiting as
# soon as it is there); the QEMU guest runs ~20x slower
JOURNAL_WAIT = 40.0 if os.environ.get("SGVM") else 15.0


# ---- script building -------------------------------------------------------------------

def sock(name, proto="tcp", family=4, **kw):
    return {"do": "socket", "sock": name, "proto": proto, "family": family, **kw}


def call(do, name="s", **kw):
    return {"do": do, "sock": name, **kw}


def as_(uid, **kw):
    return {"do": "as", "uid": uid, **kw}


ROOT = {"do": "as", "uid": 0}


def fam(addr):
    return 6 if ":" in addr else 4


def probe(pid, proto, addr, port, do="connect", family=None, **kw):
    """A fresh socket, one call on it (labelled pid), closed."""
    n = f"p-{pid}"
    return [sock(n, proto, family or fam(addr), optional=True), call(do, n, addr=addr, port=port, id=pid, **kw),
            call("close", n)]


def receiver(name, proto, addr, port):
    return [sock(name, proto, fam(addr), v6only=1 if fam(addr) == 6 else None), call("bind", name, addr=addr, port=port)]


def outcome(r):
    if r.get("timeout"):
        return "ETIMEDOUT"
    return "ok" if r["ok"] else (r["error"] or f"errno {r['errno']}")


def run(scope, calls, **kw):
    """Run the script; every call without an "id" is set-up and must succeed. Returns
    {id: result} for the labelled calls (results of a forked child's calls included)."""
    results = run_script(scope, calls, **kw)
    out = {}

    def walk(cs, rs):
        for c, r in zip(cs, rs):
            if "id" in c:
                out[c["id"]] = r
            elif not r["ok"] and not c.get("optional"):
                raise AssertionError(f"set-up call {c} failed: {r}")
            if c["do"] == "fork":
                walk(c["calls"], r["results"])

    walk(calls, results)
    return out


def outcomes(res):
    return {k: outcome(v) for k, v in res.items()}


def datagrams(res, rid):
    """The payloads a drain call got."""
    return sorted(d[0] for d in res[rid]["datagrams"])


def rule(name, exit, action="reject", **fields):
    lines = [f'[[rule]]\nname = "{name}"\nexit = ["{exit}"]\naction = "{action}"']
    for k, v in fields.items():
        vals = v if isinstance(v, list) else [v]
        lines.append(f"{k} = [{', '.join(repr(str(x)).replace(chr(39), chr(34)) for x in vals)}]")
    return "\n".join(lines) + "\n"


# ---- connect exit ---------------------------------------------------------------------

def test_connect_every_protocol_family_and_the_protocol_field(scope, gate):
    """connect exit: TCP, MPTCP (IPPROTO_MPTCP), UDP and UDP-Lite connect() over IPv4, IPv6
    and v4-mapped; `protocol = "tcp"` also covers MPTCP, `"udp"` also UDP-Lite, `"mptcp"`
    only MPTCP; root (not named by the rules) is never refused."""
    install_text(gate, rule("tcp-5601", "connect", protocol="tcp", user=TEST_UID, remote_port=5601)
                 + rule("udp-5602", "connect", protocol="udp", user=TEST_UID, remote_port=5602)
                 + rule("mptcp-5603", "connect", protocol="mptcp", user=TEST_UID, remote_port=5603))
    want = {}
    calls = []
    for proto in ("tcp", "mptcp", "udp", "udplite"):
        stream = proto in ("tcp", "mptcp")
        for addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            for port in (5601, 5602, 5603, 5604):
                refused = {5601: stream, 5602: not stream, 5603: proto == "mptcp"}.get(port, False)
                calls += probe(f"{proto} {addr} {port}", proto, addr, port)
                want[f"{proto} {addr} {port}"] = "EPERM" if refused else ("ECONNREFUSED" if stream else "ok")
                if proto == "udplite" and gate.state.backend == "cgroup":
                    want[f"{proto} {addr} {port}"] = "ok"  # documented limit: no connect hook for UDP-Lite
    got = outcomes(run(scope, [as_(TEST_UID)] + calls))
    assert got == want
    root = outcomes(run(scope, calls))
    assert root == {k: ("ECONNREFUSED" if k.split()[0] in ("tcp", "mptcp") else "ok") for k in want}


def test_connect_with_any_address_length_the_kernel_accepts(scope, gate):
    """connect exit: a 24-byte sockaddr_in6 (SIN6_LEN_RFC2133, no scope id: the kernel takes
    it; the LSM hook once wanted 28), longer-than-needed sockaddrs (v4 32 bytes, v6 32
    bytes), v4-mapped in 24 bytes, for TCP, MPTCP and UDP; the allowed port still works."""
    install_text(gate, rule("no-5611", "connect", user=TEST_UID, remote_port=5611))
    calls, want = [as_(TEST_UID)], {}
    for proto in ("tcp", "mptcp", "udp"):
        stream = proto != "udp"
        for addr, n in (("::1", 24), ("::ffff:127.0.0.1", 24), ("::1", 32), ("127.0.0.1", 32)):
            for port in (5611, 5612):
                k = f"{proto} {addr}/{n} {port}"
                calls += probe(k, proto, addr, port, do="connect_raw", addrlen=n)
                want[k] = "EPERM" if port == 5611 else ("ECONNREFUSED" if stream else "ok")
    assert outcomes(run(scope, calls)) == want


def test_udp_sendto_with_a_24_byte_sockaddr_in6_sends_nothing(scope, gate):
    """connect exit: UDP sendto() with a 24-byte sockaddr_in6 (plain and v4-mapped) is judged;
    the receivers get only what was sent to the allowed port."""
    install_text(gate, rule("no-5613", "connect", user=TEST_UID, remote_port=5613))
    calls = receiver("r4", "udp", "127.0.0.1", 5613) + receiver("r6", "udp", "::1", 5613) \
        + receiver("ok", "udp", "::1", 5614) + [as_(TEST_UID), sock("u", "udp", 6)]
    for addr in ("::1", "::ffff:127.0.0.1"):
        calls.append(call("sendto", "u", id=f"{addr} 5613", raw=True, addr=addr, port=5613, addrlen=24, data=addr))
    calls += [call("sendto", "u", id="::1 5614", raw=True, addr="::1", port=5614, addrlen=24, data="fine"), ROOT]
    calls += [call("drain", n, id=f"drain {n}") for n in ("r4", "r6", "ok")]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in ("::1 5613", "::ffff:127.0.0.1 5613", "::1 5614")} == \
        {"::1 5613": "EPERM", "::ffff:127.0.0.1 5613": "EPERM", "::1 5614": "ok"}
    assert (datagrams(res, "drain r4"), datagrams(res, "drain r6"), datagrams(res, "drain ok")) == ([], [], ["fine"])


def test_an_ipv4_sockaddr_on_an_ipv6_udp_socket(scope, gate):
    """connect exit: an AF_INET6 UDP socket may connect()/sendto() with an AF_INET sockaddr
    (the kernel takes the IPv4 path); it must hit the IPv4 rules like any IPv4 address, and
    a hook that parses the address by the socket's family must not misread it."""
    install_text(gate, rule("no-5615", "connect", user=TEST_UID, remote="127.0.0.0/8", remote_port=5615))
    calls = receiver("r", "udp", "127.0.0.1", 5615) + receiver("ok", "udp", "127.0.0.1", 5616) + [as_(TEST_UID)]
    calls += probe("connect 5615", "udp", "127.0.0.1", 5615, do="connect_raw", family=6, as_family=4)
    calls += probe("connect 5616", "udp", "127.0.0.1", 5616, do="connect_raw", family=6, as_family=4)
    calls += probe("sendto 5615", "udp", "127.0.0.1", 5615, do="sendto", family=6, raw=True, as_family=4, data="bad")
    calls += probe("sendto 5616", "udp", "127.0.0.1", 5616, do="sendto", family=6, raw=True, as_family=4, data="good")
    calls += [ROOT, call("drain", "r", id="r"), call("drain", "ok", id="ok")]
    res = run(scope, calls)
    assert outcomes({k: res[k] for k in ("connect 5615", "connect 5616", "sendto 5615", "sendto 5616")}) == \
        {"connect 5615": "EPERM", "connect 5616": "ok", "sendto 5615": "EPERM", "sendto 5616": "ok"}
    assert (datagrams(res, "r"), datagrams(res, "ok")) == ([], ["good"])


def test_an_address_the_program_cannot_parse_never_connects(scope, gate):
    """connect exit: truncated sockaddrs (AF_INET6 shorter than 24 bytes, AF_INET shorter
    than 16, a bare family) to a port the policy allows: refused by the kernel (EINVAL) or
    the program (EPERM), never connected, and nothing sent over UDP."""
    install_text(gate, rule("no-5617", "connect", user=TEST_UID, remote_port=5617))
    calls = [sock("l6", "tcp", 6, reuse=True), call("bind", "l6", addr="::", port=5618), call("listen", "l6")]
    calls += receiver("r6", "udp", "::1", 5618) + receiver("r4", "udp", "127.0.0.1", 5618) + [as_(TEST_UID)]
    for n in (23, 20, 8, 2):
        calls += probe(f"tcp6/{n}", "tcp", "::1", 5618, do="connect_raw", addrlen=n)
        calls += probe(f"udp6 sendto/{n}", "udp", "::1", 5618, do="sendto", raw=True, addrlen=n)
    for n in (15, 8, 2):
        calls += probe(f"tcp4/{n}", "tcp", "127.0.0.1", 5618, do="connect_raw", addrlen=n)
        calls += probe(f"udp4 connect/{n}", "udp", "127.0.0.1", 5618, do="connect_raw", addrlen=n)
        calls += probe(f"udp4 sendto/{n}", "udp", "127.0.0.1", 5618, do="sendto", raw=True, addrlen=n)
    calls += [ROOT, call("accept", "l6", id="accepted", timeout=0.3), call("drain", "r6", id="r6"),
              call("drain", "r4", id="r4")]
    res = run(scope, calls)
    bad = {k: outcome(r) for k, r in res.items() if "/" in k and outcome(r) not in ("EINVAL", "EPERM")}
    assert bad == {}
    assert outcome(res["accepted"]) == "ETIMEDOUT"          # no truncated connect got through
    assert (datagrams(res, "r6"), datagrams(res, "r4")) == ([], [])


def test_tcp_fast_open_without_connect(scope, gate):
    """connect exit: TCP Fast Open, sendto(MSG_FASTOPEN) on a never-connected socket (v4 and
    v6) and TCP_FASTOPEN_CONNECT + connect(), are refused; the listener never sees them; the
    same calls to an allowed port deliver their data."""
    install_text(gate, rule("no-5621", "connect", user=TEST_UID, remote_port=5621))
    calls = []
    for port in (5621, 5622):
        calls += [sock(f"l{port}", "tcp", 6, reuse=True), call("bind", f"l{port}", addr="::", port=port),
                  call("listen", f"l{port}")]
    calls.append(as_(TEST_UID))
    for port in (5621, 5622):
        for addr in ("127.0.0.1", "::1"):
            calls += probe(f"tfo {addr} {port}", "tcp", addr, port, do="sendto", fastopen=True, data=f"tfo {addr}")
        n = f"tfoc-{port}"
        calls += [sock(n, "tcp", 4), call("setsockopt", n, level=socket.IPPROTO_TCP, opt=30, value=1),
                  call("connect", n, addr="127.0.0.1", port=port, id=f"tfo-connect {port}"),
                  call("send", n, data="tfo-connect", id=f"tfo-connect send {port}"), call("close", n)]
    calls.append(ROOT)
    for port in (5621, 5622):
        calls += [call("accept", f"l{port}", id=f"accept {port} #{i}", timeout=0.3) for i in range(3)]
    res = run(scope, calls)
    assert outcome(res.pop("tfo-connect send 5621")) != "ok"      # nothing to send on: never connected
    assert {k: outcome(res[k]) for k in res if k.startswith("tfo")} == {
        "tfo 127.0.0.1 5621": "EPERM", "tfo ::1 5621": "EPERM", "tfo-connect 5621": "EPERM",
        "tfo 127.0.0.1 5622": "ok", "tfo ::1 5622": "ok", "tfo-connect 5622": "ok",
        "tfo-connect send 5622": "ok"}
    assert [outcome(res[f"accept 5621 #{i}"]) for i in range(3)] == ["ETIMEDOUT"] * 3
    got = sorted(res[f"accept 5622 #{i}"]["data"] for i in range(3))
    assert got == ["tfo 127.0.0.1", "tfo ::1", "tfo-connect"]


def test_udp_sendto_sendmsg_sendmmsg_on_an_unconnected_socket(scope, gate):
    """connect exit: UDP sendto/sendmsg/sendmmsg with an explicit address on an unconnected
    socket, IPv4, IPv6 and v4-mapped: refused with EPERM, and the receiver gets nothing;
    the same calls to the allowed port arrive."""
    install_text(gate, rule("no-5631", "connect", user=TEST_UID, remote_port=5631))
    calls = []
    for port in (5631, 5632):
        calls += receiver(f"r4 {port}", "udp", "127.0.0.1", port) + receiver(f"r6 {port}", "udp", "::1", port)
    calls += [as_(TEST_UID), sock("u4", "udp", 4), sock("u6", "udp", 6)]
    want = {}
    for port in (5631, 5632):
        for s, addr in (("u4", "127.0.0.1"), ("u6", "::1"), ("u6", "::ffff:127.0.0.1")):
            for how in ("sendto", "sendmsg", "sendmmsg"):
                k = f"{how} {addr} {port}"
                calls.append(call(how, s, id=k, addr=addr, port=port, data=f"{how} {addr}", n=2))
                want[k] = "EPERM" if port == 5631 else "ok"
    calls.append(ROOT)
    calls += [call("drain", f"r{v} {port}", id=f"r{v} {port}") for v in (4, 6) for port in (5631, 5632)]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    assert (datagrams(res, "r4 5631"), datagrams(res, "r6 5631")) == ([], [])
    def sent(addr):
        return [f"sendto {addr}", f"sendmsg {addr}", f"sendmmsg {addr}0", f"sendmmsg {addr}1"]

    assert datagrams(res, "r4 5632") == sorted(sent("127.0.0.1") + sent("::ffff:127.0.0.1"))
    assert datagrams(res, "r6 5632") == sorted(sent("::1"))


def test_udp_sends_with_an_address_on_a_connected_socket(scope, gate):
    """connect exit: a UDP socket connected to an allowed peer that sendto/sendmsg/sendmmsg's
    to a refused address (v4 and v6) is refused, nothing arrives there; its own peer still
    gets send() and sendto(peer)."""
    install_text(gate, rule("no-5633", "connect", user=TEST_UID, remote_port=5633))
    calls = []
    for port in (5633, 5634):
        calls += receiver(f"r4 {port}", "udp", "127.0.0.1", port) + receiver(f"r6 {port}", "udp", "::1", port)
    calls.append(as_(TEST_UID))
    want = {}
    for v, addr in ((4, "127.0.0.1"), (6, "::1")):
        c = f"c{v}"
        calls += [sock(c, "udp", v), call("connect", c, addr=addr, port=5634, id=f"connect {addr} 5634")]
        want[f"connect {addr} 5634"] = "ok"
        for how in ("sendto", "sendmsg", "sendmmsg"):
            calls.append(call(how, c, id=f"{how} {addr} 5633", addr=addr, port=5633, data="leak", n=2))
            want[f"{how} {addr} 5633"] = "EPERM"
        calls += [call("send", c, id=f"send {addr}", data=f"send {v}"),
                  call("sendto", c, id=f"sendto {addr} 5634", addr=addr, port=5634, data=f"sendto {v}")]
        want.update({f"send {addr}": "ok", f"sendto {addr} 5634": "ok"})
    calls.append(ROOT)
    calls += [call("drain", f"r{v} {port}", id=f"r{v} {port}") for v in (4, 6) for port in (5633, 5634)]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    assert (datagrams(res, "r4 5633"), datagrams(res, "r6 5633")) == ([], [])
    assert (datagrams(res, "r4 5634"), datagrams(res, "r6 5634")) == (["send 4", "sendto 4"], ["send 6", "sendto 6"])


def test_udplite_connect_and_sends(scope, gate):
    """connect exit: UDP-Lite (IPPROTO_UDPLITE) connect(), sendto(), sendmsg() and sendmmsg()
    over IPv4 and IPv6 are judged like UDP (a `protocol = "udp"` rule covers them). cgroup
    backend: connect() itself has no hook, so the connected socket's sends are judged."""
    install_text(gate, rule("no-udp-5635", "connect", protocol="udp", user=TEST_UID, remote_port=5635))
    calls = []
    for port in (5635, 5636):
        calls += receiver(f"r4 {port}", "udplite", "127.0.0.1", port) + receiver(f"r6 {port}", "udplite", "::1", port)
    calls.append(as_(TEST_UID))
    want = {}
    for addr in ("127.0.0.1", "::1"):
        for port in (5635, 5636):
            calls += probe(f"connect {addr} {port}", "udplite", addr, port)
            for how in ("sendto", "sendmsg", "sendmmsg"):
                calls += probe(f"{how} {addr} {port}", "udplite", addr, port, do=how, data=how, n=1)
            want.update({f"{h} {addr} {port}": "EPERM" if port == 5635 else "ok"
                         for h in ("connect", "sendto", "sendmsg", "sendmmsg")})
            if gate.state.backend == "cgroup":
                # the kernel runs no connect hook for UDP-Lite: connect() succeeds, and each send
                # on the connected socket is judged instead (cgroup_skb egress) and refused
                want[f"connect {addr} {port}"] = "ok"
                n = f"c {addr} {port}"
                calls += [sock(n, "udplite", fam(addr)), call("connect", n, addr=addr, port=port),
                          call("send", n, data="send", id=f"send {addr} {port}"), call("close", n)]
                want[f"send {addr} {port}"] = "EPERM" if port == 5635 else "ok"
    calls.append(ROOT)
    calls += [call("drain", f"r{v} {port}", id=f"r{v} {port}") for v in (4, 6) for port in (5635, 5636)]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    assert (datagrams(res, "r4 5635"), datagrams(res, "r6 5635")) == ([], [])
    sent = ["sendmmsg0", "sendmsg", "sendto"] + (["send"] if gate.state.backend == "cgroup" else [])
    assert sorted(datagrams(res, "r4 5636")) == sorted(datagrams(res, "r6 5636")) == sorted(sent)


def test_io_uring_connect_and_sendmsg(scope, gate):
    """connect exit: io_uring IORING_OP_CONNECT (TCP and UDP) and IORING_OP_SENDMSG with an
    address (UDP, v4 and v6) are judged: the CQE says -EPERM and nothing arrives; to the
    allowed port the CQE is -ECONNREFUSED (TCP, no listener) or the byte count."""
    install_text(gate, rule("no-5641", "connect", user=TEST_UID, remote_port=5641))
    calls = []
    for port in (5641, 5642):
        calls += receiver(f"r4 {port}", "udp", "127.0.0.1", port) + receiver(f"r6 {port}", "udp", "::1", port)
    calls.append(as_(TEST_UID))
    want = {}
    for addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        for port in (5641, 5642):
            calls += probe(f"tcp connect {addr} {port}", "tcp", addr, port, do="uring_connect")
            calls += probe(f"udp connect {addr} {port}", "udp", addr, port, do="uring_connect")
            calls += probe(f"udp sendmsg {addr} {port}", "udp", addr, port, do="uring_sendmsg", data=f"u {addr}")
            refused = port == 5641
            want.update({f"tcp connect {addr} {port}": "EPERM" if refused else "ECONNREFUSED",
                         f"udp connect {addr} {port}": "EPERM" if refused else "ok",
                         f"udp sendmsg {addr} {port}": "EPERM" if refused else "ok"})
    calls.append(ROOT)
    calls += [call("drain", f"r{v} {port}", id=f"r{v} {port}") for v in (4, 6) for port in (5641, 5642)]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    assert all(res[k]["res"] == -errno.EPERM for k in want if want[k] == "EPERM")   # the CQE itself
    assert (datagrams(res, "r4 5641"), datagrams(res, "r6 5641")) == ([], [])
    assert datagrams(res, "r4 5642") == ["u 127.0.0.1", "u ::ffff:127.0.0.1"]
    assert datagrams(res, "r6 5642") == ["u ::1"]


def test_policy_errno_applies_to_every_connect_path(scope, gate):
    """connect exit: the policy's `errno` is what each refused path reports (connect,
    sendto, TFO, io_uring CQE), not a hard-wired EPERM."""
    install_text(gate, 'errno = "EACCES"\n' + rule("no-5651", "connect", user=TEST_UID, remote_port=5651))
    calls = [as_(TEST_UID)]
    calls += probe("tcp", "tcp", "127.0.0.1", 5651)
    calls += probe("udp sendto", "udp", "::1", 5651, do="sendto")
    calls += probe("tfo", "tcp", "::1", 5651, do="sendto", fastopen=True)
    calls += probe("uring", "tcp", "127.0.0.1", 5651, do="uring_connect")
    assert outcomes(run(scope, calls)) == {"tcp": "EACCES", "udp sendto": "EACCES", "tfo": "EACCES",
                                           "uring": "EACCES"}


# ---- SCTP ----------------------------------------------------------------------------------

def _sctp_supported(scope) -> bool:
    """Whether this kernel has SCTP; where it has not, that is asserted (socket() fails with
    EPROTONOSUPPORT or ESOCKTNOSUPPORT for both socket kinds, v4 and v6)."""
    calls = [as_(TEST_UID)]
    for proto in ("sctp", "sctp-seq"):
        for v in (4, 6):
            calls += [sock(f"{proto}{v}", proto, v) | {"id": f"{proto}{v}"}]
    res = outcomes(run(scope, calls))
    if all(r == "ok" for r in res.values()):
        return True
    assert all(r in UNSUPPORTED for r in res.values()), res
    return False


def test_sctp_connect_and_implicit_association(scope, gate):
    """connect exit, SCTP: connect() of a one-to-one socket, sendto() with an address on a
    one-to-many socket (which sets up an association without connect()), and SCTP
    connectx (SCTP_SOCKOPT_CONNECTX), v4 and v6, are refused; the allowed port connects.
    On a kernel without SCTP (this host's 6.18 build) the path does not exist: the test
    asserts that socket() fails with EPROTONOSUPPORT/ESOCKTNOSUPPORT instead."""
    install_text(gate, rule("no-5801", "connect", user=TEST_UID, remote_port=5801)
                 + rule("no-sctp-5803", "connect", protocol="sctp", user=TEST_UID, remote_port=5803))
    if not _sctp_supported(scope):
        return
    calls = []
    for port in (5801, 5802, 5803):
        calls += [sock(f"l{port}", "sctp", 6, reuse=True), call("bind", f"l{port}", addr="::", port=port),
                  call("listen", f"l{port}")]
    calls.append(as_(TEST_UID))
    want = {}
    for addr in ("127.0.0.1", "::1"):
        for port in (5801, 5802, 5803):
            refused = port != 5802
            calls += probe(f"connect {addr} {port}", "sctp", addr, port)
            calls += probe(f"connectx {addr} {port}", "sctp", addr, port, do="sctp_connectx")
            calls += probe(f"seq sendto {addr} {port}", "sctp-seq", addr, port, do="sendto", data="assoc")
            want.update({f"{h} {addr} {port}": "EPERM" if refused else "ok"
                         for h in ("connect", "connectx", "seq sendto")})
    calls.append(ROOT)
    calls += [call("accept", "l5801", id="accept 5801", timeout=0.3)]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    assert outcome(res["accept 5801"]) == "ETIMEDOUT"


def test_sctp_listen(scope, gate):
    """listen exit, SCTP: bind()+listen() of a one-to-one and a one-to-many SCTP socket on a
    refused port (v4 and v6), and a bindx (SCTP_SOCKOPT_BINDX_ADD) to it, are refused
    (at bind on the cgroup backend, at listen on LSM: either call may fail, not both
    succeed). On a kernel without SCTP (this host) the test asserts socket() fails with
    EPROTONOSUPPORT/ESOCKTNOSUPPORT: the path does not exist there."""
    install_text(gate, rule("no-listen-8801", "listen", user=TEST_UID, local_port=8801))
    if not _sctp_supported(scope):
        return
    calls, keys = [as_(TEST_UID)], []
    for proto in ("sctp", "sctp-seq"):
        for addr in ("127.0.0.1", "::"):
            for port in (8801, 8802):
                n = f"{proto} {addr} {port}"
                calls += [sock(n, proto, fam(addr)), call("bind", n, addr=addr, port=port, id=f"bind {n}"),
                          call("listen", n, id=f"listen {n}"), call("close", n)]
                keys.append((n, port))
                m = f"bindx {n}"
                calls += [sock(m, proto, fam(addr)), call("sctp_bindx", m, addr=addr, port=port, id=f"bind {m}"),
                          call("listen", m, id=f"listen {m}"), call("close", m)]
                keys.append((m, port))
    res = run(scope, calls)
    got = {n: (outcome(res[f"bind {n}"]), outcome(res[f"listen {n}"])) for n, _ in keys}
    for n, port in keys:
        if port == 8802:
            assert got[n] == ("ok", "ok"), (n, got[n])
        else:
            assert "EPERM" in got[n] and got[n] != ("ok", "ok"), (n, got[n])


def test_sctp_accept(scope):
    """accept exit, SCTP (sk_lookup never sees SCTP: the INIT is judged at the receiving
    socket, cgroup_skb ingress): an association to a listener owned by the test user on a
    refused port, from 127.0.0.1 and ::1, never comes up (the INIT is dropped: the client
    times out, the listener accepts nothing) and is journaled as `A` rejected with the
    listener's owner, protocol sctp and the peer; the allowed port associates and is
    accepted. On a kernel without SCTP (this host) socket() fails with EPROTONOSUPPORT or
    ESOCKTNOSUPPORT: the path does not exist there."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETFAIL"]\n'
                         + rule("no-sctp-accept-5905", "accept", protocol="sctp", user=TEST_UID, local_port=5905))
    if not _sctp_supported(scope):
        _stop(d)
        return
    calls = [as_(TEST_UID)]
    for port in (5905, 5906):
        calls += [sock(f"l{port}", "sctp", 6, reuse=True), call("bind", f"l{port}", addr="::", port=port),
                  call("listen", f"l{port}")]
    calls.append(ROOT)
    want = {}
    for addr in ("127.0.0.1", "::1"):
        for port in (5905, 5906):
            n = f"{addr} {port}"
            calls += [sock(n, "sctp", fam(addr)), call("connect", n, addr=addr, port=port, timeout=1.5, id=f"connect {n}"),
                      call("accept", f"l{port}", timeout=0.5, id=f"accept {n}"), call("close", n)]
            want[f"connect {n}"] = "ETIMEDOUT" if port == 5905 else "ok"
            want[f"accept {n}"] = "ETIMEDOUT" if port == 5905 else "ok"
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in want} == want
    base = {"outcome": _outcome("rejected"), "uid": TEST_UID, "local_port": 5905, "rule": "no-sctp-accept-5905",
            "protocol": "sctp"}
    specs = [("A", {**base, "remote_addr": "127.0.0.1"}), ("A", {**base, "remote_addr": "::1"})]
    entries = journal_entries(journal, lambda es: _want(es, specs), timeout=JOURNAL_WAIT)
    missing = _missing(entries, specs)
    assert not missing, "\n".join(map(str, missing))
    _stop(d)


# ---- listen exit ---------------------------------------------------------------------------

def test_listen_tcp_mptcp_and_udp_bind(scope, gate):
    """listen exit: TCP and MPTCP listeners and UDP/UDP-Lite binds on a refused port, v4 and
    v6, are refused (TCP/MPTCP at bind or listen, by backend; a UDP bind() with EPERM);
    a `protocol = "udp"` listen rule leaves TCP alone; the allowed port and root work."""
    install_text(gate, rule("no-8401", "listen", user=TEST_UID, local_port=8401)
                 + rule("no-udp-8403", "listen", protocol="udp", user=TEST_UID, local_port=8403))
    calls = [as_(TEST_UID)]
    streams, dgrams = [], []
    for addr in ("127.0.0.1", "0.0.0.0", "::1", "::"):
        for port in (8401, 8402, 8403):
            for proto in ("tcp", "mptcp"):
                n = f"{proto} {addr} {port}"
                calls += [sock(n, proto, fam(addr), reuse=True), call("bind", n, addr=addr, port=port, id=f"bind {n}"),
                          call("listen", n, id=f"listen {n}"), call("close", n)]
                streams.append((n, port))
            for proto in ("udp", "udplite"):
                n = f"{proto} {addr} {port}"
                calls += probe(n, proto, addr, port, do="bind")
                dgrams.append((n, port))
    res = run(scope, calls)
    for n, port in streams:
        got = (outcome(res[f"bind {n}"]), outcome(res[f"listen {n}"]))
        if port == 8401:
            assert got in (("EPERM", "EINVAL"), ("EPERM", "ok"), ("ok", "EPERM")) and "EPERM" in got, (n, got)
            # a listen() after a refused bind() may autobind: it must not be on the refused port
            if got[0] == "EPERM" and got[1] == "ok":
                assert res[f"listen {n}"]["port"] != 8401
        else:
            assert got == ("ok", "ok"), (n, got)
    assert {n: outcome(res[n]) for n, _ in dgrams} == {n: "EPERM" if p in (8401, 8403) else "ok" for n, p in dgrams}
    root = run(scope, [c for c in calls[1:]])
    assert all(outcome(r) == "ok" for r in root.values()), {k: outcome(r) for k, r in root.items() if not r["ok"]}


def test_listen_on_a_never_bound_socket(scope, gate):
    """listen exit: listen() on a TCP/MPTCP socket that was never bound, by a user who may not
    listen at all (no port in the rule). LSM: listen() fails with EPERM. cgroup backend:
    listen() succeeds (the kernel picks the port after every hook), but every connection to
    that socket is refused at once (ECONNREFUSED) and never accepted."""
    install_text(gate, rule("test-user-may-not-listen", "listen", user=TEST_UID))
    calls = []
    for proto in ("tcp", "mptcp"):
        for v in (4, 6):
            n = f"{proto}{v}"
            calls += [as_(TEST_UID), sock(n, proto, v), call("listen", n, id=f"listen {n}"), ROOT]
    res = run(scope, [c for c in calls])
    ls = {k: outcome(r) for k, r in res.items()}
    if gate.state.backend == "lsm":
        assert ls == {f"listen {p}{v}": "EPERM" for p in ("tcp", "mptcp") for v in (4, 6)}
        return
    assert ls == {f"listen {p}{v}": "ok" for p in ("tcp", "mptcp") for v in (4, 6)}
    # cgroup: the listener lives; every client is refused at once and accept() gets nothing
    calls2 = list(calls)
    for proto in ("tcp", "mptcp"):
        for v, addr in ((4, "127.0.0.1"), (6, "::1")):
            n = f"{proto}{v}"
            for cp in ("tcp", "mptcp"):
                calls2 += [sock(f"c {n} {cp}", cp, v),
                           call("connect", f"c {n} {cp}", addr=addr, to=n, timeout=3, id=f"connect {n} via {cp}")]
            calls2 += [call("accept", n, id=f"accept {n}", timeout=0.2)]
    res = run(scope, calls2)
    conns = {k: outcome(r) for k, r in res.items() if k.startswith("connect")}
    assert conns == {k: "ECONNREFUSED" for k in conns} and len(conns) == 8
    assert all(res[k]["seconds"] < 1.0 for k in conns)
    assert {k: outcome(r) for k, r in res.items() if k.startswith("accept")} == \
        {f"accept {p}{v}": "ETIMEDOUT" for p in ("tcp", "mptcp") for v in (4, 6)}


# ---- accept exit: inbound UDP ----------------------------------------------------------------

def test_inbound_udp_judged_by_source_and_local_port(scope, gate):
    """accept exit: a datagram to a bound UDP socket is judged by its source address and port
    and the local port; a rejected one is dropped (the receiver never gets it) while the
    sender's sendto succeeds (it is the receiver's policy). v4 and v6, UDP and UDP-Lite."""
    install_text(gate, rule("not-from-127.0.0.2", "accept", local_port=8501, remote="127.0.0.2/32")
                 + rule("not-from-port-8599", "accept", local_port=8501, remote_port=8599))
    calls = []
    for proto in ("udp", "udplite"):
        calls += receiver(f"{proto} r4", proto, "0.0.0.0", 8501) + receiver(f"{proto} r6", proto, "::", 8501)
        for src, sport, dst in (("127.0.0.2", 0, "127.0.0.1"), ("127.0.0.3", 0, "127.0.0.1"),
                                ("127.0.0.1", 8599, "127.0.0.1"), ("::1", 8599, "::1"), ("::1", 8598, "::1")):
            n = f"{proto} {src}:{sport}"
            calls += [sock(n, proto, fam(src)), call("bind", n, addr=src, port=sport),
                      call("sendto", n, addr=dst, port=8501, data=f"{src}:{sport}", id=f"send {n}"), call("close", n)]
        calls += [call("drain", f"{proto} r4", id=f"{proto} r4"), call("drain", f"{proto} r6", id=f"{proto} r6")]
    res = run(scope, calls)
    assert all(outcome(r) == "ok" for k, r in res.items() if k.startswith("send")), outcomes(res)
    for proto in ("udp", "udplite"):
        assert datagrams(res, f"{proto} r4") == ["127.0.0.3:0"], proto
        assert datagrams(res, f"{proto} r6") == ["::1:8598"], proto


def test_inbound_udp_judged_by_the_receiving_sockets_owner(scope, gate):
    """accept exit: owner rules on inbound UDP test who bound the receiving socket: TEST_UID's
    sockets (v4, v6; one created by root and bound by TEST_UID after an fd handover) get
    nothing, root's get everything."""
    install_text(gate, rule("test-user-receives-nothing", "accept", user=TEST_UID))
    calls = [as_(TEST_UID)] + receiver("mine4", "udp", "127.0.0.1", 8511) + receiver("mine6", "udp", "::1", 8511)
    calls += [ROOT] + receiver("root4", "udp", "127.0.0.1", 8512) + receiver("root6", "udp", "::1", 8512)
    calls += [sock("handed", "udp", 4),
              {"do": "fork", "uid": TEST_UID, "calls": [call("bind", "handed", addr="127.0.0.1", port=8513)]}]
    calls += [sock("tx4", "udp", 4), sock("tx6", "udp", 6)]
    for port in (8511, 8512, 8513):
        calls += [call("sendto", "tx4", addr="127.0.0.1", port=port, data=f"v4 {port}", id=f"v4 {port}"),
                  call("sendto", "tx6", addr="::1", port=port, data=f"v6 {port}", id=f"v6 {port}")]
    calls += [call("drain", n, id=f"drain {n}") for n in ("mine4", "mine6", "root4", "root6", "handed")]
    res = run(scope, calls)
    assert all(outcome(r) == "ok" for k, r in res.items() if not k.startswith("drain")), outcomes(res)
    assert {n: datagrams(res, f"drain {n}") for n in ("mine4", "mine6", "root4", "root6", "handed")} == \
        {"mine4": [], "mine6": [], "root4": ["v4 8512"], "root6": ["v6 8512"], "handed": []}


def test_udp_replies_and_connected_sockets_are_not_judged_by_accept_rules(scope, gate):
    """accept exit exception: a datagram from a peer the receiving socket itself sent to (a
    reply) and a datagram to a connected UDP socket are not judged by accept rules (the
    outbound send was judged); a third party's datagram to the same socket is dropped."""
    install_text(gate, rule("test-user-receives-nothing", "accept", user=TEST_UID))
    calls = []
    for v, addr in ((4, "127.0.0.1"), (6, "::1")):
        e, t, u, c = f"echo{v}", f"third{v}", f"u{v}", f"c{v}"
        calls += [ROOT] + receiver(e, "udp", addr, 8601) + receiver(t, "udp", addr, 8602)
        calls += [as_(TEST_UID), sock(u, "udp", v), call("sendto", u, addr=addr, port=8601, data="ping"),
                  sock(c, "udp", v), call("connect", c, addr=addr, port=8601), call("send", c, data="ping-c"), ROOT,
                  call("sendto", e, addr=addr, to=u, data=f"reply {v}"),
                  call("sendto", e, addr=addr, to=c, data=f"reply-c {v}"),
                  call("sendto", t, addr=addr, to=u, data=f"third {v}"),
                  call("drain", u, id=f"unconnected {v}"), call("drain", c, id=f"connected {v}"),
                  call("drain", e, id=f"echo {v}")]
    res = run(scope, calls)
    for v in (4, 6):
        assert datagrams(res, f"echo {v}") == ["ping", "ping-c"]
        assert datagrams(res, f"unconnected {v}") == [f"reply {v}"]      # the third party's is dropped
        assert datagrams(res, f"connected {v}") == [f"reply-c {v}"]


# ---- identity ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["inherited across setuid", "passed with SCM_RIGHTS"])
def test_a_socket_handed_to_another_user_is_judged_as_that_user(scope, gate, how):
    """connect exit, identity: sockets created (and used) by root, then handed to a TEST_UID
    process (fd inherited across setuid, or SCM_RIGHTS over a unix socket), are judged as
    TEST_UID there: a TCP connect, a UDP sendto to the peer root already sent to (no cached
    verdict crosses identities), a sendto with the peer's address on a socket root connected,
    an io_uring connect."""
    install_text(gate, rule("no-5701", "connect", user=TEST_UID, remote_port=5701))
    calls = [sock("l", "tcp", 4, reuse=True), call("bind", "l", addr="127.0.0.1", port=5701), call("listen", "l")]
    calls += receiver("r", "udp", "127.0.0.1", 5701)
    calls += [sock("t", "tcp", 4), sock("t2", "tcp", 4),
              sock("u", "udp", 4), call("sendto", "u", addr="127.0.0.1", port=5701, data="root u", id="root sendto"),
              sock("v", "udp", 4), call("connect", "v", addr="127.0.0.1", port=5701, id="root connect"),
              call("send", "v", data="root v"),
              sock("w", "udp", 6), call("sendmsg", "w", addr="::ffff:127.0.0.1", port=5701, data="root w")]
    child = [call("connect", "t", addr="127.0.0.1", port=5701, id="tcp connect"),
             call("uring_connect", "t2", addr="127.0.0.1", port=5701, id="uring connect"),
             call("sendto", "u", addr="127.0.0.1", port=5701, data="user u", id="sendto"),
             call("sendmsg", "u", addr="127.0.0.1", port=5701, data="user u2", id="sendmsg"),
             call("sendto", "v", addr="127.0.0.1", port=5701, data="user v", id="sendto connected"),
             call("sendmsg", "w", addr="::ffff:127.0.0.1", port=5701, data="user w", id="sendmsg mapped")]
    fork = {"do": "fork", "uid": TEST_UID, "calls": child}
    if how == "passed with SCM_RIGHTS":
        fork["scm"] = ["t", "t2", "u", "v", "w"]
    calls += [fork, call("accept", "l", id="accepted", timeout=0.3), call("drain", "r", id="received")]
    res = run(scope, calls)
    assert {k: outcome(res[k]) for k in ("root sendto", "root connect")} == {"root sendto": "ok", "root connect": "ok"}
    assert {k: outcome(res[k]) for k in ("tcp connect", "uring connect", "sendto", "sendmsg", "sendto connected",
                                         "sendmsg mapped")} == \
        {"tcp connect": "EPERM", "uring connect": "EPERM", "sendto": "EPERM", "sendmsg": "EPERM",
         "sendto connected": "EPERM", "sendmsg mapped": "EPERM"}
    assert outcome(res["accepted"]) == "ETIMEDOUT"
    assert datagrams(res, "received") == ["root u", "root v", "root w"]


def test_a_user_namespace_with_mapped_root_does_not_escape(scope, gate):
    """connect and listen exits, identity: TEST_UID in a new user namespace where it is uid 0
    (unshare(CLONE_NEWUSER), uid_map "0 4242 1") is still TEST_UID to the rules: TCP, UDP
    and MPTCP connect, UDP sendto, TCP listen and UDP bind on the refused ports fail."""
    install_text(gate, rule("no-5711", "connect", user=TEST_UID, remote_port=5711)
                 + rule("no-8711", "listen", user=TEST_UID, local_port=8711))
    child = [{"do": "unshare_user", "id": "unshare"}]
    child += probe("tcp connect", "tcp", "127.0.0.1", 5711) + probe("tcp6 connect", "tcp", "::1", 5711)
    child += probe("mptcp connect", "mptcp", "127.0.0.1", 5711) + probe("udp connect", "udp", "127.0.0.1", 5711)
    child += probe("udp sendto", "udp", "::1", 5711, do="sendto")
    child += probe("udp bind", "udp", "127.0.0.1", 8711, do="bind")
    child += [sock("l", "tcp", 4), call("bind", "l", addr="127.0.0.1", port=8711, id="tcp bind"),
              call("listen", "l", id="tcp listen")]
    child += probe("tcp connect allowed", "tcp", "127.0.0.1", 5712)
    res = run(scope, [{"do": "fork", "uid": TEST_UID, "calls": child}])
    assert res["unshare"]["ok"] and res["unshare"]["euid_inside"] == 0
    got = outcomes(res)
    listen = (got.pop("tcp bind"), got.pop("tcp listen"))
    assert "EPERM" in listen and listen != ("ok", "ok")
    assert got == {"unshare": "ok", "tcp connect": "EPERM", "tcp6 connect": "EPERM", "mptcp connect": "EPERM",
                   "udp connect": "EPERM", "udp sendto": "EPERM", "udp bind": "EPERM",
                   "tcp connect allowed": "ECONNREFUSED"}


def test_a_policy_reload_refuses_the_next_send(scope, gate):
    """connect exit, reload: a UDP flow (unconnected sendto, and sendto on a connected socket)
    allowed under policy A is refused on the first send after policy B is installed; a
    TCP connect likewise. No verdict cached under A survives the swap."""
    install_text(gate, "")
    b = rule("no-5721", "connect", user=TEST_UID, remote_port=5721)
    calls = receiver("r", "udp", "127.0.0.1", 5721) + [
        as_(TEST_UID), sock("u", "udp", 4), call("sendto", "u", addr="127.0.0.1", port=5721, data="a1", id="A sendto"),
        sock("v", "udp", 4), call("connect", "v", addr="127.0.0.1", port=5721, id="A connect"),
        call("sendto", "v", addr="127.0.0.1", port=5721, data="a2", id="A sendto connected"),
        call("sendmsg", "u", addr="127.0.0.1", port=5721, data="a3", id="A sendmsg"),
        {"do": "sync", "tag": "install B"},
        call("sendto", "u", addr="127.0.0.1", port=5721, data="b1", id="B sendto"),
        call("sendto", "v", addr="127.0.0.1", port=5721, data="b2", id="B sendto connected"),
        call("sendmsg", "u", addr="127.0.0.1", port=5721, data="b3", id="B sendmsg"),
        sock("t", "tcp", 4), call("connect", "t", addr="127.0.0.1", port=5721, id="B tcp connect"),
        ROOT, call("drain", "r", id="received")]
    res = run(scope, calls, on_sync=lambda tag: install_text(gate, b))
    got = outcomes(res)
    del got["received"]
    assert got == {"A sendto": "ok", "A connect": "ok", "A sendto connected": "ok", "A sendmsg": "ok",
                   "B sendto": "EPERM", "B sendto connected": "EPERM", "B sendmsg": "EPERM", "B tcp connect": "EPERM"}
    assert datagrams(res, "received") == ["a1", "a2", "a3"]


# ---- journal -------------------------------------------------------------------------------

def _daemon(scope, text):
    journal = scope.tmp / "j"
    d = scope.daemon(scope.write_policy(text), journal=journal)
    wait_loaded(d)
    return d, journal


def _stop(d):
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=60) == 0


def _kernel_entries(entries, etype, **match):
    from sockgate.journal import EntryType

    t = EntryType(etype)
    out = []
    for e in entries:
        if e.type is not t:
            continue
        if all((e.extra.get(k) if k in ("protocol",) else getattr(e, k)) == v for k, v in match.items()):
            out.append(e)
    return out


def _want(entries, specs):
    """All (type, {fields}) specs present (each at least once)."""
    return all(_kernel_entries(entries, t, **m) for t, m in specs)


def _missing(entries, specs):
    """The specs no entry meets, each with the kernel entries of its type (to see why)."""
    out = []
    for t, m in specs:
        if not _kernel_entries(entries, t, **m):
            seen = [(e.outcome and e.outcome.value, e.rule, e.uid, e.family, e.local_port, e.remote_port,
                     e.extra.get("protocol")) for e in entries if e.type.value == t]
            out.append((t, {k: getattr(v, "value", v) for k, v in m.items()}, f"{t} entries: {seen}"))
    return out


def test_journal_connect_refusals_per_protocol(scope):
    """Journal, connect exit: each refused connect path leaves an entry, outcome rejected, the
    caller's uid and the rule: `C` for TCP (v4, v6), MPTCP and SCTP connects (where the kernel
    has SCTP), `O` for UDP and UDP-Lite connects and sends (sendto, sendmsg, io_uring);
    protocol in the entry's extra."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETFAIL"]\n' + rule("no-6001", "connect", user=TEST_UID,
                                                                        remote_port=6001))
    calls = [as_(TEST_UID)]
    calls += probe("tcp4", "tcp", "127.0.0.1", 6001) + probe("tcp6", "tcp", "::1", 6001)
    calls += probe("mptcp", "mptcp", "127.0.0.1", 6001)
    calls += probe("udp connect", "udp", "127.0.0.1", 6001)
    calls += probe("udp sendto", "udp", "::1", 6001, do="sendto")
    calls += probe("udplite sendto", "udplite", "127.0.0.1", 6001, do="sendto")
    calls += probe("tfo", "tcp", "127.0.0.1", 6001, do="sendto", fastopen=True)
    calls += probe("sctp", "sctp", "127.0.0.1", 6001)
    res = outcomes(run(scope, calls))
    sctp = res.pop("sctp")
    assert res == {k: "EPERM" for k in res}
    base = {"outcome": _outcome("rejected"), "uid": TEST_UID, "remote_port": 6001, "rule": "no-6001"}
    specs = [("C", {**base, "protocol": "tcp", "family": "ipv4"}), ("C", {**base, "protocol": "tcp", "family": "ipv6"}),
             ("C", {**base, "protocol": "mptcp"}), ("O", {**base, "protocol": "udp", "family": "ipv4"}),
             ("O", {**base, "protocol": "udp", "family": "ipv6"}), ("O", {**base, "protocol": "udplite"})]
    if sctp in UNSUPPORTED:      # no SCTP in this kernel: nothing to refuse, nothing to journal
        pass
    else:
        assert sctp == "EPERM"
        specs.append(("C", {**base, "protocol": "sctp"}))
    entries = journal_entries(journal, lambda es: _want(es, specs), timeout=JOURNAL_WAIT)
    missing = _missing(entries, specs)
    assert not missing, "\n".join(map(str, missing))
    # two TCP connects (v4 connect, TFO) and one v6: one entry per refused call
    assert len(_kernel_entries(entries, "C", **base, protocol="tcp")) == 3
    _stop(d)


def _outcome(text):
    from sockgate.journal import Outcome

    return Outcome(text)


def test_journal_listen_refusals_per_protocol(scope):
    """Journal, listen exit: `L` entries, outcome rejected, for a refused TCP and MPTCP listen
    (bind or listen), a UDP and a UDP-Lite bind, an SCTP listen where the kernel has SCTP,
    and a listen() on a never-bound socket by a user who may not listen (cgroup backend:
    the listen succeeds and its connections are refused, but the L entry is there)."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETFAIL"]\n'
                         + rule("no-8001", "listen", user=TEST_UID, local_port=8001)
                         + rule("other-user-may-not-listen", "listen", user=OTHER_UID))
    calls = [as_(TEST_UID)]
    for proto in ("tcp", "mptcp", "sctp"):
        calls += [sock(proto, proto, 4, optional=True), call("bind", proto, addr="127.0.0.1", port=8001, id=f"{proto} bind"),
                  call("listen", proto, id=f"{proto} listen"), call("close", proto)]
    calls += probe("udp", "udp", "127.0.0.1", 8001, do="bind") + probe("udplite", "udplite", "::1", 8001, do="bind")
    calls += [as_(OTHER_UID), sock("unbound", "tcp", 4), call("listen", "unbound", id="unbound listen"), ROOT,
              sock("client", "tcp", 4), call("connect", "client", addr="127.0.0.1", to="unbound", id="unbound connect")]
    res = run(scope, calls)
    got = outcomes(res)
    assert (got["udp"], got["udplite"]) == ("EPERM", "EPERM")
    for proto in ("tcp", "mptcp"):
        assert "EPERM" in (got[f"{proto} bind"], got[f"{proto} listen"]), got
    sctp = got["sctp bind"] in UNSUPPORTED
    backend_ = _backend(scope)
    if backend_ == "lsm":
        assert got["unbound listen"] == "EPERM"
    else:
        assert (got["unbound listen"], got["unbound connect"]) == ("ok", "ECONNREFUSED")
    base = {"outcome": _outcome("rejected"), "uid": TEST_UID, "local_port": 8001, "rule": "no-8001"}
    # cgroup backend: an MPTCP bind is judged on its first subflow, a TCP socket (documented)
    mptcp_as = "mptcp" if backend_ == "lsm" else "tcp"
    specs = [("L", {**base, "protocol": p}) for p in ("tcp", mptcp_as, "udp", "udplite")]
    specs.append(("L", {"outcome": _outcome("rejected"), "uid": OTHER_UID, "rule": "other-user-may-not-listen",
                        "protocol": "tcp"}))
    if not sctp:
        specs.append(("L", {**base, "protocol": "sctp"}))
    entries = journal_entries(journal, lambda es: _want(es, specs), timeout=JOURNAL_WAIT)
    missing = _missing(entries, specs)
    assert not missing, "\n".join(map(str, missing))
    _stop(d)


def _backend(scope):
    from sockgate.daemon import status

    return status(scope.pin_dir)["backend"]


def test_journal_accept_refusals_tcp_and_udp(scope):
    """Journal, accept exit: `A` for a refused TCP connection (outcome rejected, remote and
    local address/port, protocol tcp) and `I` for a dropped inbound UDP datagram (protocol
    udp); the refused TCP client got ECONNREFUSED and the datagram never arrived."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETFAIL"]\n'
                         + rule("not-from-127.0.0.2", "accept", remote="127.0.0.2/32"))
    calls = [sock("l", "tcp", 4, reuse=True), call("bind", "l", addr="127.0.0.1", port=8101), call("listen", "l")]
    calls += receiver("r", "udp", "127.0.0.1", 8102)
    calls += [sock("c", "tcp", 4), call("bind", "c", addr="127.0.0.2", port=0),
              call("connect", "c", addr="127.0.0.1", port=8101, id="tcp connect"),
              sock("u", "udp", 4), call("bind", "u", addr="127.0.0.2", port=0),
              call("sendto", "u", addr="127.0.0.1", port=8102, data="dropped", id="udp sendto"),
              call("drain", "r", id="received"), call("accept", "l", id="accepted", timeout=0.2)]
    res = run(scope, calls)
    assert (outcome(res["tcp connect"]), outcome(res["udp sendto"]), outcome(res["accepted"])) == \
        ("ECONNREFUSED", "ok", "ETIMEDOUT")
    assert datagrams(res, "received") == []
    base = {"outcome": _outcome("rejected"), "remote_addr": "127.0.0.2", "rule": "not-from-127.0.0.2"}
    specs = [("A", {**base, "local_port": 8101, "protocol": "tcp"}),
             ("I", {**base, "local_port": 8102, "protocol": "udp"})]
    entries = journal_entries(journal, lambda es: _want(es, specs), timeout=JOURNAL_WAIT)
    missing = _missing(entries, specs)
    assert not missing, "\n".join(map(str, missing))
    _stop(d)


def test_journal_netudp_one_entry_per_flow_then_exact_counts(scope):
    """Journal, *NETUDP: allowed UDP traffic is journaled as one `O` (outbound) and one `I`
    (inbound) entry for the first datagram per (socket, peer), then summary entries with
    exact counts (extra "count"): 100 sendto to one peer sum to 100 on each side. Without
    *NETUDP, allowed UDP leaves no O/I entry at all."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETFAIL", "*NETUDP"]\n')
    calls = receiver("r", "udp", "127.0.0.1", 8201) + [
        as_(TEST_UID), sock("u", "udp", 4),
        call("sendto", "u", addr="127.0.0.1", port=8201, data="n", times=100, id="sent"),
        call("getsockname", "u", id="sender"), ROOT, call("drain", "r", id="received")]
    res = run(scope, calls)
    assert outcome(res["sent"]) == "ok" and len(res["received"]["datagrams"]) == 100
    sport = res["sender"]["port"]

    def flows(es):
        # by peer: the first O entry may predate the sender's autobind (no local port yet), and
        # a summary need not repeat the local endpoint; each flow is one socket's
        out = _kernel_entries(es, "O", remote_addr="127.0.0.1", remote_port=8201)
        inn = _kernel_entries(es, "I", remote_addr="127.0.0.1", remote_port=sport)
        return out, inn

    def total(es):
        return sum(int(e.extra.get("count", 1)) for e in es)

    entries = journal_entries(journal, lambda es: all(total(f) >= 100 for f in flows(es)), timeout=JOURNAL_WAIT)
    if not all(total(f) >= 100 for f in flows(entries)):   # summaries still pending: a clean stop flushes them
        _stop(d)
        entries = journal_entries(journal)
    out, inn = flows(entries)
    udp = [(e.type.value, e.outcome and e.outcome.value, e.uid, e.local_addr, e.local_port, e.remote_addr,
            e.remote_port, e.extra) for e in entries if e.type.value in ("O", "I")]
    assert (total(out), total(inn)) == (100, 100), f"sender port {sport}, O/I entries: {udp}"
    assert out[0].outcome is _outcome("allowed") and out[0].uid == TEST_UID and out[0].extra.get("protocol") == "udp"
    assert inn[0].outcome is _outcome("allowed") and inn[0].extra.get("protocol") == "udp"
    assert len(out) < 100 and len(inn) < 100          # summaries, not one entry per datagram
    for flow in (out, inn):                           # one socket's flow
        assert len({e.extra.get("socket") for e in flow}) == 1, [e.extra for e in flow]
    if d.poll() is None:
        _stop(d)


def test_journal_without_netudp_has_no_allowed_udp_entries(scope):
    """Journal, *NETUDP off: allowed UDP sends and receipts leave no `O`/`I` entries (only
    *NETUDP selects them), while a refused UDP send still leaves its `O` rejected entry."""
    d, journal = _daemon(scope, 'audit_levels = ["*NETCMN"]\n' + rule("no-8302", "connect", user=TEST_UID,
                                                                       remote_port=8302))
    calls = receiver("r", "udp", "127.0.0.1", 8301) + [
        as_(TEST_UID), sock("u", "udp", 4),
        call("sendto", "u", addr="127.0.0.1", port=8301, data="n", times=5, id="sent"),
        call("sendto", "u", addr="127.0.0.1", port=8302, data="n", id="refused"), ROOT]
    res = run(scope, calls)
    assert (outcome(res["sent"]), outcome(res["refused"])) == ("ok", "EPERM")
    spec = [("O", {"outcome": _outcome("rejected"), "remote_port": 8302, "uid": TEST_UID})]
    entries = journal_entries(journal, lambda es: _want(es, spec), timeout=JOURNAL_WAIT)
    assert _missing(entries, spec) == []
    _stop(d)
    entries = journal_entries(journal)
    assert _kernel_entries(entries, "O", remote_port=8301) == []
    assert _kernel_entries(entries, "I", local_port=8301) == []
