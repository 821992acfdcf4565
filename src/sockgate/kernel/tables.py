"""Write compiled decision tables into the kernel maps, atomically.

The tables live in slots (three: the active policy, a shadow, and one being written). A
new policy is written into a free slot, then `active_slot` flips in one map update; a
decision reads the slot once, so it sees the old tables or the new ones, never a mix.
After the flip we wait until no program can still be running on the old slot, so the next
load may overwrite it.

Shadow mode: a candidate written into a free slot becomes `shadow_slot` (one map update
turns it on); every decision is then made by both, only the active one enforces, and the
kernel counts where they differ (sockgate.kernel.shadow). Promotion makes the shadow slot
the active one in one map update, so it is as atomic as a reload.
"""

from __future__ import annotations

import array
import ctypes
import time

from sockgate.kernel import layout as L
from sockgate.kernel import libbpf
from sockgate.kernel.loader import Gate, ShadowState
from sockgate.policy.compile import Compiled, port_table

BITMAP_CHUNK = 4096

PER_SLOT_HASHES = {
    "sg_bitmaps": L.BitmapKey,
    "sg_users": L.UserKey,
    "sg_groups": L.IdKey,
    "sg_programs": L.ProgramKey,
    "sg_addrs": L.AddrKey,
}


# byte translations for word_summary
_NONZERO = bytes.maketrans(bytes(range(256)), b"\0" + b"\1" * 255)
_DIGIT = bytes.maketrans(b"\0\1", b"01")


def word_summary(raw: bytes) -> int:
    """Bit w set where little-endian u64 word w of `raw` is non-zero. Byte operations on
    the whole bitmap at C speed instead of a Python step per word (a 10k-rule policy has
    ~50k bitmaps of 192 words): non-zero bytes become 1, then byte 0 of every word is OR-ed
    with its other seven (the shifts' spill into bytes 1-7 is dropped by the [::8]).
    First the common case, one search: no 8 zero bytes in a row below the highest non-zero
    word means every word up to it is non-zero."""
    used = (len(raw.rstrip(b"\0")) + 7) >> 3
    if bytes(8) not in raw[:used * 8]:
        return (1 << used) - 1
    x = int.from_bytes(raw.translate(_NONZERO), "little")
    x |= x >> 32
    x |= x >> 16
    x |= x >> 8
    return int(x.to_bytes(len(raw), "little")[::8][::-1].translate(_DIGIT), 2)


def _bitmap_values(part: list[int], nsummary: int):
    """The kernel's bitmaps for Python ints, as one ctypes array built from bytes (no
    per-field ctypes writes): summary words, then the words, then zeros to the full size."""
    nbytes = nsummary * 64 * 8
    summary_bytes = L.Bitmap.summary.size
    pad = bytes(ctypes.sizeof(L.Bitmap) - L.Bitmap.words.offset - nbytes)
    pieces = []
    for bits in part:
        raw = bits.to_bytes(nbytes, "little")
        pieces += (word_summary(raw).to_bytes(summary_bytes, "little"), raw, pad)
    return (L.Bitmap * len(part)).from_buffer_copy(b"".join(pieces))


def _bitmap_count(fd: int, slot: int) -> int:
    """How many bitmaps `slot` holds: they are always indexes 0..n-1 (written in that order,
    removed from the top down), so a binary search over lookups finds n."""
    val = L.Bitmap()
    lo, hi = 0, L.MAX_BITMAPS  # lo present-or-zero, hi absent
    while lo < hi:
        mid = (lo + hi) // 2
        if libbpf.map_lookup(fd, L.BitmapKey(slot=slot, index=mid), val):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _clear_slot(gate: Gate, slot: int, keep_bitmaps: int) -> None:
    """Empty `slot` for a new policy: every key of it, except bitmaps 0..keep_bitmaps-1 that
    the new policy overwrites anyway (the bulk of a big policy: not walked, not deleted)."""
    fd = gate.maps["sg_bitmaps"]
    have = _bitmap_count(fd, slot)
    if have > keep_bitmaps:
        stale = range(have - 1, keep_bitmaps - 1, -1)  # top down: a failure midway keeps 0..n-1 dense
        keys = (L.BitmapKey * len(stale))(*(L.BitmapKey(slot=slot, index=i) for i in stale))
        libbpf.map_delete_batch(fd, keys, len(keys))
    for name, key_type in PER_SLOT_HASHES.items():
        if name == "sg_bitmaps":
            continue
        fd = gate.maps[name]
        stale = [k for k in libbpf.map_keys(fd, key_type) if k.slot == slot]
        keys = (key_type * len(stale))(*stale)
        libbpf.map_delete_batch(fd, keys, len(keys))


def _addr_key(slot: int, side: int, net: int, plen: int) -> L.AddrKey:
    k = L.AddrKey(prefixlen=16 + plen, slot=slot, side=side)
    ctypes.memmove(k.addr, net.to_bytes(16, "big"), 16)
    return k


def _config(gate: Gate) -> L.Config:
    cfg = L.Config()
    if not libbpf.map_lookup(gate.maps["sg_config"], ctypes.c_uint32(0), cfg):
        raise AssertionError("sg_config has no entry 0")
    return cfg


def _free_slot(cfg: L.Config) -> int:
    """The lowest slot no decision reads: neither the active one nor the shadow's."""
    busy = {cfg.active_slot} | ({cfg.shadow_slot} if cfg.flags & L.CFG_SHADOW else set())
    return min(set(range(L.SLOTS)) - busy)


def install(gate: Gate, c: Compiled, *, rule_names: list[str] | None = None, source: str = "",
            mode: str = "enforce", audit_levels: list[str] | None = None, shadow: bool = False,
            text: str = "") -> dict:
    """Write `c` into a free slot and make it active (or, with `shadow`, the shadow: decided
    beside the active policy, never enforced; `text` is the policy file for a promotion).
    Returns timing and counts."""
    t0 = time.perf_counter()
    m = gate.maps
    cfg = _config(gate)
    slot = _free_slot(cfg)
    generation = gate.state.last_generation + 1

    # nobody reads the inactive slot once programs that started before the last flip are done
    gate.wait_for_programs()
    nsum = c.nsummary
    n = len(c.bitmaps)
    _clear_slot(gate, slot, keep_bitmaps=n)

    # in chunks, in index order: 2 KiB per bitmap, ~100 MiB of buffers at once otherwise
    for start in range(0, n, BITMAP_CHUNK):
        part = c.bitmaps[start:start + BITMAP_CHUNK]
        keys = (L.BitmapKey * len(part))(*(L.BitmapKey(slot=slot, index=start + i) for i in range(len(part))))
        libbpf.map_update_batch(m["sg_bitmaps"], keys, _bitmap_values(part, nsum), len(part))

    def put_all(name, items, key_type, val_type):
        items = list(items)
        if not items:
            return
        ks = (key_type * len(items))()
        vs = (val_type * len(items))()
        for i, (k, v) in enumerate(items):
            ks[i], vs[i] = k, v
        libbpf.map_update_batch(m[name], ks, vs, len(items))

    put_all("sg_users", ((L.UserKey(slot, e, uid), ctypes.c_uint32(idx)) for (e, uid), idx in c.users.items()),
            L.UserKey, ctypes.c_uint32)
    put_all("sg_groups", ((L.IdKey(slot, gid), L.GroupVal(a, mem)) for gid, (a, mem) in c.groups.items()),
            L.IdKey, L.GroupVal)
    put_all("sg_programs", ((L.ProgramKey(slot=slot, dev=dev, ino=ino), ctypes.c_uint32(idx))
                            for (dev, ino), idx in c.programs.items()), L.ProgramKey, ctypes.c_uint32)
    for side in (L.LOCAL, L.REMOTE):
        put_all("sg_addrs", ((_addr_key(slot, side, net, plen), ctypes.c_uint32(idx))
                             for (net, plen), idx in c.addrs[side].items()), L.AddrKey, ctypes.c_uint32)
        for proto in range(L.PROTOS):  # arrays built in C, not element by element
            base = L.port_index(slot, side, proto, 0)
            ks = (ctypes.c_uint32 * 65536).from_buffer(array.array("I", range(base, base + 65536)))
            vs = (ctypes.c_uint32 * 65536).from_buffer(array.array("I", port_table(c.ports[side][proto])))
            libbpf.map_update_batch(m["sg_ports"], ks, vs, 65536)

    nr = max(c.nrules, 1)
    ks = (ctypes.c_uint32 * nr)(*range(slot * L.MAX_RULES, slot * L.MAX_RULES + nr))
    vs = (L.RuleInfo * nr)()
    for i, v in enumerate(c.verdicts):
        vs[i].verdict = v
    libbpf.map_update_batch(m["sg_rules"], ks, vs, nr)

    # fresh hit counters for the new slot
    counters = [slot * L.HIT_SLOTS + i for i in [*range(c.nrules), *(L.MAX_RULES + e for e in range(L.EXITS))]]
    zeros = (ctypes.c_uint64 * (libbpf.num_possible_cpus() * len(counters)))()
    libbpf.map_update_batch(m["sg_hits"], (ctypes.c_uint32 * len(counters))(*counters), zeros, len(counters))

    hdr = L.PolicyHeader(
        nsummary=nsum,
        flags=(L.EMIT_ALLOWED if c.emit_allowed else 0) | (L.EMIT_REJECTED if c.emit_rejected else 0)
        | (L.EMIT_UDP if c.emit_udp else 0),
        reject_errno=c.reject_errno,
        generation=generation,
        needs=(L.NEED_GROUPS if c.needs_groups else 0) | (L.NEED_PROGRAM if c.needs_program else 0)
        | (L.NEED_OWNER if c.needs_owner else 0),
        program_miss=c.program_miss,
        group_miss=c.group_miss,
        group_wild=c.group_wild,
        group_neg=c.group_neg,
        fold_rate=c.fold_rate,
    )
    for e in range(L.EXITS):
        hdr.user_miss[e] = c.user_miss[e]
        hdr.default_verdict[e] = c.default_verdicts[e]
    libbpf.map_update(m["sg_policy"], ctypes.c_uint32(slot), hdr)

    # the flip: one map update makes the whole new slot visible
    names = list(rule_names if rule_names is not None else [r.name for r in c.rules])
    st = gate.state
    if shadow:
        cfg.shadow_slot, cfg.flags = slot, cfg.flags | L.CFG_SHADOW
        st.shadow = ShadowState(slot=slot, generation=generation, policy_source=source, policy_digest=c.digest,
                                rule_names=names, mode=mode, since_ns=time.time_ns(), policy_text=text)
    else:
        cfg.active_slot = slot
        st.active_slot, st.generation = slot, generation
        st.policy_digest, st.policy_source, st.rule_names = c.digest, source, names
        st.errno, st.mode, st.audit_levels = c.reject_errno, mode, list(audit_levels or [])
    libbpf.map_update(m["sg_config"], ctypes.c_uint32(0), cfg)
    gate.wait_for_programs()
    gate.save_state()
    return {"slot": slot, "generation": generation, "bitmaps": n, "rules": c.nrules,
            "seconds": time.perf_counter() - t0}


def shadow_off(gate: Gate) -> ShadowState | None:
    """Stop deciding with the shadow (one map update). Returns what it was."""
    cfg = _config(gate)
    was = gate.state.shadow
    cfg.flags &= ~L.CFG_SHADOW
    libbpf.map_update(gate.maps["sg_config"], ctypes.c_uint32(0), cfg)
    gate.wait_for_programs()
    gate.state.shadow = None
    gate.save_state()
    return was


def promote(gate: Gate, *, errno: int, audit_levels: list[str]) -> ShadowState:
    """The shadow becomes the active policy in one map update (the flip of a reload);
    `errno` and `audit_levels` are its compiled header's, for the state."""
    st, cfg = gate.state, _config(gate)
    sh = st.shadow
    if sh is None or not cfg.flags & L.CFG_SHADOW or cfg.shadow_slot != sh.slot:
        raise AssertionError("no shadow policy is loaded")
    cfg.active_slot, cfg.flags = sh.slot, cfg.flags & ~L.CFG_SHADOW
    libbpf.map_update(gate.maps["sg_config"], ctypes.c_uint32(0), cfg)
    gate.wait_for_programs()
    st.active_slot, st.generation = sh.slot, sh.generation
    st.policy_digest, st.policy_source, st.rule_names, st.mode = (sh.policy_digest, sh.policy_source,
                                                                 list(sh.rule_names), sh.mode)
    st.errno, st.audit_levels, st.shadow = errno, list(audit_levels), None
    gate.save_state()
    return sh
