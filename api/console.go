package api

import (
	"context"
	"io"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
)

// Console streams a VM's serial console. The node the admin talks to
// proxies to the node running the VM.
func (s *Server) Console(stream pb.VMService_ConsoleServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	g, err := s.group(first.Cluster)
	if err != nil {
		return err
	}
	var vm *pb.VM
	g.Store.Read(func(st *raftstore.State) { vm = st.VMs[first.Name] })
	if vm == nil {
		return errdefs.NotFound("vm %q not found in cluster %s", first.Name, first.Cluster)
	}
	if vm.Node == "" {
		return errdefs.Precondition("vm %q is not placed on any node", first.Name)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	if vm.Node == s.m.NodeName() {
		if s.node == nil {
			return errdefs.Unavailable("no agent on node %s", vm.Node)
		}
		in := make(chan []byte, 16)
		go func() {
			defer close(in)
			if len(first.Input) > 0 {
				in <- first.Input
			}
			for {
				m, err := stream.Recv()
				if err != nil {
					cancel()
					return
				}
				if len(m.Input) > 0 {
					in <- m.Input
				}
			}
		}()
		return s.node.Console(ctx, first.Cluster, first.Name, first.Replay, in, func(b []byte) error {
			return stream.Send(&pb.ConsoleResponse{Output: b})
		})
	}
	conn, err := s.m.NodeConn(ctx, first.Cluster, vm.Node)
	if err != nil {
		return err
	}
	up, err := pb.NewVMServiceClient(conn).Console(ctx)
	if err != nil {
		return errdefs.Unavailable("console on %s: %v", vm.Node, err)
	}
	if err := up.Send(first); err != nil {
		return err
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				_ = up.CloseSend()
				cancel()
				return
			}
			if err := up.Send(m); err != nil {
				return
			}
		}
	}()
	for {
		m, err := up.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}
