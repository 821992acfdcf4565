"""Run the kernel's decide() on a chosen input through BPF_PROG_TEST_RUN.

The sg_probe program (SEC("tc")) reads a struct sg_probe from the packet data and returns
(verdict << 16) | (rule + 1). It calls the same decide() as the attached hooks, over the
same maps, so the differential test compares the real kernel code with the reference
evaluator without needing a process per (uid, groups, program) combination.
"""

from __future__ import annotations

import ctypes

from sockgate.errors import KernelError
from sockgate.kernel import layout as L
from sockgate.kernel import libbpf


class KernelProbe:
    def __init__(self, prog_fd: int):
        if prog_fd < 0:
            raise KernelError("the probe program is not loaded")
        self.fd = prog_fd
        self._probe = L.Probe()
        # a tc test run wants at least an Ethernet header's worth of data
        self._size = max(ctypes.sizeof(L.Probe), 64)
        self._buf = ctypes.create_string_buffer(self._size)
        self._out = ctypes.create_string_buffer(self._size + 256)
        self._opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts))

    def decide(self, exit: int, uid: int, gids: tuple[int, ...], ident: tuple[int, int] | None,
               laddr128: int, lport: int, raddr128: int, rport: int, proto: int = 0) -> tuple[int, int]:
        p = self._probe
        ctypes.memset(ctypes.byref(p), 0, ctypes.sizeof(p))
        p.exit, p.uid = exit, uid
        gids = gids[: L.MAX_GROUPS]
        p.ngroups = len(gids)
        for i, g in enumerate(gids):
            p.groups[i] = g
        if ident:
            p.dev, p.ino = ident
        ctypes.memmove(p.local_addr, laddr128.to_bytes(16, "big"), 16)
        ctypes.memmove(p.remote_addr, raddr128.to_bytes(16, "big"), 16)
        p.local_port, p.remote_port, p.protocol = lport, rport, proto
        ctypes.memmove(self._buf, ctypes.byref(p), ctypes.sizeof(p))
        o = self._opts
        o.data_in = ctypes.cast(self._buf, ctypes.c_void_p)
        o.data_size_in = self._size
        o.data_out = ctypes.cast(self._out, ctypes.c_void_p)
        o.data_size_out = len(self._out)
        o.repeat = 1
        libbpf.check_rc(libbpf.lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(o)), "BPF_PROG_TEST_RUN")
        r = o.retval
        return r >> 16, (r & 0xFFFF) - 1
