"""Templates ("{user} was refused {remote}") compiled once, rendered per alert: the one
template engine for every rendered text (alert messages, email subjects), and the entry
fields a template or a rule can name."""

from __future__ import annotations

import enum
import re
from typing import Any

from sockgate.record import Entry, EntryType, endpoint, format_time, oneline

# Entry fields by the names rules and templates use.
ENTRY_FIELDS = (
    "seq", "ts_ns", "code", "type", "outcome", "rule", "uid", "user", "gid", "pid", "program",
    "family", "local_addr", "local_port", "remote_addr", "remote_port", "host", "source", "ident",
)
# Derived fields, usable in templates and group_by/key/dedup_by.
DERIVED_FIELDS = ("time", "type_name", "local", "remote")
# Fields an alert adds to the template namespace.
ALERT_FIELDS = ("alert", "severity", "kind", "count", "window", "group")

_ALL_FIELDS = (*ENTRY_FIELDS, "extra")
KEY_FIELDS = frozenset(ENTRY_FIELDS) | frozenset(DERIVED_FIELDS)
TEMPLATE_FIELDS = KEY_FIELDS | frozenset(ALERT_FIELDS)
# An email subject is rendered from a delivered alert: its message too, but no window.
SUBJECT_FIELDS = (TEMPLATE_FIELDS - {"window"}) | {"message"}


_ENUMS = ("code", "type", "outcome", "source")
_PLAIN = frozenset(ENTRY_FIELDS) - frozenset(_ENUMS)


def entry_dict(e: Entry) -> dict[str, Any]:
    """Entry.to_dict(), without dataclasses.asdict's deep copies (alerts are built often)."""
    d = {f: getattr(e, f) for f in _ALL_FIELDS}
    for k in _ENUMS:
        v = d[k]
        if isinstance(v, enum.Enum):
            d[k] = v.value
    d["extra"] = dict(e.extra) if e.extra else {}
    return d


def entry_field(e: Entry, name: str) -> Any:
    """The value of a field (plain str/int/None) of an entry, by rule/template name."""
    if name in _PLAIN:
        return getattr(e, name)
    if name in _ENUMS:
        v = getattr(e, name)
        return v.value if isinstance(v, enum.Enum) else v
    if name.startswith("extra."):
        return e.extra.get(name[6:]) if e.extra else None
    if name == "time":
        return format_time(e.ts_ns)
    if name == "type_name":
        return EntryType(e.type).alias
    if name == "local":
        return endpoint(e.local_addr, e.local_port) if e.local_addr is not None else None
    if name == "remote":
        return endpoint(e.remote_addr, e.remote_port) if e.remote_addr is not None else None
    v = getattr(e, name)
    return v.value if hasattr(v, "value") else v


def is_field(name: str, fields: frozenset[str]) -> bool:
    return name in fields or (name.startswith("extra.") and len(name) > 6)


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def group_text(group: dict[str, Any]) -> str:
    """{group}: "remote_addr=10.0.0.5, user=-", or "all" for one global group."""
    return ", ".join(f"{k}={'-' if v is None else v}" for k, v in group.items()) or "all"


class Template:
    """A compiled template. Names outside `fields` are errors found at load time."""

    def __init__(self, text: str, fields: frozenset[str] = TEMPLATE_FIELDS, what: str = "message"):
        self.text = text
        self.parts: list[tuple[bool, str]] = []  # (is_field, literal or field name)
        self.errors: list[str] = []
        lit: list[str] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            lit.append(text[pos:m.start()])
            pos = m.end()
            tok = m.group(0)
            if tok == "{{":
                lit.append("{")
            elif tok == "}}":
                lit.append("}")
            elif m.group(1) is not None:
                name = m.group(1).strip()
                if not is_field(name, fields):
                    self.errors.append(f"unknown field {{{name}}} in {what} (known: "
                                       + ", ".join(sorted(fields)) + ", extra.NAME)")
                if lit:
                    self.parts.append((False, "".join(lit)))
                    lit = []
                self.parts.append((True, name))
            else:
                self.errors.append(f"unmatched {tok!r} in {what} (write {tok}{tok} for a literal brace)")
        lit.append(text[pos:])
        if any(lit):
            self.parts.append((False, "".join(lit)))

    def fields(self) -> list[str]:
        return [p for f, p in self.parts if f]

    def render(self, entry: Entry | None, extra: dict[str, Any]) -> str:
        out = []
        for is_f, p in self.parts:
            if not is_f:
                out.append(p)
                continue
            v = extra[p] if p in extra else entry_field(entry, p) if entry is not None else None
            # a value from an entry is what a kernel path or an import said: one inert line
            out.append("-" if v is None or v == "" else oneline(v))
        return "".join(out)
