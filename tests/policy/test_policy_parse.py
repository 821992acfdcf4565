"""Parser unit tests: each semantic rule, each error message and the line it points at."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import textwrap

import pytest

from sockgate.errors import PolicyErrors
from sockgate.policy import parse as parse_mod
from sockgate.policy.model import MAX_RULES, Action, Exit, Match, Mode
from sockgate.policy.parse import load_default_policy, load_policy, parse_policy

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"

net = ipaddress.ip_network


def P(text: str):
    return parse_policy(textwrap.dedent(text), "p.toml")


def errors(text: str | bytes) -> list[tuple[int, str]]:
    if isinstance(text, str):
        text = textwrap.dedent(text)
    with pytest.raises(PolicyErrors) as ei:
        parse_policy(text, "p.toml")
    for e in ei.value.errors:
        assert e.file == "p.toml"
        assert isinstance(e.line, int) and e.line >= 1
    return [(e.line, e.message) for e in ei.value.errors]


def one(text: str | bytes) -> tuple[int, str]:
    errs = errors(text)
    assert len(errs) == 1, errs
    return errs[0]


def rule(body: str, exit: str = "connect", action: str = "reject"):
    """A policy with one rule; line 1 is the header, line 2 exit, line 3 action, body from line 4."""
    return f'[[rule]]\nexit = "{exit}"\naction = "{action}"\n' + textwrap.dedent(body)


# --------------------------------------------------------------------------- whole files


def test_empty_file_is_the_all_allow_policy():
    p = parse_policy("", "p.toml")
    assert p.rules == ()
    assert p.mode is Mode.ENFORCE
    assert p.audit_levels == frozenset({"*NETFAIL"})
    assert p.defaults == {e: Action.ALLOW for e in Exit}
    assert p.errno == errno.EPERM
    assert p.source == "p.toml"


def test_design_example_parses():
    p = P('''
        mode = "enforce"
        audit_levels = ["*NETFAIL"]

        [defaults]
        connect = "allow"
        listen  = "allow"
        accept  = "allow"

        [lists]
        mgmt       = ["10.20.0.0/16", "fd00:20::/32"]
        mail_ports = ["25", "465", "587"]

        [[rule]]
        name        = "web-no-mail"
        exit        = ["connect"]
        user        = ["www-data"]
        remote_port = ["@mail_ports"]
        action      = "reject"

        [[rule]]
        name       = "ssh-from-mgmt-only"
        exit       = ["accept"]
        local_port = ["22"]
        remote     = ["!@mgmt"]
        action     = "reject"

        [[rule]]
        name       = "low-ports-root-only"
        exit       = ["listen"]
        local_port = ["1-1023"]
        user       = ["!root"]
        action     = "reject"
        mode       = "audit"
    ''')
    web, ssh, low = p.rules
    assert (web.index, web.name, web.line) == (0, "web-no-mail", 14)
    assert web.exits == frozenset({Exit.CONNECT})
    assert web.user == Match((33,))
    assert web.remote_port == Match(((25, 25), (465, 465), (587, 587)))
    assert web.action is Action.REJECT and web.mode is None
    assert (ssh.index, ssh.line) == (1, 21)
    assert ssh.remote == Match((net("10.20.0.0/16"), net("fd00:20::/32")), negated=True)
    assert ssh.local_port == Match(((22, 22),))
    assert (low.index, low.line) == (2, 28)
    assert low.user == Match((0,), negated=True)
    assert low.local_port == Match(((1, 1023),))
    assert low.mode is Mode.AUDIT
    assert low.effective_mode(Mode.ENFORCE) is Mode.AUDIT


def test_example_policy_passes():
    p = load_policy(EXAMPLE)
    assert len(p.rules) >= 6
    assert p.source == str(EXAMPLE)
    kinds = {f for r in p.rules for f in ("user", "group", "program", "remote", "local") if getattr(r, f)}
    assert kinds == {"user", "group", "program", "remote", "local"}
    assert any(isinstance(v, ipaddress.IPv6Network) for r in p.rules if r.remote for v in r.remote.values)
    assert any(r.mode is Mode.AUDIT for r in p.rules)


def test_default_policy_is_safe():
    p = load_default_policy()
    assert p.rules == ()
    assert p.mode is Mode.ENFORCE
    assert p.defaults == {e: Action.ALLOW for e in Exit}
    assert p.audit_levels == frozenset({"*NETFAIL"})
    assert len(p.digest) == 64


def test_load_policy_sets_source_and_digest(tmp_path):
    data = b'mode = "audit"\n'
    f = tmp_path / "x.toml"
    f.write_bytes(data)
    p = load_policy(f)
    assert p.source == str(f)
    assert p.digest == hashlib.sha256(data).hexdigest()
    assert p.mode is Mode.AUDIT


def test_load_policy_missing_file(tmp_path):
    with pytest.raises(PolicyErrors) as ei:
        load_policy(tmp_path / "nope.toml")
    (e,) = ei.value.errors
    assert "cannot read" in e.message and e.file.endswith("nope.toml")


def test_load_configured_policy_falls_back_to_default(monkeypatch, tmp_path):
    monkeypatch.setattr(parse_mod, "DEFAULT_POLICY_PATH", str(tmp_path / "absent.toml"))
    assert parse_mod.load_configured_policy().source == "<embedded>"
    f = tmp_path / "p.toml"
    f.write_text('mode = "audit"\n')
    assert parse_mod.load_configured_policy(f).mode is Mode.AUDIT
    monkeypatch.setattr(parse_mod, "DEFAULT_POLICY_PATH", str(f))
    assert parse_mod.load_configured_policy().source == str(f)


def test_bom_is_accepted():
    assert parse_policy(b'\xef\xbb\xbfmode = "audit"\n').mode is Mode.AUDIT


def test_all_errors_are_reported_sorted_by_line():
    errs = errors('''
        [[rule]]
        exit = "connect"
        action = "nope"
        user = "no-such-user-x"

        [defaults]
        connect = "deny"
    ''')
    assert [line for line, _ in errs] == [4, 5, 8]


# --------------------------------------------------------------------------- TOML syntax and bytes


def test_toml_syntax_error_line():
    line, msg = one('mode = "enforce"\n\naudit_levels = [\n"*NETFAIL"\nerrno = 1\n')
    assert line == 5
    assert msg.startswith("TOML syntax:") and "column" in msg


def test_toml_syntax_error_at_end_of_file():
    line, msg = one('mode = "enforce"\nname = """never closed\n\n')
    assert line >= 2 and msg.startswith("TOML syntax")


def test_duplicate_key_is_a_toml_error():
    assert one('mode = "audit"\nmode = "enforce"\n')[0] == 2


def test_invalid_utf8_line():
    line, msg = one(b'mode = "audit"\n# comment \xff\xfe\n')
    assert line == 2 and "UTF-8" in msg


def test_huge_integer_literal():
    assert one("mode = 'audit'\nerrno = " + "9" * 5000 + "\n") == (2, "TOML: integer with too many digits")


def test_deep_nesting():
    assert one('mode = "audit"\nx = ' + "[" * 5000 + "]" * 5000 + "\n") == (2, "TOML: arrays or tables nested too deeply")


# --------------------------------------------------------------------------- top level


def test_unknown_top_level_key_with_suggestion():
    assert one('mode = "audit"\nrules = 1\n') == (2, 'unknown key "rules" (did you mean "rule"?)')


def test_unknown_top_level_table():
    assert one('\n[default]\nconnect = "allow"\n') == (2, 'unknown key "default" (did you mean "defaults"?)')


def test_mode():
    assert P('mode = "audit"').mode is Mode.AUDIT
    assert one('\nmode = "enforc"') == (2, 'mode: "enforc" is not one of enforce, audit (did you mean "enforce"?)')
    assert one("mode = 1") == (1, "mode: expected one of enforce, audit, got an integer")


def test_audit_levels():
    assert P('audit_levels = ["*NETSCK", "*NETFAIL"]').audit_levels == {"*NETSCK", "*NETFAIL"}
    assert P('audit_levels = "*NETCMN"').audit_levels == {"*NETCMN"}
    assert P('audit_levels = ["netfail"]').audit_levels == {"*NETFAIL"}
    assert P("audit_levels = []").audit_levels == frozenset()
    assert P('audit_levels = ["*NETFAIL", "*NETUDP"]').audit_levels == {"*NETFAIL", "*NETUDP"}
    line, msg = one('\n\naudit_levels = ["*NETFAIL", "*NETTELSVR"]')
    assert line == 3 and msg.startswith('audit_levels: unknown level "*NETTELSVR"')
    assert one("audit_levels = [1]")[1] == 'audit_levels: expected strings like "*NETFAIL", got an integer'


@pytest.mark.parametrize("value,expected", [
    ('"EPERM"', errno.EPERM), ('"EACCES"', errno.EACCES), ('"ECONNREFUSED"', errno.ECONNREFUSED),
    ('"eacces"', errno.EACCES), ("13", 13), ('"13"', 13),
])
def test_errno(value, expected):
    assert P(f"errno = {value}").errno == expected


def test_errno_errors():
    assert one('\nerrno = "EPREM"') == (2, 'errno: unknown errno name "EPREM" (did you mean "EPERM"?)')
    assert one("errno = 0") == (1, "errno: 0 out of range (1-4095)")
    assert one("errno = 5000") == (1, "errno: 5000 out of range (1-4095)")
    assert one("errno = 1.5")[1] == 'errno: expected a name like "EPERM" or a number, got a float'
    assert one('errno = "EOF_NOT"')[1].startswith("errno: unknown errno name")


# --------------------------------------------------------------------------- [defaults]


def test_metrics_per_rule():
    assert P("").metrics_per_rule is False
    assert P("metrics_per_rule = true").metrics_per_rule is True
    assert one('\nmetrics_per_rule = "yes"') == (2, "metrics_per_rule: expected true or false, got a string")


def test_defaults():
    p = P('[defaults]\nconnect = "reject"\n')
    assert p.defaults == {Exit.CONNECT: Action.REJECT, Exit.LISTEN: Action.ALLOW, Exit.ACCEPT: Action.ALLOW}
    assert P('defaults = { accept = "reject" }').defaults[Exit.ACCEPT] is Action.REJECT
    assert P('defaults.listen = "reject"').defaults[Exit.LISTEN] is Action.REJECT


def test_defaults_errors():
    errs = errors('''
        [defaults]
        conect = "allow"
        listen = "deny"
    ''')
    assert errs == [
        (3, 'defaults: unknown exit point "conect" (did you mean "connect"?) (connect, listen, accept)'),
        (4, 'defaults.listen: "deny" is not one of allow, reject'),
    ]
    assert one('defaults = "allow"') == (1, "defaults: expected a table ([defaults]), got a string")
    assert one('mode = "audit"\ndefaults.accept = "deny"')[0] == 2


# --------------------------------------------------------------------------- [lists]


def test_list_reference_and_negation():
    p = P('''
        [lists]
        nets = ["10.0.0.0/8", "fd00::/8"]
        ports = [25, "465", "1000-2000"]

        [[rule]]
        exit = ["connect"]
        remote = "!@nets"
        remote_port = ["@ports", 80]
        action = "reject"
    ''')
    (r,) = p.rules
    assert r.remote == Match((net("10.0.0.0/8"), net("fd00::/8")), negated=True)
    assert r.remote_port == Match(((25, 25), (465, 465), (1000, 2000), (80, 80)))


def test_list_single_value():
    p = P('[lists]\nadmins = "root"\n' + rule('user = "@admins"\n'))
    assert p.rules[0].user == Match((0,))


def test_unknown_list():
    text = '[lists]\nmgmt = ["10.0.0.0/8"]\n' + rule('remote = ["@mgnt"]\n')
    assert one(text) == (6, 'rule "rule-1": remote: unknown list "@mgnt" (did you mean "mgmt"?)')


def test_empty_list():
    text = "[lists]\nnone = []\n" + rule('remote = "@none"\n')
    assert one(text) == (6, 'rule "rule-1": remote: list "@none" is empty')


def test_port_list_used_as_address():
    text = '[lists]\nmail = ["25", 465]\n' + rule("remote = [\n  \"@mail\",\n]\n")
    errs = errors(text)
    assert errs == [
        (6, 'rule "rule-1": remote: @mail (line 2): "25" is not an IP address or network'
            " (a port? those go in *_port fields)"),
        (6, 'rule "rule-1": remote: @mail (line 2): expected an address or network as a string,'
            " got the integer 465 (ports go in local_port / remote_port)"),
    ]


def test_address_list_used_as_port():
    text = '[lists]\nmgmt = ["10.0.0.0/8"]\n' + rule('remote_port = "@mgmt"\n')
    assert one(text) == (6, 'rule "rule-1": remote_port: @mgmt (line 2): "10.0.0.0/8" is not a port or range (N or N-M)')


def test_list_errors():
    errs = errors('''
        [lists]
        a = ["!10.0.0.0/8"]
        b = ["@a"]
        c = [true]
        d = [[1]]
    ''')
    assert errs == [
        (3, 'lists.a: "!10.0.0.0/8": values in a list cannot be negated; negate where the list is used ("!@a")'),
        (4, 'lists.b: "@a": a list cannot refer to another list'),
        (5, "lists.c: values must be strings or integers, got a boolean"),
        (6, "lists.d: values must be strings or integers, got an array"),
    ]
    assert one('lists = ["x"]') == (1, "lists: expected a table ([lists]), got an array")


def test_bad_list_is_reported_once_not_again_at_use():
    text = '[lists]\nb = [true]\n' + rule('user = "@b"\n')
    assert errors(text) == [(2, "lists.b: values must be strings or integers, got a boolean")]


# --------------------------------------------------------------------------- [[rule]] structure


def test_rule_defaults_and_names():
    p = P(rule("") + "\n" + rule("", exit="listen", action="allow").replace("[[rule]]", '[[rule]]\nname = "two"'))
    assert [r.name for r in p.rules] == ["rule-1", "two"]
    assert [r.line for r in p.rules] == [1, 5]
    assert p.rules[1].exits == frozenset({Exit.LISTEN}) and p.rules[1].action is Action.ALLOW


def test_rule_exits_list_and_single():
    p = P('[[rule]]\nexit = ["connect", "accept"]\naction = "allow"\n')
    assert p.rules[0].exits == frozenset({Exit.CONNECT, Exit.ACCEPT})


def test_duplicate_rule_names():
    text = '[[rule]]\nname = "a"\nexit = "connect"\naction = "allow"\n\n' \
           '[[rule]]\nexit = "connect"\naction = "allow"\nname = "a"\n'
    assert one(text) == (9, 'rule "a": duplicate rule name "a" (first used at line 2)')


def test_explicit_name_clashing_with_a_default_name():
    text = rule("") + '[[rule]]\nname = "rule-1"\nexit = "connect"\naction = "allow"\n'
    assert one(text) == (5, 'rule "rule-1": duplicate rule name "rule-1" (first used at line 1)')


def test_rule_name_errors():
    assert one(rule("name = 3\n")) == (4, 'rule "rule-1": name: expected a string, got an integer')
    assert one(rule('name = " "\n')) == (4, 'rule "rule-1": name is empty')
    assert one(rule('name = "a\\tb"\n')) == (4, 'rule "rule-1": name contains control or unprintable characters')
    assert one(rule('name = "a\\u009bb"\n'))[1] == 'rule "rule-1": name contains control or unprintable characters'
    assert one(rule(f'name = "{"x" * 200}"\n'))[1] == 'rule "rule-1": name longer than 128 characters'


def test_missing_exit_and_action_point_at_header():
    errs = errors('mode = "audit"\n\n[[rule]]\nname = "x"\n')
    assert errs == [
        (3, 'rule "x": missing "exit" (connect, listen and/or accept)'),
        (3, 'rule "x": missing "action" (allow or reject)'),
    ]


def test_exit_errors():
    assert one('[[rule]]\naction = "allow"\nexit = "lsten"\n') == (
        3, 'rule "rule-1": exit: unknown exit point "lsten" (did you mean "listen"?) (connect, listen, accept)')
    assert one('[[rule]]\naction = "allow"\nexit = []\n') == (
        3, 'rule "rule-1": exit: empty list (connect, listen and/or accept)')
    assert one('[[rule]]\naction = "allow"\nexit = [1]\n') == (
        3, 'rule "rule-1": exit: expected connect, listen or accept, got an integer')


def test_action_and_mode():
    p = P(rule('mode = "audit"\n', action="allow"))
    assert p.rules[0].action is Action.ALLOW and p.rules[0].mode is Mode.AUDIT
    assert one(rule("", action="deny")) == (3, 'rule "rule-1": action: "deny" is not one of allow, reject')
    assert one(rule('mode = "enforcing"\n')) == (
        4, 'rule "rule-1": mode: "enforcing" is not one of enforce, audit (did you mean "enforce"?)')


def test_unknown_rule_key():
    assert one(rule('\nremote_prot = "25"\n')) == (5, 'rule "rule-1": unknown key "remote_prot" (did you mean "remote_port"?)')


def test_rule_as_plain_table():
    assert one('mode = "audit"\n[rule]\nexit = "connect"\n') == (
        2, "rule: write each rule as [[rule]] (an array of tables), not [rule]")


def test_rule_as_inline_array():
    text = 'mode = "audit"\nrule = [{exit = "connect", action = "allow"}, {exit = "x", action = "allow"}]\n'
    line, msg = one(text)
    assert line == 2 and 'exit point "x"' in msg
    assert len(P('rule = [{exit = "connect", action = "allow"}]').rules) == 1


def test_rule_not_a_table():
    assert one("rule = [1]") == (1, 'rule "rule-1": expected a table, got an integer')
    assert one('rule = "x"') == (1, "rule: expected [[rule]] tables, got a string")


def test_too_many_rules(monkeypatch):
    monkeypatch.setattr(parse_mod, "MAX_RULES", 3)
    text = "".join(rule("", action="allow") for _ in range(5))
    assert one(text) == (10, "too many rules: 5 (at most 3)")  # the 4th header


def test_max_rules_is_accepted():
    text = "".join(f'[[rule]]\nexit="connect"\naction="allow"\nremote_port={i % 65536}\n' for i in range(MAX_RULES))
    assert len(parse_policy(text).rules) == MAX_RULES


def test_field_on_wrong_exit():
    assert one(rule('local = "10.0.0.0/8"\n')) == (
        4, 'rule "rule-1": local does not apply to connect (a connect rule can test: '
           "protocol, user, group, program, remote, remote_port)")
    assert one(rule("remote_port = 25\n", exit="listen")) == (
        4, 'rule "rule-1": remote_port does not apply to listen (a listen rule can test: '
           "protocol, user, group, program, local, local_port)")
    line, msg = one('[[rule]]\nexit = ["connect", "listen"]\naction = "allow"\nremote = "::1"\n')
    assert line == 4 and msg.startswith('rule "rule-1": remote does not apply to listen')


def test_accept_takes_every_field():
    p = P(rule('''
        user = "root"
        group = "root"
        program = "/bin/sh"
        local = "0.0.0.0"
        remote = "10.0.0.0/8"
        local_port = 22
        remote_port = "1024-65535"
    ''', exit="accept"))
    r = p.rules[0]
    assert r.local == Match((net("0.0.0.0/32"),)) and r.remote_port == Match(((1024, 65535),))


def test_multi_line_array_error_points_at_key_line():
    text = rule('''
        user = [
          "root",
          "no-such-user-zz",
        ]
    ''')
    line, msg = one(text)
    assert line == 5 and 'no such user "no-such-user-zz"' in msg


def test_headers_and_keys_inside_multiline_strings_are_ignored():
    text = '[lists]\ndoc = """\n[[rule]]\nuser = "x"\n"""\n' + rule('\nuser = "no-such-user-zz"\n')
    # the real [[rule]] is on line 6, its user on line 10
    assert one(text)[0] == 10
    text = "[lists]\ndoc = '''\n[[rule]]\n'''\n" + rule('user = "no-such-user-zz"\n')
    assert one(text)[0] == 8


# --------------------------------------------------------------------------- users and groups


def test_users():
    r = P(rule('user = ["root", 33, "65534", "www-data"]\n')).rules[0]
    assert r.user == Match((0, 33, 65534))


def test_user_errors():
    assert one(rule('user = "wwwdata"\n')) == (4, 'rule "rule-1": user: no such user "wwwdata" on this host (did you mean "www-data"?)')
    assert one(rule("user = -1\n")) == (4, 'rule "rule-1": user: user id -1 out of range (0-4294967294)')
    assert one(rule("user = 4294967295\n"))[1] == 'rule "rule-1": user: user id 4294967295 out of range (0-4294967294)'
    assert one(rule("user = true\n")) == (4, 'rule "rule-1": user: expected a user name or number, got a boolean')
    assert one(rule('user = ""\n')) == (4, 'rule "rule-1": user: empty user name')
    assert one(rule("user = []\n")) == (4, 'rule "rule-1": user: empty list (leave the field out to match anything)')
    assert one(rule("user = [[0]]\n")) == (4, 'rule "rule-1": user: nested arrays are not allowed')


def test_groups():
    r = P(rule('group = ["adm", 0, "!nogroup"]\n'.replace(', "!nogroup"', ""))).rules[0]
    assert r.group == Match((4, 0))
    assert P(rule('group = "!adm"\n')).rules[0].group == Match((4,), negated=True)
    assert one(rule('group = "admn"\n')) == (4, 'rule "rule-1": group: no such group "admn" on this host (did you mean "adm"?)')


def test_negation_and_mixing():
    assert P(rule('user = ["!root", "!33"]\n')).rules[0].user == Match((0, 33), negated=True)
    assert P(rule('user = " ! root"\n')).rules[0].user == Match((0,), negated=True)
    assert one(rule('user = ["!root", "daemon"]\n')) == (
        4, 'rule "rule-1": user: mixes negated ("!root") and plain ("daemon") values; '
           "a field matches when any value matches, or, negated, when none does")
    text = '[lists]\nm = ["10.0.0.0/8"]\n' + rule('remote = ["!@m", "@m"]\n')
    assert one(text)[1].startswith('rule "rule-1": remote: mixes negated')


def test_duplicate_values_are_merged():
    assert P(rule('user = ["root", 0, "0"]\n')).rules[0].user == Match((0,))


# --------------------------------------------------------------------------- program


def test_program(tmp_path):
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    assert P(rule(f'program = "{exe}"\n')).rules[0].program == Match((str(exe),))
    assert one(rule('program = "/x/does/not/exist"\n')) == (4, 'rule "rule-1": program: /x/does/not/exist does not exist')
    assert one(rule('program = "nginx"\n')) == (4, 'rule "rule-1": program: "nginx" is not an absolute path')
    assert one(rule(f'program = "{tmp_path}"\n')) == (4, f'rule "rule-1": program: {tmp_path} is not a regular file')
    assert one(rule("program = 1\n")) == (4, 'rule "rule-1": program: expected an absolute executable path, got an integer 1')
    assert one(rule('program = "/bin/\\u0000x"\n'))[1].startswith('rule "rule-1": program: "/bin/\\x00x": cannot stat')


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("value,expected", [
    ("10.0.0.1", "10.0.0.1/32"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("::1", "::1/128"),
    ("::ffff:10.1.2.3", "10.1.2.3/32"),                # v4-mapped → IPv4
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
    ("::fffe:0:0/95", "::fffe:0:0/95"),              # wider than the mapped range: stays IPv6
    ("::/0", "::/0"),
])
def test_addresses(value, expected):
    assert P(rule(f'remote = "{value}"\n')).rules[0].remote == Match((net(expected),))


def test_wide_v6_network_stays_v6():
    assert P(rule('remote = "::/0"\n')).rules[0].remote == Match((net("::/0"),))


def test_address_errors():
    assert one(rule('remote = "10.0.0.1/8"\n')) == (
        4, 'rule "rule-1": remote: "10.0.0.1/8" has host bits set; write the network "10.0.0.0/8" '
           'or the single host "10.0.0.1/32"')
    assert one(rule('remote = "fd00::1/8"\n'))[1].endswith('write the network "fd00::/8" or the single host "fd00::1/128"')
    assert one(rule('remote = "10.0.0.300"\n')) == (4, 'rule "rule-1": remote: "10.0.0.300" is not an IP address or network')
    assert one(rule('remote = "example.com"\n'))[1] == 'rule "rule-1": remote: "example.com" is not an IP address or network'
    assert one(rule("remote = 167772161\n"))[1].startswith('rule "rule-1": remote: expected an address or network as a string')
    assert one(rule('remote = "fe80::1%eth0"\n'))[1] == 'rule "rule-1": remote: "fe80::1%eth0": scoped addresses (%zone) are not supported'


# --------------------------------------------------------------------------- ports


def test_ports():
    r = P(rule('remote_port = [0, 22, "80", " 8000 - 8080 ", "65535"]\n')).rules[0]
    assert r.remote_port == Match(((0, 0), (22, 22), (80, 80), (8000, 8080), (65535, 65535)))
    assert P(rule('remote_port = "!1-1023"\n')).rules[0].remote_port == Match(((1, 1023),), negated=True)


def test_port_errors():
    assert one(rule('remote_port = "30-20"\n')) == (4, 'rule "rule-1": remote_port: port range "30-20" is reversed (write "20-30")')
    assert one(rule("remote_port = 65536\n")) == (4, 'rule "rule-1": remote_port: port 65536 out of range (0-65535)')
    assert one(rule('remote_port = "1-70000"\n'))[1] == 'rule "rule-1": remote_port: port 70000 out of range (0-65535)'
    assert one(rule('remote_port = "http"\n')) == (4, 'rule "rule-1": remote_port: "http" is not a port or range (N or N-M)')
    assert one(rule("remote_port = -1\n"))[1] == 'rule "rule-1": remote_port: port -1 out of range (0-65535)'
    assert one(rule("remote_port = 2.5\n"))[1] == 'rule "rule-1": remote_port: expected a port or range (N or N-M), got a float'
    assert one(rule('remote_port = "\u0663"\n'))[1].endswith("is not a port or range (N or N-M)")  # Arabic-Indic 3


def test_protocol_field():
    from sockgate.policy.model import Protocol
    rule = 'exit = ["connect"]\naction = "reject"\n'
    r = P(f'[[rule]]\n{rule}protocol = "tcp"').rules[0]
    assert r.protocol.values == (Protocol.TCP, Protocol.MPTCP) and not r.protocol.negated  # tcp covers MPTCP
    r = P(f'[[rule]]\n{rule}protocol = ["!udp", "!sctp"]').rules[0]
    assert r.protocol.values == (Protocol.UDP, Protocol.SCTP) and r.protocol.negated
    assert P(f'[[rule]]\n{rule}protocol = ["mptcp"]').rules[0].protocol.values == (Protocol.MPTCP,)
    line, msg = one(f'[[rule]]\n{rule}protocol = "udq"')
    assert line == 4 and 'protocol: "udq" is not one of tcp, udp, mptcp, sctp (did you mean "udp"?)' in msg
    assert "expected one of tcp" in one(f'[[rule]]\n{rule}protocol = 6')[1]


def test_a_policy_that_does_not_fit_the_kernel_tables_is_refused_at_compile(monkeypatch):
    """`policy check` compiles: tables larger than the kernel maps fail there, not at load."""
    from sockgate.errors import PolicyError
    from sockgate.policy import compile as comp

    text = "".join(f'[[rule]]\nexit = "connect"\nremote = ["10.{i}.0.0/16", "10.{i}.1.0/24"]\naction = "reject"\n'
                   for i in range(6))
    comp.compile_policy(P(text))  # fits as shipped
    monkeypatch.setattr(comp, "MAX_BITMAPS", 8)
    with pytest.raises(PolicyError, match=r"does not fit the kernel tables: .*address prefixes: 14 \(the kernel holds 8\)"):
        comp.compile_policy(P(text))


def test_fold_rejections_is_a_bounded_whole_number():
    from sockgate.errors import PolicyErrors
    from sockgate.policy.parse import parse_policy

    assert parse_policy("", "p.toml").fold_rejections == 200
    assert parse_policy("fold_rejections = 0\n", "p.toml").fold_rejections == 0
    for bad in ('"200"', "-1", "2.5", "true", "1000001"):
        try:
            parse_policy(f"mode = \"enforce\"\nfold_rejections = {bad}\n", "p.toml")
        except PolicyErrors as e:
            assert "p.toml:2:" in str(e) and "fold_rejections" in str(e)
        else:
            raise AssertionError(f"fold_rejections = {bad} was accepted")
