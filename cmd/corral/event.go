package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func eventRow(t *table, e *pb.Event) {
	t.row(fmt.Sprint(e.GetIndex()), timestamp(e.GetTimeUnixNano()), e.GetActor(), e.GetAction(), e.GetTarget(), e.GetResult(), e.GetMessage())
}

// eventWidths are the columns of a followed event list: rows come one at
// a time, so they cannot be aligned on the widest cell like a table.
var eventWidths = []int{7, 20, 18, 16, 16, 9}

// fixedRow pads each cell to its width (a longer cell pushes the rest, a
// column without a width is not padded); empty cells show as "-".
func fixedRow(cells []string, widths []int) string {
	var b strings.Builder
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(c)
		if i < len(widths) && i < len(cells)-1 {
			for n := len(c); n < widths[i]; n++ {
				b.WriteByte(' ')
			}
		}
	}
	return b.String()
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
					if _, err := fmt.Fprintln(a.out, fixedRow([]string{"INDEX", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "MESSAGE"}, eventWidths)); err != nil {
						return err
					}
				}
				show := func(e *pb.Event) error {
					last = max(last, e.GetIndex())
					t := newTable()
					eventRow(t, e)
					if a.output == "table" {
						_, err := fmt.Fprintln(a.out, fixedRow(t.rows[0], eventWidths))
						return err
					}
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
