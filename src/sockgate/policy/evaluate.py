"""The reference decision, computed over the SAME compiled tables the kernel gets.

`policy explain` uses it, and the kernel differential test compares it with the kernel's
decision on the same tables. It mirrors sockgate.bpf.c's decide(): look up each
dimension's bitmap, AND them, the lowest set bit is the deciding rule.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from sockgate.policy.compile import (
    LOCAL, OUTCOME_OF, REMOTE, Compiled, addr_as_v6, compile_policy, program_identity,
)
from sockgate.policy.model import PROTOCOL_OF_IPPROTO, Action, Exit, Mode, Outcome, Policy, Protocol


@dataclass(frozen=True)
class Query:
    exit: Exit
    uid: int = 0
    gids: tuple[int, ...] = ()        # primary first, then supplementary
    program: str | None = None        # executable path
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    action: Action
    mode: Mode
    rule_index: int                   # -1: the exit point's default
    rule_name: str | None
    rule_line: int | None


def lookup_addr(c: Compiled, side: int, addr128: int) -> int:
    table = c.addrs[side]
    for plen in c.addr_lengths[side]:
        mask = ((1 << plen) - 1) << (128 - plen) if plen else 0
        idx = table.get((addr128 & mask, plen))
        if idx is not None:
            return idx
    raise AssertionError("address table lacks its default entry")


def lookup_port(c: Compiled, side: int, port: int, proto: int = Protocol.TCP) -> int:
    i = bisect.bisect_right(c.port_starts[side][proto], port) - 1
    return c.ports[side][proto][i][1]


def decide(c: Compiled, exit: int, uid: int, gids: tuple[int, ...], ident: tuple[int, int] | None,
           laddr128: int, lport: int, raddr128: int, rport: int, proto: int = Protocol.TCP) -> tuple[int, int]:
    """(verdict, rule index or -1): the kernel's decide(), bit for bit."""
    cand = who_bits(c, exit, uid, gids, ident)
    if exit != Exit.CONNECT:
        cand &= side_bits(c, LOCAL, laddr128, lport, proto)
    if exit != Exit.LISTEN:
        cand &= side_bits(c, REMOTE, raddr128, rport, proto)
    return first_rule(c, exit, cand)


# decide() in its three parts, for callers that cache each (replay: a caller's identity
# repeats over many addresses, an address over many callers)

def who_bits(c: Compiled, exit: int, uid: int, gids: tuple[int, ...], ident: tuple[int, int] | None) -> int:
    """The rules the caller's dimensions leave: user (it carries the exit point), groups, program."""
    b = c.bitmaps
    return (((1 << c.nrules) - 1) & b[c.users.get((exit, uid), c.user_miss[exit])] & _group_bits(c, gids)
            & b[c.programs.get(ident, c.program_miss) if ident else c.program_miss])


def side_bits(c: Compiled, side: int, addr128: int, port: int, proto: int = Protocol.TCP) -> int:
    """The rules one side's address and port leave (LOCAL or REMOTE)."""
    return c.bitmaps[lookup_addr(c, side, addr128)] & c.bitmaps[lookup_port(c, side, port, proto)]


def first_rule(c: Compiled, exit: int, cand: int) -> tuple[int, int]:
    """(verdict, rule index or -1) of the candidate rules left: the lowest set bit decides."""
    if not cand:
        return c.default_verdicts[exit], -1
    rule = (cand & -cand).bit_length() - 1
    return c.verdicts[rule], rule


def _group_bits(c: Compiled, gids: tuple[int, ...]) -> int:
    b = c.bitmaps
    hits = [c.groups[g] for g in dict.fromkeys(gids[:32]) if g in c.groups]
    if not hits:
        return b[c.group_miss]
    if len(hits) == 1:
        return b[hits[0][0]]
    membership = 0
    for _, m in hits:
        membership |= b[m]
    return b[c.group_wild] | (membership ^ b[c.group_neg])


def explain(policy: Policy, query: Query, compiled: Compiled | None = None) -> Decision:
    c = compiled or compile_policy(policy)
    ident = program_identity(query.program) if query.program else None
    laddr, lport = query.local or ("::", 0)
    raddr, rport = query.remote or ("::", 0)
    verdict, rule = decide(c, int(query.exit), query.uid, tuple(query.gids), ident,
                           addr_as_v6(laddr), lport, addr_as_v6(raddr), rport, int(query.protocol))
    outcome = OUTCOME_OF[verdict]
    if rule < 0:
        return Decision(outcome, policy.defaults[query.exit], policy.mode, -1, None, None)
    r = policy.rules[rule]
    return Decision(outcome, r.action, r.effective_mode(policy.mode), rule, r.name, r.line)
