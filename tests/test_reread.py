"""A daemon killed between its journal commit and giving the ring's records back leaves
them to the next daemon: `already_journaled` finds the overlap so they are not journaled
twice (the kernel side is tests/kernel/test_enforce.py::test_held_events_are_read_again...)."""

from __future__ import annotations

from sockgate.daemon import already_journaled
from sockgate.record import Code, Entry, EntryType, Outcome, Source

T = 1_800_000_000_000_000_000


def ev(i: int, jitter: int = 0, pid: int = 100, port: int = 25) -> Entry:
    return Entry(Code.SOCKET, EntryType.CONNECT, T + i * 10_000 + jitter, Source.KERNEL, "h", Outcome.REJECTED,
                 "r", 1000, "u", 1000, pid, "/bin/x", "ipv4", "10.0.0.1", 40000, "10.0.0.2", port)


def test_the_overlap_is_the_journal_suffix_read_again():
    tail = [ev(i) for i in range(10)]
    assert already_journaled(tail, [ev(7), ev(8), ev(9), ev(10), ev(11)]) == 3
    assert already_journaled(tail, [ev(9)]) == 1
    assert already_journaled(tail, [ev(10), ev(11)]) == 0       # nothing held: all new
    assert already_journaled([], [ev(1)]) == 0 and already_journaled(tail, []) == 0


def test_look_alikes_that_are_not_a_suffix_are_kept():
    # a tight loop: the same pid and port every 10 µs. New events that look like old ones
    # are kept: another nanosecond, or not the whole rest of the journal, in order.
    tail = [ev(i) for i in range(5)]
    assert already_journaled(tail, [ev(3), ev(9)]) == 0             # breaks off before the journal's end
    assert already_journaled(tail, [ev(4, 1, pid=101)]) == 0      # another process
    assert already_journaled(tail, [ev(4, 1)]) == 0               # 1 ns apart: not one event
    assert already_journaled(tail, [ev(i) for i in range(5)] + [ev(5)]) == 5
