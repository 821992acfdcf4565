"""Folded rejections: the counts behind the journal's rejection summaries.

Past a policy's `fold_rejections` per user and second, the kernel stops sending a user's
rejections one by one and counts them per (generation, user, exit, rule, verdict) in
sg_folded (no user can fill the journal with rejections; every one is still counted). A
sweep reads each key's growth since the last sweep, as for UDP flows (counts.py
keeps the seen-marks); a key of a generation no longer active is final. The per-user
windows (sg_rates) of users quiet for a while are pruned, so the table holds active users.
"""

from __future__ import annotations

import ctypes
import time

from sockgate.kernel import counts
from sockgate.kernel import layout as L
from sockgate.kernel import libbpf

PRUNE_AFTER_NS = 10 * L.FOLD_WINDOW_NS


def sweep(folded_fd: int, seen_fd: int, generation: int) -> list[counts.Count]:
    return counts.sweep(folded_fd, seen_fd, L.FoldKey, lambda k: k.generation != generation)


def prune_rates(rates_fd: int, now_boot_ns: int | None = None) -> int:
    """Forget the windows of users without a rejection for PRUNE_AFTER_NS. Returns how many."""
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_boot_ns is None else now_boot_ns
    r, gone = L.Rate(), 0
    for uid in libbpf.map_keys(rates_fd, ctypes.c_uint32):
        if libbpf.map_lookup(rates_fd, uid, r) and now - r.window_ns > PRUNE_AFTER_NS:
            gone += libbpf.map_delete(rates_fd, uid)
    return gone
