package integration

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// storageGuestInit is the test guest's script: its mode comes from the
// kernel command line (t.mode=write|clobber|read), so one initramfs serves
// every step. It writes a marker to the first sector of /dev/vda (write,
// clobber), always prints that sector between "READ<" and ">END", then
// prints the disk's size in sectors every 2 s so a live resize shows up.
const storageGuestInit = `mode=
for arg in $(cat /proc/cmdline); do case "$arg" in t.mode=*) mode="${arg#t.mode=}" ;; esac; done
i=0; while [ ! -e /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "DISKS: $(ls /dev/vd* 2>&1 | tr '\n' ' ')"
case "$mode" in
write) echo MARKER-42 | dd of=/dev/vda bs=512 count=1 conv=notrunc,fsync 2>/dev/null && echo MARKER-WRITTEN ;;
clobber) echo CLOBBERED-7 | dd of=/dev/vda bs=512 count=1 conv=notrunc,fsync 2>/dev/null && echo CLOBBER-WRITTEN ;;
esac
echo "READ<$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -c 'A-Za-z0-9-' ' ' | tr -s ' ')>END"
while :; do echo "SIZE<$(cat /sys/block/vda/size)>"; sleep 2; done
`

// TestStorage drives issue 5 end to end through the CLI on real daemons:
// Ceph RBD and dir pools, a disk written on one node and read back after a
// cold move to the other, templates with linked and full clones, live resize,
// snapshot and rollback, and the refusals that must come with clear
// messages and leave nothing behind.
func TestStorage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	began := time.Now()
	bins, err := testenv.Build()
	if err != nil {
		t.Fatal(err)
	}
	lab := testenv.New(t, testenv.Options{})
	kernel, initrd, err := testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{InitScript: storageGuestInit})
	if err != nil {
		t.Fatal(err)
	}
	ceph, err := lab.StartCeph(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ceph.CreateClient(ctx, "corral")
	if err != nil {
		t.Fatal(err)
	}
	nodes, _ := startVMNodes(t, ctx, lab, bins, "n1", "n2")
	if err := testenv.FormCluster(ctx, "prod", []*testenv.Corrald{nodes["n1"], nodes["n2"]}, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab, ceph and cluster ready after %s", time.Since(began).Round(time.Millisecond))

	c := clusterCLI{t: t, ctx: ctx, cluster: "prod", nodes: nodes}
	cli, must := c.cli, c.must
	// refused runs a command that must fail with a message naming the cause.
	refused := func(want string, args ...string) string {
		t.Helper()
		return c.refused("n1", want, args...)
	}
	c.waitReady("n1", 2, 90*time.Second)

	// guest creates a VM booting the test guest in a mode, with extra flags.
	guest := func(name, mode string, extra ...string) {
		t.Helper()
		start := time.Now()
		args := append([]string{"vm", "create", name, "--vcpus", "1", "--memory", "160", "--kernel", kernel, "--initrd", initrd,
			"--cmdline", "console=ttyS0 quiet t.mode=" + mode}, extra...)
		must("n1", args...)
		t.Logf("vm create %s (%s): %s", name, mode, time.Since(start).Round(time.Millisecond))
	}
	// console waits for a string on a guest's console, read through the API.
	console := func(name, until string) string {
		t.Helper()
		start := time.Now()
		out, err := cli("n1", "vm", "console", name, "--until", until, "--for", "150s")
		if err != nil {
			t.Fatalf("console of %s: %q not seen: %v\n%s", name, until, err, out)
		}
		t.Logf("console of %s shows %q after %s", name, until, time.Since(start).Round(time.Millisecond))
		return out
	}
	// firstSector returns what a guest read from its disk's first sector.
	firstSector := func(name string) string {
		t.Helper()
		out := console(name, ">END")
		_, rest, ok := strings.Cut(out, "READ<")
		if !ok {
			t.Fatalf("console of %s has no READ< line:\n%s", name, out)
		}
		sector, _, _ := strings.Cut(rest, ">END")
		return sector
	}
	deleteVM := func(name string) {
		t.Helper()
		must("n1", "vm", "delete", name, "--keep-disks")
		eventually(t, 60*time.Second, "vm "+name+" gone and its volumes free", func() (bool, string) {
			out, _ := cli("n1", "volume", "list", "-o", "json")
			return !strings.Contains(out, `"`+name+`"`), out
		})
	}

	// Pools. The key is sealed in the state and never printed back.
	must("n1", "storage", "add", "ceph", "--kind", "rbd", "--monitors", ceph.MonAddr, "--ceph-pool", "rbd", "--user", "corral", "--key", key)
	for _, args := range [][]string{{"storage", "list", "-o", "json"}, {"storage", "list"}, {"storage", "show", "ceph", "-o", "json"}, {"event", "list", "-o", "json"}} {
		out := must("n2", args...)
		if strings.Contains(out, key) {
			t.Fatalf("corral %s prints the cephx key:\n%s", strings.Join(args, " "), out)
		}
		if args[0] == "storage" && !strings.Contains(out, "ceph") {
			t.Fatalf("corral %s lacks pool ceph:\n%s", strings.Join(args, " "), out)
		}
	}

	// Bad input: each refusal is an error with a clear message.
	refused(`storage pool "nopool" not found`, "volume", "create", "nopool/x", "--size", "64M")
	// A wrong key: Ceph refuses the client and nothing is left.
	wrongKey, err := ceph.Host.Run(ctx, "ceph-authtool", "--gen-print-key")
	if err != nil {
		t.Fatal(err)
	}
	wrongKey = strings.TrimSpace(wrongKey)
	must("n1", "storage", "add", "bad", "--kind", "rbd", "--monitors", ceph.MonAddr, "--ceph-pool", "rbd", "--user", "corral", "--key", wrongKey)
	start := time.Now()
	out := refused("authentication", "volume", "create", "bad/x", "--size", "64M")
	t.Logf("wrong key refused after %s: %s", time.Since(start).Round(time.Millisecond), lastLine(out))
	// An unreachable Ceph (no host at that lab address): a clear error
	// within about a minute, no hang.
	unused := lab.Subnet.Addr().As4()
	unused[3] = 250
	must("n1", "storage", "add", "gone", "--kind", "rbd", "--monitors", netip.AddrPortFrom(netip.AddrFrom4(unused), 3300).String(),
		"--ceph-pool", "rbd", "--user", "corral", "--key", key)
	start = time.Now()
	out = refused("unreachable", "volume", "create", "gone/x", "--size", "64M")
	if d := time.Since(start); d > 90*time.Second {
		t.Fatalf("unreachable Ceph took %s to fail", d)
	}
	t.Logf("unreachable Ceph refused after %s: %s", time.Since(start).Round(time.Millisecond), lastLine(out))
	out = must("n1", "volume", "list", "-o", "json")
	if strings.Contains(out, `"x"`) {
		t.Fatalf("failed volume creations left a record:\n%s", out)
	}
	if out, err := ceph.RBD(ctx, "ls", "rbd"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("failed volume creations left an image: %v\n%s", err, out)
	}
	for _, p := range []string{"bad", "gone"} {
		must("n1", "storage", "remove", p)
	}

	// Write a marker on n1, read it back on n2.
	must("n1", "volume", "create", "ceph/d1", "--size", "64M")
	guest("w1", "write", "--node", "n1", "--disk", "ceph/d1")
	if out := console("w1", "MARKER-WRITTEN"); !strings.Contains(out, "/dev/vda") {
		t.Fatalf("guest lacks /dev/vda:\n%s", out)
	}
	refused("used by vm", "volume", "delete", "ceph/d1")
	refused("not stopped", "vm", "move", "w1", "--node", "n2")
	must("n1", "vm", "stop", "w1")
	// A cold move to n2, then a boot there that only reads the disk.
	must("n1", "vm", "move", "w1", "--node", "n2")
	must("n1", "vm", "edit", "w1", "--cmdline", "console=ttyS0 quiet t.mode=read")
	must("n1", "vm", "start", "w1")
	out = must("n1", "vm", "show", "w1", "-o", "json")
	if !strings.Contains(strings.ReplaceAll(out, " ", ""), `"node":"n2"`) {
		t.Fatalf("w1 not on n2 after the move:\n%s", out)
	}
	if got := firstSector("w1"); !strings.Contains(got, "MARKER-42") {
		t.Fatalf("n2 reads %q from ceph/d1, want MARKER-42", got)
	}

	// Live resize of a disk of a VM on n2, asked on n1: the guest sees it.
	refused("shrink", "volume", "resize", "ceph/d1", "--size", "32M")
	start = time.Now()
	must("n1", "volume", "resize", "ceph/d1", "--size", "128M")
	console("w1", "SIZE<262144>")
	t.Logf("live resize seen by the guest after %s", time.Since(start).Round(time.Millisecond))
	if out, err := ceph.RBD(ctx, "info", "rbd/d1"); err != nil || !strings.Contains(out, "128 MiB") {
		t.Fatalf("rbd info after resize: %v\n%s", err, out)
	}

	// Snapshot (while running), overwrite, rollback (refused while in use).
	must("n1", "volume", "snapshot", "ceph/d1", "s1")
	deleteVM("w1")
	guest("c1", "clobber", "--disk", "ceph/d1")
	console("c1", "CLOBBER-WRITTEN")
	if got := firstSector("c1"); !strings.Contains(got, "CLOBBERED-7") {
		t.Fatalf("after overwrite the guest reads %q", got)
	}
	refused("stop it", "volume", "rollback", "ceph/d1", "s1")
	deleteVM("c1")
	must("n1", "volume", "rollback", "ceph/d1", "s1")
	guest("r2", "read", "--disk", "ceph/d1")
	if got := firstSector("r2"); !strings.Contains(got, "MARKER-42") || strings.Contains(got, "CLOBBERED") {
		t.Fatalf("after rollback the guest reads %q, want MARKER-42", got)
	}
	deleteVM("r2")

	// Templates: a linked clone and a full copy both boot with the marker.
	must("n1", "volume", "template", "ceph/d1")
	refused("is a template", "vm", "create", "bad1", "--kernel", kernel, "--disk", "ceph/d1")
	guest("clone1", "read", "--from", "ceph/d1")
	guest("full1", "read", "--from", "ceph/d1", "--full")
	for _, vm := range []string{"clone1", "full1"} {
		if got := firstSector(vm); !strings.Contains(got, "MARKER-42") {
			t.Fatalf("%s reads %q from its clone, want MARKER-42", vm, got)
		}
	}
	info, err := ceph.RBD(ctx, "info", "rbd/clone1-disk0")
	if err != nil || !strings.Contains(info, "parent: rbd/d1@") {
		t.Fatalf("linked clone has no parent: %v\n%s", err, info)
	}
	info, err = ceph.RBD(ctx, "info", "rbd/full1-disk0")
	if err != nil || strings.Contains(info, "parent:") {
		t.Fatalf("full copy has a parent: %v\n%s", err, info)
	}
	refused("clone", "volume", "delete", "ceph/d1")
	deleteVM("clone1")
	deleteVM("full1")
	must("n1", "volume", "delete", "ceph/clone1-disk0")
	must("n1", "volume", "delete", "ceph/full1-disk0")
	must("n1", "volume", "template", "ceph/d1", "--unset")
	must("n1", "volume", "delete", "ceph/d1")
	if out, err := ceph.RBD(ctx, "ls", "rbd"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("images left after deleting every volume: %v\n%s", err, out)
	}

	// A dir pool: node-local volumes (every lab node shares one
	// filesystem, so one path serves all; the record says which node
	// holds each volume).
	must("n1", "storage", "add", "local", "--kind", "dir", "--path", filepath.Join(lab.Dir, "pool-local"))
	must("n1", "volume", "create", "local/l1", "--size", "64M", "--node", "n2")
	out = must("n1", "volume", "list", "local", "-o", "json")
	if !strings.Contains(strings.ReplaceAll(out, " ", ""), `"node":"n2"`) {
		t.Fatalf("dir volume not recorded on n2:\n%s", out)
	}
	refused("shrink", "volume", "resize", "local/l1", "--size", "32M")
	must("n1", "volume", "resize", "local/l1", "--size", "128M")
	must("n1", "volume", "snapshot", "local/l1", "s1")
	refused("cannot fail over", "vm", "create", "dha", "--kernel", kernel, "--disk", "local/l1", "--ha", "restart")
	refused("lives on n2", "vm", "create", "dn1", "--kernel", kernel, "--disk", "local/l1", "--node", "n1")
	guest("dw", "write", "--disk", "local/l1")
	console("dw", "MARKER-WRITTEN")
	console("dw", "SIZE<262144>")
	out = must("n1", "vm", "show", "dw", "-o", "json")
	if !strings.Contains(strings.ReplaceAll(out, " ", ""), `"node":"n2"`) {
		t.Fatalf("vm on a dir volume of n2 not placed on n2:\n%s", out)
	}
	refused("local storage", "vm", "migrate", "dw", "--node", "n1")
	must("n1", "vm", "stop", "dw")
	refused("node-local storage", "vm", "move", "dw", "--node", "n1")
	deleteVM("dw")
	must("n1", "volume", "rollback", "local/l1", "s1")
	guest("dr", "read", "--disk", "local/l1")
	if got := firstSector("dr"); strings.Contains(got, "MARKER-42") {
		t.Fatalf("after rollback to a snapshot taken before the write, the guest still reads %q", got)
	}
	deleteVM("dr")
	must("n1", "volume", "delete", "local/l1")
	// After every kind of task and event, the key still shows nowhere.
	for _, args := range [][]string{{"event", "list", "-o", "json"}, {"task", "list", "-o", "json"}, {"storage", "list", "-o", "yaml"}} {
		if out := must("n2", args...); strings.Contains(out, key) {
			t.Fatalf("corral %s prints the cephx key:\n%s", strings.Join(args, " "), out)
		}
	}
	t.Logf("TestStorage total: %s", time.Since(began).Round(time.Millisecond))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
