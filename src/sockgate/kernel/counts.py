"""Kernel counters journaled by their growth: a (key -> u64) hash the kernel adds to, and a
pinned seen-map that user space moves only after the journal has the growth, so a
restarted daemon neither repeats nor skips a count. Shadow differences (shadow.py) and
folded rejections (folds.py) are such counters; UDP flows (flows.py) share the seen-marks.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable

from sockgate.kernel import libbpf


@dataclass(frozen=True)
class Count:
    key: Any
    total: int        # counted so far
    new: int          # not journaled yet
    final: bool       # nothing can add to it any more: remove once journaled


def read(fd: int, key_type) -> list[tuple[Any, int]]:
    """Every (key, count) of a counter map."""
    out = []
    n = ctypes.c_uint64()
    for key in libbpf.map_keys(fd, key_type):
        if libbpf.map_lookup(fd, key, n):
            out.append((key, n.value))
    return out


def sweep(fd: int, seen_fd: int, key_type, final: Callable[[Any], bool]) -> list[Count]:
    """The counts that grew since they were last journaled, and the final ones."""
    out = []
    seen = ctypes.c_uint64()
    for key, total in read(fd, key_type):
        before = seen.value if libbpf.map_lookup(seen_fd, key, seen) else 0
        done = final(key)
        if total > before or done:
            out.append(Count(key, total, total - before, done))
    return out


def mark_journaled(fd: int, seen_fd: int, counts: list) -> None:
    """After the summaries are in the journal: remember how much of each count is journaled
    (`total`), forget final ones."""
    for c in counts:
        if c.final:
            libbpf.map_delete(fd, c.key)
            libbpf.map_delete(seen_fd, c.key)
        else:
            libbpf.map_update(seen_fd, c.key, ctypes.c_uint64(c.total))
