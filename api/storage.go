package api

import (
	"context"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
)

// cloneBootDisk creates the VM's boot volume from a template (linked clone
// or full copy) and puts it first in spec.Disks.
func (s *Server) cloneBootDisk(ctx context.Context, g *cluster.Group, req *pb.CreateVMRequest, spec *pb.VMSpec) error {
	return errdefs.Precondition("--from is not available on this build yet")
}
