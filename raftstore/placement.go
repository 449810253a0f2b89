package raftstore

import (
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/scheduler"
)

// SchedulerSnapshot converts the state into the scheduler's input: nodes
// with their health and inventory, VMs with what they reserve.
func (s *State) SchedulerSnapshot() *scheduler.Snapshot {
	set := s.Settings()
	nodes := make([]scheduler.Node, 0, len(s.Nodes))
	for _, n := range s.SortedNodes() {
		inv := n.GetInventory()
		nodes = append(nodes, scheduler.Node{
			Name: n.Name, Witness: n.Role == pb.NodeRole_NODE_ROLE_WITNESS, Maintenance: n.Maintenance,
			Down:  n.Health == pb.NodeHealth_NODE_HEALTH_DOWN || n.Fenced,
			Ready: n.Ready, CPUs: int(inv.GetCpus()), MemoryMiB: inv.GetMemoryMib(), Hypervisor: inv.GetHypervisor(),
		})
	}
	vms := make([]scheduler.VM, 0, len(s.VMs))
	for _, v := range s.SortedVMs() {
		vms = append(vms, SchedulerVM(v))
	}
	return scheduler.NewSnapshot(nodes, vms, scheduler.Policy{CPUOvercommit: set.CpuOvercommit, MemOvercommit: set.MemOvercommit})
}

// SchedulerVM converts one VM.
func SchedulerVM(v *pb.VM) scheduler.VM {
	return scheduler.VM{
		Name: v.Name, Node: v.Node, VCPUs: int(v.Spec.GetVcpus()), MemoryMiB: v.Spec.GetMemoryMib(),
		AntiAffinity: v.Spec.GetAntiAffinity(), Running: v.Power == pb.PowerState_POWER_STATE_RUNNING,
	}
}
