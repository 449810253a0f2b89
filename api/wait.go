package api

import (
	"context"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/raftstore"
)

// waitState blocks until cond holds on the group's state, re-checking at
// each applied change (a blocking query, not a poll).
func waitState(ctx context.Context, g *cluster.Group, cond func(*raftstore.State) (bool, error)) error {
	for {
		_, ch := g.Store.Watch()
		var (
			done bool
			err  error
		)
		g.Store.Read(func(s *raftstore.State) { done, err = cond(s) })
		if done || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return errdefs.Wrap(errdefs.KindDeadline, ctx.Err(), "timed out waiting for the cluster")
		}
	}
}
