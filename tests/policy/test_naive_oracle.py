"""The compiler checked by an independent oracle.

The kernel differential test compares the kernel and evaluate.decide() on the *same*
compiled tables, so a compiler bug passes on both sides. Here random policies and queries
go through compile_policy + evaluate.explain (the tables, read as the kernel reads them)
and through policy.naive (first match over the typed model, straight from docs/policy.md), and
the two decisions must be equal. Part of the policies are written out as TOML and parsed,
so the parser -> compiler path is covered too. No root, no BPF.

The last tests break the compiler on purpose, one way each, and require the same search
to find a counterexample: an oracle that passes a broken compiler proves nothing.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sockgate.policy import compile as compile_mod
from sockgate.policy import evaluate, naive
from sockgate.policy.compile import compile_policy
from sockgate.policy.evaluate import Query, explain
from sockgate.policy.model import (
    FIELDS_BY_EXIT, MATCH_FIELDS, PROTOCOL_NAMES, Action, Exit, Match, Mode, Policy, Protocol, Rule,
)
from sockgate.policy.parse import parse_policy

MAX_ID = 2**32 - 2  # the parser's largest uid/gid
MAX_V4, MAX_V6 = 2**32 - 1, 2**128 - 1
MAPPED = 0xFFFF << 32  # ::ffff:0:0

# small pools, so that random rules share values, nest networks and overlap ranges
IDS = [0, 1, 2, 33, 100, 1000, 65534, 65535, MAX_ID]
V4_BASES = ["0.0.0.0", "10.0.0.0", "10.1.2.3", "10.1.255.255", "192.168.1.1", "255.255.255.255"]
V6_BASES = ["::", "::1", "2001:db8::", "2001:db8::1:0:0:1", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:0:0", "::ffff:10.1.2.3", "::fffe:ffff:ffff", "::1:0:0:0"]
PORTS = [0, 1, 21, 22, 23, 80, 443, 1023, 1024, 8080, 65534, 65535]
V4_PLENS = [0, 32, 1, 8, 16, 24, 31]
V6_PLENS = [0, 128, 1, 64, 80, 95, 96, 97, 104, 120, 127]
PROTOCOL_NAME_LIST = sorted(PROTOCOL_NAMES)
V4_POOL = [int(ipaddress.IPv4Address(a)) for a in V4_BASES]
V6_POOL = [int(ipaddress.IPv6Address(a)) for a in V6_BASES]

# a Rule's fields, allowed by every exit point it names (the parser refuses the others)
ALLOWED_FIELDS = {
    exits: [f for f in MATCH_FIELDS if all(f in FIELDS_BY_EXIT[e] for e in exits)]
    for exits in (frozenset(s) for s in
                  ({Exit.CONNECT}, {Exit.LISTEN}, {Exit.ACCEPT}, {Exit.CONNECT, Exit.LISTEN},
                   {Exit.CONNECT, Exit.ACCEPT}, {Exit.LISTEN, Exit.ACCEPT}, set(Exit)))
}


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> list[str]:
    """Executables with real identities: three files, a hard link to the first (another
    path, same inode) and a symlink to the second (stat follows it: same identity)."""
    d = tmp_path_factory.mktemp("programs")
    paths = []
    for i in range(3):
        p = d / f"prog{i}"
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
        paths.append(str(p))
    os.link(paths[0], d / "prog0-hardlink")
    os.symlink(paths[1], d / "prog1-symlink")
    return paths + [str(d / "prog0-hardlink"), str(d / "prog1-symlink")]


# --------------------------------------------------------------------------- values
# Drawn with plain integer draws and list indices rather than composed strategies: a
# case is a few hundred draws, and generation is what this test spends its time on.


def pick(draw, seq):
    """One element of seq (shrinks towards the first)."""
    return seq[draw(st.integers(0, len(seq) - 1))] if len(seq) > 1 else seq[0]


def pool_or_random(draw, pool: list, lo: int, hi: int) -> int:
    """Mostly a pool value, else anything in lo..hi."""
    i = draw(st.integers(0, len(pool)))
    return pool[i] if i < len(pool) else draw(st.integers(lo, hi))


def draw_id(draw) -> int:
    return pool_or_random(draw, IDS, 0, MAX_ID)


def draw_network(draw):
    kind = draw(st.integers(0, 2))
    if kind == 1:  # IPv6
        addr = pool_or_random(draw, V6_POOL, 0, MAX_V6)
        return ipaddress.IPv6Network((addr, pool_or_random(draw, V6_PLENS, 0, 128)), strict=False)
    addr = pool_or_random(draw, V4_POOL, 0, MAX_V4)
    plen = pool_or_random(draw, V4_PLENS, 0, 32)
    if kind == 0:
        return ipaddress.IPv4Network((addr, plen), strict=False)
    # an IPv4 network written in its v4-mapped IPv6 form (::ffff:10.0.0.0/104)
    return ipaddress.IPv6Network((MAPPED | addr, 96 + plen), strict=False)


def draw_port(draw) -> int:
    return pool_or_random(draw, PORTS, 0, 65535)


def draw_range(draw) -> tuple[int, int]:
    a = draw_port(draw)
    b = draw_port(draw) if draw(st.booleans()) else a
    return min(a, b), max(a, b)


def draw_values(draw, field: str, programs: list[str], as_text: bool) -> list:
    if field == "protocol":  # a set of classes; a file can only say names (tcp = TCP + MPTCP)
        bits = draw(st.integers(1, 15))  # a non-empty subset of four
        if as_text:
            return [n for i, n in enumerate(PROTOCOL_NAME_LIST) if bits >> i & 1]
        return [p for p in Protocol if bits >> p & 1]
    one = {"user": draw_id, "group": draw_id, "program": lambda d: pick(d, programs),
           "local": draw_network, "remote": draw_network,
           "local_port": draw_range, "remote_port": draw_range}[field]
    return [one(draw) for _ in range(draw(st.integers(1, 4)))]


def protocol_classes(names) -> list[Protocol]:
    return sorted(set().union(*(PROTOCOL_NAMES[n] for n in names)))


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Case:
    policy: Policy                    # what the compiler and both evaluators get
    model: Policy | None              # the model it was written from (TOML cases only)
    text: str | None                  # the TOML (TOML cases only)
    queries: tuple[Query, ...]


def draw_rule(draw, i: int, programs: list[str], as_text: bool):
    """A Rule, and (as_text) its protocol field as names and negation, for the file."""
    exits = pick(draw, list(ALLOWED_FIELDS))
    allowed = ALLOWED_FIELDS[exits]
    chosen = [f for f in allowed if draw(st.integers(0, 2)) == 0]  # each in about a third
    if not chosen and draw(st.integers(0, 9)):  # a rule without fields shadows all after it
        chosen = [pick(draw, allowed)]
    fields = {}
    names = None
    for f in chosen:
        values = draw_values(draw, f, programs, as_text)
        negated = draw(st.integers(0, 2)) == 0  # negated fields match widely: a third
        if f == "protocol" and as_text:
            names, values = (values, negated), protocol_classes(values)
        fields[f] = Match(tuple(values), negated)
    rule = Rule(index=i, name=f"r{i}", line=0, exits=exits, action=pick(draw, list(Action)),
                mode=pick(draw, [None, Mode.ENFORCE, Mode.AUDIT]), **fields)
    return rule, names


def draw_policy(draw, programs: list[str], as_text: bool):
    n = draw(st.integers(1, 8)) if draw(st.integers(0, 3)) else draw(st.integers(1, 40))
    drawn = [draw_rule(draw, i, programs, as_text) for i in range(n)]
    policy = Policy(rules=tuple(r for r, _ in drawn), mode=pick(draw, list(Mode)),
                    defaults={e: pick(draw, list(Action)) for e in Exit})
    return policy, [names for _, names in drawn]


def toml_text(draw, policy: Policy, protocol_names: list) -> str:
    """The policy as a file, values inline or through [lists] ("@name", "!@name")."""
    lines = [f'mode = "{policy.mode.value}"', "", "[defaults]"]
    lines += [f'{e.label} = "{policy.defaults[e].value}"' for e in Exit]
    lists: dict[str, list[str]] = {}
    body = []
    for rule, names in zip(policy.rules, protocol_names):
        body += ["", "[[rule]]"]
        if draw(st.booleans()):  # else the parser's default name, "rule-N"
            body.append(f'name = "{rule.name}"')
        body.append("exit = [" + ", ".join(f'"{e.label}"' for e in sorted(rule.exits)) + "]")
        body.append(f'action = "{rule.action.value}"')
        if rule.mode is not None:
            body.append(f'mode = "{rule.mode.value}"')
        for f in MATCH_FIELDS:
            m: Match | None = getattr(rule, f)
            if m is None:
                continue
            if f == "protocol":
                texts, negated = names
            else:
                texts, negated = [_value_text(f, v) for v in m.values], m.negated
            bang = "!" if negated else ""
            cut = draw(st.integers(0, len(texts)))  # texts[:cut] go into a named list
            items = [f'"{bang}{t}"' for t in texts[cut:]]
            if cut:
                name = f"l{len(lists)}"
                lists[name] = texts[:cut]
                items.insert(0, f'"{bang}@{name}"')
            body.append(f"{f} = [{', '.join(items)}]")
    if lists:
        lines += ["", "[lists]"]
        lines += [f"{k} = [{', '.join(chr(34) + t + chr(34) for t in v)}]" for k, v in lists.items()]
    return "\n".join(lines + body) + "\n"


def _value_text(field: str, v) -> str:
    if field.endswith("_port"):
        lo, hi = v
        return str(lo) if lo == hi else f"{lo}-{hi}"
    return str(v)


# --------------------------------------------------------------------------- queries


def _values(rules_: list[Rule], field: str) -> list:
    return [v for r in rules_ if getattr(r, field) is not None for v in getattr(r, field).values]


def draw_address(draw, nets: list) -> str:
    """An address at a network's edge (first, last, just outside either), inside it, or anywhere."""
    if nets and draw(st.integers(0, 5)):
        net = pick(draw, nets)
        first, last = int(net.network_address), int(net.broadcast_address)
        top = MAX_V4 if net.version == 4 else MAX_V6
        edges = [a for a in (first, last, first - 1, last + 1) if 0 <= a <= top]
        i = draw(st.integers(0, len(edges)))
        value = edges[i] if i < len(edges) else draw(st.integers(first, last))
        addr = ipaddress.ip_address(value) if net.version == 6 else ipaddress.IPv4Address(value)
    elif draw(st.booleans()):
        addr = ipaddress.IPv4Address(pool_or_random(draw, V4_POOL, 0, MAX_V4))
    else:
        addr = ipaddress.IPv6Address(pool_or_random(draw, V6_POOL, 0, MAX_V6))
    # the same address in its other spelling: a.b.c.d <-> ::ffff:a.b.c.d
    if draw(st.integers(0, 2)) == 0:
        if addr.version == 4:
            addr = ipaddress.IPv6Address(MAPPED | int(addr))
        elif addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    return str(addr)


def draw_query_port(draw, ranges: list) -> int:
    """A range's ends, just outside them, a port inside, or any port."""
    if ranges and draw(st.integers(0, 5)):
        lo, hi = pick(draw, ranges)
        edges = [p for p in (lo, hi, lo - 1, hi + 1) if 0 <= p <= 65535]
        i = draw(st.integers(0, len(edges)))
        return edges[i] if i < len(edges) else draw(st.integers(lo, hi))
    return draw_port(draw)


def draw_query(draw, policy: Policy, programs: list[str]) -> Query:
    """A query aimed at one rule (its exit, values at and around its values), at the
    policy as a whole, or at nothing in particular."""
    aim = pick(draw, ["rule", "rule", "policy", "random"])
    pool = [pick(draw, policy.rules)] if aim == "rule" else list(policy.rules) if aim == "policy" else []
    exit = pick(draw, sorted({e for r in pool for e in r.exits}) or list(Exit))

    def near_id(known: list[int]) -> int:
        if known and draw(st.integers(0, 5)):
            return max(0, pick(draw, known) + pick(draw, [0, 0, 1, -1]))
        return draw_id(draw)

    uid = near_id(_values(pool, "user"))
    # primary gid first, then supplementary; sometimes more than the 32 the kernel reads,
    # with the interesting ones around position 32
    known_gids = _values(pool, "group")
    if draw(st.integers(0, 3)):
        gids = [near_id(known_gids) for _ in range(draw(st.integers(0, 4)))]
    else:
        gids = [3_000_000_000 + i for i in range(draw(st.integers(30, 36)))]  # in no rule
        for _ in range(draw(st.integers(1, 3))):
            at = pick(draw, [31, 32, 31, 0, 30]) % len(gids)
            gids[at] = near_id(known_gids)
    program = pick(draw, [*programs, None, "/nonexistent/program"])
    known_protocols = _values(pool, "protocol")
    protocol = pick(draw, known_protocols if known_protocols and draw(st.integers(0, 3)) else list(Protocol))

    def endpoint(side):
        return draw_address(draw, _values(pool, side)), draw_query_port(draw, _values(pool, side + "_port"))

    # the side an exit point doesn't test is sometimes left out, sometimes filled (and ignored)
    local = endpoint("local") if exit != Exit.CONNECT or draw(st.booleans()) else None
    remote = endpoint("remote") if exit != Exit.LISTEN or draw(st.booleans()) else None
    return Query(exit=exit, uid=uid, gids=tuple(gids), program=program, local=local, remote=remote,
                 protocol=protocol)


@st.composite
def cases(draw, programs: list[str]) -> Case:
    as_text = draw(st.integers(0, 3)) == 0  # a quarter of the policies go through a file
    model, names = draw_policy(draw, programs, as_text)
    policy, text = model, None
    if as_text:
        text = toml_text(draw, model, names)
        policy = parse_policy(text, "oracle.toml")
    qs = [draw_query(draw, model, programs) for _ in range(draw(st.integers(1, 24)))]
    return Case(policy, model if as_text else None, text, tuple(qs))


# --------------------------------------------------------------------------- the property


def check_case(case: Case) -> None:
    policy = case.policy
    compiled = compile_policy(policy)
    for q in case.queries:
        want = naive.decide(policy, q)
        got = explain(policy, q, compiled)  # == explain(policy, q), compiled once per policy
        assert got == want, (
            f"compiled tables disagree with the naive evaluator on\n  {q}\n"
            f"  compiled: {got}\n  naive:    {want}\n"
            + (f"policy file:\n{case.text}" if case.text else f"policy: {policy}"))
        if case.model is not None:  # and the file means what the model it was written from does
            meant = naive.decide(case.model, q)
            assert (meant.outcome, meant.rule_index) == (want.outcome, want.rule_index), (
                f"parsed policy decides differently from its model on {q}:\n"
                f"  parsed: {want}\n  model:  {meant}\npolicy file:\n{case.text}")


def agreement(programs: list[str], **overrides):
    """The property as a runnable hypothesis test (built here, so that the fixture's
    program paths can feed the strategy, and the breakage tests can re-run it)."""
    opts = dict(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    opts.update(overrides)

    @settings(**opts)
    @given(cases(programs))
    def naive_agrees_with_compiled(case):
        check_case(case)

    return naive_agrees_with_compiled


def test_naive_agrees_with_compiled(programs):
    agreement(programs)()


def test_examples_from_the_semantics(programs):
    """A few hand-made cases, so the oracle itself is pinned down, not just its agreement."""
    net = ipaddress.ip_network
    r0 = Rule(0, "mapped", 1, frozenset({Exit.CONNECT}), Action.REJECT,
              remote=Match((net("::ffff:10.0.0.0/104"),)), remote_port=Match(((22, 22),), negated=True))
    r1 = Rule(1, "groups", 2, frozenset({Exit.LISTEN, Exit.ACCEPT}), Action.REJECT, mode=Mode.AUDIT,
              group=Match((7,)), local_port=Match(((1, 1023),)))
    r2 = Rule(2, "no-program", 3, frozenset({Exit.ACCEPT}), Action.REJECT,
              program=Match((programs[0],), negated=True), protocol=Match((Protocol.UDP,)))
    p = Policy(rules=(r0, r1, r2), defaults={Exit.CONNECT: Action.ALLOW, Exit.LISTEN: Action.REJECT,
                                             Exit.ACCEPT: Action.ALLOW})
    expected = [
        (Query(Exit.CONNECT, remote=("10.9.9.9", 80)), 0),
        (Query(Exit.CONNECT, remote=("::ffff:10.9.9.9", 80)), 0),
        (Query(Exit.CONNECT, remote=("10.9.9.9", 22)), -1),      # negated port
        (Query(Exit.CONNECT, remote=("11.0.0.0", 80)), -1),
        (Query(Exit.LISTEN, gids=(1, 7), local=("::", 80)), 1),  # a supplementary group
        (Query(Exit.LISTEN, gids=(1,) * 31 + (7,), local=("::", 80)), 1),  # the 32nd: read
        (Query(Exit.LISTEN, gids=(1,) * 32 + (7,), local=("::", 80)), -1),  # the 33rd: not read
        (Query(Exit.LISTEN, gids=(7,), local=("::", 1024)), -1),
        (Query(Exit.ACCEPT, protocol=Protocol.UDP, local=("::1", 5000), remote=("::2", 1)), 2),
        (Query(Exit.ACCEPT, protocol=Protocol.UDP, program=programs[3],  # programs[0]'s hard link
               local=("::1", 5000), remote=("::2", 1)), -1),
    ]
    for q, index in expected:
        d = naive.decide(p, q)
        assert d.rule_index == index, (q, d)
        assert d == explain(p, q)
    assert naive.decide(p, expected[4][0]).outcome.value == "audit-rejected"
    assert naive.decide(p, expected[7][0]).outcome.value == "rejected"  # listen default, enforce


# --------------------------------------------------------------------------- the oracle has teeth


def _split_negation_ignored(attr):
    """compile._split reporting no negated rules for one field: '!x' compiles as 'x'."""
    real = compile_mod._split

    def broken(rules_, a):
        wild, neg, cons = real(rules_, a)
        return (wild, 0 if a == attr else neg, cons)

    return "_split", broken


def _port_boundary_off_by_one():
    """Every port segment but the first starts one port late (a range's end reaches one too far)."""
    real = compile_mod._compile_ports

    def broken(*args, **kwargs):
        return [(p + 1 if p else 0, idx) for p, idx in real(*args, **kwargs)]

    return "_compile_ports", broken


def _v4_mapped_prefix_wrong():
    """IPv4 networks stored under ::a.b.c.d/96+n (IPv4-compatible) instead of ::ffff:a.b.c.d."""
    real = compile_mod.as_v6

    def broken(net):
        if net.version == 4:
            return int(net.network_address), 96 + net.prefixlen
        return real(net)

    return "as_v6", broken


def _mapped_prefix_length_off_by_one():
    """IPv4 /n stored as ::ffff:a.b.c.d/(95+n): every IPv4 network one bit too wide."""
    real = compile_mod.as_v6

    def broken(net):
        addr, plen = real(net)
        if net.version == 4:
            plen -= 1
            addr &= ((1 << plen) - 1) << (128 - plen)
        return addr, plen

    return "as_v6", broken


BREAKAGES = {
    "group negation ignored": lambda: _split_negation_ignored("group"),
    "remote_port negation ignored": lambda: _split_negation_ignored("remote_port"),
    "protocol negation ignored": lambda: _split_negation_ignored("protocol"),
    "port segment boundary off by one": _port_boundary_off_by_one,
    "v4-mapped prefix wrong": _v4_mapped_prefix_wrong,
    "v4-mapped prefix length off by one": _mapped_prefix_length_off_by_one,
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_compiler_is_caught(breakage, programs, monkeypatch):
    name, broken = BREAKAGES[breakage]()
    monkeypatch.setattr(compile_mod, name, broken)
    search = agreement(programs, max_examples=200, derandomize=True, database=None,
                       phases=[Phase.generate], report_multiple_bugs=False)
    with pytest.raises(AssertionError, match="compiled tables disagree with the naive evaluator"):
        search()


def test_a_broken_group_limit_is_caught(programs, monkeypatch):
    """The table reader (evaluate._group_bits) reading 31 groups instead of the kernel's 32."""
    real = evaluate._group_bits
    monkeypatch.setattr(evaluate, "_group_bits", lambda c, gids: real(c, gids[:31]))
    search = agreement(programs, max_examples=200, derandomize=True, database=None,
                       phases=[Phase.generate], report_multiple_bugs=False)
    with pytest.raises(AssertionError, match="compiled tables disagree with the naive evaluator"):
        search()
