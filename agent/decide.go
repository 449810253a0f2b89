package agent

import (
	"github.com/minet/corral/hypervisor"
	pb "github.com/minet/corral/proto/corral/v1"
)

// powerAction is what one pass does about a VM's run state.
type powerAction int

const (
	// actWait: the domain is in transition (shutting down, or a state
	// libvirt cannot tell); look again once it has settled.
	actWait powerAction = iota
	// actReport: desired and observed agree; report what runs.
	actReport
	// actStart boots the guest.
	actStart
	// actStayOff: the guest stopped without corral (powered off from
	// inside, crashed, destroyed by hand) and is not HA-managed: like
	// Proxmox without HA it stays off, recorded as the guest's choice.
	actStayOff
	// actHoldError: the last start of this generation failed; do not
	// hammer it (a new start or edit clears the error).
	actHoldError
	// actStop stops a running guest (shutdown or destroy per the VM).
	actStop
	// actStopping: a stop is already under way.
	actStopping
	// actReboot restarts the guest inside the same QEMU (ACPI reset).
	actReboot
	// actColdReboot stops and starts the domain, so a changed
	// configuration applies.
	actColdReboot
)

var actionNames = [...]string{"wait", "report", "start", "stay-off", "hold-error", "stop", "stopping", "reboot", "cold-reboot"}

func (a powerAction) String() string { return actionNames[a] }

// observed is what libvirt shows of a VM's domain on this node.
type observed struct {
	exists bool
	state  hypervisor.State
}

func (o observed) running() bool {
	return o.exists && (o.state == hypervisor.StateRunning || o.state == hypervisor.StatePaused)
}

// decidePower is the agent's power policy: a pure function of the VM as
// the cluster wants it, the domain as libvirt shows it, and what this
// agent remembers doing (its memo).
func decidePower(v *pb.VM, d observed, m *vmMemo) powerAction {
	if d.exists && (d.state == hypervisor.StateShuttingDown || d.state == hypervisor.StateUnknown) {
		// Never act on the way down: starting now would boot again a
		// guest that is being destroyed from outside.
		return actWait
	}
	want := v.GetPower() == pb.PowerState_POWER_STATE_RUNNING
	switch running := d.running(); {
	case want && !running:
		if v.GetStatus().GetState() == pb.VMState_VM_STATE_ERROR && v.GetStatus().GetObservedGeneration() == v.GetGeneration() && m.lastFailure != "" {
			return actHoldError
		}
		stoppedOutside := d.exists && (d.state == hypervisor.StateStopped || d.state == hypervisor.StateCrashed) &&
			v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING && !m.expectStop
		if stoppedOutside && v.GetSpec().GetHa() != pb.HAMode_HA_MODE_RESTART {
			return actStayOff
		}
		return actStart
	case !want && running:
		if m.stopping {
			return actStopping
		}
		return actStop
	case want && running:
		if v.GetRebootSeq() > m.rebootSeq {
			if m.bootedGen != v.GetGeneration() {
				return actColdReboot
			}
			return actReboot
		}
		return actReport
	default: // stopped, as wanted
		return actReport
	}
}
