"""One holder per lock file, also when lock files are removed (sockgate.locking)."""

from __future__ import annotations

import os

import pytest

from sockgate.errors import SockgateError
from sockgate.locking import lock_exclusive, release_and_remove


def test_a_removed_lock_file_never_lets_two_holders_in(tmp_path):
    path = tmp_path / "x.lock"
    first = lock_exclusive(path, busy="busy", error=SockgateError)
    os.unlink(path)                      # someone (tmpfiles, an admin) removes it while held
    second = lock_exclusive(path, busy="busy", error=SockgateError)   # a new file: a new holder
    release_and_remove(first, path)      # the first stops: it must not remove the second's file
    assert path.exists(), "the first holder removed the second's lock file"
    with pytest.raises(SockgateError, match="busy"):
        lock_exclusive(path, busy="busy", error=SockgateError)   # still held by the second
    release_and_remove(second, path)
    assert not path.exists()
    third = lock_exclusive(path, busy="busy", error=SockgateError)
    os.close(third)
