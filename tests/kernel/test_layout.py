"""The ctypes mirror (kernel/layout.py) against the compiled object's BTF: same struct
sizes, same member names, offsets and sizes. The header is the single truth; this test
is what keeps the Python side from drifting."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import pytest

from sockgate.kernel import layout as L
from sockgate.policy import model


def btf_structs() -> dict:
    if not L.OBJECT.exists():
        pytest.fail(f"{L.OBJECT} is not built (make bpf)")
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "-j", "btf", "dump", "file", str(L.OBJECT)], capture_output=True, text=True,
                         check=True).stdout
    types = {t["id"]: t for t in json.loads(out)["types"]}
    return {t["name"]: t for t in types.values() if t.get("kind") == "STRUCT" and t.get("name", "").startswith("sg_")}


def test_every_mirror_matches_btf():
    """bpftool's dump (independent of the loader's libbpf reading) against the mirrors."""
    structs = btf_structs()

    def struct_of(name):
        t = structs.get(name)
        return t and (t["size"], [(m["name"], m["bits_offset"] // 8) for m in t["members"]])

    assert L.layout_mismatches(struct_of) == []


def test_the_load_time_check_reads_the_same_btf_as_bpftool():
    from sockgate.kernel import libbpf
    lib = libbpf.lib()
    obj = libbpf.check_ptr(lib.bpf_object__open_file(str(L.OBJECT).encode(), None), "open")
    try:
        structs = btf_structs()
        for name in L.MIRRORS:
            t = structs[name]
            assert libbpf.btf_struct(obj, name) == (t["size"], [(m["name"], m["bits_offset"] // 8)
                                                                for m in t["members"]])
        assert libbpf.btf_struct(obj, "sg_no_such_struct") is None
    finally:
        lib.bpf_object__close(obj)


def test_a_drifted_mirror_is_refused_before_anything_loads(monkeypatch, tmp_path):
    class Drifted(ctypes.Structure):
        _fields_ = [("uid", ctypes.c_uint32), ("exit", ctypes.c_uint32)]
    monkeypatch.setitem(L.MIRRORS, "sg_rule", Drifted)
    from sockgate.errors import KernelError
    from sockgate.kernel.loader import Gate
    with pytest.raises(KernelError, match="(?s)make bpf.*struct sg_rule"):
        Gate._load_object(L.OBJECT, "cgroup")


def test_constants_come_from_the_header():
    assert L.WORDS * 64 == L.MAX_RULES and L.SUMMARY_WORDS * 64 == L.WORDS
    assert model.MAX_RULES == L.MAX_RULES and model.MAX_BITMAPS == L.MAX_BITMAPS
    assert [p.value for p in model.Protocol] == [L.C[f"SG_PROTO_{p.name}"] for p in model.Protocol]
    assert (L.ALLOWED, L.REJECTED, L.AUDIT_REJECTED) == (0, 1, 2)
    from sockgate.policy.compile import VERDICT_OF
    assert sorted(VERDICT_OF.values()) == [L.ALLOWED, L.REJECTED, L.AUDIT_REJECTED]
