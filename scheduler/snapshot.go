package scheduler

import (
	"slices"
	"strconv"
	"strings"
)

// Snapshot is the cluster as the scheduler sees it, with indexes built once
// so that Place costs O(nodes) with a handful of allocations. Build it with
// NewSnapshot and treat the exported fields as read-only (Commit keeps them
// and the indexes in step). Place only reads, so concurrent Place calls are
// safe; Commit and PlaceAll write and need exclusive use.
type Snapshot struct {
	Nodes  []Node // sorted by name
	VMs    []VM
	Policy Policy // with defaults applied

	built  bool
	idx    map[string]int32 // node name → index into Nodes and st
	st     []nodeState
	order  []int32 // node indices best-first by spread key (see rankLess)
	pos    []int32 // inverse of order
	vmIdx  map[string]int
	groups map[string]map[int32][]string // anti-affinity group → node → VM names, sorted
}

// reason is a node's verdict as a small code; the words are made only for
// the candidates a caller gets back.
type reason uint8

const (
	rFits reason = iota
	rExcluded
	rWitness
	rDown
	rMaintenance
	rNotReady
	rNotRequested
	rAntiAffinity
	rMemShort
	rCPUShort
	rBothShort
)

// Reason words for the fixed verdicts. Tests check them by these names.
const (
	ReasonExcluded     = "excluded (source node)"
	ReasonWitness      = "witness runs no VMs"
	ReasonDown         = "down (not heartbeating or fenced)"
	ReasonMaintenance  = "in maintenance"
	ReasonNotReady     = "not ready (no inventory reported yet)"
	ReasonNotRequested = "not the requested node"
)

// nodeState is the per-node accounting, hot fields first. The reason
// strings depend only on the node's free room, so they are rebuilt when a
// Commit touches the node rather than on every Place.
type nodeState struct {
	static  reason // witness/down/maintenance/not ready, or rFits
	capMem  int64  // schedulable MiB: memory*ratio - reserved
	capCPU  int    // schedulable vCPU: cpus*ratio
	usedMem int64
	usedCPU int
	vms     int
	frac    float64 // free memory fraction: the spread key

	fitWords  string // "free 3.2 GiB RAM, 6 vCPU"
	memWords  string // "only 1024 MiB free"
	cpuWords  string // "only 3 vCPU free"
	bothWords string // "only 1024 MiB and 3 vCPU free"
}

// NewSnapshot indexes nodes and VMs under policy. The slices are copied.
// A VM listed twice keeps its last entry, as if Committed in order; a node
// listed twice keeps its first.
func NewSnapshot(nodes []Node, vms []VM, policy Policy) *Snapshot {
	s := &Snapshot{Nodes: nodes, VMs: vms, Policy: policy}
	s.build()
	return s
}

// ensure indexes a Snapshot built as a literal rather than by NewSnapshot.
func (s *Snapshot) ensure() {
	if !s.built {
		s.build()
	}
}

func (s *Snapshot) build() {
	s.built = true
	s.Policy = s.Policy.withDefaults()
	nodes := slices.Clone(s.Nodes)
	slices.SortStableFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	nodes = slices.CompactFunc(nodes, func(a, b Node) bool { return a.Name == b.Name })
	s.Nodes = nodes
	n := len(nodes)
	s.idx = make(map[string]int32, n)
	s.st = make([]nodeState, n)
	for i := range nodes {
		nd := &nodes[i]
		s.idx[nd.Name] = int32(i)
		st := &s.st[i]
		st.capMem = int64(float64(nd.MemoryMiB)*s.Policy.MemOvercommit) - s.Policy.ReservedMemMiB
		st.capCPU = int(float64(nd.CPUs) * s.Policy.CPUOvercommit)
		switch {
		case nd.Witness:
			st.static = rWitness
		case nd.Down:
			st.static = rDown
		case nd.Maintenance:
			st.static = rMaintenance
		case !nd.Ready:
			st.static = rNotReady
		}
	}
	vms := s.VMs
	s.VMs = make([]VM, 0, len(vms))
	s.vmIdx = make(map[string]int, len(vms))
	s.groups = make(map[string]map[int32][]string)
	for _, vm := range vms {
		s.commit(vm, false)
	}
	s.order = make([]int32, n)
	s.pos = make([]int32, n)
	for i := range s.st {
		s.refreshWords(int32(i))
		s.order[i] = int32(i)
	}
	slices.SortFunc(s.order, func(a, b int32) int {
		if s.rankLess(a, b) {
			return -1
		}
		return 1 // names are unique, so there are no ties
	})
	for p, i := range s.order {
		s.pos[i] = int32(p)
	}
}

// rankLess orders nodes for spreading: nodes that can take VMs at all
// before witness, down, maintenance and not-ready ones (which, holding
// nothing, would otherwise look emptiest), then most free memory fraction,
// then fewer VMs, then name, so the order never depends on input order.
func (s *Snapshot) rankLess(a, b int32) bool {
	sa, sb := &s.st[a], &s.st[b]
	if (sa.static == rFits) != (sb.static == rFits) {
		return sa.static == rFits
	}
	return keyLess(sa.frac, sa.vms, s.Nodes[a].Name, sb.frac, sb.vms, s.Nodes[b].Name)
}

func keyLess(fa float64, va int, na string, fb float64, vb int, nb string) bool {
	if fa != fb {
		return fa > fb
	}
	if va != vb {
		return va < vb
	}
	return na < nb
}

// Commit records vm as it will be (placed, moved, stopped or resized) so
// that later Place calls on this snapshot see it: the batch placement of a
// drain or a failover.
func (s *Snapshot) Commit(vm VM) {
	s.ensure()
	s.commit(vm, true)
}

// commit records vm and returns what it replaced, for PlaceAll's rollback.
// live keeps the ranking and words current; build passes false and fixes
// them all at once.
func (s *Snapshot) commit(vm VM, live bool) (prev VM, existed bool) {
	k, existed := s.vmIdx[vm.Name]
	if existed {
		prev = s.VMs[k]
		s.account(prev, -1, live)
		s.VMs[k] = vm
	} else {
		s.vmIdx[vm.Name] = len(s.VMs)
		s.VMs = append(s.VMs, vm)
	}
	s.account(vm, +1, live)
	return prev, existed
}

// forgetLast removes the newest VM, which commit appended. PlaceAll's
// rollback runs newest first, so that VM is always the last one and the
// order of VMs comes back exactly.
func (s *Snapshot) forgetLast() {
	last := len(s.VMs) - 1
	vm := s.VMs[last]
	s.account(vm, -1, true)
	s.VMs = s.VMs[:last]
	delete(s.vmIdx, vm.Name)
}

// account adds (sign +1) or removes (-1) vm's footprint.
func (s *Snapshot) account(vm VM, sign int, live bool) {
	if !vm.Running {
		return
	}
	i, ok := s.idx[vm.Node]
	if !ok {
		return // on a node the snapshot does not know: reserves nothing
	}
	st := &s.st[i]
	st.usedMem += int64(sign) * vm.MemoryMiB
	st.usedCPU += sign * vm.VCPUs
	st.vms += sign
	if vm.AntiAffinity != "" {
		g := s.groups[vm.AntiAffinity]
		if g == nil {
			g = make(map[int32][]string)
			s.groups[vm.AntiAffinity] = g
		}
		names := g[i]
		at, found := slices.BinarySearch(names, vm.Name)
		switch {
		case sign > 0 && !found:
			g[i] = slices.Insert(names, at, vm.Name)
		case sign < 0 && found:
			names = slices.Delete(names, at, at+1)
			if len(names) == 0 {
				delete(g, i)
			} else {
				g[i] = names
			}
			if len(g) == 0 {
				delete(s.groups, vm.AntiAffinity)
			}
		}
	}
	if live {
		s.refreshWords(i)
		s.rerank(i)
	}
}

// refreshWords recomputes node i's spread key and reason words.
func (s *Snapshot) refreshWords(i int32) {
	st := &s.st[i]
	freeMem, freeCPU := st.capMem-st.usedMem, st.capCPU-st.usedCPU
	st.frac = freeFraction(freeMem, st.capMem)
	st.fitWords, st.memWords, st.cpuWords, st.bothWords = words(freeMem, freeCPU)
}

func freeFraction(free, capacity int64) float64 {
	if capacity <= 0 || free <= 0 {
		return 0
	}
	return float64(free) / float64(capacity)
}

// words formats a node's free room once per change of that room. The four
// phrasings share one allocation.
func words(freeMem int64, freeCPU int) (fit, mem, cpu, both string) {
	fm, fc := max(freeMem, 0), max(freeCPU, 0)
	b := make([]byte, 0, 128)
	b = append(b, "free "...)
	b = appendHuman(b, fm)
	b = append(b, " RAM, "...)
	c0 := len(b)
	b = strconv.AppendInt(b, int64(fc), 10)
	b = append(b, " vCPU"...)
	c1 := len(b)
	b = append(b, "only "...)
	m0 := len(b)
	b = strconv.AppendInt(b, fm, 10)
	b = append(b, " MiB"...)
	m1 := len(b)
	b = append(b, " free"...)
	e1 := len(b)
	b = append(b, "only "...)
	b = append(b, b[c0:c1]...)
	b = append(b, " free"...)
	e2 := len(b)
	b = append(b, "only "...)
	b = append(b, b[m0:m1]...)
	b = append(b, " and "...)
	b = append(b, b[c0:c1]...)
	b = append(b, " free"...)
	all := string(b)
	return all[:c1], all[c1:e1], all[e1:e2], all[e2:]
}

// appendHuman prints memory the way an operator reads it: GiB with one
// decimal from 1 GiB up, MiB below.
func appendHuman(b []byte, mib int64) []byte {
	if mib < 1024 {
		return append(strconv.AppendInt(b, mib, 10), " MiB"...)
	}
	return append(strconv.AppendFloat(b, float64(mib)/1024, 'f', 1, 64), " GiB"...)
}

// rerank moves node i to its place in order after its key changed: one
// binary search and one shift, O(nodes) without sorting.
func (s *Snapshot) rerank(i int32) {
	p := int(s.pos[i])
	s.order = slices.Delete(s.order, p, p+1)
	at, _ := slices.BinarySearchFunc(s.order, i, func(o, t int32) int {
		if s.rankLess(o, t) {
			return -1
		}
		return 1
	})
	s.order = slices.Insert(s.order, at, i)
	lo, hi := min(p, at), max(p, at)
	for q := lo; q <= hi; q++ {
		s.pos[s.order[q]] = int32(q)
	}
}
