"""Rules files: valid files load; bad ones give FILE:LINE errors, all of them, and never
a traceback (hypothesis fuzz)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import RulesError, RulesErrors
from sockgate.monitor.parse import load_rules, parse_rules

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "alerts.toml"

GOOD = """\
[monitor]
channels = ["log"]

[channel.log]
type = "syslog"
url = "tcp://127.0.0.1:514"

[[alert]]
name = "a"
match = { type = "C", outcome = "rejected" }
"""


def errors_of(text: str) -> list[RulesError]:
    with pytest.raises(RulesErrors) as ei:
        parse_rules(text, "alerts.toml")
    return ei.value.errors


def test_good_file_loads():
    rs = parse_rules(GOOD, "alerts.toml")
    assert [r.name for r in rs.rules] == ["a"] and rs.rules[0].line == 8
    assert rs.channels["log"].type == "syslog" and rs.start == "end"


def test_example_file_is_valid():
    rs = load_rules(str(EXAMPLES))
    kinds = {r.kind for r in rs.rules}
    assert kinds == {"every", "threshold", "first_seen"} and len(rs.rules) >= 5


def test_every_error_reported_with_its_line():
    text = """\
[monitor]
channels = ["log"]
bogus = 1

[channel.log]
type = "syslog"
url = "http://nope"

[[alert]]
name = "one"
kind = "threshold"
count = 0
window = "5 parsecs"
match = { type = "Q", remote = "10.0.0.0/33" }

[[alert]]
name = "two"
message = "{nosuch} {user"
channels = ["missing"]
group_by = ["remote_addr"]

[[alert]]
name = "one"
kind = "first_seen"
match = { port = 22, user = "@nolist" }
"""
    errs = errors_of(text)
    got = [(e.line, e.message) for e in errs]
    lines = {line for line, _ in got}
    assert all(e.file == "alerts.toml" for e in errs)
    assert all(str(e).startswith(f"alerts.toml:{e.line}: ") for e in errs)

    def at(line: int, *words: str) -> bool:
        return any(ln == line and all(w in m for w in words) for ln, m in got)

    assert at(3, "unknown key 'bogus'")
    assert at(7, "bad URL")
    assert at(12, "count must be an integer")
    assert at(13, "bad duration")
    assert at(14, "type", "'Q'")
    assert at(14, "bad address or CIDR")
    assert at(18, "unknown field {nosuch}")
    assert at(18, "unmatched '{'")
    assert at(19, "unknown channel 'missing'")
    assert at(20, "'group_by' applies to kind = \"threshold\" only")
    assert at(23, "duplicate name")
    assert any("key is required" in m for _, m in got)
    assert at(25, "unknown field 'port'")
    assert at(25, 'unknown list "@nolist"')
    assert len(lines) >= 11


@pytest.mark.parametrize("text,line,words", [
    ("[[alert]\nname = 1\n", 1, "TOML syntax"),
    ("x = 1\n", 1, "unknown section 'x'"),
    ("[[alerts]]\nname = 'a'\n", 1, "did you mean [[alert]]"),
    (GOOD + "[[alert]]\nname = 'b'\nmatch = { user = ['a', 'b'], outcome = [] }\n", 13, "empty list"),
    (GOOD + "[[alert]]\nname = 'b'\nkind = 'threshold'\ncount = 2\n", 11, "window is required"),
    (GOOD + "[[alert]]\nname = 'b'\nseverity = 'loud'\n", 13, "severity"),
    (GOOD + "[[alert]]\nname = 'b'\nmatch.remote_port = '70000'\n", 13, "out of range"),
    (GOOD + "[[alert]]\nname = 'b'\n[alert.match]\nlocal_port = '9-1'\n", 14, "is reversed"),
    (GOOD.replace('channels = ["log"]', ''), 8, "no channels"),
    ('[channel.x]\ntype = "email"\nhost = "h"\n[[alert]]\nname="a"\nchannels=["x"]\n', 1, "'from' is required"),
    ('[channel.x]\ntype = "pager"\n', 2, "type must be one of"),
    ("", 1, "no [[alert]] rules"),
])
def test_single_errors(text, line, words):
    errs = errors_of(text)
    assert any(e.line == line and words in e.message for e in errs), [str(e) for e in errs]


def test_disabled_rule_is_checked_but_not_loaded():
    rs = parse_rules(GOOD + "[[alert]]\nname = 'b'\nenabled = false\n", "x")
    assert [r.name for r in rs.rules] == ["a"]
    errs = errors_of(GOOD + "[[alert]]\nname = 'b'\nenabled = false\nkind = 'nope'\n")
    assert errs[0].line == 14


def test_load_rules_file_errors(tmp_path):
    with pytest.raises(RulesErrors, match="cannot read: No such file"):
        load_rules(str(tmp_path / "missing.toml"))
    with pytest.raises(RulesErrors, match="cannot read: Is a directory"):
        load_rules(str(tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[monitor]\nx = "\xff"\n')
    with pytest.raises(RulesErrors) as ei:
        load_rules(str(bad))
    assert str(ei.value) == f"{bad}:2: not valid UTF-8 (byte offset 15)"


# --------------------------------------------------------------------------- fuzz

KEYS = ["name", "kind", "severity", "message", "channels", "suppress", "dedup_by", "match", "count",
        "window", "group_by", "key", "forget", "enabled", "type", "outcome", "user", "remote", "remote_port",
        "extra.x", "bogus"]
scalars = st.one_of(st.integers(-3, 70000), st.booleans(), st.text(max_size=12), st.floats(),
                    st.sampled_from([10**20, -(10**20), "99999999999999999999d", "1e300s"]),
                    st.sampled_from(["every", "threshold", "first_seen", "1m", "10.0.0.0/8", "!x", "@svc",
                                     "{user}", "{", "C", "rejected", "log", "22-25", "warning"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(KEYS), st.one_of(scalars, st.lists(scalars, max_size=2)),
                                   max_size=3))


def toml_value(v) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + " }"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=8), max_size=4))
def test_fuzz_structured_rules_never_crash(alerts):
    text = GOOD + "".join("\n[[alert]]\n" + "".join(f'"{k}" = {toml_value(v)}\n' for k, v in a.items())
                          for a in alerts)
    try:
        parse_rules(text, "f.toml")
    except RulesErrors as e:
        assert e.errors and all(str(x).startswith("f.toml") for x in e.errors)
        assert all(x.line is None or 1 <= x.line <= text.count("\n") + 1 for x in e.errors)
        assert not any("internal error" in x.message for x in e.errors), [str(x) for x in e.errors]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]{}=",.\n #!@*abcdefkmnrstuy0123456789-_\'')), max_size=200))
def test_fuzz_text_never_crashes(text):
    try:
        parse_rules(text, "f.toml")
    except RulesErrors as e:
        assert e.errors


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.text(max_size=5))
def test_fuzz_mutations_of_a_good_file(pos, junk):
    try:
        parse_rules(GOOD[:pos] + junk + GOOD[pos:], "f.toml")
    except RulesErrors as e:
        assert e.errors


CHANNEL_KEYS = ["type", "url", "facility", "framing", "host", "port", "tls", "from", "to", "username",
                "password_file", "subject", "format", "headers", "argv", "env", "timeout", "retry_initial",
                "verify", "client_key", "ca_file", "bogus"]
channel_values = st.one_of(scalars, st.lists(scalars, max_size=3),
                           st.sampled_from(["syslog", "email", "webhook", "command", "udp://h", "tls://h:x",
                                            "http://[::1", "https://h/x", "slack", "{alert} {nope}"]),
                           st.dictionaries(st.text(max_size=3), scalars, max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(CHANNEL_KEYS), channel_values, max_size=7))
def test_fuzz_channels_never_crash(spec):
    text = "[channel.c]\n" + "".join(f'"{k}" = {toml_value(v)}\n' for k, v in spec.items()) + \
        '[[alert]]\nname = "a"\nchannels = ["c"]\n'
    try:
        rs = parse_rules(text, "f.toml")
    except RulesErrors as e:
        assert e.errors and all(x.line is None or x.line >= 1 for x in e.errors)
        assert not any("internal error" in x.message for x in e.errors), [str(x) for x in e.errors]
        return
    from sockgate.monitor.monitor import build_channels
    try:
        for ch in build_channels(rs).values():   # a valid file builds its channels, or says why not
            ch.close()
    except RulesErrors as e:
        assert all(x.line == 1 for x in e.errors)


def test_lists_and_negation_follow_the_policy_rules():
    """One loader (sockgate.config) for both files: a negated value inside a list is an error,
    "!@name" negates the reference; plain and negated values may still be mixed in a rule."""
    head = GOOD.replace("[[alert]]", '[lists]\nok = ["10.0.0.0/8"]\nbad = ["!10.0.0.0/8"]\n\n[[alert]]', 1)
    errs = errors_of(head)
    assert any("values in a list cannot be negated" in e.message for e in errs), [str(e) for e in errs]
    rs = parse_rules(head.replace('bad = ["!10.0.0.0/8"]\n', "") +
                     "[[alert]]\nname = 'b'\nmatch = { remote = ['!@ok', '192.0.2.0/24'] }\n", "x")
    assert [r.name for r in rs.rules] == ["a", "b"]
