"""Ring buffer -> decoded decision events, in batches."""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
import time
from dataclasses import dataclass

from sockgate.kernel import layout as L
from sockgate.record import key_addr

EXIT_NAMES = ("connect", "listen", "accept")
VERDICT_NAMES = ("allowed", "rejected", "audit-rejected")
AF_INET, AF_INET6 = 2, 10


def struct_of(mirror: type[ctypes.Structure]) -> struct.Struct:
    """A struct.Struct that unpacks `mirror` (a layout.py ctypes mirror, checked against the
    object's BTF) into a tuple, field for field: byte arrays and char arrays as bytes."""
    codes = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I", ctypes.c_int32: "i",
             ctypes.c_uint64: "Q", ctypes.c_char: "s"}
    fmt, at = "<", 0
    for name, ctype in mirror._fields_:
        off = getattr(mirror, name).offset
        fmt += f"{off - at}x" if off > at else ""
        if issubclass(ctype, ctypes.Array):
            fmt += f"{ctypes.sizeof(ctype)}s"
        else:
            fmt += codes[ctype]
        at = off + ctypes.sizeof(ctype)
    tail = ctypes.sizeof(mirror) - at
    return struct.Struct(fmt + (f"{tail}x" if tail else ""))


_EVENT = struct_of(L.Event)
EVENT_FIELDS = tuple(name for name, _ in L.Event._fields_)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(slots=True)
class Event:
    """A decoded sg_event (for --print-events and tests; the daemon journals the tuples)."""

    ts_ns: int            # UTC nanoseconds
    exit: str             # connect | listen | accept
    verdict: str          # allowed | rejected | audit-rejected
    rule: int             # -1 = default
    generation: int
    pid: int
    tid: int
    uid: int
    euid: int
    gid: int
    egid: int
    comm: str
    exe_name: str
    dev: int
    ino: int
    family: str           # ipv4 | ipv6
    protocol: int         # IPPROTO_*
    flags: int            # SG_EV_*
    cookie: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    groups: tuple[int, ...] = ()   # effective gid first, then supplementary: what the decision saw


def group_list(raw: bytes, n: int) -> tuple[int, ...]:
    """The event's groups array (u32s) as the first `n` gids."""
    n = min(n, len(raw) // 4)
    return struct.unpack_from(f"<{n}I", raw) if n else ()


def boot_to_realtime_offset() -> int:
    """CLOCK_REALTIME - CLOCK_BOOTTIME in ns (events carry boot time)."""
    a = time.clock_gettime_ns(time.CLOCK_REALTIME)
    b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    c = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return (a + c) // 2 - b


addr_text = key_addr  # the kernel's 16-byte addresses, IPv4 as ::ffff:a.b.c.d


def c_string(raw: bytes) -> str:
    """A NUL-padded kernel name (comm, file name) as text."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _event(t: tuple, offset_ns: int) -> Event:
    f = dict(zip(EVENT_FIELDS, t))
    exit_, verdict = f["exit"], f["verdict"]
    return Event(
        ts_ns=f["boot_ns"] + offset_ns, exit=EXIT_NAMES[exit_] if exit_ < 3 else str(exit_),
        verdict=VERDICT_NAMES[verdict] if verdict < 3 else str(verdict), rule=f["rule"],
        generation=f["generation"], pid=f["pid"], tid=f["tid"], uid=f["uid"], euid=f["euid"], gid=f["gid"],
        egid=f["egid"], comm=c_string(f["comm"]), exe_name=c_string(f["exe_name"]), dev=f["dev"], ino=f["ino"],
        family="ipv6" if f["family"] == AF_INET6 else "ipv4", protocol=f["protocol"], flags=f["flags"],
        cookie=f["cookie"], local_addr=addr_text(f["local_addr"]), local_port=f["local_port"],
        remote_addr=addr_text(f["remote_addr"]), remote_port=f["remote_port"],
        groups=group_list(f["groups"], f["ngroups"]),
    )


def decode_tuples(raw: list[tuple], offset_ns: int) -> list[Event]:
    return [_event(t, offset_ns) for t in raw]


# the most records the ring can hold at once (each: an 8-byte header, rounded up to 8)
RING_RECORDS_MAX = L.C["SG_RINGBUF_BYTES"] // ((8 + ctypes.sizeof(L.Event) + 7) & ~7)


class EventReader:
    """Drains the sg_events ring buffer by reading its shared pages directly.

    The kernel's ring buffer is mmap-able: a consumer page (we write consumer_pos), then
    the producer page and the data area mapped twice in a row, so a record never wraps.
    Reading records here instead of through a per-record callback is what lets Python
    keep up (kernel-notes: decode in batches). poll() returns the decoded batch.

    hold=True reads without giving the space back: the kernel keeps the records until
    release(read_pos) says they are safe elsewhere (the daemon: journaled), so a reader
    killed in between leaves them for the next one (read twice at worst, never lost).
    While records are held the kernel's adaptive wakeup does not fire (it wakes a reader
    that has caught up): `holding` tells the caller to poll with a short timeout."""

    BUSY, DISCARD = 1 << 31, 1 << 30

    def __init__(self, ringbuf_fd: int, data_size: int = L.C["SG_RINGBUF_BYTES"], offset_ns: int | None = None):
        page = mmap.PAGESIZE
        self._page = page
        self._mask = data_size - 1
        self._cons = mmap.mmap(ringbuf_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(ringbuf_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # consumer_pos is stored with one 8-byte write. (struct.pack_into zeroes its target
        # before packing: a producer reading that 0 saw a full ring and dropped its event.)
        self._cons_pos = memoryview(self._cons).cast("Q")
        self._read = self._cons_pos[0]   # where reading goes on (ahead of consumer_pos while holding)
        self._epoll = select.epoll()
        self._epoll.register(ringbuf_fd, select.EPOLLIN)
        self._offset = boot_to_realtime_offset() if offset_ns is None else offset_ns

    def read_raw(self, *, hold: bool = False) -> list[tuple]:
        """Everything committed now, in order, as struct sg_event field tuples (boot_ns
        first; add `offset_ns` for UTC). The daemon builds journal entries from these."""
        cons = self._read
        prod = _U64.unpack_from(self._prod, 0)[0]
        buf, page, mask = self._prod, self._page, self._mask
        out = []
        while cons < prod:
            at = page + (cons & mask)
            hdr = _U32.unpack_from(buf, at)[0]
            if hdr & self.BUSY:
                break  # reserved but not yet submitted: the rest waits for the next read
            size = hdr & ~(self.BUSY | self.DISCARD)
            if not hdr & self.DISCARD and size >= _EVENT.size:
                out.append(_EVENT.unpack_from(buf, at + 8))
            cons += (size + 8 + 7) & ~7
        self._read = cons
        if not hold:
            self._cons_pos[0] = cons
        return out

    @property
    def read_pos(self) -> int:
        return self._read

    @property
    def holding(self) -> bool:
        return self._cons_pos[0] != self._read

    def release(self, pos: int) -> None:
        """Give the kernel the ring's space back up to `pos` (a read_pos seen earlier)."""
        self._cons_pos[0] = pos

    @property
    def offset_ns(self) -> int:
        return self._offset

    def poll_raw(self, timeout_ms: int = 100, *, hold: bool = False) -> list[tuple]:
        batch = self.read_raw(hold=hold)
        if batch or timeout_ms == 0:
            return batch
        try:
            self._epoll.poll(timeout_ms / 1000)
        except InterruptedError:
            pass
        return self.read_raw(hold=hold)

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        return [_event(t, self._offset) for t in self.poll_raw(timeout_ms)]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._cons_pos.release()
            self._cons.close()
            self._prod.close()
            self._epoll = None
