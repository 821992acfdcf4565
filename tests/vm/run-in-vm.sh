#!/bin/bash
# Run a command as root inside Debian's stock kernel (linux-image-amd64) under
# QEMU TCG, with the host's / visible read-only (9p) at the same paths, writable
# through a tmpfs overlay. Prints the command's output and exits with its code.
#
#   tests/vm/run-in-vm.sh [options] -- COMMAND [ARG...]
#
# See tests/vm/README.md. Harness messages go to stderr with a "sgvm:" prefix;
# stdout carries only the guest command's output (stdout and stderr merged).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SGVM_CACHE:-$HERE/cache}
TIMEOUT=${SGVM_TIMEOUT:-900}
BOOT_TIMEOUT=${SGVM_BOOT_TIMEOUT:-300}
MEM=${SGVM_MEM:-2048}
SMP=${SGVM_SMP:-2}
CPU=${SGVM_CPU:-max}
LSM=${SGVM_LSM-lockdown,capability,landlock,yama,apparmor,bpf}  # SGVM_LSM= (empty): kernel default
# mitigations=off: a throwaway test guest; spectre mitigations only slow TCG down
# (BPF verifier behaviour for root does not change: root bypasses them anyway).
APPEND_BASE="mitigations=off"
OVERLAY=1
CONSOLE=0
KEEP=0
SETUP_ONLY=0
EXTRA_ENV=()
SHARES=()
APPEND_EXTRA=${SGVM_APPEND:-}
INITRD_MODULES="virtio_pci 9pnet_virtio 9p overlay"

# Exit codes of the harness itself (the guest command's own code otherwise).
RC_TIMEOUT=124
RC_HARNESS=125

log() { echo "sgvm: $*" >&2; }
die() { log "ERROR: $*"; exit $RC_HARNESS; }

usage() {
    cat <<'EOF'
usage: tests/vm/run-in-vm.sh [options] -- COMMAND [ARG...]

Boots Debian's stock kernel (the package linux-image-amd64 depends on) in QEMU
(TCG, -cpu max) with the host's root filesystem as the guest's root, runs
COMMAND as root in the current directory, prints its output (stdout+stderr) and
exits with its exit code. COMMAND is run as an argv (use bash -c '...' for shell).

options:
  --timeout SECS       kill the guest after SECS in total (default 900; env SGVM_TIMEOUT)
  --boot-timeout SECS  fail if the command has not started after SECS (default 300)
  --mem MIB            guest memory (default 2048)      --smp N   guest CPUs (default 2)
  --cpu MODEL          QEMU CPU model (default max)
  --append ARGS        extra kernel command line (repeatable; env SGVM_APPEND)
  --env NAME[=VALUE]   pass a variable to the guest (repeatable). CI, LANG, LC_ALL and
                       every SOCKGATE_* and PYTEST_* variable are passed anyway
  --share DIR          mount host directory DIR read-write in the guest at the same path
                       (repeatable; e.g. for junit XML or logs the host should keep)
  --console            stream the guest's serial console (kernel log) to stderr
  --no-overlay         guest root is the read-only 9p mount (tmpfs on /tmp, /run, ...)
  --keep               keep the run directory (console.log, output, rc)
  --setup-only         install packages, fetch the kernel, build the initramfs; no boot
exit code: the command's; 124 timeout (boot or command); 125 harness error.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) TIMEOUT=$2; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --boot-timeout) BOOT_TIMEOUT=$2; shift 2 ;;
        --boot-timeout=*) BOOT_TIMEOUT=${1#*=}; shift ;;
        --mem) MEM=$2; shift 2 ;;
        --smp) SMP=$2; shift 2 ;;
        --cpu) CPU=$2; shift 2 ;;
        --append) APPEND_EXTRA="${APPEND_EXTRA:+$APPEND_EXTRA }$2"; shift 2 ;;
        --env) EXTRA_ENV+=("$2"); shift 2 ;;
        --share) SHARES+=("$2"); shift 2 ;;
        --console) CONSOLE=1; shift ;;
        --no-overlay) OVERLAY=0; shift ;;
        --keep) KEEP=1; shift ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) usage >&2; exit 2 ;;
    esac
done
if [ $SETUP_ONLY = 0 ] && [ $# -eq 0 ]; then usage >&2; exit 2; fi
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and the guest sees / as root)"

# ---------------------------------------------------------------- setup ----

apt_retry() {  # apt-get ARGS...; waits for the shared apt/dpkg locks
    local i
    for i in $(seq 1 12); do
        if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 -q "$@" >&2; then
            return 0
        fi
        log "apt-get $* failed (attempt $i), retrying in 10s (lock held by someone else?)"
        sleep 10
    done
    return 1
}

APT_UPDATED=0
apt_update_once() {
    [ $APT_UPDATED = 1 ] && return 0
    apt_retry update && APT_UPDATED=1
}

# dpkg -s also succeeds for a removed package whose config files remain
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

ensure_packages() {
    local missing=() p
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    installed busybox-static || missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v depmod >/dev/null && command -v modprobe >/dev/null || missing+=(kmod)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    apt_update_once || die "apt-get update failed"
    apt_retry install -y --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    for p in "${missing[@]}"; do installed "$p" || die "package $p did not install"; done
}

# The kernel package that linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64.
resolve_kernel_pkg() {
    if [ -n "${SGVM_KERNEL_PKG:-}" ]; then echo "$SGVM_KERNEL_PKG"; return; fi
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$pkg" ]; then
        apt_update_once >/dev/null 2>&1 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
    echo "$pkg"
}

ensure_kernel() {
    local pkg ver kver kdir tmp deb mdir
    pkg=$(resolve_kernel_pkg)
    if [ -z "$pkg" ]; then
        # No apt lists and no registry: use whatever kernel is cached.
        kdir=$(ls -d "$CACHE"/kernel/*/ 2>/dev/null | head -1 || true)
        [ -n "$kdir" ] && [ -f "$kdir/vmlinuz" ] || die "cannot resolve linux-image-amd64 and no kernel cached"
        KDIR=${kdir%/}; KVER=$(basename "$KDIR")
        log "linux-image-amd64 not resolvable, using cached $KVER"
        return
    fi
    kver=${pkg#linux-image-}
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/{print $2}')
    kdir=$CACHE/kernel/$kver
    if [ -f "$kdir/vmlinuz" ] && [ -f "$kdir/modules/modules.dep" ] && \
       { [ -z "$ver" ] || [ "$(cat "$kdir/version" 2>/dev/null)" = "$ver" ]; }; then
        KDIR=$kdir; KVER=$kver; return
    fi
    log "fetching $pkg ${ver:-} (apt-get download)"
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    (cd "$tmp" && apt_retry download "$pkg") || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
    deb=$(ls "$tmp"/*.deb)
    dpkg-deb -x "$deb" "$tmp/root"
    mdir=$(ls -d "$tmp"/root/lib/modules/"$kver" "$tmp"/root/usr/lib/modules/"$kver" 2>/dev/null | head -1 || true)
    [ -n "$mdir" ] && [ -f "$tmp/root/boot/vmlinuz-$kver" ] || { rm -rf "$tmp"; die "unexpected layout in $deb"; }
    depmod -b "${mdir%/lib/modules/$kver}" "$kver" || { rm -rf "$tmp"; die "depmod failed"; }
    rm -rf "$kdir.new" && mkdir -p "$kdir.new"
    mv "$tmp/root/boot/vmlinuz-$kver" "$kdir.new/vmlinuz"
    mv "$tmp/root/boot/config-$kver" "$kdir.new/config"
    mv "$mdir" "$kdir.new/modules"
    echo "${ver:-unknown}" > "$kdir.new/version"
    echo "$pkg" > "$kdir.new/package"
    rm -rf "$tmp" "$kdir"
    mv "$kdir.new" "$kdir"
    # Only the current kernel is kept.
    for d in "$CACHE"/kernel/*/; do [ "${d%/}" = "$kdir" ] || rm -rf "${d%/}"; done
    KDIR=$kdir; KVER=$kver
}

# Load order for a module: its dependencies (deepest first), then itself.
module_order() {  # name...
    local dep=$KDIR/modules/modules.dep name line path deps d
    for name in "$@"; do
        line=$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$dep") || die "module $name not in $KVER"
        path=${line%%:*}; deps=${line#*:}
        for d in $(echo $deps | tr ' ' '\n' | tac); do echo "$d"; done
        echo "$path"
    done | awk '!seen[$0]++'
}

ensure_initramfs() {
    local order key out tmp m
    order=$(module_order $INITRD_MODULES)
    key=$( { cat "$HERE/initramfs-init"; sha256sum /bin/busybox; echo "$KVER $order"; } | sha256sum | cut -c1-16)
    out=$KDIR/initramfs-$key.cpio.gz
    if [ ! -f "$out" ]; then
        log "building initramfs ($INITRD_MODULES)"
        tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
        mkdir -p "$tmp"/{bin,dev,proc,sys,modules,lower,upper,newroot}
        cp /bin/busybox "$tmp/bin/busybox"
        install -m 0755 "$HERE/initramfs-init" "$tmp/init"
        mknod "$tmp/dev/console" c 5 1
        for m in $order; do
            cp "$KDIR/modules/$m" "$tmp/modules/"
            basename "$m" >> "$tmp/modules/order"
        done
        (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
        mv "$out.tmp" "$out"
        rm -rf "$tmp"
        for m in "$KDIR"/initramfs-*.cpio.gz; do [ "$m" = "$out" ] || rm -f "$m"; done
    fi
    INITRD=$out
}

mkdir -p "$CACHE/runs"
t0=$(date +%s.%N)
exec 9> "$CACHE/.lock"
flock 9
ensure_packages
ensure_kernel
ensure_initramfs
flock -u 9
exec 9>&-
t1=$(date +%s.%N)
if [ $SETUP_ONLY = 1 ]; then
    log "setup done: kernel $KVER, $(basename "$INITRD") ($(awk "BEGIN{printf \"%.1f\", $t1-$t0}")s)"
    exit 0
fi

# ------------------------------------------------------------------ run ----

# Runs kept after a failure are pruned after a day.
find "$CACHE/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
QPID=
TPID=
CPID=
stop_qemu() {  # TERM, then KILL after 5 s; reaps it
    local i
    kill "$QPID" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    [ -n "$QPID" ] && stop_qemu
    [ -n "$TPID" ] && kill "$TPID" 2>/dev/null || true
    [ -n "$CPID" ] && kill "$CPID" 2>/dev/null || true
    if [ $KEEP = 1 ] || [ $rc -eq $RC_TIMEOUT ] || [ $rc -eq $RC_HARNESS ]; then
        log "run directory kept: $RUN"
    else
        rm -rf "$RUN"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

cp "$HERE/guest-stage2.sh" "$RUN/stage2.sh"
{
    echo "# environment for the guest command (written by run-in-vm.sh)"
    printf 'export PATH=%q\n' "${PATH}"
    echo "export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb TMPDIR=/tmp"
    echo "export LANG=${LANG:-C.UTF-8}"
    echo "export SGVM=1 SGVM_KERNEL=$KVER"
    while IFS='=' read -r name _; do
        case "$name" in
            CI|LC_ALL|SOCKGATE_*|PYTEST_*) printf 'export %s=%q\n' "$name" "${!name}" ;;
        esac
    done < <(env)
    for e in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do
        case "$e" in
            *=*) printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" ;;
            *) if [ -n "${!e+x}" ]; then printf 'export %s=%q\n' "$e" "${!e}"; fi ;;
        esac
    done
    printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
} > "$RUN/env.sh"
{
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} > "$RUN/cmd.sh"
: > "$RUN/output"
: > "$RUN/shares"
qopt() { printf '%s' "${1//,/,,}"; }  # QEMU option values escape ',' as ',,'
SHARE_ARGS=()
i=0
for d in "${SHARES[@]+"${SHARES[@]}"}"; do
    mkdir -p "$d" && d=$(cd "$d" && pwd) || die "--share $d: cannot create it"
    SHARE_ARGS+=(-virtfs "local,path=$(qopt "$d"),mount_tag=share$i,security_model=none")
    printf 'share%d\t%s\n' $i "$d" >> "$RUN/shares"
    i=$((i + 1))
done
: > "$RUN/console.log"

LOGLEVEL=4; [ $CONSOLE = 1 ] && LOGLEVEL=7
APPEND="console=ttyS0,115200${LSM:+ lsm=$LSM} panic=-1 loglevel=$LOGLEVEL rdinit=/init 8250.nr_uarts=1 $APPEND_BASE"
[ $OVERLAY = 1 ] || APPEND="$APPEND sgvm.overlay=0"
# A fresh tmpfs on /tmp and /var/tmp would hide the work tree or this harness
# if they live there (e.g. a CI clone in /tmp): then keep the host's /tmp visible
# (writes still go to the overlay's tmpfs, never to the host).
for p in "$PWD" "$HERE"; do
    case "$p/" in
        /tmp/*|/var/tmp/*)
            [ $OVERLAY = 1 ] || log "warning: $p is under a directory the guest covers with tmpfs"
            APPEND="$APPEND sgvm.tmpfs=0"; break ;;
    esac
done
[ -z "$APPEND_EXTRA" ] || APPEND="$APPEND $APPEND_EXTRA"

log "booting $KVER (TCG, -smp $SMP -m $MEM), timeout ${TIMEOUT}s"
qemu-system-x86_64 \
    -name sockgate-vm -nodefaults -no-user-config -no-reboot \
    -accel tcg,thread=multi -cpu "$CPU" -smp "$SMP" -m "$MEM" \
    -display none -monitor none -serial "file:$(qopt "$RUN")/console.log" \
    -kernel "$KDIR/vmlinuz" -initrd "$INITRD" -append "$APPEND" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$(qopt "$KDIR")/modules,mount_tag=modules,security_model=none,readonly=on" \
    -virtfs "local,path=$(qopt "$RUN"),mount_tag=vmshared,security_model=none" \
    "${SHARE_ARGS[@]+"${SHARE_ARGS[@]}"}" \
    < /dev/null > "$RUN/qemu.log" 2>&1 &
QPID=$!
tail -n +1 -f --pid=$QPID "$RUN/output" &
TPID=$!
if [ $CONSOLE = 1 ]; then
    tail -n +1 -f --pid=$QPID "$RUN/console.log" >&2 &
    CPID=$!
fi

start=$SECONDS
result=
booted=0
while kill -0 $QPID 2>/dev/null; do
    el=$((SECONDS - start))
    if [ $booted = 0 ] && [ -s "$RUN/booted" ]; then
        booted=1
        log "guest booted in $el s (guest uptime $(cat "$RUN/booted") s), command started"
    fi
    if [ $booted = 0 ] && [ $el -ge "$BOOT_TIMEOUT" ]; then
        result="guest did not start the command within ${BOOT_TIMEOUT}s"; break
    fi
    if [ $el -ge "$TIMEOUT" ]; then
        result="timeout: guest still running after ${TIMEOUT}s"; break
    fi
    sleep 1
done
if [ -n "$result" ]; then
    stop_qemu
fi
wait $QPID 2>/dev/null && qrc=0 || qrc=$?
QPID=
wait $TPID 2>/dev/null || true
TPID=
[ -n "$CPID" ] && { wait $CPID 2>/dev/null || true; CPID=; }
el=$((SECONDS - start))

show_console() {
    log "last lines of the guest console ($RUN/console.log):"
    tail -n 30 "$RUN/console.log" | sed 's/^/sgvm|console| /' >&2
    [ -s "$RUN/qemu.log" ] && sed 's/^/sgvm|qemu| /' "$RUN/qemu.log" >&2
    return 0
}

if [ -n "$result" ]; then
    log "ERROR: $result"
    show_console
    exit $RC_TIMEOUT
fi
if [ ! -s "$RUN/rc" ]; then
    log "ERROR: guest stopped after ${el}s (qemu exit $qrc) without reporting an exit code"
    show_console
    exit $RC_HARNESS
fi
rc=$(cat "$RUN/rc")
log "command exited $rc; wall time ${el}s (guest: command started at $(cat "$RUN/booted")s, ended at $(cat "$RUN/finished" 2>/dev/null)s uptime)"
exit "$rc"
