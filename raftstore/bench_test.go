package raftstore

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

const benchVMs = 200

// benchFSM is the fixture plus benchVMs running VMs spread over n1 and n2,
// with a full event log so event trimming runs at its steady-state cost.
func benchFSM(b *testing.B) (*FSM, uint64) {
	b.Helper()
	cmds := fixture()
	for i := range benchVMs {
		name, node := fmt.Sprintf("b%03d", i), []string{"n1", "n2"}[i%2]
		cmds = append(cmds,
			vmCreate(&pb.VM{Name: name, Node: node, Power: pb.PowerState_POWER_STATE_RUNNING, Spec: spec([]string{"net1"})}),
			vmStatus(name, node, pb.VMState_VM_STATE_RUNNING))
	}
	for len(cmds) < MaxEvents+benchVMs*2 {
		cmds = append(cmds, cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "fill"}}))
	}
	f := NewFSM(quiet, func(err error) { b.Fatalf("fatal: %v", err) })
	logs := logsOf(b, 1, cmds...)
	for i := 0; i < len(logs); i += 512 {
		f.ApplyBatch(logs[i:min(i+512, len(logs))])
	}
	return f, uint64(len(logs))
}

// BenchmarkApply measures the FSM cost of one VM status report, the most
// frequent command (every agent reports every VM it runs). One op is one
// command; batch is how many raft hands ApplyBatch at once.
//
//	report: the VM keeps running, only counters change (no event)
//	flap:   the VM changes state every report (one event each)
func BenchmarkApply(b *testing.B) {
	for _, kind := range []string{"report", "flap"} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", kind, batch), func(b *testing.B) {
				f, idx := benchFSM(b)
				// A ring of pre-encoded commands keeps encoding out of the
				// measured loop.
				ring := make([][]byte, 2*benchVMs)
				for i := range ring {
					vm, node := fmt.Sprintf("b%03d", i%benchVMs), []string{"n1", "n2"}[i%benchVMs%2]
					st := pb.VMState_VM_STATE_RUNNING
					if kind == "flap" && i >= benchVMs {
						st = pb.VMState_VM_STATE_PAUSED
					}
					c := cmd(cVMStatus, &pb.VMStatusCommand{Name: vm, Node: node, Status: &pb.VMStatus{
						State: st, CpuTimeNs: uint64(i) * 1e9, MemoryKib: 1 << 20, ObservedGeneration: 1,
					}})
					raw, err := proto.Marshal(c)
					if err != nil {
						b.Fatal(err)
					}
					ring[i] = raw
				}
				logs := make([]*raft.Log, batch)
				for i := range logs {
					logs[i] = &raft.Log{Type: raft.LogCommand, Term: 1}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for n := 0; n < b.N; n += batch {
					k := min(batch, b.N-n)
					for i := range k {
						idx++
						logs[i].Index, logs[i].Data = idx, ring[(n+i)%len(ring)]
					}
					for _, r := range f.ApplyBatch(logs[:k]) {
						if res := r.(ApplyResult); res.Err != nil {
							b.Fatal(res.Err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkSnapshot measures encoding the bench state for a snapshot.
func BenchmarkSnapshot(b *testing.B) {
	f, _ := benchFSM(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		sink := &bufSink{}
		if err := snap.Persist(sink); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(sink.Len()))
	}
}
