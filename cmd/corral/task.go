package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func (a *app) taskTable(tasks []*pb.Task) *table {
	t := newTable("ID", "KIND", "TARGET", "STATE", "PROGRESS", "NODE", "AGE", "MESSAGE")
	for _, x := range tasks {
		msg := x.GetMessage()
		if x.GetError() != "" {
			msg = x.GetError()
		}
		t.row(x.GetId(), x.GetKind(), x.GetTarget(), taskState(x.GetState()), fmt.Sprintf("%.0f%%", 100*x.GetProgress()),
			x.GetNode(), a.age(x.GetCreatedUnixNano()), msg)
	}
	return t
}

func listTaskIDs(ctx context.Context, c *client.Client, cluster string) ([]string, error) {
	resp, err := c.Tasks.ListTasks(ctx, &pb.ListTasksRequest{Cluster: cluster})
	var out []string
	for _, t := range resp.GetTasks() {
		if !client.Done(t) {
			out = append(out, t.GetId())
		}
	}
	return out, err
}

func (a *app) taskCmd() *cobra.Command {
	complete := a.completeNames(listTaskIDs)
	list := &cobra.Command{
		Use:   "list",
		Short: "List long operations",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Tasks.ListTasks(ctx, &pb.ListTasksRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				return a.print(resp, a.taskTable(resp.GetTasks()))
			})
		},
	}
	show := &cobra.Command{
		Use:               "show ID",
		Short:             "Show a task",
		Args:              argNames("ID"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Tasks.GetTask(ctx, &pb.GetTaskRequest{Cluster: cluster, Id: args[0]})
				if err != nil {
					return err
				}
				return a.print(resp.GetTask(), nil)
			})
		},
	}
	watch := &cobra.Command{
		Use:               "watch ID",
		Short:             "Follow a task until it ends (exit 1 if it fails)",
		Args:              argNames("ID"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				return a.finishTask(ctx, c, cluster, &pb.Task{Id: args[0]}, false)
			})
		},
	}
	cancel := &cobra.Command{
		Use:               "cancel ID",
		Short:             "Ask a running task to stop",
		Args:              argNames("ID"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Tasks.CancelTask(ctx, &pb.CancelTaskRequest{Cluster: cluster, Id: args[0]})
				if err != nil {
					return err
				}
				return a.print(resp.GetTask(), a.taskTable([]*pb.Task{resp.GetTask()}))
			})
		},
	}
	return group("task", "Follow long operations", list, show, watch, cancel)
}
