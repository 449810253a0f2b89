package raftstore

import (
	"testing"

	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/scheduler"
)

func TestSchedulerSnapshot(t *testing.T) {
	t.Parallel()
	s := fixtureState(t)
	applyAll(t, s,
		cmd(cInventory, &pb.NodeInventoryCommand{Name: "n1", Inventory: &pb.Inventory{Cpus: 8, MemoryMib: 16384, Hypervisor: "kvm"}}),
		cmd(cMaintenance, &pb.NodeMaintenanceCommand{Name: "n2", Maintenance: true}),
		fence("n2"),
		power("vm1", pb.PowerState_POWER_STATE_RUNNING),
		cmd(cSettings, &pb.SettingsCommand{Settings: &pb.Settings{CpuOvercommit: 2, MemOvercommit: 1.5}}),
	)
	snap := s.SchedulerSnapshot()

	wantNodes := []scheduler.Node{
		{Name: "n1", Ready: true, CPUs: 8, MemoryMiB: 16384, Hypervisor: "kvm"},
		{Name: "n2", Maintenance: true, Down: true},
		{Name: "w1", Witness: true},
	}
	if len(snap.Nodes) != len(wantNodes) {
		t.Fatalf("nodes = %+v", snap.Nodes)
	}
	for i, want := range wantNodes {
		got := snap.Nodes[i]
		if got.Name != want.Name || got.Ready != want.Ready || got.CPUs != want.CPUs || got.MemoryMiB != want.MemoryMiB ||
			got.Hypervisor != want.Hypervisor || got.Maintenance != want.Maintenance || got.Down != want.Down || got.Witness != want.Witness {
			t.Errorf("node %d = %+v, want %+v", i, got, want)
		}
	}
	vms := map[string]scheduler.VM{}
	for _, v := range snap.VMs {
		vms[v.Name] = v
	}
	if v := vms["vm1"]; v != (scheduler.VM{Name: "vm1", Node: "n1", VCPUs: 2, MemoryMiB: 512, Running: true}) {
		t.Errorf("vm1 = %+v", v)
	}
	if v := vms["vm2"]; v.Running || v.Node != "" {
		t.Errorf("vm2 (stopped, unplaced) = %+v", v)
	}
	if snap.Policy.CPUOvercommit != 2 || snap.Policy.MemOvercommit != 1.5 {
		t.Errorf("policy = %+v, want the cluster settings", snap.Policy)
	}
}
