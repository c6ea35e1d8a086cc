#!/bin/bash
# Start libvirtd on a host without systemd, idempotently (VMM.md §8): the
# libvirt-qemu user it looks up before reading qemu.conf, its log directory,
# QEMU running as root with serial output to plain files, then the daemon.
# Does nothing when a daemon already answers or when not root.
set -euo pipefail
URI=${QUBES_VMM_URI:-qemu:///system}
[ "$URI" = qemu:///system ] || exit 0
if virsh -q -c "$URI" uri >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v libvirtd >/dev/null; then
    echo "setup: WARNING: libvirtd is not running and cannot be started here" \
         "(needs root and the libvirt-daemon package); VM tests will be skipped" >&2
    exit 0
fi
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
    || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /etc/libvirt
conf='user = "root"
group = "root"
stdio_handler = "file"'
if [ "$(cat /etc/libvirt/qemu.conf 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > /etc/libvirt/qemu.conf
fi
echo "setup: starting libvirtd"
libvirtd -d --pid-file=/run/libvirtd.pid
for _ in $(seq 1 200); do
    [ -S /run/libvirt/libvirt-sock ] && break
    sleep 0.05
done
# The first call probes QEMU's capabilities (~4 s); pay it here, not in a test.
virsh -q -c "$URI" list >/dev/null
