"""Index the sockets that were listening before sockgate loaded.

Accept rules test the owner of the listening socket. The kernel records a listener when
it calls listen() (sockops): the socket goes into sg_listeners and its caller's identity
into sg_owners under the socket's cookie. Servers started earlier are found here from
/proc/net/tcp{,6} (state 0A = LISTEN); we take a duplicate of the very socket from its
process (pidfd_getfd), index it the same way, and record that process's credentials
and executable under the socket's SO_COOKIE.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from sockgate.kernel import layout as L
from sockgate.kernel import libbpf
from sockgate.policy.compile import kernel_dev
from sockgate.record import MAPPED_PREFIX

LISTEN = "0A"
SO_COOKIE = 57
SYS_pidfd_getfd = 438
_libc = ctypes.CDLL(None, use_errno=True)


def _proc_addr(hex_addr: str) -> bytes:
    """/proc/net/tcp address (host-endian 32-bit words) -> 16 bytes, v4 mapped."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        v4 = struct.pack(">I", struct.unpack("=I", raw)[0])
        return MAPPED_PREFIX + v4
    return b"".join(struct.pack(">I", struct.unpack("=I", raw[i:i + 4])[0]) for i in range(0, 16, 4))


ESTABLISHED = "01"


def tcp_sockets(state: str = LISTEN, proc: str = "/proc") -> list[tuple[int, bytes, int, bytes, int, int, int]]:
    """[(family, local addr16, local port, remote addr16, remote port, uid, inode)] of the
    TCP sockets in `state` in this network namespace (/proc/net/tcp{,6})."""
    out = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"{proc}/net/{name}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] != state:
                        continue
                    laddr, lport = p[1].split(":")
                    raddr, rport = p[2].split(":")
                    out.append((family, _proc_addr(laddr), int(lport, 16), _proc_addr(raddr), int(rport, 16),
                                int(p[7]), int(p[9])))
        except FileNotFoundError:
            continue
    return out


def listening_sockets(proc: str = "/proc") -> list[tuple[int, bytes, int, int, int]]:
    """[(family, addr16, port, uid, inode)] of TCP listeners in this network namespace."""
    return [(fam, laddr, lport, uid, inode) for fam, laddr, lport, _, _, uid, inode in tcp_sockets(LISTEN, proc)]


def socket_holders(proc: str = "/proc") -> dict[int, tuple[int, int]]:
    """socket inode -> (pid, fd) holding it."""
    owners: dict[int, tuple[int, int]] = {}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                try:
                    target = os.readlink(f"{proc}/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners.setdefault(int(target[8:-1]), (int(pid), int(fd)))
        except OSError:
            continue
    return owners


def process_identity(pid: int, proc: str = "/proc") -> tuple[int, int, list[int], int, int, str] | None:
    """(euid, egid, groups, dev, ino, comm)."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            status = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
        euid = int(status["Uid"].split()[1])
        egid = int(status["Gid"].split()[1])
        groups = [int(g) for g in status.get("Groups", "").split()]
        st = os.stat(f"{proc}/{pid}/exe")
        with open(f"{proc}/{pid}/comm") as f:
            comm = f.read().strip()
    except (OSError, KeyError, ValueError):
        return None
    return euid, egid, groups, kernel_dev(st.st_dev), st.st_ino, comm


def _dup_socket(pid: int, fd: int) -> int | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        new = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        return new if new >= 0 else None
    finally:
        os.close(pidfd)


def seed_owners(listeners_fd: int, owners_fd: int, proc: str = "/proc") -> tuple[int, int]:
    """Index every current listener and its owner; returns (indexed, listening)."""
    socks = listening_sockets(proc)
    if not socks:
        return 0, 0
    holders = socket_holders(proc)
    netns = os.stat(f"{proc}/self/ns/net").st_ino
    n = 0
    for family, addr, port, uid, inode in socks:
        held = holders.get(inode)
        if not held:
            continue
        pid, fd = held
        dup = _dup_socket(pid, fd)
        if dup is None:
            continue
        try:
            key = L.OwnerKey(netns=netns, family=family, port=port)  # as sg_listen_cb keys it
            ctypes.memmove(key.addr, addr, 16)
            val = L.Owner(uid=uid, gid=L.UID_UNKNOWN)
            ident = process_identity(pid, proc)
            if ident:
                euid, egid, groups, dev, ino, comm = ident
                gl = ([egid] + [g for g in groups if g != egid])[: L.MAX_GROUPS]
                val.tgid, val.uid, val.gid, val.dev, val.ino = pid, euid, egid, dev, ino
                val.ngroups = len(gl)
                for i, g in enumerate(gl):
                    val.groups[i] = g
                val.comm = comm.encode()[:15]
                try:
                    val.exe_name = os.path.basename(os.readlink(f"{proc}/{pid}/exe")).encode()[:31]
                except OSError:
                    pass
            s = socket.socket(fileno=os.dup(dup))
            try:
                cookie = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
            finally:
                s.close()
            libbpf.map_update(owners_fd, ctypes.c_uint64(cookie), val)
            libbpf.map_update(listeners_fd, key, ctypes.c_uint64(dup))
            n += 1
        except Exception:  # a listener that closed meanwhile, or one the sockhash refuses
            continue
        finally:
            os.close(dup)
    return n, len(socks)
