#!/bin/sh
# Installs the Debian packages corral's build, tests and demo need
# (shared/docs/real-components.md), and only those that are missing:
# a machine that has them all costs one dpkg-query (well under a second).
# Idempotent; changes nothing else on the host.
set -eu

PKGS="libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-block-extra
qemu-utils busybox-static linux-image-cloud-amd64 cpio iproute2 iputils-ping
ethtool openvswitch-switch ceph-mon ceph-osd ceph-common librbd-dev
librados-dev gcc libc6-dev pkg-config uuid-runtime mtools dosfstools"

# Go is not a Debian 12 package at the version go.mod needs (Debian ships
# 1.19): it must be on the machine (these machines have it in /usr/local/go);
# an older Go >= 1.21 fetches the right toolchain itself (GOTOOLCHAIN).
if ! command -v go >/dev/null 2>&1; then
	echo "install-deps: Go 1.26 or later is needed (https://go.dev/dl/), with go on PATH" >&2
	exit 1
fi

# shellcheck disable=SC2086 # word splitting of the list is intended
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' $PKGS 2>/dev/null |
	awk '$1 == "ii" { print $2 }')
missing=
for p in $PKGS; do
	case " $(echo $installed) " in
	*" $p "*) ;;
	*) missing="$missing $p" ;;
	esac
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
