package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/minet/corral/client"
	pb "github.com/minet/corral/proto/corral/v1"
)

func nodeRole(witness bool) pb.NodeRole {
	if witness {
		return pb.NodeRole_NODE_ROLE_WITNESS
	}
	return pb.NodeRole_NODE_ROLE_VOTER
}

func (a *app) clusterCmd() *cobra.Command {
	var raftAddr string
	var witness bool
	initCmd := &cobra.Command{
		Use:   "init NAME",
		Short: "Create cluster NAME with this node as its first member (local socket)",
		Args:  argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withMode(cmd, localOnly, func(ctx context.Context, c *client.Client, _ string) error {
				resp, err := c.Cluster.InitCluster(ctx, &pb.InitClusterRequest{
					Cluster: args[0], RaftAddress: raftAddr, Role: nodeRole(witness),
				})
				if err != nil {
					return err
				}
				return a.printStatus(resp.GetStatus())
			})
		},
	}
	initCmd.Flags().StringVar(&raftAddr, "raft-addr", "", "host:port other members reach this node's Raft on (default: chosen by corrald)")
	initCmd.Flags().BoolVar(&witness, "witness", false, "vote only, never run VMs")

	var token, peer string
	joinCmd := &cobra.Command{
		Use:   "join NAME --token TOKEN --peer HOST:PORT",
		Short: "Make this node join cluster NAME (local socket)",
		Args:  argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withMode(cmd, localOnly, func(ctx context.Context, c *client.Client, _ string) error {
				resp, err := c.Cluster.JoinCluster(ctx, &pb.JoinClusterRequest{
					Cluster: args[0], Token: token, PeerAddress: peer, RaftAddress: raftAddr, Role: nodeRole(witness),
				})
				if err != nil {
					return err
				}
				return a.printStatus(resp.GetStatus())
			})
		},
	}
	joinCmd.Flags().StringVar(&token, "token", "", "join token from 'corral cluster token'")
	joinCmd.Flags().StringVar(&peer, "peer", "", "API address (host:port) of any member")
	joinCmd.Flags().StringVar(&raftAddr, "raft-addr", "", "host:port other members reach this node's Raft on")
	joinCmd.Flags().BoolVar(&witness, "witness", false, "vote only, never run VMs")
	_ = joinCmd.MarkFlagRequired("token")
	_ = joinCmd.MarkFlagRequired("peer")

	var ttl time.Duration
	var tokenWitness bool
	tokenCmd := &cobra.Command{
		Use:   "token",
		Short: "Create a one-time token for a node to join the cluster",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Cluster.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{
					Cluster: cluster, TtlSeconds: int64(ttl / time.Second), Role: nodeRole(tokenWitness),
				})
				if err != nil {
					return err
				}
				// The bare token, so that $(corral cluster token) works.
				return a.print(resp, renderFunc(func(w io.Writer) error {
					_, err := fmt.Fprintln(w, resp.GetToken())
					return err
				}))
			})
		},
	}
	tokenCmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "validity of the token")
	tokenCmd.Flags().BoolVar(&tokenWitness, "witness", false, "the token admits a witness")

	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show the Raft state and the members of the cluster",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				resp, err := c.Cluster.ClusterStatus(ctx, &pb.ClusterStatusRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				return a.printStatus(resp)
			})
		},
	}

	removeCmd := &cobra.Command{
		Use:               "remove-node NODE",
		Short:             "Remove a node from the cluster for good",
		Args:              argNames("NODE"),
		ValidArgsFunction: a.completeNames(listNodeNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				if _, err := c.Cluster.RemoveNode(ctx, &pb.RemoveNodeRequest{Cluster: cluster, Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Node %s removed from cluster %s\n", args[0], cluster)
				return nil
			})
		},
	}

	listCmd := &cobra.Command{
		Use:   "list",
		Short: "List the clusters the node answering belongs to",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withMode(cmd, anyCluster, func(ctx context.Context, c *client.Client, _ string) error {
				resp, err := c.Cluster.ListClusters(ctx, &pb.ListClustersRequest{})
				if err != nil {
					return err
				}
				t := newTable("NAME")
				for _, n := range resp.GetClusters() {
					t.row(n)
				}
				return a.print(resp, t)
			})
		},
	}

	return group("cluster", "Create, join and inspect clusters",
		initCmd, joinCmd, tokenCmd, statusCmd, removeCmd, listCmd, a.settingsCmd())
}

// printStatus renders ClusterStatus: a summary, then one row per member.
func (a *app) printStatus(s *pb.ClusterStatusResponse) error {
	return a.print(s, renderFunc(func(w io.Writer) error {
		fmt.Fprintf(w, "Cluster:      %s\n", s.GetCluster())
		fmt.Fprintf(w, "Leader:       %s\n", or(s.GetLeader(), "(none)"))
		fmt.Fprintf(w, "Term:         %d\n", s.GetTerm())
		fmt.Fprintf(w, "Commit index: %d\n", s.GetCommitIndex())
		fmt.Fprintf(w, "Applied:      %d\n", s.GetAppliedIndex())
		fmt.Fprintf(w, "Answered by:  %s (%s)\n\n", s.GetAnsweredBy(), s.GetRaftState())
		t := newTable("NAME", "ROLE", "RAFT-ADDR", "API-ADDR", "LEADER", "HEALTH", "LAST-CONTACT", "MAINTENANCE", "FENCED")
		for _, m := range s.GetMembers() {
			contact := ""
			if m.GetLastContactMs() >= 0 {
				contact = (time.Duration(m.GetLastContactMs()) * time.Millisecond).String()
			}
			t.row(m.GetName(), role(m.GetRole()), m.GetRaftAddress(), m.GetApiAddress(), flag(m.GetLeader()),
				health(m.GetHealth()), contact, flag(m.GetMaintenance()), flag(m.GetFenced()))
		}
		return t.write(w)
	}))
}

func anyChanged(cmd *cobra.Command, names ...string) bool {
	for _, n := range names {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (a *app) settingsCmd() *cobra.Command {
	var cpu, mem float64
	var suspect, down, window time.Duration
	var restarts int32
	var uri string
	cmd := &cobra.Command{
		Use:   "settings",
		Short: "Show or change the cluster's tunables",
		Long:  "Without flags, shows the settings. With flags, changes only those settings.",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.with(cmd, func(ctx context.Context, c *client.Client, cluster string) error {
				st, err := c.Cluster.ClusterStatus(ctx, &pb.ClusterStatusRequest{Cluster: cluster})
				if err != nil {
					return err
				}
				s := st.GetSettings()
				if s == nil {
					s = &pb.Settings{}
				}
				if anyChanged(cmd, "cpu-overcommit", "mem-overcommit", "suspect-after", "down-after", "max-restarts", "restart-window", "migration-uri") {
					f := cmd.Flags().Changed
					if f("cpu-overcommit") {
						s.CpuOvercommit = cpu
					}
					if f("mem-overcommit") {
						s.MemOvercommit = mem
					}
					if f("suspect-after") {
						s.SuspectAfterMs = suspect.Milliseconds()
					}
					if f("down-after") {
						s.DownAfterMs = down.Milliseconds()
					}
					if f("max-restarts") {
						s.MaxRestarts = restarts
					}
					if f("restart-window") {
						s.RestartWindowMs = window.Milliseconds()
					}
					if f("migration-uri") {
						s.MigrationUriTemplate = uri
					}
					resp, err := c.Cluster.UpdateSettings(ctx, &pb.UpdateSettingsRequest{Cluster: cluster, Settings: s})
					if err != nil {
						return err
					}
					s = resp.GetSettings()
				}
				return a.print(s, settingsTable(s))
			})
		},
	}
	fl := cmd.Flags()
	fl.Float64Var(&cpu, "cpu-overcommit", 0, "vCPUs allowed per host CPU")
	fl.Float64Var(&mem, "mem-overcommit", 0, "guest memory allowed per host memory")
	fl.DurationVar(&suspect, "suspect-after", 0, "heartbeat silence before a node is suspect")
	fl.DurationVar(&down, "down-after", 0, "heartbeat silence before a node is down and fenced")
	fl.Int32Var(&restarts, "max-restarts", 0, "HA restarts of a VM allowed within the restart window")
	fl.DurationVar(&window, "restart-window", 0, "window counted by --max-restarts")
	fl.StringVar(&uri, "migration-uri", "", "template of the live-migration URI")
	return cmd
}

func settingsTable(s *pb.Settings) *table {
	t := newTable("SETTING", "VALUE")
	t.row("cpu-overcommit", fmt.Sprint(s.GetCpuOvercommit()))
	t.row("mem-overcommit", fmt.Sprint(s.GetMemOvercommit()))
	t.row("suspect-after", msDuration(s.GetSuspectAfterMs()))
	t.row("down-after", msDuration(s.GetDownAfterMs()))
	t.row("max-restarts", fmt.Sprint(s.GetMaxRestarts()))
	t.row("restart-window", msDuration(s.GetRestartWindowMs()))
	t.row("migration-uri", s.GetMigrationUriTemplate())
	return t
}
