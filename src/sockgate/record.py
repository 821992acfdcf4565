"""The shared vocabulary at the bottom of the package: the journal entry and what its
fields mean (entry types with their names and aliases, outcome, source), address text
and sortable address keys, endpoint text, port ranges, default paths, and the one time
grammar every command uses.

Nothing here imports the rest of sockgate (except errors), so the monitor, the IBM i
parsers and `monitor --check` can use it without the journal's compiled C writer.

Times: every point in time is nanoseconds since the epoch (UTC). A time the user writes
without a zone ("2026-05-01T10:00:00", "2026-05-01") is this machine's local time (TZ),
as journalctl's --since reads it; "Z" or an offset ("+02:00") is honoured. A duration
("90s", "15m", "1h30m", "7d") given where a time is expected means "that long ago".
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

# ----------------------------------------------------------------------------- default paths

JOURNAL_DIR = "/var/lib/sockgate/journal"
MONITOR_STATE_DIR = "/var/lib/sockgate/monitor"
POLICY_FILE = "/etc/sockgate/policy.toml"
ALERTS_FILE = "/etc/sockgate/alerts.toml"
FLEET_DIR = "/etc/sockgate/fleet"          # enrolment, trusted policy keys, applied-bundle state


# ----------------------------------------------------------------------------- enums

class _Parse:
    """`Kind.parse(text)`: a member by its value, its name ("audit-rejected",
    "AUDIT_REJECTED") or an alias, case-insensitive. Raises ValueError."""

    @classmethod
    def parse(cls, text: Any) -> Any:
        if isinstance(text, cls):
            return text
        lookup = cls.__dict__.get("_lookup")
        if lookup is None:
            lookup = {}
            for m in cls:  # type: ignore[attr-defined]
                for k in (m.value, m.name, *getattr(m, "aliases", ())):
                    lookup.setdefault(_norm(k), m)
            cls._lookup = lookup  # type: ignore[attr-defined]
        m = lookup.get(_norm(str(getattr(text, "value", text))))
        if m is None:
            raise ValueError(f"unknown {cls.__name__} {text!r}")
        return m


def _norm(k: str) -> str:
    return k.strip().lower().replace("_", "-")


class Code(_Parse, str, enum.Enum):
    SOCKET = "SK"    # a socket entry (kernel decision or imported IBM i SK)
    SOCKGATE = "SG"  # sockgate's own record (policy load, start/stop, gap, ...)


class EntryType(_Parse, str, enum.Enum):
    """The one table of entry types. Each member carries:
    alias     the lower-case name alert rules and templates use ({type_name})
    title     what show, export (CEF name, summaries) and syslog print
    ibm_text  IBM i's description of an SK entry type (import summaries)"""

    alias: str
    title: str
    ibm_text: str
    aliases: tuple[str, ...]

    def __new__(cls, value: str, alias: str, title: str, ibm_text: str = "", *more: str):
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.alias, obj.title, obj.ibm_text = alias, title, ibm_text
        obj.aliases = (alias, *more)
        return obj

    # SK entry types: IBM i's codes (QAUDJRN SK) plus sockgate's L (listen).
    ACCEPT = "A", "accept", "Accept", "Accept"
    CONNECT = "C", "connect", "Connect", "Connect"
    LISTEN = "L", "listen", "Listen"
    DHCP_ASSIGNED = "D", "dhcp-assigned", "DHCP address assigned", "DHCP address assigned"
    FILTERED_MAIL = "F", "filtered-mail", "Filtered mail", "Filtered mail"
    UDP_INBOUND = "I", "udp-inbound", "Inbound UDP", "Inbound UDP traffic"
    UDP_OUTBOUND = "O", "udp-outbound", "Outbound UDP", "Outbound UDP traffic"
    PORT_UNAVAILABLE = "P", "port-unavailable", "Port unavailable", "Port unavailable"
    REJECT_MAIL = "R", "reject-mail", "Reject mail", "Reject mail"
    SECURE_OK = "S", "secure-ok", "Secure connection", "Successful secure connection"
    DHCP_NOT_ASSIGNED = "U", "dhcp-not-assigned", "DHCP address not assigned", "DHCP address not assigned"
    SECURE_FAILED = "X", "secure-failed", "Secure connection failed", "Failed System SSL/TLS connection", \
        "tls-failed"
    # sockgate's own records (code SG); their alias is their value
    POLICY_LOADED = "policy", "policy", "Policy loaded"        # extra: digest, rules, source
    DAEMON_START = "start", "start", "Daemon start"
    DAEMON_STOP = "stop", "stop", "Daemon stop"
    DETACHED = "detach", "detach", "Programs detached"         # programs detached / unloaded
    GAP = "gap", "gap", "Kernel events lost"                   # extra: dropped (lost between two seqs)
    INTERRUPTED = "interrupted", "interrupted", "Journal writer interrupted"  # no clean stop before
    IMPORT = "import", "import", "IBM i import"                # extra: file, entries, systems
    ROTATE = "rotate", "rotate", "Receiver rotated"            # extra: receiver (attached next)
    SHADOW = "shadow", "shadow", "Shadow policy differs"      # extra: shadow (sample|summary), exit,
                                                               # shadow_outcome, shadow_rule, count
    CUT = "cut", "cut", "Receivers deleted by retention"       # declared cut: extra: receivers,
                                                               # through_seq, hash (head at the cut)

    @property
    def is_socket(self) -> bool:
        """An SK entry type (one letter), not one of sockgate's own records."""
        return len(self.value) == 1

    @property
    def outbound(self) -> bool:
        """Connect and outbound UDP go from the local socket to the remote one."""
        return self.value in ("C", "O")


SK_TYPES = frozenset(t for t in EntryType if t.is_socket)


class Outcome(_Parse, str, enum.Enum):
    ALLOWED = "allowed"
    REJECTED = "rejected"
    AUDIT_REJECTED = "audit-rejected"   # a reject rule in audit mode: journaled, not enforced
    FAILED = "failed"                   # IBM i P/X/R/U: the operation failed


class Source(_Parse, str, enum.Enum):
    KERNEL = "kernel"
    IBMI = "ibmi"
    SOCKGATE = "sockgate"


def value_of(x: Any) -> Any:
    """An enum's value, anything else as it is."""
    return x.value if isinstance(x, enum.Enum) else x


# ----------------------------------------------------------------------------- the entry

@dataclass
class Entry:
    """One journal entry: an SK-style record (IBM i QAUDJRN journal code T, entry type SK)
    or one of sockgate's own records (code SG). Kernel decisions, imported IBM i entries
    and sockgate's records share this one shape; fields that do not apply stay None.
    Source-specific extras (IBM i job, socket descriptor, TLS version, ...) live in
    `extra`, a flat str->scalar dict. `seq` is assigned by the journal on append."""

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
            d[k] = value_of(d[k])
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


# ----------------------------------------------------------------------------- addresses

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"   # ::ffff:0:0/96, how IPv4 sits in a 16-byte address


def unmap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it stands for."""
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def unmap_network(net: Network) -> Network:
    """::ffff:a.b.c.d/N (N >= 96) as the IPv4 network a.b.c.d/(N-96)."""
    if net.version == 6 and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def ipv4_packed(addr: str) -> bytes | None:
    """The 4 bytes of an IPv4 address written in its one canonical spelling (dotted
    decimal, no leading zeros: what ipaddress reads as that address), else None. A check in
    C before ipaddress, for the common case of many distinct addresses."""
    try:
        b = socket.inet_pton(socket.AF_INET, addr)
    except (OSError, ValueError):
        return None
    return b if socket.inet_ntop(socket.AF_INET, b) == addr else None


@functools.lru_cache(maxsize=1 << 16)
def addr_key(addr: str | None) -> bytes | None:
    """16 bytes that sort like the address, IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d,
    so one key compares both spellings; None if not an address. Cached: the same few
    addresses recur across entries and rules."""
    if not addr:
        return None
    try:
        if ":" in addr:
            return socket.inet_pton(socket.AF_INET6, addr.split("%", 1)[0])
        return MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, addr)
    except (OSError, ValueError):
        return None


def key_addr(key: bytes | None) -> str | None:
    """The text form of an addr_key (any 16-byte address, e.g. the kernel's), IPv4 for
    ::ffff:a.b.c.d."""
    if key is None:
        return None
    key = bytes(key)
    if key[:12] == MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, key[12:])
    return socket.inet_ntop(socket.AF_INET6, key)


# One meaning for an IPv6 network next to IPv4 (policy, monitor and journal filters alike):
# IPv4 addresses, also written v4-mapped (::ffff:a.b.c.d), are matched by IPv4 networks
# and by v4-mapped ones (::ffff:10.0.0.0/104 is 10.0.0.0/8); any other IPv6 network holds
# no IPv4 address, though ::/0 contains ::ffff:0:0/96 on paper. "::/0" is every IPv6
# address; every address at all is ["0.0.0.0/0", "::/0"] (or no address condition).
V4_MAPPED_NET = ipaddress.IPv6Network("::ffff:0:0/96")


def network_contains(net: Network, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Is `addr` in `net`, by the rule above."""
    net, addr = unmap_network(net), unmap(addr)
    return net.version == addr.version and addr in net


def net_ranges(net: Network) -> list[tuple[bytes, bytes]]:
    """The spans of addr_key that `net` holds, by the rule above (two spans for an IPv6
    network around the v4-mapped block, one otherwise)."""
    net = unmap_network(net)
    lo, hi = addr_key(str(net.network_address)), addr_key(str(net.broadcast_address))
    assert lo is not None and hi is not None
    if net.version == 6 and V4_MAPPED_NET.subnet_of(net):
        below = (int(V4_MAPPED_NET.network_address) - 1).to_bytes(16, "big")
        above = (int(V4_MAPPED_NET.broadcast_address) + 1).to_bytes(16, "big")
        return [(lo, below), (above, hi)]
    return [(lo, hi)]


def endpoint(addr: str | None, port: int | None) -> str | None:
    """ADDR:PORT, [V6]:PORT, ADDR alone, *:PORT; None when there is neither."""
    if not addr and port is None:
        return None
    a = addr or "*"
    if ":" in a:
        a = f"[{a}]"
    return a if port is None else f"{a}:{port}"


RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", re.ASCII)


def parse_range(value: Any, what: str = "port", hi: int = 65535) -> tuple[int, int]:
    """A number or an inclusive range "N-M" (an integer or a string) within 0..hi, such
    as a port ("22", "1024-65535"). Raises ValueError saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a {what} or range (N or N-M), got {kind_of(value)}")
    if isinstance(value, int):
        a = b = value
    else:
        m = RANGE.fullmatch(value) if len(value) < 64 else None
        if not m:
            raise ValueError(f"{quote(value)} is not a {what} or range (N or N-M)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
    for p in (a, b):
        if p < 0 or p > hi:
            raise ValueError(f"{what} {quote(p)} out of range (0-{hi})")
    if a > b:
        raise ValueError(f"{what} range {quote(value)} is reversed (write \"{b}-{a}\")")
    return a, b


def quote(value: Any) -> str:
    """A short, safe rendering of a value for a message (never recurses, never huge)."""
    if isinstance(value, str):
        s = value if len(value) <= 60 else value[:57] + "..."
        s = s.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() < 200 else "a huge integer"
    if isinstance(value, float):
        return repr(value)
    return kind_of(value)


# Characters that end a line for some reader (every separator str.splitlines() knows), drive a
# terminal (C0 and C1 controls, DEL) or reorder what it shows (bidi embeddings/isolates).
LINE_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    o = ord(c)
    return _ESCAPES.get(c) or (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")


def oneline(value: Any) -> str:
    """value as one line of inert text: every LINE_UNSAFE character becomes a visible escape
    (\\n, \\x1b, \\u2028), so a hostile name shows what it is and can neither start a line
    (syslog, a mail header, an environment variable) nor drive a terminal."""
    s = value if isinstance(value, str) else str(value)
    return LINE_UNSAFE.sub(_escape, s) if LINE_UNSAFE.search(s) else s


_KINDS = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a float"),
          (list, "an array"), (dict, "a table"))


def kind_of(value: Any) -> str:
    """What a (TOML) value is, for a message: "a string", "an array", ..."""
    return next((name for t, name in _KINDS if isinstance(value, t)), "a date/time")


# ----------------------------------------------------------------------------- time

NS = 1_000_000_000
_UNITS = {"ms": NS // 1000, "s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS, "w": 7 * 86400 * NS}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def parse_duration(value: Any) -> int:
    """A length of time in nanoseconds: "250ms", "90s", "15m", "1h30m", "7d", "2w"; a bare
    number (TOML or text) is seconds. Raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"5m\", got {quote(value)}")
    if isinstance(value, (int, float)):
        if value != value:
            raise ValueError("expected a duration like \"5m\", got nan")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {quote(value)}")
        return _bounded(value * NS, value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"5m\", got {quote(value)}")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    if _NUMBER.fullmatch(text):
        return _bounded(float(text) * NS, value)
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"bad duration {quote(value)} (use e.g. \"30s\", \"5m\", \"1h30m\", \"2d\")")
    return _bounded(total, value)


MAX_DURATION_NS = 100 * 365 * 86400 * NS   # a century: any longer is a typo, and it must fit int64


def _bounded(ns: float, value: Any) -> int:
    # inf and 5,000-digit numbers are values too: refuse them here, not as an OverflowError later
    if not ns <= MAX_DURATION_NS:
        raise ValueError(f"duration {quote(value)} is too long (at most 36500d)")
    return int(ns)


def format_duration(ns: int) -> str:
    s = ns // NS
    if s and s % 86400 == 0:
        return f"{s // 86400}d"
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    if ns % NS == 0:
        return f"{s}s"
    return f"{ns / NS:g}s"


def parse_time(value: Any, now_ns: int | None = None) -> int:
    """A point in time -> ns since the epoch: a duration meaning "that long ago" ("1h",
    "7d"), "now", "today" (local midnight), or an ISO 8601 date or time: with "Z" or an
    offset as written, without a zone as this machine's local time. Raises ValueError."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    t = str(value).strip()
    if t == "now":
        return now_ns
    if t == "today":
        midnight = datetime.fromtimestamp(now_ns // NS).replace(hour=0, minute=0, second=0, microsecond=0)
        return int(midnight.timestamp()) * NS
    try:
        return _time_in_range(now_ns - parse_duration(t), value)
    except ValueError as e:
        duration_error = e
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        if _DURATION_LIKE.fullmatch(t.lower()):
            raise duration_error from None   # "9999...9d": say what is wrong with the duration
        raise ValueError(f"bad time {quote(value)} (use e.g. 1h, 7d, now, today, 2026-05-01, "
                         "2026-05-01T12:00:00 (local), 2026-05-01T12:00:00Z)") from None
    try:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # local time, as an administrator types it
        ns = int(dt.replace(microsecond=0).timestamp()) * NS + dt.microsecond * 1000
    except (ValueError, OverflowError, OSError):   # year 1 or 9999, beyond the C library
        ns = None
    return _time_in_range(ns, value)


_DURATION_LIKE = re.compile(r"(\d[\d.]*[a-z]*)+")
MAX_TIME_NS = 2 ** 63 - 1   # times are signed 64-bit nanoseconds (SQLite INTEGER, the C writer)


def _time_in_range(ns: int | None, value: Any) -> int:
    if ns is None or not -MAX_TIME_NS <= ns <= MAX_TIME_NS:
        raise ValueError(f"time {quote(value)} is out of range (1677-09-22 .. 2262-04-11, "
                         "64-bit nanoseconds since 1970)")
    return ns


def format_time(ts_ns: int) -> str:
    """RFC 3339 UTC with microseconds (what show, export, syslog and alerts print)."""
    dt = datetime.fromtimestamp(ts_ns // NS, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns // 1000) % 1_000_000:06d}Z"
