package raftstore

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

// Meta is what apply functions know about a command besides its payload:
// the proposer's clock and identity, carried in the log entry so that every
// replica computes the same result.
type Meta struct {
	Time  int64
	Actor string
	Index uint64
}

// handler is one command type's validation and application. check runs
// both before proposing (on the proposer's view) and again inside apply, so
// a command that became invalid in between fails the same way everywhere.
type handler struct {
	newPayload func() proto.Message
	check      func(*State, proto.Message, Meta) error
	apply      func(*State, proto.Message, Meta) any
}

var handlers = map[pb.CommandType]handler{}

// register adds a typed command. Each command file calls it from init.
func register[M proto.Message](t pb.CommandType, check func(*State, M, Meta) error, apply func(*State, M, Meta) any) {
	var zero M
	handlers[t] = handler{
		newPayload: func() proto.Message { return zero.ProtoReflect().New().Interface() },
		check:      func(s *State, m proto.Message, meta Meta) error { return check(s, m.(M), meta) },
		apply:      func(s *State, m proto.Message, meta Meta) any { return apply(s, m.(M), meta) },
	}
}

// NewCommand wraps a payload into an envelope.
func NewCommand(t pb.CommandType, payload proto.Message, now int64, actor string) (*pb.Command, error) {
	b, err := proto.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("marshal %s payload: %w", t, err)
	}
	return &pb.Command{Type: t, TimeUnixNano: now, Actor: actor, Payload: b}, nil
}

// DecodeError is an entry that cannot be decoded. Replicas must not skip
// it (they would diverge), so the FSM treats it as fatal.
type DecodeError struct{ Err error }

func (e *DecodeError) Error() string { return "undecodable command: " + e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

func decodePayload(c *pb.Command) (handler, proto.Message, error) {
	h, ok := handlers[c.Type]
	if !ok {
		return handler{}, nil, &DecodeError{fmt.Errorf("unknown command type %d", c.Type)}
	}
	m := h.newPayload()
	if err := proto.Unmarshal(c.Payload, m); err != nil {
		return handler{}, nil, &DecodeError{fmt.Errorf("%s payload: %w", c.Type, err)}
	}
	return h, m, nil
}

// Check validates a command against s without changing it.
func Check(s *State, c *pb.Command) error {
	h, m, err := decodePayload(c)
	if err != nil {
		return errdefs.Invalid("%v", err)
	}
	return h.check(s, m, Meta{Time: c.TimeUnixNano, Actor: c.Actor})
}

// ApplyCommand validates and applies c to s. It returns the apply result
// (often the changed object) or a domain error; a *DecodeError means the
// entry is corrupt.
func ApplyCommand(s *State, c *pb.Command, index uint64) (any, error) {
	h, m, err := decodePayload(c)
	if err != nil {
		return nil, err
	}
	meta := Meta{Time: c.TimeUnixNano, Actor: c.Actor, Index: index}
	if err := h.check(s, m, meta); err != nil {
		return nil, err
	}
	return h.apply(s, m, meta), nil
}

// ApplyResult is what raft's Apply future returns for one entry.
type ApplyResult struct {
	Value any
	Err   error
}

// FSM adapts State to raft.FSM. Reads take the read lock; apply the write
// lock. Every applied entry bumps the revision and wakes waiters.
type FSM struct {
	log          *slog.Logger
	onFatal      func(error)
	observeApply func(time.Duration)

	// beforeBatch, set by tests only, runs before each batch is applied
	// (to hold the FSM back behind raft).
	beforeBatch atomic.Pointer[func()]

	mu      sync.RWMutex
	state   *State
	applied uint64
	changed chan struct{}
}

// NewFSM returns an FSM over an empty state. onFatal is called with an
// undecodable entry; it must stop the node (the default logs and exits).
func NewFSM(log *slog.Logger, onFatal func(error)) *FSM {
	return &FSM{log: log, onFatal: onFatal, state: NewState(), changed: make(chan struct{})}
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: a whole batch under one lock.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	if hook := f.beforeBatch.Load(); hook != nil {
		(*hook)()
	}
	out := make([]any, len(logs))
	start := time.Now()
	f.mu.Lock()
	for i, l := range logs {
		f.applied = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		var c pb.Command
		if err := proto.Unmarshal(l.Data, &c); err != nil {
			f.fatal(&DecodeError{fmt.Errorf("entry %d: %w", l.Index, err)})
			out[i] = ApplyResult{Err: err}
			continue
		}
		v, err := ApplyCommand(f.state, &c, l.Index)
		var de *DecodeError
		if asDecode(err, &de) {
			f.fatal(fmt.Errorf("entry %d: %w", l.Index, err))
		}
		out[i] = ApplyResult{Value: v, Err: err}
	}
	f.notifyLocked()
	f.mu.Unlock()
	if f.observeApply != nil {
		f.observeApply(time.Since(start))
	}
	return out
}

func asDecode(err error, de **DecodeError) bool {
	if err == nil {
		return false
	}
	e, ok := err.(*DecodeError)
	if ok {
		*de = e
	}
	return ok
}

func (f *FSM) fatal(err error) {
	f.log.Error("fatal: cannot apply raft entry; stopping so replicas do not diverge", "err", err)
	if f.onFatal != nil {
		f.onFatal(err)
	}
}

func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Read runs fn with the state under the read lock. fn must not keep
// references to mutate; stored messages are never changed in place, so it
// may keep them to read.
func (f *FSM) Read(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// Applied returns the index of the last applied entry and a channel that
// closes at the next change.
func (f *FSM) Applied() (uint64, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied, f.changed
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.state.Export()
	st.AppliedIndex = f.applied
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore: read: %w", err)
	}
	var m pb.State
	if err := proto.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("restore: decode: %w", err)
	}
	f.mu.Lock()
	f.state = Import(&m)
	// Raft does not replay barrier and no-op entries to the FSM: keep the
	// snapshot's index so read-index waits do not hang after a restore.
	f.applied = m.AppliedIndex
	f.notifyLocked()
	f.mu.Unlock()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s snapshot) Release() {}
