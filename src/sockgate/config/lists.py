"""Named lists and negation, the same in the policy and in the alert rules.

    [lists]
    mgmt = ["10.20.0.0/16", "fd00:20::/32"]
    ...
    remote = ["!@mgmt"]          # "!" negates, "@name" splices a list in

Rules: values in a list are strings or integers and cannot be negated (negate the
reference, "!@name"); a list cannot name another list; an unknown or empty list is an
error where it is used; an unused list is fine. A value is checked where it is used, by
the field's own parser, so a list has no type of its own.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from sockgate.config.document import Collector, Where
from sockgate.record import kind_of, quote


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def suggest(word: Any, choices) -> str:
    """' (did you mean "x"?)' for a close choice, else ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


@dataclass
class Lists:
    values: dict[str, list] = field(default_factory=dict)   # usable lists
    lines: dict[str, int] = field(default_factory=dict)     # every defined list (bad ones too)


def read_lists(value: Any, ctx: Collector) -> Lists:
    """The [lists] table; a list with a bad value is reported here, not at each use."""
    out = Lists()
    if value is None:
        return out
    lline = ctx.line(("lists",))
    if not isinstance(value, dict):
        ctx.err(lline, f"lists: expected a table ([lists]), got {kind_of(value)}")
        return out
    for name, items in value.items():
        line = ctx.line(("lists", name))
        out.lines[name] = line
        good: list = []
        for item in as_list(items):
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                ctx.err(line, f"lists.{name}: values must be strings or integers, got {kind_of(item)}")
                continue
            if isinstance(item, str) and item.strip().startswith("!"):
                ctx.err(line, f"lists.{name}: {quote(item)}: values in a list cannot be negated;"
                        f" negate where the list is used (\"!@{name}\")")
                continue
            if isinstance(item, str) and item.strip().startswith("@"):
                ctx.err(line, f"lists.{name}: {quote(item)}: a list cannot refer to another list")
                continue
            good.append(item)
        if len(good) == len(as_list(items)):
            out.values[name] = good
    return out


def expand(value: Any, lists: Lists, parse: Callable[[Any], Any], bad: type[Exception], where: str,
           line: Where, ctx: Collector, *, mixed: bool = False) -> list[tuple[bool, Any]] | None:
    """A field's values -> [(negated, parse(value)), ...] with "@name" spliced in, or None
    when something was wrong (each problem reported to ctx, prefixed by `where`). `parse`
    raises `bad` with a reason. Unless `mixed`, negated and plain values in one field are
    an error (the policy's rule: "any of these, or none of those" has no single meaning)."""
    items = as_list(value)
    if not items:
        ctx.err(line, f"{where}: empty list (leave the field out to match anything)")
        return None
    negs: list[bool] = []
    shown: list[Any] = []
    out: list[tuple[bool, Any]] = []
    ok = True
    for item in items:
        raw = item
        neg = False
        ref = None
        if isinstance(item, str):
            s = item.strip()
            if s.startswith("!"):
                neg, s = True, s[1:].strip()
            if s.startswith("@"):
                ref = s[1:]
            item = s if (neg or ref is not None) else item
        elif isinstance(item, list):
            ctx.err(line, f"{where}: nested arrays are not allowed")
            ok = False
            continue
        negs.append(neg)
        shown.append(raw)
        if ref is not None:
            if ref not in lists.values:
                if ref not in lists.lines:  # else defined, but every value was bad (already reported)
                    ctx.err(line, f"{where}: unknown list \"@{ref}\"{suggest(ref, lists.values)}")
                ok = False
                continue
            expanded = lists.values[ref]
            if not expanded:
                ctx.err(line, f"{where}: list \"@{ref}\" is empty")
                ok = False
                continue
            for v in expanded:
                try:
                    out.append((neg, parse(v)))
                except bad as e:
                    ctx.err(line, f"{where}: @{ref} (line {lists.lines.get(ref, '?')}): {e}")
                    ok = False
        else:
            try:
                out.append((neg, parse(item)))
            except bad as e:
                ctx.err(line, f"{where}: {e}")
                ok = False
    if not mixed and any(negs) and not all(negs):
        plain = [quote(x) for x, n in zip(shown, negs) if not n][:2]
        negd = [quote(x) for x, n in zip(shown, negs) if n][:2]
        ctx.err(line, f"{where}: mixes negated ({', '.join(negd)}) and plain ({', '.join(plain)}) values;"
                " a field matches when any value matches, or, negated, when none does")
        return None
    if not ok or not out:
        return None
    return out
