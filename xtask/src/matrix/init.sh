#!/bin/sh
# /init of the initramfs `cargo xtask matrix` boots under QEMU (xtask/src/matrix/).
#
# Mounts what the agent needs, sets up the cgroup layout named on the kernel command line
# (pidmap.cgroup=v2|v1|hybrid), runs the checks (/etc/pidmap/checks.sh) and powers off.
# Lines starting with PIDMAP- are read by the host; the rest is the console log.

/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up

layout=$(sed -n 's/.*pidmap\.cgroup=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "PIDMAP-INFO kernel $(uname -r)"

# Every v1 controller the kernel has, each in its own hierarchy at /sys/fs/cgroup/<name>.
# One the kernel lists but cannot mount as v1 (memory without CONFIG_MEMCG_V1) is noted.
mount_v1() {
    mounted="" refused=""
    for c in $(awk '!/^#/ && $4 == 1 { print $1 }' /proc/cgroups); do
        mkdir -p "/sys/fs/cgroup/$c"
        if mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" 2>/dev/null; then
            mounted="$mounted $c"
        else
            rmdir "/sys/fs/cgroup/$c"
            refused="$refused $c"
        fi
    done
    echo "PIDMAP-INFO v1-controllers${mounted:- none}"
    [ -z "$refused" ] || echo "PIDMAP-INFO v1-not-mountable$refused"
}

case "$layout" in
v2)
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
    ;;
v1)
    mount -t tmpfs cgroup /sys/fs/cgroup
    mount_v1
    ;;
hybrid)
    mount -t tmpfs cgroup /sys/fs/cgroup
    mount_v1
    mkdir /sys/fs/cgroup/unified
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    ;;
*)
    echo "PIDMAP-INFO error: no pidmap.cgroup=v2|v1|hybrid on the kernel command line"
    ;;
esac
echo "PIDMAP-INFO layout $layout"

mkdir -p /run/pidmap-matrix
PIDMAP=/bin/pidmap STATIC_TRUE=/bin/static-true WORK=/run/pidmap-matrix METRICS_PORT=9464 \
    sh /etc/pidmap/checks.sh
poweroff -f
