"""Shadow differences: the counts behind the journal's shadow summaries and `sockgate status`.

With a shadow policy loaded, the kernel decides every call twice and, where the verdicts
differ, counts the call under its pair of deciding rules (struct sg_shadow_key, which also
names both generations); the first call of a pair is journaled whole as a sample. A sweep
reads each pair's growth since the last sweep. A pair is final, and removed once its last
count is journaled, when its generations are no longer the live (active, shadow) pair: the
shadow was turned off, promoted or replaced, or the active policy reloaded (each waits
until no program still runs on the old tables, so nothing can add to it after). What is
journaled already lives in the pinned sg_shadow_seen map (flows.mark_journaled).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from sockgate.kernel import layout as L
from sockgate.kernel import libbpf


@dataclass(frozen=True)
class ShadowCount:
    key: L.ShadowKey
    total: int        # calls of this pair so far
    new: int          # calls not journaled yet
    final: bool       # its generations are no longer live: remove once journaled


def counts(shadow_fd: int) -> list[tuple[L.ShadowKey, int]]:
    out = []
    n = ctypes.c_uint64()
    for key in libbpf.map_keys(shadow_fd, L.ShadowKey):
        if libbpf.map_lookup(shadow_fd, key, n):
            out.append((key, n.value))
    return out


def sweep(shadow_fd: int, seen_fd: int, live: tuple[int, int] | None) -> list[ShadowCount]:
    """`live`: the (active, shadow) generations deciding now, None without a shadow."""
    out = []
    seen = ctypes.c_uint64()
    for key, total in counts(shadow_fd):
        before = seen.value if libbpf.map_lookup(seen_fd, key, seen) else 0
        final = (key.generation, key.shadow_generation) != live
        if total > before or final:
            out.append(ShadowCount(key, total, total - before, final))
    return out
