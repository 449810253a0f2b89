package raftstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hashicorp/raft"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

// fuzzSeeds are valid commands of many types against the fixture, plus a
// few refused ones, so mutation starts from every decoder and check path.
func fuzzSeeds() []*pb.Command {
	seeds := []*pb.Command{
		vmCreate(&pb.VM{Name: "vm3", Node: "n2", Spec: spec([]string{"net1"}, &pb.DiskSpec{Pool: "ceph", Volume: "disk1"})}),
		vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING),
		power("vm1", pb.PowerState_POWER_STATE_RUNNING),
		cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1", Spec: spec([]string{"ovs1"})}),
		cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", From: "n1", To: "n2"}),
		cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2", TaskId: "task1"}),
		cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", To: "n2"}),
		cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm2"}),
		cmd(cVMRemove, &pb.VMRemoveCommand{Name: "vm1", Node: "n1"}),
		fence("n1"),
		health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true }),
		cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n3"}, TokenId: "tok-free"}),
		cmd(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "t9", SecretHash: "h", ExpiresUnixNano: t0 + hour}}),
		cmd(cInventory, &pb.NodeInventoryCommand{Name: "n2", Inventory: &pb.Inventory{Cpus: 4}}),
		cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n2", Maintenance: true}),
		cmd(cNodeRemove, &pb.NodeRemoveCommand{Name: "w1"}),
		netCreate(&pb.Network{Name: "net2", Vlan: 30, Kind: "ovs", Uplink: "eth1", Stp: true, Priority: 100}),
		cmd(cNetUpdate, &pb.NetworkUpdateCommand{Network: &pb.Network{Name: "net1", Vlan: 11, Kind: "linux", Uplink: "eth0"}}),
		cmd(cNetDelete, &pb.NetworkDeleteCommand{Name: "ovs1"}),
		cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n1", Status: map[string]*pb.NetworkStatus{"net1": {Applied: true}}}),
		cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "srv", Kind: "dir", Path: "/srv"}}),
		cmd(cPoolRemove, &pb.PoolRemoveCommand{Name: "local"}),
		volPut("ceph", "new", nil),
		cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "clone1"}),
		cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: "t2", Kind: "k"}}),
		cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", State: pb.TaskState_TASK_STATE_SUCCEEDED}),
		cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "x"}}),
		cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{SuspectAfterMs: 1000, DownAfterMs: 2000}}),
		cmd(cBootstrap, &pb.BootstrapCommand{Cluster: &pb.ClusterInfo{Name: "c2"}, Node: &pb.Node{Name: "z"}}),
	}
	return seeds
}

// fuzzBase is the fixture as log entries, applied before each input.
func fuzzBase(tb testing.TB) []*raft.Log { return logsOf(tb, 1, fixture()...) }

// FuzzApply feeds arbitrary bytes to the replicated apply path. It must
// never panic; a domain error is fine; an entry that does not decode must
// reach onFatal (replicas may not silently skip it) and one that decodes
// must not.
func FuzzApply(f *testing.F) {
	for _, c := range fuzzSeeds() {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff})
	base := fuzzBase(f)

	f.Fuzz(func(t *testing.T, raw []byte) {
		valid := decodable(raw)

		var c pb.Command
		if proto.Unmarshal(raw, &c) == nil {
			s := fixtureState(t)
			_, err := ApplyCommand(s, &c, 100)
			var de *DecodeError
			if isDecode := errors.As(err, &de); isDecode == valid {
				t.Errorf("ApplyCommand: decode error %v for an entry that decodable() says is %v", err, valid)
			}
			_ = Check(s, &c)
		}

		var fatals []error
		fsm := NewFSM(quiet, func(err error) { fatals = append(fatals, err) })
		fsm.ApplyBatch(base)
		if len(fatals) != 0 {
			t.Fatalf("fixture was fatal: %v", fatals)
		}
		idx := uint64(len(base) + 1)
		out := fsm.ApplyBatch([]*raft.Log{{Index: idx, Term: 1, Type: raft.LogCommand, Data: raw}})
		if valid && len(fatals) != 0 {
			t.Errorf("onFatal called for a decodable entry: %v", fatals)
		}
		if !valid && len(fatals) != 1 {
			t.Errorf("onFatal called %d times for an undecodable entry, want 1", len(fatals))
		}
		if _, ok := out[0].(ApplyResult); !ok {
			t.Errorf("result %#v is not an ApplyResult", out[0])
		}
		if got, _ := fsm.Applied(); got != idx {
			t.Errorf("applied index %d, want %d", got, idx)
		}
		// Whatever happened, the state still snapshots and restores.
		snap, err := fsm.Snapshot()
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		snap.Release()
	})
}

// FuzzApplyPayload fuzzes one payload at a time behind a valid envelope,
// which reaches the per-command check/apply code far more often than
// mutating whole envelopes does.
func FuzzApplyPayload(f *testing.F) {
	for _, c := range fuzzSeeds() {
		f.Add(int32(c.Type), c.Payload)
	}
	// A map entry without its value: node "n1", status {"net1": <absent>}.
	f.Add(int32(cNetStatus), []byte{0x0a, 0x02, 'n', '1', 0x12, 0x06, 0x0a, 0x04, 'n', 'e', 't', '1'})
	f.Fuzz(func(t *testing.T, typ int32, payload []byte) {
		c := &pb.Command{Type: pb.CommandType(typ), TimeUnixNano: t0, Actor: "fuzz", Payload: payload}
		raw, err := proto.Marshal(c)
		if err != nil {
			t.Skip()
		}
		s := fixtureState(t)
		before := exportBytes(t, s)
		checkErr := Check(s, c)
		_, err = ApplyCommand(s, c, 100)
		if err != nil {
			var de *DecodeError
			if errors.As(err, &de) == decodable(raw) {
				t.Errorf("decode error mismatch: err %v, decodable %v", err, decodable(raw))
			}
			if !bytes.Equal(before, exportBytes(t, s)) {
				t.Errorf("refused command changed the state: %v", err)
			}
		}
		if (checkErr == nil) != (err == nil) {
			t.Errorf("Check and ApplyCommand disagree: check %v, apply %v", checkErr, err)
		}
		// A state reached by apply must survive a snapshot round trip.
		if !proto.Equal(Import(s.Export()).Export(), s.Export()) {
			t.Error("state does not round-trip through Export/Import")
		}
	})
}
