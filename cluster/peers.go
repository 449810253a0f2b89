package cluster

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

func (m *Manager) dial(ctx context.Context, addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if m.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(m.cfg.Dialer))
	} else {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}))
	}
	return grpc.NewClient("passthrough:///"+addr, opts...)
}

// NodeConn returns a cached connection to another member's API, using
// this node's certificate for that cluster.
func (m *Manager) NodeConn(ctx context.Context, cluster, node string) (*grpc.ClientConn, error) {
	g, err := m.Group(cluster)
	if err != nil {
		return nil, err
	}
	var addr string
	g.Store.Read(func(s *raftstore.State) {
		if n, ok := s.Nodes[node]; ok {
			addr = n.ApiAddress
		}
	})
	if addr == "" {
		return nil, errdefs.NotFound("node %q of cluster %s has no API address", node, cluster)
	}
	key := cluster + "|" + addr
	m.connMu.Lock()
	defer m.connMu.Unlock()
	if c, ok := m.conns[key]; ok {
		return c, nil
	}
	c, err := m.dial(ctx, addr, credentials.NewTLS(pki.ClientTLS(g.Creds, cluster)))
	if err != nil {
		return nil, errdefs.Unavailable("dial %s at %s: %v", node, addr, err)
	}
	m.conns[key] = c
	return c, nil
}

// LeaderConn returns a connection to the current leader's API.
func (m *Manager) LeaderConn(ctx context.Context, cluster string) (*grpc.ClientConn, error) {
	g, err := m.Group(cluster)
	if err != nil {
		return nil, err
	}
	id, _ := g.Store.Leader()
	if id == "" {
		return nil, errdefs.Unavailable("cluster %s has no leader right now (no quorum?): retry in a few seconds", cluster)
	}
	return m.NodeConn(ctx, cluster, id)
}

func (m *Manager) forwarder(cluster string) raftstore.Forwarder {
	return func(ctx context.Context, leaderID, _ string, cmd *pb.Command) (uint64, error) {
		conn, err := m.NodeConn(ctx, cluster, leaderID)
		if err != nil {
			return 0, err
		}
		resp, err := pb.NewClusterServiceClient(conn).Propose(ctx, &pb.ProposeRequest{Cluster: cluster, Command: cmd})
		if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && !strings.HasPrefix(st.Message(), "cluster ") {
			return 0, errdefs.Unavailable("cluster %s: leader %s unreachable (%s): the cluster may have lost quorum; retry in a few seconds", cluster, leaderID, st.Message())
		}
		if err != nil {
			return 0, err
		}
		return resp.Index, nil
	}
}

// ReadIndex makes a follower's next read linearizable: it asks the leader
// for an index that covers every committed write and waits to apply it.
func (m *Manager) ReadIndex(ctx context.Context, g *Group) error {
	if g.Store.IsLeader() {
		_, err := g.Store.ReadIndex(ctx)
		return err
	}
	conn, err := m.LeaderConn(ctx, g.Name)
	if err != nil {
		return err
	}
	resp, err := pb.NewClusterServiceClient(conn).ReadIndex(ctx, &pb.ReadIndexRequest{Cluster: g.Name})
	if err != nil {
		return err
	}
	return g.Store.WaitApplied(ctx, resp.Index)
}

// RecordHeartbeat notes on the leader that node is alive.
func (g *Group) RecordHeartbeat(node string, at time.Time) {
	g.hbMu.Lock()
	g.heartbeats[node] = at
	g.hbMu.Unlock()
}

// LastHeartbeat returns when node last heartbeated to this (leader) node.
func (g *Group) LastHeartbeat(node string) (time.Time, bool) {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	t, ok := g.heartbeats[node]
	return t, ok
}

// PreviousLeader returns, on a leader, the node that led before it (as
// this node followed it) and when that leader last contacted this node;
// "" when unknown.
func (g *Group) PreviousLeader() (string, time.Time) {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	return g.prevLeader, g.prevLeaderContact
}

// LeaderSince returns when this node last became leader (zero if not).
func (g *Group) LeaderSince() time.Time {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	return g.leaderAt
}

// Run keeps heartbeats flowing to each group's leader and hands leadership
// away from a witness. It returns when ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(DefaultHeartbeatEvery)
	defer t.Stop()
	terms := map[string]uint64{} // term in which this node leads, per group
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, g := range m.Groups() {
			isLeader := g.Store.IsLeader()
			term := g.Store.Raft().CurrentTerm()
			switch {
			case isLeader && terms[g.Name] != term:
				// A new leadership (also a step-down and re-election
				// between two ticks): count silence from now, except for
				// the leader this node followed until then, silent since
				// its last contact (its loss is usually why we lead).
				g.hbMu.Lock()
				g.leaderAt = time.Now()
				g.heartbeats = map[string]time.Time{}
				g.prevLeader, g.prevLeaderContact = "", time.Time{}
				if g.followedLeader != m.cfg.NodeName {
					g.prevLeader, g.prevLeaderContact = g.followedLeader, g.followedContact
				}
				g.hbMu.Unlock()
				terms[g.Name] = term
			case !isLeader && terms[g.Name] != 0:
				g.hbMu.Lock()
				g.leaderAt = time.Time{}
				g.hbMu.Unlock()
				terms[g.Name] = 0
			}
			if !isLeader {
				if _, id := g.Store.Raft().LeaderWithID(); id != "" {
					g.hbMu.Lock()
					g.followedLeader, g.followedContact = string(id), g.Store.Raft().LastContact()
					g.hbMu.Unlock()
				}
			}
			if isLeader {
				g.RecordHeartbeat(m.cfg.NodeName, time.Now())
				if g.Role == pb.NodeRole_NODE_ROLE_WITNESS {
					m.handOff(g)
				}
				if time.Since(g.prunedAt) > 5*time.Second {
					g.prunedAt = time.Now()
					m.pruneServers(g)
				}
				continue
			}
			go m.heartbeat(ctx, g)
		}
	}
}

func (m *Manager) heartbeat(ctx context.Context, g *Group) {
	ctx, cancel := context.WithTimeout(ctx, DefaultHeartbeatEvery*2)
	defer cancel()
	conn, err := m.LeaderConn(ctx, g.Name)
	if err != nil {
		return
	}
	resp, err := pb.NewClusterServiceClient(conn).Heartbeat(ctx, &pb.HeartbeatRequest{
		Cluster: g.Name, Node: m.cfg.NodeName, SentUnixNano: time.Now().UnixNano(),
	})
	if err != nil {
		m.log.Debug("heartbeat failed", "cluster", g.Name, "err", err)
		return
	}
	g.hbMu.Lock()
	g.fencedByLeader = resp.Fenced
	g.hbMu.Unlock()
}

// handOff moves leadership from a witness to a voter that heartbeats.
func (m *Manager) handOff(g *Group) {
	var target *pb.Node
	g.Store.Read(func(s *raftstore.State) {
		for _, n := range s.SortedNodes() {
			if n.Role == pb.NodeRole_NODE_ROLE_VOTER && n.Name != m.cfg.NodeName && !n.Fenced {
				if at, ok := g.LastHeartbeat(n.Name); ok && time.Since(at) < 2*time.Second {
					target = n
					return
				}
			}
		}
	})
	if target == nil {
		return
	}
	m.log.Info("witness hands leadership to a voter", "cluster", g.Name, "to", target.Name)
	if err := g.Store.TransferLeadership(target.Name, target.RaftAddress); err != nil {
		m.log.Warn("leadership transfer failed", "cluster", g.Name, "to", target.Name, "err", err)
	}
}

// FencedByLeader reports whether the leader's last heartbeat answer said
// this node was fenced.
func (g *Group) FencedByLeader() bool {
	g.hbMu.Lock()
	defer g.hbMu.Unlock()
	return g.fencedByLeader
}

// pruneServers removes from the Raft configuration the members that the
// replicated state no longer lists (`cluster remove-node` records the
// removal; the leader, wherever it is, applies it to Raft).
func (m *Manager) pruneServers(g *Group) {
	// A new leader may not have applied every committed entry yet (a node
	// that just joined): only compare after a barrier.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	err := g.Store.Barrier(ctx)
	cancel()
	if err != nil {
		return
	}
	servers, err := g.Store.Servers()
	if err != nil {
		return
	}
	var known map[string]bool
	g.Store.Read(func(s *raftstore.State) {
		if s.Cluster == nil {
			return
		}
		known = map[string]bool{}
		for name := range s.Nodes {
			known[name] = true
		}
	})
	if known == nil {
		return
	}
	for _, sv := range servers {
		if id := string(sv.ID); !known[id] && id != m.cfg.NodeName {
			// A node being admitted is in the state before Raft; one in
			// Raft but not in the state was removed.
			m.log.Info("removing member absent from the state", "cluster", g.Name, "member", id)
			if err := g.Store.RemoveServer(id); err != nil {
				m.log.Warn("remove member", "cluster", g.Name, "member", id, "err", err)
			}
		}
	}
}
