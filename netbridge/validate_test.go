package netbridge

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := Network{Name: "lan", Uplink: "eth1"}
	with := func(f func(*Network)) Network { n := ok; f(&n); return n }
	tests := []struct {
		name string
		nets []Network
		// bad maps a network name to a substring of its problem; empty
		// means the set is valid.
		bad map[string]string
	}{
		{"minimal", []Network{ok}, nil},
		{"full linux", []Network{with(func(n *Network) { n.VLAN, n.MTU, n.STP, n.Priority = 4094, 9000, true, 65535 })}, nil},
		{"empty name", []Network{with(func(n *Network) { n.Name = "" })}, map[string]string{"": "name is empty"}},
		{"bad name", []Network{with(func(n *Network) { n.Name = "a b" })}, map[string]string{"a b": "name must be"}},
		{"vlan too big", []Network{with(func(n *Network) { n.VLAN = 4095 })}, map[string]string{"lan": "VLAN 4095 out of range"}},
		{"vlan negative", []Network{with(func(n *Network) { n.VLAN = -1 })}, map[string]string{"lan": "VLAN -1"}},
		{"unknown kind", []Network{with(func(n *Network) { n.Kind = "vpp" })}, map[string]string{"lan": `kind "vpp" unknown`}},
		{"no uplink", []Network{with(func(n *Network) { n.Uplink = "" })}, map[string]string{"lan": "uplink is empty"}},
		{"uplink too long", []Network{with(func(n *Network) { n.Uplink = "abcdefghijklmnop" })}, map[string]string{"lan": "not a valid interface name"}},
		{"vlan device name too long", []Network{with(func(n *Network) { n.Uplink, n.VLAN = "enp129s0f1np1", 100 })}, map[string]string{"lan": "VLAN device name"}},
		{"ovs has no vlan device", []Network{with(func(n *Network) { n.Uplink, n.VLAN, n.Kind = "enp129s0f1np1", 100, KindOVS })}, nil},
		{"mtu low", []Network{with(func(n *Network) { n.MTU = 67 })}, map[string]string{"lan": "MTU 67"}},
		{"mtu high", []Network{with(func(n *Network) { n.MTU = 65536 })}, map[string]string{"lan": "MTU 65536"}},
		{"linux priority high", []Network{with(func(n *Network) { n.Priority = 65536 })}, map[string]string{"lan": "priority 65536"}},
		{"ovs priority high", []Network{with(func(n *Network) { n.Priority, n.Kind = 61441, KindOVS })}, map[string]string{"lan": "priority 61441"}},
		{"duplicate name", []Network{ok, with(func(n *Network) { n.VLAN = 5 })}, map[string]string{"lan": "declared twice"}},
		{"same vlan same uplink", []Network{ok, with(func(n *Network) { n.Name = "lan2" })},
			map[string]string{"lan": "same VLAN 0 on uplink eth1 as network lan2", "lan2": "as network lan"}},
		{"same vlan other uplink", []Network{ok, with(func(n *Network) { n.Name, n.Uplink = "lan2", "eth2" })}, nil},
		{"uplink shared by both kinds", []Network{ok, with(func(n *Network) { n.Name, n.VLAN, n.Kind = "o", 5, KindOVS })},
			map[string]string{"lan": "also used by ovs network o", "o": "also used by linux network lan"}},
		{"ovs bridge stp conflict", []Network{
			{Name: "o1", Kind: KindOVS, Uplink: "eth1", VLAN: 1, STP: true},
			{Name: "o2", Kind: KindOVS, Uplink: "eth1", VLAN: 2},
		}, map[string]string{"o1": "STP settings differ", "o2": "STP settings differ"}},
		{"ovs bridge priority conflict", []Network{
			{Name: "o1", Kind: KindOVS, Uplink: "eth1", VLAN: 1, STP: true, Priority: 4096},
			{Name: "o2", Kind: KindOVS, Uplink: "eth1", VLAN: 2, STP: true},
		}, map[string]string{"o1": "priority=4096/0", "o2": "priority=0/4096"}},
		{"ovs same settings", []Network{
			{Name: "o1", Kind: KindOVS, Uplink: "eth1", VLAN: 1, STP: true, Priority: 4096},
			{Name: "o2", Kind: KindOVS, Uplink: "eth1", VLAN: 2, STP: true, Priority: 4096},
		}, nil},
		{"linux bridges on one uplink may differ", []Network{
			{Name: "l1", Uplink: "eth1", VLAN: 1, STP: true},
			{Name: "l2", Uplink: "eth1", VLAN: 2},
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.nets)
			if len(tc.bad) == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %v", err)
			}
			for name, sub := range tc.bad {
				if !strings.Contains(strings.Join(ve.ByNetwork[name], "|"), sub) {
					t.Errorf("network %q: want problem %q, got %q", name, sub, ve.ByNetwork[name])
				}
			}
			for name := range ve.ByNetwork {
				if _, want := tc.bad[name]; !want {
					t.Errorf("unexpected problem for %q: %v", name, ve.ByNetwork[name])
				}
			}
		})
	}
}

func TestBridgeFor(t *testing.T) {
	nets := []Network{
		{Name: "a", Uplink: "eth0"},
		{Name: "b", Uplink: "eth0", VLAN: 10},
		{Name: "c", Uplink: "eth1", VLAN: 10},
		{Name: "d", Uplink: "enp129s0f1np1", VLAN: 4094},
		{Name: "e", Uplink: "enp129s0f1np1", VLAN: 4093},
		{Name: "f", Uplink: "eth0", VLAN: 10, Kind: KindOVS},
		{Name: "g", Uplink: "eth0", VLAN: 20, Kind: KindOVS},
		{Name: "h", Uplink: "enp129s0f1np1", Kind: KindOVS},
		{Name: "i", Uplink: "enp129s0f1np2", Kind: KindOVS},
	}
	// Only OVS networks on one uplink share a bridge.
	shared := map[string]bool{"f/g": true}
	seen := map[string]string{}
	for _, n := range nets {
		br := BridgeFor(n)
		if len(br) == 0 || len(br) > 15 || !ifNameRe.MatchString(br) {
			t.Errorf("%s: bad bridge name %q", n.Name, br)
		}
		if again := BridgeFor(n); again != br {
			t.Errorf("%s: not deterministic: %q then %q", n.Name, br, again)
		}
		renamed := n
		renamed.Name += "-renamed"
		if BridgeFor(renamed) != br {
			t.Errorf("%s: bridge depends on the network name", n.Name)
		}
		if prev, dup := seen[br]; dup && !shared[prev+"/"+n.Name] {
			t.Errorf("%s and %s share bridge %q", prev, n.Name, br)
		}
		seen[br] = n.Name
	}
	if BridgeFor(nets[5]) != BridgeFor(nets[6]) {
		t.Errorf("ovs networks on one uplink must share a bridge")
	}
}
