package api

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"github.com/minet/corral/scheduler"
)

// preflight checks that vm can live-migrate to node (or picks one) before
// anything moves: running, shared storage, not a witness, capacity, same
// hypervisor type.
func preflight(st *raftstore.State, vm *pb.VM, node string) (string, error) {
	if vm.Status.GetState() != pb.VMState_VM_STATE_RUNNING {
		return "", errdefs.Precondition("vm %q is not running: move a stopped VM with `corral vm move`", vm.Name)
	}
	if vm.MigratingTo != "" {
		return "", errdefs.Precondition("vm %q is already migrating to %s", vm.Name, vm.MigratingTo)
	}
	for _, d := range vm.Spec.Disks {
		if p, ok := st.Pools[d.Pool]; ok && p.Kind != "rbd" {
			return "", errdefs.Precondition("vm %q has disk %s/%s on local storage (%s): it cannot live-migrate; move its data to a shared pool first", vm.Name, d.Pool, d.Volume, p.Kind)
		}
	}
	if node == vm.Node {
		return "", errdefs.Invalid("vm %q already runs on %s", vm.Name, node)
	}
	if n, ok := st.Nodes[node]; ok && n.Role == pb.NodeRole_NODE_ROLE_WITNESS {
		return "", errdefs.Precondition("node %q is a witness and runs no VMs", node)
	}
	snap := st.SchedulerSnapshot()
	sv := raftstore.SchedulerVM(vm)
	sv.Node = ""
	dec, err := scheduler.Place(snap, scheduler.Request{VM: sv, Node: node, Exclude: []string{vm.Node}})
	if err != nil {
		return "", placeErr(err)
	}
	src, dst := st.Nodes[vm.Node], st.Nodes[dec.Node]
	if src != nil && dst != nil && src.Inventory.GetHypervisor() != dst.Inventory.GetHypervisor() {
		return "", errdefs.Precondition("vm %q runs under %s on %s but %s offers %s: live migration needs the same hypervisor type", vm.Name, src.Inventory.GetHypervisor(), src.Name, dst.Name, dst.Inventory.GetHypervisor())
	}
	return dec.Node, nil
}

// startMigration records the migration and its task (executed by the
// source node's agent).
func startMigration(ctx context.Context, g *cluster.Group, vm *pb.VM, to string, maxDowntimeMs, bwMiBs int64, who string) (*pb.Task, error) {
	id := uuid.NewString()
	task := &pb.Task{Id: id, Kind: "vm.migrate", Target: vm.Name, Node: vm.Node, Params: map[string]string{
		"vm": vm.Name, "to": to, "from": vm.Node,
		"max_downtime_ms": strconv.FormatInt(maxDowntimeMs, 10), "bandwidth_mibs": strconv.FormatInt(bwMiBs, 10),
	}}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_MIGRATING, &pb.VMMigratingCommand{Name: vm.Name, To: to, TaskId: id}, who); err != nil {
		return nil, err
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_TASK_CREATE, &pb.TaskCreateCommand{Task: task}, who); err != nil {
		// The caller's context may be what failed: roll back regardless.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = g.Propose(rctx, pb.CommandType_COMMAND_TYPE_VM_MIGRATING, &pb.VMMigratingCommand{Name: vm.Name}, who)
		return nil, err
	}
	var out *pb.Task
	g.Store.Read(func(st *raftstore.State) { out = st.Tasks[id] })
	return out, nil
}

func (s *Server) MigrateVM(ctx context.Context, req *pb.MigrateVMRequest) (*pb.MigrateVMResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	var (
		to   string
		vm   *pb.VM
		err2 error
	)
	g.Store.Read(func(st *raftstore.State) {
		vm = st.VMs[req.Name]
		if vm == nil {
			err2 = errdefs.NotFound("vm %q not found", req.Name)
			return
		}
		to, err2 = preflight(st, vm, req.Node)
	})
	if err2 != nil {
		return nil, err2
	}
	t, err := startMigration(ctx, g, vm, to, req.MaxDowntimeMs, req.BandwidthMibs, actor(ctx))
	if err != nil {
		return nil, err
	}
	return &pb.MigrateVMResponse{Task: t}, nil
}

// DrainNode plans a target for every VM of the node first and moves
// nothing if one cannot go; then it enters maintenance and migrates them.
func (s *Server) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	type move struct {
		vm *pb.VM
		to string
	}
	var (
		moves []move
		perr  error
	)
	g.Store.Read(func(st *raftstore.State) {
		n, ok := st.Nodes[req.Name]
		if !ok {
			perr = errdefs.NotFound("node %q not found", req.Name)
			return
		}
		if n.Role == pb.NodeRole_NODE_ROLE_WITNESS {
			perr = errdefs.Precondition("node %q is a witness: it runs no VMs to drain", req.Name)
			return
		}
		snap := st.SchedulerSnapshot()
		var problems []string
		for _, v := range st.VMsOn(req.Name) {
			if v.Power != pb.PowerState_POWER_STATE_RUNNING {
				continue // stopped VMs stay defined; they start elsewhere when asked
			}
			to, err := preflight(st, v, "")
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			sv := raftstore.SchedulerVM(v)
			sv.Node = ""
			dec, err := scheduler.Place(snap, scheduler.Request{VM: sv, Node: to, Exclude: []string{req.Name}, Brief: true})
			if err != nil {
				problems = append(problems, placeErr(err).Error())
				continue
			}
			sv.Node = dec.Node
			snap.Commit(sv)
			moves = append(moves, move{v, dec.Node})
		}
		if len(problems) > 0 {
			perr = errdefs.Precondition("cannot drain %s, nothing was moved: %s", req.Name, strings.Join(problems, "; "))
		}
	})
	if perr != nil {
		return nil, perr
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_NODE_MAINTENANCE, &pb.NodeMaintenanceCommand{Name: req.Name, Maintenance: true}, actor(ctx)); err != nil {
		return nil, err
	}
	var ids []string
	for _, mv := range moves {
		t, err := startMigration(ctx, g, mv.vm, mv.to, 0, 0, actor(ctx))
		if err != nil {
			return nil, err
		}
		ids = append(ids, t.Id)
	}
	// One parent task follows the migrations, so the drain is a task with
	// progress like every long operation.
	var (
		exec string
		xerr error
	)
	g.Store.Read(func(st *raftstore.State) { exec, xerr = s.executor(st, &pb.Volume{}) })
	if xerr != nil {
		return nil, xerr
	}
	id := uuid.NewString()
	parent := &pb.Task{Id: id, Kind: "node.drain", Target: req.Name, Node: exec,
		Params: map[string]string{"node": req.Name, "tasks": strings.Join(ids, ",")}}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_TASK_CREATE, &pb.TaskCreateCommand{Task: parent}, actor(ctx)); err != nil {
		return nil, err
	}
	g.Store.Read(func(st *raftstore.State) { parent = st.Tasks[id] })
	return &pb.DrainNodeResponse{Task: parent}, nil
}

// MoveVM moves a stopped VM to another node: only its placement changes,
// so its disks must be shared (or already on that node).
func (s *Server) MoveVM(ctx context.Context, req *pb.MoveVMRequest) (*pb.MoveVMResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	var (
		vm   *pb.VM
		perr error
	)
	g.Store.Read(func(st *raftstore.State) {
		vm = st.VMs[req.Name]
		if vm == nil {
			perr = errdefs.NotFound("vm %q not found", req.Name)
			return
		}
		if vm.Power == pb.PowerState_POWER_STATE_RUNNING || vm.Status.GetState() != pb.VMState_VM_STATE_STOPPED {
			perr = errdefs.Precondition("vm %q is not stopped: stop it first, or use `corral vm migrate` to move it live", req.Name)
			return
		}
		if local := localPoolNode(st, vm.Spec); local != "" && local != req.Node {
			perr = errdefs.Precondition("vm %q has a disk on node-local storage on %s: it cannot move to %s", req.Name, local, req.Node)
			return
		}
		sv := raftstore.SchedulerVM(vm)
		sv.Node = ""
		if _, err := scheduler.Place(st.SchedulerSnapshot(), scheduler.Request{VM: sv, Node: req.Node}); err != nil {
			perr = placeErr(err)
		}
	})
	if perr != nil {
		return nil, perr
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_MOVE, &pb.VMMoveCommand{Name: req.Name, From: vm.Node, To: req.Node, Reason: "cold move"}, actor(ctx)); err != nil {
		return nil, err
	}
	v, err := s.getVM(ctx, req.Cluster, req.Name, false)
	return &pb.MoveVMResponse{Vm: v}, err
}
