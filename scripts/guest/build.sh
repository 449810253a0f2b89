#!/bin/sh
# Builds the test guest (internal/testenv.BuildGuest) into DIR and prints
# KERNEL=... and INITRD=... lines. Nothing is committed: DIR defaults to
# /tmp/corral-guest.
#   scripts/guest/build.sh [DIR] [-init-script 'sh lines']
set -eu
cd "$(dirname "$0")/../.."
dir=${1:-/tmp/corral-guest}
[ $# -gt 0 ] && shift
exec go run ./internal/testenv/cmd/buildguest -out "$dir" "$@"
