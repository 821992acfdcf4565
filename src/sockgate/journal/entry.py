"""The journal entry: one SK-style record (IBM i QAUDJRN journal code T, entry type SK),
or one of sockgate's own records (journal code "SG").

Kernel decisions (source "kernel"), imported IBM i entries (source "ibmi") and sockgate's
own records (source "sockgate") all share this one shape, so show/export/monitor treat
them alike. Fields that do not apply stay None. Source-specific extras (IBM i job name,
socket descriptor, TLS version, ...) live in `extra`, a flat str->scalar dict.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Code(str, enum.Enum):
    SOCKET = "SK"    # a socket entry (kernel decision or imported IBM i SK)
    SOCKGATE = "SG"  # sockgate's own record (policy load, start/stop, gap, ...)


class EntryType(str, enum.Enum):
    # SK entry types. IBM i's codes (ibmi-sk.md 1.1) plus sockgate's L (listen).
    ACCEPT = "A"
    CONNECT = "C"
    LISTEN = "L"
    DHCP_ASSIGNED = "D"
    FILTERED_MAIL = "F"
    UDP_INBOUND = "I"
    UDP_OUTBOUND = "O"
    PORT_UNAVAILABLE = "P"
    REJECT_MAIL = "R"
    SECURE_OK = "S"
    DHCP_NOT_ASSIGNED = "U"
    SECURE_FAILED = "X"
    # sockgate's own records (code SG)
    POLICY_LOADED = "policy"      # extra: digest, rules, source
    DAEMON_START = "start"
    DAEMON_STOP = "stop"
    DETACHED = "detach"           # programs detached / unloaded
    GAP = "gap"                   # extra: dropped (kernel events lost between two seqs)
    INTERRUPTED = "interrupted"   # previous daemon run ended without a clean stop
    IMPORT = "import"             # an IBM i import batch: extra: file, entries, systems
    ROTATE = "rotate"             # receiver boundary: extra: receiver (the one attached next)
    CUT = "cut"                   # declared cut: old receivers deleted by retention;
                                  # extra: receivers, through_seq, hash (chain head at the cut)


SK_TYPES = frozenset(t for t in EntryType if len(t.value) == 1)


class Outcome(str, enum.Enum):
    ALLOWED = "allowed"
    REJECTED = "rejected"
    AUDIT_REJECTED = "audit-rejected"   # a reject rule in audit mode: journaled, not enforced
    FAILED = "failed"                   # IBM i P/X/R/U: the operation failed


class Source(str, enum.Enum):
    KERNEL = "kernel"
    IBMI = "ibmi"
    SOCKGATE = "sockgate"


@dataclass
class Entry:
    """One journal entry. `seq` is assigned by the journal on append (None before)."""

    code: Code
    type: EntryType
    ts_ns: int                          # UTC, nanoseconds since the epoch
    source: Source
    host: str = ""
    outcome: Outcome | None = None
    rule: str | None = None             # deciding rule name ("default:<exit>" when none matched)
    uid: int | None = None
    user: str | None = None
    gid: int | None = None
    pid: int | None = None
    program: str | None = None          # executable path, or IBM i LIB/PGM
    family: str | None = None           # "ipv4" | "ipv6"
    local_addr: str | None = None
    local_port: int | None = None
    remote_addr: str | None = None
    remote_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Identity unique within the journal when set (IBM i: "SYSTEM:seq"). Appending an
    # entry whose ident is already journaled adds nothing, so re-imports are idempotent.
    ident: str | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("code", "type", "source", "outcome"):
            v = d[k]
            d[k] = v.value if isinstance(v, enum.Enum) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entry":
        d = dict(d)
        d["code"] = Code(d["code"])
        d["type"] = EntryType(d["type"])
        d["source"] = Source(d["source"])
        if d.get("outcome") is not None:
            d["outcome"] = Outcome(d["outcome"])
        d.setdefault("extra", {})
        return cls(**d)
