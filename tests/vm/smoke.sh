#!/bin/bash
# BPF LSM smoke test for Debian's stock kernel.
#
# On the host:   tests/vm/smoke.sh [run-in-vm options]
#   builds tests/vm/cache/smoke/lsm_smoke.bpf.o (clang-16, vmlinux.h from the
#   host's BTF, CO-RE) and runs this script in the guest via run-in-vm.sh.
# In the guest (SGVM=1, set by run-in-vm.sh): shows the kernel, its LSMs, the
#   mounts, libbpf and bpftool's view, then loads and attaches the LSM programs
#   with lsm_smoke.py and checks connect()/listen() decisions.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${SGVM_CACHE:-$HERE/cache}/smoke
OBJ=$OUT/lsm_smoke.bpf.o

if [ "${SGVM:-}" != 1 ]; then
    # ---- host: build, then boot ----
    missing=()
    for p in clang-16 llvm-16 libbpf-dev libbpf1 bpftool; do dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "smoke: apt-get install ${missing[*]}" >&2
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}") >&2
    fi
    mkdir -p "$OUT"
    if [ ! -s "$OUT/vmlinux.h" ]; then
        bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$OUT/vmlinux.h.tmp"
        mv "$OUT/vmlinux.h.tmp" "$OUT/vmlinux.h"
    fi
    clang-16 -target bpf -g -O2 -D__TARGET_ARCH_x86 -I"$OUT" -c "$HERE/lsm_smoke.bpf.c" -o "$OBJ.tmp"
    mv "$OBJ.tmp" "$OBJ"
    echo "smoke: built $OBJ (vmlinux.h from the host's BTF, $(uname -r))" >&2
    exec "$HERE/run-in-vm.sh" "$@" -- bash "$HERE/smoke.sh"
fi

# ---- guest ----
PY=$REPO/.venv/bin/python
[ -x "$PY" ] || PY=python3
step() { echo; echo "### $*"; }
step "uname -r"; uname -r
step "cat /sys/kernel/security/lsm"; cat /sys/kernel/security/lsm; echo
grep -q bpf /sys/kernel/security/lsm || { echo "FAIL: bpf is not an active LSM"; exit 1; }
step "mount | grep -E 'bpf|cgroup2'"; mount | grep -E 'bpf|cgroup2'
step "$PY -c \"import ctypes; ctypes.CDLL('libbpf.so.1'); print('libbpf ok')\""
"$PY" -c "import ctypes, sys; ctypes.CDLL('libbpf.so.1'); print('libbpf ok', sys.version.split()[0])"
step "bpftool feature probe kernel | grep -i lsm"
bpftool feature probe kernel 2>/dev/null | grep -i lsm || true
step "$PY lsm_smoke.py $OBJ"
"$PY" "$HERE/lsm_smoke.py" "$OBJ"
