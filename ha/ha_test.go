package ha

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

const tickEvery = DefaultTick

// fenceN2 is what fencing n2 looks like in the call log.
var fenceN2 = []string{"barrier", "fence addr-n2 [ceph,ceph2]", "health n2 fence"}

func cat(parts ...[]string) []string { return slices.Concat(parts...) }

func TestHeartbeatSilence(t *testing.T) {
	const never = time.Duration(-1)
	tests := []struct {
		name      string
		n2        []nodeOpt
		silent    time.Duration // since n2's last heartbeat; never: none recorded
		leaderFor time.Duration // 0: an hour
		haVM      bool          // n2 runs a running HA VM
		want      []string
		health    pb.NodeHealth
		fenced    bool
	}{
		{name: "heartbeating", silent: 0, want: nil, health: pb.NodeHealth_NODE_HEALTH_READY},
		{name: "just under suspect", silent: 2999 * time.Millisecond, health: pb.NodeHealth_NODE_HEALTH_READY},
		{name: "suspect at 3s", silent: 3 * time.Second,
			want: []string{"health n2 suspect"}, health: pb.NodeHealth_NODE_HEALTH_SUSPECT},
		{name: "suspect just under down", silent: 4999 * time.Millisecond,
			want: []string{"health n2 suspect"}, health: pb.NodeHealth_NODE_HEALTH_SUSPECT},
		{name: "already suspect is not re-proposed", n2: []nodeOpt{suspect}, silent: 4 * time.Second,
			health: pb.NodeHealth_NODE_HEALTH_SUSPECT},
		{name: "down at 5s without HA VMs is not fenced", silent: 5 * time.Second,
			want: []string{"health n2 down"}, health: pb.NodeHealth_NODE_HEALTH_DOWN},
		{name: "down with an HA VM is fenced", n2: []nodeOpt{suspect}, silent: 6 * time.Second, haVM: true,
			want: cat([]string{"health n2 down"}, fenceN2), health: pb.NodeHealth_NODE_HEALTH_DOWN, fenced: true},
		{name: "already down, not yet fenced: fence only", n2: []nodeOpt{down}, silent: time.Minute, haVM: true,
			want: fenceN2, health: pb.NodeHealth_NODE_HEALTH_DOWN, fenced: true},
		{name: "already fenced: nothing more", n2: []nodeOpt{fenced}, silent: time.Minute, haVM: false,
			health: pb.NodeHealth_NODE_HEALTH_DOWN, fenced: true},
		{name: "down witness is never fenced", n2: []nodeOpt{witness}, silent: time.Minute, haVM: true,
			want: []string{"health n2 down"}, health: pb.NodeHealth_NODE_HEALTH_DOWN},
		{name: "suspect heartbeats again", n2: []nodeOpt{suspect}, silent: 100 * time.Millisecond,
			want: []string{"health n2 ready"}, health: pb.NodeHealth_NODE_HEALTH_READY},
		{name: "down (unfenced) heartbeats again", n2: []nodeOpt{down}, silent: 0, haVM: true,
			want: []string{"health n2 ready"}, health: pb.NodeHealth_NODE_HEALTH_READY},
		{name: "never heartbeated, long-time leader", silent: never,
			want: []string{"health n2 down"}, health: pb.NodeHealth_NODE_HEALTH_DOWN},
		{name: "never heartbeated, new leader: silence counts from election", silent: never,
			leaderFor: 2 * time.Second, health: pb.NodeHealth_NODE_HEALTH_READY},
		{name: "heartbeat older than the leadership is not held against it", silent: time.Hour,
			leaderFor: 3500 * time.Millisecond, want: []string{"health n2 suspect"}, health: pb.NodeHealth_NODE_HEALTH_SUSPECT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var vms []*pb.VM
			if tc.haVM {
				vms = append(vms, mkVM("v", "n2"))
			}
			f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2", tc.n2...), mkNode("n3")), vms...))
			if tc.leaderFor != 0 {
				f.g.leaderSince = f.now.Add(-tc.leaderFor)
			}
			if tc.silent == never {
				f.g.forget("n2")
			} else {
				f.g.silence("n2", tc.silent)
			}
			if got := f.tick(); !slices.Equal(got, tc.want) {
				t.Errorf("calls = %q, want %q", got, tc.want)
			}
			n := f.g.node("n2")
			if n.Health != tc.health || n.Fenced != tc.fenced {
				t.Errorf("n2 health %v fenced %v, want %v %v", n.Health, n.Fenced, tc.health, tc.fenced)
			}
			f.noRejections()
		})
	}
}

// TestDetectorTimeline follows a node that stops heartbeating, tick by
// tick on the fake clock: suspect at 3 s, down and fenced at 5 s, its HA
// VMs restarted on the next tick, and nothing more after that.
func TestDetectorTimeline(t *testing.T) {
	st := mkState(nodes(mkNode(self, maintenance), mkNode("n2"), mkNode("n3")),
		mkVM("a", "n2"), mkVM("b", "n2", prio(5)), mkVM("off", "n2", haOff))
	f := newFixture(t, st)
	var got []string
	for range 40 { // 10 s
		f.advance(tickEvery, "n2")
		for _, c := range f.tick() {
			got = append(got, fmt.Sprintf("%v %s", f.now.Sub(t0), c))
		}
	}
	want := []string{
		"3s health n2 suspect",
		"5s health n2 down",
		"5s barrier",
		"5s fence addr-n2 [ceph,ceph2]",
		"5s health n2 fence",
		"5.25s failover b n2->n3",
		"5.25s failover a n2->n3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("timeline:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for vm, node := range map[string]string{"a": "n3", "b": "n3", "off": "n2"} {
		if v := f.g.vm(vm); v.Node != node {
			t.Errorf("vm %s on %q, want %q", vm, v.Node, node)
		}
	}
	f.noRejections()
}

// fencedFirst returns the failovers and give-ups in calls that come
// before their node was blocklisted on storage and recorded fenced in
// Raft, and fence records that come before the storage fence.
func fencedFirst(calls []string) []string {
	var bad []string
	blocklisted := map[string]bool{}
	recorded := map[string]bool{}
	for i, c := range calls {
		var node, vm, move string
		switch {
		case strings.HasPrefix(c, "fence addr-"):
			fmt.Sscanf(strings.TrimPrefix(c, "fence addr-"), "%s", &node)
			blocklisted[node] = true
		case strings.HasPrefix(c, "health ") && strings.HasSuffix(c, " fence"):
			fmt.Sscanf(c, "health %s", &node)
			if !blocklisted[node] {
				bad = append(bad, fmt.Sprintf("call %d %q before the storage fence", i, c))
			}
			recorded[node] = true
		case strings.HasPrefix(c, "failover "):
			fmt.Sscanf(c, "failover %s %s", &vm, &move)
			node, _, _ = strings.Cut(move, "->")
		case strings.HasPrefix(c, "giveup "):
			fmt.Sscanf(c, "giveup %s on %s", &vm, &node)
		}
		if vm != "" && !recorded[node] {
			bad = append(bad, fmt.Sprintf("call %d %q before %s was fenced", i, c, node))
		}
	}
	return bad
}

// TestFencedFirstCheck makes sure the order check is not vacuous.
func TestFencedFirstCheck(t *testing.T) {
	tests := []struct {
		calls []string
		bad   int
	}{
		{cat([]string{"health n2 down"}, fenceN2, []string{"failover a n2->n3", "giveup b on n2"}), 0},
		{[]string{"health n2 down", "failover a n2->n3", "barrier", "fence addr-n2 [ceph]", "health n2 fence"}, 1},
		{[]string{"giveup a on n2"}, 1},
		{[]string{"barrier", "health n2 fence", "fence addr-n2 [ceph]", "failover a n2->n3"}, 1},
		{cat(fenceN2, []string{"failover a n3->n4"}), 1},
	}
	for _, tc := range tests {
		if got := fencedFirst(tc.calls); len(got) != tc.bad {
			t.Errorf("fencedFirst(%q) = %q, want %d problems", tc.calls, got, tc.bad)
		}
	}
}

func TestFenceBeforeFailover(t *testing.T) {
	tests := []struct {
		name   string
		nodes  []*pb.Node
		vms    []*pb.VM
		silent []string
		moved  int // failovers expected in all
	}{
		{
			name:  "ready node stops heartbeating",
			nodes: nodes(mkNode(self), mkNode("n2"), mkNode("n3")),
			vms:   []*pb.VM{mkVM("a", "n2"), mkVM("b", "n2", prio(3)), mkVM("c", "n2", prio(-1))}, silent: []string{"n2"}, moved: 3,
		},
		{
			name:  "node already down but never fenced (new leader)",
			nodes: nodes(mkNode(self), mkNode("n2", down), mkNode("n3")),
			vms:   []*pb.VM{mkVM("a", "n2"), mkVM("b", "n2")}, silent: []string{"n2"}, moved: 2,
		},
		{
			name:  "two nodes lost at once",
			nodes: nodes(mkNode(self), mkNode("n2"), mkNode("n3"), mkNode("n4")),
			vms:   []*pb.VM{mkVM("a", "n2"), mkVM("b", "n3"), mkVM("c", "n2")}, silent: []string{"n2", "n3"}, moved: 3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(tc.nodes, tc.vms...))
			f.silenceDown()
			var calls []string
			for range 40 {
				f.advance(tickEvery, tc.silent...)
				calls = append(calls, f.tick()...)
			}
			for _, p := range fencedFirst(calls) {
				t.Error(p)
			}
			moved := 0
			for _, c := range calls {
				if strings.HasPrefix(c, "failover ") {
					moved++
				}
			}
			if moved != tc.moved {
				t.Errorf("%d failovers, want %d: %q", moved, tc.moved, calls)
			}
			for _, v := range f.g.st.VMs {
				if slices.Contains(tc.silent, v.Node) {
					t.Errorf("vm %s still on lost node %s", v.Name, v.Node)
				}
			}
			f.noRejections()
		})
	}
}

// TestFenceFailureRestartsNothing: unless the lost node is both
// blocklisted on storage and recorded fenced in Raft, none of its VMs may
// start elsewhere (two copies would write one disk).
func TestFenceFailureRestartsNothing(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(f *fixture)
		noCallOf []string // call prefixes that must never appear
	}{
		{name: "storage blocklist fails", setup: func(f *fixture) { f.fencer.fenceErr = errCeph }},
		{name: "barrier fails (leadership not confirmed)", setup: func(f *fixture) { f.g.barrierErr = errNoQuorum },
			noCallOf: []string{"fence "}},
		{name: "recording the fence in Raft fails", setup: func(f *fixture) {
			f.g.reject = func(c string) error {
				if strings.HasSuffix(c, " fence") {
					return errNoQuorum
				}
				return nil
			}
		}},
		{name: "declaring the node down fails", setup: func(f *fixture) {
			f.g.reject = func(c string) error {
				if c == "health n2 down" {
					return errNoQuorum
				}
				return nil
			}
		}, noCallOf: []string{"barrier", "fence "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2"), mkNode("n3")),
				mkVM("a", "n2"), mkVM("b", "n2", prio(9)), mkVM("c", "n2", restarts(time.Minute, time.Minute, time.Minute))))
			tc.setup(f)
			var calls []string
			for range 40 {
				f.advance(tickEvery, "n2")
				calls = append(calls, f.tick()...)
			}
			for _, c := range calls {
				for _, p := range append([]string{"failover ", "giveup "}, tc.noCallOf...) {
					if strings.HasPrefix(c, p) {
						t.Errorf("unexpected call %q", c)
					}
				}
			}
			if f.g.node("n2").Fenced {
				t.Error("n2 recorded fenced")
			}
			for _, v := range f.g.st.VMs {
				if v.Node != "n2" || v.Power != pb.PowerState_POWER_STATE_RUNNING {
					t.Errorf("vm %s: node %s power %v, want untouched on n2", v.Name, v.Node, v.Power)
				}
			}
		})
	}
}

// TestOnlyHAVMsRestart: a fenced node's running HA VMs move; VMs without
// HA, stopped ones stay; a VM being deleted is finished off.
func TestOnlyHAVMsRestart(t *testing.T) {
	f := newFixture(t, mkState(nodes(mkNode(self, maintenance), mkNode("n2", fenced), mkNode("n3")),
		mkVM("ha", "n2"), mkVM("off", "n2", haOff), mkVM("unset", "n2", haUnset),
		mkVM("stopped", "n2", stopped), mkVM("gone", "n2", deleting, haOff), mkVM("elsewhere", "n3")))
	f.g.silence("n2", time.Hour)
	want := []string{"remove gone from n2", "failover ha n2->n3"}
	if got := f.tick(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	for vm, node := range map[string]string{"ha": "n3", "off": "n2", "unset": "n2", "stopped": "n2", "elsewhere": "n3"} {
		if v := f.g.vm(vm); v == nil || v.Node != node {
			t.Errorf("vm %s = %v, want on %s", vm, v, node)
		}
	}
	if f.g.vm("gone") != nil {
		t.Error("deleting vm of a fenced node not removed")
	}
	if got := f.tick(); len(got) != 0 {
		t.Errorf("second tick: %q, want nothing", got)
	}
	f.noRejections()
}

// TestNeedsFence: only a node whose loss requires restarting or removing
// something is fenced.
func TestNeedsFence(t *testing.T) {
	tests := []struct {
		name string
		vms  []*pb.VM
		want bool
	}{
		{"no VMs", nil, false},
		{"HA off", []*pb.VM{mkVM("v", "n2", haOff)}, false},
		{"HA unset", []*pb.VM{mkVM("v", "n2", haUnset)}, false},
		{"HA but stopped", []*pb.VM{mkVM("v", "n2", stopped)}, false},
		{"HA VM on another node", []*pb.VM{mkVM("v", "n3")}, false},
		{"running HA VM", []*pb.VM{mkVM("x", "n2", haOff), mkVM("v", "n2")}, true},
		{"VM being deleted", []*pb.VM{mkVM("v", "n2", haOff, stopped, deleting)}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2", down), mkNode("n3")), tc.vms...))
			f.g.silence("n2", time.Hour)
			got := f.tick()
			if fencedNow := slices.Contains(got, "health n2 fence"); fencedNow != tc.want {
				t.Errorf("fenced = %v, want %v (calls %q)", fencedNow, tc.want, got)
			}
		})
	}
}

// TestPlacement: VMs of a fenced node go where the scheduler allows.
func TestPlacement(t *testing.T) {
	base := func(more ...*pb.Node) []*pb.Node {
		return append(nodes(mkNode(self, maintenance), mkNode("n2", fenced)), more...)
	}
	tests := []struct {
		name   string
		nodes  []*pb.Node
		vms    []*pb.VM
		silent map[string]time.Duration
		want   map[string]string // vm -> node after one tick
	}{
		{
			name: "witness, maintenance, fenced, down, not-ready nodes refused",
			nodes: base(mkNode("a-wit", witness), mkNode("b-maint", maintenance), mkNode("c-fenced", fenced, clean),
				mkNode("d-down", down), mkNode("e-notready", notReady), mkNode("z-ok")),
			vms:  []*pb.VM{mkVM("v", "n2")},
			want: map[string]string{"v": "z-ok"},
		},
		{
			name:  "no allowed node: VM stays, nothing proposed",
			nodes: base(mkNode("wit", witness), mkNode("maint", maintenance), mkNode("dn", down)),
			vms:   []*pb.VM{mkVM("v", "n2")},
			want:  map[string]string{"v": "n2"},
		},
		{
			name:  "no room: VM stays",
			nodes: base(mkNode("small", memMiB(1536))),
			vms:   []*pb.VM{mkVM("v", "n2")},
			want:  map[string]string{"v": "n2"},
		},
		{
			name:   "not on a node that stopped heartbeating",
			nodes:  base(mkNode("a-silent"), mkNode("b-suspect", suspect), mkNode("c-busy")),
			vms:    []*pb.VM{mkVM("v", "n2"), mkVM("x", "c-busy"), mkVM("y", "c-busy")},
			silent: map[string]time.Duration{"a-silent": 3 * time.Second, "b-suspect": 4 * time.Second},
			want:   map[string]string{"v": "c-busy"},
		},
		{
			name:   "only silent nodes left: VM waits",
			nodes:  base(mkNode("a-silent")),
			vms:    []*pb.VM{mkVM("v", "n2")},
			silent: map[string]time.Duration{"a-silent": 3 * time.Second},
			want:   map[string]string{"v": "n2"},
		},
		{
			name:  "HA group: first allowed preferred node",
			nodes: base(mkNode("a"), mkNode("b"), mkNode("c"), mkNode("m", maintenance)),
			vms:   []*pb.VM{mkVM("v", "n2", haGroup("m,n2,c,b"))},
			want:  map[string]string{"v": "c"},
		},
		{
			name:  "HA group with no allowed member: spread",
			nodes: base(mkNode("a"), mkNode("b"), mkNode("m", maintenance), mkNode("w", witness)),
			vms:   []*pb.VM{mkVM("v", "n2", haGroup("m,w")), mkVM("busy", "a")},
			want:  map[string]string{"v": "b", "busy": "a"},
		},
		{
			name:  "spread to the emptiest node",
			nodes: base(mkNode("a"), mkNode("b")),
			vms:   []*pb.VM{mkVM("v", "n2"), mkVM("x", "b"), mkVM("y", "b")},
			want:  map[string]string{"v": "a"},
		},
		{
			name:  "batch accounts for earlier restarts",
			nodes: base(mkNode("a", memMiB(2048)), mkNode("b", memMiB(2048))),
			vms:   []*pb.VM{mkVM("v1", "n2"), mkVM("v2", "n2")},
			want:  map[string]string{"v1": "a", "v2": "b"},
		},
		{
			name:  "anti-affinity",
			nodes: base(mkNode("a"), mkNode("b"), mkNode("c")),
			vms:   []*pb.VM{mkVM("g1", "n2", antiAff("g")), mkVM("g2", "n2", antiAff("g")), mkVM("g0", "a", antiAff("g"))},
			want:  map[string]string{"g1": "b", "g2": "c", "g0": "a"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(tc.nodes, tc.vms...))
			f.silenceDown()
			for n, d := range tc.silent {
				f.g.silence(n, d)
			}
			var calls []string
			for _, c := range f.tick() {
				if !strings.HasPrefix(c, "health a-silent suspect") {
					calls = append(calls, c)
				}
			}
			for vm, node := range tc.want {
				if v := f.g.vm(vm); v.Node != node {
					t.Errorf("vm %s on %s, want %s (calls %q)", vm, v.Node, node, calls)
				}
			}
			for _, c := range calls {
				if !strings.HasPrefix(c, "failover ") {
					t.Errorf("unexpected call %q", c)
				}
			}
			f.noRejections()
		})
	}
}

// TestPriority: when there is not room for all, the highest HA priority
// goes first, whatever the names.
func TestPriority(t *testing.T) {
	// "ok" has room for two 1 GiB VMs (3 GiB minus the 1 GiB host reserve).
	f := newFixture(t, mkState(nodes(mkNode(self, maintenance), mkNode("n2", fenced), mkNode("ok", memMiB(3072))),
		mkVM("a-low", "n2", prio(1)), mkVM("b-none", "n2"), mkVM("z-high", "n2", prio(10))))
	f.g.silence("n2", time.Hour)
	want := []string{"failover z-high n2->ok", "failover a-low n2->ok"}
	if got := f.tick(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if n := f.g.vm("b-none").Node; n != "n2" {
		t.Errorf("lowest priority VM moved to %s", n)
	}
	f.noRejections()
}

func TestGiveUp(t *testing.T) {
	tests := []struct {
		name        string
		maxRestarts int32 // 0: default (3)
		restarts    []time.Duration
		giveUp      bool
	}{
		{name: "never restarted"},
		{name: "two recent restarts", restarts: []time.Duration{time.Minute, 2 * time.Minute}},
		{name: "three recent restarts", restarts: []time.Duration{time.Minute, 2 * time.Minute, 9 * time.Minute}, giveUp: true},
		{name: "three restarts, one out of the window", restarts: []time.Duration{time.Minute, 2 * time.Minute, 11 * time.Minute}},
		{name: "many old restarts", restarts: []time.Duration{time.Hour, time.Hour, time.Hour, time.Hour, time.Hour}},
		{name: "max one restart", maxRestarts: 1, restarts: []time.Duration{5 * time.Minute}, giveUp: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := mkState(nodes(mkNode(self, maintenance), mkNode("n2", fenced), mkNode("n3")),
				mkVM("v", "n2", restarts(tc.restarts...)))
			if tc.maxRestarts != 0 {
				st.Cluster.Settings = &pb.Settings{MaxRestarts: tc.maxRestarts}
			}
			f := newFixture(t, st)
			f.g.silence("n2", time.Hour)
			want := []string{"failover v n2->n3"}
			if tc.giveUp {
				want = []string{"giveup v on n2"}
			}
			if got := f.tick(); !slices.Equal(got, want) {
				t.Errorf("calls = %q, want %q", got, want)
			}
			v := f.g.vm("v")
			if tc.giveUp {
				if v.Node != "n2" || v.Power != pb.PowerState_POWER_STATE_STOPPED || v.Status.GetState() != pb.VMState_VM_STATE_ERROR {
					t.Errorf("given-up vm: node %s power %v state %v", v.Node, v.Power, v.Status.GetState())
				}
				if got := f.tick(); len(got) != 0 {
					t.Errorf("after giving up: %q, want nothing", got)
				}
			} else if v.Node != "n3" || len(v.RestartsUnixNano) != len(tc.restarts)+1 {
				t.Errorf("vm on %s with %d restarts", v.Node, len(v.RestartsUnixNano))
			}
			f.noRejections()
		})
	}
}

// TestGiveUpAfterRepeatedLosses kills, one after the other, every node the
// VM lands on: three restarts (the default), then HA gives up.
func TestGiveUpAfterRepeatedLosses(t *testing.T) {
	f := newFixture(t, mkState(nodes(mkNode(self, maintenance), mkNode("n1"), mkNode("n2"), mkNode("n3"), mkNode("n4"), mkNode("n5")),
		mkVM("v", "n1")))
	var dead, path []string
	for round := 0; round < 5; round++ {
		v := f.g.vm("v")
		if v.Power != pb.PowerState_POWER_STATE_RUNNING {
			break
		}
		dead = append(dead, v.Node)
		for range 40 {
			f.advance(tickEvery, dead...)
			f.tick()
			if v := f.g.vm("v"); v.Node != dead[len(dead)-1] || v.Power != pb.PowerState_POWER_STATE_RUNNING {
				break
			}
		}
		v = f.g.vm("v")
		path = append(path, fmt.Sprintf("%s:%v", v.Node, v.Power == pb.PowerState_POWER_STATE_RUNNING))
	}
	want := []string{"n2:true", "n3:true", "n4:true", "n4:false"}
	if !slices.Equal(path, want) {
		t.Errorf("path = %q, want %q", path, want)
	}
	if n := len(f.g.vm("v").RestartsUnixNano); n != 3 {
		t.Errorf("%d restarts recorded, want 3", n)
	}
	f.noRejections()
}

func TestUnfence(t *testing.T) {
	unfenced := []string{"barrier", "unfence addr-n2 [ceph,ceph2]", "health n2 ready unfence"}
	tests := []struct {
		name     string
		n2       []nodeOpt
		silent   time.Duration
		setup    func(f *fixture)
		want     []string
		unfenced bool
	}{
		{name: "back but not clean yet", n2: []nodeOpt{fenced}},
		{name: "back and clean", n2: []nodeOpt{fenced, clean}, want: unfenced, unfenced: true},
		{name: "clean but not heartbeating", n2: []nodeOpt{fenced, clean}, silent: time.Minute},
		{name: "clean, storage unblocklist fails", n2: []nodeOpt{fenced, clean},
			setup: func(f *fixture) { f.fencer.unfenceErr = errCeph },
			want:  []string{"barrier", "unfence addr-n2 [ceph,ceph2]"}},
		{name: "clean, leadership not confirmed", n2: []nodeOpt{fenced, clean},
			setup: func(f *fixture) { f.g.barrierErr = errNoQuorum }, want: []string{"barrier"}},
		{name: "clean in a stale view, re-fenced in the latest state", n2: []nodeOpt{fenced, clean},
			setup: func(f *fixture) {
				f.g.onBarrier = func(st *raftstore.State) {
					n := proto.Clone(st.Nodes["n2"]).(*pb.Node)
					n.FenceClean = false
					st.Nodes["n2"] = n
				}
			}, want: []string{"barrier"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2", tc.n2...), mkNode("n3"))))
			f.g.silence("n2", tc.silent)
			if tc.setup != nil {
				tc.setup(f)
			}
			if got := f.tick(); !slices.Equal(got, tc.want) {
				t.Errorf("calls = %q, want %q", got, tc.want)
			}
			n := f.g.node("n2")
			if n.Fenced == tc.unfenced {
				t.Errorf("n2 fenced = %v", n.Fenced)
			}
			if tc.unfenced && n.Health != pb.NodeHealth_NODE_HEALTH_READY {
				t.Errorf("unfenced n2 health %v", n.Health)
			}
			f.noRejections()
		})
	}
}

// TestUnfenceOnlyAfterCleanReport: a fenced node that comes back stays
// fenced, however long, until it reports its stale guests destroyed.
func TestUnfenceOnlyAfterCleanReport(t *testing.T) {
	f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2", fenced), mkNode("n3"))))
	for range 20 {
		f.advance(tickEvery)
		if got := f.tick(); len(got) != 0 {
			t.Fatalf("before the clean report: %q", got)
		}
	}
	// The node's agent reports clean, as it does through Raft.
	if _, err := f.g.Propose(t.Context(), pb.CommandType_COMMAND_TYPE_NODE_HEALTH,
		&pb.NodeHealthCommand{Name: "n2", Clean: true}, "n2"); err != nil {
		t.Fatal(err)
	}
	f.rec.take()
	f.advance(tickEvery)
	want := []string{"barrier", "unfence addr-n2 [ceph,ceph2]", "health n2 ready unfence"}
	if got := f.tick(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if n := f.g.node("n2"); n.Fenced || n.FenceClean || n.Health != pb.NodeHealth_NODE_HEALTH_READY {
		t.Errorf("n2 = %v", n)
	}
	f.advance(tickEvery)
	if got := f.tick(); len(got) != 0 {
		t.Errorf("after unfencing: %q", got)
	}
	f.noRejections()
}

// TestLeadershipGate: HA acts only where this node leads as a voter, and
// only once the manager has seen the leadership start.
func TestLeadershipGate(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fixture)
		act   bool
	}{
		{name: "leader", act: true},
		{name: "follower", setup: func(f *fixture) { f.g.leader = false }},
		{name: "witness leader", setup: func(f *fixture) { f.g.witness = true }},
		{name: "leadership not yet seen by the manager", setup: func(f *fixture) { f.g.leaderSince = time.Time{} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := mkState(nodes(mkNode(self, maintenance), mkNode("n2"), mkNode("n3", fenced, clean), mkNode("n4", fenced), mkNode("n5")),
				mkVM("a", "n2"), mkVM("b", "n4"))
			st.Tasks["t1"] = &pb.Task{Id: "t1", Kind: "vm.start", Node: "n4", State: pb.TaskState_TASK_STATE_RUNNING}
			f := newFixture(t, st)
			f.g.silence("n2", time.Minute)
			f.g.silence("n4", time.Minute)
			if tc.setup != nil {
				tc.setup(f)
			}
			got := f.tick()
			if !tc.act {
				if len(got) != 0 {
					t.Errorf("calls = %q, want none", got)
				}
				return
			}
			for _, c := range []string{"health n2 down", "fence addr-n2 [ceph,ceph2]", "unfence addr-n3 [ceph,ceph2]",
				"failover b n4->n5", "task t1 failed"} {
				if !slices.Contains(got, c) {
					t.Errorf("leader did not %q: %q", c, got)
				}
			}
		})
	}
}

// TestNoQuorum: a leader that cannot reach a quorum (barrier and
// proposals fail) touches no storage blocklist and changes nothing.
func TestNoQuorum(t *testing.T) {
	st := mkState(nodes(mkNode(self), mkNode("n2", suspect), mkNode("n3", fenced, clean), mkNode("n4", fenced), mkNode("n5")),
		mkVM("a", "n2"), mkVM("b", "n4"))
	f := newFixture(t, st)
	f.g.barrierErr = errNoQuorum
	f.g.rejectAll(errNoQuorum)
	f.g.silence("n4", time.Minute)
	var calls []string
	for range 40 {
		f.advance(tickEvery, "n2", "n4")
		calls = append(calls, f.tick()...)
	}
	for _, c := range calls {
		if strings.HasPrefix(c, "fence ") || strings.HasPrefix(c, "unfence ") {
			t.Errorf("storage touched without quorum: %q", c)
		}
	}
	if len(f.g.rejected) == 0 {
		t.Error("no proposal attempted: the test does not exercise anything")
	}
	if v := f.g.vm("a"); v.Node != "n2" {
		t.Errorf("vm a moved to %s", v.Node)
	}
	if v := f.g.vm("b"); v.Node != "n4" {
		t.Errorf("vm b moved to %s", v.Node)
	}
	if f.g.node("n2").Fenced || !f.g.node("n3").Fenced {
		t.Error("fence state changed")
	}
}

// TestTermChange: a step-down and re-election between two ticks restarts
// the silence count even when the manager's LeaderSince is stale.
func TestTermChange(t *testing.T) {
	tests := []struct {
		name    string
		newTerm bool
		want    []string // at t0+10s
	}{
		{name: "same leadership", want: []string{"health n2 down"}},
		{name: "re-elected in a new term", newTerm: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mkState(nodes(mkNode(self), mkNode("n2"))))
			if got := f.tick(); len(got) != 0 {
				t.Fatalf("first tick: %q", got)
			}
			f.now = t0.Add(10 * time.Second) // n2's heartbeat stays at t0
			if tc.newTerm {
				f.g.term++
			}
			if got := f.tick(); !slices.Equal(got, tc.want) {
				t.Errorf("calls = %q, want %q", got, tc.want)
			}
			if !tc.newTerm {
				return
			}
			f.now = f.now.Add(3 * time.Second)
			if got, want := f.tick(), []string{"health n2 suspect"}; !slices.Equal(got, want) {
				t.Errorf("3s into the new term: %q, want %q", got, want)
			}
			f.now = f.now.Add(2 * time.Second)
			if got, want := f.tick(), []string{"health n2 down"}; !slices.Equal(got, want) {
				t.Errorf("5s into the new term: %q, want %q", got, want)
			}
		})
	}
}

func TestSweepTasks(t *testing.T) {
	running := pb.TaskState_TASK_STATE_RUNNING
	tests := []struct {
		name      string
		task      *pb.Task
		want      []string
		wantState pb.TaskState
	}{
		{name: "on a ready node", task: &pb.Task{Node: "ok", State: running}, wantState: running},
		{name: "on a suspect node", task: &pb.Task{Node: "sus", State: running}, wantState: running},
		{name: "without a node", task: &pb.Task{State: running}, wantState: running},
		{name: "finished on a down node", task: &pb.Task{Node: "dn", State: pb.TaskState_TASK_STATE_SUCCEEDED},
			wantState: pb.TaskState_TASK_STATE_SUCCEEDED},
		{name: "running on a down node", task: &pb.Task{Node: "dn", State: running},
			want: []string{"task t1 failed"}, wantState: pb.TaskState_TASK_STATE_FAILED},
		{name: "pending on a fenced node", task: &pb.Task{Node: "fen", State: pb.TaskState_TASK_STATE_PENDING},
			want: []string{"task t1 failed"}, wantState: pb.TaskState_TASK_STATE_FAILED},
		{name: "on a removed node", task: &pb.Task{Node: "ghost", State: running},
			want: []string{"task t1 failed"}, wantState: pb.TaskState_TASK_STATE_FAILED},
		{name: "migration run by a down node", task: &pb.Task{Node: "dn", State: running, Kind: "vm.migrate",
			Params: map[string]string{"vm": "m1"}},
			want: []string{"task t1 failed", "migrating m1 to="}, wantState: pb.TaskState_TASK_STATE_FAILED},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m1 := mkVM("m1", "ok", haOff)
			m1.MigratingTo, m1.TaskId = "dn", "t1"
			st := mkState(nodes(mkNode(self), mkNode("ok"), mkNode("sus", suspect), mkNode("dn", down), mkNode("fen", fenced)), m1)
			tc.task.Id = "t1"
			if tc.task.Kind == "" {
				tc.task.Kind = "vm.start"
			}
			st.Tasks["t1"] = tc.task
			f := newFixture(t, st)
			f.g.silence("sus", 4*time.Second)
			f.g.silence("dn", time.Minute)
			f.g.silence("fen", time.Minute)
			if got := f.tick(); !slices.Equal(got, tc.want) {
				t.Errorf("calls = %q, want %q", got, tc.want)
			}
			task := f.g.task("t1")
			if task.State != tc.wantState {
				t.Errorf("task state %v, want %v", task.State, tc.wantState)
			}
			if tc.wantState == pb.TaskState_TASK_STATE_FAILED && !strings.Contains(task.Error, tc.task.Node) {
				t.Errorf("task error %q does not name node %s", task.Error, tc.task.Node)
			}
			if tc.task.Kind == "vm.migrate" && (f.g.vm("m1").MigratingTo != "" || f.g.vm("m1").Node != "ok") {
				t.Errorf("m1 after a lost migration: %v", f.g.vm("m1"))
			}
			if got := f.tick(); len(got) != 0 {
				t.Errorf("second sweep: %q, want nothing", got)
			}
			f.noRejections()
		})
	}
}

func TestSplitGroup(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a", []string{"a"}},
		{"a,b,c", []string{"a", "b", "c"}},
		{",a,,b,", []string{"a", "b"}},
		{",", nil},
	}
	for _, tc := range tests {
		if got := splitGroup(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("splitGroup(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestPreviousLeaderSilence: in a new leadership, the node this one
// followed until the election is silent since its last contact, not since
// the election, so a crashed leader's VMs do not wait an election plus a
// full suspect delay longer than another node's. Other nodes still get
// the full delay from the start of the leadership.
func TestPreviousLeaderSilence(t *testing.T) {
	f := newFixture(t, mkState(nodes(mkNode(self), mkNode("old"), mkNode("n3"))))
	if got := f.tick(); len(got) != 0 {
		t.Fatalf("first tick: %q", got)
	}
	// "old" led and crashed at t0+10s; this node won the election 2 s
	// later. Nobody has heartbeated to it yet.
	crash := t0.Add(10 * time.Second)
	f.g.term++
	f.g.prevLeader, f.g.prevContact = "old", crash
	f.g.heartbeats = map[string]time.Time{}
	at := func(d time.Duration, heartbeats ...string) []string {
		f.now = crash.Add(d)
		for _, n := range heartbeats {
			f.g.heartbeats[n] = f.now
		}
		return f.tick()
	}
	if got := at(2 * time.Second); len(got) != 0 {
		t.Fatalf("at the election: %q", got)
	}
	if got, want := at(3*time.Second, "n3"), []string{"health old suspect"}; !slices.Equal(got, want) {
		t.Errorf("3 s after the old leader's last contact: %q, want %q", got, want)
	}
	if got := at(5*time.Second, "n3"); !slices.Contains(got, "health old down") || slices.Contains(got, "health n3 suspect") {
		t.Errorf("5 s after the old leader's last contact: %q, want old down, n3 fine", got)
	}

	// A node that was not the previous leader and never heartbeated to
	// this one still gets the full delay from the start of the leadership.
	g := newFixture(t, mkState(nodes(mkNode(self), mkNode("old"), mkNode("n3"))))
	g.tick()
	g.g.term++
	g.g.prevLeader, g.g.prevContact = "old", crash
	g.g.heartbeats = map[string]time.Time{"old": crash.Add(2 * time.Second)}
	g.now = crash.Add(2 * time.Second)
	g.tick()
	g.now = crash.Add(4 * time.Second)
	g.g.heartbeats["old"] = g.now
	if got := g.tick(); len(got) != 0 {
		t.Errorf("n3 2 s into the leadership, old heartbeating again: %q, want nothing", got)
	}
}
