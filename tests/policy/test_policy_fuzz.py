"""Fuzzing the parser: whatever the input, the result is a Policy or a PolicyErrors whose
every error has the file name and a line ≥ 1 — never another exception."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockgate.errors import PolicyErrors
from sockgate.policy.model import MATCH_FIELDS, Policy
from sockgate.policy.parse import RULE_KEYS, parse_policy

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "policy.toml").read_text()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: str | bytes) -> Policy | None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    n_lines = text.count("\n") + 1
    try:
        policy = parse_policy(data, "fuzz.toml")
    except PolicyErrors as errs:
        assert errs.errors, "PolicyErrors without errors"
        for e in errs.errors:
            assert e.file == "fuzz.toml"
            assert isinstance(e.line, int) and 1 <= e.line <= n_lines, (e.line, n_lines, e.message)
            assert e.message and str(e).startswith(f"fuzz.toml:{e.line}: ")
            assert "internal error" not in e.message, e.message  # the catch-all must stay unused
        return None
    assert isinstance(policy, Policy)
    assert [r.index for r in policy.rules] == list(range(len(policy.rules)))
    assert len({r.name for r in policy.rules}) == len(policy.rules)
    for r in policy.rules:
        assert 1 <= r.line <= n_lines
    return policy


# --------------------------------------------------------------------------- raw input


@FUZZ
@given(st.text())
def test_arbitrary_text(text):
    check(text)


@FUZZ
@given(st.binary())
def test_arbitrary_bytes(data):
    check(data)


@FUZZ
@given(st.lists(st.sampled_from([
    "[[rule]]", "[rule]", "[defaults]", "[lists]", "[[lists]]", 'exit = "connect"', "exit = [",
    '"listen",', "]", 'action = "reject"', 'user = "!root"', 'remote = "@m"', "m = [\"10.0.0.0/8\"]",
    'local_port = "1-1023"', "connect = 'allow'", '"""', "'''", "# c", "", "x = {a = [1, {b = 2}]}",
    "rule = [{exit='accept', action='allow'}]", 'mode = "audit"', "errno = 13", "[rule.x]",
    'name = "a"', "remote_port = 99999", 'program = "/bin/sh"', "defaults.connect = 'reject'",
]), max_size=40))
def test_token_soup(lines):
    check("\n".join(lines))


# --------------------------------------------------------------------------- TOML-ish structures


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    if k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k):
        return k
    return toml_str(k)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


PLAUSIBLE = st.sampled_from([
    "connect", "listen", "accept", "allow", "reject", "enforce", "audit", "root", "www-data", "nobody",
    "daemon", "adm", "!root", "!adm", "0", "33", "65534", "@m", "!@m", "@p", "@nope", "10.0.0.0/8",
    "10.0.0.1/8", "::1", "fd00::/8", "::ffff:10.0.0.1", "::ffff:10.0.0.0/104", "0.0.0.0/0", "22",
    "1-1023", "30-20", "65536", "/bin/sh", "/usr/bin/perl", "/nope", "relative", "*NETFAIL",
    "*NETSCK", "*NETCMN", "EPERM", "EACCES", "", "!", "@", "!@", "fe80::1%eth0", "١٢٣",
])
SCALAR = st.one_of(
    PLAUSIBLE,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 22, 33, 65535, 65536, -1, 2**32 - 1, 2**63 - 1]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12,
)
RULE = st.dictionaries(
    st.one_of(st.sampled_from(RULE_KEYS), st.text(max_size=10)),
    st.one_of(VALUE, st.lists(PLAUSIBLE, max_size=4)),
    max_size=8,
)
TOP = st.fixed_dictionaries(
    {},
    optional={
        "mode": VALUE,
        "audit_levels": VALUE,
        "errno": VALUE,
        "defaults": st.dictionaries(st.one_of(st.sampled_from(["connect", "listen", "accept"]), st.text(max_size=8)),
                                    VALUE, max_size=4),
        "lists": st.dictionaries(st.sampled_from(["m", "p", "x", "users"]), st.one_of(VALUE, st.lists(PLAUSIBLE)),
                                 max_size=4),
        "extra": VALUE,
    },
)


def serialize(top: dict, rules: list[dict], rules_inline: bool) -> str:
    lines = []
    tables = {}
    for k, v in top.items():
        if isinstance(v, dict) and k in ("defaults", "lists"):
            tables[k] = v
        else:
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    if rules_inline and rules:
        lines.append(f"rule = {toml_value(rules)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
    if not rules_inline:
        for r in rules:
            lines.append("\n[[rule]]")
            for k, v in r.items():
                if isinstance(v, list) and len(v) > 1:  # multi-line arrays too
                    lines.append(f"{toml_key(k)} = [")
                    lines.extend(f"  {toml_value(x)}," for x in v)
                    lines.append("]")
                else:
                    lines.append(f"{toml_key(k)} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(TOP, st.lists(RULE, max_size=6), st.booleans())
def test_rule_like_structures(top, rules, inline):
    check(serialize(top, rules, inline))


WELL_TYPED_RULE = st.fixed_dictionaries(
    {"exit": st.sampled_from(["connect", "listen", "accept", ["connect", "accept"]]),
     "action": st.sampled_from(["allow", "reject"])},
    optional={f: st.one_of(PLAUSIBLE, st.lists(PLAUSIBLE, min_size=1, max_size=3),
                           st.integers(min_value=-5, max_value=70000))
              for f in MATCH_FIELDS} | {"mode": st.sampled_from(["audit", "enforce"]),
                                        "name": st.text(min_size=1, max_size=10)},
)


@FUZZ
@given(st.lists(WELL_TYPED_RULE, max_size=5))
def test_well_typed_rules(rules):
    """Mostly-right rules: every error must point at a line inside the rule that caused it."""
    text = serialize({"lists": {"m": ["10.0.0.0/8"], "p": ["22", 80]}}, rules, False)
    policy = check(text)
    if policy is not None:
        assert len(policy.rules) == len(rules)


# --------------------------------------------------------------------------- mutations of the example


MUTATION = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 200)),
    st.tuples(st.just("duplicate"), st.integers(0, 200)),
    st.tuples(st.just("swap"), st.integers(0, 200), st.integers(0, 200)),
    st.tuples(st.just("insert"), st.integers(0, 10000), st.text(max_size=5)),
    st.tuples(st.just("cut"), st.integers(0, 10000), st.integers(0, 50)),
    st.tuples(st.just("replace"), st.sampled_from(['"', "[", "]", "=", ",", "!", "@", "-", "/", "#", "\n", "1"]),
              st.sampled_from(["", '"', "[", "]]", "x", "!", "@@", " = ", "\x00", "\ufeff", "999999"]),
              st.integers(0, 5)),
)


def mutate(text: str, m) -> str:
    lines = text.split("\n")
    kind = m[0]
    if kind == "delete":
        del lines[m[1] % len(lines)]
        return "\n".join(lines)
    if kind == "duplicate":
        i = m[1] % len(lines)
        lines.insert(i, lines[i])
        return "\n".join(lines)
    if kind == "swap":
        i, j = m[1] % len(lines), m[2] % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == "insert":
        i = m[1] % (len(text) + 1)
        return text[:i] + m[2] + text[i:]
    if kind == "cut":
        i = m[1] % (len(text) + 1)
        return text[:i] + text[i + m[2]:]
    _, old, new, nth = m
    idx = -1
    for _ in range(nth + 1):
        idx = text.find(old, idx + 1)
        if idx < 0:
            return text
    return text[:idx] + new + text[idx + len(old):]


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_example(mutations):
    text = EXAMPLE
    for m in mutations:
        text = mutate(text, m)
    check(text)


def test_example_is_valid_before_mutation():
    assert check(EXAMPLE) is not None
