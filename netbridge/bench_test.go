package netbridge

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const benchNetworks = 200

// addVeths creates n veth pairs name0..name<n-1> (peers "…p") in the host
// through netlink: 200 `ip` processes would dominate the setup.
func addVeths(b *testing.B, h *testenv.Host, prefix string, n int) []string {
	b.Helper()
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer nh.Close()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%d", prefix, i)
		la := netlink.NewLinkAttrs()
		la.Name = names[i]
		if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: names[i] + "p"}); err != nil {
			b.Fatalf("add veth %s: %v", names[i], err)
		}
	}
	return names
}

// benchConverge times Apply from nothing and a no-op re-Apply, removing
// everything between rounds (untimed).
func benchConverge(b *testing.B, c *Converger, nets []Network) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var converge, noop time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		st := c.Apply(ctx, nets)
		t1 := time.Now()
		st2 := c.Apply(ctx, nets)
		t2 := time.Now()
		converge += t1.Sub(t0)
		noop += t2.Sub(t1)
		b.StopTimer()
		for _, s := range append(st, st2...) {
			if !s.Applied {
				b.Fatalf("%s: %s", s.Network, s.Error)
			}
		}
		if st := c.Apply(ctx, nil); len(st) != 0 {
			b.Fatal(st)
		}
		b.StartTimer()
	}
	b.ReportMetric(converge.Seconds()/float64(b.N), "converge-s")
	b.ReportMetric(noop.Seconds()/float64(b.N), "noop-s")
}

// BenchmarkOVSConverge200: 200 VLAN networks over 4 uplinks (4 bridges).
func BenchmarkOVSConverge200(b *testing.B) {
	lab := testenv.New(b, testenv.Options{})
	o := startOVSHost(b, lab, "bench")
	uplinks := addVeths(b, o.h, "bup", 4)
	nets := make([]Network, benchNetworks)
	for i := range nets {
		nets[i] = Network{Name: fmt.Sprintf("net%d", i), Kind: KindOVS, Uplink: uplinks[i%4], VLAN: 1 + i/4}
	}
	benchConverge(b, o.c, nets)
}

// BenchmarkLinuxConverge200: 200 untagged linux bridges, one per uplink
// (tagged ones need 802.1Q, which this kernel lacks).
func BenchmarkLinuxConverge200(b *testing.B) {
	lab := testenv.New(b, testenv.Options{})
	h, err := lab.AddHost("bench")
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(Options{NetNS: nsPath(h), Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	uplinks := addVeths(b, h, "u", benchNetworks)
	nets := make([]Network, benchNetworks)
	for i := range nets {
		nets[i] = Network{Name: fmt.Sprintf("net%d", i), Uplink: uplinks[i], MTU: 1400}
	}
	benchConverge(b, c, nets)
}
