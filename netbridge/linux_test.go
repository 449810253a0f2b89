package netbridge

import (
	"context"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

func newLinuxLab(t *testing.T) (*testenv.Host, *Converger) {
	t.Helper()
	lab := testenv.New(t, testenv.Options{})
	h, err := lab.AddHost("n1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{NetNS: nsPath(h), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return h, c
}

// TestLinuxUntagged runs the life of untagged linux networks on one lab
// host: create, no-op re-apply, change, failures that stay local, removal
// that spares what corral did not create.
func TestLinuxUntagged(t *testing.T) {
	t.Parallel()
	h, c := newLinuxLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, up := range []string{"up0", "up1", "up2"} {
		addVeth(t, h, up)
	}
	// Foreign objects: a bridge with an unrelated name, and one squatting
	// the name corral wants for network "squat".
	run(t, h, "ip", "link", "add", "brforeign", "type", "bridge")
	squatName := BridgeFor(Network{Name: "squat", Uplink: "up2"})
	run(t, h, "ip", "link", "add", squatName, "type", "bridge")

	a := Network{Name: "lan-a", Kind: KindLinux, Uplink: "up0", MTU: 1400, Priority: 4096}
	b := Network{Name: "lan-b", Uplink: "up1"} // empty Kind means linux
	missing := Network{Name: "lan-missing", Uplink: "nosuch0"}
	squat := Network{Name: "squat", Uplink: "up2"}
	nets := []Network{a, b, missing, squat}

	st := c.Apply(ctx, nets)
	requireApplied(t, st, "lan-a", "lan-b")
	requireFailed(t, st, "lan-missing", "uplink nosuch0 not found")
	requireFailed(t, st, "squat", "not created by corral")
	if got := statusByName(st)["lan-a"].Bridge; got != c.BridgeFor(a) {
		t.Fatalf("status bridge %q, BridgeFor %q", got, c.BridgeFor(a))
	}

	ls := links(t, h)
	brA, brB := ls[c.BridgeFor(a)], ls[c.BridgeFor(b)]
	for _, tc := range []struct {
		br       ipLink
		net      Network
		port     string
		mtu, pri int
	}{
		{brA, a, "up0", 1400, 4096},
		{brB, b, "up1", 1500, 32768},
	} {
		if tc.br.LinkInfo.Kind != "bridge" || tc.br.Alias != "corral:"+tc.net.Name || !tc.br.up() {
			t.Fatalf("bridge for %s: %+v", tc.net.Name, tc.br)
		}
		if tc.br.MTU != tc.mtu || tc.br.LinkInfo.Data.Priority != tc.pri || tc.br.LinkInfo.Data.STPState != 0 {
			t.Fatalf("bridge %s: mtu %d prio %d stp %d, want %d %d 0", tc.br.Name, tc.br.MTU,
				tc.br.LinkInfo.Data.Priority, tc.br.LinkInfo.Data.STPState, tc.mtu, tc.pri)
		}
		if p := ls[tc.port]; p.Master != tc.br.Name || !p.up() {
			t.Fatalf("uplink %s: master %q up %t, want %s", tc.port, p.Master, p.up(), tc.br.Name)
		}
	}
	if ls[squatName].Alias != "" || ls["up2"].Master != "" {
		t.Fatalf("foreign bridge %s was modified: %+v, up2 %+v", squatName, ls[squatName], ls["up2"])
	}

	t.Run("reapply is a no-op", func(t *testing.T) {
		w := watchLinks(t, h)
		w.drain(t, nil) // flush notices of the first apply
		before := links(t, h)
		writes := c.linux.writes.Load()
		st := c.Apply(ctx, nets)
		requireApplied(t, st, "lan-a", "lan-b")
		if n := c.linux.writes.Load() - writes; n != 0 {
			t.Errorf("re-apply made %d netlink writes", n)
		}
		if changed := w.drain(t, before); len(changed) != 0 {
			t.Errorf("re-apply changed links: %v", changed)
		}
		after := links(t, h)
		for _, name := range []string{brA.Name, brB.Name} {
			if before[name].Index != after[name].Index {
				t.Errorf("%s recreated: index %d -> %d", name, before[name].Index, after[name].Index)
			}
		}
	})

	t.Run("STP, priority and MTU change in place", func(t *testing.T) {
		a2 := a
		a2.STP, a2.Priority, a2.MTU = true, 8192, 1300
		st := c.Apply(ctx, []Network{a2, b, missing, squat})
		requireApplied(t, st, "lan-a", "lan-b")
		br := links(t, h)[c.BridgeFor(a2)]
		if br.Index != brA.Index {
			t.Fatalf("bridge recreated")
		}
		if br.LinkInfo.Data.STPState == 0 || br.LinkInfo.Data.Priority != 8192 || br.MTU != 1300 {
			t.Fatalf("bridge after change: stp %d prio %d mtu %d", br.LinkInfo.Data.STPState, br.LinkInfo.Data.Priority, br.MTU)
		}
		// And back, to show STP turns off too.
		st = c.Apply(ctx, []Network{a, b})
		requireApplied(t, st, "lan-a", "lan-b")
		br = links(t, h)[c.BridgeFor(a)]
		if br.LinkInfo.Data.STPState != 0 || br.LinkInfo.Data.Priority != 4096 || br.MTU != 1400 {
			t.Fatalf("bridge after revert: stp %d prio %d mtu %d", br.LinkInfo.Data.STPState, br.LinkInfo.Data.Priority, br.MTU)
		}
	})

	t.Run("failed change keeps the previous config", func(t *testing.T) {
		bad := a
		bad.MTU = 10 // invalid
		st := c.Apply(ctx, []Network{bad, b})
		requireFailed(t, st, "lan-a", "MTU 10 out of range")
		requireApplied(t, st, "lan-b")
		if br, ok := links(t, h)[c.BridgeFor(a)]; !ok || br.Index != brA.Index || br.MTU != 1400 {
			t.Fatalf("bridge of failed network changed: %+v", br)
		}
	})

	t.Run("undeclared bridges are removed, foreign ones kept", func(t *testing.T) {
		st := c.Apply(ctx, []Network{b})
		requireApplied(t, st, "lan-b")
		ls := links(t, h)
		if _, ok := ls[c.BridgeFor(a)]; ok {
			t.Fatalf("bridge of removed network lan-a still exists")
		}
		if up := ls["up0"]; up.Master != "" {
			t.Fatalf("up0 still enslaved to %s", up.Master)
		}
		for _, name := range []string{"up0", "brforeign", squatName, c.BridgeFor(b)} {
			if _, ok := ls[name]; !ok {
				t.Fatalf("%s was removed", name)
			}
		}
		st = c.Apply(ctx, nil)
		if len(st) != 0 {
			t.Fatalf("statuses for no network: %+v", st)
		}
		ls = links(t, h)
		if _, ok := ls[c.BridgeFor(b)]; ok {
			t.Fatalf("bridge of lan-b still exists")
		}
		for _, name := range []string{"up0", "up1", "brforeign", squatName} {
			if _, ok := ls[name]; !ok {
				t.Fatalf("%s was removed", name)
			}
		}
	})
}

// TestLinuxVLAN applies a tagged network next to an untagged one. On a
// kernel without 802.1Q the tagged one must fail with a clear status while
// the other applies, and the test then skips.
func TestLinuxVLAN(t *testing.T) {
	t.Parallel()
	h, c := newLinuxLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addVeth(t, h, "up0")
	addVeth(t, h, "up1")

	// Independent probe: can this kernel make a VLAN device at all?
	_, probeErr := h.Run(ctx, "ip", "link", "add", "link", "up0", "name", "probe", "type", "vlan", "id", "99")
	has8021q := probeErr == nil
	if has8021q {
		run(t, h, "ip", "link", "del", "probe")
	}

	tagged := Network{Name: "vl10", Uplink: "up0", VLAN: 10, MTU: 1400}
	plain := Network{Name: "plain", Uplink: "up1"}
	st := c.Apply(ctx, []Network{tagged, plain})
	requireApplied(t, st, "plain")
	if !has8021q {
		requireFailed(t, st, "vl10", ErrNo8021Q.Error())
		if _, ok := links(t, h)[c.BridgeFor(tagged)]; ok {
			t.Fatalf("bridge created for a network that cannot work")
		}
		t.Skip(ErrNo8021Q.Error())
	}
	requireApplied(t, st, "vl10")
	ls := links(t, h)
	v := ls["up0.10"]
	if v.LinkInfo.Kind != "vlan" || v.LinkInfo.Data.ID != 10 || v.Master != c.BridgeFor(tagged) || v.Alias != "corral:vl10" || v.MTU != 1400 {
		t.Fatalf("vlan device: %+v", v)
	}
	st = c.Apply(ctx, []Network{plain})
	requireApplied(t, st, "plain")
	ls = links(t, h)
	for _, gone := range []string{"up0.10", c.BridgeFor(tagged)} {
		if _, ok := ls[gone]; ok {
			t.Fatalf("%s not removed", gone)
		}
	}
}
