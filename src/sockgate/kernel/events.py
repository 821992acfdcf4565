"""Ring buffer -> decoded decision events, in batches.

libbpf's ring_buffer calls back once per record; the callback only copies the raw bytes,
and decoding happens per batch (kernel-notes: decoding per event is what costs).
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
import time
from dataclasses import dataclass

from sockgate.kernel import layout as L
from sockgate.kernel import libbpf

EXIT_NAMES = ("connect", "listen", "accept")
VERDICT_NAMES = ("allowed", "rejected", "audit-rejected")
AF_INET, AF_INET6 = 2, 10

# struct sg_event, field for field (layout.Event is the ctypes mirror checked against BTF)
_EVENT = struct.Struct("<QQIIIIIIIiIBBBBHH16s16s16s32s4x")  # 4x: tail padding to 8
assert _EVENT.size == ctypes.sizeof(L.Event)


@dataclass(slots=True)
class Event:
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
    protocol: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int


def boot_to_realtime_offset() -> int:
    """CLOCK_REALTIME - CLOCK_BOOTTIME in ns (events carry boot time)."""
    a = time.clock_gettime_ns(time.CLOCK_REALTIME)
    b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    c = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return (a + c) // 2 - b


_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


def addr_text(raw: bytes) -> str:
    if raw[:12] == _MAPPED_PREFIX:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def decode(raw: list[bytes], offset_ns: int) -> list[Event]:
    out = []
    for rec in raw:
        (boot_ns, ino, dev, pid, tid, uid, euid, gid, egid, rule, gen, exit_, verdict, family, proto,
         lport, rport, laddr, raddr, comm, exe_name) = _EVENT.unpack_from(rec)
        out.append(Event(
            ts_ns=boot_ns + offset_ns, exit=EXIT_NAMES[exit_] if exit_ < 3 else str(exit_),
            verdict=VERDICT_NAMES[verdict] if verdict < 3 else str(verdict), rule=rule, generation=gen,
            pid=pid, tid=tid, uid=uid, euid=euid, gid=gid, egid=egid,
            comm=comm.split(b"\0", 1)[0].decode(errors="replace"), dev=dev, ino=ino,
            exe_name=exe_name.split(b"\0", 1)[0].decode(errors="replace"),
            family="ipv6" if family == AF_INET6 else "ipv4", protocol=proto,
            local_addr=addr_text(laddr), local_port=lport, remote_addr=addr_text(raddr), remote_port=rport,
        ))
    return out


class EventReader:
    """Drains the sg_events ring buffer. poll() returns the decoded batch available now."""

    def __init__(self, ringbuf_fd: int):
        self._raw: list[bytes] = []
        size = ctypes.sizeof(L.Event)

        def on_sample(_ctx, data, n):
            self._raw.append(ctypes.string_at(data, size if n >= size else n))
            return 0

        self._cb = libbpf.SAMPLE_FN(on_sample)  # keep the callback alive as long as the reader
        self._rb = libbpf.check_ptr(libbpf.lib().ring_buffer__new(ringbuf_fd, self._cb, None, None),
                                    "open the event ring buffer")
        self._offset = boot_to_realtime_offset()

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        rc = libbpf.lib().ring_buffer__poll(self._rb, timeout_ms)
        if rc < 0 and rc != -4:  # -EINTR: a signal arrived, return what we have
            libbpf.check_rc(rc, "poll the event ring buffer")
        libbpf.lib().ring_buffer__consume(self._rb)
        raw, self._raw = self._raw, []
        return decode(raw, self._offset)

    def close(self) -> None:
        if self._rb:
            libbpf.lib().ring_buffer__free(self._rb)
            self._rb = None
