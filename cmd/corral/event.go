package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func eventRow(t *table, e *pb.Event) {
	t.row(fmt.Sprint(e.GetIndex()), timestamp(e.GetTimeUnixNano()), e.GetActor(), e.GetAction(), e.GetTarget(), e.GetResult(), e.GetMessage())
}

func eventTable(events []*pb.Event) *table {
	t := newTable("INDEX", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "MESSAGE")
	for _, e := range events {
		eventRow(t, e)
	}
	return t
}

func (a *app) eventCmd() *cobra.Command {
	var target string
	var limit int32
	var after uint64
	var follow bool
	list := &cobra.Command{
		Use:   "list",
		Short: "Show who did what, when, with what result",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Events.ListEvents(ctx, &pb.ListEventsRequest{Cluster: cluster, After: after, Limit: limit, Target: target})
				if err != nil {
					return err
				}
				if !follow {
					return a.print(resp, eventTable(resp.GetEvents()))
				}
				// Following prints the history then each new event as it
				// comes, one per line in every format.
				last := after
				if a.output == "table" {
					if err := newTable("INDEX", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "MESSAGE").write(a.out); err != nil {
						return err
					}
				}
				show := func(e *pb.Event) error {
					last = max(last, e.GetIndex())
					t := newTable()
					eventRow(t, e)
					return a.printLine(e, t)
				}
				for _, e := range resp.GetEvents() {
					if err := show(e); err != nil {
						return err
					}
				}
				stream, err := c.Events.WatchEvents(ctx, &pb.WatchEventsRequest{Cluster: cluster, After: last})
				if err != nil {
					return err
				}
				for {
					r, err := stream.Recv()
					if err != nil {
						if ctx.Err() != nil || errors.Is(err, io.EOF) {
							return nil // interrupted by the user, or the server closed
						}
						return err
					}
					// The watch has no target filter: apply --target here.
					if e := r.GetEvent(); target == "" || e.GetTarget() == target {
						if err := show(e); err != nil {
							return err
						}
					}
				}
			})
		},
	}
	f := list.Flags()
	f.StringVar(&target, "target", "", "only events about this object")
	f.Int32Var(&limit, "limit", 0, "at most this many (the most recent; default: the server's)")
	f.Uint64Var(&after, "after", 0, "only events after this index")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	return group("event", "Read the cluster's event log", list)
}
