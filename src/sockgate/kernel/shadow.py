"""Shadow differences: the counts behind the journal's shadow summaries and `sockgate status`.

With a shadow policy loaded, the kernel decides every call twice and, where the verdicts
differ, counts the call under its pair of deciding rules (struct sg_shadow_key, which also
names both generations); the first call of a pair is journaled whole as a sample. A sweep
reads each pair's growth since the last sweep. A pair is final, and removed once its last
count is journaled, when its generations are no longer the live (active, shadow) pair: the
shadow was turned off, promoted or replaced, or the active policy reloaded (each waits
until no program still runs on the old tables, so nothing can add to it after). What is
journaled already lives in the pinned sg_shadow_seen map (counts.py).
"""

from __future__ import annotations

from sockgate.kernel import counts
from sockgate.kernel import layout as L


def pairs(shadow_fd: int) -> list[tuple[L.ShadowKey, int]]:
    return counts.read(shadow_fd, L.ShadowKey)


def sweep(shadow_fd: int, seen_fd: int, live: tuple[int, int] | None) -> list[counts.Count]:
    """`live`: the (active, shadow) generations deciding now, None without a shadow."""
    return counts.sweep(shadow_fd, seen_fd, L.ShadowKey, lambda k: (k.generation, k.shadow_generation) != live)
