"""Policy file (TOML) → typed model (policy.model), with every error as FILE:LINE.

The parser reports *all* problems of a file at once (`sockgate policy check` lists them)
by raising one PolicyErrors. It never lets another exception out, whatever the bytes.
See docs/policy.md for the language this implements.
"""

from __future__ import annotations

import errno as errno_mod
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import stat
from importlib import resources
from typing import Any, Callable

from sockgate import config
from sockgate.config import Collector as _Ctx
from sockgate.config import Lists as _Lists
from sockgate.config import as_list as _as_list
from sockgate.config import suggest as _suggest
from sockgate.errors import PolicyError, PolicyErrors
from sockgate.policy.model import (
    AUDIT_LEVELS,
    FIELDS_BY_EXIT,
    MATCH_FIELDS,
    MAX_RULES,
    Action,
    Exit,
    Match,
    Mode,
    Network,
    PROTOCOL_NAMES,
    Policy,
    Protocol,
    Rule,
)
from sockgate.record import POLICY_FILE, RANGE, parse_range, unmap_network
from sockgate.record import kind_of as _kind
from sockgate.record import quote as _q

__all__ = [
    "parse_policy",
    "load_policy",
    "load_default_policy",
    "load_configured_policy",
    "DEFAULT_POLICY_PATH",
    "TOP_KEYS",
    "RULE_KEYS",
]

DEFAULT_POLICY_PATH = POLICY_FILE

TOP_KEYS = ("mode", "audit_levels", "errno", "metrics_per_rule", "fold_rejections", "defaults", "lists", "rule")
RULE_KEYS = ("name", "exit", "action", "mode") + MATCH_FIELDS
EXIT_NAMES = tuple(e.label for e in Exit)
MAX_ID = 2**32 - 2          # (uid_t)-1 means "no change" to the kernel: not a real id
MAX_NAME_LEN = 128

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


# --------------------------------------------------------------------------- value parsers
# Each takes one (already un-negated, list-expanded) value and returns the typed value,
# or raises ValueError(message) describing the problem (without the field name).


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {_kind(value)} {_q(value)}".rstrip())
    return value


def _id_value(value: Any, kind: str) -> int:
    """user / group: a name resolved on this host, or a number."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a {kind} name or number, got {_kind(value)}")
    if isinstance(value, str):
        s = value.strip()
        if _DIGITS.fullmatch(s):
            value = int(s) if len(s) < 20 else MAX_ID + 1
        else:
            if not s:
                raise ValueError(f"empty {kind} name")
            try:
                if kind == "user":
                    return pwd.getpwnam(s).pw_uid
                return grp.getgrnam(s).gr_gid
            except (KeyError, ValueError, OverflowError):
                names = _host_names(kind)
                raise ValueError(f"no such {kind} {_q(s)} on this host{_suggest(s, names)}") from None
    if value < 0 or value > MAX_ID:
        raise ValueError(f"{kind} id {_q(value)} out of range (0-{MAX_ID})")
    return value


_NAMES_CACHE: dict[str, list[str]] = {}


def _host_names(kind: str) -> list[str]:
    if kind not in _NAMES_CACHE:
        try:
            if kind == "user":
                _NAMES_CACHE[kind] = [p.pw_name for p in pwd.getpwall()]
            else:
                _NAMES_CACHE[kind] = [g.gr_name for g in grp.getgrall()]
        except Exception:  # noqa: BLE001 - suggestions are best effort
            _NAMES_CACHE[kind] = []
    return _NAMES_CACHE[kind]


def _program_value(value: Any) -> str:
    s = _check_str(value, "an absolute executable path")
    if not s.startswith("/"):
        raise ValueError(f"{_q(s)} is not an absolute path")
    try:
        st = os.stat(s)
    except FileNotFoundError:
        raise ValueError(f"{s} does not exist") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"{_q(s)}: cannot stat: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{s} is not a regular file")
    return s


def _network_value(value: Any) -> Network:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"expected an address or network as a string, got the integer {_q(value)}"
                   " (ports go in local_port / remote_port)")
    s = _check_str(value, "an IP address or network (CIDR)").strip()
    if "%" in s:
        raise ValueError(f"{_q(s)}: scoped addresses (%zone) are not supported")
    try:
        net = ipaddress.ip_network(s, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            loose = ipaddress.ip_network(s, strict=False)
            host = s.split("/")[0]
            full = 32 if loose.version == 4 else 128
            raise ValueError(
                f"{_q(s)} has host bits set; write the network {_q(str(loose))} "
                f"or the single host {_q(f'{host}/{full}')}"
            ) from None
        if RANGE.fullmatch(s):
            raise ValueError(f"{_q(s)} is not an IP address or network (a port? those go in *_port fields)")
        raise ValueError(f"{_q(s)} is not an IP address or network") from None
    return unmap_network(net)


def _protocol_value(value: Any) -> frozenset[Protocol]:
    if not isinstance(value, str):
        raise ValueError(f"expected one of {', '.join(PROTOCOL_NAMES)}, got {_kind(value)}")
    name = value.strip().lower()
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"{_q(value)} is not one of {', '.join(PROTOCOL_NAMES)}{_suggest(name, PROTOCOL_NAMES)}")
    return PROTOCOL_NAMES[name]


_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    "protocol": _protocol_value,
    "user": lambda v: _id_value(v, "user"),
    "group": lambda v: _id_value(v, "group"),
    "program": _program_value,
    "local": _network_value,
    "remote": _network_value,
    "local_port": parse_range,
    "remote_port": parse_range,
}


# --------------------------------------------------------------------------- the parser


def parse_policy(text: str | bytes, file: str = "<policy>") -> Policy:
    """Parse and validate a policy file's contents. Raises PolicyErrors listing every problem."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()
    return config.parse(text, file, PolicyError, PolicyErrors, lambda doc, ctx: _build(doc, ctx, file, digest),
                        "policy")


def _build(doc: dict, ctx: _Ctx, file: str, digest: str) -> Policy:
    loc = ctx.loc

    def top_line(key: str) -> int:
        return loc.find(key) or 1

    for key in doc:
        if key not in TOP_KEYS:
            ctx.err(top_line(key), f"unknown key {_q(key)}{_suggest(key, TOP_KEYS)}")

    # mode
    mode = Mode.ENFORCE
    if "mode" in doc:
        mode = _enum(doc["mode"], Mode, "mode", top_line("mode"), ctx) or Mode.ENFORCE

    # audit levels
    levels = frozenset({"*NETFAIL"})
    if "audit_levels" in doc:
        levels = _audit_levels(doc["audit_levels"], top_line("audit_levels"), ctx)

    # errno
    err_no = errno_mod.EPERM
    if "errno" in doc:
        err_no = _errno(doc["errno"], top_line("errno"), ctx)

    # per-rule hit counters in the daemon's metrics (rule names as labels: opt-in)
    per_rule = doc.get("metrics_per_rule", False)
    if not isinstance(per_rule, bool):
        ctx.err(top_line("metrics_per_rule"), f"metrics_per_rule: expected true or false, got {_kind(per_rule)}")
        per_rule = False

    # rejections per user and second journaled one by one; the rest counted in summaries
    fold = doc.get("fold_rejections", 200)
    if type(fold) is not int or not 0 <= fold <= 1_000_000:
        ctx.err(top_line("fold_rejections"), "fold_rejections: expected a whole number from 0 (never fold) to "
                f"1000000 rejections per user and second, got {_kind(fold) if type(fold) is not int else fold}")
        fold = 200

    # defaults
    defaults = {e: Action.ALLOW for e in Exit}
    if "defaults" in doc:
        d = doc["defaults"]
        dline = top_line("defaults")
        if not isinstance(d, dict):
            ctx.err(dline, f"defaults: expected a table ([defaults]), got {_kind(d)}")
        else:
            for key, value in d.items():
                kline = loc.find("defaults", key) or dline
                if key not in EXIT_NAMES:
                    ctx.err(kline, f"defaults: unknown exit point {_q(key)}{_suggest(key, EXIT_NAMES)}"
                            " (connect, listen, accept)")
                    continue
                action = _enum(value, Action, f"defaults.{key}", kline, ctx)
                if action is not None:
                    defaults[Exit.parse(key)] = action

    # lists
    lists = config.read_lists(doc.get("lists"), ctx)

    # rules
    rules: list[Rule] = []
    if "rule" in doc:
        raw_rules = doc["rule"]
        rline = loc.find("rule", 0) or top_line("rule")
        if isinstance(raw_rules, dict):
            ctx.err(rline, "rule: write each rule as [[rule]] (an array of tables), not [rule]")
        elif not isinstance(raw_rules, list):
            ctx.err(rline, f"rule: expected [[rule]] tables, got {_kind(raw_rules)}")
        else:
            if len(raw_rules) > MAX_RULES:
                ctx.err(loc.find("rule", MAX_RULES) or rline,
                        f"too many rules: {len(raw_rules)} (at most {MAX_RULES})")
            names: dict[str, int] = {}
            for i, raw in enumerate(raw_rules):
                rule = _rule(i, raw, lists, names, ctx)
                if rule is not None:
                    rules.append(rule)

    ctx.raise_if_any()
    return Policy(
        rules=tuple(rules),
        mode=mode,
        audit_levels=levels,
        defaults=defaults,
        errno=err_no,
        metrics_per_rule=per_rule,
        fold_rejections=fold,
        source=file,
        digest=digest,
    )


def _enum(value: Any, enum_cls, what: str, line: int, ctx: _Ctx):
    choices = [m.value for m in enum_cls]
    if not isinstance(value, str):
        ctx.err(line, f"{what}: expected one of {', '.join(choices)}, got {_kind(value)}")
        return None
    try:
        return enum_cls(value)
    except ValueError:
        ctx.err(line, f"{what}: {_q(value)} is not one of {', '.join(choices)}{_suggest(value, choices)}")
        return None


def _audit_levels(value: Any, line: int, ctx: _Ctx) -> frozenset[str]:
    out: set[str] = set()
    ok = True
    for v in _as_list(value):
        if not isinstance(v, str):
            ctx.err(line, f"audit_levels: expected strings like \"*NETFAIL\", got {_kind(v)}")
            ok = False
            continue
        s = v.strip().upper()
        if s and not s.startswith("*"):
            s = "*" + s
        if s not in AUDIT_LEVELS:
            ctx.err(line, f"audit_levels: unknown level {_q(v)}{_suggest(s, AUDIT_LEVELS)}"
                    f" (one of {', '.join(AUDIT_LEVELS)})")
            ok = False
            continue
        out.add(s)
    return frozenset(out) if ok else frozenset({"*NETFAIL"})


def _errno(value: Any, line: int, ctx: _Ctx) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        ctx.err(line, f"errno: expected a name like \"EPERM\" or a number, got {_kind(value)}")
        return errno_mod.EPERM
    if isinstance(value, str):
        s = value.strip()
        if _DIGITS.fullmatch(s) and len(s) < 10:
            value = int(s)
        else:
            code = getattr(errno_mod, s.upper(), None) if s.upper().startswith("E") else None
            if not isinstance(code, int):
                names = sorted(errno_mod.errorcode.values())
                ctx.err(line, f"errno: unknown errno name {_q(value)}{_suggest(s.upper(), names)}")
                return errno_mod.EPERM
            return code
    if not 1 <= value <= 4095:
        ctx.err(line, f"errno: {_q(value)} out of range (1-4095)")
        return errno_mod.EPERM
    return value


def _rule(i: int, raw: Any, lists: _Lists, names: dict[str, int], ctx: _Ctx) -> Rule | None:
    loc = ctx.loc
    header = loc.find("rule", i) or loc.find("rule") or 1
    label = f'rule "rule-{i + 1}"'

    def kline(key: str) -> int:
        return loc.find("rule", i, key) or header

    if not isinstance(raw, dict):
        ctx.err(header, f"{label}: expected a table, got {_kind(raw)}")
        return None
    n_before = len(ctx.errors)

    # name
    name = f"rule-{i + 1}"
    name_line = kline("name")
    if "name" in raw:
        v = raw["name"]
        if not isinstance(v, str):
            ctx.err(name_line, f"{label}: name: expected a string, got {_kind(v)}")
        elif not v.strip():
            ctx.err(name_line, f"{label}: name is empty")
        elif len(v) > MAX_NAME_LEN:
            ctx.err(name_line, f"{label}: name longer than {MAX_NAME_LEN} characters")
        elif not v.isprintable():
            ctx.err(name_line, f"{label}: name contains control or unprintable characters")
        else:
            name = v
            label = f'rule "{v}"'
    for key in raw:
        if key not in RULE_KEYS:
            ctx.err(kline(key), f"{label}: unknown key {_q(key)}{_suggest(key, RULE_KEYS)}")

    if name in names:
        ctx.err(name_line, f'{label}: duplicate rule name "{name}" (first used at line {names[name]})')
    else:
        names[name] = name_line

    # exit
    exits: set[Exit] = set()
    if "exit" not in raw:
        ctx.err(header, f"{label}: missing \"exit\" (connect, listen and/or accept)")
    else:
        values = _as_list(raw["exit"])
        if not values:
            ctx.err(kline("exit"), f"{label}: exit: empty list (connect, listen and/or accept)")
        for v in values:
            if not isinstance(v, str):
                ctx.err(kline("exit"), f"{label}: exit: expected connect, listen or accept, got {_kind(v)}")
            elif v not in EXIT_NAMES:
                ctx.err(kline("exit"), f"{label}: exit: unknown exit point {_q(v)}"
                        f"{_suggest(v, EXIT_NAMES)} (connect, listen, accept)")
            else:
                exits.add(Exit.parse(v))

    # action, mode
    action = None
    if "action" not in raw:
        ctx.err(header, f"{label}: missing \"action\" (allow or reject)")
    else:
        action = _enum(raw["action"], Action, f"{label}: action", kline("action"), ctx)
    mode = None
    if "mode" in raw:
        mode = _enum(raw["mode"], Mode, f"{label}: mode", kline("mode"), ctx)

    # match fields
    matches: dict[str, Match] = {}
    for field_name in MATCH_FIELDS:
        if field_name not in raw:
            continue
        line = kline(field_name)
        not_for = [e.label for e in sorted(exits) if field_name not in FIELDS_BY_EXIT[e]]
        if not_for:
            can = {e.label: sorted(FIELDS_BY_EXIT[e], key=MATCH_FIELDS.index) for e in exits}
            ctx.err(line, f"{label}: {field_name} does not apply to {' or '.join(not_for)} "
                    f"(a {not_for[0]} rule can test: {', '.join(can[not_for[0]])})")
            continue
        m = _match(field_name, raw[field_name], lists, line, label, ctx)
        if m is not None:
            matches[field_name] = m

    if len(ctx.errors) != n_before or action is None or not exits:
        return None
    return Rule(index=i, name=name, line=header, exits=frozenset(exits), action=action, mode=mode,
                **matches)


def _match(field_name: str, value: Any, lists: _Lists, line: int, label: str,
           ctx: _Ctx) -> Match | None:
    items = config.expand(value, lists, _FIELD_PARSERS[field_name], ValueError, f"{label}: {field_name}",
                          line, ctx)
    if items is None:
        return None
    out = [v for _, v in items]
    if field_name == "protocol":  # a name stands for a set of classes: match by class
        out = sorted(set().union(*out))
    return Match(values=tuple(dict.fromkeys(out)), negated=items[0][0])


# --------------------------------------------------------------------------- loading


def load_policy(path: str | os.PathLike) -> Policy:
    """Read and parse a policy file; `source` is the path, `digest` the sha256 of its bytes."""
    return parse_policy(config.read(path, PolicyError, PolicyErrors), os.fspath(path))


def default_policy_text() -> bytes:
    return resources.files("sockgate").joinpath("defaults/policy.toml").read_bytes()


def load_default_policy() -> Policy:
    """The embedded default policy (used when /etc/sockgate/policy.toml does not exist)."""
    return parse_policy(default_policy_text(), "<embedded>")


def load_configured_policy(path: str | os.PathLike | None = None) -> Policy:
    """`path` if given; else /etc/sockgate/policy.toml if it exists; else the embedded default."""
    if path is not None:
        return load_policy(path)
    if os.path.exists(DEFAULT_POLICY_PATH):
        return load_policy(DEFAULT_POLICY_PATH)
    return load_default_policy()
