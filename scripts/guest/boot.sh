#!/bin/sh
# Boots the test guest under plain QEMU (TCG, no network) on this terminal,
# to debug its /init by hand; Ctrl-A X quits. Extra arguments are appended
# to the kernel command line, e.g. corral.hostname=vm1.
#   scripts/guest/boot.sh [kernel args...]
set -eu
dir=/tmp/corral-guest
eval "$("$(dirname "$0")/build.sh" "$dir")"
exec qemu-system-x86_64 -machine pc -m 192 -nographic -no-reboot \
	-kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 $*"
