package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// timing is the Raft timing of a test cluster: short so elections take a
// fraction of a second, long enough that a loaded 2-core CI machine with
// -race does not flap.
type timing struct{ heartbeat, election, lease time.Duration }

var (
	// fast is for tests about elections, which tolerate an extra one.
	fast = timing{heartbeat: 150 * time.Millisecond, election: 150 * time.Millisecond, lease: 100 * time.Millisecond}
	// steady is the production timing, for tests that want few elections;
	// they still retry "unavailable" as a client does, since a loaded CI
	// machine can starve a leader past its lease.
	steady = timing{heartbeat: DefaultHeartbeatTimeout, election: DefaultElectionTimeout, lease: DefaultLeaderLeaseTimeout}
)

// testCluster is an in-process Raft group over in-memory transports. Its
// forwarder plays the part of the API's leader RPC: it finds the leader's
// Store by ID and calls ApplyLocal there.
type testCluster struct {
	t      *testing.T
	mu     sync.Mutex
	stores map[string]*Store // live members only
	trans  map[string]*raft.InmemTransport

	forwards atomic.Int64
	fatals   atomic.Int64
}

func (c *testCluster) live(id string) *Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[id]
}

func (c *testCluster) forward(ctx context.Context, leaderID, _ string, cmd *pb.Command) (uint64, error) {
	c.forwards.Add(1)
	s := c.live(leaderID)
	if s == nil {
		return 0, errdefs.Unavailable("leader %s unreachable", leaderID)
	}
	_, idx, err := s.ApplyLocal(ctx, cmd)
	return idx, err
}

func (c *testCluster) config(id string, tm timing) Config {
	return Config{
		Cluster: "c1", NodeID: id, InMemory: true, Transport: c.trans[id],
		Forward: c.forward, Logger: quiet,
		OnFatal:          func(error) { c.fatals.Add(1) },
		HeartbeatTimeout: tm.heartbeat, ElectionTimeout: tm.election, LeaderLeaseTimeout: tm.lease,
	}
}

// newTestCluster starts n members: node1 bootstraps alone, then adds the
// others as voters, the way `corral cluster init` and `join` do.
func newTestCluster(t *testing.T, n int, tm timing) *testCluster {
	t.Helper()
	c := &testCluster{t: t, stores: map[string]*Store{}, trans: map[string]*raft.InmemTransport{}}
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("node%d", i+1)
		_, c.trans[ids[i]] = raft.NewInmemTransport(raft.ServerAddress(ids[i]))
	}
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				c.trans[a].Connect(c.trans[b].LocalAddr(), c.trans[b])
			}
		}
	}
	t.Cleanup(func() {
		c.mu.Lock()
		stores := c.stores
		c.stores = nil
		c.mu.Unlock()
		for _, s := range stores {
			if err := s.Close(); err != nil {
				t.Errorf("close %s: %v", s.NodeID(), err)
			}
		}
		if n := c.fatals.Load(); n > 0 {
			t.Errorf("OnFatal called %d times", n)
		}
	})
	for i, id := range ids {
		cfg := c.config(id, tm)
		cfg.Bootstrap = i == 0
		s, err := Open(cfg)
		if err != nil {
			t.Fatalf("open %s: %v", id, err)
		}
		c.mu.Lock()
		c.stores[id] = s
		c.mu.Unlock()
	}
	first := c.stores[ids[0]]
	waitFor(t, 10*time.Second, "node1 to lead its bootstrapped cluster", first.IsLeader)
	for _, id := range ids[1:] {
		if err := first.AddVoter(id, id); err != nil {
			t.Fatalf("add voter %s: %v", id, err)
		}
	}
	waitFor(t, 10*time.Second, "every member to agree on a leader", func() bool {
		var leader string
		for _, s := range c.all() {
			id, _ := s.Leader()
			if id == "" || (leader != "" && id != leader) {
				return false
			}
			leader = id
		}
		return true
	})
	return c
}

// all returns the live members by ID.
func (c *testCluster) all() []*Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Store, 0, len(c.stores))
	for _, id := range sortedKeys(c.stores) {
		out = append(out, c.stores[id])
	}
	return out
}

// leader waits until exactly one live member leads.
func (c *testCluster) leader(timeout time.Duration) *Store {
	c.t.Helper()
	var l *Store
	waitFor(c.t, timeout, "a leader among the live members", func() bool {
		l = nil
		for _, s := range c.all() {
			if s.IsLeader() {
				if l != nil {
					return false
				}
				l = s
			}
		}
		return l != nil
	})
	return l
}

func (c *testCluster) follower() *Store {
	c.t.Helper()
	for _, s := range c.all() {
		if !s.IsLeader() {
			return s
		}
	}
	c.t.Fatal("no follower")
	return nil
}

// kill stops a member as a crash would look to its peers: closed and
// unreachable.
func (c *testCluster) kill(id string) {
	c.t.Helper()
	c.mu.Lock()
	s := c.stores[id]
	delete(c.stores, id)
	c.mu.Unlock()
	if err := s.Close(); err != nil {
		c.t.Errorf("close %s: %v", id, err)
	}
	c.trans[id].DisconnectAll()
	for other, tr := range c.trans {
		if other != id {
			tr.Disconnect(raft.ServerAddress(id))
		}
	}
}

// waitFor polls cond until it holds or the deadline passes. Polling is the
// only way to observe raft's internal role changes from outside.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// propose is a client's write: it retries "unavailable" (no leader, lost
// leadership) for a while. A retry after an ambiguous failure may find its
// own earlier attempt committed, so "exists" after a retry counts as done
// and the caller checks the state.
func propose(ctx context.Context, s *Store, c *pb.Command) (any, error) {
	deadline := time.Now().Add(10 * time.Second)
	retried := false
	for {
		res, err := s.Propose(ctx, c)
		switch {
		case err == nil:
			return res, nil
		case retried && errdefs.KindOf(err) == errdefs.KindExists:
			return nil, nil
		case errdefs.KindOf(err) != errdefs.KindUnavailable || time.Now().After(deadline):
			return nil, err
		}
		retried = true
		time.Sleep(50 * time.Millisecond)
	}
}

func taskCmd(id string) *pb.Command {
	return cmd(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: id, Kind: "test"}})
}

func hasTask(s *Store, id string) bool {
	var ok bool
	s.Read(func(st *State) { _, ok = st.Tasks[id] })
	return ok
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// converge waits until every live member applied the leader's last entry
// and checks they all hold byte-equal states.
func (c *testCluster) converge(ctx context.Context) {
	c.t.Helper()
	idx, _ := c.leader(10 * time.Second).Watch()
	var want []byte
	for _, s := range c.all() {
		if err := s.WaitApplied(ctx, idx); err != nil {
			c.t.Fatalf("%s: %v", s.NodeID(), err)
		}
		var got []byte
		s.Read(func(st *State) { got = exportBytes(c.t, st) })
		if want == nil {
			want = got
		} else if !bytes.Equal(want, got) {
			c.t.Errorf("%s diverges from the others", s.NodeID())
		}
	}
}

func TestStoreReadYourWrites(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, steady)
	ctx := ctxT(t, 60*time.Second)

	follower := c.follower()
	for i := range 20 {
		id := fmt.Sprintf("f%02d", i)
		if _, err := propose(ctx, follower, taskCmd(id)); err != nil {
			t.Fatalf("propose %s via %s: %v", id, follower.NodeID(), err)
		}
		// No wait: Propose returns only once the local FSM applied it.
		if !hasTask(follower, id) {
			t.Fatalf("%s does not see its own write %s right after Propose", follower.NodeID(), id)
		}
	}
	if c.forwards.Load() < 1 {
		t.Error("follower writes were not forwarded")
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := c.leader(10*time.Second).Propose(ctx, taskCmd("l00"))
		if err == nil {
			if tk, ok := res.(*pb.Task); !ok || tk.Id != "l00" || tk.State != pb.TaskState_TASK_STATE_PENDING {
				t.Errorf("leader Propose result = %#v, want the created task", res)
			}
			break
		}
		if errdefs.KindOf(err) != errdefs.KindUnavailable || time.Now().After(deadline) {
			t.Fatalf("propose via leader: %v", err)
		}
	}

	// A command the local state refuses fails before any forwarding.
	before := c.forwards.Load()
	for _, s := range c.all() {
		if _, err := s.Propose(ctx, taskCmd("f00")); errdefs.KindOf(err) != errdefs.KindExists {
			t.Errorf("duplicate via %s: err = %v, want kind exists", s.NodeID(), err)
		}
	}
	if c.forwards.Load() != before {
		t.Error("a locally refused command was forwarded")
	}

	// Concurrent writers on every member.
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for _, s := range c.all() {
		for i := range 10 {
			wg.Go(func() {
				id := fmt.Sprintf("%s-c%d", s.NodeID(), i)
				if _, err := propose(ctx, s, taskCmd(id)); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
				} else if !hasTask(s, id) {
					errs <- fmt.Errorf("%s does not see its own write %s", s.NodeID(), id)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c.converge(ctx)
	c.all()[0].Read(func(st *State) {
		if len(st.Tasks) != 20+1+30 {
			t.Errorf("%d tasks, want 51", len(st.Tasks))
		}
	})
}

func TestStoreLeaderFailover(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, fast)
	ctx := ctxT(t, 30*time.Second)
	old := c.leader(5 * time.Second)
	if _, err := propose(ctx, c.follower(), taskCmd("before")); err != nil {
		t.Fatal(err)
	}
	c.converge(ctx)

	c.kill(old.NodeID())
	killed := time.Now()
	nl := c.leader(10 * time.Second)
	if nl.NodeID() == old.NodeID() {
		t.Fatalf("killed leader %s still leads", old.NodeID())
	}
	t.Logf("new leader %s elected %v after the old one stopped", nl.NodeID(), time.Since(killed).Round(time.Millisecond))

	// The other survivor writes through the new leader. Right after the
	// election it may still name a stale leader: only "unavailable" is an
	// acceptable transient answer, and it must resolve quickly.
	writer := c.follower()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := writer.Propose(ctx, taskCmd("after"))
		if err == nil {
			break
		}
		if errdefs.KindOf(err) != errdefs.KindUnavailable {
			t.Fatalf("write after failover: %v (kind %v), want success or unavailable", err, errdefs.KindOf(err))
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume within 10s of the failover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !hasTask(writer, "after") || !hasTask(writer, "before") {
		t.Error("survivor misses a write from before or after the failover")
	}
	if _, err := propose(ctx, nl, taskCmd("after2")); err != nil {
		t.Errorf("write via the new leader: %v", err)
	}
	c.converge(ctx)
}

func TestStoreWithoutQuorum(t *testing.T) {
	t.Parallel()
	// slow keeps a partitioned leader believing it leads for 2 s, so the
	// proposal really waits on a commit that cannot happen and only the
	// caller's deadline ends it.
	slow := timing{heartbeat: 2 * time.Second, election: 2 * time.Second, lease: 2 * time.Second}
	cases := []struct {
		name  string
		ctxD  time.Duration
		setup func(t *testing.T) *Store
	}{
		{"node that never had a leader", 2 * time.Second, func(t *testing.T) *Store {
			c := &testCluster{t: t, trans: map[string]*raft.InmemTransport{}}
			_, c.trans["lone"] = raft.NewInmemTransport("lone")
			s, err := Open(c.config("lone", fast))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"leader that lost its follower", 2 * time.Second, func(t *testing.T) *Store {
			c := newTestCluster(t, 2, fast)
			c.kill("node2")
			return c.live("node1")
		}},
		{"partitioned leader within its lease", 500 * time.Millisecond, func(t *testing.T) *Store {
			c := newTestCluster(t, 2, slow)
			c.kill("node2")
			return c.live("node1")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.setup(t)
			ctx := ctxT(t, tc.ctxD)
			start := time.Now()
			_, err := s.Propose(ctx, cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "probe"}}))
			took := time.Since(start)
			if errdefs.KindOf(err) != errdefs.KindUnavailable {
				t.Errorf("Propose without quorum: err = %v (kind %v), want unavailable", err, errdefs.KindOf(err))
			}
			if took > tc.ctxD+time.Second {
				t.Errorf("Propose took %v with a %v deadline", took, tc.ctxD)
			}
			var n int
			s.Read(func(st *State) { n = len(st.Events) })
			if n != 0 {
				t.Errorf("an uncommitted command was applied (%d events)", n)
			}
		})
	}
}

// onLeader runs fn on the current leader, again on "unavailable" (the
// leader changed under load) until a deadline.
func (c *testCluster) onLeader(fn func(l *Store) error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn(c.leader(10 * time.Second))
		if errdefs.KindOf(err) != errdefs.KindUnavailable || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStoreWaitBarrierApplyLocal(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 2, steady)
	follower := c.follower()

	start := time.Now()
	if err := follower.WaitApplied(ctxT(t, 100*time.Millisecond), 1<<40); errdefs.KindOf(err) != errdefs.KindUnavailable {
		t.Errorf("WaitApplied past the log: err = %v, want unavailable", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("WaitApplied ignored its deadline (%v)", time.Since(start))
	}
	if err := follower.Barrier(ctxT(t, time.Second)); errdefs.KindOf(err) != errdefs.KindUnavailable {
		t.Errorf("Barrier on follower: err = %v, want unavailable", err)
	}
	if _, _, err := follower.ApplyLocal(ctxT(t, 5*time.Second), taskCmd("x")); errdefs.KindOf(err) != errdefs.KindUnavailable {
		t.Errorf("ApplyLocal on follower: err = %v, want unavailable", err)
	}
	if err := c.onLeader(func(l *Store) error { return l.Barrier(ctxT(t, 5*time.Second)) }); err != nil {
		t.Errorf("Barrier on leader: %v", err)
	}
	// A domain error found by the leader's apply reaches the caller.
	ctx := ctxT(t, 20*time.Second)
	if err := c.onLeader(func(l *Store) error { _, _, err := l.ApplyLocal(ctx, taskCmd("x")); return err }); err != nil {
		t.Fatal(err)
	}
	err := c.onLeader(func(l *Store) error { _, _, err := l.ApplyLocal(ctx, taskCmd("x")); return err })
	if errdefs.KindOf(err) != errdefs.KindExists {
		t.Errorf("duplicate ApplyLocal: err = %v, want exists", err)
	}
	servers, err := follower.Servers()
	if err != nil || len(servers) != 2 {
		t.Errorf("Servers() = %v, %v; want 2 members", servers, err)
	}
}

func TestStoreRestartFromDisk(t *testing.T) {
	t.Parallel()
	for _, snap := range []bool{false, true} {
		t.Run(fmt.Sprintf("snapshot=%v", snap), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var fatals atomic.Int64
			open := func() *Store {
				_, tr := raft.NewInmemTransport("solo")
				t.Cleanup(func() { tr.Close() })
				s, err := Open(Config{
					Cluster: "c1", NodeID: "solo", Dir: dir, Transport: tr, Bootstrap: true, Logger: quiet,
					OnFatal:          func(error) { fatals.Add(1) },
					HeartbeatTimeout: fast.heartbeat, ElectionTimeout: fast.election, LeaderLeaseTimeout: fast.lease,
				})
				if err != nil {
					t.Fatalf("open %s: %v", dir, err)
				}
				waitFor(t, 10*time.Second, "the single node to lead", s.IsLeader)
				return s
			}
			ctx := ctxT(t, 30*time.Second)
			s := open()
			for _, c := range fixture() {
				if _, err := s.Propose(ctx, c); err != nil {
					t.Fatalf("%s: %v", c.Type, err)
				}
			}
			if snap {
				if err := s.Raft().Snapshot().Error(); err != nil {
					t.Fatalf("snapshot: %v", err)
				}
			}
			for i := range 10 {
				if _, err := s.Propose(ctx, taskCmd(fmt.Sprintf("t%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			var want []byte
			var next uint64
			s.Read(func(st *State) { want, next = exportBytes(t, st), st.NextEventIndex })
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}

			s = open()
			defer s.Close()
			if err := s.Barrier(ctx); err != nil {
				t.Fatalf("barrier after restart: %v", err)
			}
			var got []byte
			s.Read(func(st *State) { got = exportBytes(t, st) })
			if !bytes.Equal(want, got) {
				t.Fatal("state after restart differs from the state before")
			}
			res, err := s.Propose(ctx, cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "restarted"}}))
			if err != nil {
				t.Fatalf("write after restart: %v", err)
			}
			if e := res.(*pb.Event); e.Index != next {
				t.Errorf("first event after restart has index %d, want %d", e.Index, next)
			}
			if fatals.Load() != 0 {
				t.Error("OnFatal called")
			}
		})
	}
}

// bufSink is a raft.SnapshotSink into memory.
type bufSink struct {
	bytes.Buffer
	failWrite         bool
	closed, cancelled bool
}

func (b *bufSink) Write(p []byte) (int, error) {
	if b.failWrite {
		return 0, errors.New("disk full")
	}
	return b.Buffer.Write(p)
}
func (b *bufSink) Close() error  { b.closed = true; return nil }
func (b *bufSink) ID() string    { return "test" }
func (b *bufSink) Cancel() error { b.cancelled = true; return nil }

// logsOf wraps commands into consecutive raft log entries from index first.
func logsOf(tb testing.TB, first uint64, cmds ...*pb.Command) []*raft.Log {
	tb.Helper()
	out := make([]*raft.Log, len(cmds))
	for i, c := range cmds {
		b, err := proto.Marshal(c)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = &raft.Log{Index: first + uint64(i), Term: 1, Type: raft.LogCommand, Data: b}
	}
	return out
}

// busyHistory is a long, varied command history over the fixture.
func busyHistory() []*pb.Command {
	cmds := fixture()
	for i := range 200 {
		id := fmt.Sprintf("t%03d", i)
		cmds = append(cmds,
			cmdAt(cTaskCreate, &pb.TaskCreateCommand{Task: &pb.Task{Id: id, Kind: "clone", Params: map[string]string{"b": "2", "a": "1", "c": id}}}, t0+int64(i)),
			cmdAt(cTaskUpdate, &pb.TaskUpdateCommand{Id: id, Progress: 0.5}, t0+int64(i)))
		if i%3 == 0 {
			cmds = append(cmds, cmdAt(cTaskUpdate, &pb.TaskUpdateCommand{Id: id, State: pb.TaskState_TASK_STATE_SUCCEEDED}, t0+int64(i)))
		}
		st := pb.VMState_VM_STATE_RUNNING
		if i%2 == 0 {
			st = pb.VMState_VM_STATE_STOPPED
		}
		cmds = append(cmds, vmStatus("vm1", "n1", st))
	}
	cmds = append(cmds,
		cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n1", Status: map[string]*pb.NetworkStatus{"net1": {Applied: true}, "ovs1": {Error: "no bridge"}}}),
		cmd(cNetStatus, &pb.NetworkStatusCommand{Node: "n2", Status: map[string]*pb.NetworkStatus{"net1": {Applied: true}}}),
		cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{CpuOvercommit: 3}}))
	return cmds
}

func TestFSMSnapshotRestore(t *testing.T) {
	t.Parallel()
	var fatals atomic.Int64
	f := NewFSM(quiet, func(error) { fatals.Add(1) })
	logs := logsOf(t, 1, busyHistory()...)
	// Raft also hands configuration entries to a batching FSM.
	logs = append(logs, &raft.Log{Index: uint64(len(logs) + 1), Type: raft.LogConfiguration})
	for i := 0; i < len(logs); i += 64 {
		for j, r := range f.ApplyBatch(logs[i:min(i+64, len(logs))]) {
			if res, ok := r.(ApplyResult); ok && res.Err != nil {
				t.Fatalf("entry %d: %v", i+j+1, res.Err)
			}
		}
	}
	if idx, _ := f.Applied(); idx != uint64(len(logs)) {
		t.Errorf("applied index %d, want %d", idx, len(logs))
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &bufSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Errorf("sink closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}

	g := NewFSM(quiet, func(error) { fatals.Add(1) })
	_, woken := g.Applied()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	select {
	case <-woken:
	default:
		t.Error("Restore did not wake watchers")
	}

	var want, got *pb.State
	f.Read(func(s *State) { want = s.Export() })
	g.Read(func(s *State) { got = s.Export() })
	if !proto.Equal(want, got) {
		t.Fatal("restored state differs (proto.Equal)")
	}
	det := proto.MarshalOptions{Deterministic: true}
	wb, _ := det.Marshal(want)
	gb, _ := det.Marshal(got)
	if !bytes.Equal(wb, gb) {
		t.Fatal("restored state differs (deterministic bytes)")
	}
	// The snapshot also carries the applied index (not part of Export).
	var snapState pb.State
	if err := proto.Unmarshal(sink.Bytes(), &snapState); err != nil {
		t.Fatal(err)
	}
	applied, _ := f.Applied()
	if snapState.AppliedIndex != applied {
		t.Errorf("snapshot applied index %d, FSM applied %d", snapState.AppliedIndex, applied)
	}
	snapState.AppliedIndex = 0
	if sb, _ := det.Marshal(&snapState); !bytes.Equal(wb, sb) {
		t.Error("snapshot bytes are not the deterministic encoding of the state")
	}

	// Both replicas keep applying identically after the restore.
	next := logsOf(t, uint64(len(logs)+1), cmd(cEvent, &pb.EventCommand{Event: &pb.Event{Action: "after"}}), taskCmd("after"))
	f.ApplyBatch(next)
	g.ApplyBatch(next)
	var fb, gb2 []byte
	f.Read(func(s *State) { fb = exportBytes(t, s) })
	g.Read(func(s *State) { gb2 = exportBytes(t, s) })
	if !bytes.Equal(fb, gb2) {
		t.Error("original and restored FSM diverge on the same entries")
	}
	if fatals.Load() != 0 {
		t.Errorf("OnFatal called %d times", fatals.Load())
	}
}

func TestFSMSnapshotIsDeterministic(t *testing.T) {
	t.Parallel()
	// Two replicas fed the same log (in different batchings) must write
	// byte-identical snapshots, whatever Go's map order did.
	var outs [][]byte
	for _, batch := range []int{1, 7, 512} {
		f := NewFSM(quiet, nil)
		logs := logsOf(t, 1, busyHistory()...)
		for i := 0; i < len(logs); i += batch {
			f.ApplyBatch(logs[i:min(i+batch, len(logs))])
		}
		snap, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		sink := &bufSink{}
		if err := snap.Persist(sink); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, sink.Bytes())
	}
	for i := 1; i < len(outs); i++ {
		if !bytes.Equal(outs[0], outs[i]) {
			t.Errorf("snapshot %d differs from snapshot 0", i)
		}
	}
}

func TestFSMSnapshotErrors(t *testing.T) {
	t.Parallel()
	f := NewFSM(quiet, nil)
	f.ApplyBatch(logsOf(t, 1, fixture()...))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &bufSink{failWrite: true}
	if err := snap.Persist(sink); err == nil {
		t.Error("Persist hid a write error")
	}
	if !sink.cancelled {
		t.Error("Persist did not cancel the sink after a write error")
	}

	var before []byte
	f.Read(func(s *State) { before = exportBytes(t, s) })
	if err := f.Restore(io.NopCloser(bytes.NewReader([]byte{0xff, 0xff, 0xff}))); err == nil {
		t.Error("Restore accepted garbage")
	}
	var after []byte
	f.Read(func(s *State) { after = exportBytes(t, s) })
	if !bytes.Equal(before, after) {
		t.Error("a failed Restore changed the state")
	}
}

func TestFSMApplyBatchResults(t *testing.T) {
	t.Parallel()
	var fatals atomic.Int64
	f := NewFSM(quiet, func(error) { fatals.Add(1) })
	logs := logsOf(t, 1, taskCmd("a"), taskCmd("a"))
	logs = append(logs, &raft.Log{Index: 3, Type: raft.LogNoop})
	logs = append(logs, logsOf(t, 4, taskCmd("b"))...)
	out := f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("%d results for %d entries", len(out), len(logs))
	}
	if r, _ := out[0].(ApplyResult); r.Err != nil || r.Value.(*pb.Task).GetId() != "a" {
		t.Errorf("entry 1 = %#v, want the created task", out[0])
	}
	if r, _ := out[1].(ApplyResult); errdefs.KindOf(r.Err) != errdefs.KindExists {
		t.Errorf("entry 2 = %#v, want an exists error", out[1])
	}
	if out[2] != nil {
		t.Errorf("non-command entry produced %#v", out[2])
	}
	if r, _ := out[3].(ApplyResult); r.Err != nil {
		t.Errorf("entry 4 = %#v", out[3])
	}
	if idx, _ := f.Applied(); idx != 4 {
		t.Errorf("applied index %d, want 4", idx)
	}
	if fatals.Load() != 0 {
		t.Error("a domain error was treated as fatal")
	}
}

// countingObserver records what a Store reports for metrics.
type countingObserver struct{ commits, applies atomic.Int64 }

func (o *countingObserver) ObserveCommit(cluster string, d time.Duration) {
	if cluster == "c1" && d > 0 {
		o.commits.Add(1)
	}
}

func (o *countingObserver) ObserveApply(cluster string, d time.Duration) {
	if cluster == "c1" && d > 0 {
		o.applies.Add(1)
	}
}

func TestStoreObserver(t *testing.T) {
	t.Parallel()
	obs := &countingObserver{}
	_, tr := raft.NewInmemTransport("solo")
	s, err := Open(Config{Cluster: "c1", NodeID: "solo", InMemory: true, Transport: tr, Bootstrap: true, Logger: quiet,
		Observe: obs, HeartbeatTimeout: fast.heartbeat, ElectionTimeout: fast.election, LeaderLeaseTimeout: fast.lease})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, 10*time.Second, "the single node to lead", s.IsLeader)
	ctx := ctxT(t, 10*time.Second)
	// Let the bootstrap configuration entry apply before counting.
	if err := s.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	applies := obs.applies.Load()
	for i := range 3 {
		if _, err := s.Propose(ctx, taskCmd(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := obs.commits.Load(); n != 3 {
		t.Errorf("%d commit observations for 3 proposals", n)
	}
	if n := obs.applies.Load() - applies; n < 1 || n > 3 {
		t.Errorf("%d apply observations for 3 entries, want 1-3 (one per batch)", n)
	}
}

func TestStoreReadIndex(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, steady)
	ctx := ctxT(t, 30*time.Second)

	if _, err := c.follower().ReadIndex(ctx); errdefs.KindOf(err) != errdefs.KindUnavailable {
		t.Errorf("ReadIndex on a follower: err = %v, want unavailable", err)
	}
	var l *Store
	var idx uint64
	if err := c.onLeader(func(s *Store) error {
		l = s
		_, i, err := s.ApplyLocal(ctx, taskCmd("r1"))
		idx = i
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ri, err := l.ReadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ri < idx {
		t.Fatalf("ReadIndex = %d after a write at %d: a follower waiting for it could miss the write", ri, idx)
	}
	// A follower that applied the read index sees the write.
	f := c.follower()
	if err := f.WaitApplied(ctx, ri); err != nil {
		t.Fatal(err)
	}
	if !hasTask(f, "r1") {
		t.Errorf("%s applied the read index %d but misses the write at %d", f.NodeID(), ri, idx)
	}
	// Within a term, a read index writes nothing to the log (only the
	// first one of the term may go through a barrier).
	// A leadership change under load starts a new term (and its one
	// barrier): measure again then.
	for attempt := 0; ; attempt++ {
		l = c.leader(10 * time.Second)
		if _, err := l.ReadIndex(ctx); err != nil {
			if attempt < 5 && errdefs.KindOf(err) == errdefs.KindUnavailable {
				continue
			}
			t.Fatal(err)
		}
		term, last := l.Raft().CurrentTerm(), l.Raft().LastIndex()
		var err error
		for range 20 {
			if _, err = l.ReadIndex(ctx); err != nil {
				break
			}
		}
		if l.Raft().CurrentTerm() != term || err != nil {
			if attempt < 5 {
				continue
			}
			t.Fatalf("leadership kept changing: %v", err)
		}
		if got := l.Raft().LastIndex(); got != last {
			t.Errorf("20 read indexes in term %d grew the log from %d to %d entries", term, last, got)
		}
		break
	}
	// A write committed but not yet applied by the leader's FSM when the
	// read index is asked for is covered all the same (raft's own
	// applied index only says "handed to the FSM").
	release := make(chan struct{})
	hold := func() { <-release }
	l = c.leader(10 * time.Second)
	releaseOnce := sync.OnceFunc(func() { l.fsm.beforeBatch.Store(nil); close(release) })
	// A failure below must not leave raft's FSM blocked.
	t.Cleanup(releaseOnce)
	if _, err := l.ReadIndex(ctx); err != nil { // this term's barrier, before holding the FSM
		t.Fatal(err)
	}
	l.fsm.beforeBatch.Store(&hold)
	before := l.Raft().CommitIndex()
	wrote := make(chan error, 1)
	go func() {
		_, err := l.Propose(ctx, taskCmd("r2"))
		wrote <- err
	}()
	for l.Raft().CommitIndex() <= before {
		select {
		case err := <-wrote:
			t.Fatalf("write returned before it committed (leader change?): %v", err)
		case <-ctx.Done():
			t.Fatal("write never committed")
		case <-time.After(5 * time.Millisecond):
		}
	}
	committed := l.Raft().CommitIndex()
	got := make(chan uint64, 1)
	go func() {
		ri, err := l.ReadIndex(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- ri
	}()
	time.Sleep(100 * time.Millisecond) // let a wrong ReadIndex answer early
	releaseOnce()
	if ri := <-got; ri < committed {
		t.Errorf("ReadIndex = %d with entry %d committed but not applied: a reader would miss it", ri, committed)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}

	// A leader cut off from its followers cannot confirm it leads.
	c2 := newTestCluster(t, 2, fast)
	lone := c2.leader(10 * time.Second)
	if _, err := lone.ReadIndex(ctx); err != nil {
		t.Fatalf("ReadIndex with quorum: %v", err)
	}
	for id, s := range c2.stores {
		if s != lone {
			c2.kill(id)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = lone.ReadIndex(cctx)
	if errdefs.KindOf(err) != errdefs.KindUnavailable || !strings.Contains(err.Error(), "leader") {
		t.Errorf("ReadIndex without quorum: err = %v, want unavailable about leadership", err)
	}
}
