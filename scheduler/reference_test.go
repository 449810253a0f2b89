package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// randomCluster makes nn nodes (a few witness, down, in maintenance or not
// ready) and nv VMs spread over them and one node the snapshot lacks.
func randomCluster(rng *rand.Rand, nn, nv int) ([]Node, []VM) {
	nodes := make([]Node, nn)
	for i := range nodes {
		nodes[i] = node(fmt.Sprintf("n%02d", i), 1+rng.IntN(32), int64(2+rng.IntN(62))*1024)
		switch rng.IntN(20) {
		case 0:
			nodes[i].Witness = true
		case 1:
			nodes[i].Down = true
		case 2:
			nodes[i].Maintenance = true
		case 3:
			nodes[i].Ready = false
		}
	}
	vms := make([]VM, nv)
	for k := range vms {
		vms[k] = randomVM(rng, fmt.Sprintf("vm%03d", k), nn)
	}
	return nodes, vms
}

func randomVM(rng *rand.Rand, name string, nn int) VM {
	v := VM{Name: name, Node: fmt.Sprintf("n%02d", rng.IntN(nn+1)), VCPUs: 1 + rng.IntN(8),
		MemoryMiB: int64(128 * (1 + rng.IntN(64))), Running: rng.IntN(10) > 0}
	if rng.IntN(3) == 0 {
		v.AntiAffinity = fmt.Sprintf("g%d", rng.IntN(8))
	}
	return v
}

// refPlace is a deliberately naive model of the rules: it recomputes every
// node's usage from the VM list and sorts, with none of the snapshot's
// indexes, incremental ranking or cached words.
// The third result is the Brief form of a successful decision.
func refPlace(nodes []Node, vms []VM, p Policy, r Request) (string, []Candidate, []Candidate) {
	p = p.withDefaults()
	type row struct {
		name   string
		v      string // refusal, "" when it fits
		fit    string // free-room words
		frac   float64
		vms    int
		freeM  int64
		freeC  int
		static bool // can never take a VM, whatever the request
	}
	human := func(m int64) string {
		if m < 1024 {
			return fmt.Sprintf("%d MiB", m)
		}
		return fmt.Sprintf("%.1f GiB", float64(m)/1024)
	}
	var rows []row
	for _, n := range nodes {
		capM := int64(float64(n.MemoryMiB)*p.MemOvercommit) - p.ReservedMemMiB
		capC := int(float64(n.CPUs) * p.CPUOvercommit)
		rw := row{name: n.Name, freeM: capM, freeC: capC, static: n.Witness || n.Down || n.Maintenance || !n.Ready}
		var neighbors []string
		for _, v := range vms {
			if !v.Running || v.Node != n.Name || v.Name == r.VM.Name {
				continue
			}
			rw.freeM -= v.MemoryMiB
			rw.freeC -= v.VCPUs
			rw.vms++
			if r.VM.AntiAffinity != "" && v.AntiAffinity == r.VM.AntiAffinity {
				neighbors = append(neighbors, v.Name)
			}
		}
		slices.Sort(neighbors)
		if capM > 0 && rw.freeM > 0 {
			rw.frac = float64(rw.freeM) / float64(capM)
		}
		fm, fc := max(rw.freeM, 0), max(rw.freeC, 0)
		rw.fit = fmt.Sprintf("free %s RAM, %d vCPU", human(fm), fc)
		memOK, cpuOK := rw.freeM >= r.VM.MemoryMiB, rw.freeC >= r.VM.VCPUs
		switch {
		case slices.Contains(r.Exclude, n.Name):
			rw.v = ReasonExcluded
		case n.Witness:
			rw.v = ReasonWitness
		case n.Down:
			rw.v = ReasonDown
		case n.Maintenance:
			rw.v = ReasonMaintenance
		case !n.Ready:
			rw.v = ReasonNotReady
		case r.Node != "" && r.Node != n.Name:
			rw.v = ReasonNotRequested
		case len(neighbors) > 0:
			rw.v = fmt.Sprintf("anti-affinity group %s: vm %s already here", r.VM.AntiAffinity, neighbors[0])
		case !memOK && !cpuOK:
			rw.v = fmt.Sprintf("only %d MiB and %d vCPU free", fm, fc)
		case !memOK:
			rw.v = fmt.Sprintf("only %d MiB free", fm)
		case !cpuOK:
			rw.v = fmt.Sprintf("only %d vCPU free", fc)
		}
		rows = append(rows, rw)
	}
	// Nodes that can never take a VM rank last and are never a "why not".
	static := func(rw row) bool { return rw.static }
	slices.SortFunc(rows, func(a, b row) int {
		sa, sb := 0, 0
		if static(a) {
			sa = 1
		}
		if static(b) {
			sb = 1
		}
		return cmp.Or(cmp.Compare(sa, sb), cmp.Compare(b.frac, a.frac), cmp.Compare(a.vms, b.vms), cmp.Compare(a.name, b.name))
	})
	find := func(name string) int {
		return slices.IndexFunc(rows, func(rw row) bool { return rw.name == name && rw.v == "" })
	}
	known := func(name string) bool { return slices.ContainsFunc(rows, func(rw row) bool { return rw.name == name }) }
	chosen, why := -1, ""
	var passed []string // refused nodes considered before the chosen one
	if r.Node != "" {
		if chosen = find(r.Node); chosen >= 0 {
			why = "requested node"
		}
	} else {
		for k, name := range r.Preferred {
			if chosen = find(name); chosen >= 0 {
				why = fmt.Sprintf("preferred node %d of %d", k+1, len(r.Preferred))
				break
			}
			if known(name) && !slices.Contains(passed, name) {
				// a refused preferred node is a "why not", static or not
				passed = append(passed, name)
			}
		}
		if chosen < 0 {
			if chosen = slices.IndexFunc(rows, func(rw row) bool { return rw.v == "" }); chosen >= 0 {
				why = "most free memory"
				if len(r.Preferred) > 0 {
					why = "no preferred node fits; most free memory"
				}
				for _, rw := range rows[:chosen] {
					if !static(rw) && !slices.Contains(passed, rw.name) {
						passed = append(passed, rw.name)
					}
				}
			}
		}
	}
	var cs []Candidate
	if chosen >= 0 {
		cs = append(cs, Candidate{Node: rows[chosen].name, Fits: true, Reason: why + "; " + rows[chosen].fit, Score: rows[chosen].frac})
	}
	for k, rw := range rows {
		if rw.v == "" && k != chosen {
			cs = append(cs, Candidate{Node: rw.name, Fits: true, Reason: rw.fit, Score: rw.frac})
		}
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(a.name, b.name) })
	for _, rw := range rows {
		if rw.v != "" {
			cs = append(cs, Candidate{Node: rw.name, Reason: rw.v})
		}
	}
	if chosen < 0 {
		return "", cs, nil
	}
	brief := []Candidate{cs[0]}
	slices.Sort(passed)
	for _, name := range passed {
		brief = append(brief, cs[slices.IndexFunc(cs, func(c Candidate) bool { return c.Node == name })])
	}
	return cs[0].Node, cs, brief
}

// TestPlaceMatchesReference drives random placements and commits through
// the snapshot and through refPlace and requires identical decisions,
// reasons included, at every step.
func TestPlaceMatchesReference(t *testing.T) {
	t.Parallel()
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 99))
		nn := 1 + rng.IntN(30)
		nodes, vms := randomCluster(rng, nn, rng.IntN(120))
		policy := []Policy{noReserve, {}, {CPUOvercommit: 2, MemOvercommit: 1.5, ReservedMemMiB: 256}}[seed%3]
		s := NewSnapshot(nodes, vms, policy)
		vms = slices.Clone(s.VMs) // the model's view, deduplicated like the snapshot
		for step := range 300 {
			var r Request
			if len(vms) > 0 && rng.IntN(3) == 0 {
				r.VM = vms[rng.IntN(len(vms))] // re-place an existing VM
				r.VM.Running = true
			} else {
				r.VM = randomVM(rng, fmt.Sprintf("new%04d", step), nn)
			}
			if rng.IntN(8) == 0 {
				r.Node = fmt.Sprintf("n%02d", rng.IntN(nn))
			}
			if rng.IntN(4) == 0 {
				r.Preferred = []string{fmt.Sprintf("n%02d", rng.IntN(nn)), fmt.Sprintf("n%02d", rng.IntN(nn+2))}
			}
			if rng.IntN(4) == 0 {
				r.Exclude = []string{fmt.Sprintf("n%02d", rng.IntN(nn))}
			}
			d, err := Place(s, r)
			wantNode, wantCands, wantBrief := refPlace(s.Nodes, vms, policy, r)
			if d.Node != wantNode || !reflect.DeepEqual(d.Candidates, wantCands) {
				t.Fatalf("seed %d step %d request %+v:\n got %q %+v\nwant %q %+v", seed, step, r, d.Node, d.Candidates, wantNode, wantCands)
			}
			r.Brief = true
			bd, berr := Place(s, r)
			if wantBrief == nil {
				wantBrief = wantCands // a failure lists every node
			}
			if bd.Node != wantNode || !reflect.DeepEqual(bd.Candidates, wantBrief) || (berr == nil) != (err == nil) {
				t.Fatalf("seed %d step %d brief request %+v:\n got %q %+v\nwant %q %+v", seed, step, r, bd.Node, bd.Candidates, wantNode, wantBrief)
			}
			if (err == nil) != (wantNode != "") || (err != nil && !errors.Is(err, ErrNoFit)) {
				t.Fatalf("seed %d step %d: error %v with node %q", seed, step, err, wantNode)
			}
			// Commit the placement, or sometimes a stop or an arbitrary move.
			c := r.VM
			switch {
			case d.Node != "":
				c.Node, c.Running = d.Node, true
			case rng.IntN(2) == 0:
				c.Running = false
			}
			s.Commit(c)
			if k := slices.IndexFunc(vms, func(v VM) bool { return v.Name == c.Name }); k >= 0 {
				vms[k] = c
			} else {
				vms = append(vms, c)
			}
		}
		if !reflect.DeepEqual(s.VMs, vms) {
			t.Fatalf("seed %d: snapshot VMs diverged from the commits", seed)
		}
	}
}
