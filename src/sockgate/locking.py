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
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise error(f"{path}: cannot open: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise (busy_error or error)(busy) from None
        # the holder may have removed the file (release_and_remove) between our open and
        # our lock: a lock on that unlinked inode excludes nobody, so take the new file's
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release_and_remove(fd: int, path: Path) -> None:
    """Give up a lock from lock_exclusive and leave no file behind: removed while still
    held, so whoever opened it meanwhile notices (lock_exclusive re-checks) and retries."""
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):  # ours, not one made after ours was removed
            os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)

