"""Find the line of a key in a policy file's text.

tomllib gives values but no positions, so the parser asks this small scanner where
things are: top-level keys, the header of a table (``[defaults]``) or of the i-th
``[[rule]]``, and the line where a key is assigned inside one of those blocks. A key
whose value is a multi-line array is located at the key's own line.

The scanner understands just enough TOML to not be fooled: basic and literal strings
(single- and multi-line), comments, and brackets spanning lines. It never raises; a
thing it cannot find is None and the caller falls back to an enclosing line.
"""

from __future__ import annotations

import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _parse_key(s: str, i: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) key starting at s[i]; return (parts, index after it)."""
    parts: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return None
        c = s[i]
        if c == '"':
            j = i + 1
            buf = []
            while j < n and s[j] != '"':
                if s[j] == "\\" and j + 1 < n:
                    buf.append(s[j : j + 2])
                    j += 2
                    continue
                buf.append(s[j])
                j += 1
            if j >= n:
                return None
            raw = "".join(buf)
            try:
                raw = raw.encode("latin-1", "backslashreplace").decode("unicode_escape")
            except Exception:  # noqa: BLE001 - best effort only
                pass
            parts.append(raw)
            i = j + 1
        elif c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            parts.append(s[i + 1 : j])
            i = j + 1
        else:
            m = _BARE_KEY.match(s, i)
            if not m:
                return None
            parts.append(m.group(0))
            i = m.end()
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        return parts, i


class Locator:
    """Line numbers (1-based) of top-level keys, tables, rules and their keys."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.n_lines = max(1, len(self.lines) - (1 if text.endswith("\n") else 0))
        self._top: dict[str, int] = {}              # top-level key or table name -> line
        self._tables: dict[str, int] = {}           # [name] header -> line
        self._table_keys: dict[str, dict[str, int]] = {}
        self._rules: list[int] = []                 # [[rule]] header lines
        self._rule_keys: list[dict[str, int]] = []
        self._depth_exceeded: int | None = None
        try:
            self._scan()
        except Exception:  # noqa: BLE001 - a locator must never break error reporting
            pass

    # -- queries ------------------------------------------------------------

    def top(self, key: str) -> int | None:
        return self._top.get(key)

    def table(self, name: str) -> int | None:
        return self._tables.get(name)

    def table_key(self, name: str, key: str) -> int | None:
        line = self._table_keys.get(name, {}).get(key)
        if line is None:
            line = self._top.get(f"{name}.{key}")  # dotted key at top level: defaults.connect = ...
        return line

    def rule(self, i: int) -> int | None:
        return self._rules[i] if 0 <= i < len(self._rules) else None

    def rule_key(self, i: int, key: str) -> int | None:
        if 0 <= i < len(self._rule_keys):
            return self._rule_keys[i].get(key)
        return None

    @property
    def deep_nesting_line(self) -> int | None:
        """First line where brackets nest deeper than anyone would write by hand."""
        return self._depth_exceeded

    # -- scanner ------------------------------------------------------------

    def _scan(self) -> None:
        depth = 0               # open [ and { across lines
        ml: str | None = None   # open multi-line string delimiter
        section: tuple[str, int] | None = None  # ("table", name) / ("rule", i) / None = top
        for lineno, line in enumerate(self.lines, start=1):
            i = 0
            n = len(line)
            if ml is None and depth == 0:
                stripped = line.lstrip(" \t")
                off = n - len(stripped)
                if stripped.startswith("["):
                    section = self._header(stripped, lineno, section)
                    continue
                key = _parse_key(line, off) if stripped and stripped[0] not in "#" else None
                if key and key[1] < n and line[key[1]] == "=":
                    self._record(section, key[0], lineno)
                    i = key[1] + 1
                else:
                    continue
            # scan the rest of the line for strings, comments and brackets
            while i < n:
                if ml is not None:
                    j = line.find(ml, i)
                    if j < 0:
                        break
                    # """" or """"" may close with quotes inside; skip extra quotes
                    j += 3
                    while j < n and line[j] == ml[0]:
                        j += 1
                    ml = None
                    i = j
                    continue
                c = line[i]
                if c == "#":
                    break
                if c in "\"'":
                    if line.startswith(c * 3, i):
                        ml = c * 3
                        i += 3
                        continue
                    j = i + 1
                    while j < n and line[j] != c:
                        if c == '"' and line[j] == "\\":
                            j += 1
                        j += 1
                    i = j + 1
                    continue
                if c in "[{":
                    depth += 1
                    if depth > 100 and self._depth_exceeded is None:
                        self._depth_exceeded = lineno
                elif c in "]}":
                    depth = max(0, depth - 1)
                i += 1

    def _header(self, stripped: str, lineno: int, section):
        array = stripped.startswith("[[")
        parsed = _parse_key(stripped, 2 if array else 1)
        if not parsed:
            return None
        parts, _ = parsed
        head = parts[0]
        self._top.setdefault(head, lineno)
        if head == "rule" and len(parts) == 1 and array:
            self._rules.append(lineno)
            self._rule_keys.append({})
            return ("rule", len(self._rules) - 1)
        if head == "rule" and len(parts) > 1 and self._rules:
            # [rule.x] / [[rule.x]] belongs to the last rule
            self._rule_keys[-1].setdefault(parts[1], lineno)
            return ("rule-sub", len(self._rules) - 1)
        if len(parts) == 1:
            self._tables.setdefault(head, lineno)
            self._table_keys.setdefault(head, {})
            return ("table", head)
        # [defaults.x] : a nested table, the key is x inside defaults
        self._table_keys.setdefault(head, {}).setdefault(parts[1], lineno)
        self._tables.setdefault(head, lineno)
        return ("table-sub", head)

    def _record(self, section, parts: list[str], lineno: int) -> None:
        if section is None:
            self._top.setdefault(parts[0], lineno)
            if len(parts) > 1:
                self._top.setdefault(f"{parts[0]}.{parts[1]}", lineno)
        elif section[0] == "rule":
            self._rule_keys[section[1]].setdefault(parts[0], lineno)
        elif section[0] == "table":
            self._table_keys[section[1]].setdefault(parts[0], lineno)
        # keys inside sub-tables: the sub-table's header line already stands for them
