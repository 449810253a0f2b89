package scheduler

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// benchCluster is 500 nodes of mixed sizes, a few of them witness, down or
// in maintenance, and 10,000 VM requests of mixed sizes: one in three in an
// anti-affinity group of 5, one in ten with an HA preference, one in fifty
// forced, one in twenty excluding a node.
func benchCluster() ([]Node, []Request) {
	rng := rand.New(rand.NewPCG(42, 42))
	nodes := make([]Node, 500)
	for i := range nodes {
		nodes[i] = Node{Name: fmt.Sprintf("node-%03d", i), Ready: true, Hypervisor: "kvm",
			CPUs: 32 << rng.IntN(3), MemoryMiB: int64(128<<rng.IntN(3)) * 1024}
		switch i % 50 {
		case 7:
			nodes[i].Witness = true
		case 13:
			nodes[i].Maintenance = true
		case 29:
			nodes[i].Down = true
		}
	}
	reqs := make([]Request, 10_000)
	for k := range reqs {
		r := Request{VM: VM{Name: fmt.Sprintf("vm-%05d", k), VCPUs: 1 << rng.IntN(4), MemoryMiB: int64(1024 << rng.IntN(5))}}
		if k%3 == 0 {
			r.VM.AntiAffinity = fmt.Sprintf("grp-%d", k/15)
		}
		if k%10 == 1 {
			r.Preferred = []string{nodes[rng.IntN(500)].Name, nodes[rng.IntN(500)].Name}
		}
		if k%50 == 2 {
			r.Node = nodes[rng.IntN(500)].Name
		}
		if k%20 == 3 {
			r.Exclude = []string{nodes[rng.IntN(500)].Name}
		}
		reqs[k] = r
	}
	return nodes, reqs
}

// BenchmarkPlace10kOn500 places 10,000 VMs one after another on one
// 500-node snapshot, committing each, as a large drain or a cold start of
// the whole cluster would. One op is the whole run of 10,000 decisions.
// "brief" sets Request.Brief, as every real placement does (vm create,
// drain, failover); "full" returns every node's verdict with each decision,
// as only a dry run (and a refusal) computes.
func BenchmarkPlace10kOn500(b *testing.B) {
	for _, brief := range []bool{false, true} {
		name := "full"
		if brief {
			name = "brief"
		}
		b.Run(name, func(b *testing.B) { benchPlace10k(b, brief) })
	}
}

func benchPlace10k(b *testing.B, brief bool) {
	nodes, reqs := benchCluster()
	for k := range reqs {
		reqs[k].Brief = brief
	}
	b.ReportAllocs()
	decisions, refused := 0, 0
	cpu0 := cpuTime(b)
	for b.Loop() {
		b.StopTimer()
		s := NewSnapshot(nodes, nil, Policy{})
		b.StartTimer()
		for _, r := range reqs {
			d, err := Place(s, r)
			decisions++
			if err != nil {
				refused++ // forced onto an unfit node: still a decision
				continue
			}
			v := r.VM
			v.Node, v.Running = d.Node, true
			s.Commit(v)
		}
	}
	if refused*20 > decisions {
		b.Fatalf("%d of %d refused: the cluster is too small for the benchmark to mean anything", refused, decisions)
	}
	// CPU time (all threads, GC included) next to wall time: on a shared
	// 2-core box the wall figure mostly measures the neighbours.
	cpu := cpuTime(b) - cpu0
	b.ReportMetric(float64(decisions)/b.Elapsed().Seconds(), "decisions/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(decisions), "ns/decision")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(decisions), "cpu-ns/decision")
}

// cpuTime is the process's user+system CPU time. It includes the untimed
// snapshot builds, which are small next to 10,000 placements.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
