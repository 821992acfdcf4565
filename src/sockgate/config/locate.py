"""Find the line of a key in a TOML file's text.

tomllib gives values but no positions, so the parsers (policy, alert rules) ask this small
scanner where things are, by key path: ("mode",), ("defaults", "connect"), ("rule", 3)
for the 4th ``[[rule]]``, ("rule", 3, "user") for a key in it, ("alert", 0, "match",
"user") for a key of an ``[alert.match]`` table that belongs to the first ``[[alert]]``.
A key whose value is a multi-line array is located at the key's own line; a key inside
an inline table at the line of the table's key.

The scanner understands just enough TOML to not be fooled: basic and literal strings
(single- and multi-line), comments, and brackets spanning lines. It never raises; a
thing it cannot find is None (`find`) or the line of the nearest enclosing thing it
found (`line`).
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


Path = tuple  # of str keys and int array indexes


class Locator:
    """Line numbers (1-based) of the tables, array-of-table entries and keys of a file."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.n_lines = max(1, len(self.lines) - (1 if text.endswith("\n") else 0))
        self._at: dict[Path, int] = {}        # path -> first line that names it
        self._arrays: dict[Path, int] = {}    # [[path]] -> index of its last element
        self._depth_exceeded: int | None = None
        try:
            self._scan()
        except Exception:  # noqa: BLE001 - a locator must never break error reporting
            pass

    # -- queries ------------------------------------------------------------

    def find(self, *path) -> int | None:
        """The line of exactly this path, or None."""
        return self._at.get(tuple(path))

    def line(self, *path) -> int | None:
        """The line of this path, else of its nearest enclosing path that was found."""
        p = tuple(path)
        while p:
            if p in self._at:
                return self._at[p]
            p = p[:-1]
        return None

    @property
    def deep_nesting_line(self) -> int | None:
        """First line where brackets nest deeper than anyone would write by hand."""
        return self._depth_exceeded

    # -- scanner ------------------------------------------------------------

    def _scan(self) -> None:
        depth = 0               # open [ and { across lines
        ml: str | None = None   # open multi-line string delimiter
        section: Path = ()      # the table the following keys belong to
        for lineno, line in enumerate(self.lines, start=1):
            i = 0
            n = len(line)
            if ml is None and depth == 0:
                stripped = line.lstrip(" \t")
                off = n - len(stripped)
                if stripped.startswith("["):
                    section = self._header(stripped, lineno)
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

    def _header(self, stripped: str, lineno: int) -> Path:
        array = stripped.startswith("[[")
        parsed = _parse_key(stripped, 2 if array else 1)
        if not parsed:
            return ()
        # [a.b] after [[a]] is a table inside a's last element: resolve through arrays
        parts = parsed[0]
        path: Path = ()
        for k, part in enumerate(parts):
            path += (part,)
            self._at.setdefault(path, lineno)
            if path in self._arrays and k < len(parts) - 1:
                path += (self._arrays[path],)
        if array:
            idx = self._arrays.get(path, -1) + 1
            self._arrays[path] = idx
            path += (idx,)
        self._at.setdefault(path, lineno)
        return path

    def _record(self, section: Path, parts: list[str], lineno: int) -> None:
        path = section
        for part in parts:
            path += (part,)
            self._at.setdefault(path, lineno)
