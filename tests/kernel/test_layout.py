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
    structs = btf_structs()
    for cname, mirror in L.MIRRORS.items():
        assert cname in structs, f"struct {cname} missing from the object's BTF"
        t = structs[cname]
        assert t["size"] == ctypes.sizeof(mirror), cname
        btf_members = [(m["name"], m["bits_offset"] // 8) for m in t["members"]]
        py_members = [(name, getattr(mirror, name).offset) for name, *_ in mirror._fields_]
        assert btf_members == py_members, cname


def test_constants_come_from_the_header():
    assert L.WORDS * 64 == L.MAX_RULES and L.SUMMARY_WORDS * 64 == L.WORDS
    assert model.MAX_RULES == L.MAX_RULES and model.MAX_BITMAPS == L.MAX_BITMAPS
    assert [p.value for p in model.Protocol] == [L.C[f"SG_PROTO_{p.name}"] for p in model.Protocol]
    assert (L.ALLOWED, L.REJECTED, L.AUDIT_REJECTED) == (0, 1, 2)
    from sockgate.policy.compile import VERDICT_OF
    assert sorted(VERDICT_OF.values()) == [L.ALLOWED, L.REJECTED, L.AUDIT_REJECTED]
