#!/bin/bash
# sockgate VM harness, stage 2: PID 1 in the guest after switch_root, running
# from the host's root filesystem (9p + tmpfs overlay). The host copies this file
# to the shared dir, mounted in the guest at /run/sgvm, next to:
#   env.sh   environment and working directory for the command (written by the host)
#   cmd.sh   the command (written by the host)
#   shares   "tag<TAB>path" per --share directory, mounted read-write at path
# and this script writes there:
#   booted   seconds since guest kernel start when the command started
#   output   the command's stdout+stderr (the host streams it)
#   rc       the command's exit code, written last
S=/run/sgvm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

poweroff_now() {
    sync
    /bin/busybox poweroff -f 2>/dev/null
    echo o > /proc/sysrq-trigger
    sleep 10
}
trap poweroff_now EXIT

hostname sockgate-vm 2>/dev/null || /bin/busybox hostname sockgate-vm
ip link set lo up 2>/dev/null || /bin/busybox ip link set lo up
ln -sf /proc/self/mounts /etc/mtab 2>/dev/null
# --share DIR: host directories mounted read-write at the same path.
while IFS=$'\t' read -r tag dir; do
    [ -n "$tag" ] || continue
    mkdir -p "$dir" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none "$tag" "$dir" \
        || echo "sgvm: could not mount $tag at $dir" > /dev/console
done < $S/shares

read -r up _ < /proc/uptime
echo "$up" > $S/booted
echo "sgvm: guest up after ${up}s, running the command" > /dev/console

(
    # shellcheck disable=SC1091
    . $S/env.sh
    exec /bin/bash $S/cmd.sh
) > $S/output 2>&1 < /dev/null
rc=$?

read -r up _ < /proc/uptime
echo "sgvm: command exited $rc at ${up}s" > /dev/console
echo "$up" > $S/finished
echo "$rc" > $S/rc.tmp && mv $S/rc.tmp $S/rc
poweroff_now
