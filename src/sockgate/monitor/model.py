"""Alert rules, typed: what a parsed, validated rules file means (parse.py builds it,
match.py compiles the match fields, engine.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sockgate.monitor.match import Match
from sockgate.monitor.render import Template

SEVERITIES = {  # name -> RFC 5424 severity number
    "emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
KINDS = ("every", "threshold", "first_seen")


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
    distinct: str | None = None  # threshold: count distinct values of this field, not matches
    key: tuple[str, ...] = ()
    forget_ns: int = 0
    storm: int = 0              # new alerts sent per storm window; the rest fold (0: off)
    storm_window_ns: int = 0
    line: int | None = None
    fingerprint: str = ""
    index: int = 0


@dataclass
class CheckpointConfig:
    """[monitor.checkpoint]: send the journal's newest seal (`journal checkpoint`) to
    `channels` once per `every` (see docs/monitor.md, "Off-host checkpoints")."""
    every_ns: int
    channels: tuple[str, ...]
    severity: str = "info"
    line: int | None = None


@dataclass
class RuleSet:
    path: str
    rules: list[AlertRule] = field(default_factory=list)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    start: str = "end"
    checkpoint: CheckpointConfig | None = None
