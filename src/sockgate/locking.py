"""One writer per directory: an exclusive flock held by an open fd (released on exit,
also on kill -9, so a crash never leaves a stale lock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sockgate.errors import SockgateError


def lock_exclusive(path: Path, *, busy: str, error: type[SockgateError],
                   busy_error: type[SockgateError] | None = None) -> int:
    """Open `path` (0600) and take the lock; returns the fd that holds it. Raises
    (busy_error or error)(busy) when another process holds it, error(...) when the file is
    unusable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise (busy_error or error)(busy) from None
    return fd

