package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

// t0 is the fake clock's start.
var t0 = time.Unix(1_700_000_000, 0)

const self = "lead" // the node HA runs on

var (
	errNoQuorum = errors.New("no quorum")
	errCeph     = errors.New("ceph: connection refused")
)

// recorder is the ordered log of everything HA did to the outside world:
// Raft barriers, storage fencing and proposals, in one sequence, so tests
// can check what happened before what.
type recorder struct{ calls []string }

func (r *recorder) add(format string, args ...any) {
	r.calls = append(r.calls, fmt.Sprintf(format, args...))
}

// take returns the calls so far and forgets them.
func (r *recorder) take() []string {
	c := r.calls
	r.calls = nil
	return c
}

// fakeFencer stands in for the Ceph blocklist.
type fakeFencer struct {
	rec                  *recorder
	fenceErr, unfenceErr error
}

func poolNames(pools []*pb.StoragePool) string {
	var names []string
	for _, p := range pools {
		names = append(names, p.Name)
	}
	return strings.Join(names, ",")
}

func (f *fakeFencer) Fence(_ context.Context, _ []byte, pools []*pb.StoragePool, addr string) error {
	f.rec.add("fence %s [%s]", addr, poolNames(pools))
	return f.fenceErr
}

func (f *fakeFencer) Unfence(_ context.Context, _ []byte, pools []*pb.StoragePool, addr string) error {
	f.rec.add("unfence %s [%s]", addr, poolNames(pools))
	return f.unfenceErr
}

// fakeGroup is a cluster led (or not) by this node, whose replicated state
// is a real raftstore.State: proposals go through raftstore's own checks
// and apply functions, without Raft.
type fakeGroup struct {
	rec         *recorder
	now         func() time.Time
	witness     bool
	leader      bool
	term        uint64
	leaderSince time.Time
	// prevLeader led before this node; prevContact is its last contact.
	prevLeader  string
	prevContact time.Time
	heartbeats  map[string]time.Time
	st          *raftstore.State
	index       uint64

	barrierErr error
	// onBarrier runs inside a successful barrier: entries a new leader
	// applies only then.
	onBarrier func(*raftstore.State)
	// reject, when it returns an error, fails the proposal described by
	// its argument (see describe) before it reaches the state.
	reject func(call string) error
	// rejected lists proposals that failed, with why.
	rejected []string
}

func (g *fakeGroup) Name() string                             { return "c1" }
func (g *fakeGroup) Witness() bool                            { return g.witness }
func (g *fakeGroup) SealKey() []byte                          { return []byte("seal") }
func (g *fakeGroup) IsLeader() bool                           { return g.leader }
func (g *fakeGroup) Term() uint64                             { return g.term }
func (g *fakeGroup) LeaderSince() time.Time                   { return g.leaderSince }
func (g *fakeGroup) PreviousLeader() (string, time.Time)      { return g.prevLeader, g.prevContact }
func (g *fakeGroup) Read(fn func(*raftstore.State))           { fn(g.st) }
func (g *fakeGroup) LastHeartbeat(n string) (time.Time, bool) { t, ok := g.heartbeats[n]; return t, ok }
func (g *fakeGroup) Barrier(context.Context) error            { return g.barrier() }
func (g *fakeGroup) vm(name string) *pb.VM                    { return g.st.VMs[name] }
func (g *fakeGroup) node(name string) *pb.Node                { return g.st.Nodes[name] }
func (g *fakeGroup) task(id string) *pb.Task                  { return g.st.Tasks[id] }
func (g *fakeGroup) silence(node string, d time.Duration)     { g.heartbeats[node] = g.now().Add(-d) }
func (g *fakeGroup) forget(node string)                       { delete(g.heartbeats, node) }
func (g *fakeGroup) rejectAll(err error)                      { g.reject = func(string) error { return err } }

func (g *fakeGroup) barrier() error {
	g.rec.add("barrier")
	if g.barrierErr != nil {
		return g.barrierErr
	}
	if g.onBarrier != nil {
		g.onBarrier(g.st)
		g.onBarrier = nil
	}
	return nil
}

func (g *fakeGroup) Propose(_ context.Context, t pb.CommandType, payload proto.Message, actor string) (any, error) {
	call := describe(t, payload)
	g.rec.add("%s", call)
	if g.reject != nil {
		if err := g.reject(call); err != nil {
			g.rejected = append(g.rejected, call+": "+err.Error())
			return nil, err
		}
	}
	cmd, err := raftstore.NewCommand(t, payload, g.now().UnixNano(), actor)
	if err != nil {
		return nil, err
	}
	g.index++
	v, err := raftstore.ApplyCommand(g.st, cmd, g.index)
	if err != nil {
		g.rejected = append(g.rejected, call+": "+err.Error())
	}
	return v, err
}

var healthWords = map[pb.NodeHealth]string{
	pb.NodeHealth_NODE_HEALTH_READY:   "ready",
	pb.NodeHealth_NODE_HEALTH_SUSPECT: "suspect",
	pb.NodeHealth_NODE_HEALTH_DOWN:    "down",
}

// describe is a proposal as one short line of the call log.
func describe(t pb.CommandType, payload proto.Message) string {
	switch c := payload.(type) {
	case *pb.NodeHealthCommand:
		s := "health " + c.Name
		if w, ok := healthWords[c.Health]; ok {
			s += " " + w
		}
		if c.Fence {
			s += " fence"
		}
		if c.Unfence {
			s += " unfence"
		}
		return s
	case *pb.VMFailoverCommand:
		if c.GiveUp {
			return "giveup " + c.Name + " on " + c.From
		}
		return "failover " + c.Name + " " + c.From + "->" + c.To
	case *pb.TaskUpdateCommand:
		return "task " + c.Id + " " + strings.ToLower(strings.TrimPrefix(c.State.String(), "TASK_STATE_"))
	case *pb.VMMigratingCommand:
		return "migrating " + c.Name + " to=" + c.To
	case *pb.VMRemoveCommand:
		return "remove " + c.Name + " from " + c.Node
	}
	return t.String()
}

// fixture is an HA loop on node "lead", leader of cluster c1 for an hour,
// with a fake clock every node heartbeats at unless a test says otherwise.
type fixture struct {
	t      *testing.T
	now    time.Time
	rec    *recorder
	fencer *fakeFencer
	g      *fakeGroup
	h      *HA
}

func newFixture(t *testing.T, st *raftstore.State) *fixture {
	t.Helper()
	f := &fixture{t: t, now: t0, rec: &recorder{}}
	f.fencer = &fakeFencer{rec: f.rec}
	clock := func() time.Time { return f.now }
	f.g = &fakeGroup{
		rec: f.rec, now: clock, leader: true, term: 7, leaderSince: t0.Add(-time.Hour),
		heartbeats: map[string]time.Time{}, st: st,
	}
	for name := range st.Nodes {
		f.g.heartbeats[name] = t0
	}
	f.h = &HA{
		self: self, groups: func() []group { return []group{f.g} },
		log: slog.New(slog.DiscardHandler), fencer: f.fencer, now: clock,
		// HA has watched this leadership for as long as it has lasted.
		terms: map[string]leaderTerm{"c1": {term: f.g.term, since: f.g.leaderSince}},
	}
	return f
}

// silenceDown makes every node recorded down silent for an hour, as it
// would be.
func (f *fixture) silenceDown() {
	for name, n := range f.g.st.Nodes {
		if n.Health == pb.NodeHealth_NODE_HEALTH_DOWN {
			f.g.silence(name, time.Hour)
		}
	}
}

// tick runs one HA round and returns what it did.
func (f *fixture) tick() []string {
	f.h.tick(context.Background())
	return f.rec.take()
}

// advance moves the clock; every node but the silent ones heartbeats.
func (f *fixture) advance(d time.Duration, silent ...string) {
	f.now = f.now.Add(d)
	for name := range f.g.st.Nodes {
		if !slices.Contains(silent, name) {
			f.g.heartbeats[name] = f.now
		}
	}
}

// noRejections fails the test if a proposal of HA was refused by
// raftstore's checks or the fake: HA should only propose valid commands.
func (f *fixture) noRejections() {
	f.t.Helper()
	if len(f.g.rejected) > 0 {
		f.t.Errorf("rejected proposals: %q", f.g.rejected)
	}
}

// Builders of the replicated state.

type nodeOpt func(*pb.Node)

func mkNode(name string, opts ...nodeOpt) *pb.Node {
	n := &pb.Node{
		Name: name, Role: pb.NodeRole_NODE_ROLE_VOTER, Health: pb.NodeHealth_NODE_HEALTH_READY, Ready: true,
		Inventory: &pb.Inventory{Cpus: 8, MemoryMib: 8192}, StorageAddress: "addr-" + name,
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

var (
	witness     nodeOpt = func(n *pb.Node) { n.Role = pb.NodeRole_NODE_ROLE_WITNESS; n.Inventory = nil; n.Ready = false }
	maintenance nodeOpt = func(n *pb.Node) { n.Maintenance = true }
	notReady    nodeOpt = func(n *pb.Node) { n.Ready = false; n.Inventory = nil }
	suspect     nodeOpt = func(n *pb.Node) { n.Health = pb.NodeHealth_NODE_HEALTH_SUSPECT }
	down        nodeOpt = func(n *pb.Node) { n.Health = pb.NodeHealth_NODE_HEALTH_DOWN }
	fenced      nodeOpt = func(n *pb.Node) { n.Health = pb.NodeHealth_NODE_HEALTH_DOWN; n.Fenced = true }
	clean       nodeOpt = func(n *pb.Node) { n.FenceClean = true }
)

func memMiB(m int64) nodeOpt { return func(n *pb.Node) { n.Inventory.MemoryMib = m } }

type vmOpt func(*pb.VM)

// mkVM is a running 1 vCPU / 1 GiB VM with HA restart.
func mkVM(name, node string, opts ...vmOpt) *pb.VM {
	v := &pb.VM{
		Name: name, Node: node, Power: pb.PowerState_POWER_STATE_RUNNING,
		Spec:   &pb.VMSpec{Vcpus: 1, MemoryMib: 1024, Ha: pb.HAMode_HA_MODE_RESTART},
		Status: &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING, Node: node},
	}
	for _, o := range opts {
		o(v)
	}
	return v
}

var (
	haOff    vmOpt = func(v *pb.VM) { v.Spec.Ha = pb.HAMode_HA_MODE_OFF }
	haUnset  vmOpt = func(v *pb.VM) { v.Spec.Ha = pb.HAMode_HA_MODE_UNSPECIFIED }
	stopped  vmOpt = func(v *pb.VM) { v.Power = pb.PowerState_POWER_STATE_STOPPED }
	deleting vmOpt = func(v *pb.VM) { v.Deleting = true }
)

func prio(p int32) vmOpt     { return func(v *pb.VM) { v.Spec.HaPriority = p } }
func haGroup(s string) vmOpt { return func(v *pb.VM) { v.Spec.HaGroup = s } }
func antiAff(s string) vmOpt { return func(v *pb.VM) { v.Spec.AntiAffinity = s } }
func restarts(ago ...time.Duration) vmOpt {
	return func(v *pb.VM) {
		for _, d := range ago {
			v.RestartsUnixNano = append(v.RestartsUnixNano, t0.Add(-d).UnixNano())
		}
	}
}

// mkState is a cluster with an RBD pool and a directory pool (only the
// RBD one is fenced on).
func mkState(nodes []*pb.Node, vms ...*pb.VM) *raftstore.State {
	st := raftstore.NewState()
	st.Cluster = &pb.ClusterInfo{Name: "c1"}
	for _, n := range nodes {
		st.Nodes[n.Name] = n
	}
	for _, v := range vms {
		st.VMs[v.Name] = v
	}
	st.Pools["ceph"] = &pb.StoragePool{Name: "ceph", Kind: "rbd"}
	st.Pools["local"] = &pb.StoragePool{Name: "local", Kind: "dir"}
	st.Pools["ceph2"] = &pb.StoragePool{Name: "ceph2", Kind: "rbd"}
	return st
}

func nodes(ns ...*pb.Node) []*pb.Node { return ns }
