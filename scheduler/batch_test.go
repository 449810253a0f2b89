package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

func TestCommit(t *testing.T) {
	t.Parallel()
	s := NewSnapshot([]Node{node("atlantis", 1, 4096), node("discovery", 1, 4096)},
		[]VM{vm("x", "atlantis", 4, 4096, "grp")}, noReserve)
	y := Request{VM: VM{Name: "y", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "grp"}, Node: "atlantis"}
	steps := []struct {
		commit  VM
		wantErr bool // whether y still cannot go to atlantis
		reason  string
	}{
		{commit: vm("z", "discovery", 1, 1024, ""), wantErr: true, reason: "anti-affinity group grp: vm x already here"},
		{commit: vm("x", "atlantis", 4, 4096, ""), wantErr: true, reason: "only 0 MiB and 0 vCPU free"},
		{commit: vm("x", "discovery", 2, 2048, ""), wantErr: false, reason: "requested node; free 4.0 GiB RAM, 4 vCPU"},
		{commit: vm("w", "atlantis", 4, 1024, ""), wantErr: true, reason: "only 0 vCPU free"},
		{commit: VM{Name: "w", Node: "atlantis", VCPUs: 4, MemoryMiB: 1024}, wantErr: false, reason: "requested node; free 4.0 GiB RAM, 4 vCPU"},
	}
	for k, st := range steps {
		s.Commit(st.commit)
		d, err := Place(s, y)
		if (err != nil) != st.wantErr {
			t.Fatalf("step %d (commit %+v): Place error = %v, want error %v", k, st.commit, err, st.wantErr)
		}
		if got := reasonsOf(d)["atlantis"]; got != st.reason {
			t.Errorf("step %d: atlantis reason %q, want %q", k, got, st.reason)
		}
	}
	if got := reasonsOf(mustPlace(t, s, Request{VM: VM{Name: "q"}, Node: "discovery"}))["discovery"]; got != "requested node; free 1.0 GiB RAM, 1 vCPU" {
		t.Errorf("discovery after commits: %q", got)
	}
}

func mustPlace(t *testing.T, s *Snapshot, r Request) Decision {
	t.Helper()
	d, err := Place(s, r)
	if err != nil {
		t.Fatalf("Place %s: %v", r.VM.Name, err)
	}
	return d
}

func TestPlaceAll(t *testing.T) {
	t.Parallel()
	two := []Node{node("atlantis", 4, 4096), node("discovery", 4, 4096)}
	req := func(name string, mem int64, prio int, group string) Request {
		return Request{VM: VM{Name: name, VCPUs: 1, MemoryMiB: mem, AntiAffinity: group}, Priority: prio}
	}
	tests := []struct {
		name     string
		nodes    []Node
		vms      []VM
		reqs     []Request
		want     []string // node per request, "" for a failure
		failVMs  []string // BatchError failures, in priority order
		errText  string
		perNode  map[string]int // VMs per node after success
		nextFits *Request       // after the call, this must fit
		nextNot  *Request       // after the call, this must not fit
	}{
		{
			name:    "capacity is accounted across the batch",
			nodes:   two,
			reqs:    []Request{req("a", 2048, 0, ""), req("b", 2048, 0, ""), req("c", 2048, 0, ""), req("d", 2048, 0, "")},
			want:    []string{"atlantis", "discovery", "atlantis", "discovery"},
			perNode: map[string]int{"atlantis": 2, "discovery": 2},
			nextNot: &Request{VM: VM{Name: "e", MemoryMiB: 1}},
		},
		{
			name:    "priority first: the important VM gets the room, all rolled back",
			nodes:   []Node{node("atlantis", 4, 4096)},
			reqs:    []Request{req("low", 3072, 0, ""), req("high", 3072, 10, ""), req("lower", 2048, -1, "")},
			want:    []string{"", "atlantis", ""},
			failVMs: []string{"low", "lower"},
			errText: "cannot place 2 of 3 vms: no node can take vm low (3072 MiB, 1 vCPU): atlantis: only 1024 MiB free; " +
				"no node can take vm lower (2048 MiB, 1 vCPU): atlantis: only 1024 MiB free",
			nextFits: &Request{VM: VM{Name: "all", MemoryMiB: 4096}},
		},
		{
			name:    "anti-affinity holds within the batch",
			nodes:   append(slices.Clone(two), node("endeavour", 4, 4096)),
			reqs:    []Request{req("db-1", 1, 0, "db"), req("db-2", 1, 0, "db"), req("db-3", 1, 0, "db")},
			want:    []string{"atlantis", "discovery", "endeavour"},
			perNode: map[string]int{"atlantis": 1, "discovery": 1, "endeavour": 1},
			nextNot: &Request{VM: VM{Name: "db-4", MemoryMiB: 1, AntiAffinity: "db"}},
		},
		{
			name:  "failover: VMs leave the down node and are re-placed",
			nodes: []Node{node("atlantis", 4, 4096, down), node("discovery", 4, 4096), node("endeavour", 4, 2048)},
			vms:   []VM{vm("a", "atlantis", 1, 2048, ""), vm("b", "atlantis", 1, 2048, ""), vm("c", "discovery", 1, 1024, "")},
			reqs: []Request{
				{VM: vm("a", "atlantis", 1, 2048, ""), Exclude: []string{"atlantis"}},
				{VM: vm("b", "atlantis", 1, 2048, ""), Exclude: []string{"atlantis"}},
			},
			want:    []string{"endeavour", "discovery"},
			perNode: map[string]int{"discovery": 2, "endeavour": 1},
		},
		{
			name:  "a failed failover rolls back the VMs it moved and added",
			nodes: []Node{node("atlantis", 4, 4096, down), node("discovery", 4, 3072)},
			vms:   []VM{vm("a", "atlantis", 1, 2048, ""), vm("b", "atlantis", 1, 2048, ""), vm("c", "discovery", 1, 0, "")},
			reqs: []Request{
				{VM: vm("b", "atlantis", 1, 2048, ""), Exclude: []string{"atlantis"}},
				{VM: vm("a", "atlantis", 1, 2048, ""), Exclude: []string{"atlantis"}, Priority: 1},
				{VM: VM{Name: "new", MemoryMiB: 512}, Priority: 2},
				{VM: VM{Name: "new", MemoryMiB: 256}, Priority: 2},
			},
			want:     []string{"", "discovery", "discovery", "discovery"},
			failVMs:  []string{"b"},
			nextFits: &Request{VM: VM{Name: "all", MemoryMiB: 3072}},
		},
		{
			name:    "a forced unknown node fails the batch",
			nodes:   two,
			reqs:    []Request{req("a", 1024, 0, ""), {VM: VM{Name: "b"}, Node: "nowhere"}},
			want:    []string{"atlantis", ""},
			failVMs: []string{"b"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewSnapshot(tc.nodes, tc.vms, noReserve)
			before := slices.Clone(s.VMs)
			ds, err := PlaceAll(s, tc.reqs)
			if len(ds) != len(tc.reqs) {
				t.Fatalf("%d decisions for %d requests", len(ds), len(tc.reqs))
			}
			var got []string
			for k, d := range ds {
				got = append(got, d.Node)
				if d.VM != tc.reqs[k].VM.Name {
					t.Errorf("decision %d is for %q, want %q", k, d.VM, tc.reqs[k].VM.Name)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("nodes = %q, want %q", got, tc.want)
			}
			var be *BatchError
			switch {
			case tc.failVMs == nil && err != nil:
				t.Fatalf("PlaceAll: %v", err)
			case tc.failVMs != nil:
				if !errors.As(err, &be) {
					t.Fatalf("PlaceAll error = %v, want *BatchError", err)
				}
				var names []string
				for _, f := range be.Failures {
					names = append(names, f.VM)
					if tc.reqs[f.Index].VM.Name != f.VM {
						t.Errorf("failure %s has index %d", f.VM, f.Index)
					}
				}
				if !slices.Equal(names, tc.failVMs) {
					t.Errorf("failures = %q, want %q", names, tc.failVMs)
				}
				if tc.errText != "" && err.Error() != tc.errText {
					t.Errorf("error text\n got %q\nwant %q", err.Error(), tc.errText)
				}
				if !reflect.DeepEqual(s.VMs, before) {
					t.Errorf("failed batch was not rolled back:\n got %+v\nwant %+v", s.VMs, before)
				}
			}
			if tc.perNode != nil {
				count := map[string]int{}
				for _, v := range s.VMs {
					if v.Running {
						count[v.Node]++
					}
				}
				if !reflect.DeepEqual(count, tc.perNode) {
					t.Errorf("VMs per node = %v, want %v", count, tc.perNode)
				}
			}
			if tc.nextFits != nil {
				mustPlace(t, s, *tc.nextFits)
			}
			if tc.nextNot != nil {
				if d, err := Place(s, *tc.nextNot); !errors.Is(err, ErrNoFit) {
					t.Errorf("%s placed on %q after the batch; the batch was not accounted", tc.nextNot.VM.Name, d.Node)
				}
			}
		})
	}
}

// TestPlaceAllOrderIndependent: the batch result depends on priorities and
// names, not on the order the caller listed the requests in.
func TestPlaceAllOrderIndependent(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	nodes, vms := randomCluster(rng, 20, 60)
	var reqs []Request
	for k := range 30 {
		reqs = append(reqs, Request{VM: VM{Name: fmt.Sprintf("new-%02d", k), VCPUs: 1 + rng.IntN(4),
			MemoryMiB: int64(1+rng.IntN(8)) * 1024, AntiAffinity: fmt.Sprintf("g%d", rng.IntN(6))}, Priority: rng.IntN(3)})
	}
	placed := func(reqs []Request) map[string]string {
		ds, _ := PlaceAll(NewSnapshot(nodes, vms, noReserve), reqs)
		m := map[string]string{}
		for _, d := range ds {
			m[d.VM] = d.Node
		}
		return m
	}
	want := placed(reqs)
	for range 10 {
		rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
		if got := placed(reqs); !reflect.DeepEqual(got, want) {
			t.Fatalf("placement changed with request order:\n got %v\nwant %v", got, want)
		}
	}
}
