"""The lock-out guard: a policy must not reject the connection the administrator is using
right now, nor the connections sockgate itself needs to raise alerts.

Guarded calls:
- the administrator's remote sessions: the one in $SSH_CONNECTION, and every established
  TCP connection to a listener run by a remote-login server (sshd, dropbear), each as the
  accept decision the kernel would make (the listener's owner, its address and port, the
  client's);
- the alert channels' connections (syslog, SMTP, webhooks), as connect decisions of the
  daemon (root, this Python executable).

`policy check`, `sockgate run` and every reload refuse a policy that rejects one of them,
naming the rule, unless forced. Evaluated through the compiled tables (policy.evaluate),
as the kernel would decide.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass

from sockgate.errors import LockoutError
from sockgate.kernel import owners
from sockgate.policy.compile import compile_policy
from sockgate.policy.evaluate import Query, explain
from sockgate.policy.model import Exit, Outcome, Policy, Protocol
from sockgate.record import MAPPED_PREFIX, addr_key, endpoint, key_addr

SESSION_SERVERS = ("sshd", "dropbear")  # executables whose clients are administrators' sessions


@dataclass(frozen=True)
class Guarded:
    why: str        # "SSH session 10.0.0.9:50122 -> 10.0.0.1:22", "alert channel ops-mail (smtp.example:587)"
    query: Query


class _ListenerOwners:
    """Who listens where, read once per guard run: the listening sockets, and (only if a
    session needs it) which process holds each, which walks every /proc/PID/fd."""

    def __init__(self):
        self._listeners = owners.tcp_sockets(owners.LISTEN)
        self._holders: dict | None = None
        self._known: dict[tuple, tuple | None] = {}

    def owner(self, laddr: bytes, lport: int) -> tuple[int, tuple[int, ...], str | None] | None:
        """(euid, groups, exe path) of the process listening where a connection to (laddr,
        lport) lands: the bound address, else the wildcard."""
        if (laddr, lport) not in self._known:
            self._known[laddr, lport] = self._find(laddr, lport)
        return self._known[laddr, lport]

    def _find(self, laddr: bytes, lport: int) -> tuple[int, tuple[int, ...], str | None] | None:
        wild4, wild6 = MAPPED_PREFIX + bytes(4), bytes(16)
        for want in (laddr, wild4 if laddr[:12] == MAPPED_PREFIX else None, wild6):
            for _fam, a, p, _ra, _rp, _uid, inode in self._listeners:
                if p == lport and want is not None and a == want:
                    if self._holders is None:
                        self._holders = owners.socket_holders()
                    held = self._holders.get(inode)
                    if not held:
                        return None
                    ident = owners.process_identity(held[0])
                    if not ident:
                        return None
                    euid, egid, groups, *_ = ident
                    try:
                        exe = os.readlink(f"/proc/{held[0]}/exe")
                    except OSError:
                        exe = None
                    return euid, tuple([egid] + [g for g in groups if g != egid]), exe
        return None


def _addr(a16: bytes) -> str:
    text = key_addr(a16)
    assert text is not None
    return text


def sessions(env: dict[str, str] | None = None, servers: tuple[str, ...] = SESSION_SERVERS) -> list[Guarded]:
    """The administrators' sessions as accept queries."""
    env = os.environ if env is None else env
    found: dict[tuple, Guarded] = {}
    listening = _ListenerOwners()

    def add(kind: str, family: int, laddr: bytes, lport: int, raddr: bytes, rport: int, need_server: bool) -> None:
        owner = listening.owner(laddr, lport)
        if owner is None:
            return
        uid, gids, exe = owner
        if need_server and os.path.basename(exe or "") not in servers:
            return
        local, remote = (_addr(laddr), lport), (_addr(raddr), rport)
        q = Query(exit=Exit.ACCEPT, uid=uid, gids=gids, program=exe, local=local, remote=remote)
        found.setdefault((local, remote), Guarded(f"{kind} {endpoint(*remote)} -> {endpoint(*local)}", q))

    conn = env.get("SSH_CONNECTION", "").split()
    if len(conn) == 4:
        try:
            caddr, cport, saddr, sport = ipaddress.ip_address(conn[0]), int(conn[1]), ipaddress.ip_address(conn[2]), int(conn[3])
            fam = socket.AF_INET if saddr.version == 4 else socket.AF_INET6
            add("this SSH session", fam, addr_key(str(saddr)), sport, addr_key(str(caddr)), cport, need_server=False)
        except ValueError:
            pass
    for fam, laddr, lport, raddr, rport, _uid, _inode in owners.tcp_sockets(owners.ESTABLISHED):
        add("remote session", fam, laddr, lport, raddr, rport, need_server=True)
    return list(found.values())


def alert_channels(alerts_file: str | None) -> tuple[list[Guarded], list[str]]:
    """The alert channels' connections as connect queries of the daemon; and notes on
    channels whose address does not resolve (not guarded)."""
    if not alerts_file or not os.path.exists(alerts_file):
        return [], []
    from sockgate.monitor.channels import make_channel
    from sockgate.monitor.parse import load_rules

    out, notes = [], []
    exe = os.path.realpath(sys.executable)
    for name, cfg in load_rules(alerts_file).channels.items():
        peer = make_channel(name, cfg.type, cfg.options).peer()
        if not peer:
            continue
        host, port, proto = peer
        try:
            addrs = {ai[4][0] for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        except (OSError, UnicodeError):
            notes.append(f"alert channel {name}: {host} does not resolve here; not guarded")
            continue
        for a in sorted(addrs):
            q = Query(exit=Exit.CONNECT, uid=os.geteuid(), gids=(os.getegid(),), program=exe, remote=(a, port),
                      protocol=Protocol.UDP if proto == "udp" else Protocol.TCP)
            out.append(Guarded(f"alert channel {name} ({endpoint(a, port)}/{proto})", q))
    return out, notes


def lockouts(policy: Policy, guarded: list[Guarded], compiled=None) -> list[str]:
    """One line per guarded call the policy would reject, naming the rule."""
    if not guarded:
        return []
    compiled = compiled or compile_policy(policy)
    out = []
    for g in guarded:
        d = explain(policy, g.query, compiled)
        if d.outcome is Outcome.REJECTED:
            rule = (f"rule {d.rule_name!r} ({policy.source}:{d.rule_line})" if d.rule_index >= 0
                    else f"the {g.query.exit.label} default")
            out.append(f"{g.why} would be rejected by {rule}")
    return out


def check(policy: Policy, alerts_file: str | None, env: dict[str, str] | None = None,
          compiled=None) -> tuple[list[str], list[str]]:
    """(lock-outs, notes) for `policy`."""
    chans, notes = alert_channels(alerts_file)
    return lockouts(policy, sessions(env) + chans, compiled), notes


def guard(policy: Policy, alerts_file: str | None, compiled=None, log=None) -> None:
    """Raise LockoutError if `policy` locks out a guarded call."""
    found, notes = check(policy, alerts_file, compiled=compiled)
    for n in notes:
        if log:
            log(n)
    if found:
        raise LockoutError(policy.source, found)
