package raftstore

import (
	"fmt"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

func init() {
	register(pb.CommandType_COMMAND_TYPE_VM_CREATE, checkVMCreate, applyVMCreate)
	register(pb.CommandType_COMMAND_TYPE_VM_UPDATE, checkVMUpdate, applyVMUpdate)
	register(pb.CommandType_COMMAND_TYPE_VM_POWER, checkVMPower, applyVMPower)
	register(pb.CommandType_COMMAND_TYPE_VM_DELETE, checkVMDelete, applyVMDelete)
	register(pb.CommandType_COMMAND_TYPE_VM_REMOVE, checkVMRemove, applyVMRemove)
	register(pb.CommandType_COMMAND_TYPE_VM_STATUS, checkVMStatus, applyVMStatus)
	register(pb.CommandType_COMMAND_TYPE_VM_MOVE, checkVMMove, applyVMMove)
	register(pb.CommandType_COMMAND_TYPE_VM_MIGRATING, checkVMMigrating, applyVMMigrating)
	register(pb.CommandType_COMMAND_TYPE_VM_FAILOVER, checkVMFailover, applyVMFailover)
}

// CheckSpec validates a VM spec on its own (no state needed).
func CheckSpec(s *pb.VMSpec) error {
	if s == nil {
		return errdefs.Invalid("missing VM spec")
	}
	if s.Vcpus < 1 || s.Vcpus > 256 {
		return errdefs.Invalid("vcpus must be between 1 and 256, got %d", s.Vcpus)
	}
	if s.MemoryMib < 16 || s.MemoryMib > 4<<20 {
		return errdefs.Invalid("memory must be between 16 MiB and 4 TiB, got %d MiB", s.MemoryMib)
	}
	if s.Kernel == "" && len(s.Disks) == 0 {
		return errdefs.Invalid("a VM needs a kernel (--kernel) or a boot disk (--disk/--from)")
	}
	if s.Initrd != "" && s.Kernel == "" {
		return errdefs.Invalid("--initrd needs --kernel")
	}
	seen := map[string]bool{}
	for _, n := range s.Nics {
		if n.Network == "" {
			return errdefs.Invalid("every NIC must name a network")
		}
		if n.Mac != "" {
			if seen[n.Mac] {
				return errdefs.Invalid("MAC %s used twice", n.Mac)
			}
			seen[n.Mac] = true
		}
	}
	return nil
}

func placeable(s *State, node string) error {
	n, ok := s.Nodes[node]
	if !ok {
		return errdefs.NotFound("node %q not found: see `corral node list`", node)
	}
	if n.Role == pb.NodeRole_NODE_ROLE_WITNESS {
		return errdefs.Precondition("node %q is a witness and runs no VMs", node)
	}
	return nil
}

func checkVMCreate(s *State, c *pb.VMCreateCommand, _ Meta) error {
	v := c.GetVm()
	if err := ValidName("vm", v.GetName()); err != nil {
		return err
	}
	if _, ok := s.VMs[v.Name]; ok {
		return errdefs.Exists("vm %q already exists: pick another name or delete it first", v.Name)
	}
	if err := CheckSpec(v.Spec); err != nil {
		return err
	}
	for _, n := range v.Spec.Nics {
		if _, ok := s.Networks[n.Network]; !ok {
			return errdefs.NotFound("network %q not found: see `corral net list`", n.Network)
		}
	}
	for _, d := range v.Spec.Disks {
		vol, ok := s.Volumes[VolumeKey(d.Pool, d.Volume)]
		if !ok {
			return errdefs.NotFound("volume %s/%s not found", d.Pool, d.Volume)
		}
		if vol.Vm != "" && vol.Vm != v.Name {
			return errdefs.Precondition("volume %s/%s is used by vm %q", d.Pool, d.Volume, vol.Vm)
		}
		if vol.Template {
			return errdefs.Precondition("volume %s/%s is a template: create the VM --from it instead", d.Pool, d.Volume)
		}
	}
	if v.Node != "" {
		return placeable(s, v.Node)
	}
	return nil
}

func applyVMCreate(s *State, c *pb.VMCreateCommand, m Meta) any {
	v := proto.Clone(c.Vm).(*pb.VM)
	v.CreatedUnixNano = m.Time
	v.Generation = 1
	if v.Status == nil {
		v.Status = &pb.VMStatus{State: pb.VMState_VM_STATE_STOPPED}
	}
	s.VMs[v.Name] = v
	for _, d := range v.Spec.Disks {
		attach(s, d, v.Name)
	}
	event(s, m, "vm.create", v.Name, "ok", "placed on "+v.Node)
	return v
}

func attach(s *State, d *pb.DiskSpec, vm string) {
	k := VolumeKey(d.Pool, d.Volume)
	if vol, ok := s.Volumes[k]; ok {
		vol = proto.Clone(vol).(*pb.Volume)
		vol.Vm = vm
		s.Volumes[k] = vol
	}
}

func getVM(s *State, name string) (*pb.VM, error) {
	v, ok := s.VMs[name]
	if !ok {
		return nil, errdefs.NotFound("vm %q not found: see `corral vm list`", name)
	}
	return v, nil
}

func checkVMUpdate(s *State, c *pb.VMUpdateCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if c.ExpectedGeneration != 0 && c.ExpectedGeneration != v.Generation {
		return errdefs.Precondition("vm %q changed meanwhile (generation %d, expected %d): read it again and retry", c.Name, v.Generation, c.ExpectedGeneration)
	}
	if err := CheckSpec(c.Spec); err != nil {
		return err
	}
	for _, n := range c.Spec.Nics {
		if _, ok := s.Networks[n.Network]; !ok {
			return errdefs.NotFound("network %q not found", n.Network)
		}
	}
	return nil
}

func applyVMUpdate(s *State, c *pb.VMUpdateCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	v.Spec = c.Spec
	v.Generation++
	s.VMs[v.Name] = v
	event(s, m, "vm.update", v.Name, "ok", fmt.Sprintf("generation %d", v.Generation))
	return v
}

func checkVMPower(s *State, c *pb.VMPowerCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if v.Deleting {
		return errdefs.Precondition("vm %q is being deleted", c.Name)
	}
	if v.Template && c.Power == pb.PowerState_POWER_STATE_RUNNING {
		return errdefs.Precondition("vm %q is a template and cannot run", c.Name)
	}
	if c.Reboot && v.Power != pb.PowerState_POWER_STATE_RUNNING {
		return errdefs.Precondition("vm %q is not running: start it instead", c.Name)
	}
	return nil
}

func applyVMPower(s *State, c *pb.VMPowerCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	action := "vm.reboot"
	if c.Reboot {
		v.RebootSeq++
	} else if c.Power != pb.PowerState_POWER_STATE_UNSPECIFIED {
		v.Power = c.Power
		v.ForceStop = c.Force
		action = "vm.start"
		if c.Power == pb.PowerState_POWER_STATE_STOPPED {
			action = "vm.stop"
		}
	}
	if c.ClearError || c.Power == pb.PowerState_POWER_STATE_RUNNING {
		v.RestartsUnixNano = nil
		if v.Status.GetState() == pb.VMState_VM_STATE_ERROR {
			st := proto.Clone(v.Status).(*pb.VMStatus)
			st.State, st.Reason = pb.VMState_VM_STATE_STOPPED, ""
			v.Status = st
		}
	}
	s.VMs[v.Name] = v
	event(s, m, action, v.Name, "ok", "")
	return v
}

func checkVMDelete(s *State, c *pb.VMDeleteCommand, _ Meta) error {
	_, err := getVM(s, c.Name)
	return err
}

func applyVMDelete(s *State, c *pb.VMDeleteCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	v.Deleting = true
	v.Power = pb.PowerState_POWER_STATE_STOPPED
	s.VMs[v.Name] = v
	event(s, m, "vm.delete", v.Name, "accepted", "")
	if v.Node == "" {
		// Never placed: nothing to undefine anywhere.
		removeVM(s, v.Name)
	}
	return v
}

func removeVM(s *State, name string) {
	v := s.VMs[name]
	delete(s.VMs, name)
	for k, vol := range s.Volumes {
		if vol.Vm == name {
			vol = proto.Clone(vol).(*pb.Volume)
			vol.Vm = ""
			s.Volumes[k] = vol
		}
	}
	_ = v
}

func checkVMRemove(s *State, c *pb.VMRemoveCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if !v.Deleting {
		return errdefs.Precondition("vm %q is not being deleted", c.Name)
	}
	return nil
}

func applyVMRemove(s *State, c *pb.VMRemoveCommand, m Meta) any {
	removeVM(s, c.Name)
	event(s, m, "vm.removed", c.Name, "ok", "undefined on "+c.Node)
	return nil
}

func checkVMStatus(s *State, c *pb.VMStatusCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if c.Status == nil {
		return errdefs.Invalid("missing status")
	}
	// Only the node the VM is placed on speaks for it, so a stale report
	// from a node that lost it (fenced, migrated away) cannot win.
	if c.Node != v.Node && c.Status.State == pb.VMState_VM_STATE_RUNNING {
		return errdefs.Precondition("node %q reports vm %q but it is placed on %q", c.Node, c.Name, v.Node)
	}
	return nil
}

func applyVMStatus(s *State, c *pb.VMStatusCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	if c.Node != v.Node {
		return v
	}
	prev := v.Status.GetState()
	st := proto.Clone(c.Status).(*pb.VMStatus)
	st.Node = c.Node
	st.UpdatedUnixNano = m.Time
	st.Boots = v.Status.GetBoots()
	if st.State == pb.VMState_VM_STATE_RUNNING && prev != pb.VMState_VM_STATE_RUNNING && prev != pb.VMState_VM_STATE_MIGRATING {
		st.Boots++
	}
	v.Status = st
	if c.StoppedByGuest && v.Power == pb.PowerState_POWER_STATE_RUNNING && v.Spec.Ha != pb.HAMode_HA_MODE_RESTART {
		// Like Proxmox without HA: a guest that powers itself off stays off.
		v.Power = pb.PowerState_POWER_STATE_STOPPED
	}
	s.VMs[v.Name] = v
	if prev != st.State {
		event(s, m, "vm.state", v.Name, stateName(st.State), st.Reason)
	}
	return v
}

func stateName(st pb.VMState) string {
	switch st {
	case pb.VMState_VM_STATE_STOPPED:
		return "stopped"
	case pb.VMState_VM_STATE_STARTING:
		return "starting"
	case pb.VMState_VM_STATE_RUNNING:
		return "running"
	case pb.VMState_VM_STATE_PAUSED:
		return "paused"
	case pb.VMState_VM_STATE_MIGRATING:
		return "migrating"
	case pb.VMState_VM_STATE_ERROR:
		return "error"
	case pb.VMState_VM_STATE_STOPPING:
		return "stopping"
	}
	return "unknown"
}

func checkVMMove(s *State, c *pb.VMMoveCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if c.From != "" && v.Node != c.From {
		return errdefs.Precondition("vm %q is on %q, not %q", c.Name, v.Node, c.From)
	}
	return placeable(s, c.To)
}

func applyVMMove(s *State, c *pb.VMMoveCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	from := v.Node
	v.Node = c.To
	v.MigratingTo, v.TaskId = "", ""
	s.VMs[v.Name] = v
	event(s, m, "vm.move", v.Name, "ok", fmt.Sprintf("%s -> %s: %s", from, c.To, c.Reason))
	return v
}

func checkVMMigrating(s *State, c *pb.VMMigratingCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if c.To != "" {
		if v.MigratingTo != "" {
			return errdefs.Precondition("vm %q is already migrating to %q", c.Name, v.MigratingTo)
		}
		return placeable(s, c.To)
	}
	return nil
}

func applyVMMigrating(s *State, c *pb.VMMigratingCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	v.MigratingTo = c.To
	v.TaskId = c.TaskId
	s.VMs[v.Name] = v
	return v
}

func checkVMFailover(s *State, c *pb.VMFailoverCommand, _ Meta) error {
	v, err := getVM(s, c.Name)
	if err != nil {
		return err
	}
	if v.Node != c.From {
		return errdefs.Precondition("vm %q is on %q, not %q", c.Name, v.Node, c.From)
	}
	n, ok := s.Nodes[c.From]
	// Storage fencing comes first: a VM of a node that is not fenced must
	// never start elsewhere, or two copies could write one disk.
	if ok && !n.Fenced {
		return errdefs.Precondition("node %q is not fenced: refusing to restart vm %q elsewhere", c.From, c.Name)
	}
	if c.GiveUp {
		return nil
	}
	return placeable(s, c.To)
}

func applyVMFailover(s *State, c *pb.VMFailoverCommand, m Meta) any {
	v := proto.Clone(s.VMs[c.Name]).(*pb.VM)
	if c.GiveUp {
		v.Power = pb.PowerState_POWER_STATE_STOPPED
		v.Status = &pb.VMStatus{State: pb.VMState_VM_STATE_ERROR, Reason: c.Reason, Boots: v.Status.GetBoots(), UpdatedUnixNano: m.Time}
		s.VMs[v.Name] = v
		event(s, m, "ha.give-up", v.Name, "stopped", c.Reason)
		return v
	}
	v.Node = c.To
	v.MigratingTo, v.TaskId = "", ""
	v.RestartsUnixNano = append(v.RestartsUnixNano, m.Time)
	st := proto.Clone(v.Status).(*pb.VMStatus)
	st.State, st.Reason, st.Node = pb.VMState_VM_STATE_STOPPED, "restarting after loss of "+c.From, ""
	v.Status = st
	s.VMs[v.Name] = v
	event(s, m, "ha.restart", v.Name, "ok", fmt.Sprintf("%s -> %s: %s", c.From, c.To, c.Reason))
	return v
}
