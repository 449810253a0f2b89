package api

import (
	"context"
	"maps"
	"time"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

func (s *Server) InitCluster(ctx context.Context, req *pb.InitClusterRequest) (*pb.InitClusterResponse, error) {
	g, err := s.m.Init(ctx, req.Cluster, req.RaftAddress, req.Role)
	if err != nil {
		return nil, err
	}
	st, err := s.status(g.Name)
	if err != nil {
		return nil, err
	}
	return &pb.InitClusterResponse{Status: st}, nil
}

func (s *Server) JoinCluster(ctx context.Context, req *pb.JoinClusterRequest) (*pb.JoinClusterResponse, error) {
	if req.Token == "" || req.PeerAddress == "" {
		return nil, errdefs.Invalid("join needs --token and --peer (the API address of any member)")
	}
	g, err := s.m.Join(ctx, req.Cluster, req.Token, req.PeerAddress, req.RaftAddress, req.Role)
	if err != nil {
		return nil, err
	}
	st, err := s.status(g.Name)
	if err != nil {
		return nil, err
	}
	return &pb.JoinClusterResponse{Status: st}, nil
}

func (s *Server) Admit(ctx context.Context, req *pb.AdmitRequest) (*pb.AdmitResponse, error) {
	return s.m.Admit(ctx, req)
}

func (s *Server) CreateJoinToken(ctx context.Context, req *pb.CreateJoinTokenRequest) (*pb.CreateJoinTokenResponse, error) {
	if callerFrom(ctx).id.Role == "node" {
		return nil, errdefs.Denied("nodes cannot create join tokens")
	}
	tok, exp, err := s.m.CreateToken(ctx, req.Cluster, time.Duration(req.TtlSeconds)*time.Second, req.Role, actor(ctx))
	if err != nil {
		return nil, err
	}
	return &pb.CreateJoinTokenResponse{Token: tok.String(), ExpiresUnixNano: exp.UnixNano()}, nil
}

func (s *Server) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.RemoveNodeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_NODE_REMOVE, &pb.NodeRemoveCommand{Name: req.Name}, actor(ctx)); err != nil {
		return nil, err
	}
	// The leader removes it from the Raft configuration (cluster.pruneServers).
	return &pb.RemoveNodeResponse{}, nil
}

func (s *Server) ClusterStatus(ctx context.Context, req *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	return s.status(req.Cluster)
}

func (s *Server) status(name string) (*pb.ClusterStatusResponse, error) {
	g, err := s.group(name)
	if err != nil {
		return nil, err
	}
	r := g.Store.Raft()
	leaderID, _ := g.Store.Leader()
	stats := r.Stats()
	out := &pb.ClusterStatusResponse{
		Cluster: name, Leader: leaderID, Term: r.CurrentTerm(), CommitIndex: parseU(stats["commit_index"]),
		AppliedIndex: r.AppliedIndex(), RaftState: r.State().String(), AnsweredBy: s.m.NodeName(),
	}
	servers, err := g.Store.Servers()
	if err != nil {
		return nil, errdefs.Unavailable("raft configuration: %v", err)
	}
	var nodes map[string]*pb.Node
	g.Store.Read(func(st *raftstore.State) {
		nodes = maps.Clone(st.Nodes)
		out.Settings = st.Settings()
	})
	isLeader := g.Store.IsLeader()
	for _, sv := range servers {
		mem := &pb.Member{Name: string(sv.ID), RaftAddress: string(sv.Address), Leader: string(sv.ID) == leaderID,
			Suffrage: sv.Suffrage.String(), LastContactMs: -1}
		if n, ok := nodes[string(sv.ID)]; ok {
			mem.Role, mem.ApiAddress, mem.Health, mem.Maintenance, mem.Fenced = n.Role, n.ApiAddress, n.Health, n.Maintenance, n.Fenced
		}
		if isLeader {
			if at, ok := g.LastHeartbeat(string(sv.ID)); ok {
				mem.LastContactMs = time.Since(at).Milliseconds()
			}
		} else if string(sv.ID) == leaderID {
			mem.LastContactMs = r.LastContact().UnixMilli()
			if !r.LastContact().IsZero() {
				mem.LastContactMs = time.Since(r.LastContact()).Milliseconds()
			}
		}
		out.Members = append(out.Members, mem)
	}
	return out, nil
}

func parseU(s string) uint64 {
	var v uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return v
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}

func (s *Server) IssueAdminCert(ctx context.Context, req *pb.IssueAdminCertRequest) (*pb.IssueAdminCertResponse, error) {
	c := callerFrom(ctx)
	if !c.local && c.id.Role != "admin" {
		return nil, errdefs.Denied("only admins may issue admin certificates")
	}
	return s.m.IssueAdminCert(ctx, req)
}

func (s *Server) ListClusters(ctx context.Context, _ *pb.ListClustersRequest) (*pb.ListClustersResponse, error) {
	c := callerFrom(ctx)
	out := &pb.ListClustersResponse{}
	for _, g := range s.m.Groups() {
		if c.local || c.id.Cluster == g.Name {
			out.Clusters = append(out.Clusters, g.Name)
		}
	}
	return out, nil
}

func (s *Server) UpdateSettings(ctx context.Context, req *pb.UpdateSettingsRequest) (*pb.UpdateSettingsResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if req.Settings == nil {
		return nil, errdefs.Invalid("no settings given")
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_SETTINGS, &pb.SettingsCommand{Settings: req.Settings}, actor(ctx)); err != nil {
		return nil, err
	}
	var st *pb.Settings
	g.Store.Read(func(s *raftstore.State) { st = s.Settings() })
	return &pb.UpdateSettingsResponse{Settings: st}, nil
}

func (s *Server) Propose(ctx context.Context, req *pb.ProposeRequest) (*pb.ProposeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if !g.Store.IsLeader() {
		id, _ := g.Store.Leader()
		return nil, errdefs.Unavailable("not the leader of %s (leader: %q): retry", req.Cluster, id)
	}
	if req.Command == nil {
		return nil, errdefs.Invalid("no command")
	}
	cmd := proto.Clone(req.Command).(*pb.Command)
	_, idx, err := g.Store.ApplyLocal(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return &pb.ProposeResponse{Index: idx}, nil
}

func (s *Server) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if callerFrom(ctx).id.Name != req.Node {
		return nil, errdefs.Denied("a node heartbeats only for itself")
	}
	if !g.Store.IsLeader() {
		return nil, errdefs.Unavailable("not the leader")
	}
	g.RecordHeartbeat(req.Node, time.Now())
	var fenced bool
	g.Store.Read(func(st *raftstore.State) {
		if n, ok := st.Nodes[req.Node]; ok {
			fenced = n.Fenced
		}
	})
	return &pb.HeartbeatResponse{Fenced: fenced, Leader: s.m.NodeName()}, nil
}

func (s *Server) ReadIndex(ctx context.Context, req *pb.ReadIndexRequest) (*pb.ReadIndexResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	idx, err := g.Store.ReadIndex(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.ReadIndexResponse{Index: idx}, nil
}
