"""Python mirror of bpf/sockgate.h.

Constants are read from the header itself (shipped with the package), so there is one
truth for them; the structs are ctypes mirrors, checked against the compiled object's
BTF by tests/kernel/test_layout.py so the two cannot drift.
"""

from __future__ import annotations

import ctypes
import re
from ctypes import Structure, c_char, c_int32, c_uint8, c_uint16, c_uint32, c_uint64
from pathlib import Path

BPF_DIR = Path(__file__).parent / "bpf"
HEADER = BPF_DIR / "sockgate.h"
OBJECT = BPF_DIR / "sockgate.bpf.o"


def _read_constants(text: str) -> dict[str, int]:
    consts: dict[str, int] = {}

    def value(expr: str) -> int:
        expr = re.sub(r"/\*.*?(\*/|$)", "", expr).strip()  # a comment, closed or running on
        expr = re.sub(r"\b(\d+)U?L{0,2}\b", r"\1", expr)
        expr = re.sub(r"\b(0x[0-9a-fA-F]+)U\b", r"\1", expr)
        for name in sorted(consts, key=len, reverse=True):
            expr = re.sub(rf"\b{name}\b", str(consts[name]), expr)
        return int(eval(expr, {"__builtins__": {}}))  # the header's own arithmetic only

    for m in re.finditer(r"^#define\s+(SG_[A-Z0-9_]+)[ \t]+([^\n]+)$", text, re.M):  # not NAME(args)
        name, expr = m.group(1), m.group(2)
        if "(" in name:
            continue
        try:
            consts[name] = value(expr)
        except Exception:
            pass  # function-like macros
    for m in re.finditer(r"enum\s+\w+\s*\{([^}]*)\}", text):
        nxt = 0
        for item in re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S).split(","):
            item = item.strip()
            if not item:
                continue
            if "=" in item:
                name, expr = (s.strip() for s in item.split("=", 1))
                nxt = value(expr)
            else:
                name = item
            consts[name] = nxt
            nxt += 1
    return consts


C = _read_constants(HEADER.read_text())

MAX_RULES = C["SG_MAX_RULES"]
WORDS = C["SG_WORDS"]
SUMMARY_WORDS = C["SG_SUMMARY_WORDS"]
MAX_GROUPS = C["SG_MAX_GROUPS"]
SLOTS = C["SG_SLOTS"]
MAX_BITMAPS = C["SG_MAX_BITMAPS"]
HIT_SLOTS = C["SG_HIT_SLOTS"]
PORT_SIDES = C["SG_PORT_SIDES"]
PROTOS = C["SG_PROTOS"]
UID_UNKNOWN = C["SG_UID_UNKNOWN"]
RULE_LISTEN_REFUSED, RULE_UNPARSED = C["SG_RULE_LISTEN_REFUSED"], C["SG_RULE_UNPARSED"]
EXIT_CONNECT, EXIT_LISTEN, EXIT_ACCEPT = C["SG_EXIT_CONNECT"], C["SG_EXIT_LISTEN"], C["SG_EXIT_ACCEPT"]
EV_FLOW, EV_UNPARSED, EV_RELEASED, EV_SHADOW = (
    C["SG_EV_FLOW"], C["SG_EV_UNPARSED"], C["SG_EV_RELEASED"], C["SG_EV_SHADOW"])
CFG_LISTEN_AT_BIND, CFG_SHADOW = C["SG_CFG_LISTEN_AT_BIND"], C["SG_CFG_SHADOW"]
FOLD_WINDOW_NS = C["SG_FOLD_WINDOW_NS"]
SHADOW_MAX = C["SG_SHADOW_MAX"]
OWNER_BIND_JUDGED, OWNER_REFUSED, OWNER_FLOWS, OWNER_INDEXED = (
    C["SG_OWNER_BIND_JUDGED"], C["SG_OWNER_REFUSED"], C["SG_OWNER_FLOWS"], C["SG_OWNER_INDEXED"])
LOCAL, REMOTE = C["SG_LOCAL"], C["SG_REMOTE"]
ALLOWED, REJECTED, AUDIT_REJECTED = C["SG_ALLOWED"], C["SG_REJECTED"], C["SG_AUDIT_REJECTED"]
EMIT_ALLOWED, EMIT_REJECTED, EMIT_UDP = C["SG_EMIT_ALLOWED"], C["SG_EMIT_REJECTED"], C["SG_EMIT_UDP"]
NEED_GROUPS, NEED_PROGRAM, NEED_OWNER = C["SG_NEED_GROUPS"], C["SG_NEED_PROGRAM"], C["SG_NEED_OWNER"]
(STAT_DECISIONS, STAT_SELECTED, STAT_DROPPED, STAT_UDP_DROPPED, STAT_FLOWS_FULL, STAT_SHADOW_UNKEYED,
 STAT_FOLDED_UNKEYED, STATS) = (
    C["SG_STAT_DECISIONS"], C["SG_STAT_SELECTED"], C["SG_STAT_DROPPED"], C["SG_STAT_UDP_DROPPED"],
    C["SG_STAT_FLOWS_FULL"], C["SG_STAT_SHADOW_UNKEYED"], C["SG_STAT_FOLDED_UNKEYED"], C["SG_STATS"])
EXITS = C["SG_EXITS"]


def port_index(slot: int, side: int, proto: int, port: int) -> int:
    """SG_PORT_INDEX: the protocol class rides along with the port."""
    return (((slot * PORT_SIDES) + side) * PROTOS + proto) * 65536 + port


class Bitmap(Structure):
    _fields_ = [("summary", c_uint64 * SUMMARY_WORDS), ("words", c_uint64 * WORDS)]


class BitmapKey(Structure):
    _fields_ = [("slot", c_uint32), ("index", c_uint32)]


class PolicyHeader(Structure):
    _fields_ = [
        ("nsummary", c_uint32),
        ("flags", c_uint32),
        ("reject_errno", c_int32),
        ("generation", c_uint32),
        ("needs", c_uint32),
        ("user_miss", c_uint32 * EXITS),
        ("program_miss", c_uint32),
        ("group_miss", c_uint32),
        ("group_wild", c_uint32),
        ("group_neg", c_uint32),
        ("fold_rate", c_uint32),
        ("default_verdict", c_uint8 * EXITS),
        ("zero", c_uint8),
    ]


class RuleInfo(Structure):
    _fields_ = [("verdict", c_uint8), ("pad", c_uint8 * 3)]


class IdKey(Structure):
    _fields_ = [("slot", c_uint32), ("id", c_uint32)]


class UserKey(Structure):
    _fields_ = [("slot", c_uint16), ("exit", c_uint16), ("uid", c_uint32)]


class GroupVal(Structure):
    _fields_ = [("alone", c_uint32), ("membership", c_uint32)]


class ProgramKey(Structure):
    _fields_ = [("slot", c_uint32), ("dev", c_uint32), ("ino", c_uint64)]


class AddrKey(Structure):
    _fields_ = [("prefixlen", c_uint32), ("slot", c_uint8), ("side", c_uint8), ("addr", c_uint8 * 16)]


class Config(Structure):
    _fields_ = [("active_slot", c_uint32), ("ringbuf_wakeup_bytes", c_uint32), ("flags", c_uint32),
                ("netns_ino", c_uint32), ("shadow_slot", c_uint32)]


class ShadowKey(Structure):
    _fields_ = [("generation", c_uint32), ("shadow_generation", c_uint32), ("rule", c_int32),
                ("shadow_rule", c_int32), ("exit", c_uint8), ("verdict", c_uint8), ("shadow_verdict", c_uint8),
                ("pad", c_uint8)]


class Rate(Structure):
    _fields_ = [("window_ns", c_uint64), ("events", c_uint64)]


class FoldKey(Structure):
    _fields_ = [("generation", c_uint32), ("uid", c_uint32), ("rule", c_int32), ("exit", c_uint8),
                ("verdict", c_uint8), ("udp", c_uint8), ("pad", c_uint8)]


class OwnerKey(Structure):
    _fields_ = [("netns", c_uint32), ("family", c_uint16), ("port", c_uint16), ("addr", c_uint8 * 16)]


class FlowKey(Structure):
    _fields_ = [("cookie", c_uint64), ("peer", c_uint8 * 16), ("peer_port", c_uint16), ("exit", c_uint8),
                ("pad", c_uint8), ("generation", c_uint32), ("uid", c_uint32), ("pad2", c_uint32)]


class Flow(Structure):
    _fields_ = [("packets", c_uint64), ("ino", c_uint64), ("groups", c_uint64), ("dev", c_uint32),
                ("gid", c_uint32), ("rule", c_int32), ("verdict", c_uint8), ("pad", c_uint8 * 3)]


class Owner(Structure):
    _fields_ = [
        ("tgid", c_uint32),
        ("uid", c_uint32),
        ("gid", c_uint32),
        ("ngroups", c_uint32),
        ("groups", c_uint32 * MAX_GROUPS),
        ("dev", c_uint32),
        ("flags", c_uint32),
        ("ino", c_uint64),
        ("comm", c_char * 16),
        ("exe_name", c_char * 32),
    ]


class Event(Structure):
    _fields_ = [
        ("boot_ns", c_uint64),
        ("ino", c_uint64),
        ("cookie", c_uint64),
        ("dev", c_uint32),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("uid", c_uint32),
        ("euid", c_uint32),
        ("gid", c_uint32),
        ("egid", c_uint32),
        ("rule", c_int32),
        ("generation", c_uint32),
        ("exit", c_uint8),
        ("verdict", c_uint8),
        ("family", c_uint8),
        ("flags", c_uint8),
        ("protocol", c_uint16),
        ("local_port", c_uint16),
        ("remote_port", c_uint16),
        ("pad", c_uint16),
        ("local_addr", c_uint8 * 16),
        ("remote_addr", c_uint8 * 16),
        ("comm", c_char * 16),
        ("exe_name", c_char * 32),
        ("ngroups", c_uint32),
        ("groups", c_uint32 * MAX_GROUPS),
        ("shadow_rule", c_int32),
        ("shadow_generation", c_uint32),
        ("shadow_verdict", c_uint8),
        ("pad2", c_uint8 * 7),
    ]


class Probe(Structure):
    _fields_ = [
        ("exit", c_uint32),
        ("uid", c_uint32),
        ("ngroups", c_uint32),
        ("groups", c_uint32 * MAX_GROUPS),
        ("dev", c_uint32),
        ("protocol", c_uint32),
        ("ino", c_uint64),
        ("local_addr", c_uint8 * 16),
        ("remote_addr", c_uint8 * 16),
        ("local_port", c_uint16),
        ("remote_port", c_uint16),
        ("rule", c_int32),
        ("verdict", c_uint32),
    ]


# C struct name -> mirror, for the BTF cross-check
MIRRORS = {
    "sg_bitmap": Bitmap,
    "sg_bitmap_key": BitmapKey,
    "sg_policy": PolicyHeader,
    "sg_rule": RuleInfo,
    "sg_id_key": IdKey,
    "sg_user_key": UserKey,
    "sg_group_val": GroupVal,
    "sg_program_key": ProgramKey,
    "sg_addr_key": AddrKey,
    "sg_config": Config,
    "sg_shadow_key": ShadowKey,
    "sg_rate": Rate,
    "sg_fold_key": FoldKey,
    "sg_owner_key": OwnerKey,
    "sg_owner": Owner,
    "sg_flow_key": FlowKey,
    "sg_flow": Flow,
    "sg_event": Event,
    "sg_probe": Probe,
}

assert ctypes.sizeof(Event) % 8 == 0


def layout_mismatches(struct_of) -> list[str]:
    """Where the mirrors differ from the object: `struct_of(name)` gives (size, [(member,
    offset)]) or None. Run at every load (a mismatch would decode garbage or write tables
    the kernel reads differently) and by the test against bpftool's independent dump."""
    problems = []
    for cname, mirror in MIRRORS.items():
        found = struct_of(cname)
        if found is None:
            problems.append(f"struct {cname} is missing from the object's BTF")
            continue
        size, members = found
        mine = [(name, getattr(mirror, name).offset) for name, *_ in mirror._fields_]
        if size != ctypes.sizeof(mirror) or members != mine:
            problems.append(f"struct {cname}: object has size {size} {members}, kernel/layout.py has "
                            f"size {ctypes.sizeof(mirror)} {mine}")
    return problems

