// Package netbridge converges one node's bridges to the networks declared
// for its cluster.
//
// The node agent hands Apply the full list of declared networks; Apply
// creates, fixes and removes bridges so the node matches it, and reports one
// Status per network. A VM NIC then attaches to the bridge named by
// BridgeFor. Two backends exist:
//
//   - linux: one kernel bridge per network (netlink). A tagged network gets an
//     UPLINK.VLAN 802.1Q sub-interface as its only port (the Proxmox layout);
//     an untagged one enslaves the uplink itself.
//   - ovs: one Open vSwitch bridge per uplink, managed over OVSDB with
//     libovsdb; the uplink is a trunk port carrying the declared VLANs and VM
//     ports are access ports tagged with their network's VLAN.
//
// netbridge owns only what it created: linux links carry the alias
// "corral:<network>", OVS rows carry external_ids:corral-network. Anything
// else on the node is never modified or removed, only reported.
//
// VM NICs on OVS: libvirt plugs a tap itself with <virtualport
// type='openvswitch'/> and <vlan><tag id='VLAN'/></vlan> by running
// ovs-vsctl, which finds the database at $OVS_RUNDIR/db.sock (default
// /var/run/openvswitch). Start libvirtd with OVS_RUNDIR set to the
// directory of Options.OVSDBSock when it is not the default. Where that is
// not possible, Converger.AttachPort plugs a port over OVSDB instead.
//
// This package knows nothing of Raft or protobuf: it is driven by the agent.
package netbridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Kind selects the bridge backend of a network.
type Kind string

const (
	// KindLinux is a kernel bridge per network, configured over netlink.
	KindLinux Kind = "linux"
	// KindOVS is an Open vSwitch bridge per uplink, configured over OVSDB.
	KindOVS Kind = "ovs"
)

// Network is one network declared for the cluster, as a node must realise it.
type Network struct {
	Name string
	// VLAN is the 802.1Q tag; 0 means untagged.
	VLAN int
	// Kind is "linux" or "ovs"; empty means linux.
	Kind Kind
	// Uplink is the node's interface that carries the network (e.g. "eth1").
	Uplink string
	// MTU of the bridge and its ports; 0 leaves the kernel/OVS default.
	MTU int
	// STP enables spanning tree on the bridge (RSTP for OVS).
	STP bool
	// Priority is the bridge priority for STP/RSTP; 0 leaves the default
	// (32768). Linux accepts 1..65535, OVS 1..61440 (RSTP rounds to
	// multiples of 4096).
	Priority int
}

// Status reports how one declared network was applied on this node.
type Status struct {
	Network string
	// Bridge is the bridge the VM NIC attaches to.
	Bridge  string
	Applied bool
	Error   string
}

// Limits checked by Validate.
const (
	MinMTU         = 68
	MaxMTU         = 65535
	MaxVLAN        = 4094
	MaxLinuxPrio   = 65535
	MaxOVSPrio     = 61440
	maxIfNameLen   = 15 // IFNAMSIZ-1
	maxNetworkName = 64
	// ownerPrefix marks linux links created by netbridge (in their ifalias).
	ownerPrefix = "corral:"
	// ovsOwnerKey marks OVS rows created by netbridge (in external_ids).
	ovsOwnerKey = "corral-network"
)

// ErrNo8021Q is reported when the kernel cannot create 802.1Q VLAN devices.
var ErrNo8021Q = errors.New("kernel lacks 802.1Q (8021q) support")

// ErrOVSUnsupported is reported for ovs networks when no OVSDB socket is set.
var ErrOVSUnsupported = errors.New("open vSwitch not configured on this node (no OVSDB socket)")

var (
	networkNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// ifNameRe is stricter than the kernel (which accepts almost anything
	// but '/', ':' and spaces) to keep names safe in OVSDB and shell tools.
	ifNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// ValidationError lists every problem found in a set of networks.
type ValidationError struct {
	// ByNetwork maps a network name to its problems.
	ByNetwork map[string][]string
}

func (e *ValidationError) Error() string {
	names := make([]string, 0, len(e.ByNetwork))
	for n := range e.ByNetwork {
		names = append(names, n)
	}
	sort.Strings(names)
	msg := "invalid networks:"
	for _, n := range names {
		for _, p := range e.ByNetwork[n] {
			msg += fmt.Sprintf(" %s: %s;", n, p)
		}
	}
	return msg[:len(msg)-1]
}

func kindOf(n Network) Kind {
	if n.Kind == "" {
		return KindLinux
	}
	return n.Kind
}

// Validate checks a full set of declared networks: field ranges, names, and
// conflicts between networks (same VLAN on the same uplink, an uplink used
// by both backends, OVS networks sharing a bridge with different STP
// settings). It returns a *ValidationError or nil.
func Validate(nets []Network) error {
	probs := validate(nets)
	if len(probs) == 0 {
		return nil
	}
	return &ValidationError{ByNetwork: probs}
}

// validate returns the problems per network name, so that Apply can skip
// only the networks at fault.
func validate(nets []Network) map[string][]string {
	probs := map[string][]string{}
	add := func(name, format string, args ...any) {
		probs[name] = append(probs[name], fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for _, n := range nets {
		switch {
		case n.Name == "":
			add(n.Name, "name is empty")
		case len(n.Name) > maxNetworkName:
			add(n.Name, "name longer than %d characters", maxNetworkName)
		case !networkNameRe.MatchString(n.Name):
			add(n.Name, "name must be letters, digits, '_', '.', '-' and start with a letter or digit")
		}
		if seen[n.Name] {
			add(n.Name, "declared twice")
		}
		seen[n.Name] = true
		if n.VLAN < 0 || n.VLAN > MaxVLAN {
			add(n.Name, "VLAN %d out of range (0 for untagged, or 1-%d)", n.VLAN, MaxVLAN)
		}
		k := kindOf(n)
		if k != KindLinux && k != KindOVS {
			add(n.Name, "kind %q unknown (want %q or %q)", n.Kind, KindLinux, KindOVS)
		}
		switch {
		case n.Uplink == "":
			add(n.Name, "uplink is empty")
		case len(n.Uplink) > maxIfNameLen || !ifNameRe.MatchString(n.Uplink):
			add(n.Name, "uplink %q is not a valid interface name", n.Uplink)
		case k == KindLinux && n.VLAN > 0 && len(vlanDevName(n)) > maxIfNameLen:
			add(n.Name, "VLAN device name %q longer than %d characters", vlanDevName(n), maxIfNameLen)
		}
		if n.MTU != 0 && (n.MTU < MinMTU || n.MTU > MaxMTU) {
			add(n.Name, "MTU %d out of range (0 for default, or %d-%d)", n.MTU, MinMTU, MaxMTU)
		}
		maxPrio := MaxLinuxPrio
		if k == KindOVS {
			maxPrio = MaxOVSPrio
		}
		if n.Priority < 0 || n.Priority > maxPrio {
			add(n.Name, "priority %d out of range (0 for default, or 1-%d)", n.Priority, maxPrio)
		}
	}

	// Pairwise conflicts. Quadratic, but a cluster declares at most a few
	// hundred networks.
	for i := range nets {
		for j := i + 1; j < len(nets); j++ {
			a, b := nets[i], nets[j]
			if a.Uplink != b.Uplink || a.Uplink == "" {
				continue
			}
			if a.VLAN == b.VLAN {
				add(a.Name, "same VLAN %d on uplink %s as network %s", a.VLAN, a.Uplink, b.Name)
				add(b.Name, "same VLAN %d on uplink %s as network %s", b.VLAN, b.Uplink, a.Name)
			}
			ka, kb := kindOf(a), kindOf(b)
			if ka != kb {
				add(a.Name, "uplink %s is also used by %s network %s", a.Uplink, kb, b.Name)
				add(b.Name, "uplink %s is also used by %s network %s", b.Uplink, ka, a.Name)
				continue
			}
			if ka == KindOVS && (a.STP != b.STP || a.Priority != b.Priority) {
				add(a.Name, "shares OVS bridge %s with network %s but STP settings differ (stp=%t/%t, priority=%d/%d)",
					ovsBridgeName(a.Uplink), b.Name, a.STP, b.STP, a.Priority, b.Priority)
				add(b.Name, "shares OVS bridge %s with network %s but STP settings differ (stp=%t/%t, priority=%d/%d)",
					ovsBridgeName(b.Uplink), a.Name, b.STP, a.STP, b.Priority, a.Priority)
			}
		}
	}
	return probs
}

// shortHash gives n hex characters of a SHA-256, for names that must fit
// IFNAMSIZ.
func shortHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}

// linuxBridgeName is keyed on (uplink, VLAN), the pair Validate makes
// unique, so renaming a network keeps its bridge and VM NICs stay attached.
// The readable form always contains two '-', the hashed form only one, so
// they cannot collide.
func linuxBridgeName(uplink string, vlan int) string {
	name := "br-" + uplink + "-" + strconv.Itoa(vlan)
	if len(name) <= maxIfNameLen {
		return name
	}
	return "br-" + shortHash(uplink+"/"+strconv.Itoa(vlan), 12)
}

func ovsBridgeName(uplink string) string {
	name := "ovs-" + uplink
	if len(name) <= maxIfNameLen {
		return name
	}
	return "ovsh" + shortHash(uplink, 11)
}

func vlanDevName(n Network) string {
	return n.Uplink + "." + strconv.Itoa(n.VLAN)
}

// Options configure a Converger.
type Options struct {
	// OVSDBSock is the unix socket of the node's ovsdb-server; "" means OVS
	// is not supported on this node and ovs networks report an error.
	OVSDBSock string
	// OVSDatapath is the datapath_type of OVS bridges; "" means "netdev"
	// (userspace), which works without the openvswitch kernel module.
	OVSDatapath string
	// NetNS is the path of the network namespace holding the node's links
	// (e.g. /run/netns/h1); "" means the namespace of the calling thread, as
	// corrald runs in the host's own namespace. Tests pass a lab host's.
	NetNS string
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger
}

// Converger applies declared networks to one node. Its methods are safe for
// concurrent use; Apply calls are serialised.
type Converger struct {
	log   *slog.Logger
	mu    sync.Mutex
	linux *linuxBackend
	ovs   *ovsBackend // nil when OVS is not configured
	// lastGood keeps the last config of each network that applied, so a
	// network whose new config fails keeps what it had.
	lastGood map[string]Network
}

// New connects to netlink (and OVSDB when configured).
func New(opts Options) (*Converger, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	lb, err := newLinuxBackend(opts.NetNS, log)
	if err != nil {
		return nil, err
	}
	c := &Converger{log: log, linux: lb, lastGood: map[string]Network{}}
	if opts.OVSDBSock != "" {
		dp := opts.OVSDatapath
		if dp == "" {
			dp = "netdev"
		}
		ob, err := newOVSBackend(opts.OVSDBSock, dp, lb, log)
		if err != nil {
			lb.close()
			return nil, err
		}
		c.ovs = ob
	}
	return c, nil
}

// Close releases the netlink sockets and the OVSDB connection.
func (c *Converger) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ovs != nil {
		c.ovs.close()
	}
	c.linux.close()
	return nil
}

// BridgeFor names the bridge a VM NIC on network n attaches to. It depends
// only on n, so every node and the hypervisor driver agree on it.
func (c *Converger) BridgeFor(n Network) string { return BridgeFor(n) }

// BridgeFor is Converger.BridgeFor for callers without a Converger (e.g.
// the hypervisor driver building domain XML).
func BridgeFor(n Network) string {
	if kindOf(n) == KindOVS {
		return ovsBridgeName(n.Uplink)
	}
	return linuxBridgeName(n.Uplink, n.VLAN)
}

// Apply converges the node to nets and returns one Status per network, in
// the order given. It is idempotent: when the node already matches, it
// reads but writes nothing. Networks that fail (invalid, missing uplink,
// kernel limits, foreign objects in the way) keep their previous working
// config and do not stop the others. Bridges and ports netbridge created for
// networks no longer declared are removed; nothing else is.
func (c *Converger) Apply(ctx context.Context, nets []Network) []Status {
	c.mu.Lock()
	defer c.mu.Unlock()

	out := make([]Status, len(nets))
	idx := map[string]int{}
	for i, n := range nets {
		out[i] = Status{Network: n.Name, Bridge: BridgeFor(n)}
		idx[n.Name] = i
	}
	probs := validate(nets)
	fail := func(name string, err string) {
		i := idx[name]
		out[i].Applied = false
		out[i].Error = err
	}

	declared := map[string]bool{}
	var linuxNets, ovsNets []Network
	for _, n := range nets {
		declared[n.Name] = true
		if p, bad := probs[n.Name]; bad {
			fail(n.Name, "invalid: "+strings.Join(p, "; "))
			continue
		}
		switch kindOf(n) {
		case KindLinux:
			linuxNets = append(linuxNets, n)
		case KindOVS:
			if c.ovs == nil {
				fail(n.Name, ErrOVSUnsupported.Error())
				continue
			}
			ovsNets = append(ovsNets, n)
		}
	}

	// keep lists declared networks that failed: what they had stays.
	keep := map[string]bool{}
	for _, st := range out {
		if st.Error != "" {
			keep[st.Network] = true
		}
	}
	// Results of each backend: name -> error (nil = applied). OVS goes
	// first so its failures reach the linux pass, which then keeps the old
	// links of a network that moved to OVS and failed there.
	results := map[string]error{}
	if c.ovs != nil {
		for name, e := range c.ovs.apply(ctx, ovsNets, declared, keep, c.lastGood) {
			results[name] = e
			if e != nil {
				keep[name] = true
			}
		}
	}
	for name, e := range c.linux.apply(ctx, linuxNets, declared, keep) {
		results[name] = e
	}
	for _, n := range nets {
		e, ok := results[n.Name]
		if !ok {
			continue // already failed validation
		}
		i := idx[n.Name]
		if e != nil {
			fail(n.Name, e.Error())
			c.log.Warn("network not applied", "network", n.Name, "bridge", out[i].Bridge, "err", e)
			continue
		}
		out[i].Applied = true
		c.lastGood[n.Name] = n
	}
	for name := range c.lastGood {
		if !declared[name] {
			delete(c.lastGood, name)
		}
	}
	return out
}
