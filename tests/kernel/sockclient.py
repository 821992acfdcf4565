"""Runs one socket operation inside a test scope, as a chosen user, and prints the result
as JSON. Started as a subprocess by the kernel tests (optionally through a copied
interpreter, for program rules):

    sockclient.py '{"cgroup": ..., "netns": ..., "uid": 4242, "op": "connect", ...}'
"""

import ctypes
import errno
import json
import os
import select
import socket
import sys
import time

CLONE_NEWNET = 0x40000000


def enter(a):
    if a.get("cgroup"):
        with open(os.path.join(a["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if a.get("netns"):
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(a["netns"], os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
    if "uid" in a:
        os.setgroups(a.get("groups", []))
        os.setgid(a.get("gid", a["uid"]))
        os.setuid(a["uid"])


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def result(ok, err=None, **kw):
    return {"ok": ok, "errno": err, "error": errno.errorcode.get(err) if err else None, **kw}


def do_connect(a):
    s = socket.socket(family_of(a["addr"]), socket.SOCK_DGRAM if a.get("udp") else socket.SOCK_STREAM)
    s.settimeout(a.get("timeout", 2))
    t0 = time.monotonic()
    try:
        if a.get("src"):
            s.bind((a["src"], a.get("src_port", 0)))
        s.connect((a["addr"], a["port"]))
        return result(True, seconds=time.monotonic() - t0)
    except OSError as e:
        return result(False, e.errno, seconds=time.monotonic() - t0)
    finally:
        s.close()


def do_listen(a):
    s = socket.socket(family_of(a["addr"]), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if not a.get("unbound"):
            s.bind((a["addr"], a["port"]))
        s.listen(16)
        return result(True, port=s.getsockname()[1])
    except OSError as e:
        return result(False, e.errno)
    finally:
        s.close()


def do_bind(a):
    """bind() only, then listen(): says which of the two was refused."""
    s = socket.socket(family_of(a["addr"]), socket.SOCK_STREAM)
    try:
        s.bind((a["addr"], a["port"]))
    except OSError as e:
        return result(False, e.errno, failed="bind")
    try:
        s.listen(8)
    except OSError as e:
        return result(False, e.errno, failed="listen")
    finally:
        s.close()
    return result(True)


def do_serve(a):
    """Listen, print the port, accept until stdin closes (at most `seconds`), report the
    peers accepted. (Until told: a fixed lifetime ran out before slow clients came, and a
    refusal the test expected then passed for the wrong reason.)"""
    s = socket.socket(family_of(a["addr"]), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not a.get("unbound"):
        s.bind((a["addr"], a["port"]))
    s.listen(64)
    s.setblocking(False)
    print(json.dumps({"listening": s.getsockname()[1]}), flush=True)
    peers = []
    deadline = time.monotonic() + a.get("seconds", 120)
    while time.monotonic() < deadline:
        r, _, _ = select.select([s, sys.stdin], [], [], 0.05)
        if sys.stdin in r and not sys.stdin.read(1):
            break
        if s in r:
            try:
                c, peer = s.accept()
                peers.append(peer[0])
                c.close()
            except BlockingIOError:
                pass
    return result(True, peers=peers)


def do_loop(a):
    """Connect to each (port) in turn until `seconds` pass; count outcomes per port. With
    `rate`, at most that many connects per second (paced, so other processes get CPU)."""
    counts = {}
    start = time.monotonic()
    deadline = start + a["seconds"]
    ports, rate = a["ports"], a.get("rate")
    i = 0
    while (now := time.monotonic()) < deadline:
        if rate and i > (now - start) * rate:
            time.sleep(min(i / rate - (now - start), deadline - now))
            continue
        port = ports[i % len(ports)]
        i += 1
        s = socket.socket()
        try:
            s.connect((a["addr"], port))
            key = f"{port}:ok"
        except OSError as e:
            key = f"{port}:{errno.errorcode.get(e.errno, e.errno)}"
        finally:
            s.close()
        counts[key] = counts.get(key, 0) + 1
    return result(True, counts=counts)


# ---- scripted calls (tests/kernel/test_bypass*.py) -------------------------------------
#
# op "script": {"calls": [{"do": ..., ...}, ...]} runs the calls in order in this one
# process and returns {"results": [one result per call]}. Sockets are named ("sock",
# default "s") so several can live side by side. A call that raises gives a result with
# ok false and the errno; the script goes on. Calls:
#   socket  proto=tcp|udp|udplite|mptcp|sctp|sctp-seq, family=4|6, v6only
#   bind addr port        listen [backlog]         connect addr port [timeout]
#   connect_raw addr port [addrlen] [as_family]   libc connect(), any length/family
#   sendto addr port [data] [fastopen] [times] [raw addrlen as_family]    send [data]
#   (any call with an address: "to": NAME takes the port that socket NAME is bound to)
#   sendmsg addr port [data]      sendmmsg addr port n             (libc sendmmsg)
#   recv [timeout]  -> data, peer     drain [timeout] -> datagrams [[data, addr, port]...]
#   accept [timeout] -> peer          setsockopt level opt value   getsockname   close
#   uring_connect addr port           uring_sendmsg addr port [data]   (raw io_uring)
#   sctp_connectx addr port           sctp_bindx addr port   (SCTP setsockopt forms)
#   as uid [gid] [groups]  switch effective ids (root process; uid 0 switches back)
#   become uid [gid] [groups]  setgroups/setgid/setuid for good
#   fork uid [gid] [groups] [scm: [names]] calls   a child as uid runs `calls` on the
#        named sockets, inherited, or (scm) closed and received back over SCM_RIGHTS
#   unshare_user  new user namespace, the current uid mapped to 0 inside
#   sync tag      print {"sync": tag}, wait for a line on stdin

import mmap
import struct

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
IPPROTO_UDPLITE, IPPROTO_MPTCP, IPPROTO_SCTP = 136, 262, 132
MSG_FASTOPEN = 0x20000000
PROTOS = {"tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP), "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
          "udplite": (socket.SOCK_DGRAM, IPPROTO_UDPLITE), "mptcp": (socket.SOCK_STREAM, IPPROTO_MPTCP),
          "sctp": (socket.SOCK_STREAM, IPPROTO_SCTP), "sctp-seq": (socket.SOCK_SEQPACKET, IPPROTO_SCTP)}


def sockaddr(addr, port, family=None, addrlen=None):
    """Raw sockaddr bytes (sockaddr_in for an IPv4 address unless family says 6)."""
    fam = family or (6 if ":" in addr else 4)
    if fam == 4:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, addr) + bytes(8)
    else:
        raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4)
               + socket.inet_pton(socket.AF_INET6, addr) + bytes(4))
    n = len(raw) if addrlen is None else addrlen
    return ctypes.create_string_buffer(raw.ljust(max(n, len(raw)), b"\0"), max(n, len(raw))), n


def _errcheck(rc):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def msghdr(data, addr, port, keep):
    buf = ctypes.create_string_buffer(data, len(data))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    sa, n = sockaddr(addr, port)
    keep += [buf, iov, sa]
    return Msghdr(ctypes.cast(sa, ctypes.c_void_p), n, ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p), 1, None, 0, 0)


class Uring:
    """A minimal io_uring over raw syscalls (no liburing): one SQE in flight at a time."""
    OP_SENDMSG, OP_CONNECT = 9, 16

    def __init__(self, entries=4):
        params = ctypes.create_string_buffer(120)
        self.fd = _errcheck(libc.syscall(425, ctypes.c_uint(entries), params))
        sq_n, cq_n = struct.unpack_from("=II", params, 0)
        self.sq_off = struct.unpack_from("=8I", params, 40)   # head tail mask entries flags dropped array
        self.cq_off = struct.unpack_from("=8I", params, 80)   # head tail mask entries overflow cqes flags
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0x8000)
        self.sq = mmap.mmap(self.fd, self.sq_off[6] + sq_n * 4, flags, rw, offset=0)
        self.cq = mmap.mmap(self.fd, self.cq_off[5] + cq_n * 16, flags, rw, offset=0x8000000)
        self.sqes = mmap.mmap(self.fd, sq_n * 64, flags, rw, offset=0x10000000)

    def run(self, opcode, fd, addr=0, off=0, length=0, msg_flags=0):
        """Submit one SQE, wait for its CQE, return the CQE's res (-errno on failure)."""
        u32 = lambda m, o: struct.unpack_from("=I", m, o)[0]
        tail, mask = u32(self.sq, self.sq_off[1]), u32(self.sq, self.sq_off[2])
        i = tail & mask
        sqe = struct.pack("=BBHiQQIIQHHiQQ", opcode, 0, 0, fd, off, addr, length, msg_flags, 7, 0, 0, 0, 0, 0)
        self.sqes[i * 64:(i + 1) * 64] = sqe
        struct.pack_into("=I", self.sq, self.sq_off[6] + i * 4, i)
        struct.pack_into("=I", self.sq, self.sq_off[1], (tail + 1) & 0xFFFFFFFF)
        _errcheck(libc.syscall(426, self.fd, 1, 1, 1, None, 0))   # IORING_ENTER_GETEVENTS
        head, cmask = u32(self.cq, self.cq_off[0]), u32(self.cq, self.cq_off[2])
        if head == u32(self.cq, self.cq_off[1]):
            raise OSError(errno.EIO, "io_uring: no completion")
        _, res, _ = struct.unpack_from("=QiI", self.cq, self.cq_off[5] + (head & cmask) * 16)
        struct.pack_into("=I", self.cq, self.cq_off[0], (head + 1) & 0xFFFFFFFF)
        return res


def _set_ids(uid, gid, groups, permanent):
    if permanent:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        return
    os.seteuid(0)
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(uid)


def run_script(calls, socks):
    results = []
    for c in calls:
        try:
            results.append(_call(c, socks))
        except socket.timeout:
            results.append(result(False, errno.ETIMEDOUT, timeout=True))
        except OSError as e:
            results.append(result(False, e.errno))
    return results


def _call(c, socks):
    do, name = c["do"], c.get("sock", "s")
    s = socks.get(name)
    if isinstance(s, OSError):  # socket() failed: every later call on it reports that
        if do == "close":
            del socks[name]
            return result(True)
        raise s
    if "to" in c:  # the port another named socket is bound to
        c = {**c, "port": socks[c["to"]].getsockname()[1]}
    if do == "socket":
        kind, proto = PROTOS[c.get("proto", "tcp")]
        fam = socket.AF_INET6 if c.get("family", 4) == 6 else socket.AF_INET
        try:
            s = socket.socket(fam, kind, proto)
        except OSError as e:
            socks[name] = e
            raise
        if c.get("v6only") is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(c["v6only"]))
        if c.get("reuse"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        socks[name] = s
        return result(True)
    if do == "as":
        _set_ids(c["uid"], c.get("gid", c["uid"]), c.get("groups", []), False)
        return result(True)
    if do == "become":
        _set_ids(c["uid"], c.get("gid", c["uid"]), c.get("groups", []), True)
        return result(True)
    if do == "unshare_user":
        uid, gid = os.geteuid(), os.getegid()
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: after setuid, /proc/self/*_map belong to root
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            e = ctypes.get_errno()
            raise OSError(e, "unshare")
        for f, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{f}", "w") as fh:
                fh.write(text)
        return result(True, euid_inside=os.geteuid())
    if do == "sync":
        print(json.dumps({"sync": c.get("tag")}), flush=True)
        sys.stdin.readline()
        return result(True)
    if do == "fork":
        return _fork(c, socks)
    if do == "close":
        s.close()
        del socks[name]
        return result(True)
    if do == "bind":
        s.bind((c["addr"], c.get("port", 0)))
        return result(True, port=s.getsockname()[1])
    if do == "listen":
        s.listen(c.get("backlog", 16))
        return result(True, port=s.getsockname()[1])
    if do == "getsockname":
        return result(True, addr=s.getsockname()[0], port=s.getsockname()[1])
    if do == "setsockopt":
        s.setsockopt(c["level"], c["opt"], c["value"])
        return result(True)
    if do == "connect":
        s.settimeout(c.get("timeout", 2))
        t0 = time.monotonic()
        try:
            s.connect((c["addr"], c["port"]))
        except socket.timeout:   # no answer at all (a dropped SYN or SCTP INIT)
            return result(False, errno.ETIMEDOUT, timeout=True, seconds=time.monotonic() - t0)
        except OSError as e:
            return result(False, e.errno, seconds=time.monotonic() - t0)
        finally:
            s.settimeout(None)
        return result(True, seconds=time.monotonic() - t0, port=s.getsockname()[1])
    if do == "connect_raw":
        sa, n = sockaddr(c["addr"], c["port"], c.get("as_family"), c.get("addrlen"))
        _errcheck(libc.connect(s.fileno(), sa, n))
        return result(True, port=s.getsockname()[1])
    if do == "sendto":
        data = c.get("data", "x").encode()
        flags = MSG_FASTOPEN if c.get("fastopen") else 0
        if c.get("raw"):
            sa, n = sockaddr(c["addr"], c["port"], c.get("as_family"), c.get("addrlen"))
            sent = _errcheck(libc.sendto(s.fileno(), data, len(data), flags, sa, n))
        else:  # blocking: a TFO sendto then waits for the handshake (a refusal comes at once)
            for _ in range(c.get("times", 1)):
                sent = s.sendto(data, flags, (c["addr"], c["port"]))
        return result(True, sent=sent, port=s.getsockname()[1])
    if do == "send":
        return result(True, sent=s.send(c.get("data", "x").encode()))
    if do == "sendmsg":
        sent = s.sendmsg([c.get("data", "x").encode()], [], 0, (c["addr"], c["port"]))
        return result(True, sent=sent, port=s.getsockname()[1])
    if do == "sendmmsg":
        n, keep = c.get("n", 2), []
        arr = (Mmsghdr * n)()
        for i in range(n):
            arr[i].hdr = msghdr(f"{c.get('data', 'm')}{i}".encode(), c["addr"], c["port"], keep)
        sent = _errcheck(libc.sendmmsg(s.fileno(), arr, n, 0))
        return result(True, sent=sent, port=s.getsockname()[1])
    if do == "recv":
        s.settimeout(c.get("timeout", 0.3))
        try:
            data, peer = s.recvfrom(65536)
        finally:
            s.settimeout(None)
        return result(True, data=data.decode(errors="replace"), peer=list(peer[:2]))
    if do == "drain":
        got = []
        s.settimeout(c.get("timeout", 0.3))
        try:
            while True:
                data, peer = s.recvfrom(65536)
                got.append([data.decode(errors="replace"), peer[0], peer[1]])
        except (socket.timeout, BlockingIOError):
            pass
        finally:
            s.settimeout(None)
        return result(True, datagrams=got)
    if do == "accept":
        s.settimeout(c.get("timeout", 0.5))
        try:
            conn, peer = s.accept()
        finally:
            s.settimeout(None)
        conn.settimeout(0.5)
        try:
            data = conn.recv(1024).decode(errors="replace")
        except OSError:
            data = None
        conn.close()
        return result(True, peer=list(peer[:2]), data=data)
    if do in ("sctp_connectx", "sctp_bindx"):  # SCTP_SOCKOPT_CONNECTX / _BINDX_ADD, one address
        sa, n = sockaddr(c["addr"], c["port"])
        s.setsockopt(IPPROTO_SCTP, 110 if do == "sctp_connectx" else 100, sa.raw[:n])
        return result(True)
    if do == "uring_connect":
        ring = Uring()
        sa, n = sockaddr(c["addr"], c["port"], c.get("as_family"), c.get("addrlen"))
        res = ring.run(Uring.OP_CONNECT, s.fileno(), addr=ctypes.addressof(sa), off=n)
        return result(res >= 0, -res if res < 0 else None, res=res)
    if do == "uring_sendmsg":
        ring, keep = Uring(), []
        m = msghdr(c.get("data", "u").encode(), c["addr"], c["port"], keep)
        res = ring.run(Uring.OP_SENDMSG, s.fileno(), addr=ctypes.addressof(m), length=1)
        return result(res >= 0, -res if res < 0 else None, res=res)
    raise ValueError(f"unknown call {do!r}")


def _fork(c, socks):
    """A child as another user runs c["calls"] on the named sockets: inherited across the
    setuid, or (scm) closed in the child and received back over a unix socket."""
    scm = c.get("scm") or []
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent_end.close()
            mine = dict(socks)
            for n in scm:
                mine.pop(n).close()     # the child's copy goes: only SCM_RIGHTS brings it back
            _set_ids(c["uid"], c.get("gid", c["uid"]), c.get("groups", []), True)
            if scm:
                msg, anc, _, _ = child_end.recvmsg(64, socket.CMSG_SPACE(4 * len(scm)))
                fds = struct.unpack(f"={len(scm)}i", anc[0][2][:4 * len(scm)])
                for n, fd in zip(scm, fds):
                    mine[n] = socket.socket(fileno=fd)
            out = {"uid": os.getuid(), "euid": os.geteuid(), "results": run_script(c["calls"], mine)}
            child_end.sendall(json.dumps(out).encode() + b"\n")
        except BaseException as e:  # report, never fall back into the parent's script
            try:
                child_end.sendall(json.dumps({"failed": repr(e)}).encode() + b"\n")
            except OSError:
                pass
            code = 1
        finally:
            os._exit(code)
    child_end.close()
    if scm:
        fds = [socks[n].fileno() for n in scm]
        parent_end.sendmsg([b"f"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"={len(fds)}i", *fds))])
    buf = b""
    parent_end.settimeout(30)
    while not buf.endswith(b"\n"):
        chunk = parent_end.recv(65536)
        if not chunk:
            break
        buf += chunk
    os.waitpid(pid, 0)
    parent_end.close()
    out = json.loads(buf or b'{"failed": "child said nothing"}')
    if "failed" in out:
        raise RuntimeError(f"forked child failed: {out['failed']}")
    return result(True, **out)


def do_script(a):
    socks = {}
    try:
        return result(True, results=run_script(a["calls"], socks))
    finally:
        for s in socks.values():
            if not isinstance(s, OSError):
                s.close()


if __name__ == "__main__":
    raw = sys.argv[1]
    if raw.startswith("@"):  # a long script comes in a file
        with open(raw[1:]) as f:
            raw = f.read()
    args = json.loads(raw)
    enter(args)
    op = {"connect": do_connect, "listen": do_listen, "bind": do_bind, "serve": do_serve,
          "loop": do_loop, "script": do_script}[args["op"]]
    print(json.dumps(op(args)), flush=True)
