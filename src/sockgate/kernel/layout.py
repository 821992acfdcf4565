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
        expr = re.sub(r"/\*.*?\*/", "", expr).strip()
        expr = re.sub(r"\b(\d+)U\b", r"\1", expr)
        expr = re.sub(r"\b(0x[0-9a-fA-F]+)U\b", r"\1", expr)
        for name in sorted(consts, key=len, reverse=True):
            expr = re.sub(rf"\b{name}\b", str(consts[name]), expr)
        return int(eval(expr, {"__builtins__": {}}))  # the header's own arithmetic only

    for m in re.finditer(r"^#define\s+(SG_[A-Z0-9_]+)\s+([^\n(][^\n]*|\([^\n]*\))$", text, re.M):
        name, expr = m.group(1), m.group(2)
        if "(" in name:
            continue
        try:
            consts[name] = value(expr)
        except Exception:
            pass  # function-like macros
    for m in re.finditer(r"enum\s+\w+\s*\{([^}]*)\}", text):
        nxt = 0
        for item in m.group(1).split(","):
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
UID_UNKNOWN = C["SG_UID_UNKNOWN"]
LOCAL, REMOTE = C["SG_LOCAL"], C["SG_REMOTE"]
ALLOWED, REJECTED, AUDIT_REJECTED = C["SG_ALLOWED"], C["SG_REJECTED"], C["SG_AUDIT_REJECTED"]
EMIT_ALLOWED, EMIT_REJECTED = C["SG_EMIT_ALLOWED"], C["SG_EMIT_REJECTED"]
NEED_GROUPS, NEED_PROGRAM, NEED_OWNER = C["SG_NEED_GROUPS"], C["SG_NEED_PROGRAM"], C["SG_NEED_OWNER"]
STAT_DECISIONS, STAT_SELECTED, STAT_DROPPED, STATS = (
    C["SG_STAT_DECISIONS"], C["SG_STAT_SELECTED"], C["SG_STAT_DROPPED"], C["SG_STATS"])
EXITS = C["SG_EXITS"]


def port_index(slot: int, side: int, port: int) -> int:
    return ((slot * PORT_SIDES) + side) * 65536 + port


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
    _fields_ = [("active_slot", c_uint32), ("ringbuf_wakeup_bytes", c_uint32)]


class OwnerKey(Structure):
    _fields_ = [("addr", c_uint8 * 16), ("port", c_uint16), ("pad", c_uint16)]


class Owner(Structure):
    _fields_ = [
        ("tgid", c_uint32),
        ("uid", c_uint32),
        ("gid", c_uint32),
        ("ngroups", c_uint32),
        ("groups", c_uint32 * MAX_GROUPS),
        ("dev", c_uint32),
        ("pad", c_uint32),
        ("ino", c_uint64),
        ("comm", c_char * 16),
        ("exe_name", c_char * 32),
    ]


class Event(Structure):
    _fields_ = [
        ("boot_ns", c_uint64),
        ("ino", c_uint64),
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
        ("protocol", c_uint8),
        ("local_port", c_uint16),
        ("remote_port", c_uint16),
        ("local_addr", c_uint8 * 16),
        ("remote_addr", c_uint8 * 16),
        ("comm", c_char * 16),
        ("exe_name", c_char * 32),
    ]


class Probe(Structure):
    _fields_ = [
        ("exit", c_uint32),
        ("uid", c_uint32),
        ("ngroups", c_uint32),
        ("groups", c_uint32 * MAX_GROUPS),
        ("dev", c_uint32),
        ("pad", c_uint32),
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
    "sg_owner_key": OwnerKey,
    "sg_owner": Owner,
    "sg_event": Event,
    "sg_probe": Probe,
}

assert ctypes.sizeof(Event) % 8 == 0
