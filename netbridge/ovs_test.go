package netbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// ovsHost is a lab host running OVS with a Converger on it.
type ovsHost struct {
	h   *testenv.Host
	ovs *testenv.OVS
	c   *Converger
}

func startOVSHost(t testing.TB, lab *testenv.Lab, name string) *ovsHost {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := lab.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	o, err := h.StartOVS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{OVSDBSock: o.DBSock, NetNS: nsPath(h), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &ovsHost{h: h, ovs: o, c: c}
}

func (o *ovsHost) vsctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := o.ovs.Vsctl(ctx, args...)
	if err != nil {
		t.Fatalf("ovs-vsctl %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(out)
}

// rowVersions lists _uuid and _version of Bridge and Port rows: any write
// to a row changes its _version. (Interface rows are left out: ovs-vswitchd
// itself rewrites their statistics every few seconds.)
func (o *ovsHost) rowVersions(t testing.TB) string {
	t.Helper()
	var all []string
	for _, table := range []string{"Bridge", "Port"} {
		q := fmt.Sprintf(`["Open_vSwitch",{"op":"select","table":%q,"where":[],"columns":["_uuid","_version"]}]`, table)
		out, err := runRoot("ovsdb-client", "transact", "unix:"+o.ovs.DBSock, q)
		if err != nil {
			t.Fatalf("ovsdb-client transact: %v: %s", err, out)
		}
		var res []struct {
			Rows []map[string]any `json:"rows"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res) != 1 {
			t.Fatalf("parse %s: %v", out, err)
		}
		var rows []string
		for _, r := range res[0].Rows {
			rows = append(rows, fmt.Sprint(r["_uuid"], r["_version"]))
		}
		sort.Strings(rows)
		all = append(all, table+": "+strings.Join(rows, ", "))
	}
	return strings.Join(all, "\n") + "\nnext_cfg=" + o.vsctl(t, "get", "Open_vSwitch", ".", "next_cfg")
}

// endpoint is a stand-in VM: a namespace holding one end of a veth pair
// whose other end, in the host, is plugged into OVS.
func addEndpoint(t testing.TB, o *ovsHost, port, addr string) string {
	t.Helper()
	ns := o.h.NS + "-" + port
	if out, err := runRoot("ip", "netns", "add", ns); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { runRoot("ip", "netns", "del", ns) })
	run(t, o.h, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(t, o.h, "ip", "link", "set", port, "up")
	for _, args := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		// TCP over the netdev datapath needs this; ping does not, but the
		// endpoints should behave like real VMs.
		{"ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"},
	} {
		if out, err := runRoot(args...); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return ns
}

// pings reports whether ns reaches addr (addresses only inside the lab's
// own namespaces; run from inside ns).
func pings(ns, addr string) bool {
	_, err := runRoot("ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", addr)
	return err == nil
}

func TestOVSVLANsAcrossHosts(t *testing.T) {
	t.Parallel()
	lab := testenv.New(t, testenv.Options{})
	a := startOVSHost(t, lab, "oa")
	b := startOVSHost(t, lab, "ob")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The trunk: a veth pair between the two hosts, apart from eth0 (which
	// carries the lab's own addresses).
	run(t, a.h, "ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk0", "netns", b.h.NS)
	run(t, a.h, "ip", "link", "set", "trunk0", "up")
	run(t, b.h, "ip", "link", "set", "trunk0", "up")
	// A bridge corral must never touch.
	a.vsctl(t, "add-br", "foreignbr", "--", "set", "bridge", "foreignbr", "datapath_type=netdev")

	v10 := Network{Name: "v10", Kind: KindOVS, Uplink: "trunk0", VLAN: 10, MTU: 1500}
	v20 := Network{Name: "v20", Kind: KindOVS, Uplink: "trunk0", VLAN: 20}
	missing := Network{Name: "lost", Kind: KindOVS, Uplink: "nosuch0", VLAN: 30}
	nets := []Network{v10, v20, missing}
	for _, o := range []*ovsHost{a, b} {
		st := o.c.Apply(ctx, nets)
		requireApplied(t, st, "v10", "v20")
		requireFailed(t, st, "lost", "uplink nosuch0 not found")
	}
	br := a.c.BridgeFor(v10)
	if br != a.c.BridgeFor(v20) {
		t.Fatalf("networks on one uplink got bridges %s and %s", br, a.c.BridgeFor(v20))
	}
	for _, o := range []*ovsHost{a, b} {
		if got := o.vsctl(t, "get", "Bridge", br, "datapath_type"); got != "netdev" {
			t.Fatalf("datapath_type %s", got)
		}
		if got := o.vsctl(t, "get", "Port", "trunk0", "trunks"); got != "[10, 20]" {
			t.Fatalf("trunks %s", got)
		}
		if got := o.vsctl(t, "get", "Bridge", br, "external_ids:corral-network"); got != `"v10,v20"` {
			t.Fatalf("owner %s", got)
		}
	}

	// Endpoints: same subnet on both VLANs, so only VLAN isolation keeps
	// them apart.
	addrs := map[string]string{"a10": "10.99.0.1", "b10": "10.99.0.2", "a20": "10.99.0.3", "b20": "10.99.0.4"}
	ns := map[string]string{}
	for _, e := range []struct {
		host *ovsHost
		port string
		vlan int
	}{{a, "a10", 10}, {b, "b10", 10}, {a, "a20", 20}, {b, "b20", 20}} {
		ns[e.port] = addEndpoint(t, e.host, e.port, addrs[e.port])
		if err := e.host.c.AttachPort(ctx, br, e.port, e.vlan); err != nil {
			t.Fatal(err)
		}
		if got := e.host.vsctl(t, "get", "Port", e.port, "tag"); got != fmt.Sprint(e.vlan) {
			t.Fatalf("port %s tag %s", e.port, got)
		}
	}
	if err := a.c.AttachPort(ctx, br, "a30", 30); !errors.Is(err, ErrUnknownNetwork) {
		t.Fatalf("attach to an undeclared VLAN: %v", err)
	}

	t.Run("same VLAN reaches, other VLAN does not", func(t *testing.T) {
		if !pings(ns["a10"], addrs["b10"]) {
			t.Fatalf("VLAN 10 a->b: no reply")
		}
		if !pings(ns["a20"], addrs["b20"]) {
			t.Fatalf("VLAN 20 a->b: no reply")
		}
		if pings(ns["a10"], addrs["b20"]) {
			t.Fatalf("VLAN 10 endpoint reached VLAN 20")
		}
		if pings(ns["b20"], addrs["a10"]) {
			t.Fatalf("VLAN 20 endpoint reached VLAN 10")
		}
	})

	t.Run("reapply is a no-op", func(t *testing.T) {
		before := a.rowVersions(t)
		txns := a.c.ovs.transactions
		st := a.c.Apply(ctx, nets)
		requireApplied(t, st, "v10", "v20")
		if n := a.c.ovs.transactions - txns; n != 0 {
			t.Errorf("re-apply made %d OVSDB transactions", n)
		}
		if after := a.rowVersions(t); after != before {
			t.Errorf("re-apply changed OVSDB rows:\n%s\n---\n%s", before, after)
		}
	})

	t.Run("RSTP settings", func(t *testing.T) {
		s10, s20 := v10, v20
		s10.STP, s10.Priority = true, 4096
		s20.STP, s20.Priority = true, 4096
		requireApplied(t, a.c.Apply(ctx, []Network{s10, s20}), "v10", "v20")
		if got := a.vsctl(t, "get", "Bridge", br, "rstp_enable"); got != "true" {
			t.Fatalf("rstp_enable %s", got)
		}
		if got := a.vsctl(t, "get", "Bridge", br, "other_config:rstp-priority"); got != `"4096"` {
			t.Fatalf("rstp-priority %s", got)
		}
		s20.Priority = 8192 // conflicts with s10 on the shared bridge
		st := a.c.Apply(ctx, []Network{s10, s20})
		requireFailed(t, st, "v10", "STP settings differ")
		requireFailed(t, st, "v20", "STP settings differ")
		if got := a.vsctl(t, "get", "Bridge", br, "other_config:rstp-priority"); got != `"4096"` {
			t.Fatalf("rstp-priority after a refused change: %s", got)
		}
		requireApplied(t, a.c.Apply(ctx, nets), "v10", "v20")
		if got := a.vsctl(t, "get", "Bridge", br, "rstp_enable"); got != "false" {
			t.Fatalf("rstp_enable %s", got)
		}
	})

	t.Run("deleting a network removes only its ports", func(t *testing.T) {
		// A port corral did not create, on the VLAN being deleted.
		addVeth(t, a.h, "foreign20")
		a.vsctl(t, "add-port", br, "foreign20", "tag=20")
		st := a.c.Apply(ctx, []Network{v10})
		requireApplied(t, st, "v10")
		ports := strings.Fields(a.vsctl(t, "list-ports", br))
		sort.Strings(ports)
		if got, want := strings.Join(ports, " "), "a10 foreign20 trunk0"; got != want {
			t.Fatalf("ports after deleting v20: %s, want %s", got, want)
		}
		if got := a.vsctl(t, "get", "Port", "trunk0", "trunks"); got != "[10]" {
			t.Fatalf("trunks %s", got)
		}
		if !strings.Contains(a.vsctl(t, "list-br"), "foreignbr") {
			t.Fatalf("foreign bridge removed")
		}
		if !pings(ns["b10"], addrs["a10"]) {
			t.Fatalf("VLAN 10 broken after deleting VLAN 20")
		}
	})

	t.Run("undeclared bridge goes once only corral's ports are left", func(t *testing.T) {
		st := a.c.Apply(ctx, nil)
		if len(st) != 0 {
			t.Fatal(st)
		}
		if !strings.Contains(a.vsctl(t, "list-br"), br) {
			t.Fatalf("bridge removed while a foreign port is on it")
		}
		if ports := a.vsctl(t, "list-ports", br); strings.Contains(ports, "a10") || !strings.Contains(ports, "foreign20") {
			t.Fatalf("ports: %s", ports)
		}
		a.vsctl(t, "del-port", br, "foreign20")
		a.c.Apply(ctx, nil)
		brs := a.vsctl(t, "list-br")
		if strings.Contains(brs, br) || !strings.Contains(brs, "foreignbr") {
			t.Fatalf("bridges after removal: %s", brs)
		}
	})
}
