"""The policy's meaning, written straight from docs/policy.md: an oracle.

`decide` walks the rules in order and returns the first one that matches, else the exit
point's default. It shares no table logic with compile.py (no bitmaps, no prefix or port
tables): the property test in tests/policy/test_naive_oracle.py checks that the compiled
tables, read by evaluate.decide() the way the kernel reads them, say the same thing on
random policies and queries. It is slow (linear in the rules) and meant for tests only.

What it takes from elsewhere, on purpose: the model types, evaluate's Query and Decision
(so the two answers compare with ==), and compile.program_identity, since turning a path
into (device, inode) is how a program is named on this host, not part of the tables.
"""

from __future__ import annotations

import ipaddress

from sockgate.policy.compile import program_identity
from sockgate.policy.evaluate import Decision, Query
from sockgate.policy.model import Action, Exit, Match, Mode, Network, Outcome, Policy, Rule
from sockgate.record import network_contains

__all__ = ["decide", "rule_matches"]

MAX_GROUPS = 32  # the kernel looks at the primary gid and the first 31 supplementary ones

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def decide(policy: Policy, query: Query) -> Decision:
    """First match wins; no match: the exit point's default, in the policy's mode."""
    for rule in policy.rules:
        if rule_matches(rule, query):
            mode = rule.mode or policy.mode
            return Decision(_outcome(rule.action, mode), rule.action, mode, rule.index, rule.name, rule.line)
    action = policy.defaults[query.exit]
    return Decision(_outcome(action, policy.mode), action, policy.mode, -1, None, None)


def rule_matches(rule: Rule, query: Query) -> bool:
    """The rule covers the query's exit point and every field it has matches (fields ANDed)."""
    if query.exit not in rule.exits:
        return False
    checks = [
        (rule.protocol, lambda p: p == query.protocol),
        (rule.user, lambda uid: uid == query.uid),
        (rule.group, lambda gid: gid in query.gids[:MAX_GROUPS]),
        (rule.program, _program_test(query.program)),
    ]
    if query.exit in (Exit.LISTEN, Exit.ACCEPT):  # a connect has no local side to test
        laddr, lport = _endpoint(query.local)
        checks += [(rule.local, lambda net: network_contains(net, laddr)),
                   (rule.local_port, lambda r: r[0] <= lport <= r[1])]
    if query.exit in (Exit.CONNECT, Exit.ACCEPT):  # a listen has no remote side
        raddr, rport = _endpoint(query.remote)
        checks += [(rule.remote, lambda net: network_contains(net, raddr)),
                   (rule.remote_port, lambda r: r[0] <= rport <= r[1])]
    return all(_field_matches(m, test) for m, test in checks)


def _field_matches(m: Match | None, test) -> bool:
    """Left out: matches anything. Else any value matches; negated: none does."""
    if m is None:
        return True
    hit = any(test(v) for v in m.values)
    return not hit if m.negated else hit


def _program_test(path: str | None):
    """A program value matches when it is the same file (device, inode) as the caller's.
    A caller with no known executable matches no value (so only a negated field)."""
    ident = program_identity(path) if path else None
    if ident is None:
        return lambda _value: False
    return lambda value: program_identity(value) == ident


def _endpoint(ep: tuple[str, int] | None) -> tuple[Address, int]:
    if ep is None:  # what explain() assumes for a side the query leaves out
        return ipaddress.IPv6Address("::"), 0
    return ipaddress.ip_address(ep[0]), ep[1]





def _outcome(action: Action, mode: Mode) -> Outcome:
    if action is Action.ALLOW:
        return Outcome.ALLOWED
    return Outcome.REJECTED if mode is Mode.ENFORCE else Outcome.AUDIT_REJECTED
