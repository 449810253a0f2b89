package api

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"github.com/minet/corral/scheduler"
	"google.golang.org/protobuf/proto"
)

// DefaultCreateWait bounds how long create waits for the node agent to
// define the VM, so errors found there (a missing kernel, libvirt down)
// reach the caller and nothing half-created stays behind.
const DefaultCreateWait = 60 * time.Second

func randomMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	// 52:54:00 is QEMU's locally administered prefix.
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

func placementsOf(d scheduler.Decision) []*pb.Placement {
	out := make([]*pb.Placement, 0, len(d.Candidates))
	for _, c := range d.Candidates {
		out = append(out, &pb.Placement{Node: c.Node, Fits: c.Fits, Reason: c.Reason})
	}
	return out
}

// placeErr maps scheduler errors to domain errors.
func placeErr(err error) error {
	var nf *scheduler.NoFitError
	var un *scheduler.UnknownNodeError
	switch {
	case errors.As(err, &nf):
		return errdefs.Exhausted("%s", nf.Error())
	case errors.As(err, &un):
		return errdefs.NotFound("%s: see `corral node list`", un.Error())
	}
	return err
}

func (s *Server) CreateVM(ctx context.Context, req *pb.CreateVMRequest) (*pb.CreateVMResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if err := raftstore.ValidName("vm", req.Name); err != nil {
		return nil, err
	}
	spec := proto.Clone(req.Spec).(*pb.VMSpec)
	if spec == nil {
		spec = &pb.VMSpec{}
	}
	if spec.Machine == "" {
		spec.Machine = "pc"
	}
	for _, n := range spec.Nics {
		if n.Mac == "" {
			n.Mac = randomMAC()
		}
	}
	created := false
	switch {
	case req.From != "" && req.DryRun:
		// Place as if the clone existed; a dry run creates nothing.
		pool, _, ok := splitVolume(req.From)
		if !ok {
			return nil, errdefs.Invalid("--from wants POOL/TEMPLATE, got %q", req.From)
		}
		spec.Disks = append([]*pb.DiskSpec{{Pool: pool, Volume: req.Name + "-disk0"}}, spec.Disks...)
	case req.From != "":
		if err := s.cloneBootDisk(ctx, g, req, spec); err != nil {
			return nil, err
		}
		boot := spec.Disks[0]
		defer func() {
			if !created {
				go s.dropClone(context.WithoutCancel(ctx), g, req.Name, boot)
			}
		}()
	}
	if err := raftstore.CheckSpec(spec); err != nil {
		return nil, err
	}
	vm := &pb.VM{Name: req.Name, Uuid: uuid.NewString(), Spec: spec, Power: pb.PowerState_POWER_STATE_STOPPED}
	if req.Start {
		vm.Power = pb.PowerState_POWER_STATE_RUNNING
	}
	var (
		dec    scheduler.Decision
		perr   error
		exists bool
		local  string
	)
	g.Store.Read(func(st *raftstore.State) {
		_, exists = st.VMs[req.Name]
		local = localPoolNode(st, spec)
		snap := st.SchedulerSnapshot()
		node := req.Node
		if node == "" {
			node = local
		}
		// Every node's verdict only for a dry run (and, from Place, for
		// a refusal): a real create needs the choice and the nodes passed
		// over, not a row per cluster node.
		dec, perr = scheduler.Place(snap, scheduler.Request{VM: raftstore.SchedulerVM(vm), Node: node, Brief: !req.DryRun})
	})
	if exists {
		return nil, errdefs.Exists("vm %q already exists: pick another name or delete it first", req.Name)
	}
	if local != "" && spec.Ha == pb.HAMode_HA_MODE_RESTART {
		return nil, errdefs.Invalid("vm %q has a disk on node-local storage (on %s): it cannot fail over, so --ha restart is refused; use a shared (rbd) pool", req.Name, local)
	}
	if local != "" && req.Node != "" && req.Node != local {
		return nil, errdefs.Invalid("vm %q uses a dir volume that lives on %s: it can only run there", req.Name, local)
	}
	resp := &pb.CreateVMResponse{Placements: placementsOf(dec)}
	if perr != nil {
		if req.DryRun {
			resp.Vm = vm
			return resp, nil
		}
		return nil, placeErr(perr)
	}
	vm.Node = dec.Node
	resp.Vm = vm
	if req.DryRun {
		return resp, nil
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_CREATE, &pb.VMCreateCommand{Vm: vm}, actor(ctx)); err != nil {
		return nil, err
	}
	// Wait for the node agent to define (and start) it; an error there
	// removes the VM again so nothing is left half-created.
	wctx, cancel := context.WithTimeout(ctx, DefaultCreateWait)
	defer cancel()
	var final *pb.VM
	werr := waitState(wctx, g, func(st *raftstore.State) (bool, error) {
		v, ok := st.VMs[req.Name]
		if !ok {
			return false, errdefs.NotFound("vm %q disappeared while being created", req.Name)
		}
		final = v
		if v.Status.GetObservedGeneration() < 1 {
			return false, nil
		}
		switch v.Status.GetState() {
		case pb.VMState_VM_STATE_ERROR:
			return false, errdefs.Precondition("node %s could not create vm %q: %s", v.Node, v.Name, v.Status.Reason)
		case pb.VMState_VM_STATE_RUNNING:
			return true, nil
		case pb.VMState_VM_STATE_STOPPED:
			return !req.Start, nil
		}
		return false, nil
	})
	if werr != nil {
		// Undo, and answer only once the VM is gone, so the caller never
		// sees it half-created.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer dcancel()
		if _, err := g.Propose(dctx, pb.CommandType_COMMAND_TYPE_VM_DELETE, &pb.VMDeleteCommand{Name: req.Name}, actor(ctx)); err == nil {
			_ = waitState(dctx, g, func(st *raftstore.State) (bool, error) {
				_, ok := st.VMs[req.Name]
				return !ok, nil
			})
		}
		return nil, werr
	}
	resp.Vm = final
	created = true
	return resp, nil
}

// dropClone deletes the boot volume cloned for a VM whose creation failed,
// once the VM (if it was recorded) is gone and the volume detached.
func (s *Server) dropClone(ctx context.Context, g *cluster.Group, vm string, d *pb.DiskSpec) {
	wctx, cancel := context.WithTimeout(ctx, DefaultCreateWait)
	defer cancel()
	_ = waitState(wctx, g, func(st *raftstore.State) (bool, error) {
		_, ok := st.VMs[vm]
		return !ok, nil
	})
	vol, err := s.getVolume(g, d.Pool, d.Volume)
	if err != nil {
		return
	}
	if _, err := s.volumeTask(wctx, g, "volume.delete", vol, nil, true); err != nil {
		s.log.Warn("drop clone of failed create", "cluster", g.Name, "vm", vm, "volume", d.Volume, "err", err)
	}
}

// localPoolNode returns the node holding a VM's node-local (dir) volume,
// where the VM must run, or "" if all its disks are shared.
func localPoolNode(st *raftstore.State, spec *pb.VMSpec) string {
	for _, d := range spec.GetDisks() { // nil-safe: UpdateVM may carry no spec
		if vol, ok := st.Volumes[raftstore.VolumeKey(d.Pool, d.Volume)]; ok && vol.Node != "" {
			return vol.Node
		}
	}
	return ""
}

func (s *Server) ListVMs(ctx context.Context, req *pb.ListVMsRequest) (*pb.ListVMsResponse, error) {
	g, err := s.readGroup(ctx, req.Cluster, req.Consistent)
	if err != nil {
		return nil, err
	}
	out := &pb.ListVMsResponse{}
	g.Store.Read(func(st *raftstore.State) {
		for _, v := range st.SortedVMs() {
			if req.Node == "" || v.Node == req.Node {
				out.Vms = append(out.Vms, v)
			}
		}
	})
	return out, nil
}

func (s *Server) getVM(ctx context.Context, cluster, name string, consistent bool) (*pb.VM, error) {
	g, err := s.readGroup(ctx, cluster, consistent)
	if err != nil {
		return nil, err
	}
	var v *pb.VM
	g.Store.Read(func(st *raftstore.State) { v = st.VMs[name] })
	if v == nil {
		return nil, errdefs.NotFound("vm %q not found in cluster %s: see `corral vm list`", name, cluster)
	}
	return v, nil
}

func (s *Server) GetVM(ctx context.Context, req *pb.GetVMRequest) (*pb.GetVMResponse, error) {
	v, err := s.getVM(ctx, req.Cluster, req.Name, req.Consistent)
	if err != nil {
		return nil, err
	}
	return &pb.GetVMResponse{Vm: v}, nil
}

func (s *Server) UpdateVM(ctx context.Context, req *pb.UpdateVMRequest) (*pb.UpdateVMResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	spec := proto.Clone(req.Spec).(*pb.VMSpec)
	var local string
	g.Store.Read(func(st *raftstore.State) { local = localPoolNode(st, spec) })
	if local != "" && spec.GetHa() == pb.HAMode_HA_MODE_RESTART {
		return nil, errdefs.Invalid("vm %q has a disk on node-local storage (on %s): it cannot fail over, so --ha restart is refused; use a shared (rbd) pool", req.Name, local)
	}
	for _, n := range spec.GetNics() {
		if n.Mac == "" {
			n.Mac = randomMAC()
		}
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_UPDATE, &pb.VMUpdateCommand{
		Name: req.Name, Spec: spec, ExpectedGeneration: req.ExpectedGeneration,
	}, actor(ctx)); err != nil {
		return nil, err
	}
	v, err := s.getVM(ctx, req.Cluster, req.Name, false)
	return &pb.UpdateVMResponse{Vm: v}, err
}

// power proposes a power change and waits (bounded) until the agent
// reports the wanted state, so `vm start` returns once it runs.
func (s *Server) power(ctx context.Context, cluster, name string, cmd *pb.VMPowerCommand, want pb.VMState) (*pb.VM, error) {
	g, err := s.group(cluster)
	if err != nil {
		return nil, err
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_POWER, cmd, actor(ctx)); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, DefaultCreateWait)
	defer cancel()
	var out *pb.VM
	err = waitState(wctx, g, func(st *raftstore.State) (bool, error) {
		v, ok := st.VMs[name]
		if !ok {
			return false, errdefs.NotFound("vm %q was deleted", name)
		}
		out = v
		if cmd.Reboot {
			// The agent reports the reboot sequence it carried out (a
			// start counts): a status refresh before that is no answer,
			// a failure is.
			if v.Status.GetState() == pb.VMState_VM_STATE_ERROR && strings.HasPrefix(v.Status.GetReason(), "reboot") {
				return false, errdefs.Precondition("vm %q failed to reboot on %s: %s", name, v.Node, v.Status.Reason)
			}
			return v.Status.GetState() == pb.VMState_VM_STATE_RUNNING && v.Status.GetObservedRebootSeq() >= v.RebootSeq, nil
		}
		if v.Status.GetState() == pb.VMState_VM_STATE_ERROR && want == pb.VMState_VM_STATE_RUNNING {
			return false, errdefs.Precondition("vm %q failed on %s: %s", name, v.Node, v.Status.Reason)
		}
		return v.Status.GetState() == want, nil
	})
	return out, err
}

func (s *Server) StartVM(ctx context.Context, req *pb.StartVMRequest) (*pb.StartVMResponse, error) {
	v, err := s.power(ctx, req.Cluster, req.Name, &pb.VMPowerCommand{Name: req.Name, Power: pb.PowerState_POWER_STATE_RUNNING, ClearError: true}, pb.VMState_VM_STATE_RUNNING)
	return &pb.StartVMResponse{Vm: v}, err
}

func (s *Server) StopVM(ctx context.Context, req *pb.StopVMRequest) (*pb.StopVMResponse, error) {
	// force: the agent destroys at once; otherwise ACPI shutdown, then
	// destroy after the shutdown timeout.
	cmd := &pb.VMPowerCommand{Name: req.Name, Power: pb.PowerState_POWER_STATE_STOPPED, Force: req.Force}
	v, err := s.power(ctx, req.Cluster, req.Name, cmd, pb.VMState_VM_STATE_STOPPED)
	return &pb.StopVMResponse{Vm: v}, err
}

func (s *Server) RebootVM(ctx context.Context, req *pb.RebootVMRequest) (*pb.RebootVMResponse, error) {
	v, err := s.power(ctx, req.Cluster, req.Name, &pb.VMPowerCommand{Name: req.Name, Reboot: true}, pb.VMState_VM_STATE_RUNNING)
	return &pb.RebootVMResponse{Vm: v}, err
}

func (s *Server) DeleteVM(ctx context.Context, req *pb.DeleteVMRequest) (*pb.DeleteVMResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	var disks []*pb.DiskSpec
	g.Store.Read(func(st *raftstore.State) {
		if v, ok := st.VMs[req.Name]; ok {
			disks = v.Spec.GetDisks()
		}
	})
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_DELETE, &pb.VMDeleteCommand{Name: req.Name}, actor(ctx)); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, DefaultCreateWait)
	defer cancel()
	err = waitState(wctx, g, func(st *raftstore.State) (bool, error) {
		_, ok := st.VMs[req.Name]
		return !ok, nil
	})
	if err != nil || req.KeepDisks {
		return &pb.DeleteVMResponse{}, err
	}
	// The VM is gone, so its volumes are free: delete them (templates and
	// volumes that are parents of clones stay, with the reason).
	var errs []error
	for _, d := range disks {
		vol, verr := s.getVolume(g, d.Pool, d.Volume)
		if verr != nil || vol.Template {
			continue
		}
		if _, err := s.volumeTask(ctx, g, "volume.delete", vol, nil, true); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errdefs.Precondition("vm %q deleted, but not all its disks: %v", req.Name, errors.Join(errs...))
	}
	return &pb.DeleteVMResponse{}, nil
}
