"""One TOML file read for checking: bytes -> text -> document, with every problem
collected as FILE:LINE: message (a check lists them all, not just the first).

    policy = parse(data, file, PolicyError, PolicyErrors, build, "policy")
    # where build(doc, ctx) says ctx.err(("rule", 3, "user"), "...") for each problem
    # and ctx.raise_if_any() when it cannot go on

Nothing but the collector's own errors comes out, whatever the bytes.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable, TypeVar

from sockgate.config.locate import Locator
from sockgate.errors import LocatedError, LocatedErrors

_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")
_LONG_DIGITS = re.compile(r"[0-9_]{4000,}", re.ASCII)

T = TypeVar("T")
Where = int | tuple | None   # a line, a key path for the locator, or nowhere (line 1)


class Collector:
    """The located errors found in one file, raised together (sorted by line, then by
    the order they were found) as `errors([error(message, file, line), ...])`."""

    def __init__(self, file: str, loc: Locator, error: type[LocatedError], errors: type[LocatedErrors]):
        self.file = file
        self.loc = loc
        self.error, self.errors_cls = error, errors
        self.errors: list[tuple[int, str]] = []

    def line(self, where: Where) -> int:
        line = self.loc.line(*where) if isinstance(where, tuple) else where
        return line if line and line >= 1 else 1

    def err(self, where: Where, message: str) -> None:
        self.errors.append((self.line(where), message))

    def raise_if_any(self) -> None:
        if self.errors:
            ordered = sorted(enumerate(self.errors), key=lambda t: (t[1][0], t[0]))
            raise self.errors_cls([self.error(msg, self.file, line) for _, (line, msg) in ordered])


def read(path: str | os.PathLike, error: type[LocatedError], errors: type[LocatedErrors]) -> bytes:
    """A file's bytes; a file that cannot be read is one error without a line."""
    file = os.fspath(path)
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise errors([error(f"cannot read: {e.strerror or e}", file, None)]) from None


def load(data: str | bytes, file: str, error: type[LocatedError],
         errors: type[LocatedErrors]) -> tuple[dict[str, Any] | None, Collector]:
    """(the TOML document or None, the collector holding what was wrong so far)."""
    ctx = Collector(file, Locator(""), error, errors)
    text = _decode(data, ctx)
    if text is None:
        return None, ctx
    ctx.loc = Locator(text)
    return _toml(text, ctx), ctx


def parse(data: str | bytes, file: str, error: type[LocatedError], errors: type[LocatedErrors],
          build: Callable[[dict[str, Any], Collector], T], what: str) -> T:
    """build(document, collector) over a loaded file: every problem, even a bug in build,
    comes out as one `errors` listing them, never as another exception."""
    doc, ctx = load(data, file, error, errors)
    if doc is None:
        ctx.raise_if_any()
    try:
        result = build(doc, ctx)
    except errors:
        raise
    except RecursionError:
        ctx.err(1, f"{what} nested too deeply")
    except Exception as e:  # noqa: BLE001 - a bug here must still come out as a located error
        ctx.err(1, f"internal error while checking the {what}: {type(e).__name__}: {e}")
    ctx.raise_if_any()
    return result


def _decode(data: str | bytes, ctx: Collector) -> str | None:
    if isinstance(data, str):
        return data[1:] if data.startswith("\ufeff") else data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        ctx.err(line, f"not valid UTF-8 (byte offset {e.start})")
        return None


def _toml(text: str, ctx: Collector) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_POS.search(msg)
        if m:
            ctx.err(int(m.group(1)), f"TOML syntax: {msg[: m.start()]} (column {m.group(2)})")
        elif _TOML_END.search(msg):
            ctx.err(ctx.loc.n_lines, f"TOML syntax: {_TOML_END.sub('', msg)} (at end of file)")
        else:
            ctx.err(1, f"TOML syntax: {msg}")
    except RecursionError:
        ctx.err(ctx.loc.deep_nesting_line or 1, "TOML: arrays or tables nested too deeply")
    except ValueError as e:  # e.g. an integer literal too long for int()
        m = _LONG_DIGITS.search(text)
        line = text.count("\n", 0, m.start()) + 1 if m else 1
        ctx.err(line, "TOML: integer with too many digits" if m else f"TOML: bad value: {e}")
    except Exception as e:  # noqa: BLE001 - the contract is: never a traceback
        ctx.err(1, f"TOML: cannot parse: {type(e).__name__}: {e}")
    return None
