// Package scheduler decides where VMs run. It is a set of pure functions of
// (cluster snapshot, request) → decision + reasons: no I/O, no clock, no
// protobuf. The leader converts its replicated state into a Snapshot, asks
// Place (one VM: create, start, migrate) or PlaceAll (drain, failover), and
// proposes the result through Raft; the reasons go back to the user verbatim,
// so every refused node says why in words an operator can act on.
//
// Rules, in the order a node is checked:
//   - a node named in Request.Exclude (the migration source, the failed node);
//   - never a witness, a down (not heartbeating or fenced), an in-maintenance
//     or a not-ready node (no inventory reported yet);
//   - when the user forced a node (--node), only that node;
//   - anti-affinity: never beside a placed VM of the same group (the VM itself
//     does not count, so re-placing a VM does not block on its own copy);
//   - free memory and vCPU, see Policy.
//
// Among nodes that fit, the first fitting Request.Preferred node wins (HA
// groups); otherwise spread: most free memory fraction, then fewer VMs, then
// node name, so equal inputs give equal outputs whatever the input order.
//
// A Decision lists every node with its verdict, which costs a row per node;
// automatic placement on big clusters sets Request.Brief to get only the
// chosen node and the refused nodes tried before it.
package scheduler

// Defaults applied to a zero Policy field. They live here, in one place, so
// the CLI can show them in --help.
const (
	// DefaultCPUOvercommit: vCPUs are time-shared; 4 vCPU per host thread
	// is the usual safe ratio for mostly idle student-association VMs.
	DefaultCPUOvercommit = 4.0
	// DefaultMemOvercommit: memory is not overcommitted (no balloon or swap
	// is configured, so an overcommitted host OOM-kills a guest).
	DefaultMemOvercommit = 1.0
	// DefaultReservedMemMiB is kept per node for the host itself: kernel,
	// libvirtd, the corral agent, OVS, the Ceph client caches and qemu's
	// per-guest overhead beyond guest RAM. 1 GiB measured comfortable on
	// small hosts; set Policy.ReservedMemMiB to override (negative = none).
	DefaultReservedMemMiB = 1024
)

// Node is one cluster member as the scheduler sees it.
type Node struct {
	Name        string
	Witness     bool // votes in Raft, runs no VMs
	Maintenance bool
	Down        bool // not heartbeating, or fenced
	Ready       bool // the agent reported its inventory
	CPUs        int  // host threads
	MemoryMiB   int64
	Hypervisor  string // "kvm" or "qemu"; informative only for now
	Labels      map[string]string
}

// VM is a VM's footprint. Only a VM with Running set and a known Node counts
// against that node's capacity and anti-affinity ("running or defined to
// run": a stopped VM reserves nothing).
type VM struct {
	Name         string
	Node         string
	VCPUs        int
	MemoryMiB    int64
	AntiAffinity string // group name; "" for none
	Running      bool
}

// Policy sets capacity ratios. A zero field takes its Default*.
type Policy struct {
	CPUOvercommit  float64 // vCPUs allowed per host CPU
	MemOvercommit  float64 // guest MiB allowed per host MiB
	ReservedMemMiB int64   // per node, for the host; negative means none
}

// withDefaults returns p with zero fields replaced by the defaults.
func (p Policy) withDefaults() Policy {
	if p.CPUOvercommit <= 0 {
		p.CPUOvercommit = DefaultCPUOvercommit
	}
	if p.MemOvercommit <= 0 {
		p.MemOvercommit = DefaultMemOvercommit
	}
	switch {
	case p.ReservedMemMiB == 0:
		p.ReservedMemMiB = DefaultReservedMemMiB
	case p.ReservedMemMiB < 0:
		p.ReservedMemMiB = 0
	}
	return p
}

// Request asks where VM should run.
type Request struct {
	VM VM
	// Node is the node the user forced (--node); "" lets the scheduler
	// choose. A forced node is still checked and refused with its reason.
	Node string
	// Preferred is an HA group's ordered node list: the first one that fits
	// wins; if none fits, the best other node is chosen.
	Preferred []string
	// Exclude lists nodes that must not be chosen: the failed node on
	// failover, the source on migration.
	Exclude []string
	// RequireShared is reserved for storage-aware placement (VM disks on
	// node-local storage); the snapshot carries no storage inventory yet,
	// so it is ignored.
	RequireShared bool
	// Priority orders a PlaceAll batch: higher first, so the important VMs
	// get the room when there is not enough for all.
	Priority int
	// Brief trims a successful Decision's Candidates to the chosen node
	// and, by name, the refused nodes tried before it: the preferred ones
	// and those that would spread better (a witness, down, maintenance or
	// not-ready node is never "better", so it appears only if preferred).
	// That is the "why not X" a log line needs, without a 48-byte row per
	// cluster node per decision; meant for batch and automatic placement
	// (drain, failover) on big clusters. A failure still lists every node.
	Brief bool
}

// Candidate is one node's verdict for a request.
type Candidate struct {
	Node   string
	Fits   bool
	Reason string // why refused, or its free room ("free 3.2 GiB RAM, 6 vCPU")
	// Score is the fraction of the node's memory capacity free before this
	// placement (the spread key); 0 for a node that does not fit.
	Score float64
}

// Decision is Place's answer.
type Decision struct {
	VM   string
	Node string // "" when nothing fits
	// Candidates holds every node: the chosen one first, then the other
	// fitting nodes best first, then the refused nodes by name. With
	// Request.Brief a successful decision holds only the chosen node and
	// the refused nodes ranked before it, by name.
	Candidates []Candidate
}
