package api

import (
	"context"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

func (s *Server) CreateNetwork(ctx context.Context, req *pb.CreateNetworkRequest) (*pb.CreateNetworkResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if req.Network == nil {
		return nil, errdefs.Invalid("no network given")
	}
	n := proto.Clone(req.Network).(*pb.Network)
	if n.Kind == "" {
		n.Kind = "linux"
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_NETWORK_CREATE, &pb.NetworkCreateCommand{Network: n}, actor(ctx)); err != nil {
		return nil, err
	}
	out := &pb.CreateNetworkResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Network = st.Networks[n.Name] })
	return out, nil
}

func (s *Server) ListNetworks(ctx context.Context, req *pb.ListNetworksRequest) (*pb.ListNetworksResponse, error) {
	g, err := s.readGroup(ctx, req.Cluster, req.Consistent)
	if err != nil {
		return nil, err
	}
	out := &pb.ListNetworksResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Networks = st.SortedNetworks() })
	return out, nil
}

func (s *Server) GetNetwork(ctx context.Context, req *pb.GetNetworkRequest) (*pb.GetNetworkResponse, error) {
	g, err := s.readGroup(ctx, req.Cluster, req.Consistent)
	if err != nil {
		return nil, err
	}
	out := &pb.GetNetworkResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Network = st.Networks[req.Name] })
	if out.Network == nil {
		return nil, errdefs.NotFound("network %q not found in cluster %s: see `corral net list`", req.Name, req.Cluster)
	}
	return out, nil
}

func (s *Server) DeleteNetwork(ctx context.Context, req *pb.DeleteNetworkRequest) (*pb.DeleteNetworkResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	_, err = g.Propose(ctx, pb.CommandType_COMMAND_TYPE_NETWORK_DELETE, &pb.NetworkDeleteCommand{Name: req.Name}, actor(ctx))
	return &pb.DeleteNetworkResponse{}, err
}
