package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/hypervisor"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

// reconcileVMs converges libvirt to the VMs of one group placed here.
func (a *Agent) reconcileVMs(ctx context.Context, g *cluster.Group, hv Hypervisor) error {
	if err := a.ensureDirs(g.Name); err != nil {
		return err
	}
	var (
		mine   []*pb.VM
		all    map[string]*pb.VM
		nets   map[string]*pb.Network
		state  *raftstore.State
		pools  []*pb.StoragePool
		fenced bool
		clean  bool
	)
	// List libvirt first, then read the state: a domain that appears in
	// between (an incoming migration) is then seen with the state that
	// explains it.
	lctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
	doms, err := hv.List(lctx, g.Name)
	cancel()
	if err != nil {
		return fmt.Errorf("list domains: %w", err)
	}
	g.Store.Read(func(s *raftstore.State) {
		state = s.Copy()
		pools = s.SortedPools()
		all = state.VMs
		nets = state.Networks
		for _, v := range s.SortedVMs() {
			if v.Node == a.cfg.Node {
				mine = append(mine, v)
			}
		}
		if n, ok := s.Nodes[a.cfg.Node]; ok {
			fenced, clean = n.Fenced, n.FenceClean
		}
	})
	a.ensureCephSecrets(ctx, g, hv, pools)
	byName := map[string]hypervisor.Domain{}
	for _, d := range doms {
		byName[d.Name] = d
	}

	// Domains of this cluster that the state does not place here are stale
	// copies (the VM failed over while this node was cut off, was deleted,
	// or moved): destroy them without letting them write further.
	for _, d := range doms {
		v, ok := all[d.VMID]
		if ok && (v.Node == a.cfg.Node || v.MigratingTo == a.cfg.Node) {
			continue
		}
		if ok && v.Node != a.cfg.Node && v.MigratingTo == "" && d.State == hypervisor.StateRunning && !fenced {
			// Placed elsewhere but still running here and we are not
			// fenced: a live migration may just have finished; let its
			// task settle before destroying.
			if v.TaskId != "" {
				continue
			}
		}
		a.log.Warn("removing stale domain", "cluster", g.Name, "vm", d.VMID, "state", d.State)
		cctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
		if err := hv.Undefine(cctx, d.Name); err != nil {
			a.log.Error("remove stale domain", "vm", d.VMID, "err", err)
		}
		cancel()
		a.forget(g.Name, d.VMID)
	}
	if fenced {
		// A fenced node runs nothing until the leader unfences it. Its
		// guests that stayed placed here (HA off, or no room elsewhere)
		// lost their storage client to the blocklist: power them off
		// (their definition stays) and start them again once unfenced,
		// as a fenced Proxmox node's guests come back after its reboot.
		for _, v := range mine {
			d, ok := byName[DomainName(g.Name, v.Name)]
			if !ok || d.State == hypervisor.StateStopped || d.State == hypervisor.StateCrashed {
				continue
			}
			memo := a.memo(g.Name, v.Name)
			a.mu.Lock()
			memo.expectStop = true
			a.mu.Unlock()
			a.log.Warn("fenced: powering off guest until unfenced", "cluster", g.Name, "vm", v.Name)
			dctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
			if err := hv.Destroy(dctx, d.Name); err != nil {
				a.log.Error("fenced: power off", "vm", v.Name, "err", err)
			} else {
				a.report(ctx, g, v, pb.VMState_VM_STATE_STOPPED, "powered off: node fenced on storage; restarts once unfenced", d, false)
			}
			cancel()
		}
		if !clean {
			lctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
			left, err := hv.List(lctx, g.Name)
			cancel()
			// Clean: no copy of a VM placed elsewhere is left and nothing
			// runs (defined but stopped domains of VMs placed here stay).
			busy := 0
			for _, d := range left {
				v, ok := all[d.VMID]
				if !ok || v.Node != a.cfg.Node || (d.State != hypervisor.StateStopped && d.State != hypervisor.StateCrashed) {
					busy++
				}
			}
			if err == nil && busy == 0 {
				a.log.Info("fenced: no guest left running; reporting clean", "cluster", g.Name)
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, _ = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_NODE_HEALTH, &pb.NodeHealthCommand{Name: a.cfg.Node, Clean: true}, a.actor())
				cancel()
			}
		}
		return nil
	}
	for _, v := range mine {
		if v.MigratingTo != "" {
			continue // the migration task owns it
		}
		d, exists := byName[DomainName(g.Name, v.Name)]
		a.reconcileVM(ctx, g, hv, state, nets, v, d, exists)
	}
	return nil
}

// definedSecrets remembers on which libvirt connection each node defined
// each pool's Ceph secret (package-wide like backends; keyed by node).
var definedSecrets = struct {
	mu sync.Mutex
	m  map[string]Hypervisor
}{m: map[string]Hypervisor{}}

// ensureCephSecrets defines the libvirt secret of every RBD pool on this
// node, once per libvirt connection. A live migration brings a domain whose
// disks name the secret: the destination must hold it even if it never ran
// a VM of that pool, or the migration fails with "Secret not found".
func (a *Agent) ensureCephSecrets(ctx context.Context, g *cluster.Group, hv Hypervisor, pools []*pb.StoragePool) {
	d, ok := hv.(interface {
		DefineCephSecret(ctx context.Context, uuid, usage, key string) error
	})
	if !ok {
		return
	}
	for _, p := range pools {
		if p.Kind != "rbd" || p.SealedKey == "" {
			continue
		}
		k := a.cfg.Node + "|" + g.Name + "/" + p.Name + "/" + p.SealedKey
		definedSecrets.mu.Lock()
		done := definedSecrets.m[k] == hv
		definedSecrets.mu.Unlock()
		if done {
			continue
		}
		key, err := pki.Unseal(g.SealKey, p.SealedKey)
		if err != nil {
			a.log.Warn("unseal key of pool", "cluster", g.Name, "pool", p.Name, "err", err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
		err = d.DefineCephSecret(cctx, cephSecretUUID(g.Name, p.Name), cephSecretUsage(g.Name, p.Name), string(key))
		cancel()
		if err != nil {
			a.log.Warn("define ceph secret", "cluster", g.Name, "pool", p.Name, "err", err)
			continue
		}
		definedSecrets.mu.Lock()
		definedSecrets.m[k] = hv
		definedSecrets.mu.Unlock()
	}
}

func (a *Agent) reconcileVM(ctx context.Context, g *cluster.Group, hv Hypervisor, st *raftstore.State, nets map[string]*pb.Network, v *pb.VM, d hypervisor.Domain, exists bool) {
	name := DomainName(g.Name, v.Name)
	memo := a.memo(g.Name, v.Name)
	cctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
	defer cancel()

	if v.Deleting {
		if exists {
			if err := hv.Undefine(cctx, name); err != nil {
				a.report(ctx, g, v, pb.VMState_VM_STATE_ERROR, "delete: "+err.Error(), d, false)
				return
			}
		}
		a.deleteDisks(ctx, g, v)
		_ = os.Remove(a.ConsoleLog(g.Name, v.Name))
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		defer pcancel()
		if _, err := g.Propose(pctx, pb.CommandType_COMMAND_TYPE_VM_REMOVE, &pb.VMRemoveCommand{Name: v.Name, Node: a.cfg.Node}, a.actor()); err == nil {
			a.forget(g.Name, v.Name)
		}
		return
	}

	obs := observed{exists: exists, state: d.State}
	if !exists || memo.definedGen != v.Generation {
		spec, err := a.domainSpec(cctx, g, st, nets, v)
		if err == nil {
			err = hv.Define(cctx, spec)
		}
		if err != nil {
			a.report(ctx, g, v, pb.VMState_VM_STATE_ERROR, "define: "+err.Error(), d, false)
			return
		}
		if obs.running() && memo.definedGen >= 0 {
			// NICs move live (a changed network); the rest waits for
			// the next boot.
			if u, ok := hv.(interface {
				UpdateNIC(ctx context.Context, name string, nic hypervisor.NIC) error
			}); ok {
				for _, nic := range spec.NICs {
					if err := u.UpdateNIC(cctx, name, nic); err != nil {
						a.log.Warn("live NIC update refused; applies at next boot", "cluster", g.Name, "vm", v.Name, "mac", nic.MAC, "err", err)
					}
				}
			}
		}
		memo.definedGen = v.Generation
		if !exists {
			memo.bootedGen = v.Generation
		}
	}
	if memo.rebootSeq < 0 {
		// A new memo (agent restart, migration target) carries on from
		// what the cluster says was carried out: a reboot asked and not
		// done yet is done now.
		memo.rebootSeq = v.Status.GetObservedRebootSeq()
		memo.rebooted = memo.rebootSeq
	}

	a.mu.Lock()
	act := decidePower(v, obs, memo)
	switch act {
	case actStart, actStayOff:
		memo.expectStop = false // the stop we expected (if any) is over
	case actStop:
		memo.stopping, memo.expectStop = true, true
	}
	a.mu.Unlock()
	switch act {
	case actWait:
		// The stop's lifecycle event kicks the next pass; the timer
		// covers a missed one.
		time.AfterFunc(500*time.Millisecond, a.Kick)
	case actHoldError, actStopping:
	case actStayOff:
		a.report(ctx, g, v, pb.VMState_VM_STATE_STOPPED, "stopped outside corral: "+d.Reason, d, true)
	case actStart:
		a.report(ctx, g, v, pb.VMState_VM_STATE_STARTING, "", d, false)
		if err := a.prepareStart(cctx, g, v); err != nil {
			memo.lastFailure = err.Error()
			a.report(ctx, g, v, pb.VMState_VM_STATE_ERROR, "start: "+err.Error(), d, false)
			return
		}
		a.newConsole(g.Name, v.Name)
		if err := hv.Start(cctx, name); err != nil {
			memo.lastFailure = err.Error()
			a.report(ctx, g, v, pb.VMState_VM_STATE_ERROR, "start: "+err.Error(), d, false)
			return
		}
		memo.lastFailure = ""
		memo.bootedGen = memo.definedGen
		memo.rebootSeq, memo.rebooted = v.RebootSeq, v.RebootSeq // a fresh boot answers any reboot asked
		d.State = hypervisor.StateRunning
		a.report(ctx, g, v, pb.VMState_VM_STATE_RUNNING, "", d, false)
	case actStop:
		a.report(ctx, g, v, pb.VMState_VM_STATE_STOPPING, "", d, false)
		force := v.ForceStop
		go func() {
			sctx, cancel := context.WithTimeout(context.Background(), DefaultShutdownTimeout+DefaultCallTimeout)
			defer cancel()
			var err error
			if force {
				err = hv.Destroy(sctx, name)
			} else {
				err = hv.Shutdown(sctx, name, DefaultShutdownTimeout)
			}
			if err != nil {
				a.log.Error("stop", "cluster", g.Name, "vm", v.Name, "err", err)
			}
			a.mu.Lock()
			memo.stopping = false
			a.mu.Unlock()
			a.Kick()
		}()
	case actReboot, actColdReboot:
		memo.rebootSeq = v.RebootSeq // attempted: a failure is reported, not retried each pass
		var err error
		if act == actColdReboot {
			// A changed config applies at the next boot. The stop is ours
			// until the guest runs again: if the start fails, the next
			// pass starts it rather than taking it for a guest's stop.
			a.mu.Lock()
			memo.expectStop = true
			a.mu.Unlock()
			down := false
			if err = hv.Destroy(cctx, name); err == nil {
				down = true
				a.newConsole(g.Name, v.Name)
				err = hv.Start(cctx, name)
			}
			// The stop stays expected only while the guest is down after
			// a failed start; a failed destroy left it running.
			if err == nil || !down {
				a.mu.Lock()
				memo.expectStop = false
				a.mu.Unlock()
			}
			memo.bootedGen = v.Generation
		} else {
			err = hv.Reboot(cctx, name)
		}
		if err != nil {
			a.report(ctx, g, v, pb.VMState_VM_STATE_ERROR, "reboot: "+err.Error(), d, false)
			return
		}
		memo.rebooted = v.RebootSeq
		a.report(ctx, g, v, pb.VMState_VM_STATE_RUNNING, "rebooted", d, true)
	case actReport:
		state := pb.VMState_VM_STATE_STOPPED
		switch {
		case d.State == hypervisor.StatePaused:
			state = pb.VMState_VM_STATE_PAUSED
		case obs.running():
			state = pb.VMState_VM_STATE_RUNNING
		default:
			a.mu.Lock()
			memo.expectStop = false
			a.mu.Unlock()
		}
		a.report(ctx, g, v, state, "", d, false)
	}
}

// report proposes the observed status when it changed.
func (a *Agent) report(ctx context.Context, g *cluster.Group, v *pb.VM, st pb.VMState, reason string, d hypervisor.Domain, force bool) {
	memo := a.memo(g.Name, v.Name)
	status := &pb.VMStatus{State: st, Reason: reason, Node: a.cfg.Node, ObservedGeneration: v.Generation,
		ObservedRebootSeq: max(memo.rebooted, 0)}
	key := status.String()
	cur := v.Status
	// A running guest's usage (vCPU time, memory) is refreshed every
	// DefaultUsageEvery even when its state did not change.
	usageDue := (st == pb.VMState_VM_STATE_RUNNING || st == pb.VMState_VM_STATE_PAUSED) &&
		time.Since(memo.usageAt) >= DefaultUsageEvery && d.CPUTimeNs > 0
	if !force && !usageDue && memo.lastReport == key && cur.GetState() == st && cur.GetObservedGeneration() == v.Generation {
		return
	}
	if !force && !usageDue && cur.GetState() == st && cur.GetReason() == reason && cur.GetObservedGeneration() == v.Generation &&
		cur.GetObservedRebootSeq() == status.ObservedRebootSeq && cur.GetNode() == a.cfg.Node {
		memo.lastReport = key
		return
	}
	status.CpuTimeNs, status.MemoryKib = d.CPUTimeNs, d.MemoryKiB
	stoppedByGuest := force && st == pb.VMState_VM_STATE_STOPPED
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VM_STATUS, &pb.VMStatusCommand{
		Name: v.Name, Node: a.cfg.Node, Status: proto.Clone(status).(*pb.VMStatus), StoppedByGuest: stoppedByGuest,
	}, a.actor())
	if err != nil {
		a.log.Warn("report status", "cluster", g.Name, "vm", v.Name, "err", err)
		return
	}
	memo.lastReport = key
	if d.CPUTimeNs > 0 {
		memo.usageAt = time.Now()
	}
}

// newConsole starts a new console history at a cold boot; otherwise a VM
// that comes back to a node (HA restart, stop/start) would replay its
// previous instance, and a reader waiting for a line would match a stale
// one. QEMU appends, so truncating is safe; migration keeps the log.
func (a *Agent) newConsole(cluster, vm string) {
	// Removed, not truncated: no QEMU holds it (the guest is down), the new
	// one creates it, and a client following the old file sees for sure
	// that it was replaced (a truncation can go unnoticed once the new
	// boot wrote past the client's offset).
	if err := os.Remove(a.ConsoleLog(cluster, vm)); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("reset console log", "cluster", cluster, "vm", vm, "err", err)
	}
}
