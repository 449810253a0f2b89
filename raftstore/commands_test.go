package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

const (
	cBootstrap   = pb.CommandType_COMMAND_TYPE_BOOTSTRAP
	cToken       = pb.CommandType_COMMAND_TYPE_TOKEN_CREATE
	cJoin        = pb.CommandType_COMMAND_TYPE_NODE_JOIN
	cNodeRemove  = pb.CommandType_COMMAND_TYPE_NODE_REMOVE
	cInventory   = pb.CommandType_COMMAND_TYPE_NODE_INVENTORY
	cMaintenance = pb.CommandType_COMMAND_TYPE_NODE_MAINTENANCE
	cHealth      = pb.CommandType_COMMAND_TYPE_NODE_HEALTH
	cVMCreate    = pb.CommandType_COMMAND_TYPE_VM_CREATE
	cVMUpdate    = pb.CommandType_COMMAND_TYPE_VM_UPDATE
	cVMPower     = pb.CommandType_COMMAND_TYPE_VM_POWER
	cVMDelete    = pb.CommandType_COMMAND_TYPE_VM_DELETE
	cVMRemove    = pb.CommandType_COMMAND_TYPE_VM_REMOVE
	cVMStatus    = pb.CommandType_COMMAND_TYPE_VM_STATUS
	cVMMove      = pb.CommandType_COMMAND_TYPE_VM_MOVE
	cVMMigrating = pb.CommandType_COMMAND_TYPE_VM_MIGRATING
	cVMFailover  = pb.CommandType_COMMAND_TYPE_VM_FAILOVER
	cNetCreate   = pb.CommandType_COMMAND_TYPE_NETWORK_CREATE
	cNetUpdate   = pb.CommandType_COMMAND_TYPE_NETWORK_UPDATE
	cNetDelete   = pb.CommandType_COMMAND_TYPE_NETWORK_DELETE
	cNetStatus   = pb.CommandType_COMMAND_TYPE_NETWORK_STATUS
	cPoolAdd     = pb.CommandType_COMMAND_TYPE_POOL_ADD
	cPoolRemove  = pb.CommandType_COMMAND_TYPE_POOL_REMOVE
	cVolPut      = pb.CommandType_COMMAND_TYPE_VOLUME_PUT
	cVolDelete   = pb.CommandType_COMMAND_TYPE_VOLUME_DELETE
	cTaskCreate  = pb.CommandType_COMMAND_TYPE_TASK_CREATE
	cTaskUpdate  = pb.CommandType_COMMAND_TYPE_TASK_UPDATE
	cEvent       = pb.CommandType_COMMAND_TYPE_EVENT
	cSettings    = pb.CommandType_COMMAND_TYPE_SETTINGS
)

// success marks a case that must apply; any other value is the errdefs
// kind the command must be refused with.
const success errdefs.Kind = -1

type cmdCase struct {
	name   string
	empty  bool          // start from NewState() instead of the fixture
	setup  []*pb.Command // applied (and required to succeed) before cmd
	cmd    *pb.Command
	want   errdefs.Kind
	verify func(t *testing.T, s *State, res any)
}

// Shorthands for the payloads the table uses most.
func health(name string, mod func(*pb.NodeHealthCommand)) *pb.Command {
	c := &pb.NodeHealthCommand{Name: name}
	mod(c)
	return cmd(cHealth, c)
}

func fence(node string) *pb.Command {
	return health(node, func(c *pb.NodeHealthCommand) { c.Fence = true; c.Health = pb.NodeHealth_NODE_HEALTH_DOWN })
}

func vmStatus(vm, node string, st pb.VMState) *pb.Command {
	return cmd(cVMStatus, &pb.VMStatusCommand{Name: vm, Node: node, Status: &pb.VMStatus{State: st}})
}

func power(vm string, p pb.PowerState) *pb.Command {
	return cmd(cVMPower, &pb.VMPowerCommand{Name: vm, Power: p})
}

func netCreate(n *pb.Network) *pb.Command {
	return cmd(cNetCreate, &pb.NetworkCreateCommand{Network: n})
}

func vmCreate(v *pb.VM) *pb.Command { return cmd(cVMCreate, &pb.VMCreateCommand{Vm: v}) }

func lastEvent(t *testing.T, s *State) *pb.Event {
	t.Helper()
	if len(s.Events) == 0 {
		t.Fatal("no event recorded")
	}
	return s.Events[len(s.Events)-1]
}

func wantEvent(t *testing.T, s *State, action, target, result string) {
	t.Helper()
	e := lastEvent(t, s)
	if e.Action != action || e.Target != target || e.Result != result {
		t.Errorf("last event = %s %s %s, want %s %s %s", e.Action, e.Target, e.Result, action, target, result)
	}
	if e.TimeUnixNano == 0 || e.Actor == "" {
		t.Errorf("event %+v lacks the proposer's time or actor", e)
	}
}

func must(t *testing.T, cond bool, format string, args ...any) {
	t.Helper()
	if !cond {
		t.Errorf(format, args...)
	}
}

func commandCases() []cmdCase {
	return []cmdCase{
		// BOOTSTRAP
		{name: "bootstrap/ok", empty: true, cmd: cmd(cBootstrap, &pb.BootstrapCommand{
			Cluster: &pb.ClusterInfo{Name: "prod"}, Node: &pb.Node{Name: "a1", Health: pb.NodeHealth_NODE_HEALTH_DOWN},
		}), want: success, verify: func(t *testing.T, s *State, res any) {
			must(t, s.Cluster.GetName() == "prod", "cluster = %v", s.Cluster)
			n := s.Nodes["a1"]
			must(t, n != nil && n.Health == pb.NodeHealth_NODE_HEALTH_READY && n.JoinedUnixNano == t0, "first node = %v", n)
			must(t, res.(*pb.ClusterInfo).GetName() == "prod", "result = %v", res)
			wantEvent(t, s, "cluster.init", "prod", "ok")
		}},
		{name: "bootstrap/already initialised", cmd: cmd(cBootstrap, &pb.BootstrapCommand{
			Cluster: &pb.ClusterInfo{Name: "other"}, Node: &pb.Node{Name: "x"},
		}), want: errdefs.KindExists},
		{name: "bootstrap/bad cluster name", empty: true, cmd: cmd(cBootstrap, &pb.BootstrapCommand{
			Cluster: &pb.ClusterInfo{Name: "Prod_1"}, Node: &pb.Node{Name: "a1"},
		}), want: errdefs.KindInvalid},
		{name: "bootstrap/missing cluster", empty: true, cmd: cmd(cBootstrap, &pb.BootstrapCommand{Node: &pb.Node{Name: "a1"}}), want: errdefs.KindInvalid},
		{name: "bootstrap/bad node name", empty: true, cmd: cmd(cBootstrap, &pb.BootstrapCommand{
			Cluster: &pb.ClusterInfo{Name: "prod"}, Node: &pb.Node{Name: "-a1"},
		}), want: errdefs.KindInvalid},
		{name: "bootstrap/missing node", empty: true, cmd: cmd(cBootstrap, &pb.BootstrapCommand{Cluster: &pb.ClusterInfo{Name: "prod"}}), want: errdefs.KindInvalid},

		// TOKEN_CREATE
		{name: "token/ok", cmd: cmd(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-new", SecretHash: "h", ExpiresUnixNano: t0 + hour}}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Tokens["tok-new"] != nil && s.Tokens["tok-free"] != nil, "tokens = %v", s.Tokens)
				wantEvent(t, s, "token.create", "tok-new", "ok")
			}},
		{name: "token/drops expired tokens", cmd: cmdAt(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-late", SecretHash: "h", ExpiresUnixNano: t0 + 3*hour}}, t0+2*hour),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, len(s.Tokens) == 1 && s.Tokens["tok-late"] != nil, "tokens after expiry sweep = %v, want only tok-late", sortedKeys(s.Tokens))
			}},
		{name: "token/missing id", cmd: cmd(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{SecretHash: "h"}}), want: errdefs.KindInvalid},
		{name: "token/missing hash", cmd: cmd(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "t"}}), want: errdefs.KindInvalid},
		{name: "token/missing token", cmd: cmd(cToken, &pb.TokenCreateCommand{}), want: errdefs.KindInvalid},
		{name: "token/duplicate", cmd: cmd(cToken, &pb.TokenCreateCommand{Token: &pb.JoinToken{Id: "tok-free", SecretHash: "h2", ExpiresUnixNano: t0 + hour}}), want: errdefs.KindExists},

		// NODE_JOIN
		{name: "join/ok role from token", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n3"}, TokenId: "tok-free"}),
			want: success, verify: func(t *testing.T, s *State, res any) {
				n := s.Nodes["n3"]
				must(t, n.GetRole() == pb.NodeRole_NODE_ROLE_VOTER && n.Health == pb.NodeHealth_NODE_HEALTH_READY && n.JoinedUnixNano == t0, "n3 = %v", n)
				must(t, s.Tokens["tok-free"].Used, "token not marked used")
				must(t, s.Nodes["w1"].Role == pb.NodeRole_NODE_ROLE_WITNESS, "fixture witness got role %v", s.Nodes["w1"].Role)
				must(t, res.(*pb.Node).Name == "n3", "result = %v", res)
				wantEvent(t, s, "node.join", "n3", "ok")
			}},
		{name: "join/explicit role wins", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "w2", Role: pb.NodeRole_NODE_ROLE_WITNESS}, TokenId: "tok-free"}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Nodes["w2"].Role == pb.NodeRole_NODE_ROLE_WITNESS, "w2 role = %v", s.Nodes["w2"].Role)
			}},
		{name: "join/bad name", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "N3"}, TokenId: "tok-free"}), want: errdefs.KindInvalid},
		{name: "join/missing node", cmd: cmd(cJoin, &pb.NodeJoinCommand{TokenId: "tok-free"}), want: errdefs.KindInvalid},
		{name: "join/duplicate node", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n1"}, TokenId: "tok-free"}), want: errdefs.KindExists},
		{name: "join/unknown token", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n3"}, TokenId: "nope"}), want: errdefs.KindDenied},
		{name: "join/used token", cmd: cmd(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n3"}, TokenId: "tok-n2"}), want: errdefs.KindDenied},
		{name: "join/expired token", cmd: cmdAt(cJoin, &pb.NodeJoinCommand{Node: &pb.Node{Name: "n3"}, TokenId: "tok-free"}, t0+2*hour), want: errdefs.KindDenied},

		// NODE_REMOVE
		{name: "node remove/ok", cmd: cmd(cNodeRemove, &pb.NodeRemoveCommand{Name: "w1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Nodes["w1"] == nil, "w1 still present")
				wantEvent(t, s, "node.remove", "w1", "ok")
			}},
		{name: "node remove/unknown", cmd: cmd(cNodeRemove, &pb.NodeRemoveCommand{Name: "n9"}), want: errdefs.KindNotFound},
		{name: "node remove/holds vm", cmd: cmd(cNodeRemove, &pb.NodeRemoveCommand{Name: "n1"}), want: errdefs.KindPrecondition},

		// NODE_INVENTORY
		{name: "inventory/ok", cmd: cmd(cInventory, &pb.NodeInventoryCommand{Name: "n2", Inventory: &pb.Inventory{Cpus: 8, MemoryMib: 16384}, StorageAddress: "192.0.2.2"}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				n := s.Nodes["n2"]
				must(t, n.Ready && n.Inventory.GetCpus() == 8 && n.StorageAddress == "192.0.2.2", "n2 = %v", n)
			}},
		{name: "inventory/cleared keeps storage address",
			setup: []*pb.Command{cmd(cInventory, &pb.NodeInventoryCommand{Name: "n2", Inventory: &pb.Inventory{Cpus: 8}, StorageAddress: "192.0.2.2"})},
			cmd:   cmd(cInventory, &pb.NodeInventoryCommand{Name: "n2"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				n := s.Nodes["n2"]
				must(t, !n.Ready && n.Inventory == nil && n.StorageAddress == "192.0.2.2", "n2 = %v", n)
			}},
		{name: "inventory/unknown node", cmd: cmd(cInventory, &pb.NodeInventoryCommand{Name: "n9", Inventory: &pb.Inventory{}}), want: errdefs.KindNotFound},

		// NODE_MAINTENANCE
		{name: "maintenance/on", cmd: cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n2", Maintenance: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Nodes["n2"].Maintenance, "n2 not in maintenance")
				wantEvent(t, s, "node.maintenance", "n2", "ok")
			}},
		{name: "maintenance/off",
			setup: []*pb.Command{cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n2", Maintenance: true})},
			cmd:   cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n2"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, !s.Nodes["n2"].Maintenance, "n2 still in maintenance")
				wantEvent(t, s, "node.resume", "n2", "ok")
			}},
		{name: "maintenance/unknown node", cmd: cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n9", Maintenance: true}), want: errdefs.KindNotFound},

		// NODE_HEALTH
		{name: "health/suspect", cmd: health("n2", func(c *pb.NodeHealthCommand) {
			c.Health = pb.NodeHealth_NODE_HEALTH_SUSPECT
			c.Reason = "missed heartbeats"
		}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Nodes["n2"].Health == pb.NodeHealth_NODE_HEALTH_SUSPECT, "health = %v", s.Nodes["n2"].Health)
				wantEvent(t, s, "node.health", "n2", "suspect")
			}},
		{name: "health/same health records no event", cmd: health("n2", func(c *pb.NodeHealthCommand) { c.Health = pb.NodeHealth_NODE_HEALTH_READY }),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, lastEvent(t, s).Action != "node.health", "unchanged health logged an event: %v", lastEvent(t, s))
			}},
		{name: "health/fence", cmd: fence("n1"), want: success, verify: func(t *testing.T, s *State, _ any) {
			n := s.Nodes["n1"]
			must(t, n.Fenced && n.FencedUnixNano == t0 && n.Health == pb.NodeHealth_NODE_HEALTH_DOWN, "n1 = %v", n)
			must(t, len(s.Events) >= 2 && s.Events[len(s.Events)-2].Action == "ha.fence", "no ha.fence event")
		}},
		{name: "health/unfence before clean", setup: []*pb.Command{fence("n1")},
			cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true }), want: errdefs.KindPrecondition},
		{name: "health/unfence ok", setup: []*pb.Command{fence("n1"), health("n1", func(c *pb.NodeHealthCommand) { c.Clean = true })},
			cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true; c.Health = pb.NodeHealth_NODE_HEALTH_READY }), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, !s.Nodes["n1"].Fenced, "n1 still fenced")
			}},
		{name: "health/unfence not fenced", cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true }), want: errdefs.KindPrecondition},
		{name: "health/unfence while stale vm running",
			// vm1 ran on n1 and was moved to n2 before n2 reported it:
			// the state still says n1 runs it.
			setup: []*pb.Command{
				vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING),
				cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", From: "n1", To: "n2"}),
				fence("n1"),
			},
			cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true }), want: errdefs.KindPrecondition},
		{name: "health/clean after fence", setup: []*pb.Command{fence("n1")},
			cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Clean = true }), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				n := s.Nodes["n1"]
				must(t, n.Fenced && n.FenceClean, "n1 = %v", n)
				wantEvent(t, s, "ha.clean", "n1", "ok")
			}},
		{name: "health/clean when not fenced is a no-op", cmd: health("n1", func(c *pb.NodeHealthCommand) { c.Clean = true }), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, !s.Nodes["n1"].FenceClean, "FenceClean set on an unfenced node")
				must(t, lastEvent(t, s).Action != "ha.clean", "ha.clean logged for an unfenced node")
			}},
		{name: "health/unfence resets clean",
			setup: []*pb.Command{fence("n1"), health("n1", func(c *pb.NodeHealthCommand) { c.Clean = true })},
			cmd:   health("n1", func(c *pb.NodeHealthCommand) { c.Unfence = true }), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				n := s.Nodes["n1"]
				must(t, !n.Fenced && !n.FenceClean, "n1 = %v", n)
				wantEvent(t, s, "ha.unfence", "n1", "ok")
			}},
		{name: "health/unknown node", cmd: health("n9", func(c *pb.NodeHealthCommand) { c.Fence = true }), want: errdefs.KindNotFound},

		// EVENT
		{name: "event/ok actor from proposer", cmd: cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "vm.console", Target: "vm1", Index: 999, TimeUnixNano: 5}}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				e := lastEvent(t, s)
				must(t, e.Action == "vm.console" && e.Actor == "tester" && e.TimeUnixNano == t0, "event = %v", e)
				must(t, e.Index == s.NextEventIndex-1, "event index %d, next %d: the proposer must not choose the index", e.Index, s.NextEventIndex)
			}},
		{name: "event/keeps given actor", cmd: cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "ha.notice", Actor: "agent/n1"}}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				must(t, lastEvent(t, s).Actor == "agent/n1", "actor = %q", lastEvent(t, s).Actor)
			}},
		{name: "event/missing action", cmd: cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Target: "x"}}), want: errdefs.KindInvalid},
		{name: "event/missing event", cmd: cmd(cEvent, &pb.EventCommand{}), want: errdefs.KindInvalid},

		// SETTINGS
		{name: "settings/ok merges", cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{CpuOvercommit: 2, SuspectAfterMs: 2000, DownAfterMs: 4000}}),
			want: success, verify: func(t *testing.T, s *State, res any) {
				st := s.Settings()
				must(t, st.CpuOvercommit == 2 && st.SuspectAfterMs == 2000 && st.DownAfterMs == 4000, "settings = %v", st)
				must(t, st.MaxRestarts == DefaultSettings().MaxRestarts, "unset field lost its default: %v", st)
				must(t, proto.Equal(res.(*pb.Settings), st), "result %v != settings %v", res, st)
				wantEvent(t, s, "cluster.settings", "c1", "ok")
			}},
		{name: "settings/second change keeps first", setup: []*pb.Command{cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{CpuOvercommit: 2}})},
			cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{MaxRestarts: 7}}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				st := s.Settings()
				must(t, st.CpuOvercommit == 2 && st.MaxRestarts == 7, "settings = %v", st)
			}},
		{name: "settings/empty payload", cmd: cmd(cSettings, &pb.SettingsCommand{}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, proto.Equal(s.Settings(), DefaultSettings()), "settings = %v", s.Settings())
			}},
		{name: "settings/not initialised", empty: true, cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{CpuOvercommit: 2}}), want: errdefs.KindPrecondition},
		{name: "settings/negative", cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{MemOvercommit: -1}}), want: errdefs.KindInvalid},
		{name: "settings/down below suspect", cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{SuspectAfterMs: 6000, DownAfterMs: 4000}}), want: errdefs.KindInvalid},
		{name: "settings/suspect above default down", cmd: cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{SuspectAfterMs: DefaultSettings().DownAfterMs + 1}}), want: errdefs.KindInvalid},

		// NETWORK_CREATE
		{name: "net create/ok same vlan other uplink",
			cmd:  netCreate(&pb.Network{Name: "net2", Vlan: 10, Kind: "linux", Uplink: "eth2", Mtu: 9000, Status: map[string]*pb.NetworkStatus{"n1": {Applied: true}}}),
			want: success, verify: func(t *testing.T, s *State, res any) {
				n := s.Networks["net2"]
				must(t, n != nil && n.CreatedUnixNano == t0 && n.Status == nil, "net2 = %v (the proposer must not set status)", n)
				must(t, res.(*pb.Network).Name == "net2", "result = %v", res)
				wantEvent(t, s, "network.create", "net2", "ok")
			}},
		{name: "net create/untagged", cmd: netCreate(&pb.Network{Name: "flat", Kind: "linux", Uplink: "eth0"}), want: success,
			verify: func(t *testing.T, s *State, _ any) { must(t, s.Networks["flat"] != nil, "flat missing") }},
		{name: "net create/ovs matching stp", cmd: netCreate(&pb.Network{Name: "ovs2", Vlan: 30, Kind: "ovs", Uplink: "eth1", Stp: true, Priority: 100}), want: success,
			verify: func(t *testing.T, s *State, _ any) { must(t, s.Networks["ovs2"] != nil, "ovs2 missing") }},
		{name: "net create/bad name", cmd: netCreate(&pb.Network{Name: "Net_2", Vlan: 11, Kind: "linux", Uplink: "eth0"}), want: errdefs.KindInvalid},
		{name: "net create/missing network", cmd: cmd(cNetCreate, &pb.NetworkCreateCommand{}), want: errdefs.KindInvalid},
		{name: "net create/vlan negative", cmd: netCreate(&pb.Network{Name: "net2", Vlan: -1, Kind: "linux", Uplink: "eth0"}), want: errdefs.KindInvalid},
		{name: "net create/vlan 4095", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 4095, Kind: "linux", Uplink: "eth0"}), want: errdefs.KindInvalid},
		{name: "net create/vlan 4094", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 4094, Kind: "linux", Uplink: "eth0"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Networks["net2"].GetVlan() == 4094, "net2 = %v", s.Networks["net2"])
			}},
		{name: "net create/unknown kind", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 11, Kind: "macvlan", Uplink: "eth0"}), want: errdefs.KindInvalid},
		{name: "net create/mtu too small", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 11, Kind: "linux", Uplink: "eth0", Mtu: 100}), want: errdefs.KindInvalid},
		{name: "net create/mtu too large", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 11, Kind: "linux", Uplink: "eth0", Mtu: 9217}), want: errdefs.KindInvalid},
		{name: "net create/priority out of range", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 11, Kind: "linux", Uplink: "eth0", Priority: 65536}), want: errdefs.KindInvalid},
		{name: "net create/duplicate name", cmd: netCreate(&pb.Network{Name: "net1", Vlan: 11, Kind: "linux", Uplink: "eth0"}), want: errdefs.KindExists},
		{name: "net create/duplicate vlan and uplink", cmd: netCreate(&pb.Network{Name: "net2", Vlan: 10, Kind: "linux", Uplink: "eth0"}), want: errdefs.KindExists},
		{name: "net create/ovs stp mismatch", cmd: netCreate(&pb.Network{Name: "ovs2", Vlan: 30, Kind: "ovs", Uplink: "eth1", Stp: false, Priority: 100}), want: errdefs.KindInvalid},
		{name: "net create/ovs priority mismatch", cmd: netCreate(&pb.Network{Name: "ovs2", Vlan: 30, Kind: "ovs", Uplink: "eth1", Stp: true, Priority: 200}), want: errdefs.KindInvalid},

		// NETWORK_UPDATE
		{name: "net update/ok keeps created and status",
			setup: []*pb.Command{cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n1", Status: map[string]*pb.NetworkStatus{"net1": {Applied: true, Bridge: "br10"}}})},
			cmd:   cmd(cNetUpdate, &pb.NetworkUpdateCommand{Network: &pb.Network{Name: "net1", Vlan: 10, Kind: "linux", Uplink: "eth0", Mtu: 9000, CreatedUnixNano: 1}}),
			want:  success, verify: func(t *testing.T, s *State, _ any) {
				n := s.Networks["net1"]
				must(t, n.Mtu == 9000 && n.CreatedUnixNano == t0, "net1 = %v", n)
				must(t, n.Status["n1"].GetBridge() == "br10", "status lost: %v", n.Status)
				wantEvent(t, s, "network.update", "net1", "ok")
			}},
		{name: "net update/unknown", cmd: cmd(cNetUpdate, &pb.NetworkUpdateCommand{Network: &pb.Network{Name: "net9", Vlan: 99, Kind: "linux"}}), want: errdefs.KindNotFound},
		{name: "net update/missing network", cmd: cmd(cNetUpdate, &pb.NetworkUpdateCommand{}), want: errdefs.KindNotFound},
		{name: "net update/conflict", cmd: cmd(cNetUpdate, &pb.NetworkUpdateCommand{Network: &pb.Network{Name: "ovs1", Vlan: 10, Kind: "linux", Uplink: "eth0"}}), want: errdefs.KindExists},
		{name: "net update/vlan out of range", cmd: cmd(cNetUpdate, &pb.NetworkUpdateCommand{Network: &pb.Network{Name: "net1", Vlan: 5000, Kind: "linux", Uplink: "eth0"}}), want: errdefs.KindInvalid},

		// NETWORK_DELETE
		{name: "net delete/ok", cmd: cmd(cNetDelete, &pb.NetworkDeleteCommand{Name: "ovs1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Networks["ovs1"] == nil, "ovs1 still present")
				wantEvent(t, s, "network.delete", "ovs1", "ok")
			}},
		{name: "net delete/in use", cmd: cmd(cNetDelete, &pb.NetworkDeleteCommand{Name: "net1"}), want: errdefs.KindPrecondition},
		{name: "net delete/unknown", cmd: cmd(cNetDelete, &pb.NetworkDeleteCommand{Name: "net9"}), want: errdefs.KindNotFound},

		// NETWORK_STATUS
		{name: "net status/ok ignores unknown network",
			cmd: cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n2", Status: map[string]*pb.NetworkStatus{
				"net1": {Applied: true, Bridge: "br10"}, "ghost": {Applied: true},
			}}), want: success, verify: func(t *testing.T, s *State, _ any) {
				st := s.Networks["net1"].Status["n2"]
				must(t, st.GetApplied() && st.GetBridge() == "br10" && st.GetUpdatedUnixNano() == t0, "status = %v", st)
				must(t, s.Networks["ghost"] == nil, "status created network ghost")
			}},
		{name: "net status/unknown node", cmd: cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n9", Status: map[string]*pb.NetworkStatus{"net1": {}}}), want: errdefs.KindNotFound},

		// POOL_ADD
		{name: "pool add/dir", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "srv", Kind: "dir", Path: "/srv/vm"}}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Pools["srv"].GetCreatedUnixNano() == t0, "srv = %v", s.Pools["srv"])
				wantEvent(t, s, "storage.add", "srv", "ok")
			}},
		{name: "pool add/rbd", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "ceph2", Kind: "rbd", Monitors: []string{"m"}, CephPool: "p", User: "u", SealedKey: "k"}}), want: success,
			verify: func(t *testing.T, s *State, _ any) { must(t, s.Pools["ceph2"] != nil, "ceph2 missing") }},
		{name: "pool add/bad name", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "Srv", Kind: "dir", Path: "/srv"}}), want: errdefs.KindInvalid},
		{name: "pool add/missing pool", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{}), want: errdefs.KindInvalid},
		{name: "pool add/duplicate", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "local", Kind: "dir", Path: "/srv"}}), want: errdefs.KindExists},
		{name: "pool add/dir relative path", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "srv", Kind: "dir", Path: "srv"}}), want: errdefs.KindInvalid},
		{name: "pool add/dir no path", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "srv", Kind: "dir"}}), want: errdefs.KindInvalid},
		{name: "pool add/rbd incomplete", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "ceph2", Kind: "rbd", Monitors: []string{"m"}, CephPool: "p", SealedKey: "k"}}), want: errdefs.KindInvalid},
		{name: "pool add/unknown kind", cmd: cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "nfs", Kind: "nfs", Path: "/x"}}), want: errdefs.KindInvalid},

		// POOL_REMOVE
		{name: "pool remove/ok", setup: []*pb.Command{cmd(cPoolAdd, &pb.PoolAddCommand{Pool: &pb.StoragePool{Name: "srv", Kind: "dir", Path: "/srv"}})},
			cmd: cmd(cPoolRemove, &pb.PoolRemoveCommand{Name: "srv"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Pools["srv"] == nil, "srv still present")
				wantEvent(t, s, "storage.remove", "srv", "ok")
			}},
		{name: "pool remove/unknown", cmd: cmd(cPoolRemove, &pb.PoolRemoveCommand{Name: "nope"}), want: errdefs.KindNotFound},
		{name: "pool remove/holds volumes", cmd: cmd(cPoolRemove, &pb.PoolRemoveCommand{Name: "ceph"}), want: errdefs.KindPrecondition},

		// VOLUME_PUT
		{name: "volume put/create", cmd: volPut("ceph", "new", nil), want: success, verify: func(t *testing.T, s *State, _ any) {
			v := s.Volumes[VolumeKey("ceph", "new")]
			must(t, v.GetCreatedUnixNano() == t0 && v.SizeBytes == 1<<30, "ceph/new = %v", v)
			wantEvent(t, s, "volume.create", "ceph/new", "ok")
		}},
		{name: "volume put/update", cmd: cmd(cVolPut, &pb.VolumePutCommand{Volume: &pb.Volume{Pool: "ceph", Name: "disk1", SizeBytes: 2 << 30, Ready: true}}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.Volumes[VolumeKey("ceph", "disk1")]
				must(t, v.SizeBytes == 2<<30 && v.Ready, "ceph/disk1 = %v", v)
			}},
		{name: "volume put/same name other pool", cmd: volPut("local", "disk1", func(v *pb.Volume) { v.Node = "n2" }), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Volumes[VolumeKey("local", "disk1")] != nil && s.Volumes[VolumeKey("ceph", "disk1")] != nil, "volumes = %v", sortedKeys(s.Volumes))
			}},
		{name: "volume put/bad name", cmd: volPut("ceph", "Disk_1", nil), want: errdefs.KindInvalid},
		{name: "volume put/missing volume", cmd: cmd(cVolPut, &pb.VolumePutCommand{Create: true}), want: errdefs.KindInvalid},
		{name: "volume put/unknown pool", cmd: volPut("nope", "d", nil), want: errdefs.KindNotFound},
		{name: "volume put/dir without node", cmd: volPut("local", "d", nil), want: errdefs.KindInvalid},
		{name: "volume put/create exists", cmd: volPut("ceph", "disk1", nil), want: errdefs.KindExists},
		{name: "volume put/update missing", cmd: cmd(cVolPut, &pb.VolumePutCommand{Volume: &pb.Volume{Pool: "ceph", Name: "ghost"}}), want: errdefs.KindNotFound},

		// VOLUME_DELETE
		{name: "volume delete/ok", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "disk1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Volumes[VolumeKey("ceph", "disk1")] == nil, "disk1 still present")
				wantEvent(t, s, "volume.delete", "ceph/disk1", "ok")
			}},
		{name: "volume delete/clone ok", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "clone1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Volumes[VolumeKey("ceph", "clone1")] == nil, "clone1 still present")
			}},
		{name: "volume delete/unknown", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "ghost"}), want: errdefs.KindNotFound},
		{name: "volume delete/wrong pool", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "local", Name: "disk1"}), want: errdefs.KindNotFound},
		{name: "volume delete/in use", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "disk-vm1"}), want: errdefs.KindPrecondition},
		{name: "volume delete/has clones", cmd: cmd(cVolDelete, &pb.VolumeDeleteCommand{Pool: "ceph", Name: "tmpl"}), want: errdefs.KindPrecondition},

		// TASK_CREATE
		{name: "task create/ok", cmd: cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: "task2", Kind: "clone", Target: "vm2"}}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				tk := s.Tasks["task2"]
				must(t, tk.State == pb.TaskState_TASK_STATE_PENDING && tk.Actor == "tester" && tk.CreatedUnixNano == t0 && tk.UpdatedUnixNano == t0, "task2 = %v", tk)
				wantEvent(t, s, "task.clone", "vm2", "started")
			}},
		{name: "task create/missing id", cmd: cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Kind: "clone"}}), want: errdefs.KindInvalid},
		{name: "task create/missing kind", cmd: cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: "task2"}}), want: errdefs.KindInvalid},
		{name: "task create/missing task", cmd: cmd(cTaskCreate, &pb.TaskCreateCommand{}), want: errdefs.KindInvalid},
		{name: "task create/duplicate", cmd: cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: "task1", Kind: "clone"}}), want: errdefs.KindExists},

		// TASK_UPDATE
		{name: "task update/progress", cmd: cmdAt(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: 0.5, Message: "copying"}, t0+1), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				tk := s.Tasks["task1"]
				must(t, tk.Progress == 0.5 && tk.Message == "copying" && tk.UpdatedUnixNano == t0+1 && tk.State == pb.TaskState_TASK_STATE_RUNNING, "task1 = %v", tk)
			}},
		{name: "task update/progress never goes back", setup: []*pb.Command{cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: 0.7})},
			cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: 0.2}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.Tasks["task1"].Progress == 0.7, "progress = %v", s.Tasks["task1"].Progress)
			}},
		{name: "task update/cancel", cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Cancel: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) { must(t, s.Tasks["task1"].CancelRequested, "cancel not recorded") }},
		{name: "task update/fail", cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", State: pb.TaskState_TASK_STATE_FAILED, Error: "target gone"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				tk := s.Tasks["task1"]
				must(t, tk.State == pb.TaskState_TASK_STATE_FAILED && tk.Error == "target gone", "task1 = %v", tk)
				wantEvent(t, s, "task.migrate", "vm1", "failed")
			}},
		{name: "task update/after finish", setup: []*pb.Command{cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", State: pb.TaskState_TASK_STATE_SUCCEEDED})},
			cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: 1}), want: errdefs.KindPrecondition},
		{name: "task update/unknown", cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "nope", Progress: 0.1}), want: errdefs.KindNotFound},
		{name: "task update/progress above 1", cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: 1.5}), want: errdefs.KindInvalid},
		{name: "task update/progress negative", cmd: cmd(cTaskUpdate, &pb.TaskUpdateCommand{Id: "task1", Progress: -0.1}), want: errdefs.KindInvalid},

		// VM_CREATE
		{name: "vm create/ok attaches disk", cmd: vmCreate(&pb.VM{Name: "vm3", Node: "n2", Spec: spec([]string{"net1", "ovs1"}, &pb.DiskSpec{Pool: "ceph", Volume: "disk1"})}),
			want: success, verify: func(t *testing.T, s *State, res any) {
				v := s.VMs["vm3"]
				must(t, v.Generation == 1 && v.CreatedUnixNano == t0 && v.Status.GetState() == pb.VMState_VM_STATE_STOPPED, "vm3 = %v", v)
				must(t, s.Volumes[VolumeKey("ceph", "disk1")].Vm == "vm3", "disk1 not attached")
				must(t, res.(*pb.VM).Name == "vm3", "result = %v", res)
				wantEvent(t, s, "vm.create", "vm3", "ok")
			}},
		{name: "vm create/bad name", cmd: vmCreate(&pb.VM{Name: "VM3", Spec: spec(nil)}), want: errdefs.KindInvalid},
		{name: "vm create/missing vm", cmd: cmd(cVMCreate, &pb.VMCreateCommand{}), want: errdefs.KindInvalid},
		{name: "vm create/duplicate", cmd: vmCreate(&pb.VM{Name: "vm1", Spec: spec(nil)}), want: errdefs.KindExists},
		{name: "vm create/missing spec", cmd: vmCreate(&pb.VM{Name: "vm3"}), want: errdefs.KindInvalid},
		{name: "vm create/no vcpus", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{MemoryMib: 512, Kernel: "k"}}), want: errdefs.KindInvalid},
		{name: "vm create/too many vcpus", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 257, MemoryMib: 512, Kernel: "k"}}), want: errdefs.KindInvalid},
		{name: "vm create/too little memory", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 8, Kernel: "k"}}), want: errdefs.KindInvalid},
		{name: "vm create/nothing to boot", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64}}), want: errdefs.KindInvalid},
		{name: "vm create/initrd without kernel", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64, Initrd: "i",
			Disks: []*pb.DiskSpec{{Pool: "ceph", Volume: "disk1"}}}}), want: errdefs.KindInvalid},
		{name: "vm create/nic without network", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64, Kernel: "k", Nics: []*pb.NICSpec{{}}}}), want: errdefs.KindInvalid},
		{name: "vm create/duplicate mac", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64, Kernel: "k", Nics: []*pb.NICSpec{
			{Network: "net1", Mac: "52:54:00:00:00:01"}, {Network: "ovs1", Mac: "52:54:00:00:00:01"}}}}), want: errdefs.KindInvalid},
		{name: "vm create/unknown network", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: spec([]string{"net9"})}), want: errdefs.KindNotFound},
		{name: "vm create/unknown volume", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: spec(nil, &pb.DiskSpec{Pool: "ceph", Volume: "ghost"})}), want: errdefs.KindNotFound},
		{name: "vm create/volume used", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: spec(nil, &pb.DiskSpec{Pool: "ceph", Volume: "disk-vm1"})}), want: errdefs.KindPrecondition},
		{name: "vm create/template volume", cmd: vmCreate(&pb.VM{Name: "vm3", Spec: spec(nil, &pb.DiskSpec{Pool: "ceph", Volume: "tmpl"})}), want: errdefs.KindPrecondition},
		{name: "vm create/unknown node", cmd: vmCreate(&pb.VM{Name: "vm3", Node: "n9", Spec: spec(nil)}), want: errdefs.KindNotFound},
		{name: "vm create/on witness", cmd: vmCreate(&pb.VM{Name: "vm3", Node: "w1", Spec: spec(nil)}), want: errdefs.KindPrecondition},

		// VM_UPDATE
		{name: "vm update/ok", cmd: cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1", ExpectedGeneration: 1, Spec: &pb.VMSpec{Vcpus: 4, MemoryMib: 1024, Kernel: "k"}}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Generation == 2 && v.Spec.Vcpus == 4, "vm1 = %v", v)
				wantEvent(t, s, "vm.update", "vm1", "ok")
			}},
		{name: "vm update/stale generation", cmd: cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1", ExpectedGeneration: 5, Spec: spec(nil)}), want: errdefs.KindPrecondition},
		{name: "vm update/unknown", cmd: cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm9", Spec: spec(nil)}), want: errdefs.KindNotFound},
		{name: "vm update/missing spec", cmd: cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1"}), want: errdefs.KindInvalid},
		{name: "vm update/unknown network", cmd: cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1", Spec: spec([]string{"net9"})}), want: errdefs.KindNotFound},

		// VM_POWER
		{name: "vm power/start", cmd: power("vm1", pb.PowerState_POWER_STATE_RUNNING), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].Power == pb.PowerState_POWER_STATE_RUNNING, "power = %v", s.VMs["vm1"].Power)
				wantEvent(t, s, "vm.start", "vm1", "ok")
			}},
		{name: "vm power/stop", setup: []*pb.Command{power("vm1", pb.PowerState_POWER_STATE_RUNNING)}, cmd: power("vm1", pb.PowerState_POWER_STATE_STOPPED), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].Power == pb.PowerState_POWER_STATE_STOPPED, "power = %v", s.VMs["vm1"].Power)
				wantEvent(t, s, "vm.stop", "vm1", "ok")
			}},
		{name: "vm power/reboot", setup: []*pb.Command{power("vm1", pb.PowerState_POWER_STATE_RUNNING)}, cmd: cmd(cVMPower, &pb.VMPowerCommand{Name: "vm1", Reboot: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].RebootSeq == 1, "reboot seq = %d", s.VMs["vm1"].RebootSeq)
				wantEvent(t, s, "vm.reboot", "vm1", "ok")
			}},
		{name: "vm power/force stop", setup: []*pb.Command{power("vm1", pb.PowerState_POWER_STATE_RUNNING)},
			cmd: cmd(cVMPower, &pb.VMPowerCommand{Name: "vm1", Power: pb.PowerState_POWER_STATE_STOPPED, Force: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Power == pb.PowerState_POWER_STATE_STOPPED && v.ForceStop, "vm1 = %v", v)
			}},
		{name: "vm power/start clears force",
			setup: []*pb.Command{cmd(cVMPower, &pb.VMPowerCommand{Name: "vm1", Power: pb.PowerState_POWER_STATE_STOPPED, Force: true})},
			cmd:   power("vm1", pb.PowerState_POWER_STATE_RUNNING), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, !s.VMs["vm1"].ForceStop, "ForceStop survived a start")
			}},
		{name: "vm power/reboot stopped", cmd: cmd(cVMPower, &pb.VMPowerCommand{Name: "vm1", Reboot: true}), want: errdefs.KindPrecondition},
		{name: "vm power/deleting", setup: []*pb.Command{cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm1"})}, cmd: power("vm1", pb.PowerState_POWER_STATE_RUNNING), want: errdefs.KindPrecondition},
		{name: "vm power/template", setup: []*pb.Command{vmCreate(&pb.VM{Name: "gold", Template: true, Spec: spec(nil)})}, cmd: power("gold", pb.PowerState_POWER_STATE_RUNNING), want: errdefs.KindPrecondition},
		{name: "vm power/unknown", cmd: power("vm9", pb.PowerState_POWER_STATE_RUNNING), want: errdefs.KindNotFound},
		{name: "vm power/clear error",
			setup: []*pb.Command{fence("n1"), cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", GiveUp: true, Reason: "too many restarts"})},
			cmd:   cmd(cVMPower, &pb.VMPowerCommand{Name: "vm1", ClearError: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Status.GetState() == pb.VMState_VM_STATE_STOPPED && v.Status.Reason == "" && v.RestartsUnixNano == nil, "vm1 = %v", v)
			}},

		// VM_DELETE
		{name: "vm delete/placed is marked", cmd: cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v != nil && v.Deleting && v.Power == pb.PowerState_POWER_STATE_STOPPED, "vm1 = %v", v)
				must(t, s.Volumes[VolumeKey("ceph", "disk-vm1")].Vm == "vm1", "disk detached before the node undefined the VM")
				wantEvent(t, s, "vm.delete", "vm1", "accepted")
			}},
		{name: "vm delete/unplaced is removed",
			setup: []*pb.Command{vmCreate(&pb.VM{Name: "vm3", Spec: spec(nil, &pb.DiskSpec{Pool: "ceph", Volume: "disk1"})})},
			cmd:   cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm3"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm3"] == nil, "vm3 still present")
				must(t, s.Volumes[VolumeKey("ceph", "disk1")].Vm == "", "disk1 still attached")
			}},
		{name: "vm delete/unknown", cmd: cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm9"}), want: errdefs.KindNotFound},

		// VM_REMOVE
		{name: "vm remove/ok", setup: []*pb.Command{cmd(cVMDelete, &pb.VMDeleteCommand{Name: "vm1"})},
			cmd: cmd(cVMRemove, &pb.VMRemoveCommand{Name: "vm1", Node: "n1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"] == nil, "vm1 still present")
				must(t, s.Volumes[VolumeKey("ceph", "disk-vm1")].Vm == "", "disk-vm1 still attached")
				wantEvent(t, s, "vm.removed", "vm1", "ok")
			}},
		{name: "vm remove/not deleting", cmd: cmd(cVMRemove, &pb.VMRemoveCommand{Name: "vm1", Node: "n1"}), want: errdefs.KindPrecondition},
		{name: "vm remove/unknown", cmd: cmd(cVMRemove, &pb.VMRemoveCommand{Name: "vm9"}), want: errdefs.KindNotFound},

		// VM_STATUS
		{name: "vm status/running counts a boot", cmd: cmd(cVMStatus, &pb.VMStatusCommand{Name: "vm1", Node: "n1", Status: &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING, Boots: 42, Node: "liar"}}),
			want: success, verify: func(t *testing.T, s *State, _ any) {
				st := s.VMs["vm1"].Status
				must(t, st.State == pb.VMState_VM_STATE_RUNNING && st.Boots == 1 && st.Node == "n1" && st.UpdatedUnixNano == t0, "status = %v", st)
				wantEvent(t, s, "vm.state", "vm1", "running")
			}},
		{name: "vm status/repeat running is not a boot", setup: []*pb.Command{vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING)},
			cmd: vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].Status.Boots == 1, "boots = %d", s.VMs["vm1"].Status.Boots)
			}},
		{name: "vm status/stopped by guest",
			setup: []*pb.Command{power("vm1", pb.PowerState_POWER_STATE_RUNNING), vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING)},
			cmd:   cmd(cVMStatus, &pb.VMStatusCommand{Name: "vm1", Node: "n1", Status: &pb.VMStatus{State: pb.VMState_VM_STATE_STOPPED}, StoppedByGuest: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].Power == pb.PowerState_POWER_STATE_STOPPED, "power = %v", s.VMs["vm1"].Power)
			}},
		{name: "vm status/stopped by guest with ha restart",
			setup: []*pb.Command{
				cmd(cVMUpdate, &pb.VMUpdateCommand{Name: "vm1", Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64, Kernel: "k", Ha: pb.HAMode_HA_MODE_RESTART}}),
				power("vm1", pb.PowerState_POWER_STATE_RUNNING), vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING),
			},
			cmd: cmd(cVMStatus, &pb.VMStatusCommand{Name: "vm1", Node: "n1", Status: &pb.VMStatus{State: pb.VMState_VM_STATE_STOPPED}, StoppedByGuest: true}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				must(t, s.VMs["vm1"].Power == pb.PowerState_POWER_STATE_RUNNING, "power = %v", s.VMs["vm1"].Power)
			}},
		{name: "vm status/stale running from other node", cmd: vmStatus("vm1", "n2", pb.VMState_VM_STATE_RUNNING), want: errdefs.KindPrecondition},
		{name: "vm status/missing status", cmd: cmd(cVMStatus, &pb.VMStatusCommand{Name: "vm1", Node: "n1"}), want: errdefs.KindInvalid},
		{name: "vm status/unknown", cmd: vmStatus("vm9", "n1", pb.VMState_VM_STATE_RUNNING), want: errdefs.KindNotFound},

		// VM_MOVE
		{name: "vm move/ok", setup: []*pb.Command{cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2", TaskId: "task1"})},
			cmd: cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", From: "n1", To: "n2", Reason: "migrated"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Node == "n2" && v.MigratingTo == "", "vm1 = %v", v)
				wantEvent(t, s, "vm.move", "vm1", "ok")
			}},
		{name: "vm move/wrong source", cmd: cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", From: "n2", To: "n2"}), want: errdefs.KindPrecondition},
		{name: "vm move/unknown target", cmd: cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", From: "n1", To: "n9"}), want: errdefs.KindNotFound},
		{name: "vm move/to witness", cmd: cmd(cVMMove, &pb.VMMoveCommand{Name: "vm1", To: "w1"}), want: errdefs.KindPrecondition},
		{name: "vm move/unknown vm", cmd: cmd(cVMMove, &pb.VMMoveCommand{Name: "vm9", To: "n2"}), want: errdefs.KindNotFound},

		// VM_MIGRATING
		{name: "vm migrating/set", cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2", TaskId: "task1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.MigratingTo == "n2" && v.TaskId == "task1", "vm1 = %v", v)
			}},
		{name: "vm migrating/clear", setup: []*pb.Command{cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2", TaskId: "task1"})},
			cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.MigratingTo == "" && v.TaskId == "", "vm1 = %v", v)
			}},
		{name: "vm migrating/already", setup: []*pb.Command{cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2"})},
			cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n2"}), want: errdefs.KindPrecondition},
		{name: "vm migrating/unknown target", cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "n9"}), want: errdefs.KindNotFound},
		{name: "vm migrating/to witness", cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm1", To: "w1"}), want: errdefs.KindPrecondition},
		{name: "vm migrating/unknown vm", cmd: cmd(cVMMigrating, &pb.VMMigratingCommand{Name: "vm9", To: "n2"}), want: errdefs.KindNotFound},

		// VM_FAILOVER
		{name: "vm failover/ok after fence",
			setup: []*pb.Command{vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING), fence("n1")},
			cmd:   cmdAt(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", To: "n2", Reason: "node down"}, t0+5), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Node == "n2" && len(v.RestartsUnixNano) == 1 && v.RestartsUnixNano[0] == t0+5, "vm1 = %v", v)
				must(t, v.Status.State == pb.VMState_VM_STATE_STOPPED && v.Status.Node == "" && v.Status.Boots == 1, "status = %v", v.Status)
				wantEvent(t, s, "ha.restart", "vm1", "ok")
			}},
		{name: "vm failover/give up", setup: []*pb.Command{fence("n1")},
			cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", GiveUp: true, Reason: "no capacity"}), want: success,
			verify: func(t *testing.T, s *State, _ any) {
				v := s.VMs["vm1"]
				must(t, v.Node == "n1" && v.Power == pb.PowerState_POWER_STATE_STOPPED && v.Status.State == pb.VMState_VM_STATE_ERROR && v.Status.Reason == "no capacity", "vm1 = %v", v)
				wantEvent(t, s, "ha.give-up", "vm1", "stopped")
			}},
		{name: "vm failover/source not fenced", cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", To: "n2"}), want: errdefs.KindPrecondition},
		{name: "vm failover/give up not fenced", cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", GiveUp: true}), want: errdefs.KindPrecondition},
		{name: "vm failover/wrong source", setup: []*pb.Command{fence("n2")}, cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n2", To: "n2"}), want: errdefs.KindPrecondition},
		{name: "vm failover/to witness", setup: []*pb.Command{fence("n1")}, cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", To: "w1"}), want: errdefs.KindPrecondition},
		{name: "vm failover/to unknown node", setup: []*pb.Command{fence("n1")}, cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm1", From: "n1", To: "n9"}), want: errdefs.KindNotFound},
		{name: "vm failover/unknown vm", cmd: cmd(cVMFailover, &pb.VMFailoverCommand{Name: "vm9", From: "n1", To: "n2"}), want: errdefs.KindNotFound},
	}
}

func TestApplyCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range commandCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewState()
			if !tc.empty {
				applyAll(t, s, fixture()...)
			}
			applyAll(t, s, tc.setup...)

			// Check runs on the proposer and must agree with apply.
			checkErr := Check(s, tc.cmd)
			before := exportBytes(t, s)
			exported := s.Export()
			frozen := proto.Clone(exported)

			res, err := ApplyCommand(s, tc.cmd, 1000)

			if tc.want == success {
				if err != nil {
					t.Fatalf("apply: %v", err)
				}
				if checkErr != nil {
					t.Errorf("Check refused a command apply accepts: %v", checkErr)
				}
				// Stored messages are never changed in place: what a
				// reader got before the write is still what it read.
				if !proto.Equal(exported, frozen) {
					t.Error("apply mutated a previously stored message in place")
				}
				tc.verify(t, s, res)
				return
			}
			if err == nil {
				t.Fatalf("apply succeeded (result %v), want a %v error", res, tc.want)
			}
			if got := errdefs.KindOf(err); got != tc.want {
				t.Errorf("error kind = %v, want %v (err: %v)", got, tc.want, err)
			}
			if got := errdefs.KindOf(checkErr); got != tc.want {
				t.Errorf("Check error kind = %v, want %v (err: %v)", got, tc.want, checkErr)
			}
			if res != nil {
				t.Errorf("refused command returned a result: %v", res)
			}
			if after := exportBytes(t, s); !bytes.Equal(before, after) {
				t.Error("a refused command changed the state")
			}
			if !proto.Equal(exported, s.Export()) {
				t.Error("a refused command changed the state (proto.Equal)")
			}
		})
	}
}

// TestCommandCasesCoverEveryType keeps the table honest: every registered
// command type has at least one accepted and one refused case.
func TestCommandCasesCoverEveryType(t *testing.T) {
	t.Parallel()
	ok, refused := map[pb.CommandType]bool{}, map[pb.CommandType]bool{}
	for _, tc := range commandCases() {
		if tc.want == success {
			ok[tc.cmd.Type] = true
		} else {
			refused[tc.cmd.Type] = true
		}
	}
	for typ := range payloadTypes {
		if !ok[typ] {
			t.Errorf("%s has no success case", typ)
		}
		if !refused[typ] {
			t.Errorf("%s has no error case", typ)
		}
	}
}

func TestEveryCommandTypeRegistered(t *testing.T) {
	t.Parallel()
	values := pb.CommandType(0).Descriptor().Values()
	for i := range values.Len() {
		typ := pb.CommandType(values.Get(i).Number())
		if typ == pb.CommandType_COMMAND_TYPE_UNSPECIFIED {
			if _, ok := handlers[typ]; ok {
				t.Error("UNSPECIFIED must not have a handler")
			}
			continue
		}
		h, ok := handlers[typ]
		if !ok {
			t.Errorf("%s has no handler", typ)
			continue
		}
		want, ok := payloadTypes[typ]
		if !ok {
			t.Errorf("%s missing from the test's payload table", typ)
			continue
		}
		if got := h.newPayload().ProtoReflect().Descriptor().FullName(); got != want.ProtoReflect().Descriptor().FullName() {
			t.Errorf("%s decodes into %s, want %s", typ, got, want.ProtoReflect().Descriptor().FullName())
		}
	}
	if len(handlers) != values.Len()-1 {
		t.Errorf("%d handlers for %d command types", len(handlers), values.Len()-1)
	}
}

func TestUndecodableCommands(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		cmd  *pb.Command
	}{
		{"unspecified type", &pb.Command{Type: pb.CommandType_COMMAND_TYPE_UNSPECIFIED, TimeUnixNano: t0}},
		{"unknown type", &pb.Command{Type: 9999, TimeUnixNano: t0, Payload: []byte{}}},
		{"garbage payload", &pb.Command{Type: cVMCreate, TimeUnixNano: t0, Payload: []byte{0xff, 0xff, 0xff}}},
		{"invalid utf-8 name", &pb.Command{Type: cVMDelete, TimeUnixNano: t0, Payload: []byte{0x0a, 0x01, 0xff}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := fixtureState(t)
			before := exportBytes(t, s)
			_, err := ApplyCommand(s, tc.cmd, 1)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("ApplyCommand error = %v, want a *DecodeError", err)
			}
			if !bytes.Equal(before, exportBytes(t, s)) {
				t.Error("an undecodable command changed the state")
			}
			if k := errdefs.KindOf(Check(s, tc.cmd)); k != errdefs.KindInvalid {
				t.Errorf("Check kind = %v, want invalid", k)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	t.Parallel()
	long := ""
	for range 63 {
		long += "a"
	}
	cases := []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"vm-1", true}, {"0", true}, {long, true},
		{"", false}, {"-a", false}, {"a-", false}, {"A", false}, {"a_b", false}, {"a.b", false}, {long + "a", false}, {"é", false},
	}
	for _, tc := range cases {
		err := ValidName("vm", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && errdefs.KindOf(err) != errdefs.KindInvalid {
			t.Errorf("ValidName(%q) kind = %v", tc.name, errdefs.KindOf(err))
		}
	}
}

// TestEventRetention checks the event log keeps the newest MaxEvents with
// contiguous indexes.
func TestEventRetention(t *testing.T) {
	t.Parallel()
	s := fixtureState(t)
	extra := MaxEvents + 7
	for i := range extra {
		if _, err := ApplyCommand(s, cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "test", Target: fmt.Sprint(i)}}), 1); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.Events) != MaxEvents {
		t.Fatalf("%d events kept, want %d", len(s.Events), MaxEvents)
	}
	for i, e := range s.Events {
		if i > 0 && e.Index != s.Events[i-1].Index+1 {
			t.Fatalf("event indexes not contiguous at %d: %d after %d", i, e.Index, s.Events[i-1].Index)
		}
	}
	last := s.Events[len(s.Events)-1]
	if last.Target != fmt.Sprint(extra-1) || last.Index != s.NextEventIndex-1 {
		t.Errorf("newest event = %v, next index %d", last, s.NextEventIndex)
	}
}

// TestTaskPruning checks that only finished tasks are pruned, oldest first.
func TestTaskPruning(t *testing.T) {
	t.Parallel()
	s := fixtureState(t)
	n := MaxFinishedTasks + 5
	for i := range n {
		id := fmt.Sprintf("t%05d", i)
		at := t0 + int64(i)
		applyAll(t, s,
			cmdAt(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: id, Kind: "noop"}}, at),
			cmdAt(cTaskUpdate, &pb.TaskUpdateCommand{Id: id, State: pb.TaskState_TASK_STATE_SUCCEEDED}, at))
	}
	if s.Tasks["task1"] == nil {
		t.Error("running task1 was pruned")
	}
	finished := 0
	for _, tk := range s.Tasks {
		if TaskFinished(tk.State) {
			finished++
		}
	}
	if finished != MaxFinishedTasks {
		t.Errorf("%d finished tasks kept, want %d", finished, MaxFinishedTasks)
	}
	for i := range 5 {
		if s.Tasks[fmt.Sprintf("t%05d", i)] != nil {
			t.Errorf("oldest task t%05d kept", i)
		}
	}
	if s.Tasks[fmt.Sprintf("t%05d", n-1)] == nil {
		t.Error("newest task pruned")
	}
}

// TestImportExportRoundTrip checks Export∘Import is the identity on a
// reachable state, which snapshots rely on.
func TestImportExportRoundTrip(t *testing.T) {
	t.Parallel()
	s := fixtureState(t)
	applyAll(t, s, vmStatus("vm1", "n1", pb.VMState_VM_STATE_RUNNING),
		cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n1", Status: map[string]*pb.NetworkStatus{"net1": {Applied: true}}}))
	back := Import(s.Export())
	if !bytes.Equal(exportBytes(t, s), exportBytes(t, back)) {
		t.Fatal("Import(Export(s)) differs from s")
	}
	// The imported state keeps applying like the original.
	c := cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "after"}})
	applyAll(t, s, c)
	applyAll(t, back, c)
	if !bytes.Equal(exportBytes(t, s), exportBytes(t, back)) {
		t.Fatal("states diverge after applying the same command")
	}
}
