// Package api serves corral's gRPC services on every node. A handler
// validates its request, proposes typed commands to the cluster's Raft group
// (the store forwards them to the leader) and reads the replicated state;
// it never drives libvirt, Ceph or bridges itself: node agents do. Domain
// errors become gRPC statuses here, and only here.
package api

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/minet/corral/cluster"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// NodeServices is what the API needs from this node's agents: consoles and
// volume data live on one node, so these calls end on that node.
type NodeServices interface {
	// Console attaches to the serial console of a VM running here.
	Console(ctx context.Context, cluster, vm string, replay bool, in <-chan []byte, out func([]byte) error) error
}

// Server implements every corral service.
type Server struct {
	pb.UnimplementedClusterServiceServer
	pb.UnimplementedNodeServiceServer
	pb.UnimplementedVMServiceServer
	pb.UnimplementedNetworkServiceServer
	pb.UnimplementedStorageServiceServer
	pb.UnimplementedTaskServiceServer
	pb.UnimplementedEventServiceServer

	m     *cluster.Manager
	log   *slog.Logger
	node  NodeServices
	calls *prometheus.CounterVec
	lat   *prometheus.HistogramVec
}

// New returns a Server over the memberships of m. node may be nil (no
// local agent: consoles are refused here).
func New(m *cluster.Manager, node NodeServices, log *slog.Logger, reg prometheus.Registerer) *Server {
	s := &Server{m: m, node: node, log: log,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "corral_api_calls_total", Help: "API calls by method and gRPC code.",
		}, []string{"method", "code"}),
		lat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "corral_api_call_seconds", Help: "API call latency by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
	}
	if reg != nil {
		reg.MustRegister(s.calls, s.lat)
	}
	return s
}

// SetNode attaches the local node services (the agent) after start.
func (s *Server) SetNode(n NodeServices) { s.node = n }

func (s *Server) register(g *grpc.Server) {
	pb.RegisterClusterServiceServer(g, s)
	pb.RegisterNodeServiceServer(g, s)
	pb.RegisterVMServiceServer(g, s)
	pb.RegisterNetworkServiceServer(g, s)
	pb.RegisterStorageServiceServer(g, s)
	pb.RegisterTaskServiceServer(g, s)
	pb.RegisterEventServiceServer(g, s)
}

// GRPCServer returns a gRPC server with these services; local marks the
// daemon's unix socket, whose callers are root on this host.
func (s *Server) GRPCServer(local bool) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.unary(local)),
		grpc.ChainStreamInterceptor(s.stream(local)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(16 << 20),
	}
	if !local {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.m.ServerTLS())))
	}
	g := grpc.NewServer(opts...)
	s.register(g)
	return g
}

// Serve serves the TLS API on ln until it fails or is stopped.
func (s *Server) Serve(g *grpc.Server, ln net.Listener) error { return g.Serve(ln) }

func (s *Server) unary(local bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		c, err := authorize(ctx, local, info.FullMethod, req)
		var resp any
		if err == nil {
			resp, err = h(context.WithValue(ctx, callerKey{}, c), req)
		}
		err = toStatus(err)
		m := methodName(info.FullMethod)
		s.calls.WithLabelValues(m, status.Code(err).String()).Inc()
		s.lat.WithLabelValues(m).Observe(time.Since(start).Seconds())
		if err != nil && status.Code(err) != 0 {
			s.log.Debug("api call failed", "method", m, "caller", c.String(), "err", err)
		}
		return resp, err
	}
}

func (s *Server) stream(local bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		cs := &checkedStream{ServerStream: ss, local: local, method: info.FullMethod, ctx: ss.Context()}
		err := toStatus(h(srv, cs))
		s.calls.WithLabelValues(methodName(info.FullMethod), status.Code(err).String()).Inc()
		return err
	}
}

// group returns the membership named by a request.
func (s *Server) group(cluster string) (*cluster.Group, error) { return s.m.Group(cluster) }

// actor names the caller in commands and events.
func actor(ctx context.Context) string { return callerFrom(ctx).String() }

// readGroup returns the group, first making the read linearizable when
// the caller asked for it.
func (s *Server) readGroup(ctx context.Context, name string, consistent bool) (*cluster.Group, error) {
	g, err := s.group(name)
	if err != nil {
		return nil, err
	}
	if consistent {
		if err := s.m.ReadIndex(ctx, g); err != nil {
			return nil, err
		}
	}
	return g, nil
}
