"""Load tests/vm/lsm_smoke.bpf.o through the system libbpf.so.1 (ctypes), attach
its BPF LSM programs, and check that they decide connect() and listen().

Run as root in the guest by tests/vm/smoke.sh:  python lsm_smoke.py OBJECT
Exit 0 when every check passes.
"""

import ctypes
import errno
import os
import socket
import subprocess
import sys

c_void_p, c_char_p, c_int, c_long = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_long

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
for name, res, args in [
    ("libbpf_get_error", c_long, [c_void_p]),
    ("bpf_object__open_file", c_void_p, [c_char_p, c_void_p]),
    ("bpf_object__load", c_int, [c_void_p]),
    ("bpf_object__close", None, [c_void_p]),
    ("bpf_object__find_program_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_object__find_map_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_program__attach", c_void_p, [c_void_p]),
    ("bpf_program__fd", c_int, [c_void_p]),
    ("bpf_link__destroy", c_int, [c_void_p]),
    ("bpf_map__fd", c_int, [c_void_p]),
    ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p]),
]:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args

failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def ptr_or_die(p, what):
    err = lib.libbpf_get_error(p)
    if not p or err:
        e = -err if err else ctypes.get_errno()
        sys.exit(f"FAIL {what}: {os.strerror(e)} (errno {e})")
    return p


def try_connect(family, addr, port):
    """Return 0 on success, else the errno of connect()."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()


def try_listen(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((addr, port))
        s.listen(1)
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()


def listener(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    return s


def name(e):
    return "ok" if e == 0 else errno.errorcode.get(e, str(e))


def main():
    obj_path = sys.argv[1].encode()
    have_v6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6") and "00000000000000000000000000000001" in open("/proc/net/if_inet6").read()

    # Listeners first, so a refused connect can only come from the LSM program.
    socks = [listener(socket.AF_INET, "127.0.0.1", p) for p in (7, 9)]
    if have_v6:
        socks += [listener(socket.AF_INET6, "::1", p) for p in (7, 9)]
    check(try_connect(socket.AF_INET, "127.0.0.1", 9) == 0, "before attach: connect 127.0.0.1:9 succeeds")

    obj = ptr_or_die(lib.bpf_object__open_file(obj_path, None), "bpf_object__open_file")
    rc = lib.bpf_object__load(obj)
    if rc:
        sys.exit(f"FAIL bpf_object__load: {os.strerror(-rc)} (errno {-rc})")
    print(f"loaded {sys.argv[1]}", flush=True)
    links = []
    for prog_name in (b"smoke_connect", b"smoke_listen"):
        prog = ptr_or_die(lib.bpf_object__find_program_by_name(obj, prog_name), f"find {prog_name.decode()}")
        links.append(ptr_or_die(lib.bpf_program__attach(prog), f"attach {prog_name.decode()}"))
        print(f"attached {prog_name.decode()} (prog fd {lib.bpf_program__fd(prog)})", flush=True)
    out = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True).stdout
    print("bpftool link show:\n  " + "\n  ".join(l for l in out.splitlines() if l.strip()), flush=True)

    e = try_connect(socket.AF_INET, "127.0.0.1", 9)
    check(e == errno.EPERM, f"connect 127.0.0.1:9 -> {name(e)} (want EPERM)")
    e = try_connect(socket.AF_INET, "127.0.0.1", 7)
    check(e == 0, f"connect 127.0.0.1:7 -> {name(e)} (want ok)")
    if have_v6:
        e = try_connect(socket.AF_INET6, "::1", 9)
        check(e == errno.EPERM, f"connect [::1]:9 -> {name(e)} (want EPERM)")
        e = try_connect(socket.AF_INET6, "::1", 7)
        check(e == 0, f"connect [::1]:7 -> {name(e)} (want ok)")
    else:
        print("SKIP IPv6: no ::1 in the guest", flush=True)
    e = try_listen(socket.AF_INET, "127.0.0.1", 19)
    check(e == errno.EPERM, f"listen 127.0.0.1:19 -> {name(e)} (want EPERM)")
    e = try_listen(socket.AF_INET, "127.0.0.1", 17)
    check(e == 0, f"listen 127.0.0.1:17 -> {name(e)} (want ok)")

    counters = ptr_or_die(lib.bpf_object__find_map_by_name(obj, b"counters"), "find map counters")
    fd = lib.bpf_map__fd(counters)
    vals = []
    for i in range(4):
        k, v = ctypes.c_uint32(i), ctypes.c_uint64(0)
        lib.bpf_map_lookup_elem(fd, ctypes.byref(k), ctypes.byref(v))
        vals.append(v.value)
    print(f"kernel counters: connects seen {vals[0]}, denied {vals[1]}; listens seen {vals[2]}, denied {vals[3]}", flush=True)
    check(vals[1] == (2 if have_v6 else 1) and vals[3] == 1, "kernel counted exactly the denied calls")

    for link in links:
        lib.bpf_link__destroy(link)
    lib.bpf_object__close(obj)
    e = try_connect(socket.AF_INET, "127.0.0.1", 9)
    check(e == 0, f"after detach: connect 127.0.0.1:9 -> {name(e)} (want ok)")
    for s in socks:
        s.close()

    if failures:
        print(f"LSM smoke: {len(failures)} check(s) FAILED", flush=True)
        return 1
    print("LSM smoke: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
