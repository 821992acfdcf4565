"""One writer per directory: an exclusive flock held by an open fd (released on exit,
also on kill -9, so a crash never leaves a stale lock); and the directories and files
sockgate keeps there, private to the user it runs as (0700 / 0600 whatever the umask)."""

from __future__ import annotations

import fcntl
import os
import stat
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


def private_directory(path: Path, *, error: type[SockgateError], what: str) -> None:
    """Make `path` (and any missing parent) 0700 whatever the umask, or check the one that
    is there: a directory of this user's, closed to group and others. Whoever else can
    write into it can replace or delete what sockgate keeps there. Raises error(reason)."""
    path = Path(path)
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
            os.chmod(p, 0o700)   # the umask may have taken bits from 0700 (never added any)
        except FileExistsError:
            pass                 # created meanwhile: checked below like any existing one
        except OSError as e:
            raise error(f"{p}: cannot create {what}: {e.strerror}") from None
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot use as {what}: {e.strerror}") from None
    problem = None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        problem = "not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not {os.geteuid()} (chown it, or use another directory)"
    elif mode & 0o077:
        problem = f"mode {mode:04o} gives group or others access (chmod 0700 it)"
    if problem:
        raise error(f"{path}: refusing to use this {what}: {problem}")


def private_file(path: Path, *, error: type[SockgateError]) -> None:
    """Create `path` 0600, or make an existing regular file of this user's 0600 (a symlink,
    or another user's file, is refused): before a library (SQLite) opens it with the umask's
    mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise error(f"{path}: refusing to use: not a regular file of uid {os.geteuid()}")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
