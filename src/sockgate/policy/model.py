"""Typed policy model: what a parsed, validated policy file means.

Names (users, groups, lists) are already resolved here; programs stay paths and are
turned into (device, inode) by the compiler, because that identity belongs to the host
the policy is loaded on.
"""

from __future__ import annotations

import enum
import errno as errno_mod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sockgate.record import Network, Outcome  # noqa: F401  (re-exported for policy/*)

T = TypeVar("T")

PortRange = tuple[int, int]  # inclusive, 0..65535

# The kernel tables' capacity per policy slot (sockgate.h; tests/kernel/test_layout.py checks
# these against the header): a policy that does not fit is refused at compile time, so
# `policy check` says so before any load.
MAX_RULES = 16384          # SG_MAX_RULES: rules; also user, group and program keys
MAX_BITMAPS = 65536        # SG_MAX_BITMAPS: distinct bitmaps; also address prefixes
# SG_UID_UNKNOWN: the uid and gid the kernel decides an accept with when the listener's owner
# is unknown (bound before sockgate started, not found); replay decides such entries the same way
UID_UNKNOWN = 0xFFFFFFFE


class Exit(enum.IntEnum):
    """Exit points, numbered as in the kernel header (SG_EXIT_*)."""

    CONNECT = 0
    LISTEN = 1
    ACCEPT = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Exit":
        return cls[text.strip().upper()]


class Protocol(enum.IntEnum):
    """Protocol classes a rule can name, numbered as in the kernel header (SG_PROTO_*).

    A socket belongs to exactly one class. `tcp` also names MPTCP and `udp` also names
    UDP-Lite: on the wire they are TCP and UDP, and a rule on tcp that MPTCP walked past
    would be a one-flag bypass. `mptcp` narrows to MPTCP sockets only."""

    TCP = 0
    UDP = 1       # UDP and UDP-Lite
    MPTCP = 2
    SCTP = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# what each protocol name in a policy matches
PROTOCOL_NAMES: dict[str, frozenset[Protocol]] = {
    "tcp": frozenset({Protocol.TCP, Protocol.MPTCP}),
    "udp": frozenset({Protocol.UDP}),
    "mptcp": frozenset({Protocol.MPTCP}),
    "sctp": frozenset({Protocol.SCTP}),
}
# IP protocol numbers (socket(2)'s third argument) -> class
PROTOCOL_OF_IPPROTO = {6: Protocol.TCP, 17: Protocol.UDP, 136: Protocol.UDP, 262: Protocol.MPTCP,
                       132: Protocol.SCTP}


class Action(str, enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"


class Mode(str, enum.Enum):
    ENFORCE = "enforce"  # a reject blocks the call
    AUDIT = "audit"      # a reject is journaled as audit-rejected, the call goes through


# QAUDLVL-style values. *NETCMN is the common set: *NETSCK + *NETFAIL (as on IBM i 7.2).
# *NETUDP journals allowed UDP traffic as IBM i's O (outbound) and I (inbound) entries: the
# first decision per (socket, peer), then summaries with exact counts, never one per datagram.
# Rejections, UDP's included, are journaled with *NETFAIL.
AUDIT_LEVELS = ("*NETSCK", "*NETFAIL", "*NETCMN", "*NETUDP")


def levels_journal_allowed(levels: frozenset[str]) -> bool:
    return bool(levels & {"*NETSCK", "*NETCMN"})


def levels_journal_rejected(levels: frozenset[str]) -> bool:
    return bool(levels & {"*NETFAIL", "*NETCMN"})


def levels_journal_udp(levels: frozenset[str]) -> bool:
    return "*NETUDP" in levels


# Which match fields each exit point can test (docs/policy.md, "Which fields apply to which exit").
FIELDS_BY_EXIT: dict[Exit, frozenset[str]] = {
    Exit.CONNECT: frozenset({"protocol", "user", "group", "program", "remote", "remote_port"}),
    Exit.LISTEN: frozenset({"protocol", "user", "group", "program", "local", "local_port"}),
    Exit.ACCEPT: frozenset({"protocol", "user", "group", "program", "remote", "remote_port", "local",
                            "local_port"}),
}
MATCH_FIELDS = ("protocol", "user", "group", "program", "local", "remote", "local_port", "remote_port")


@dataclass(frozen=True)
class Match(Generic[T]):
    """One field of a rule: matches when any value matches, or (negated) when none does."""

    values: tuple[T, ...]
    negated: bool = False


@dataclass(frozen=True)
class Rule:
    index: int                       # 0-based position in the file = priority
    name: str
    line: int                        # line of its [[rule]] header
    exits: frozenset[Exit]
    action: Action
    mode: Mode | None = None         # None: the policy's mode
    protocol: Match[Protocol] | None = None  # classes the rule's protocol names cover
    user: Match[int] | None = None   # uids (effective uid of the caller / listener owner)
    group: Match[int] | None = None  # gids, primary or supplementary
    program: Match[str] | None = None  # absolute executable paths
    local: Match[Network] | None = None
    remote: Match[Network] | None = None
    local_port: Match[PortRange] | None = None
    remote_port: Match[PortRange] | None = None

    def effective_mode(self, policy_mode: Mode) -> Mode:
        return self.mode or policy_mode


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    mode: Mode = Mode.ENFORCE
    audit_levels: frozenset[str] = frozenset({"*NETFAIL"})
    defaults: dict[Exit, Action] = field(
        default_factory=lambda: {e: Action.ALLOW for e in Exit}
    )
    errno: int = errno_mod.EPERM     # errno for rejected connect/listen
    metrics_per_rule: bool = False   # the daemon's metrics carry a hit counter per rule (name as label)
    fold_rejections: int = 200       # rejections journaled one by one per user and second; more are
                                     # counted in summary entries (0: never fold)
    source: str = "<embedded>"
    digest: str = ""                 # sha256 of the file bytes

    @property
    def journal_allowed(self) -> bool:
        return levels_journal_allowed(self.audit_levels)

    @property
    def journal_rejected(self) -> bool:
        return levels_journal_rejected(self.audit_levels)

    @property
    def journal_udp(self) -> bool:
        return levels_journal_udp(self.audit_levels)
