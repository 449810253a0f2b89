package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/minet/corral/internal/testenv"
	pb "github.com/minet/corral/proto/corral/v1"
)

// pingScript makes a guest ping 10.99.0.1-4 (but itself) forever and print
// one PING-OK-N or PING-FAIL-N line per attempt on its serial console, then
// ROUND-R-END once every attempt of round R is over: the test waits for
// rounds, not for seconds, since a guest's pace depends on the machine's
// load. The attempts of a round run at once so a round lasts one timeout.
// An attempt sends up to three echo requests within 3 s (-w3): a request
// lost to a loaded host (TCG guests, userspace OVS on 2 cores) is not a
// failure, VLAN isolation or a removed port is.
const pingScript = `me=${CORRAL_IP%/*}
r=0
while :; do
	for n in 1 2 3 4; do
		[ "10.99.0.$n" = "$me" ] && continue
		( if ping -c1 -w3 10.99.0.$n >/dev/null 2>&1; then echo PING-OK-$n; else echo PING-FAIL-$n; fi ) &
	done
	wait
	r=$((r+1)); echo "ROUND-$r-END"
	sleep 1
done`

// TestNetworksIsolateVLANs declares two OVS networks (VLANs 10 and 20) on a
// trunk shared by two nodes and checks with real guests that a VLAN spans
// the nodes and that VLANs do not see each other:
//
//	n1: a10 (v10, 10.99.0.1), probe20 (OVS internal port, v20, 10.99.0.4)
//	n2: b10 (v10, 10.99.0.2), c20 (v20, 10.99.0.3)
//
// then that a corrald restart changes nothing on the switch nor in the
// guests' traffic, and that bad declarations are refused or reported.
func TestNetworksIsolateVLANs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bins, err := testenv.Build()
	if err != nil {
		t.Fatal(err)
	}
	lab := testenv.New(t, testenv.Options{})
	kernel, initrd, err := testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{InitScript: pingScript})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	nodes := map[string]*testenv.Corrald{}
	ovs := map[string]*testenv.OVS{}
	for _, name := range []string{"n1", "n2"} {
		nodes[name], ovs[name] = startNetNode(t, ctx, lab, bins, name)
	}
	if err := testenv.FormCluster(ctx, "prod", []*testenv.Corrald{nodes["n1"], nodes["n2"]}, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("two nodes with OVS, libvirtd and corrald in a cluster: %s", time.Since(start).Round(time.Millisecond))
	c := clusterCLI{t: t, ctx: ctx, cluster: "prod", nodes: nodes}
	cli, must := c.cli, c.must
	c.waitReady("n1", 2, 120*time.Second)
	nets := func() (map[string]*pb.Network, string) {
		out, err := cli("n1", "net", "list", "-o", "json")
		if err != nil {
			return nil, out
		}
		var resp pb.ListNetworksResponse
		if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
			return nil, fmt.Sprintf("decode: %v\n%s", err, out)
		}
		m := map[string]*pb.Network{}
		for _, n := range resp.GetNetworks() {
			m[n.GetName()] = n
		}
		return m, out
	}
	applied := func(n *pb.Network, node string) bool {
		st := n.GetStatus()[node]
		return st.GetApplied() && st.GetError() == ""
	}

	// Declare the two VLANs and wait until both nodes built them.
	start = time.Now()
	must("n1", "net", "create", "v10", "--vlan", "10", "--kind", "ovs", "--uplink", testenv.TrunkIfName)
	must("n1", "net", "create", "v20", "--vlan", "20", "--kind", "ovs", "--uplink", testenv.TrunkIfName)
	var bridge string
	eventually(t, 120*time.Second, "v10 and v20 applied on n1 and n2", func() (bool, string) {
		m, out := nets()
		for _, name := range []string{"v10", "v20"} {
			for _, node := range []string{"n1", "n2"} {
				if !applied(m[name], node) {
					return false, out
				}
			}
		}
		bridge = m["v10"].GetStatus()["n1"].GetBridge()
		return bridge != "" && m["v20"].GetStatus()["n2"].GetBridge() == bridge, out
	})
	t.Logf("net create to applied on both nodes: %s (bridge %s)", time.Since(start).Round(time.Millisecond), bridge)
	for _, node := range []string{"n1", "n2"} {
		out, err := ovs[node].Vsctl(ctx, "get", "Port", testenv.TrunkIfName, "trunks")
		if err != nil || strings.TrimSpace(out) != "[10, 20]" {
			t.Fatalf("trunk port on %s: want trunks [10, 20]: %v %q", node, err, out)
		}
	}

	// Bad declarations are refused and leave nothing behind.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"net", "create", "v5000", "--vlan", "5000", "--kind", "ovs", "--uplink", testenv.TrunkIfName}, "5000"},
		{[]string{"net", "create", "v10bis", "--vlan", "10", "--kind", "ovs", "--uplink", testenv.TrunkIfName}, "v10"},
	} {
		out, err := cli("n2", bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("corral %s: want an error mentioning %q, got err=%v\n%s", strings.Join(bad.args, " "), bad.want, err, out)
		}
	}
	if m, out := nets(); len(m) != 2 {
		t.Fatalf("refused networks were declared anyway:\n%s", out)
	}

	// A host-side port on VLAN 20 of n1: a positive control for c20 (which
	// has no guest peer on its VLAN) and a same-node isolation check for a10.
	if _, err := ovs["n1"].Vsctl(ctx, "add-port", bridge, "probe20", "tag=20", "--", "set", "Interface", "probe20", "type=internal"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"addr", "add", "10.99.0.4/24", "dev", "probe20"}, {"link", "set", "probe20", "up"}} {
		if out, err := nodes["n1"].Host.Run(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}

	guests := []struct{ name, node, net, ip string }{
		{"a10", "n1", "v10", "10.99.0.1"},
		{"b10", "n2", "v10", "10.99.0.2"},
		{"c20", "n2", "v20", "10.99.0.3"},
	}
	start = time.Now()
	for _, g := range guests {
		must("n1", "vm", "create", g.name, "--node", g.node, "--net", g.net, "--kernel", kernel, "--initrd", initrd,
			"--cmdline", "console=ttyS0 quiet corral.ip="+g.ip+"/24", "--memory", "192", "--vcpus", "1")
	}
	console := func(vm string, args ...string) (string, error) {
		return cli("n1", append([]string{"vm", "console", vm}, args...)...)
	}
	// waitRoundsFrom returns the console of vm since boot once it has
	// printed k more rounds than the capture prev shows.
	waitRoundsFrom := func(vm, prev string, k int) (string, error) {
		until := fmt.Sprintf("ROUND-%d-END", lastRound(prev)+k)
		out, err := console(vm, "--until", until, "--for", "300s")
		if err != nil {
			return out, fmt.Errorf("%s never printed %s: %w\n%s", vm, until, err, tail(out))
		}
		return out, nil
	}
	// snapshot returns a guest's console since boot, through the API. It
	// retries when `vm console --for` fails: that exit status is a CLI race
	// (the server, which gets the deadline as grpc-timeout, may end the
	// stream first), not what this test checks.
	snapshot := func(vm string) (string, error) {
		var err error
		for try := 0; try < 3; try++ {
			var out string
			if out, err = console(vm, "--for", "3s"); err == nil {
				return out, nil
			}
			t.Logf("vm console %s --for 3s (retrying): %v", vm, err)
		}
		return "", err
	}
	waitRounds := func(vm string, k int) (string, error) {
		prev, err := snapshot(vm)
		if err != nil {
			return "", err
		}
		return waitRoundsFrom(vm, prev, k)
	}
	for _, w := range []struct{ vm, until string }{
		{"a10", "PING-OK-2"}, // v10 from n1 to n2 over the trunk
		{"b10", "PING-OK-1"},
		{"c20", "PING-OK-4"}, // v20 from n2 to n1 over the trunk
	} {
		if out, err := console(w.vm, "--until", w.until, "--for", "300s"); err != nil {
			t.Fatalf("%s never printed %s: %v\n%s", w.vm, w.until, err, tail(out))
		}
		t.Logf("vm create to %s on %s: %s", w.until, w.vm, time.Since(start).Round(time.Millisecond))
	}
	if out, err := nodes["n1"].Host.Run(ctx, "ping", "-c1", "-w10", "10.99.0.3"); err != nil {
		t.Fatalf("n1's VLAN 20 port cannot reach c20: %v\n%s", err, out)
	}

	// Isolation: three more rounds of a10 and c20 after their network was
	// known to work. a10 keeps trying .3 and .4 (VLAN 20), c20 tries .1
	// and .2 (VLAN 10): every attempt must fail.
	start = time.Now()
	var wins [2]string
	done := make(chan error, 2)
	for i, vm := range []string{"a10", "c20"} {
		go func() {
			var err error
			wins[i], err = waitRounds(vm, 3)
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("three more ping rounds of a10 and c20: %s", time.Since(start).Round(time.Millisecond))
	for _, c := range []struct {
		vm, out, ok string
		denied      []string
	}{
		{"a10", wins[0], "PING-OK-2", []string{"3", "4"}},
		{"c20", wins[1], "PING-OK-4", []string{"1", "2"}},
	} {
		// Only the attempts after the network was up count as evidence.
		from := strings.Index(c.out, c.ok)
		if from < 0 {
			t.Fatalf("%s: no %s in its console:\n%s", c.vm, c.ok, tail(c.out))
		}
		t.Logf("%s console since its first %s: %s", c.vm, c.ok, pingCounts(c.out[from:]))
		for _, n := range c.denied {
			if strings.Contains(c.out, "PING-OK-"+n) {
				t.Errorf("%s reached 10.99.0.%s across VLANs:\n%s", c.vm, n, tail(c.out))
			}
			if got := strings.Count(c.out[from:], "PING-FAIL-"+n); got < 3 {
				t.Errorf("%s: only %d failed attempts to 10.99.0.%s in 3 rounds after its network was up (want ≥ 3):\n%s", c.vm, got, n, tail(c.out))
			}
		}
	}

	// Deleting a network a VM uses is refused, naming the VM.
	if out, err := cli("n2", "net", "delete", "v20"); err == nil || !strings.Contains(out, "c20") {
		t.Errorf("net delete v20 with c20 on it: want an error naming c20, got err=%v\n%s", err, out)
	}

	// A corrald restart on n2 is a no-op on its switch and its guests:
	// OVSDB's next_cfg (bumped by every write transaction, corral's and
	// libvirt's) and the port rows stay the same, and a10 keeps reaching b10.
	ovsState := func() string {
		cfg, err1 := ovs["n2"].Vsctl(ctx, "get", "Open_vSwitch", ".", "next_cfg")
		ports, err2 := ovs["n2"].Vsctl(ctx, "--columns=_uuid,name,tag,trunks", "list", "Port")
		if err1 != nil || err2 != nil {
			t.Fatalf("read OVS of n2: %v %v", err1, err2)
		}
		return "next_cfg " + cfg + sortLines(ports)
	}
	stamp := func(m map[string]*pb.Network) int64 { return m["v10"].GetStatus()["n2"].GetUpdatedUnixNano() }
	m, _ := nets()
	before, stampBefore := ovsState(), stamp(m)
	snap, err := snapshot("a10")
	if err != nil {
		t.Fatal(err)
	}
	restart := time.Now()
	if err := nodes["n2"].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := nodes["n2"].Start(ctx); err != nil {
		t.Fatal(err)
	}
	// A fresh agent reports its networks once: a new status timestamp says
	// its first network pass is over.
	eventually(t, 120*time.Second, "n2 reports its networks after the restart", func() (bool, string) {
		m, out := nets()
		return m != nil && stamp(m) > stampBefore && applied(m["v10"], "n2") && applied(m["v20"], "n2"), out
	})
	t.Logf("corrald restart on n2 to its network report: %s", time.Since(restart).Round(time.Millisecond))
	eventually(t, 120*time.Second, "b10 and c20 running after the restart", func() (bool, string) {
		out, _ := cli("n1", "vm", "list", "-o", "json")
		return strings.Count(out, "VM_STATE_RUNNING") == 3, out
	})
	if after := ovsState(); after != before {
		t.Errorf("corrald restart changed n2's switch:\nbefore: %s\nafter:  %s", before, after)
	}
	// Four more rounds of a10 from the snapshot taken before the kill: the
	// restart falls inside them, and b10 must answer all of them.
	snap2, err := waitRoundsFrom("a10", snap, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Rounds r0+1 to r0+4 (r0: the last complete one at the snapshot).
	after := snap2
	if r0 := lastRound(snap); r0 > 0 {
		end := fmt.Sprintf("ROUND-%d-END", r0)
		i := strings.Index(snap2, end)
		if i < 0 {
			t.Fatalf("the console of a10 lacks %s, which an earlier capture showed:\n%s", end, tail(snap2))
		}
		after = snap2[i+len(end):]
	}
	t.Logf("a10 console in the 4 rounds around the restart: %s", pingCounts(after))
	if ok, fail := strings.Count(after, "PING-OK-2"), strings.Count(after, "PING-FAIL-2"); ok != 4 || fail != 0 {
		t.Errorf("a10 reached b10 %d times and lost it %d times in the 4 rounds around n2's corrald restart (want 4 and 0):\n%s", ok, fail, tail(after))
	}
	m, _ = nets()
	idle := stamp(m)
	time.Sleep(3 * time.Second)
	if m, out := nets(); stamp(m) != idle {
		t.Errorf("n2 re-reported an unchanged network while idle:\n%s", out)
	}

	// An uplink missing on one node: that node reports it, the other
	// applies the network.
	must("n1", "net", "create", "v30", "--vlan", "30", "--kind", "ovs", "--uplink", testenv.TrunkIfName, "--node-uplink", "n2=nope")
	eventually(t, 120*time.Second, "v30 applied on n1 and failed on n2", func() (bool, string) {
		m, out := nets()
		st := m["v30"].GetStatus()["n2"]
		return applied(m["v30"], "n1") && !st.GetApplied() && strings.Contains(st.GetError(), "nope"), out
	})
	must("n1", "net", "delete", "v30")
	eventually(t, 120*time.Second, "VLAN 30 gone from n1's trunk", func() (bool, string) {
		out, _ := ovs["n1"].Vsctl(ctx, "get", "Port", testenv.TrunkIfName, "trunks")
		return strings.TrimSpace(out) == "[10, 20]", out
	})
	if out, err := console("a10", "--until", "PING-OK-2", "--replay=false", "--for", "300s"); err != nil {
		t.Fatalf("a10 no longer reaches b10 after v30 came and went: %v\n%s", err, tail(out))
	}
}

// startNetNode starts a node with a trunk link, Open vSwitch, libvirtd and
// corrald (testenv points libvirtd's ovs-vsctl at the host's OVS).
func startNetNode(t *testing.T, ctx context.Context, lab *testenv.Lab, bins testenv.Binaries, name string) (*testenv.Corrald, *testenv.OVS) {
	t.Helper()
	h, err := lab.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.AddTrunk(h); err != nil {
		t.Fatal(err)
	}
	o, err := h.StartOVS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.StartLibvirtd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.StartCorrald(ctx, bins, testenv.CorraldOptions{Libvirt: d, OVS: o})
	if err != nil {
		t.Fatal(err)
	}
	return c, o
}

// tail keeps the end of a console capture for failure messages.
func tail(s string) string {
	if len(s) > 3000 {
		return "…" + s[len(s)-3000:]
	}
	return s
}

func sortLines(s string) string {
	// ovs-vsctl list separates records by blank lines, in no set order.
	recs := strings.Split(strings.TrimSpace(s), "\n\n")
	slices.Sort(recs)
	return strings.Join(recs, "\n\n")
}

// pingCounts summarises PING-OK-N/PING-FAIL-N lines.
func pingCounts(s string) string {
	var parts []string
	for n := 1; n <= 4; n++ {
		ok, fail := strings.Count(s, fmt.Sprintf("PING-OK-%d", n)), strings.Count(s, fmt.Sprintf("PING-FAIL-%d", n))
		if ok+fail > 0 {
			parts = append(parts, fmt.Sprintf(".%d ok=%d fail=%d", n, ok, fail))
		}
	}
	return strings.Join(parts, ", ")
}

var roundRe = regexp.MustCompile(`ROUND-(\d+)-END`)

// lastRound is the number of the last round a console capture shows (0:
// none yet).
func lastRound(s string) int {
	m := roundRe.FindAllStringSubmatch(s, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}
