package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

// netStatus summarizes the per-node reports: "atlantis:ok discovery:ERR(…)".
func netStatus(n *pb.Network) string {
	nodes := make([]string, 0, len(n.GetStatus()))
	for node := range n.GetStatus() {
		nodes = append(nodes, node)
	}
	slices.Sort(nodes)
	parts := make([]string, 0, len(nodes))
	for _, node := range nodes {
		st := n.GetStatus()[node]
		s := "pending"
		switch {
		case st.GetError() != "":
			s = "ERR(" + st.GetError() + ")"
		case st.GetApplied():
			s = "ok"
		}
		parts = append(parts, node+":"+s)
	}
	return strings.Join(parts, " ")
}

func netTable(nets []*pb.Network) *table {
	t := newTable("NAME", "VLAN", "KIND", "UPLINK", "MTU", "STATUS")
	for _, n := range nets {
		uplink := n.GetUplink()
		if len(n.GetNodeUplinks()) > 0 {
			uplink += "+overrides"
		}
		mtu := ""
		if n.GetMtu() > 0 {
			mtu = fmt.Sprint(n.GetMtu())
		}
		t.row(n.GetName(), fmt.Sprint(n.GetVlan()), n.GetKind(), uplink, mtu, netStatus(n))
	}
	return t
}

// parseNodeUplinks reads node=IF pairs.
func parseNodeUplinks(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, a := range args {
		node, ifname, ok := strings.Cut(a, "=")
		if !ok || node == "" || ifname == "" {
			return nil, usageErrorf("--node-uplink %q: write NODE=INTERFACE", a)
		}
		out[node] = ifname
	}
	return out, nil
}

func (a *app) netCmd() *cobra.Command {
	complete := a.completeNames(listNetworkNames)
	var kind, uplink string
	var stp bool
	var vlan, mtu, priority int32
	var nodeUplinks []string
	create := &cobra.Command{
		Use:     "create NAME --vlan N --uplink IF",
		Short:   "Declare a VLAN network: every node gets a bridge for it",
		Example: "  corral net create vlan42 --vlan 42 --kind linux --uplink bond0 --node-uplink houston=eno2",
		Args:    argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ups, err := parseNodeUplinks(nodeUplinks)
			if err != nil {
				return err
			}
			net := &pb.Network{
				Name: args[0], Vlan: vlan, Kind: kind, Uplink: uplink, NodeUplinks: ups,
				Mtu: mtu, Stp: stp, Priority: priority,
			}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Networks.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: cluster, Network: net})
				if err != nil {
					return err
				}
				return a.print(resp.GetNetwork(), netTable([]*pb.Network{resp.GetNetwork()}))
			})
		},
	}
	cf := create.Flags()
	cf.Int32Var(&vlan, "vlan", 0, "VLAN id (0: untagged)")
	cf.StringVar(&kind, "kind", "linux", "bridge kind: linux or ovs")
	cf.StringVar(&uplink, "uplink", "", "uplink interface on the nodes")
	cf.StringArrayVar(&nodeUplinks, "node-uplink", nil, "NODE=INTERFACE for a node whose uplink differs (repeatable)")
	cf.Int32Var(&mtu, "mtu", 0, "MTU (default: the uplink's)")
	cf.BoolVar(&stp, "stp", false, "enable spanning tree on the bridge")
	cf.Int32Var(&priority, "priority", 0, "STP bridge priority")

	list := &cobra.Command{
		Use:   "list",
		Short: "List networks and how each node applied them",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Networks.ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: cluster, Consistent: a.consistent})
				if err != nil {
					return err
				}
				return a.print(resp, netTable(resp.GetNetworks()))
			})
		},
	}
	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a network",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Networks.GetNetwork(ctx, &pb.GetNetworkRequest{Cluster: cluster, Name: args[0], Consistent: a.consistent})
				if err != nil {
					return err
				}
				return a.print(resp.GetNetwork(), nil)
			})
		},
	}
	del := &cobra.Command{
		Use:               "delete NAME",
		Short:             "Delete a network no VM uses",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				if _, err := c.Networks.DeleteNetwork(ctx, &pb.DeleteNetworkRequest{Cluster: cluster, Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Network %s deleted\n", args[0])
				return nil
			})
		},
	}
	return group("net", "Manage VLAN networks", create, list, show, del)
}
