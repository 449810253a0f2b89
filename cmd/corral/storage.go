package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func poolTable(pools []*pb.StoragePool) *table {
	t := newTable("NAME", "KIND", "LOCATION", "USER")
	for _, p := range pools {
		loc := p.GetPath()
		if p.GetKind() == "rbd" {
			loc = p.GetCephPool() + "@" + strings.Join(p.GetMonitors(), ",")
		}
		t.row(p.GetName(), p.GetKind(), loc, p.GetUser())
	}
	return t
}

func (a *app) storageCmd() *cobra.Command {
	complete := a.completeNames(listPoolNames)
	var kind, path, cephPool, user, key, keyFile string
	var monitors []string
	add := &cobra.Command{
		Use:   "add NAME --kind dir|rbd",
		Short: "Declare a storage pool",
		Example: "  corral storage add local --kind dir --path /var/lib/corral/images\n" +
			"  corral storage add ceph --kind rbd --monitors 10.0.0.1:6789,10.0.0.2:6789 --ceph-pool rbd --user corral --key-file corral.key",
		Args: argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key != "" && keyFile != "" {
				return usageErrorf("give --key or --key-file, not both")
			}
			if keyFile != "" {
				data, err := os.ReadFile(keyFile)
				if err != nil {
					return fmt.Errorf("--key-file: %w", err)
				}
				key = strings.TrimSpace(string(data))
			}
			pool := &pb.StoragePool{Name: args[0], Kind: kind, Path: path, Monitors: monitors, CephPool: cephPool, User: user}
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Storage.AddPool(ctx, &pb.AddPoolRequest{Cluster: cluster, Pool: pool, Key: key})
				if err != nil {
					return err
				}
				return a.print(resp.GetPool(), poolTable([]*pb.StoragePool{resp.GetPool()}))
			})
		},
	}
	f := add.Flags()
	f.StringVar(&kind, "kind", "", "dir (a directory on each node) or rbd (Ceph, shared)")
	f.StringVar(&path, "path", "", "dir: directory on the nodes")
	f.StringSliceVar(&monitors, "monitors", nil, "rbd: Ceph monitor addresses, comma-separated")
	f.StringVar(&cephPool, "ceph-pool", "", "rbd: Ceph pool name")
	f.StringVar(&user, "user", "", "rbd: cephx user (without 'client.')")
	f.StringVar(&key, "key", "", "rbd: cephx key (prefer --key-file)")
	f.StringVar(&keyFile, "key-file", "", "rbd: file holding the cephx key")
	_ = add.MarkFlagRequired("kind")

	listPools := func(ctx context.Context, c *client.Client, cluster string) (*pb.ListPoolsResponse, error) {
		return c.Storage.ListPools(ctx, &pb.ListPoolsRequest{Cluster: cluster})
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List storage pools",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := listPools(ctx, c, cluster)
				if err != nil {
					return err
				}
				return a.print(resp, poolTable(resp.GetPools()))
			})
		},
	}
	show := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a storage pool",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := listPools(ctx, c, cluster)
				if err != nil {
					return err
				}
				// The API has no GetPool: pick it from the list.
				for _, p := range resp.GetPools() {
					if p.GetName() == args[0] {
						return a.print(p, nil)
					}
				}
				return fmt.Errorf("storage pool %s not found in cluster %s", args[0], cluster)
			})
		},
	}
	remove := &cobra.Command{
		Use:               "remove NAME",
		Short:             "Remove a storage pool that holds no volume",
		Args:              argNames("NAME"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				if _, err := c.Storage.RemovePool(ctx, &pb.RemovePoolRequest{Cluster: cluster, Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Storage pool %s removed\n", args[0])
				return nil
			})
		},
	}
	return group("storage", "Manage storage pools", add, list, show, remove)
}
