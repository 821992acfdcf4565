"""One exception hierarchy. Every error a user can cause carries *where* it happened;
the CLI maps these to a message and an exit code, and nothing else prints tracebacks."""

from __future__ import annotations


class SockgateError(Exception):
    """Base of all user-facing errors. exit_code follows the CLI contract."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(SockgateError):
    exit_code = 2


class LocatedError(SockgateError):
    """One problem in a user's file, located as FILE:LINE."""

    default_file = "<file>"

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file = file or self.default_file
        self.line = line
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class LocatedErrors(SockgateError):
    """Every problem found in one file (checks report them all, not just the first).
    `details`: more keys for the --json rendering of the failure."""

    def __init__(self, errors: list, details: dict | None = None):
        self.errors = errors
        self.details = details or {}
        super().__init__("\n".join(str(e) for e in errors))


class PolicyError(LocatedError):
    default_file = "<policy>"


class PolicyErrors(LocatedErrors):
    pass


class LockoutError(SockgateError):
    """A policy would reject the administrator's own session or sockgate's alert
    channels (sockgate.lockout); --force overrides."""

    def __init__(self, source: str, lockouts: list[str]):
        self.lockouts = lockouts
        self.details = {"lockouts": lockouts}
        super().__init__(f"{source}: refused, it would lock out what must stay reachable:\n  "
                         + "\n  ".join(lockouts) + "\n(--force overrides)")


class KernelError(SockgateError):
    """The kernel refused something (load, attach, map update) or lacks a feature."""


class JournalError(SockgateError):
    """The journal directory or a receiver is unusable (corrupt, foreign, permissions)."""


class JournalBusyError(JournalError):
    """Another process holds the journal's writer lock."""


class MetricsError(SockgateError):
    """The metrics endpoint cannot listen where it was asked to."""


class StateError(SockgateError):
    """The monitor's state directory is unusable or held by another monitor."""


class VerifyError(SockgateError):
    """Journal verification failed; seq is the first bad sequence number."""

    def __init__(self, message: str, seq: int | None = None):
        self.seq = seq
        super().__init__(message)


class ImportRecordError(SockgateError):
    """A bad IBM i record: which record (1-based), at which byte offset, and why."""

    def __init__(self, reason: str, record: int | None = None, offset: int | None = None, file: str = "-"):
        self.reason = reason
        self.record = record
        self.offset = offset
        self.file = file
        where = file
        if record is not None:
            where += f": record {record}"
        if offset is not None:
            where += f" (byte offset {offset})"
        super().__init__(f"{where}: {reason}")

    line = None   # rendered like a LocatedError (file, line, message) in a LocatedErrors


class ImportConflictError(LocatedErrors):
    """Records whose identity (SYSTEM:SEQUENCE) is already journaled, or earlier in the same
    file, with other content: errors are ImportRecordErrors naming each record; details
    {"conflicts": [{record, ident, seq, fields}]} for --json. Nothing was imported."""

    def __init__(self, errors: list, conflicts: list[dict]):
        super().__init__(errors, {"conflicts": conflicts})


class FieldError(ValueError):
    """One bad field of an IBM i record; the reader turns it into an ImportRecordError with
    the record number and byte offset."""

    def __init__(self, field: str, reason: str):
        self.field = field
        super().__init__(f"{field}: {reason}")


class RulesError(LocatedError):
    """A problem in a monitor alert-rules file."""

    default_file = "<rules>"


class RulesErrors(LocatedErrors):
    pass


class ChannelError(SockgateError):
    """A monitor channel could not deliver (retried from its queue)."""


class PermanentChannelError(ChannelError):
    """The receiver refused this message for good (it is kept as dead, not retried)."""


class BundleError(SockgateError):
    """A policy bundle that cannot be used: unreadable, malformed, not signed by a trusted
    key, or carrying a policy that does not check (sockgate.fleet.bundle)."""


class BundlePolicyError(BundleError):
    """A correctly signed bundle whose policy does not check on this host (a user or a
    program it names is missing here, a newer policy syntax)."""
