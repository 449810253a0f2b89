#!/bin/busybox sh
# /init of corral's test guests (see package testenv doc), put into the
# initramfs by BuildGuest. The caller's lines are in /etc/corral-init.sh.
/bin/busybox mkdir -p /dev /proc /sys /tmp /run
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
for m in $(cat /etc/corral-modules); do insmod "/lib/modules/$m" 2>/dev/null; done
ip link set lo up
CORRAL_IP=; CORRAL_GW=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	corral.ip=*) CORRAL_IP="${arg#corral.ip=}" ;;
	corral.gw=*) CORRAL_GW="${arg#corral.gw=}" ;;
	corral.hostname=*) hostname "${arg#corral.hostname=}" ;;
	esac
done
export CORRAL_IP CORRAL_GW
if [ -n "$CORRAL_IP" ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	ip addr add "$CORRAL_IP" dev eth0 && ip link set eth0 up
	if [ -n "$CORRAL_GW" ]; then ip route add default via "$CORRAL_GW"; fi
fi
echo GUEST-READY > /dev/ttyS0
exec </dev/null >/dev/ttyS0 2>&1
# A separate shell: an error in the caller's script must not end /init
# (the kernel would panic).
sh /etc/corral-init.sh
while :; do sleep 3600; done
