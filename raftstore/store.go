// Package raftstore holds one cluster's replicated state: a hashicorp/raft
// group (boltdb log and stable store, file snapshots, a TLS transport) and
// the FSM that applies typed commands to the in-memory State.
//
// Writes go one way: a caller builds a typed command, Propose checks it
// against the local state, then applies it on the leader (forwarding it
// there from a follower) and waits until the local FSM has applied it, so a
// caller reads its own write on any node.
package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

// Defaults for a Store; each is overridable in Config.
const (
	DefaultHeartbeatTimeout   = 1000 * time.Millisecond
	DefaultElectionTimeout    = 1000 * time.Millisecond
	DefaultLeaderLeaseTimeout = 500 * time.Millisecond
	DefaultApplyTimeout       = 10 * time.Second
	// DefaultCommitTimeout bounds how long a follower may go without
	// learning the leader's commit index when writes stop: raft sends
	// it only with replication (heartbeats do not carry it), and at
	// raft's default of 50 ms (staggered up to 100 ms) a write proposed
	// on a follower waited 50-100 ms for that follower to apply it.
	DefaultCommitTimeout     = 5 * time.Millisecond
	DefaultSnapshotThreshold = 8192
	DefaultTrailingLogs      = 10240

	// raftLogCacheSize is how many recent log entries stay in memory
	// for replication and apply: two full raft batches.
	raftLogCacheSize = 1024
)

// Forwarder sends a command to the leader and returns its log index.
type Forwarder func(ctx context.Context, leaderID, leaderAddr string, cmd *pb.Command) (uint64, error)

// Config configures one Raft group.
type Config struct {
	Cluster  string
	NodeID   string
	Dir      string // data directory of this group on this node
	RaftAddr string // host:port to bind and advertise

	ServerTLS, ClientTLS *tls.Config // nil: plain TCP (tests only)

	// Transport, when set, replaces the TCP transport (in-memory tests);
	// InMemory then also keeps logs and snapshots in memory.
	Transport raft.Transport
	InMemory  bool

	Bootstrap bool // form a new single-node cluster if there is no state
	Forward   Forwarder
	Logger    *slog.Logger
	OnFatal   func(error)

	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	CommitTimeout                                         time.Duration // 0: DefaultCommitTimeout
	SnapshotThreshold                                     uint64

	// Observe, when set, receives the commit latency of each entry this
	// node proposed as leader (propose to applied) and the FSM time of
	// each applied batch, for metrics.
	Observe Observer
}

// Observer receives latencies for metrics.
type Observer interface {
	ObserveCommit(cluster string, d time.Duration)
	ObserveApply(cluster string, d time.Duration)
}

// Store is one Raft group and its state.
type Store struct {
	cfg  Config
	log  *slog.Logger
	raft *raft.Raft
	fsm  *FSM
	gate *applyGate
	logs raft.LogStore // ReadIndex reads entry types
	// readTerm is the term in which ReadIndex last went through a
	// barrier.
	readTerm atomic.Uint64
	trans    raft.Transport
	close    []func() error

	obsMu     sync.Mutex
	observers []chan bool
}

// Open starts (or restarts from cfg.Dir) a Raft group.
func Open(cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("cluster", cfg.Cluster, "node", cfg.NodeID)
	if cfg.OnFatal == nil {
		cfg.OnFatal = func(err error) {
			log.Error("stopping: raft log cannot be applied", "err", err)
			os.Exit(70)
		}
	}
	s := &Store{cfg: cfg, log: log, fsm: NewFSM(log, cfg.OnFatal)}
	if cfg.Observe != nil {
		s.fsm.observeApply = func(d time.Duration) { cfg.Observe.ObserveApply(cfg.Cluster, d) }
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = orDur(cfg.HeartbeatTimeout, DefaultHeartbeatTimeout)
	rc.ElectionTimeout = orDur(cfg.ElectionTimeout, DefaultElectionTimeout)
	rc.LeaderLeaseTimeout = orDur(cfg.LeaderLeaseTimeout, DefaultLeaderLeaseTimeout)
	rc.SnapshotThreshold = DefaultSnapshotThreshold
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	rc.TrailingLogs = DefaultTrailingLogs
	rc.CommitTimeout = orDur(cfg.CommitTimeout, DefaultCommitTimeout)
	rc.MaxAppendEntries = 512
	rc.BatchApplyCh = true
	rc.PreVoteDisabled = false
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})

	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if cfg.InMemory {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("raft dir: %w", err)
		}
		// The freelist is rebuilt at open instead of written at every
		// commit: fewer pages per fsync on the hot path (as Consul does).
		bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db"),
			BoltOptions: &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", cfg.Dir, err)
		}
		s.close = append(s.close, bolt.Close)
		// Raft reads back every entry it just wrote: the leader to send
		// it to each follower, every member to apply it. The cache
		// serves these reads from memory instead of a bolt read and a
		// msgpack decode each.
		cached, err := raft.NewLogCache(raftLogCacheSize, bolt)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("raft log cache: %w", err)
		}
		logs, stable = cached, bolt
		fs, err := raft.NewFileSnapshotStore(cfg.Dir, 2, io.Discard)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("snapshot store: %w", err)
		}
		snaps = fs
	}

	trans := cfg.Transport
	if trans == nil {
		stream, err := newTLSStream(cfg.RaftAddr, cfg.ServerTLS, cfg.ClientTLS)
		if err != nil {
			s.closeAll()
			return nil, err
		}
		nt := raft.NewNetworkTransport(stream, 8, 10*time.Second, io.Discard)
		trans = nt
		s.close = append(s.close, nt.Close)
	}
	s.trans = trans

	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("raft state: %w", err)
	}
	s.logs = logs
	r, err := raft.NewRaft(rc, s.fsm, logs, stable, snaps, trans)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	s.gate = newApplyGate(r)
	if cfg.Bootstrap && !existing {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil {
			s.Close()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	go s.watchLeadership()
	return s, nil
}

func orDur(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

func (s *Store) closeAll() {
	for i := len(s.close) - 1; i >= 0; i-- {
		_ = s.close[i]()
	}
}

// Close stops the Raft group (the data stays on disk).
func (s *Store) Close() error {
	var err error
	if s.raft != nil {
		err = s.raft.Shutdown().Error()
	}
	if s.gate != nil {
		s.gate.close()
	}
	s.closeAll()
	return err
}

// Cluster is the name of the group.
func (s *Store) Cluster() string { return s.cfg.Cluster }

// NodeID is this node's ID in the group.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// Raft exposes the underlying raft for status and membership.
func (s *Store) Raft() *raft.Raft { return s.raft }

// FSM returns the state machine.
func (s *Store) FSM() *FSM { return s.fsm }

// Read runs fn on the local state under the read lock.
func (s *Store) Read(fn func(*State)) { s.fsm.Read(fn) }

// IsLeader reports whether this node leads the group.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's ID and raft address, empty if unknown.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// Propose checks cmd against the local state, has the leader apply it and
// waits until this node applied it. It returns the apply result.
func (s *Store) Propose(ctx context.Context, cmd *pb.Command) (any, error) {
	var err error
	s.Read(func(st *State) { err = Check(st, cmd) })
	if err != nil {
		return nil, err
	}
	if s.IsLeader() {
		v, _, err := s.ApplyLocal(ctx, cmd)
		return v, err
	}
	id, addr := s.Leader()
	if id == "" || s.cfg.Forward == nil {
		return nil, errdefs.Unavailable("cluster %s has no leader right now (no quorum?): retry in a few seconds", s.cfg.Cluster)
	}
	idx, err := s.cfg.Forward(ctx, id, addr, cmd)
	if err != nil {
		return nil, err
	}
	if err := s.WaitApplied(ctx, idx); err != nil {
		return nil, err
	}
	return nil, nil
}

// ApplyLocal applies cmd through this node, which must be the leader.
// Concurrent calls are handed to raft in waves (see applyGate) so that
// they share log batches and fsyncs.
func (s *Store) ApplyLocal(ctx context.Context, cmd *pb.Command) (any, uint64, error) {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return nil, 0, fmt.Errorf("encode command: %w", err)
	}
	start := time.Now()
	p := &proposal{data: b, result: make(chan applyOutcome, 1)}
	if dl, ok := ctx.Deadline(); ok {
		p.deadline = dl
	}
	if !s.gate.submit(p) {
		return nil, 0, errdefs.Unavailable("cluster %s: %v: retry in a few seconds", s.cfg.Cluster, raft.ErrRaftShutdown)
	}
	var out applyOutcome
	select {
	case out = <-p.result:
	case <-s.gate.stopped():
		if s.gate.cancel(p) {
			return nil, 0, errdefs.Unavailable("cluster %s: %v: the write was not applied; retry in a few seconds", s.cfg.Cluster, raft.ErrRaftShutdown)
		}
		select {
		case out = <-p.result:
		default:
			return nil, 0, errdefs.Unavailable("cluster %s: raft shut down while the write was in flight; its outcome is unknown: check the state before retrying", s.cfg.Cluster)
		}
	case <-ctx.Done():
		if s.gate.cancel(p) {
			return nil, 0, errdefs.Wrap(errdefs.KindUnavailable, ctx.Err(), "cluster %s: the write was not proposed in time (no quorum?): it was not applied", s.cfg.Cluster)
		}
		// The entry may still commit: say so rather than invite a retry
		// that could apply it twice.
		return nil, 0, errdefs.Wrap(errdefs.KindUnavailable, ctx.Err(), "cluster %s did not confirm the write in time (no quorum?); its outcome is unknown: check the state before retrying", s.cfg.Cluster)
	}
	if err := out.err; err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
			errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrRaftShutdown) ||
			errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return nil, 0, errdefs.Unavailable("cluster %s: %v: retry in a few seconds", s.cfg.Cluster, err)
		}
		if out.f == nil {
			return nil, 0, err
		}
		return nil, 0, fmt.Errorf("apply: %w", err)
	}
	if s.cfg.Observe != nil {
		s.cfg.Observe.ObserveCommit(s.cfg.Cluster, time.Since(start))
	}
	res, _ := out.f.Response().(ApplyResult)
	return res.Value, out.f.Index(), res.Err
}

// WaitApplied blocks until the local FSM applied index (or ctx ends).
func (s *Store) WaitApplied(ctx context.Context, index uint64) error {
	for {
		applied, ch := s.fsm.Applied()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return errdefs.Unavailable("waiting for entry %d to apply locally: %v", index, ctx.Err())
		}
	}
}

// Watch returns the applied index and a channel closed at the next change:
// the blocking-query primitive readers use instead of polling.
func (s *Store) Watch() (uint64, <-chan struct{}) { return s.fsm.Applied() }

// Barrier makes a leader's reads linearizable: it returns once every entry
// committed before the call is applied locally.
func (s *Store) Barrier(ctx context.Context) error {
	if !s.IsLeader() {
		return errdefs.Unavailable("not the leader")
	}
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return errdefs.Unavailable("leadership not confirmed: %v", err)
	}
	timeout := DefaultApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := s.raft.Barrier(timeout).Error(); err != nil {
		return errdefs.Unavailable("barrier: %v", err)
	}
	return nil
}

// ReadIndex returns, on the leader, an applied index that covers every
// write committed before the call: a replica that has applied it serves
// linearizable reads (Raft's read index, thesis §6.4). Unlike Barrier it
// writes nothing to the log: the leader confirms with one heartbeat round
// that it still leads, after a single barrier per term (a new leader
// knows the commit index only once an entry of its term committed).
func (s *Store) ReadIndex(ctx context.Context) (uint64, error) {
	for attempt := 0; ; attempt++ {
		if !s.IsLeader() {
			return 0, errdefs.Unavailable("not the leader")
		}
		term := s.raft.CurrentTerm()
		if s.readTerm.Load() != term {
			if err := s.Barrier(ctx); err != nil {
				return 0, err
			}
			s.readTerm.Store(term)
		}
		commit := s.raft.CommitIndex()
		if err := s.raft.VerifyLeader().Error(); err != nil {
			return 0, errdefs.Unavailable("leadership not confirmed: %v", err)
		}
		if s.raft.CurrentTerm() != term {
			// Lost and won again meanwhile: the commit index read may
			// predate the new term's barrier.
			if attempt < 3 {
				continue
			}
			return 0, errdefs.Unavailable("leadership changing; retry")
		}
		idx, err := s.fsmIndexAt(ctx, commit)
		if err != nil {
			return 0, err
		}
		if err := s.WaitApplied(ctx, idx); err != nil {
			return 0, err
		}
		return idx, nil
	}
}

// fsmIndexAt returns the index of the last entry at or below commit that
// the FSM applies (commands and configurations; barriers and no-ops never
// reach it, so the FSM's applied index may never equal commit).
func (s *Store) fsmIndexAt(ctx context.Context, commit uint64) (uint64, error) {
	// raft hands entries to the FSM in order: once AppliedIndex (handed
	// over, not yet applied) reaches commit, every entry up to it is in
	// the FSM's queue and the log holds their types.
	for s.raft.AppliedIndex() < commit {
		select {
		case <-ctx.Done():
			return 0, errdefs.Unavailable("waiting for entry %d to reach the FSM: %v", commit, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	applied, _ := s.fsm.Applied()
	for i := commit; i > applied; i-- {
		var l raft.Log
		if err := s.logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				break // compacted into a snapshot: applied already
			}
			return 0, errdefs.Unavailable("read index: log entry %d: %v", i, err)
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i, nil
		}
	}
	return applied, nil
}

// AddVoter adds a member (leader only). Witnesses are voters too: they
// count for quorum; only the scheduler treats them differently.
func (s *Store) AddVoter(id, addr string) error {
	if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return errdefs.Unavailable("add %s to raft: %v", id, err)
	}
	return nil
}

// RemoveServer removes a member (leader only).
func (s *Store) RemoveServer(id string) error {
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return errdefs.Unavailable("remove %s from raft: %v", id, err)
	}
	return nil
}

// TransferLeadership hands leadership to id.
func (s *Store) TransferLeadership(id, addr string) error {
	return s.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr)).Error()
}

// Servers returns the Raft configuration.
func (s *Store) Servers() ([]raft.Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// ObserveLeadership returns a channel that receives true when this node
// becomes leader and false when it stops being leader.
func (s *Store) ObserveLeadership() <-chan bool {
	ch := make(chan bool, 4)
	s.obsMu.Lock()
	s.observers = append(s.observers, ch)
	s.obsMu.Unlock()
	if s.IsLeader() {
		ch <- true
	}
	return ch
}

func (s *Store) watchLeadership() {
	for l := range s.raft.LeaderCh() {
		s.log.Info("leadership changed", "leader", l)
		s.obsMu.Lock()
		for _, ch := range s.observers {
			select {
			case ch <- l:
			default:
				// A slow observer misses an edge; it re-checks IsLeader.
			}
		}
		s.obsMu.Unlock()
	}
}
