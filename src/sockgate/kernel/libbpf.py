"""ctypes binding to the system libbpf.so.1: only the calls sockgate uses.

libbpf >= 1.0 returns NULL/negative and sets errno; every wrapper here turns that into
a KernelError that names the call, so a refusal is never a bare OSError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import threading
from ctypes import (
    CFUNCTYPE, POINTER, Structure, byref, c_bool, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p,
)

from sockgate.errors import KernelError

_lib = None
_log_lines: list[str] = []
_log_lock = threading.Lock()

# libbpf_set_print's callback is variadic (fmt, va_list): vsnprintf formats it for us.
_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class TestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            l = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError:
            try:
                l = ctypes.CDLL(name, use_errno=True)
            except OSError as e:
                raise KernelError(f"cannot load libbpf.so.1 ({e}); install the libbpf1 package") from None
        _declare(l)
        _libc = ctypes.CDLL(None, use_errno=True)
        vsnprintf = _libc.vsnprintf
        vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

        def _print(level, fmt, args):
            buf = ctypes.create_string_buffer(1 << 18)
            vsnprintf(buf, 1 << 18, fmt, args)
            with _log_lock:
                _log_lines.append(buf.value.decode(errors="replace"))
                del _log_lines[:-400]
            return 0

        global _print_cb
        _print_cb = _PRINT_FN(_print)  # keep alive
        l.libbpf_set_print(_print_cb)
        _lib = l
    return _lib


def take_log() -> str:
    """libbpf's messages since the last call (verifier output on a failed load)."""
    with _log_lock:
        text = "".join(_log_lines)
        _log_lines.clear()
    return text


def _declare(l: ctypes.CDLL) -> None:
    sig = {
        "libbpf_set_print": (c_void_p, [_PRINT_FN]),
        "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
        "bpf_program__attach_netns": (c_void_p, [c_void_p, c_int]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__set_pin_path": (c_int, [c_void_p, c_char_p]),
        "bpf_map__pin": (c_int, [c_void_p, c_char_p]),
        "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
        "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
        "bpf_link__fd": (c_int, [c_void_p]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_obj_get": (c_int, [c_char_p]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)]),
        "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)]),
        "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_object__btf": (c_void_p, [c_void_p]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
        "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
        "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
        "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(l, name)
        fn.restype = res
        fn.argtypes = args


def _fail(what: str, rc: int | None = None) -> KernelError:
    err = -rc if rc is not None and rc < 0 else ctypes.get_errno()
    log = take_log().strip()
    msg = f"{what}: {os.strerror(err) if err else 'failed'}"
    if log:
        tail = "\n".join(log.splitlines()[-25:])
        msg += f"\nlibbpf says:\n{tail}"
    e = KernelError(msg)
    e.errno = err  # type: ignore[attr-defined]
    return e


def check_ptr(ptr, what: str):
    if not ptr:
        raise _fail(what)
    return ptr


def check_rc(rc: int, what: str) -> int:
    if rc < 0:
        raise _fail(what, rc)
    return rc


def obj_get(path: str) -> int:
    return check_rc(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def map_update(fd: int, key: ctypes.Structure | ctypes._SimpleCData, value, flags: int = 0) -> None:
    rc = lib().bpf_map_update_elem(fd, byref(key), byref(value), flags)
    check_rc(rc, "map update")


def map_lookup(fd: int, key, value) -> bool:
    rc = lib().bpf_map_lookup_elem(fd, byref(key), byref(value))
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        if err == errno_mod.ENOENT:
            return False
        raise _fail("map lookup", rc)
    return True


def map_delete(fd: int, key) -> bool:
    rc = lib().bpf_map_delete_elem(fd, byref(key))
    if rc < 0:
        err = -rc
        if err == errno_mod.ENOENT:
            return False
        raise _fail("map delete", rc)
    return True


def map_keys(fd: int, key_type) -> list:
    """All keys of a map (hash/LPM), following get_next_key."""
    keys = []
    cur = None
    nxt = key_type()
    while True:
        rc = lib().bpf_map_get_next_key(fd, byref(cur) if cur is not None else None, byref(nxt))
        if rc < 0:
            break
        keys.append(nxt)
        cur = nxt
        nxt = key_type()
    return keys


def map_delete_batch(fd: int, keys, count: int) -> None:
    """Bulk delete of keys that exist (a ctypes array, deleted in its order); one call per
    element where the map type has no batch delete."""
    if count == 0:
        return
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    n = c_uint32(count)
    rc = lib().bpf_map_delete_batch(fd, keys, byref(n), byref(opts))
    if rc < 0 and -rc in (errno_mod.EINVAL, 524):  # ENOTSUPP (kernel-internal 524)
        for k in keys:
            map_delete(fd, k)
        return
    check_rc(rc, "map batch delete")


def map_update_batch(fd: int, keys, values, count: int) -> None:
    """Bulk update (arrays and hashes); falls back to one call per element if unsupported."""
    if count == 0:
        return
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    n = c_uint32(count)
    rc = lib().bpf_map_update_batch(fd, keys, values, byref(n), byref(opts))
    if rc < 0 and -rc in (errno_mod.EINVAL, 524):  # ENOTSUPP (kernel-internal 524)
        ksz = ctypes.sizeof(keys) // count
        vsz = ctypes.sizeof(values) // count
        kb = ctypes.addressof(keys)
        vb = ctypes.addressof(values)
        for i in range(count):
            check_rc(lib().bpf_map_update_elem(fd, c_void_p(kb + i * ksz), c_void_p(vb + i * vsz), 0), "map update")
        return
    check_rc(rc, "map batch update")


def link_target(link_fd: int) -> int:
    """The cgroup id or netns inode a cgroup/netns link is attached to; 0 once detached.
    (struct bpf_link_info: type, id, prog_id, then the per-type union at offset 16.)"""
    info = (ctypes.c_uint64 * 8)()
    n = c_uint32(ctypes.sizeof(info))
    check_rc(lib().bpf_obj_get_info_by_fd(link_fd, info, byref(n)), "read link info")
    link_type = info[0] & 0xFFFFFFFF
    return info[2] if link_type == _LINK_TYPE_CGROUP else info[2] & 0xFFFFFFFF


_LINK_TYPE_CGROUP = 3  # BPF_LINK_TYPE_CGROUP; netns (5) keeps netns_ino (u32) at the same offset
_BTF_KIND_STRUCT = 4


class _BtfType(Structure):  # struct btf_type (uapi linux/btf.h), struct btf_member[vlen] follows
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size", c_uint32)]


class _BtfMember(Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


def btf_struct(obj, name: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(size, [(member, byte offset)]) of struct `name` in an opened object's BTF, or None."""
    l = lib()
    btf = l.bpf_object__btf(obj)
    tid = l.btf__find_by_name_kind(btf, name.encode(), _BTF_KIND_STRUCT) if btf else -1
    if tid < 0:
        return None
    t = _BtfType.from_address(l.btf__type_by_id(btf, tid))
    members = (_BtfMember * (t.info & 0xFFFF)).from_address(ctypes.addressof(t) + ctypes.sizeof(_BtfType))
    bit_offset = (lambda off: off & 0xFFFFFF) if t.info >> 31 else (lambda off: off)  # kind_flag: bitfields
    return t.size, [(l.btf__name_by_offset(btf, m.name_off).decode(), bit_offset(m.offset) // 8) for m in members]


def num_possible_cpus() -> int:
    return check_rc(lib().libbpf_num_possible_cpus(), "count possible cpus")
