"""Alert rules: TOML → validated, precompiled RuleSet. Every problem is reported as
FILE:LINE: message, all of them at once (RulesErrors), never a traceback.

File layout (see examples/alerts.toml and docs/monitor.md):

    [monitor]            start = "end" | "beginning", suppress, channels, severity
    [lists]              name = [values]     -- used as "@name" in match values
    [channel.NAME]       type = "syslog" | "email" | "webhook" | "command", + options
    [[alert]]            name, kind = "every" | "threshold" | "first_seen", severity,
                         message, channels, suppress, dedup_by, match = { field = values },
                         threshold: count, window, group_by; first_seen: key, forget
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from sockgate.errors import RulesError, RulesErrors
from sockgate.record import Code, EntryType, Outcome, Source, addr_key, net_range, parse_duration, parse_range
from sockgate.monitor.render import KEY_FIELDS, Template, is_field

SEVERITIES = {  # name -> RFC 5424 severity number
    "emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
_SEV_ALIASES = {"emerg": "emergency", "crit": "critical", "err": "error", "warn": "warning"}
KINDS = ("every", "threshold", "first_seen")
CHANNEL_TYPES = ("syslog", "email", "webhook", "command")

DEFAULT_MESSAGES = {
    "every": "{alert}: {type_name} {outcome} user={user} program={program} local={local} remote={remote} rule={rule} host={host}",
    "threshold": "{alert}: {count} matching entries within {window} for {group}",
    "first_seen": "{alert}: first seen {group} (user={user} program={program} host={host})",
}


# ----------------------------------------------------------------------------- matchers

Pred = Callable[[Any], bool]


@dataclass
class FieldMatch:
    """One match field, compiled: positives ORed, negatives must all fail."""

    name: str                 # rule-file name ("remote", "user", "extra.tls")
    attr: str                 # Entry attribute, or "extra.X"
    pos: Pred | None
    neg: Pred | None
    allowed: frozenset | None = None   # enum fields: the allowed values (for the index)

    def __call__(self, v: Any) -> bool:
        if self.pos is not None and (v is None or not self.pos(v)):
            return False
        if self.neg is not None and v is not None and self.neg(v):
            return False
        return True

    def entry_test(self) -> Callable[[Any], bool]:
        """A closure testing this field of an entry: one call per field in the hot loop."""
        pos, neg, attr = self.pos, self.neg, self.attr
        if attr.startswith("extra."):
            key = attr[6:]
            return lambda e: self(e.extra.get(key) if e.extra else None)
        if self.allowed is not None and neg is None:
            allowed = self.allowed
            return lambda e: getattr(e, attr) in allowed
        if neg is None:
            def t_pos(e: Any) -> bool:
                v = getattr(e, attr)
                return v is not None and pos(v)
            return t_pos
        if pos is None:
            def t_neg(e: Any) -> bool:
                v = getattr(e, attr)
                return v is None or not neg(v)
            return t_neg
        def t_both(e: Any) -> bool:
            v = getattr(e, attr)
            return v is not None and pos(v) and not neg(v)
        return t_both


_ENUM_FIELDS: dict[str, type] = {"code": Code, "type": EntryType, "outcome": Outcome, "source": Source}
_GLOB_FIELDS = ("user", "program", "rule", "host", "family", "ident")
_INT_FIELDS = ("uid", "gid", "pid", "seq")
_PORT_FIELDS = ("local_port", "remote_port")
_ADDR_FIELDS = {"local": "local_addr", "remote": "remote_addr", "local_addr": "local_addr", "remote_addr": "remote_addr"}
MATCH_FIELDS = sorted(set(_ENUM_FIELDS) | set(_GLOB_FIELDS) | set(_INT_FIELDS) | set(_PORT_FIELDS) | set(_ADDR_FIELDS))
INDEX_FIELDS = ("type", "outcome", "source")


def _enum_value(fname: str, enum: type, raw: str) -> Any:
    try:
        return enum.parse(raw)
    except ValueError:
        choices = [m.value for m in enum]
        if fname == "type":
            choices += sorted(a for t in enum for a in t.aliases if t.is_socket)
        raise ValueError(f"{fname}: unknown value {raw!r} (one of: {', '.join(choices)})") from None


def _glob_pred(values: list[str]) -> Pred:
    exact = {v for v in values if not any(c in v for c in "*?[")}
    globs = [v for v in values if v not in exact]
    rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match if globs else None
    if rx is None:
        return lambda v: str(v) in exact
    if not exact:
        return lambda v: rx(str(v)) is not None
    return lambda v: str(v) in exact or rx(str(v)) is not None


def _ranges_pred(ranges: list[tuple[int, int]]) -> Pred:
    singles = frozenset(a for a, b in ranges if a == b)
    spans = [(a, b) for a, b in ranges if a != b]
    if not spans:
        return lambda v: v in singles
    return lambda v: v in singles or any(a <= v <= b for a, b in spans)


def _net_pred(nets: list[Any]) -> Pred:
    spans = [net_range(n) for n in nets]

    def pred(v: Any) -> bool:
        k = addr_key(v) if isinstance(v, str) else None
        return k is not None and any(lo <= k <= hi for lo, hi in spans)
    return pred


def _scalar_pred(values: list[Any]) -> Pred:
    nums = {v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}
    strs = [str(v).lower() if isinstance(v, bool) else str(v) for v in values if v not in nums or isinstance(v, bool)]
    sp = _glob_pred(strs) if strs else None

    def pred(v: Any) -> bool:
        if nums and not isinstance(v, bool) and isinstance(v, (int, float)) and v in nums:
            return True
        if sp is None:
            return False
        return sp(str(v).lower() if isinstance(v, bool) else v)
    return pred


def compile_field(fname: str, values: list[Any]) -> FieldMatch:
    """values: already expanded (@lists) and split by the caller into raw items that may
    start with "!". Raises ValueError (one message) on the first bad value."""
    pos: list[Any] = []
    neg: list[Any] = []
    for raw in values:
        if isinstance(raw, str) and raw.startswith("!"):
            neg.append(raw[1:].strip())
        else:
            pos.append(raw)

    def build(vals: list[Any]) -> tuple[Pred | None, frozenset | None]:
        if not vals:
            return None, None
        if fname in _ENUM_FIELDS:
            allowed = frozenset(_enum_value(fname, _ENUM_FIELDS[fname], str(v)) for v in vals)
            return (lambda v: v in allowed), allowed
        if fname in _GLOB_FIELDS:
            for v in vals:
                if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v) == "":
                    raise ValueError(f"{fname}: expected a name or glob pattern, got {v!r}")
            return _glob_pred([str(v) for v in vals]), None
        if fname in _INT_FIELDS:
            return _ranges_pred([parse_range(v, fname, 2**63) for v in vals]), None
        if fname in _PORT_FIELDS:
            return _ranges_pred([parse_range(v, "port") for v in vals]), None
        if fname in _ADDR_FIELDS:
            nets = []
            for v in vals:
                try:
                    nets.append(ipaddress.ip_network(str(v).strip(), strict=False))
                except ValueError:
                    raise ValueError(f"{fname}: bad address or CIDR {v!r}") from None
            return _net_pred(nets), None
        # extra.NAME
        for v in vals:
            if not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"{fname}: expected scalar values, got {v!r}")
        return _scalar_pred(vals), None

    p, pallowed = build(pos)
    n, nallowed = build(neg)
    allowed = None
    if fname in _ENUM_FIELDS:
        universe = frozenset(_ENUM_FIELDS[fname])
        allowed = (pallowed if pallowed is not None else universe) - (nallowed or frozenset())
        # Enum fields reduce to one set test (outcome None never matches a positive).
        fm = FieldMatch(fname, fname, None, None, allowed)
        fm.pos = (lambda v, a=allowed: v in a) if pos else None
        fm.neg = (lambda v, a=nallowed: v in a) if neg else None
        return fm
    attr = _ADDR_FIELDS.get(fname, fname)
    return FieldMatch(fname, attr, p, n, allowed)


@dataclass
class Match:
    fields: list[FieldMatch]

    def allows(self, name: str, value: Any) -> bool:
        for f in self.fields:
            if f.name == name:
                return f(value)
        return True


# ----------------------------------------------------------------------------- model

@dataclass
class ChannelConfig:
    name: str
    type: str
    options: dict[str, Any]
    line: int | None = None


@dataclass
class AlertRule:
    name: str
    kind: str
    severity: str
    message: Template
    channels: tuple[str, ...]
    suppress_ns: int
    match: Match
    dedup_by: tuple[str, ...] | None = None
    count: int = 1
    window_ns: int = 0
    group_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    forget_ns: int = 0
    line: int | None = None
    fingerprint: str = ""
    index: int = 0


@dataclass
class RuleSet:
    path: str
    rules: list[AlertRule] = field(default_factory=list)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    start: str = "end"


# ----------------------------------------------------------------------------- locating lines

_HDR = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEYPART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _split_key(k: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _KEYPART.findall(k))


class Locator:
    """Maps a key path such as ("alert", 3, "match", "user") to its line in the file.
    Good enough for the TOML people write (headers, key = value lines, inline tables)."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        table: tuple = ()
        in_multiline: str | None = None
        for no, line in enumerate(text.splitlines(), 1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            m = _HDR.match(line)
            if m and not _KEY.match(line):
                path = _split_key(m.group(2))
                if m.group(1) == "[[":
                    idx = arrays.get(path, -1) + 1
                    arrays[path] = idx
                    self.lines.setdefault(path, no)
                    table = path + (idx,)
                else:
                    # [alert.match] after [[alert]] refers to the last array element
                    if path and path[0] in ("alert",) and ("alert",) in arrays:
                        path = ("alert", arrays[("alert",)]) + path[1:]
                    table = path
                self.lines.setdefault(table, no)
                continue
            k = _KEY.match(line)
            if k:
                self.lines.setdefault(table + _split_key(k.group(1)), no)
                rest = line[k.end():]
                for q in ('"""', "'''"):
                    if rest.count(q) % 2 == 1:
                        in_multiline = q

    def line(self, *path: Any) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None


# ----------------------------------------------------------------------------- parsing

_MONITOR_KEYS = {"start", "suppress", "channels", "severity"}
_ALERT_KEYS = {"name", "kind", "severity", "message", "channels", "suppress", "dedup_by", "match",
               "count", "window", "group_by", "key", "forget", "enabled", "description"}
_KIND_ONLY = {"count": "threshold", "window": "threshold", "group_by": "threshold",
              "key": "first_seen", "forget": "first_seen"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class _Ctx:
    def __init__(self, path: str, text: str):
        self.path = path
        self.loc = Locator(text)
        self.errors: list[RulesError] = []

    def err(self, msg: str, *where: Any) -> None:
        self.errors.append(RulesError(msg, self.path, self.loc.line(*where)))


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


def _severity(ctx: _Ctx, v: Any, *where: Any) -> str | None:
    if not isinstance(v, str) or _SEV_ALIASES.get(v.lower(), v.lower()) not in SEVERITIES:
        ctx.err(f"severity: unknown {v!r} (one of: {', '.join(SEVERITIES)})", *where)
        return None
    return _SEV_ALIASES.get(v.lower(), v.lower())


def _duration(ctx: _Ctx, v: Any, what: str, *where: Any, positive: bool = True) -> int | None:
    try:
        ns = parse_duration(v)
    except ValueError as e:
        ctx.err(f"{what}: {e}", *where)
        return None
    if positive and ns <= 0:
        ctx.err(f"{what}: must be greater than zero", *where)
        return None
    return ns


def _names(ctx: _Ctx, v: Any, what: str, allowed: frozenset[str], *where: Any) -> tuple[str, ...] | None:
    vals = _as_list(v)
    if not vals or not all(isinstance(x, str) for x in vals):
        ctx.err(f"{what}: expected a list of field names", *where)
        return None
    bad = [x for x in vals if not is_field(x, allowed)]
    if bad:
        ctx.err(f"{what}: unknown field {bad[0]!r} (known: {', '.join(sorted(allowed))}, extra.NAME)", *where)
        return None
    return tuple(vals)


def _parse_channel(ctx: _Ctx, name: str, spec: Any) -> ChannelConfig | None:
    from sockgate.monitor.channels import validate_channel  # channels import rules' types only

    where = ("channel", name)
    if not isinstance(spec, dict):
        ctx.err(f"channel {name!r}: expected a table [channel.{name}]", *where)
        return None
    if not _NAME.match(name):
        ctx.err(f"channel name {name!r}: use letters, digits, '-', '_', '.', ':'", *where)
    ctype = spec.get("type")
    if ctype not in CHANNEL_TYPES:
        ctx.err(f"channel {name!r}: type must be one of {', '.join(CHANNEL_TYPES)} (got {ctype!r})", *where, "type")
        return None
    opts = {k: v for k, v in spec.items() if k != "type"}
    for key, msg in validate_channel(ctype, opts):
        ctx.err(f"channel {name!r}: {msg}", *where, *( (key,) if key else ()))
    return ChannelConfig(name, ctype, opts, ctx.loc.line(*where))


def _expand(ctx: _Ctx, lists: dict[str, list[Any]], fname: str, raw: Any, where: tuple) -> list[Any] | None:
    out: list[Any] = []
    for v in _as_list(raw):
        if isinstance(v, (dict, list)):
            ctx.err(f"match.{fname}: expected values, got a {'table' if isinstance(v, dict) else 'nested list'}", *where)
            return None
        if isinstance(v, str) and v.lstrip("!").startswith("@"):
            neg = v.startswith("!")
            lname = v.lstrip("!")[1:]
            if lname not in lists:
                ctx.err(f"match.{fname}: unknown list @{lname} (define it under [lists])", *where)
                return None
            for item in lists[lname]:
                if neg:
                    if isinstance(item, str) and item.startswith("!"):
                        ctx.err(f"match.{fname}: !@{lname} negates a list that already holds a negated value", *where)
                        return None
                    out.append("!" + str(item))
                else:
                    out.append(item)
        else:
            out.append(v)
    if not out:
        ctx.err(f"match.{fname}: empty list (leave the field out to match anything)", *where)
        return None
    return out


def _parse_match(ctx: _Ctx, lists: dict, spec: Any, where: tuple) -> Match | None:
    if spec is None:
        return Match([])
    if not isinstance(spec, dict):
        ctx.err("match: expected a table, e.g. match = { type = \"C\", outcome = \"rejected\" }", *where, "match")
        return None
    fields: list[FieldMatch] = []
    ok = True
    for fname, raw in spec.items():
        w = where + ("match", fname)
        if isinstance(raw, dict) and fname == "extra":
            items = [(f"extra.{k}", v) for k, v in raw.items()]
        else:
            items = [(fname, raw)]
        for fn, rv in items:
            if fn not in MATCH_FIELDS and not (fn.startswith("extra.") and len(fn) > 6):
                ctx.err(f"match: unknown field {fn!r} (known: {', '.join(MATCH_FIELDS)}, extra.NAME)", *w)
                ok = False
                continue
            vals = _expand(ctx, lists, fn, rv, w)
            if vals is None:
                ok = False
                continue
            try:
                fields.append(compile_field(fn, vals))
            except ValueError as e:
                ctx.err(f"match.{e}" if str(e).startswith(fn) else f"match.{fn}: {e}", *w)
                ok = False
    if not ok:
        return None
    # Cheap, selective fields first.
    order = {"type": 0, "outcome": 1, "source": 2, "code": 3}
    fields.sort(key=lambda f: order.get(f.name, 10))
    return Match(fields)


def _parse_alert(ctx: _Ctx, i: int, spec: Any, lists: dict, mon: dict, channels: dict) -> AlertRule | None:
    """One [[alert]]; None when it has errors (recorded in ctx) or is disabled."""
    where: tuple = ("alert", i)
    if not isinstance(spec, dict):
        ctx.err("alert: expected a table [[alert]]", *where)
        return None
    name = spec.get("name")
    label = f"alert {name!r}" if isinstance(name, str) else f"alert #{i + 1}"
    before = len(ctx.errors)
    for k in spec:
        if k not in _ALERT_KEYS:
            ctx.err(f"{label}: unknown key {k!r} (known: {', '.join(sorted(_ALERT_KEYS))})", *where, k)
    if not isinstance(name, str) or not _NAME.match(name):
        ctx.err(f"{label}: name is required: letters, digits, '-', '_', '.', ':' (up to 64)", *where, "name")
    kind = spec.get("kind", "every")
    if kind not in KINDS:
        ctx.err(f"{label}: kind must be one of {', '.join(KINDS)} (got {kind!r})", *where, "kind")
        kind = None
    if kind:
        for k, need in _KIND_ONLY.items():
            if k in spec and kind != need:
                ctx.err(f"{label}: {k!r} applies to kind = \"{need}\" only", *where, k)
    sev = _severity(ctx, spec.get("severity", mon.get("severity", "warning")), *where, "severity")
    suppress = _duration(ctx, spec.get("suppress", mon.get("suppress", "10m")), "suppress", *where, "suppress",
                         positive=False)
    chans = spec.get("channels", mon.get("channels"))
    if chans is None:
        ctx.err(f"{label}: no channels (set channels here or under [monitor])", *where)
        chans = []
    elif not isinstance(chans, list) or not all(isinstance(c, str) for c in chans) or not chans:
        ctx.err(f"{label}: channels: expected a list of channel names", *where, "channels")
        chans = []
    for c in chans:
        if c not in channels:
            ctx.err(f"{label}: unknown channel {c!r} (define [channel.{c}])", *where, "channels")
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        ctx.err(f"{label}: enabled must be true or false", *where, "enabled")
    desc = spec.get("description", "")
    if not isinstance(desc, str):
        ctx.err(f"{label}: description must be a string", *where, "description")
    msg = spec.get("message", DEFAULT_MESSAGES.get(kind or "every"))
    tmpl = None
    if not isinstance(msg, str):
        ctx.err(f"{label}: message must be a string", *where, "message")
    else:
        tmpl = Template(msg)
        for e in tmpl.errors:
            ctx.err(f"{label}: {e}", *where, "message")
    match = _parse_match(ctx, lists, spec.get("match"), where)
    dedup_by = None
    if "dedup_by" in spec:
        dedup_by = _names(ctx, spec["dedup_by"], "dedup_by", KEY_FIELDS, *where, "dedup_by")
    count, window, group_by, key, forget = 1, 0, (), (), 0
    if kind == "threshold":
        count = spec.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            ctx.err(f"{label}: count must be an integer >= 1 (how many matches fire the alert)", *where, "count")
            count = 1
        if "window" not in spec:
            ctx.err(f"{label}: window is required for a threshold (e.g. window = \"1m\")", *where)
        else:
            window = _duration(ctx, spec["window"], "window", *where, "window") or 0
        group_by = _names(ctx, spec.get("group_by", []), "group_by", KEY_FIELDS, *where, "group_by") \
            if spec.get("group_by", []) != [] else ()
        group_by = group_by or ()
    elif kind == "first_seen":
        if "key" not in spec:
            ctx.err(f"{label}: key is required for first_seen (e.g. key = [\"program\", \"local_port\"])", *where)
        else:
            key = _names(ctx, spec["key"], "key", KEY_FIELDS, *where, "key") or ()
        if "forget" in spec:
            forget = _duration(ctx, spec["forget"], "forget", *where, "forget") or 0
    if len(ctx.errors) != before or tmpl is None or match is None or kind is None or enabled is False:
        return None
    fp_src = {k: spec.get(k) for k in ("kind", "match", "count", "window", "group_by", "key", "forget", "dedup_by")}
    fp_src["lists"] = lists  # a list a rule names may have changed
    fp = hashlib.sha256(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return AlertRule(
        name=name, kind=kind, severity=sev or "warning", message=tmpl, channels=tuple(chans),
        suppress_ns=suppress or 0, match=match, dedup_by=dedup_by, count=count, window_ns=window,
        group_by=group_by, key=key, forget_ns=forget, line=ctx.loc.line(*where), fingerprint=fp, index=i,
    )


def parse_rules(text: str, path: str = "<rules>") -> RuleSet:
    """Parse and validate rules text. Raises RulesErrors listing every problem."""
    ctx = _Ctx(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)|\(at end of document\)", str(e))
        line = int(m.group(1)) if m and m.group(1) else max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        raise RulesErrors([RulesError(f"TOML syntax: {msg}", path, line)]) from None

    for k in doc:
        if k not in ("monitor", "lists", "channel", "alert"):
            hint = " (did you mean [channel.NAME]?)" if k == "channels" else \
                   " (did you mean [[alert]]?)" if k in ("alerts", "rule", "rules") else ""
            ctx.err(f"unknown section {k!r}{hint}; known: monitor, lists, channel, alert", k)

    mon = doc.get("monitor", {})
    if not isinstance(mon, dict):
        ctx.err("[monitor] must be a table", "monitor")
        mon = {}
    for k in mon:
        if k not in _MONITOR_KEYS:
            ctx.err(f"[monitor]: unknown key {k!r} (known: {', '.join(sorted(_MONITOR_KEYS))})", "monitor", k)
    start = mon.get("start", "end")
    if start not in ("end", "beginning"):
        ctx.err(f"[monitor]: start must be \"end\" or \"beginning\" (got {start!r})", "monitor", "start")
    if "severity" in mon:
        _severity(ctx, mon["severity"], "monitor", "severity")
        if isinstance(mon["severity"], str):
            mon = dict(mon, severity=_SEV_ALIASES.get(mon["severity"].lower(), mon["severity"].lower()))
    if "suppress" in mon and _duration(ctx, mon["suppress"], "[monitor] suppress", "monitor", "suppress",
                                       positive=False) is None:
        mon = {k: v for k, v in mon.items() if k != "suppress"}

    lists = doc.get("lists", {})
    if not isinstance(lists, dict):
        ctx.err("[lists] must be a table of name = [values]", "lists")
        lists = {}
    clean_lists: dict[str, list[Any]] = {}
    for lname, vals in lists.items():
        vs = _as_list(vals)
        if not vs or any(isinstance(v, (dict, list)) for v in vs):
            ctx.err(f"[lists] {lname}: expected a non-empty list of values", "lists", lname)
            continue
        if any(isinstance(v, str) and v.lstrip("!").startswith("@") for v in vs):
            ctx.err(f"[lists] {lname}: a list cannot name another list", "lists", lname)
            continue
        clean_lists[lname] = vs

    rs = RuleSet(path=path, start=start if start in ("end", "beginning") else "end")
    chans = doc.get("channel", {})
    if not isinstance(chans, dict):
        ctx.err("channel: expected [channel.NAME] tables", "channel")
        chans = {}
    for cname, spec in chans.items():
        cc = _parse_channel(ctx, cname, spec)
        if cc:
            rs.channels[cname] = cc
    if isinstance(mon.get("channels"), list):
        for c in mon["channels"]:
            if c not in chans:
                ctx.err(f"[monitor]: unknown channel {c!r} (define [channel.{c}])", "monitor", "channels")

    alerts = doc.get("alert", [])
    if not isinstance(alerts, list):
        ctx.err("alert: expected [[alert]] tables (an array of tables)", "alert")
        alerts = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(alerts):
        rule = _parse_alert(ctx, i, spec, clean_lists, mon, chans)
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            if name in seen:
                ctx.err(f"alert {name!r}: duplicate name (first at line {ctx.loc.line('alert', seen[name])})",
                        "alert", i, "name")
            else:
                seen[name] = i
        if rule:
            rs.rules.append(rule)
    if not alerts and not ctx.errors:
        ctx.err("no [[alert]] rules defined", )
    if ctx.errors:
        ctx.errors.sort(key=lambda e: (e.line or 0))
        raise RulesErrors(ctx.errors)
    return rs


def load_rules(path: str) -> RuleSet:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise RulesErrors([RulesError("no such file", path)]) from None
    except IsADirectoryError:
        raise RulesErrors([RulesError("is a directory, expected a TOML file", path)]) from None
    except OSError as e:
        raise RulesErrors([RulesError(f"cannot read: {e.strerror}", path)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RulesErrors([RulesError("not UTF-8 text", path, line)]) from None
    return parse_rules(text, path)
