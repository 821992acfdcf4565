"""Durations ("90s", "5m", "1h30m", "2d") and points in time ("1h" ago, ISO 8601)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

NS = 1_000_000_000
_UNITS = {"ms": NS // 1000, "s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS, "w": 7 * 86400 * NS}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> int:
    """A duration in nanoseconds. Strings like "1m", "1h30m", "250ms"; a bare number is seconds.
    Raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"5m\", got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return int(value * NS)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"5m\", got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * NS)
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"bad duration {value!r} (use e.g. \"30s\", \"5m\", \"1h30m\", \"2d\")")
    return int(total)


def format_duration(ns: int) -> str:
    s = ns // NS
    if s and s % 86400 == 0:
        return f"{s // 86400}d"
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    if ns % NS == 0:
        return f"{s}s"
    return f"{ns / NS:g}s"


def parse_since(value: str, now_ns: int) -> int:
    """--since: a duration ago ("1h") or an ISO 8601 time ("2024-05-01T10:00:00Z")."""
    try:
        return now_ns - parse_duration(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {value!r} (use a duration such as \"1h\" or an ISO time)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as an administrator types it
    return int(dt.timestamp() * NS)


def iso(ts_ns: int) -> str:
    """RFC 3339 UTC with microseconds (what RFC 5424 allows)."""
    dt = datetime.fromtimestamp(ts_ns // NS, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns % NS) // 1000:06d}Z"
