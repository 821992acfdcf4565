"""How Live learns of new entries: inotify on the journal directory (journal/watch.py), and the
poll it falls back to where inotify is unavailable. A real journal, the real writer, the
console's own Head (the one watcher its Live streams share)."""

from __future__ import annotations

import asyncio
import select
import threading
import time

import pytest

from consolekit import decision, write
from sockgate.console.app import Head
from sockgate.console.data import Data
from sockgate.journal import Journal, watch
from sockgate.record import Outcome

NS = 10**9


def test_the_directory_watch_wakes_on_a_commit(tmp_path):
    jdir = tmp_path / "journal"
    write(jdir, [decision(time.time_ns())])
    with watch.watch(jdir) as w:
        w.drain()
        assert select.select([w], [], [], 0)[0] == []          # nothing happened yet
        write(jdir, [decision(time.time_ns(), outcome=Outcome.REJECTED)])
        assert select.select([w], [], [], 2)[0] == [w]
        assert w.drain() is True and w.drain() is False
    assert watch.watch(tmp_path / "missing") is None          # no directory: the caller polls


@pytest.mark.parametrize("inotify", [True, False])
def test_head_sees_new_entries_with_inotify_and_without(tmp_path, monkeypatch, inotify):
    jdir = tmp_path / "journal"
    first = write(jdir, [decision(time.time_ns())])
    if not inotify:
        monkeypatch.setattr(watch, "watch", lambda directory: None)
    data = Data(str(jdir))

    async def run() -> tuple[str, list[float]]:
        head = Head(data, lambda: False)
        took = []
        async with head.subscribe():
            await head.wait(first - 1, 2)
            seq = head.seq
            with Journal.open(jdir) as j:
                for _ in range(5):
                    t = time.monotonic()
                    threading.Thread(target=j.append, args=([decision(time.time_ns())],)).start()
                    seq = await head.wait(seq, 2)
                    took.append(time.monotonic() - t)
            assert seq == first + 5
        await asyncio.sleep(0.1)
        assert head.task is not None and head.task.done()       # no stream open: the watcher stops
        return head.mode, took

    try:
        mode, took = asyncio.run(run())
    finally:
        data.close()
    assert mode == ("inotify" if inotify else "poll")
    assert max(took) < 0.5, took    # well under IDLE_S: woken (or polled), not the 1 s safety net
