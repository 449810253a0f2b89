package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func nodeTable(nodes []*pb.Node, vmCount map[string]int) *table {
	t := newTable("NAME", "ROLE", "HEALTH", "READY", "CPUS", "MEMORY", "HYPERVISOR", "VMS", "MAINTENANCE", "FENCED")
	for _, n := range nodes {
		inv := n.GetInventory()
		cpus := ""
		if inv.GetCpus() > 0 {
			cpus = fmt.Sprint(inv.GetCpus())
		}
		t.row(n.GetName(), role(n.GetRole()), health(n.GetHealth()), yesNo(n.GetReady()), cpus,
			humanMiB(inv.GetMemoryMib()), inv.GetHypervisor(), fmt.Sprint(vmCount[n.GetName()]),
			flag(n.GetMaintenance()), flag(n.GetFenced()))
	}
	return t
}

func (a *app) nodeCmd() *cobra.Command {
	complete := a.completeNames(listNodeNames)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the nodes of the cluster",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Nodes.ListNodes(ctx, &pb.ListNodesRequest{Cluster: cluster, Consistent: a.consistent})
				if err != nil {
					return err
				}
				vms, err := c.VMs.ListVMs(ctx, &pb.ListVMsRequest{Cluster: cluster, Consistent: a.consistent})
				if err != nil {
					return err
				}
				count := map[string]int{}
				for _, v := range vms.GetVms() {
					count[v.GetNode()]++
				}
				return a.print(resp, nodeTable(resp.GetNodes(), count))
			})
		},
	}
	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a node and its VMs",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Nodes.GetNode(ctx, &pb.GetNodeRequest{Cluster: cluster, Name: args[0], Consistent: a.consistent})
				if err != nil {
					return err
				}
				return a.print(resp, renderFunc(func(w io.Writer) error {
					if err := a.yaml(w, resp.GetNode()); err != nil {
						return err
					}
					fmt.Fprintln(w)
					return a.vmTable(resp.GetVms()).write(w)
				}))
			})
		},
	}
	var allowRestart, noWait bool
	drain := &cobra.Command{
		Use:               "drain NAME",
		Short:             "Put a node in maintenance and move its VMs away",
		Long:              "Live-migrates every VM of the node elsewhere, showing progress until the node is empty; with --allow-restart, VMs that cannot migrate are stopped and started elsewhere.",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Nodes.DrainNode(ctx, &pb.DrainNodeRequest{Cluster: cluster, Name: args[0], AllowRestart: allowRestart})
				if err != nil {
					return err
				}
				return a.finishTask(ctx, c, cluster, resp.GetTask(), noWait)
			})
		},
	}
	drain.Flags().BoolVar(&allowRestart, "allow-restart", false, "stop and restart elsewhere the VMs that cannot live-migrate")
	drain.Flags().BoolVar(&noWait, "no-wait", false, "return once the drain started (follow it with corral task watch)")
	resume := &cobra.Command{
		Use:               "resume NAME",
		Short:             "Take a node out of maintenance",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Nodes.ResumeNode(ctx, &pb.ResumeNodeRequest{Cluster: cluster, Name: args[0]})
				if err != nil {
					return err
				}
				return a.print(resp.GetNode(), renderFunc(func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "Node %s is out of maintenance\n", resp.GetNode().GetName())
					return err
				}))
			})
		},
	}
	return group("node", "List nodes and move them in and out of maintenance", list, show, drain, resume)
}
