"""One meaning for an IPv6 network next to IPv4 (sockgate.record.network_contains) in the
policy (compiled tables and the naive oracle), in journal filters (SQL and in Python) and
in alert rules: "::/0" is every IPv6 address and no IPv4 address, v4-mapped spellings
included; ::ffff:10.0.0.0/104 is 10.0.0.0/8. Before, "::/0" in a policy rejected 8.8.8.8
while the monitor read it as IPv6 only."""

from __future__ import annotations

import ipaddress

import pytest

from sockgate.journal.query import Filter
from sockgate.monitor.match import compile_field
from sockgate.policy import naive
from sockgate.policy.evaluate import Query, explain
from sockgate.policy.model import Exit
from sockgate.policy.parse import parse_policy
from sockgate.record import Code, Entry, EntryType, Outcome, Source, network_contains

CASES = [  # (network, address, contained)
    ("::/0", "8.8.8.8", False),
    ("::/0", "::ffff:8.8.8.8", False),
    ("::/0", "2001:db8::1", True),
    ("::/0", "::1", True),
    ("::/8", "10.1.2.3", False),
    ("::ffff:10.0.0.0/104", "10.1.2.3", True),
    ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
    ("::ffff:10.0.0.0/104", "11.0.0.1", False),
    ("::ffff:0:0/96", "1.2.3.4", True),
    ("0.0.0.0/0", "::ffff:1.2.3.4", True),
    ("0.0.0.0/0", "::1", False),
    ("10.0.0.0/8", "10.9.9.9", True),
]


@pytest.mark.parametrize("net,addr,inside", CASES)
def test_the_rule(net, addr, inside):
    assert network_contains(ipaddress.ip_network(net), ipaddress.ip_address(addr)) is inside


@pytest.mark.parametrize("net,addr,inside", CASES)
def test_policy_compiled_and_naive(net, addr, inside):
    policy = parse_policy(f'[[rule]]\nname = "r"\nexit = "connect"\nremote = "{net}"\naction = "reject"\n'
                          f'[[rule]]\nname = "not"\nexit = "connect"\nremote = "!{net}"\naction = "allow"\n',
                          "p.toml")
    q = Query(exit=Exit.CONNECT, uid=1000, remote=(addr, 443))
    want = "r" if inside else "not"
    assert explain(policy, q).rule_name == want
    assert naive.decide(policy, q).rule_name == want


@pytest.mark.parametrize("net,addr,inside", CASES)
def test_journal_filters_sql_and_python(tmp_path, net, addr, inside):
    from sockgate.journal import Journal
    e = Entry(code=Code.SOCKET, type=EntryType.CONNECT, ts_ns=1, source=Source.KERNEL, outcome=Outcome.REJECTED,
              remote_addr=addr, remote_port=443)
    f = Filter.build(remote=[net])
    assert f.matches(e) is inside
    with Journal.open(tmp_path / "j") as j:
        j.append([e])
        assert len(list(j.entries(filter=f))) == int(inside)


@pytest.mark.parametrize("net,addr,inside", CASES)
def test_alert_rules(net, addr, inside):
    fm = compile_field("remote", [(False, ipaddress.ip_network(net))])
    assert fm.pos(addr) is inside
