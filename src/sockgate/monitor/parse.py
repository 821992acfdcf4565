"""Alert rules file (TOML) -> validated, precompiled RuleSet (monitor.model). Every
problem is reported as FILE:LINE: message, all of them at once (RulesErrors), never a
traceback. The file is read by sockgate.config, like the policy: the same line locator,
error collector, [lists] and "!"/"@name" rules (see docs/monitor.md).

File layout (see examples/alerts.toml):

    [monitor]            start = "end" | "beginning", suppress, channels, severity, storm, storm_window
    [monitor.checkpoint] every, channels, severity  -- send `journal checkpoint` on a schedule
    [lists]              name = [values]     -- used as "@name" in match values
    [channel.NAME]       type = "syslog" | "email" | "webhook" | "command", + options
    [[alert]]            name, kind = "every" | "threshold" | "first_seen", severity,
                         message, channels, suppress, storm, storm_window, dedup_by, match = { field = values },
                         threshold: count, window, group_by; first_seen: key, forget
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sockgate import config
from sockgate.config import Collector as _Ctx
from sockgate.errors import RulesError, RulesErrors
from sockgate.monitor import channels
from sockgate.monitor.match import MATCH_FIELDS, FieldMatch, Match, compile_field, value_parser
from sockgate.monitor.model import KINDS, SEVERITIES, AlertRule, ChannelConfig, CheckpointConfig, RuleSet
from sockgate.monitor.render import KEY_FIELDS, Template, is_field
from sockgate.record import parse_duration

_SEV_ALIASES = {"emerg": "emergency", "crit": "critical", "err": "error", "warn": "warning"}

DEFAULT_MESSAGES = {
    "every": "{alert}: {type_name} {outcome} user={user} program={program} local={local} remote={remote} rule={rule} host={host}",
    "threshold": "{alert}: {count} matching entries within {window} for {group}",
    "first_seen": "{alert}: first seen {group} (user={user} program={program} host={host})",
}

_MONITOR_KEYS = {"start", "suppress", "channels", "severity", "storm", "storm_window", "checkpoint"}
_CHECKPOINT_KEYS = {"every", "channels", "severity"}
MIN_CHECKPOINT_EVERY = "1m"   # tests use a fake clock (Monitor.open(clock=...)), not a shorter interval
_ALERT_KEYS = {"name", "kind", "severity", "message", "channels", "suppress", "dedup_by", "match",
               "count", "window", "group_by", "distinct", "key", "forget", "enabled", "description", "storm",
               "storm_window"}
DEFAULT_STORM, DEFAULT_STORM_WINDOW = 20, "1m"
_KIND_ONLY = {"count": "threshold", "window": "threshold", "group_by": "threshold", "distinct": "threshold",
              "key": "first_seen", "forget": "first_seen"}
MAX_COUNT = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def _severity(ctx: _Ctx, v: Any, *where: Any) -> str | None:
    if not isinstance(v, str) or _SEV_ALIASES.get(v.lower(), v.lower()) not in SEVERITIES:
        ctx.err(where, f"severity: unknown {v!r} (one of: {', '.join(SEVERITIES)})")
        return None
    return _SEV_ALIASES.get(v.lower(), v.lower())


def _duration(ctx: _Ctx, v: Any, what: str, *where: Any, positive: bool = True) -> int | None:
    try:
        ns = parse_duration(v)
    except ValueError as e:
        ctx.err(where, f"{what}: {e}")
        return None
    if positive and ns <= 0:
        ctx.err(where, f"{what}: must be greater than zero")
        return None
    return ns


def _storm(ctx: _Ctx, v: Any, label: str, *where: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
        ctx.err(where, f"{label}: storm must be an integer 0-{MAX_COUNT} (new alerts of a rule sent per "
                       "storm_window, the rest fold into one report; 0: no limit)")
        return 0
    return v


def _names(ctx: _Ctx, v: Any, what: str, allowed: frozenset[str], *where: Any) -> tuple[str, ...] | None:
    vals = config.as_list(v)
    if not vals or not all(isinstance(x, str) for x in vals):
        ctx.err(where, f"{what}: expected a list of field names")
        return None
    bad = [x for x in vals if not is_field(x, allowed)]
    if bad:
        ctx.err(where, f"{what}: unknown field {bad[0]!r} (known: {', '.join(sorted(allowed))}, extra.NAME)")
        return None
    return tuple(vals)


def _channel_list(ctx: _Ctx, v: Any, label: str, where: tuple, channels: dict) -> tuple[str, ...]:
    """A `channels` setting (or the [monitor] default it falls back to): names of defined
    channels; errors at `where` + "channels"."""
    if v is None:
        ctx.err(where, f"{label}: no channels (set channels here or under [monitor])")
        return ()
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v) or not v:
        ctx.err((*where, "channels"), f"{label}: channels: expected a list of channel names")
        return ()
    for c in v:
        if c not in channels:
            ctx.err((*where, "channels"), f"{label}: unknown channel {c!r} (define [channel.{c}])")
    return tuple(v)


def _parse_checkpoint(ctx: _Ctx, spec: Any, mon: dict, channels: dict) -> CheckpointConfig | None:
    """[monitor.checkpoint]: every (at least MIN_CHECKPOINT_EVERY), channels (default: the
    [monitor] ones), severity (default info)."""
    where = ("monitor", "checkpoint")
    label = "[monitor.checkpoint]"
    if not isinstance(spec, dict):
        ctx.err(where, f"{label}: expected a table, e.g. [monitor.checkpoint] every = \"1h\", "
                       "channels = [\"ops-mail\"]")
        return None
    before = len(ctx.errors)
    for k in spec:
        if k not in _CHECKPOINT_KEYS:
            ctx.err((*where, k), f"{label}: unknown key {k!r} (known: {', '.join(sorted(_CHECKPOINT_KEYS))})")
    every = None
    if "every" not in spec:
        ctx.err(where, f"{label}: every is required (how often to send the checkpoint, e.g. every = \"1h\")")
    else:
        every = _duration(ctx, spec["every"], f"{label} every", *where, "every")
        if every is not None and every < parse_duration(MIN_CHECKPOINT_EVERY):
            ctx.err((*where, "every"), f"{label} every: at least {MIN_CHECKPOINT_EVERY} (got {spec['every']!r})")
    sev = _severity(ctx, spec.get("severity", "info"), *where, "severity")
    chans = _channel_list(ctx, spec.get("channels", mon.get("channels")), label, where, channels)
    if len(ctx.errors) != before or every is None:
        return None
    return CheckpointConfig(every_ns=every, channels=chans, severity=sev or "info", line=ctx.loc.line(*where))


def _parse_channel(ctx: _Ctx, name: str, spec: Any) -> ChannelConfig | None:
    where = ("channel", name)
    if not isinstance(spec, dict):
        ctx.err(where, f"channel {name!r}: expected a table [channel.{name}]")
        return None
    if not _NAME.match(name):
        ctx.err(where, f"channel name {name!r}: use letters, digits, '-', '_', '.', ':'")
    ctype = spec.get("type")
    if ctype not in channels.TYPES:
        ctx.err((*where, "type"), f"channel {name!r}: type must be one of {', '.join(channels.TYPES)} (got {ctype!r})")
        return None
    opts = {k: v for k, v in spec.items() if k != "type"}
    for key, msg in channels.validate_channel(ctype, opts):
        ctx.err((*where, *( (key,) if key else ())), f"channel {name!r}: {msg}")
    return ChannelConfig(name, ctype, opts, ctx.loc.line(*where))


def _parse_match(ctx: _Ctx, lists: config.Lists, spec: Any, where: tuple) -> Match | None:
    if spec is None:
        return Match([])
    if not isinstance(spec, dict):
        ctx.err((*where, "match"), "match: expected a table, e.g. match = { type = \"C\", outcome = \"rejected\" }")
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
                ctx.err(w, f"match: unknown field {fn!r} (known: {', '.join(MATCH_FIELDS)}, extra.NAME)")
                ok = False
                continue
            vals = config.expand(rv, lists, value_parser(fn), ValueError, f"match.{fn}", w, ctx, mixed=True)
            if vals is None:
                ok = False
                continue
            fields.append(compile_field(fn, vals))
    if not ok:
        return None
    # Cheap, selective fields first.
    order = {"type": 0, "outcome": 1, "source": 2, "code": 3}
    fields.sort(key=lambda f: order.get(f.name, 10))
    return Match(fields)


def _parse_alert(ctx: _Ctx, i: int, spec: Any, lists: config.Lists, mon: dict, channels: dict) -> AlertRule | None:
    """One [[alert]]; None when it has errors (recorded in ctx) or is disabled."""
    where: tuple = ("alert", i)
    if not isinstance(spec, dict):
        ctx.err(where, "alert: expected a table [[alert]]")
        return None
    name = spec.get("name")
    label = f"alert {name!r}" if isinstance(name, str) else f"alert #{i + 1}"
    before = len(ctx.errors)
    for k in spec:
        if k not in _ALERT_KEYS:
            ctx.err((*where, k), f"{label}: unknown key {k!r} (known: {', '.join(sorted(_ALERT_KEYS))})")
    if not isinstance(name, str) or not _NAME.match(name):
        ctx.err((*where, "name"), f"{label}: name is required: letters, digits, '-', '_', '.', ':' (up to 64)")
    kind = spec.get("kind", "every")
    if kind not in KINDS:
        ctx.err((*where, "kind"), f"{label}: kind must be one of {', '.join(KINDS)} (got {kind!r})")
        kind = None
    if kind:
        for k, need in _KIND_ONLY.items():
            if k in spec and kind != need:
                ctx.err((*where, k), f"{label}: {k!r} applies to kind = \"{need}\" only")
    sev = _severity(ctx, spec.get("severity", mon.get("severity", "warning")), *where, "severity")
    suppress = _duration(ctx, spec.get("suppress", mon.get("suppress", "10m")), "suppress", *where, "suppress",
                         positive=False)
    storm = _storm(ctx, spec.get("storm", mon.get("storm", DEFAULT_STORM)), label, *where, "storm")
    storm_window = _duration(ctx, spec.get("storm_window", mon.get("storm_window", DEFAULT_STORM_WINDOW)),
                             f"{label}: storm_window", *where, "storm_window") or 0
    chans = _channel_list(ctx, spec.get("channels", mon.get("channels")), label, where, channels)
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        ctx.err((*where, "enabled"), f"{label}: enabled must be true or false")
    desc = spec.get("description", "")
    if not isinstance(desc, str):
        ctx.err((*where, "description"), f"{label}: description must be a string")
    msg = spec.get("message", DEFAULT_MESSAGES.get(kind or "every"))
    tmpl = None
    if not isinstance(msg, str):
        ctx.err((*where, "message"), f"{label}: message must be a string")
    else:
        tmpl = Template(msg)
        for e in tmpl.errors:
            ctx.err((*where, "message"), f"{label}: {e}")
    match = _parse_match(ctx, lists, spec.get("match"), where)
    dedup_by = None
    if "dedup_by" in spec:
        dedup_by = _names(ctx, spec["dedup_by"], "dedup_by", KEY_FIELDS, *where, "dedup_by")
    count, window, group_by, key, forget, distinct = 1, 0, (), (), 0, None
    if kind == "threshold":
        count = spec.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            ctx.err((*where, "count"), f"{label}: count must be an integer 1-{MAX_COUNT} (how many matches fire "
                                       "the alert; a window keeps that many times per group)")
            count = 1
        if "window" not in spec:
            ctx.err(where, f"{label}: window is required for a threshold (e.g. window = \"1m\")")
        else:
            window = _duration(ctx, spec["window"], "window", *where, "window") or 0
        group_by = _names(ctx, spec.get("group_by", []), "group_by", KEY_FIELDS, *where, "group_by") \
            if spec.get("group_by", []) != [] else ()
        group_by = group_by or ()
        if "distinct" in spec:   # count distinct values of one field, e.g. hosts across a fleet
            d = spec["distinct"]
            names = _names(ctx, d, "distinct", KEY_FIELDS, *where, "distinct") if isinstance(d, str) else None
            if isinstance(d, str) and names and d in group_by:
                ctx.err((*where, "distinct"), f"{label}: distinct: {d!r} is also in group_by (each group has one)")
            elif not isinstance(d, str):
                ctx.err((*where, "distinct"), f"{label}: distinct: expected one field name (e.g. distinct = \"host\")")
            elif names:
                distinct = d
    elif kind == "first_seen":
        if "key" not in spec:
            ctx.err(where, f"{label}: key is required for first_seen (e.g. key = [\"program\", \"local_port\"])")
        else:
            key = _names(ctx, spec["key"], "key", KEY_FIELDS, *where, "key") or ()
        if "forget" in spec:
            forget = _duration(ctx, spec["forget"], "forget", *where, "forget") or 0
    if len(ctx.errors) != before or tmpl is None or match is None or kind is None or enabled is False:
        return None
    fp_src = {k: spec.get(k) for k in ("kind", "match", "count", "window", "group_by", "key", "forget", "dedup_by")}
    if distinct is not None:   # (kept out of the hash when unset: existing rules keep their state)
        fp_src["distinct"] = distinct
    fp_src["lists"] = lists.values  # a list a rule names may have changed
    fp = hashlib.sha256(json.dumps(fp_src, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return AlertRule(
        name=name, kind=kind, severity=sev or "warning", message=tmpl, channels=chans,
        suppress_ns=suppress or 0, match=match, dedup_by=dedup_by, count=count, window_ns=window,
        group_by=group_by, distinct=distinct, key=key, forget_ns=forget, storm=storm, storm_window_ns=storm_window,
        line=ctx.loc.line(*where), fingerprint=fp, index=i,
    )


def parse_rules(text: str | bytes, path: str = "<rules>") -> RuleSet:
    """Parse and validate rules text. Raises RulesErrors listing every problem, never
    anything else."""
    return config.parse(text, path, RulesError, RulesErrors, lambda doc, ctx: _build(doc, ctx, path), "rules")


def _build(doc: dict, ctx: _Ctx, path: str) -> RuleSet:
    for k in doc:
        if k not in ("monitor", "lists", "channel", "alert"):
            hint = " (did you mean [channel.NAME]?)" if k == "channels" else \
                   " (did you mean [[alert]]?)" if k in ("alerts", "rule", "rules") else ""
            ctx.err((k,), f"unknown section {k!r}{hint}; known: monitor, lists, channel, alert")

    mon = doc.get("monitor", {})
    if not isinstance(mon, dict):
        ctx.err(("monitor",), "[monitor] must be a table")
        mon = {}
    for k in mon:
        if k not in _MONITOR_KEYS:
            ctx.err(("monitor", k), f"[monitor]: unknown key {k!r} (known: {', '.join(sorted(_MONITOR_KEYS))})")
    start = mon.get("start", "end")
    if start not in ("end", "beginning"):
        ctx.err(("monitor", "start"), f"[monitor]: start must be \"end\" or \"beginning\" (got {start!r})")
    if "severity" in mon:
        _severity(ctx, mon["severity"], "monitor", "severity")
        if isinstance(mon["severity"], str):
            mon = dict(mon, severity=_SEV_ALIASES.get(mon["severity"].lower(), mon["severity"].lower()))
    if "suppress" in mon and _duration(ctx, mon["suppress"], "[monitor] suppress", "monitor", "suppress",
                                       positive=False) is None:
        mon = {k: v for k, v in mon.items() if k != "suppress"}

    # [monitor] defaults are checked here, once, at their own line
    if "storm" in mon and _storm(ctx, mon["storm"], "[monitor]", "monitor", "storm") != mon["storm"]:
        mon = {k: v for k, v in mon.items() if k != "storm"}
    if "storm_window" in mon and _duration(ctx, mon["storm_window"], "[monitor] storm_window", "monitor",
                                           "storm_window") is None:
        mon = {k: v for k, v in mon.items() if k != "storm_window"}

    lists = config.read_lists(doc.get("lists"), ctx)

    rs = RuleSet(path=path, start=start if start in ("end", "beginning") else "end")
    chans = doc.get("channel", {})
    if not isinstance(chans, dict):
        ctx.err(("channel",), "channel: expected [channel.NAME] tables")
        chans = {}
    for cname, spec in chans.items():
        cc = _parse_channel(ctx, cname, spec)
        if cc:
            rs.channels[cname] = cc
    if isinstance(mon.get("channels"), list):
        for c in mon["channels"]:
            if c not in chans:
                ctx.err(("monitor", "channels"), f"[monitor]: unknown channel {c!r} (define [channel.{c}])")
    if "checkpoint" in mon:
        rs.checkpoint = _parse_checkpoint(ctx, mon["checkpoint"], mon, chans)

    alerts = doc.get("alert", [])
    if not isinstance(alerts, list):
        ctx.err(("alert",), "alert: expected [[alert]] tables (an array of tables)")
        alerts = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(alerts):
        rule = _parse_alert(ctx, i, spec, lists, mon, chans)
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            if name in seen:
                ctx.err(("alert", i, "name"), f"alert {name!r}: duplicate name (first at line {ctx.loc.line('alert', seen[name])})")
            else:
                seen[name] = i
        if rule:
            rs.rules.append(rule)
    if not alerts and not ctx.errors and "checkpoint" not in mon:
        ctx.err(None, "no [[alert]] rules defined (nor a [monitor.checkpoint])")
    return rs


def load_rules(path: str) -> RuleSet:
    return parse_rules(config.read(path, RulesError, RulesErrors), path)
