// Package testenv is corral's shared test harness: it builds a "lab" of
// simulated hosts on one machine and starts the real components (libvirtd,
// a throwaway Ceph, Open vSwitch, tiny guests) inside it. Every integration
// test, `make demo` and `make bench` use it, so all of them share one
// recipe (see shared/docs/real-components.md) and one clean-up discipline.
//
// # Layout
//
// A lab owns one /24 subnet (10.77.N.0/24, N unique among the labs alive on
// the machine so labs run in parallel), a "switch" network namespace
// "<labid>-sw" holding a Linux bridge, and one network namespace
// "<labid>-<name>" per host with a veth "eth0" plugged into that bridge.
// Nothing is ever configured in the root namespace: every packet of a test
// stays inside the lab's namespaces. Clients must therefore run inside a
// host (Host.Command, Host.Run, Host.Do, Host.DialContext, Host.Listen).
//
// # Clean-up
//
// Everything a lab starts (namespaces, processes, libvirt host directories
// whose QEMU pid files name guests) is recorded in Dir/lab.json before or
// right after it is created. Close kills it all (SIGTERM, a grace period,
// then SIGKILL), deletes the namespaces and removes Dir unless Keep is set.
// A test binary killed mid-run cannot close its lab, so New and Start first
// sweep the labs registered under /tmp/corral-labs whose owning process is
// dead, from what their lab.json says plus every process still inside one
// of their namespaces. Children also get SIGKILL when the test process dies
// (Pdeathsig), so a killed test leaves little for the sweep. Sweep (and
// `go run ./internal/testenv/cmd/labsweep`) runs the same sweep alone.
//
// # Guests
//
// BuildGuest makes a busybox initramfs at run time (nothing is committed)
// for the newest Debian cloud kernel. Its /init mounts devtmpfs, proc and
// sysfs, installs the busybox applets, loads the virtio modules, applies the
// settings found on the kernel command line, prints "GUEST-READY" on
// /dev/ttyS0 and then runs GuestOptions.InitScript or, by default, prints
// "count N" every second. Command-line settings understood by /init:
//
//	corral.ip=10.0.0.5/24     address for eth0 (eth0 and lo are brought up)
//	corral.gw=10.0.0.1        default route via this gateway
//	corral.hostname=vm1       hostname
//
// A typical command line is "console=ttyS0 quiet corral.ip=10.77.3.50/24"
// ("quiet" matters: every kernel message costs time on an emulated UART).
//
// # Prerequisites
//
// Root, iproute2, ethtool and, per component, the Debian packages that
// scripts/install-deps.sh installs. Missing prerequisites fail a test; they
// never skip it.
package testenv
