"""Wake when a journal directory changes: Linux inotify, called through ctypes on libc (no
new dependency), on the directory itself.

One watch on the directory sees every receiver: a commit writes the receiver's `-wal` file
(or the receiver, outside WAL mode), a rotation creates a receiver, retention deletes one.
What it does not see: SQLite publishes a commit in the `-shm` index, which is mapped memory
and raises no event, and with `synchronous = FULL` the writer fsyncs the WAL between its
last write and that publication. So an event means "a commit is on its way", not "it is
visible": a reader that finds nothing new right after an event looks again shortly (the
console's Live stream does, for a moment after each event).

`watch(directory)` returns None where inotify cannot be had (not Linux, out of watches,
no read access to the directory); callers then poll.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


class DirWatch:
    """An inotify descriptor watching one directory. fileno() is readable after a change;
    drain() empties it (non-blocking) and says whether anything had happened."""

    def __init__(self, directory: str | os.PathLike) -> None:
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if lib.inotify_add_watch(fd, os.fsencode(Path(directory)), MASK) < 0:
            e = ctypes.get_errno()
            os.close(fd)
            raise OSError(e, f"{directory}: {os.strerror(e)}")
        self.fd: int | None = fd

    def fileno(self) -> int:
        assert self.fd is not None, "closed"
        return self.fd

    def drain(self) -> bool:
        """Read every pending event (their content does not matter: any change is a reason
        to look); True if there was one."""
        any_ = False
        while self.fd is not None:
            try:
                if not os.read(self.fd, 65536):
                    break
                any_ = True
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
        return any_

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch(directory: str | os.PathLike) -> DirWatch | None:
    """A DirWatch on directory, or None where inotify is not available (then poll)."""
    try:
        return DirWatch(directory)
    except (OSError, AttributeError):   # AttributeError: a libc without inotify
        return None
