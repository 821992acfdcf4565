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
    """Listen, print the port, accept for `seconds`, report the peers accepted."""
    s = socket.socket(family_of(a["addr"]), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not a.get("unbound"):
        s.bind((a["addr"], a["port"]))
    s.listen(64)
    s.setblocking(False)
    print(json.dumps({"listening": s.getsockname()[1]}), flush=True)
    peers = []
    deadline = time.monotonic() + a.get("seconds", 3)
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            try:
                c, peer = s.accept()
                peers.append(peer[0])
                c.close()
            except BlockingIOError:
                pass
    return result(True, peers=peers)


def do_loop(a):
    """Connect to each (port) in turn until `seconds` pass; count outcomes per port."""
    counts = {}
    deadline = time.monotonic() + a["seconds"]
    ports = a["ports"]
    i = 0
    while time.monotonic() < deadline:
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


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    enter(args)
    op = {"connect": do_connect, "listen": do_listen, "bind": do_bind, "serve": do_serve,
          "loop": do_loop}[args["op"]]
    print(json.dumps(op(args)), flush=True)
