"""Synthetic journaled decisions for replay and learn: the tests' property journals and
bench/policy_replay.py. Seeded, so a failure can be reproduced from its seed.

Identities use executables that exist on this host (a learned rule can only name those).
`hard=True` mixes in what the policy language cannot name or replay exactly: accepts whose
owner the kernel did not know, IBM i SK entries, programs gone from the host, UDP flow
summaries and listen-refused accepts.
"""

from __future__ import annotations

import os
import random
import shutil
from typing import Iterator

from sockgate.record import Code, Entry, EntryType, Outcome, Source

NS = 1_000_000_000
HOSTS = ("web1", "web2", "db1")


def host_programs() -> list[str]:
    """A few regular executables of this host (real paths, as /proc/PID/exe shows them)."""
    out = []
    for name in ("python3", "env", "ls", "cat", "sh", "true", "sleep", "date"):
        p = shutil.which(name)
        if p:
            p = os.path.realpath(p)
            if os.path.isfile(p) and p not in out:
                out.append(p)
    return out


def decisions(count: int, seed: int, *, start_ns: int, span_ns: int = 7 * 86400 * NS,
              hard: bool = False) -> Iterator[Entry]:
    rnd = random.Random(seed)
    progs = host_programs()
    idents = [(uid, f"user{uid}", 100 + uid % 3, rnd.choice(progs)) for uid in rnd.sample(range(1000, 1100), 6)]
    idents.append((0, "root", 0, progs[0]))
    # per identity: the services it talks to (a dense /24 sometimes, single hosts, IPv6)
    services = {}
    for ident in idents:
        nets = []
        for _ in range(rnd.randint(1, 3)):
            if rnd.random() < 0.3:
                nets.append([f"2001:db8:{rnd.randrange(16):x}::{rnd.randrange(1, 99):x}"])
            elif rnd.random() < 0.4:
                base = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}"
                nets.append([f"{base}.{i}" for i in rnd.sample(range(256), rnd.randint(130, 200))])
            else:
                nets.append([f"192.0.2.{rnd.randrange(1, 255)}"])
        ports = rnd.sample([22, 25, 53, 80, 443, 5432, 8000, 8001, 8002, 8003, 9100], rnd.randint(1, 4))
        services[ident] = (nets, ports)
    for i in range(count):
        ts = start_ns + (span_ns * i) // max(count, 1)
        ident = rnd.choice(idents)
        uid, user, gid, prog = ident
        nets, ports = services[ident]
        remote = rnd.choice(rnd.choice(nets))
        port = rnd.choice(ports)
        r = rnd.random()
        outcome = (Outcome.ALLOWED if r < 0.8 else Outcome.AUDIT_REJECTED if r < 0.93 else Outcome.REJECTED)
        rule = "default:x" if outcome is Outcome.ALLOWED else "audit-all"
        kind = rnd.random()
        extra = {"comm": os.path.basename(prog)[:15], "real_uid": uid}
        host = rnd.choice(HOSTS)
        if kind < 0.55:      # TCP connect
            et, proto, local, lport, rport = EntryType.CONNECT, "tcp", "192.0.2.10", rnd.randrange(32768, 61000), port
        elif kind < 0.70:    # UDP send
            et, proto, local, lport, rport = EntryType.UDP_OUTBOUND, "udp", "192.0.2.10", rnd.randrange(32768, 61000), 53
            extra["flow"] = "first"
        elif kind < 0.80:    # listen
            et, proto, local, lport, remote, rport = EntryType.LISTEN, rnd.choice(("tcp", "udp")), "0.0.0.0", port, None, None
        elif kind < 0.95:    # TCP accept (the listener's owner)
            et, proto, local, lport, rport = EntryType.ACCEPT, "tcp", "192.0.2.10", port, rnd.randrange(32768, 61000)
        else:                # UDP inbound
            et, proto, local, lport, rport = EntryType.UDP_INBOUND, "udp", "192.0.2.10", 53, rnd.randrange(1024, 65535)
        extra["protocol"] = proto
        e = Entry(Code.SOCKET, et, ts, Source.KERNEL, host, outcome, rule.replace("x", _exit_of(et)), uid, user, gid,
                  1000 + i % 30000, prog, "ipv6" if remote and ":" in remote else "ipv4", local, lport, remote, rport,
                  extra)
        if hard and rnd.random() < 0.15:
            e = _hard(rnd, e, i)
        yield e


def _exit_of(et: EntryType) -> str:
    return {"C": "connect", "O": "connect", "L": "listen", "A": "accept", "I": "accept"}[et.value]


def _hard(rnd: random.Random, e: Entry, i: int) -> Entry:
    k = rnd.randrange(5)
    if k == 0 and e.type is EntryType.ACCEPT:     # owner unknown to the kernel
        e.uid = e.user = e.gid = e.program = None
        e.extra = {"owner": "unknown", "protocol": "tcp"}
    elif k == 1:                                   # an IBM i SK entry
        return Entry(Code.SOCKET, EntryType.CONNECT if rnd.random() < 0.5 else EntryType.ACCEPT, e.ts_ns, Source.IBMI,
                     "IBMI01", Outcome.ALLOWED, None, None, "QUSER", None, None, "QSYS/QTMHHTTP", "ipv4",
                     "192.0.2.20", 8080, e.remote_addr or "192.0.2.99", e.remote_port or 443,
                     {"job": "123456/QTMHHTTP/HTTPSVR"}, ident=f"IBMI01:{i}")
    elif k == 2:                                   # an executable no longer on this host
        e.program = "/opt/gone/bin/agent"
    elif k == 3 and e.type is EntryType.UDP_OUTBOUND:   # a flow summary
        e.extra = {"flow": "summary", "count": rnd.randint(1, 500), "protocol": "udp"}
    elif k == 4 and e.type is EntryType.ACCEPT:
        e.rule, e.outcome = "listen-refused", Outcome.REJECTED
    return e
