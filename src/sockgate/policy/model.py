"""Typed policy model: what a parsed, validated policy file means.

Names (users, groups, lists) are already resolved here; programs stay paths and are
turned into (device, inode) by the compiler, because that identity belongs to the host
the policy is loaded on.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import ipaddress
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]  # inclusive, 0..65535

MAX_RULES = 16384


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


class Action(str, enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"


class Mode(str, enum.Enum):
    ENFORCE = "enforce"  # a reject blocks the call
    AUDIT = "audit"      # a reject is journaled as audit-rejected, the call goes through


class Outcome(str, enum.Enum):
    ALLOWED = "allowed"
    REJECTED = "rejected"
    AUDIT_REJECTED = "audit-rejected"


# QAUDLVL-style values. *NETCMN is the common set: *NETSCK + *NETFAIL (as on IBM i 7.2).
AUDIT_LEVELS = ("*NETSCK", "*NETFAIL", "*NETCMN")


def levels_journal_allowed(levels: frozenset[str]) -> bool:
    return bool(levels & {"*NETSCK", "*NETCMN"})


def levels_journal_rejected(levels: frozenset[str]) -> bool:
    return bool(levels & {"*NETFAIL", "*NETCMN"})


# Which match fields each exit point can test (DESIGN.md, "Exit points").
FIELDS_BY_EXIT: dict[Exit, frozenset[str]] = {
    Exit.CONNECT: frozenset({"user", "group", "program", "remote", "remote_port"}),
    Exit.LISTEN: frozenset({"user", "group", "program", "local", "local_port"}),
    Exit.ACCEPT: frozenset({"user", "group", "program", "remote", "remote_port", "local", "local_port"}),
}
MATCH_FIELDS = ("user", "group", "program", "local", "remote", "local_port", "remote_port")


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
    source: str = "<embedded>"
    digest: str = ""                 # sha256 of the file bytes

    @property
    def journal_allowed(self) -> bool:
        return levels_journal_allowed(self.audit_levels)

    @property
    def journal_rejected(self) -> bool:
        return levels_journal_rejected(self.audit_levels)
