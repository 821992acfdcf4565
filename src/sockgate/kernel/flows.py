"""UDP flows: the counts behind IBM i-style O and I summary entries.

The kernel decides the first datagram of a (socket, peer, direction, sender, policy
generation) flow and journals it; later datagrams of the flow only add to its `packets`
counter (struct sg_flow). A sweep reads every flow's count growth since the last sweep.
A flow is final, and removed after its last count is taken, when nothing can add to it any
more: its socket was released (the kernel reports that in the ring buffer), or its policy
generation is no longer active (a swap waits until no program still runs on the old one).
What is already journaled lives in the pinned sg_flows_seen map, updated only after the
summary entries are written, so a restart neither repeats nor skips a count.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from sockgate.kernel import layout as L
from sockgate.kernel import libbpf


@dataclass(frozen=True)
class FlowCount:
    key: L.FlowKey
    flow: L.Flow
    new: int          # packets not journaled yet
    final: bool       # nothing can add to it any more: remove once journaled

    @property
    def total(self) -> int:
        return self.flow.packets


def sweep(flows_fd: int, seen_fd: int, generation: int, released: set[int]) -> list[FlowCount]:
    out = []
    seen = ctypes.c_uint64()
    for key in libbpf.map_keys(flows_fd, L.FlowKey):
        flow = L.Flow()
        if not libbpf.map_lookup(flows_fd, key, flow):
            continue
        before = seen.value if libbpf.map_lookup(seen_fd, key, seen) else 0
        final = key.cookie in released or key.generation != generation
        if flow.packets > before or final:
            out.append(FlowCount(key, flow, flow.packets - before, final))
    return out
