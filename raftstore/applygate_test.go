package raftstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
)

// TestApplyGateQueue checks the queue without a raft behind it: a
// proposal withdrawn before the submitter took it is never handed to raft,
// one already taken cannot be withdrawn, and a wave keeps the order of
// submission.
func TestApplyGateQueue(t *testing.T) {
	g := &applyGate{wake: make(chan struct{}, 1)}
	newP := func() *proposal { return &proposal{result: make(chan applyOutcome, 1)} }
	a, b, c := newP(), newP(), newP()
	for _, p := range []*proposal{a, b, c} {
		if !g.submit(p) {
			t.Fatal("submit on an open gate failed")
		}
	}
	if !g.cancel(b) {
		t.Error("cancel of a queued proposal failed")
	}
	got := g.take()
	if len(got) != 2 || got[0] != a || got[1] != c {
		t.Errorf("take = %v, want [a c]", got)
	}
	if g.cancel(a) {
		t.Error("cancel of a proposal already handed to raft succeeded")
	}
	if rest := g.take(); len(rest) != 0 {
		t.Errorf("queue not emptied: %d left", len(rest))
	}

	// A wave holds at most one raft batch; the rest waits its turn.
	for range applyWaveMax + 3 {
		g.submit(newP())
	}
	if n := len(g.take()); n != applyWaveMax {
		t.Errorf("first wave = %d proposals, want %d", n, applyWaveMax)
	}
	if n := len(g.take()); n != 3 {
		t.Errorf("second wave = %d proposals, want 3", n)
	}
}

// TestApplyLocalConcurrent has many proposers at once: each gets its own
// result and log index, and every command is applied exactly once.
func TestApplyLocalConcurrent(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 3, steady)
	ctx := ctxT(t, 30*time.Second)
	const n = 200
	var (
		mu      sync.Mutex
		indexes = map[uint64]string{}
		wg      sync.WaitGroup
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("t%03d", i)
			err := c.onLeader(func(l *Store) error {
				v, idx, err := l.ApplyLocal(ctx, taskCmd(id))
				if err != nil {
					return err
				}
				if task, ok := v.(*pb.Task); !ok || task.Id != id {
					return fmt.Errorf("result %v, want task %s", v, id)
				}
				mu.Lock()
				defer mu.Unlock()
				if other, dup := indexes[idx]; dup {
					return fmt.Errorf("%s and %s share index %d", id, other, idx)
				}
				indexes[idx] = id
				return nil
			})
			if err != nil && !(errdefs.KindOf(err) == errdefs.KindExists) {
				t.Errorf("%s: %v", id, err)
			}
		}()
	}
	wg.Wait()
	c.converge(ctx)
	leader := c.leader(10 * time.Second)
	for i := range n {
		if id := fmt.Sprintf("t%03d", i); !hasTask(leader, id) {
			t.Errorf("task %s missing", id)
		}
	}
}

// TestApplyLocalAfterClose fails cleanly instead of waiting forever.
func TestApplyLocalAfterClose(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 1, fast)
	s := c.live("node1")
	c.kill("node1")
	_, _, err := s.ApplyLocal(context.Background(), taskCmd("late"))
	if errdefs.KindOf(err) != errdefs.KindUnavailable {
		t.Errorf("ApplyLocal after Close: err = %v, want unavailable", err)
	}
}

// TestApplyGateCloseAnswersAll: closing answers every queued proposal,
// however many waves they fill, so no caller waits forever.
func TestApplyGateCloseAnswersAll(t *testing.T) {
	g := &applyGate{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	close(g.done) // no run loop: proposals stay queued as behind a stuck raft
	var ps []*proposal
	for range 2*applyWaveMax + 10 {
		p := &proposal{result: make(chan applyOutcome, 1)}
		if !g.submit(p) {
			t.Fatal("submit on an open gate failed")
		}
		ps = append(ps, p)
	}
	g.close()
	for i, p := range ps {
		select {
		case out := <-p.result:
			if out.err == nil || out.f != nil {
				t.Fatalf("proposal %d: outcome %+v, want a shutdown error and no future", i, out)
			}
		default:
			t.Fatalf("proposal %d of %d not answered by close", i, len(ps))
		}
	}
	if g.submit(&proposal{result: make(chan applyOutcome, 1)}) {
		t.Error("submit after close succeeded")
	}
}
