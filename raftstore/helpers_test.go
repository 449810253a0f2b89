package raftstore

import (
	"testing"
	"time"

	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

// t0 is the proposer clock of the fixture commands: apply must only ever
// use the time carried in the command, so tests pick it.
const t0 = int64(1_700_000_000_000_000_000)

const hour = int64(time.Hour)

// cmdAt builds a command envelope at a given proposer time. Marshalling a
// generated message cannot fail, so a failure is a broken fixture.
func cmdAt(typ pb.CommandType, payload proto.Message, at int64) *pb.Command {
	c, err := NewCommand(typ, payload, at, "tester")
	if err != nil {
		panic(err)
	}
	return c
}

func cmd(typ pb.CommandType, payload proto.Message) *pb.Command { return cmdAt(typ, payload, t0) }

// payloadTypes is the payload message every command type must decode to,
// written out independently of the register calls so a missing or wrong
// registration shows up in TestEveryCommandTypeRegistered.
var payloadTypes = map[pb.CommandType]proto.Message{
	pb.CommandType_COMMAND_TYPE_BOOTSTRAP:        &pb.BootstrapCommand{},
	pb.CommandType_COMMAND_TYPE_TOKEN_CREATE:     &pb.TokenCreateCommand{},
	pb.CommandType_COMMAND_TYPE_NODE_JOIN:        &pb.NodeJoinCommand{},
	pb.CommandType_COMMAND_TYPE_NODE_REMOVE:      &pb.NodeRemoveCommand{},
	pb.CommandType_COMMAND_TYPE_NODE_INVENTORY:   &pb.NodeInventoryCommand{},
	pb.CommandType_COMMAND_TYPE_NODE_MAINTENANCE: &pb.NodeMaintenanceCommand{},
	pb.CommandType_COMMAND_TYPE_NODE_HEALTH:      &pb.NodeHealthCommand{},
	pb.CommandType_COMMAND_TYPE_VM_CREATE:        &pb.VMCreateCommand{},
	pb.CommandType_COMMAND_TYPE_VM_UPDATE:        &pb.VMUpdateCommand{},
	pb.CommandType_COMMAND_TYPE_VM_POWER:         &pb.VMPowerCommand{},
	pb.CommandType_COMMAND_TYPE_VM_DELETE:        &pb.VMDeleteCommand{},
	pb.CommandType_COMMAND_TYPE_VM_REMOVE:        &pb.VMRemoveCommand{},
	pb.CommandType_COMMAND_TYPE_VM_STATUS:        &pb.VMStatusCommand{},
	pb.CommandType_COMMAND_TYPE_VM_MOVE:          &pb.VMMoveCommand{},
	pb.CommandType_COMMAND_TYPE_VM_MIGRATING:     &pb.VMMigratingCommand{},
	pb.CommandType_COMMAND_TYPE_NETWORK_CREATE:   &pb.NetworkCreateCommand{},
	pb.CommandType_COMMAND_TYPE_NETWORK_DELETE:   &pb.NetworkDeleteCommand{},
	pb.CommandType_COMMAND_TYPE_NETWORK_STATUS:   &pb.NetworkStatusCommand{},
	pb.CommandType_COMMAND_TYPE_POOL_ADD:         &pb.PoolAddCommand{},
	pb.CommandType_COMMAND_TYPE_POOL_REMOVE:      &pb.PoolRemoveCommand{},
	pb.CommandType_COMMAND_TYPE_VOLUME_PUT:       &pb.VolumePutCommand{},
	pb.CommandType_COMMAND_TYPE_VOLUME_DELETE:    &pb.VolumeDeleteCommand{},
	pb.CommandType_COMMAND_TYPE_TASK_CREATE:      &pb.TaskCreateCommand{},
	pb.CommandType_COMMAND_TYPE_TASK_UPDATE:      &pb.TaskUpdateCommand{},
	pb.CommandType_COMMAND_TYPE_EVENT:            &pb.EventCommand{},
	pb.CommandType_COMMAND_TYPE_SETTINGS:         &pb.SettingsCommand{},
	pb.CommandType_COMMAND_TYPE_VM_FAILOVER:      &pb.VMFailoverCommand{},
	pb.CommandType_COMMAND_TYPE_NETWORK_UPDATE:   &pb.NetworkUpdateCommand{},
}

// decodable reports whether raw is a command a replica can apply: an
// envelope of a known type whose payload parses as that type's message.
func decodable(raw []byte) bool {
	var c pb.Command
	if proto.Unmarshal(raw, &c) != nil {
		return false
	}
	p, ok := payloadTypes[c.Type]
	if !ok {
		return false
	}
	return proto.Unmarshal(c.Payload, p.ProtoReflect().New().Interface()) == nil
}

func spec(nics []string, disks ...*pb.DiskSpec) *pb.VMSpec {
	s := &pb.VMSpec{Vcpus: 2, MemoryMib: 512, Disks: disks}
	if len(disks) == 0 {
		s.Kernel = "/boot/vmlinuz"
	}
	for _, n := range nics {
		s.Nics = append(s.Nics, &pb.NICSpec{Network: n})
	}
	return s
}

// fixture is a small but complete cluster, built only through commands so
// it is a state the FSM can really reach:
//
//	nodes n1, n2 (voters) and w1 (witness); tokens tok-n2 and tok-w1 used,
//	tok-free unused (expires t0+1h); networks net1 (linux, VLAN 10 on eth0)
//	and ovs1 (ovs, VLAN 20 on eth1, STP, priority 100); pools local (dir)
//	and ceph (rbd); volumes ceph/disk1 (free), ceph/tmpl (template),
//	ceph/clone1 (clone of tmpl), ceph/disk-vm1 (attached to vm1),
//	local/ldisk (on n1); vm1 on n1 (net1 + ceph/disk-vm1), vm2 unplaced;
//	task1 running.
func fixture() []*pb.Command {
	T := pb.CommandType_COMMAND_TYPE_TOKEN_CREATE
	return []*pb.Command{
		cmd(pb.CommandType_COMMAND_TYPE_BOOTSTRAP, &pb.BootstrapCommand{
			Cluster: &pb.ClusterInfo{Name: "c1", CreatedUnixNano: t0},
			Node:    &pb.Node{Name: "n1", Role: pb.NodeRole_NODE_ROLE_VOTER, RaftAddress: "n1:7000"},
		}),
		cmd(T, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-n2", SecretHash: "h", ExpiresUnixNano: t0 + hour, Role: pb.NodeRole_NODE_ROLE_VOTER}}),
		cmd(T, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-w1", SecretHash: "h", ExpiresUnixNano: t0 + hour, Role: pb.NodeRole_NODE_ROLE_WITNESS}}),
		cmd(T, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-free", SecretHash: "h", ExpiresUnixNano: t0 + hour, Role: pb.NodeRole_NODE_ROLE_VOTER}}),
		cmd(pb.CommandType_COMMAND_TYPE_NODE_JOIN, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n2", Role: pb.NodeRole_NODE_ROLE_VOTER}, TokenId: "tok-n2"}),
		cmd(pb.CommandType_COMMAND_TYPE_NODE_JOIN, &pb.NodeJoinCommand{Node: &pb.Node{Name: "w1"}, TokenId: "tok-w1"}),
		cmd(pb.CommandType_COMMAND_TYPE_NETWORK_CREATE, &pb.NetworkCreateCommand{Network: &pb.Network{Name: "net1", Vlan: 10, Kind: "linux", Uplink: "eth0"}}),
		cmd(pb.CommandType_COMMAND_TYPE_NETWORK_CREATE, &pb.NetworkCreateCommand{Network: &pb.Network{Name: "ovs1", Vlan: 20, Kind: "ovs", Uplink: "eth1", Stp: true, Priority: 100}}),
		cmd(pb.CommandType_COMMAND_TYPE_POOL_ADD, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "local", Kind: "dir", Path: "/var/lib/corral"}}),
		cmd(pb.CommandType_COMMAND_TYPE_POOL_ADD, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "ceph", Kind: "rbd", Monitors: []string{"127.0.0.1:6789"}, CephPool: "rbd", User: "corral", SealedKey: "sealed"}}),
		volPut("ceph", "disk1", nil),
		volPut("ceph", "tmpl", func(v *pb.Volume) { v.Template = true }),
		volPut("ceph", "clone1", func(v *pb.Volume) { v.Parent = "tmpl" }),
		volPut("ceph", "disk-vm1", nil),
		volPut("local", "ldisk", func(v *pb.Volume) { v.Node = "n1" }),
		cmd(pb.CommandType_COMMAND_TYPE_VM_CREATE, &pb.VMCreateCommand{Vm: &pb.VM{
			Name: "vm1", Node: "n1", Power: pb.PowerState_POWER_STATE_STOPPED,
			Spec: spec([]string{"net1"}, &pb.DiskSpec{Pool: "ceph", Volume: "disk-vm1"}),
		}}),
		cmd(pb.CommandType_COMMAND_TYPE_VM_CREATE, &pb.VMCreateCommand{Vm: &pb.VM{Name: "vm2", Spec: spec(nil)}}),
		cmd(pb.CommandType_COMMAND_TYPE_TASK_CREATE, &pb.TaskCreateCommand{Task: &pb.Task{Id: "task1", Kind: "migrate", Target: "vm1", State: pb.TaskState_TASK_STATE_RUNNING}}),
	}
}

func volPut(pool, name string, mod func(*pb.Volume)) *pb.Command {
	v := &pb.Volume{Pool: pool, Name: name, SizeBytes: 1 << 30}
	if mod != nil {
		mod(v)
	}
	return cmd(pb.CommandType_COMMAND_TYPE_VOLUME_PUT, &pb.VolumePutCommand{Volume: v, Create: true})
}

// applyAll applies cmds to s and fails on the first error: fixtures and
// setups are meant to be valid.
func applyAll(tb testing.TB, s *State, cmds ...*pb.Command) {
	tb.Helper()
	for i, c := range cmds {
		if _, err := ApplyCommand(s, c, uint64(i+1)); err != nil {
			tb.Fatalf("setup command %d (%s): %v", i, c.Type, err)
		}
	}
}

func fixtureState(tb testing.TB) *State {
	tb.Helper()
	s := NewState()
	applyAll(tb, s, fixture()...)
	return s
}

// exportBytes is the deterministic encoding of the whole state: equal
// states give equal bytes.
func exportBytes(tb testing.TB, s *State) []byte {
	tb.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.Export())
	if err != nil {
		tb.Fatalf("marshal state: %v", err)
	}
	return b
}
