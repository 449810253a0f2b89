package scheduler

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/minet/corral/errdefs"
)

// node is a ready KVM node of cpus threads and mem MiB.
func node(name string, cpus int, mem int64, opts ...func(*Node)) Node {
	n := Node{Name: name, Ready: true, CPUs: cpus, MemoryMiB: mem, Hypervisor: "kvm"}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func witness(n *Node)     { n.Witness = true }
func maintenance(n *Node) { n.Maintenance = true }
func down(n *Node)        { n.Down = true }
func notReady(n *Node)    { n.Ready = false }

// vm is a running VM placed on nodeName.
func vm(name, nodeName string, vcpus int, mem int64, group string) VM {
	return VM{Name: name, Node: nodeName, VCPUs: vcpus, MemoryMiB: mem, AntiAffinity: group, Running: true}
}

// noReserve makes the arithmetic of the tests plain: ratio 1 for memory,
// 4 for CPU, nothing reserved.
var noReserve = Policy{ReservedMemMiB: -1}

func reasonsOf(d Decision) map[string]string {
	m := make(map[string]string, len(d.Candidates))
	for _, c := range d.Candidates {
		m[c.Node] = c.Reason
	}
	return m
}

func TestPlace(t *testing.T) {
	t.Parallel()
	three := []Node{node("atlantis", 4, 8192), node("discovery", 4, 8192), node("endeavour", 4, 8192)}
	tests := []struct {
		name     string
		nodes    []Node
		vms      []VM
		policy   Policy
		req      Request
		wantNode string            // "" when an error is expected
		wantErr  error             // sentinel for errors.Is
		reasons  map[string]string // exact reason per listed node
		errMsg   string            // exact error text, when set
	}{
		{
			name:     "spread to the most free memory fraction",
			nodes:    three,
			vms:      []VM{vm("a", "atlantis", 1, 4096, ""), vm("d", "discovery", 1, 1024, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 2, MemoryMiB: 1024}},
			wantNode: "endeavour",
			reasons: map[string]string{
				"endeavour": "most free memory; free 8.0 GiB RAM, 16 vCPU",
				"discovery": "free 7.0 GiB RAM, 15 vCPU",
				"atlantis":  "free 4.0 GiB RAM, 15 vCPU",
			},
		},
		{
			name:     "equal free memory: fewer VMs wins",
			nodes:    three,
			vms:      []VM{vm("a1", "atlantis", 1, 0, ""), vm("a2", "atlantis", 1, 0, ""), vm("d", "discovery", 1, 0, ""), vm("e1", "endeavour", 1, 0, ""), vm("e2", "endeavour", 1, 0, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 512}},
			wantNode: "discovery",
		},
		{
			name:     "full tie: name decides",
			nodes:    []Node{node("zulu", 4, 8192), node("bravo", 4, 8192), node("mike", 4, 8192)},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 512}},
			wantNode: "bravo",
		},
		{
			name:     "fraction not absolute: a small empty node beats a big busy one",
			nodes:    []Node{node("big", 64, 65536), node("small", 4, 8192)},
			vms:      []VM{vm("x", "big", 4, 49152, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}},
			wantNode: "small",
		},
		{
			name: "never a witness, a node in maintenance, a down node or a not-ready node",
			nodes: []Node{node("houston", 64, 65536, witness), node("discovery", 64, 65536, maintenance),
				node("columbia", 64, 65536, down), node("buran", 64, 65536, notReady), node("atlantis", 2, 2048)},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}},
			wantNode: "atlantis",
			reasons: map[string]string{
				"houston":   ReasonWitness,
				"discovery": ReasonMaintenance,
				"columbia":  ReasonDown,
				"buran":     ReasonNotReady,
				"atlantis":  "most free memory; free 2.0 GiB RAM, 8 vCPU",
			},
		},
		{
			name:    "no fit: error names every node and what is free there",
			nodes:   []Node{node("atlantis", 4, 2048), node("discovery", 64, 65536, maintenance), node("houston", 2, 4096, witness)},
			vms:     []VM{vm("a", "atlantis", 1, 1024, "")},
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 2, MemoryMiB: 4096}},
			wantErr: ErrNoFit,
			errMsg:  "no node can take vm web (4096 MiB, 2 vCPU): atlantis: only 1024 MiB free; discovery: in maintenance; houston: witness runs no VMs",
		},
		{
			name:    "no fit for vCPU alone, and for both",
			nodes:   []Node{node("atlantis", 1, 8192), node("discovery", 1, 1024)},
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 6, MemoryMiB: 2048}},
			wantErr: ErrNoFit,
			reasons: map[string]string{
				"atlantis":  "only 4 vCPU free",
				"discovery": "only 1024 MiB and 4 vCPU free",
			},
		},
		{
			name:    "empty cluster",
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1}},
			wantErr: ErrNoFit,
			errMsg:  "no node can take vm web (1 MiB, 1 vCPU): the cluster has no nodes",
		},
		{
			name:     "default policy: CPU overcommit 4, memory 1, 1 GiB reserved",
			nodes:    []Node{node("atlantis", 2, 4096)},
			req:      Request{VM: VM{Name: "web", VCPUs: 8, MemoryMiB: 3072}},
			wantNode: "atlantis",
			reasons:  map[string]string{"atlantis": "most free memory; free 3.0 GiB RAM, 8 vCPU"},
		},
		{
			name:    "default policy refuses past the reserve",
			nodes:   []Node{node("atlantis", 2, 4096)},
			req:     Request{VM: VM{Name: "web", VCPUs: 9, MemoryMiB: 3073}},
			wantErr: ErrNoFit,
			reasons: map[string]string{"atlantis": "only 3072 MiB and 8 vCPU free"},
		},
		{
			name:     "custom ratios",
			nodes:    []Node{node("atlantis", 2, 4096)},
			policy:   Policy{CPUOvercommit: 1.5, MemOvercommit: 2, ReservedMemMiB: 512},
			req:      Request{VM: VM{Name: "web", VCPUs: 3, MemoryMiB: 7680}},
			wantNode: "atlantis",
			reasons:  map[string]string{"atlantis": "most free memory; free 7.5 GiB RAM, 3 vCPU"},
		},
		{
			name:     "forced node is honoured even when another spreads better",
			nodes:    three,
			vms:      []VM{vm("a", "atlantis", 1, 4096, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Node: "atlantis"},
			wantNode: "atlantis",
			reasons: map[string]string{
				"atlantis":  "requested node; free 4.0 GiB RAM, 15 vCPU",
				"discovery": ReasonNotRequested,
				"endeavour": ReasonNotRequested,
			},
		},
		{
			name:    "forced node too small says why",
			nodes:   three,
			vms:     []VM{vm("a", "atlantis", 1, 7168, "")},
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 2, MemoryMiB: 4096}, Node: "atlantis"},
			wantErr: ErrNoFit,
			errMsg:  "requested node atlantis cannot take vm web (4096 MiB, 2 vCPU): only 1024 MiB free",
		},
		{
			name:    "forced node in maintenance is refused",
			nodes:   []Node{node("atlantis", 4, 8192, maintenance), node("discovery", 4, 8192)},
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Node: "atlantis"},
			wantErr: ErrNoFit,
			errMsg:  "requested node atlantis cannot take vm web (1024 MiB, 1 vCPU): in maintenance",
		},
		{
			name:    "forced unknown node",
			nodes:   three,
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Node: "atlantys"},
			wantErr: ErrUnknownNode,
			errMsg:  `unknown node "atlantys" (nodes: atlantis, discovery, endeavour)`,
		},
		{
			name:     "anti-affinity keeps a group apart",
			nodes:    three,
			vms:      []VM{vm("db-1", "endeavour", 1, 0, "db"), vm("db-2", "discovery", 1, 3072, "db"), vm("x", "atlantis", 1, 4096, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "db-3", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "db"}},
			wantNode: "atlantis",
			reasons: map[string]string{
				"endeavour": "anti-affinity group db: vm db-1 already here",
				"discovery": "anti-affinity group db: vm db-2 already here",
			},
		},
		{
			name:    "anti-affinity can leave no node",
			nodes:   []Node{node("atlantis", 4, 8192), node("discovery", 4, 8192)},
			vms:     []VM{vm("db-1", "atlantis", 1, 0, "db"), vm("db-2", "discovery", 1, 0, "db")},
			policy:  noReserve,
			req:     Request{VM: VM{Name: "db-3", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "db"}},
			wantErr: ErrNoFit,
			errMsg:  "no node can take vm db-3 (1024 MiB, 1 vCPU): atlantis: anti-affinity group db: vm db-1 already here; discovery: anti-affinity group db: vm db-2 already here",
		},
		{
			name:     "anti-affinity ignores the VM itself and stopped members",
			nodes:    []Node{node("atlantis", 4, 8192), node("discovery", 4, 8192)},
			vms:      []VM{vm("db-1", "atlantis", 1, 1024, "db"), {Name: "db-2", Node: "discovery", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "db"}},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "db-1", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "db"}, Node: "atlantis"},
			wantNode: "atlantis",
			reasons:  map[string]string{"atlantis": "requested node; free 8.0 GiB RAM, 16 vCPU"},
		},
		{
			name:     "the VM's own footprint is given back on its node",
			nodes:    []Node{node("atlantis", 1, 4096), node("discovery", 1, 2048)},
			vms:      []VM{vm("web", "atlantis", 4, 4096, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 4, MemoryMiB: 4096}},
			wantNode: "atlantis",
			reasons:  map[string]string{"discovery": "only 2048 MiB free"},
		},
		{
			name:  "re-placing a VM ranks its own node as if the VM had left it",
			nodes: []Node{node("atlantis", 4, 8192), node("bravo", 4, 8192)},
			vms: []VM{vm("web", "bravo", 1, 1024, ""), vm("x", "bravo", 1, 0, ""),
				vm("y", "atlantis", 1, 0, ""), vm("z", "atlantis", 1, 0, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}},
			wantNode: "bravo",
			reasons:  map[string]string{"bravo": "most free memory; free 8.0 GiB RAM, 15 vCPU"},
		},
		{
			name:     "preferred: first fitting preferred node in order wins over spread",
			nodes:    three,
			vms:      []VM{vm("x", "discovery", 1, 7168, ""), vm("y", "atlantis", 1, 4096, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 2048}, Preferred: []string{"gone", "discovery", "atlantis", "endeavour"}},
			wantNode: "atlantis",
			reasons: map[string]string{
				"atlantis":  "preferred node 3 of 4; free 4.0 GiB RAM, 15 vCPU",
				"discovery": "only 1024 MiB free",
			},
		},
		{
			name:     "preferred: none fits, fall back to the best other node",
			nodes:    []Node{node("atlantis", 4, 8192, maintenance), node("discovery", 4, 8192), node("endeavour", 4, 4096)},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 2048}, Preferred: []string{"atlantis"}},
			wantNode: "discovery",
			reasons: map[string]string{
				"discovery": "no preferred node fits; most free memory; free 8.0 GiB RAM, 16 vCPU",
				"atlantis":  ReasonMaintenance,
			},
		},
		{
			name:     "exclude removes the source node",
			nodes:    three,
			vms:      []VM{vm("x", "discovery", 1, 1024, ""), vm("y", "endeavour", 1, 2048, ""), vm("web", "atlantis", 1, 1024, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Exclude: []string{"atlantis", "nowhere"}, Preferred: []string{"atlantis"}},
			wantNode: "discovery",
			reasons:  map[string]string{"atlantis": ReasonExcluded},
		},
		{
			name:    "exclude wins over a forced node",
			nodes:   three,
			policy:  noReserve,
			req:     Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Node: "atlantis", Exclude: []string{"atlantis"}},
			wantErr: ErrNoFit,
			errMsg:  "requested node atlantis cannot take vm web (1024 MiB, 1 vCPU): excluded (source node)",
		},
		{
			name:     "VMs that are stopped or on unknown nodes reserve nothing",
			nodes:    []Node{node("atlantis", 1, 2048)},
			vms:      []VM{{Name: "off", Node: "atlantis", VCPUs: 4, MemoryMiB: 2048}, vm("lost", "gone", 4, 2048, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 4, MemoryMiB: 2048}},
			wantNode: "atlantis",
		},
		{
			name:     "sub-GiB free memory is shown in MiB",
			nodes:    []Node{node("atlantis", 1, 2048), node("discovery", 1, 4096)},
			vms:      []VM{vm("x", "atlantis", 1, 1536, "")},
			policy:   noReserve,
			req:      Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 256}},
			wantNode: "discovery",
			reasons:  map[string]string{"atlantis": "free 512 MiB RAM, 3 vCPU"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewSnapshot(tc.nodes, tc.vms, tc.policy)
			d, err := Place(s, tc.req)
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("Place error = %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Place: %v", err)
			}
			if tc.errMsg != "" && err.Error() != tc.errMsg {
				t.Errorf("error text\n got %q\nwant %q", err.Error(), tc.errMsg)
			}
			if d.Node != tc.wantNode {
				t.Errorf("node = %q, want %q; candidates %+v", d.Node, tc.wantNode, d.Candidates)
			}
			if d.VM != tc.req.VM.Name {
				t.Errorf("decision VM = %q, want %q", d.VM, tc.req.VM.Name)
			}
			got := reasonsOf(d)
			for n, want := range tc.reasons {
				if got[n] != want {
					t.Errorf("reason for %s = %q, want %q", n, got[n], want)
				}
			}
			if !errors.Is(tc.wantErr, ErrUnknownNode) {
				checkCandidates(t, s, d)
			}
		})
	}
}

// checkCandidates checks the shape every decision must have: every node
// once; chosen first; fitting nodes best first; refused nodes by name.
func checkCandidates(t *testing.T, s *Snapshot, d Decision) {
	t.Helper()
	cs := d.Candidates
	if len(cs) != len(s.Nodes) {
		t.Fatalf("%d candidates for %d nodes", len(cs), len(s.Nodes))
	}
	seen := map[string]bool{}
	for _, c := range cs {
		if seen[c.Node] {
			t.Errorf("node %s listed twice", c.Node)
		}
		seen[c.Node] = true
		if c.Reason == "" {
			t.Errorf("node %s has no reason", c.Node)
		}
		if !c.Fits && c.Score != 0 {
			t.Errorf("refused node %s has score %v", c.Node, c.Score)
		}
	}
	if d.Node != "" && (!cs[0].Fits || cs[0].Node != d.Node) {
		t.Errorf("chosen %s is not first: %+v", d.Node, cs[0])
	}
	rest := cs
	if d.Node != "" {
		rest = cs[1:]
	}
	k := 0
	for k < len(rest) && rest[k].Fits {
		if k > 0 && rest[k].Score > rest[k-1].Score {
			t.Errorf("fitting nodes out of order: %s (%v) after %s (%v)", rest[k].Node, rest[k].Score, rest[k-1].Node, rest[k-1].Score)
		}
		k++
	}
	if !slices.IsSortedFunc(rest[k:], func(a, b Candidate) int { return strings.Compare(a.Node, b.Node) }) {
		t.Errorf("refused nodes not sorted by name: %+v", rest[k:])
	}
	for _, c := range rest[k:] {
		if c.Fits {
			t.Errorf("fitting node %s listed among refused ones", c.Node)
		}
	}
}

func TestPlaceInvalid(t *testing.T) {
	t.Parallel()
	s := NewSnapshot([]Node{node("atlantis", 4, 8192)}, nil, noReserve)
	for _, v := range []VM{{Name: "a", MemoryMiB: -1}, {Name: "b", VCPUs: -2}} {
		if _, err := Place(s, Request{VM: v}); errdefs.KindOf(err) != errdefs.KindInvalid {
			t.Errorf("Place(%+v) error = %v, want an invalid error", v, err)
		}
	}
}

func TestErrorKinds(t *testing.T) {
	t.Parallel()
	s := NewSnapshot([]Node{node("atlantis", 1, 1024)}, nil, noReserve)
	_, err := Place(s, Request{VM: VM{Name: "big", MemoryMiB: 1 << 20}})
	if k := errdefs.KindOf(err); k != errdefs.KindExhausted {
		t.Errorf("no fit: kind %v, want exhausted", k)
	}
	var nf *NoFitError
	if !errors.As(err, &nf) || len(nf.Candidates) != 1 || nf.Request.VM.Name != "big" {
		t.Errorf("no fit: %#v does not carry its request and candidates", err)
	}
	_, err = Place(s, Request{VM: VM{Name: "x"}, Node: "nope"})
	if k := errdefs.KindOf(err); k != errdefs.KindNotFound {
		t.Errorf("unknown node: kind %v, want not found", k)
	}
	var un *UnknownNodeError
	if !errors.As(err, &un) || un.Node != "nope" {
		t.Errorf("unknown node: %#v", err)
	}
}

// TestDeterministic: the same cluster given in any order gives the same
// decision, candidates included.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	nodes, vms := randomCluster(rng, 40, 200)
	req := Request{VM: VM{Name: "new", VCPUs: 2, MemoryMiB: 2048, AntiAffinity: "g1"}, Exclude: []string{"n03"}}
	want, wantErr := Place(NewSnapshot(nodes, vms, noReserve), req)
	for range 20 {
		rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
		rng.Shuffle(len(vms), func(i, j int) { vms[i], vms[j] = vms[j], vms[i] })
		got, err := Place(NewSnapshot(nodes, vms, noReserve), req)
		if !reflect.DeepEqual(got, want) || (err == nil) != (wantErr == nil) {
			t.Fatalf("decision changed with input order:\n got %+v\nwant %+v", got, want)
		}
	}
}

// TestInputsNotAliased: Commit must not write into the caller's slices.
func TestInputsNotAliased(t *testing.T) {
	t.Parallel()
	vms := []VM{vm("a", "atlantis", 1, 1024, "")}
	s := NewSnapshot([]Node{node("atlantis", 4, 8192), node("discovery", 4, 8192)}, vms, noReserve)
	s.Commit(vm("a", "discovery", 1, 1024, ""))
	if vms[0].Node != "atlantis" {
		t.Errorf("Commit changed the caller's VM slice: %+v", vms[0])
	}
}

// TestLiteralSnapshot: a Snapshot written as a literal is indexed on first use.
func TestLiteralSnapshot(t *testing.T) {
	t.Parallel()
	s := &Snapshot{Nodes: []Node{node("atlantis", 4, 8192), node("discovery", 4, 8192)},
		VMs: []VM{vm("a", "atlantis", 1, 1024, "")}}
	d, err := Place(s, Request{VM: VM{Name: "b", VCPUs: 1, MemoryMiB: 1024}})
	if err != nil || d.Node != "discovery" {
		t.Fatalf("Place = %q, %v; want discovery", d.Node, err)
	}
	if s.Policy.ReservedMemMiB != DefaultReservedMemMiB || s.Policy.CPUOvercommit != DefaultCPUOvercommit {
		t.Errorf("defaults not applied: %+v", s.Policy)
	}
}

func TestPlaceBrief(t *testing.T) {
	t.Parallel()
	nodes := []Node{node("atlantis", 4, 8192), node("buran", 4, 8192, witness), node("columbia", 4, 8192, down),
		node("discovery", 4, 8192), node("endeavour", 4, 8192), node("fram", 4, 8192, maintenance)}
	vms := []VM{vm("db-1", "endeavour", 1, 0, "db"), vm("x", "discovery", 1, 1024, ""), vm("y", "atlantis", 1, 2048, "")}
	tests := []struct {
		name string
		req  Request
		want []string // "node: reason", chosen first
	}{
		{
			name: "best node fits: nothing else to explain",
			req:  Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}},
			want: []string{"endeavour: most free memory; free 8.0 GiB RAM, 15 vCPU"},
		},
		{
			name: "better-spread nodes that were refused are listed, never-eligible ones are not",
			req:  Request{VM: VM{Name: "db-2", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: "db"}, Exclude: []string{"discovery"}},
			want: []string{"atlantis: most free memory; free 6.0 GiB RAM, 15 vCPU",
				"discovery: " + ReasonExcluded, "endeavour: anti-affinity group db: vm db-1 already here"},
		},
		{
			name: "refused preferred nodes are listed, whatever their reason",
			req:  Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Preferred: []string{"fram", "buran", "fram", "discovery", "atlantis"}},
			want: []string{"discovery: preferred node 4 of 5; free 7.0 GiB RAM, 15 vCPU",
				"buran: " + ReasonWitness, "fram: " + ReasonMaintenance},
		},
		{
			name: "forced node: only it",
			req:  Request{VM: VM{Name: "web", VCPUs: 1, MemoryMiB: 1024}, Node: "atlantis"},
			want: []string{"atlantis: requested node; free 6.0 GiB RAM, 15 vCPU"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.req.Brief = true
			d := mustPlace(t, NewSnapshot(nodes, vms, noReserve), tc.req)
			var got []string
			for _, c := range d.Candidates {
				got = append(got, c.Node+": "+c.Reason)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("candidates\n got %q\nwant %q", got, tc.want)
			}
		})
	}
	// A failure lists every node even when brief.
	s := NewSnapshot(nodes, vms, noReserve)
	d, err := Place(s, Request{VM: VM{Name: "huge", MemoryMiB: 1 << 20}, Brief: true})
	if !errors.Is(err, ErrNoFit) || len(d.Candidates) != len(nodes) {
		t.Errorf("brief failure: %v with %d candidates, want every node", err, len(d.Candidates))
	}
}

// TestConcurrentPlace: Place only reads the snapshot, so API handlers may
// share one. Meaningful under -race.
func TestConcurrentPlace(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	nodes, vms := randomCluster(rng, 30, 100)
	s := NewSnapshot(nodes, vms, noReserve)
	req := Request{VM: VM{Name: vms[0].Name, VCPUs: 1, MemoryMiB: 512, AntiAffinity: "g1"}, Exclude: []string{"n01"}}
	want, _ := Place(s, req)
	done := make(chan Decision)
	for range 4 {
		go func() {
			var d Decision
			for range 50 {
				d, _ = Place(s, req)
			}
			done <- d
		}()
	}
	for range 4 {
		if d := <-done; !reflect.DeepEqual(d, want) {
			t.Errorf("concurrent Place gave %+v, want %+v", d, want)
		}
	}
}
