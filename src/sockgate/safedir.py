"""Directories sockgate keeps state in (journal, monitor state, pins, run state): created
by sockgate with a mode the umask cannot widen, and refused when another user could have
put or changed something in them.

A directory is safe when it is a real directory (not a symlink), owned by root or by the
caller, and writable by no one else; every ancestor is owned by root or the caller and,
if others may write it, sticky (so they cannot rename or delete what is in it: /tmp,
/sys/fs/bpf).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sockgate.errors import SockgateError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a safe state directory, or None. A missing path is no problem."""
    path = Path(os.path.abspath(path))
    me = os.geteuid()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a directory"
        if st.st_uid not in (0, me):
            return f"{path} is owned by uid {st.st_uid}, not by root"
        if st.st_mode & _OTHERS_WRITE:
            return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may write to it"
    for parent in path.parents:
        try:
            pst = os.stat(parent)
        except FileNotFoundError:
            continue
        if pst.st_uid not in (0, me):
            return f"{parent} (above {path}) is owned by uid {pst.st_uid}, not by root"
        if pst.st_mode & _OTHERS_WRITE and not pst.st_mode & stat.S_ISVTX:
            return f"{parent} (above {path}) has mode {stat.S_IMODE(pst.st_mode):04o}: others may replace {path}"
    return None


def private_dir(path: str | os.PathLike, *, error: type[SockgateError], what: str, mode: int = 0o700) -> Path:
    """`path` checked (error(reason) if unsafe), created with `mode` if missing (its missing
    parents 0755). Returns it."""
    path = Path(path)
    reason = problem(path)
    if reason:
        raise error(f"{what} {path} is not safe to use: {reason}; fix its owner and mode (chown root, "
                    f"chmod {mode:04o}) or remove it")
    if not path.is_dir():
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.mkdir(path, mode)
        except FileExistsError:  # created meanwhile by someone else: check what it is now
            return private_dir(path, error=error, what=what, mode=mode)
        except OSError as e:
            raise error(f"cannot create {what} {path}: {e.strerror}") from None
        os.chmod(path, mode)  # mkdir's mode passes through the umask; chmod does not
    return path


def private_file(path: str | os.PathLike, *, error: type[SockgateError]) -> None:
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


def write_atomic(path: str | os.PathLike, text: str | bytes, mode: int = 0o644) -> None:
    """Write a whole file or nothing (text as UTF-8, or bytes as they are): a temporary file
    beside it, synced, renamed over it. A reader (or a crash) sees the old file or the new
    one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8") if isinstance(text, str) else text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)   # the umask narrowed O_CREAT's mode
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except OSError as e:
        raise SockgateError(f"{path}: cannot write: {e.strerror or e}") from None
