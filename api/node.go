package api

import (
	"context"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
)

func (s *Server) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	g, err := s.readGroup(ctx, req.Cluster, req.Consistent)
	if err != nil {
		return nil, err
	}
	out := &pb.ListNodesResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Nodes = st.SortedNodes() })
	return out, nil
}

func (s *Server) GetNode(ctx context.Context, req *pb.GetNodeRequest) (*pb.GetNodeResponse, error) {
	g, err := s.readGroup(ctx, req.Cluster, req.Consistent)
	if err != nil {
		return nil, err
	}
	out := &pb.GetNodeResponse{}
	g.Store.Read(func(st *raftstore.State) {
		out.Node = st.Nodes[req.Name]
		out.Vms = st.VMsOn(req.Name)
	})
	if out.Node == nil {
		return nil, errdefs.NotFound("node %q not found in cluster %s: see `corral node list`", req.Name, req.Cluster)
	}
	return out, nil
}

func (s *Server) ResumeNode(ctx context.Context, req *pb.ResumeNodeRequest) (*pb.ResumeNodeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_NODE_MAINTENANCE, &pb.NodeMaintenanceCommand{Name: req.Name, Maintenance: false}, actor(ctx)); err != nil {
		return nil, err
	}
	out := &pb.ResumeNodeResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Node = st.Nodes[req.Name] })
	return out, nil
}
