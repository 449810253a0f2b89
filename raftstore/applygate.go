package raftstore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/minet/corral/errdefs"
)

// Group commit on the leader.
//
// Every raft batch costs one log fsync on the leader and one on each
// follower, whatever its size, so the number of batches per second is
// what bounds commits (all the more when members share a disk, as in the
// lab). Left to itself, raft dispatches whatever is in its apply channel
// each time its loop comes round and pipelines the batches: with many
// concurrent proposers the entries get split into many small batches in
// flight at once (about 19 entries per batch, 3 to 6 batches in flight with
// 64 proposers), each paying its own fsyncs on every member, and their
// fsyncs then queue behind each other on the disk.
//
// The gate hands proposals to raft in waves: all the proposals that
// queued while earlier waves were in flight go to raft.Apply back to back,
// so raft stores and replicates them as one batch, and at most
// applyWaveDepth waves are in flight at a time. A lone proposer never
// waits: with nothing in flight its proposal goes to raft at once.
//
// The gate only paces calls to raft.Apply: each command is still its own
// log entry, so the log format and apply are unchanged.
const (
	applyWaveDepth = 2
	applyWaveMax   = 512 // raft's MaxAppendEntries: one dispatch
)

// proposal is one encoded command waiting for, or handed to, raft.
type proposal struct {
	data     []byte
	deadline time.Time // zero: DefaultApplyTimeout
	// Guarded by applyGate.mu: taken once the submitter owns it,
	// cancelled once the proposer gave up before that.
	taken, cancelled bool
	result           chan applyOutcome // buffered: the sender never blocks
}

type applyOutcome struct {
	f   raft.ApplyFuture // nil when the proposal never reached raft
	err error
}

// wave is the set of proposals handed to raft together.
type wave struct {
	pending atomic.Int64
	done    chan struct{}
}

func (w *wave) finishOne() {
	if w.pending.Add(-1) == 0 {
		close(w.done)
	}
}

type applyGate struct {
	raft *raft.Raft

	mu     sync.Mutex
	queue  []*proposal
	closed bool

	wake chan struct{} // capacity 1: a proposal was queued
	stop chan struct{}
	done chan struct{}
}

func newApplyGate(r *raft.Raft) *applyGate {
	g := &applyGate{raft: r, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go g.run()
	return g
}

// submit queues p; false if the gate is closed.
func (g *applyGate) submit(p *proposal) bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.queue = append(g.queue, p)
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	return true
}

// cancel withdraws p if it did not reach raft yet: true means it never
// will, so the command is certainly not applied.
func (g *applyGate) cancel(p *proposal) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p.taken {
		return false
	}
	p.cancelled = true
	return true
}

// take removes up to applyWaveMax live proposals from the queue.
func (g *applyGate) take() []*proposal {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*proposal
	n := 0
	for _, p := range g.queue {
		n++
		if p.cancelled {
			continue
		}
		p.taken = true
		out = append(out, p)
		if len(out) == applyWaveMax {
			break
		}
	}
	rest := copy(g.queue, g.queue[n:])
	clear(g.queue[rest:])
	g.queue = g.queue[:rest]
	return out
}

func (g *applyGate) close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.mu.Unlock()
	close(g.stop)
	<-g.done
	for ps := g.take(); len(ps) > 0; ps = g.take() {
		for _, p := range ps {
			p.result <- applyOutcome{err: raft.ErrRaftShutdown}
		}
	}
}

// stopped closes when the gate closes: an entry raft had queued but not
// stored when it shut down is never answered, so callers stop waiting.
func (g *applyGate) stopped() <-chan struct{} { return g.stop }

func (g *applyGate) run() {
	defer close(g.done)
	var inflight []*wave // oldest first
	for {
		// Retire finished waves.
		for len(inflight) > 0 && isClosed(inflight[0].done) {
			inflight = inflight[1:]
		}
		if len(inflight) < applyWaveDepth {
			if ps := g.take(); len(ps) > 0 {
				inflight = append(inflight, g.send(ps))
				continue
			}
		}
		// Wait for a proposal (if a wave may start) or for the oldest
		// wave to finish.
		var wake <-chan struct{}
		if len(inflight) < applyWaveDepth {
			wake = g.wake
		}
		var oldest <-chan struct{}
		if len(inflight) > 0 {
			oldest = inflight[0].done
		}
		select {
		case <-g.stop:
			return
		case <-wake:
		case <-oldest:
		}
	}
}

// send hands ps to raft back to back and returns their wave.
func (g *applyGate) send(ps []*proposal) *wave {
	w := &wave{done: make(chan struct{})}
	w.pending.Store(int64(len(ps)))
	for _, p := range ps {
		timeout := DefaultApplyTimeout
		if !p.deadline.IsZero() {
			timeout = time.Until(p.deadline)
		}
		if timeout <= 0 {
			p.result <- applyOutcome{err: errdefs.Unavailable("deadline passed before the write was proposed")}
			w.finishOne()
			continue
		}
		f := g.raft.Apply(p.data, timeout)
		go func() {
			err := f.Error()
			p.result <- applyOutcome{f: f, err: err}
			w.finishOne()
		}()
	}
	return w
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
