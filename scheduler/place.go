package scheduler

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/minet/corral/errdefs"
)

// Place chooses a node for r.VM. Errors: *NoFitError (errors.Is ErrNoFit)
// when no node, or not the forced node, can take the VM; *UnknownNodeError
// (errors.Is ErrUnknownNode) for a forced node the snapshot does not hold;
// an errdefs invalid error for negative sizes. The Decision lists every
// node with its verdict, also alongside a NoFitError, unless r.Brief.
// Place does not record the placement: call Commit for that.
func Place(s *Snapshot, r Request) (Decision, error) {
	s.ensure()
	d := Decision{VM: r.VM.Name}
	if r.VM.MemoryMiB < 0 || r.VM.VCPUs < 0 {
		return d, errdefs.Invalid("vm %s: negative size (%d MiB, %d vCPU)", r.VM.Name, r.VM.MemoryMiB, r.VM.VCPUs)
	}
	e, err := newEval(s, r)
	if err != nil {
		return d, err
	}
	order := e.ranked()
	chosen, why, passed := e.choose(r, order, r.Brief)
	if chosen >= 0 {
		d.Node = s.Nodes[chosen].Name
		if r.Brief {
			d.Candidates = e.brief(chosen, why, passed)
			return d, nil
		}
	}
	v := make([]reason, len(s.Nodes))
	for i := range v {
		v[i] = e.verdict(int32(i))
	}
	d.Candidates = e.candidates(v, order, chosen, why)
	if chosen < 0 {
		return d, &NoFitError{Request: r, Candidates: d.Candidates}
	}
	return d, nil
}

// choose applies the rules in order and stops at the first node that
// fits, so a placement usually looks at a handful of nodes. With keep it
// also returns the refused nodes it passed on the way: the ones a reader
// asks "why not" about.
func (e *eval) choose(r Request, order []int32, keep bool) (chosen int32, why string, passed []int32) {
	s := e.s
	if e.forced >= 0 {
		if e.verdict(e.forced) == rFits {
			return e.forced, "requested node", nil
		}
		return -1, "", nil
	}
	for k, name := range r.Preferred {
		if i, ok := s.idx[name]; ok {
			if e.verdict(i) == rFits {
				return i, "preferred node " + strconv.Itoa(k+1) + " of " + strconv.Itoa(len(r.Preferred)), passed
			}
			if keep && !slices.Contains(passed, i) {
				passed = append(passed, i)
			}
		}
	}
	why = "most free memory"
	if len(r.Preferred) > 0 {
		why = "no preferred node fits; most free memory"
	}
	pref := len(passed) // the order holds each node once: dedupe against these only
	for _, i := range order {
		if s.st[i].static != rFits {
			break // such nodes rank last and never fit, and are not worth a "why not"
		}
		if e.verdict(i) == rFits {
			return i, why, passed
		}
		if keep && !slices.Contains(passed[:pref], i) {
			passed = append(passed, i)
		}
	}
	return -1, "", nil
}

// brief lists the chosen node and the refused nodes that would have come
// before it, by name.
func (e *eval) brief(chosen int32, why string, passed []int32) []Candidate {
	s := e.s
	slices.SortFunc(passed, func(a, b int32) int { return cmp.Compare(s.Nodes[a].Name, s.Nodes[b].Name) })
	cs := make([]Candidate, 0, 1+len(passed))
	f, _, _ := e.key(chosen)
	cs = append(cs, Candidate{Node: s.Nodes[chosen].Name, Fits: true,
		Reason: why + "; " + e.words(chosen, rFits), Score: f})
	for _, i := range passed {
		cs = append(cs, Candidate{Node: s.Nodes[i].Name, Reason: e.words(i, e.verdict(i))})
	}
	return cs
}

// PlaceAll places a batch (a drain, a failover) on s, highest Priority
// first, then by VM name, so the result does not depend on the order of
// reqs. Each placement is committed (as running on its new node) before the
// next is chosen, so capacity and anti-affinity account for the batch.
//
// All or nothing: if any request fails, every commit of this call is
// undone, s is left as it was, and the error is a *BatchError listing all
// failures. The decisions are returned either way, aligned with reqs (a
// failed one has Node ""), so a best-effort caller such as failover can
// still Commit the ones that fitted.
func PlaceAll(s *Snapshot, reqs []Request) ([]Decision, error) {
	s.ensure()
	order := make([]int, len(reqs))
	for k := range order {
		order[k] = k
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(
			cmp.Compare(reqs[b].Priority, reqs[a].Priority),
			cmp.Compare(reqs[a].VM.Name, reqs[b].VM.Name),
			cmp.Compare(a, b))
	})

	type undo struct {
		prev    VM
		existed bool
	}
	ds := make([]Decision, len(reqs))
	undos := make([]undo, 0, len(reqs))
	var fails []BatchFailure
	for _, k := range order {
		d, err := Place(s, reqs[k])
		ds[k] = d
		if err != nil {
			fails = append(fails, BatchFailure{Index: k, VM: reqs[k].VM.Name, Err: err})
			continue
		}
		vm := reqs[k].VM
		vm.Node, vm.Running = d.Node, true
		prev, existed := s.commit(vm, true)
		undos = append(undos, undo{prev: prev, existed: existed})
	}
	if len(fails) == 0 {
		return ds, nil
	}
	for j := len(undos) - 1; j >= 0; j-- {
		if u := undos[j]; u.existed {
			s.commit(u.prev, true)
		} else {
			s.forgetLast()
		}
	}
	return ds, &BatchError{Total: len(reqs), Failures: fails}
}

// eval is one request against one snapshot.
type eval struct {
	s      *Snapshot
	vm     VM
	forced int32 // the --node index, or -1
	// self is the node where this VM already counts (a migration or a
	// restart): its own footprint there is given back, or -1.
	self    int32
	selfMem int64
	selfCPU int
	mask    []uint8 // per node mExcluded|mAffinity; nil when neither applies
}

const (
	mExcluded uint8 = 1 << iota
	mAffinity
)

func newEval(s *Snapshot, r Request) (*eval, error) {
	e := &eval{s: s, vm: r.VM, forced: -1, self: -1}
	if r.Node != "" {
		i, ok := s.idx[r.Node]
		if !ok {
			known := make([]string, len(s.Nodes))
			for k := range s.Nodes {
				known[k] = s.Nodes[k].Name
			}
			return nil, &UnknownNodeError{Node: r.Node, Known: known}
		}
		e.forced = i
	}
	if k, ok := s.vmIdx[r.VM.Name]; ok && r.VM.Name != "" {
		if cur := s.VMs[k]; cur.Running {
			if i, ok := s.idx[cur.Node]; ok {
				e.self, e.selfMem, e.selfCPU = i, cur.MemoryMiB, cur.VCPUs
			}
		}
	}
	// The mask is built from the few excluded nodes and the few nodes that
	// hold the group, so the per-node check stays a load and a test.
	group := s.groups[r.VM.AntiAffinity]
	if len(r.Exclude) == 0 && len(group) == 0 {
		return e, nil
	}
	e.mask = make([]uint8, len(s.Nodes))
	for _, name := range r.Exclude {
		if i, ok := s.idx[name]; ok {
			e.mask[i] |= mExcluded
		}
	}
	for i, names := range group {
		if len(names) > 1 || names[0] != r.VM.Name {
			e.mask[i] |= mAffinity
		}
	}
	return e, nil
}

// verdict checks node i for the request, cheapest and most telling first.
func (e *eval) verdict(i int32) reason {
	if e.mask != nil && e.mask[i]&mExcluded != 0 {
		return rExcluded
	}
	st := &e.s.st[i]
	if st.static != rFits {
		return st.static
	}
	if e.forced >= 0 && i != e.forced {
		return rNotRequested
	}
	if e.mask != nil && e.mask[i]&mAffinity != 0 {
		return rAntiAffinity
	}
	freeMem, freeCPU := e.free(i)
	memOK, cpuOK := freeMem >= e.vm.MemoryMiB, freeCPU >= e.vm.VCPUs
	switch {
	case memOK && cpuOK:
		return rFits
	case cpuOK:
		return rMemShort
	case memOK:
		return rCPUShort
	}
	return rBothShort
}

func (e *eval) free(i int32) (int64, int) {
	st := &e.s.st[i]
	freeMem, freeCPU := st.capMem-st.usedMem, st.capCPU-st.usedCPU
	if i == e.self {
		freeMem, freeCPU = freeMem+e.selfMem, freeCPU+e.selfCPU
	}
	return freeMem, freeCPU
}

// key is node i's spread key for this request: the self node ranks as if
// the VM had already left it.
func (e *eval) key(i int32) (float64, int, string) {
	st := &e.s.st[i]
	if i != e.self {
		return st.frac, st.vms, e.s.Nodes[i].Name
	}
	freeMem, _ := e.free(i)
	return freeFraction(freeMem, st.capMem), st.vms - 1, e.s.Nodes[i].Name
}

// ranked returns every node best spread first: the snapshot's maintained
// order, shared and not to be written, or, when the VM already counts on a
// node, a copy with that node moved to where its corrected key belongs.
func (e *eval) ranked() []int32 {
	if e.self < 0 {
		return e.s.order
	}
	sf, sv, sn := e.key(e.self)
	selfOK := e.s.st[e.self].static == rFits
	out := make([]int32, 0, len(e.s.order))
	pending := true
	for _, i := range e.s.order {
		if i == e.self {
			continue
		}
		if pending {
			f, v, n := e.key(i)
			iOK := e.s.st[i].static == rFits
			if selfOK && !iOK || selfOK == iOK && keyLess(sf, sv, sn, f, v, n) {
				out = append(out, e.self)
				pending = false
			}
		}
		out = append(out, i)
	}
	if pending {
		out = append(out, e.self)
	}
	return out
}

// candidates lists every node: chosen first, the other fitting nodes best
// first, then the refused ones by name. Words come from the per-node cache,
// so this costs one slice and, for the chosen node, one string.
func (e *eval) candidates(v []reason, order []int32, chosen int32, why string) []Candidate {
	// Nodes are sorted by name, so a pass in index order lists the
	// refused ones by name without sorting.
	s := e.s
	cs := make([]Candidate, 0, len(s.Nodes))
	if chosen >= 0 {
		f, _, _ := e.key(chosen)
		cs = append(cs, Candidate{Node: s.Nodes[chosen].Name, Fits: true,
			Reason: why + "; " + e.words(chosen, rFits), Score: f})
	}
	for _, i := range order {
		if i != chosen && v[i] == rFits {
			f, _, _ := e.key(i)
			cs = append(cs, Candidate{Node: s.Nodes[i].Name, Fits: true, Reason: e.words(i, rFits), Score: f})
		}
	}
	for i, vi := range v {
		if vi != rFits {
			cs = append(cs, Candidate{Node: s.Nodes[i].Name, Reason: e.words(int32(i), vi)})
		}
	}
	return cs
}

// words turns a verdict into the words an operator reads.
func (e *eval) words(i int32, v reason) string {
	switch v {
	case rExcluded:
		return ReasonExcluded
	case rWitness:
		return ReasonWitness
	case rDown:
		return ReasonDown
	case rMaintenance:
		return ReasonMaintenance
	case rNotReady:
		return ReasonNotReady
	case rNotRequested:
		return ReasonNotRequested
	case rAntiAffinity:
		for _, name := range e.s.groups[e.vm.AntiAffinity][i] {
			if name != e.vm.Name {
				return "anti-affinity group " + e.vm.AntiAffinity + ": vm " + name + " already here"
			}
		}
	}
	st := &e.s.st[i]
	fit, mem, cpu, both := st.fitWords, st.memWords, st.cpuWords, st.bothWords
	if i == e.self {
		fit, mem, cpu, both = words(e.free(i))
	}
	switch v {
	case rMemShort:
		return mem
	case rCPUShort:
		return cpu
	case rBothShort:
		return both
	}
	return fit
}
