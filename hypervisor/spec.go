// Package hypervisor is corral's libvirt driver: it turns a VM spec into
// domain XML and drives one libvirtd (define, start, stop, migrate, watch
// lifecycle events, open the serial console).
//
// The node agent is its only caller. Nothing here knows about Raft or
// protobuf: the agent translates its desired state into a Spec. Every
// domain corral defines carries an ownership element in its <metadata>
// (cluster + VM ID) so that the agent only ever touches domains it owns and
// leaves hand-made or foreign domains on the same host alone.
package hypervisor

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// DomainType is the libvirt domain type: hardware acceleration or TCG.
type DomainType string

const (
	// TypeQEMU is software emulation (TCG): slow but works everywhere.
	TypeQEMU DomainType = "qemu"
	// TypeKVM uses hardware virtualisation; see Conn.ProbeKVM.
	TypeKVM DomainType = "kvm"
)

// Spec is everything the driver needs to define one domain.
type Spec struct {
	Name    string
	UUID    string // optional; libvirt picks one when empty
	Cluster string // ownership: written into <metadata>
	VMID    string // ownership: written into <metadata>

	Type      DomainType
	VCPUs     int
	MemoryMiB int
	Machine   string // "" means DefaultMachine
	// CPUModel "" means host-model for kvm and QEMU's default (qemu64) for
	// tcg; a named model gives mode='custom' with no fallback, which keeps
	// migrations between different hosts safe.
	CPUModel string

	// Direct kernel boot when Kernel is set.
	Kernel, Initrd, Cmdline string

	// UEFI boots OVMF (see Firmware); Define fails with ErrNoUEFIFirmware
	// when it is not installed on the host.
	UEFI bool

	Disks []Disk
	NICs  []NIC

	// SerialLog, when set, receives everything the guest writes on its
	// first serial port (appended, so a migration does not truncate it).
	// The port itself is a pty, so OpenConsole works in both cases.
	SerialLog string

	VNC        bool // VNC on 127.0.0.1, port chosen by libvirt
	GuestAgent bool // virtio channel org.qemu.guest_agent.0
}

// Disk is one block device of a domain: a local file or an RBD image.
type Disk struct {
	Target   string // vda, vdb, ...
	Format   string // raw (default) or qcow2
	ReadOnly bool
	Bus      string // virtio (default), scsi, sata, ide

	File string     // type='file' when set
	RBD  *RBDSource // type='network' protocol='rbd' otherwise
}

// RBDSource locates an RBD image and the libvirt secret holding the cephx
// key (see Conn.DefineCephSecret).
type RBDSource struct {
	Pool, Image string
	Monitors    []string // "IP:port"
	User        string   // cephx user without "client."
	SecretUUID  string
}

// NIC is one network interface attached to a host bridge.
type NIC struct {
	MAC    string
	Bridge string
	OVS    bool   // the bridge is an Open vSwitch bridge
	VLAN   int    // access VLAN tag on OVS; 0 for none
	Model  string // virtio (default), e1000, ...
	Target string // optional tap device name
}

// Defaults applied by DomainXML when the spec leaves a field empty.
const (
	DefaultMachine  = "pc"
	DefaultDiskBus  = "virtio"
	DefaultFormat   = "raw"
	DefaultNICModel = "virtio"
)

// ValidationError says which spec field is unusable and why.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid domain spec: %s: %s", e.Field, e.Reason)
}

// ErrNoUEFIFirmware is returned by Define when a spec asks for UEFI and the
// host has no OVMF firmware installed (Debian package "ovmf").
var ErrNoUEFIFirmware = errors.New("UEFI requested but OVMF firmware is not installed on this host (apt-get install ovmf)")

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$`)
	targetRE = regexp.MustCompile(`^(vd|sd|hd|xvd)[a-z]{1,2}$`)
	tapRE    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	macRE    = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)

	reservedTapPrefixes = []string{"vnet", "macvtap", "macvlan"}
)

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Validate checks the spec without talking to libvirt.
func (s Spec) Validate() error {
	if !nameRE.MatchString(s.Name) {
		return invalid("name", "%q must be 1-63 letters, digits, '_', '.', '+' or '-', starting with a letter or digit", s.Name)
	}
	if s.UUID != "" {
		if _, err := uuid.Parse(s.UUID); err != nil || len(s.UUID) != 36 {
			return invalid("uuid", "%q is not a UUID like 8-4-4-4-12 hex digits", s.UUID)
		}
	}
	if s.Cluster == "" || s.VMID == "" {
		return invalid("cluster/vmid", "both are required: they mark the domain as owned by corral")
	}
	switch s.Type {
	case TypeQEMU, TypeKVM:
	default:
		return invalid("type", "%q must be %q or %q", s.Type, TypeQEMU, TypeKVM)
	}
	if s.VCPUs <= 0 {
		return invalid("vcpus", "%d must be at least 1", s.VCPUs)
	}
	if s.MemoryMiB <= 0 {
		return invalid("memory", "%d MiB must be positive", s.MemoryMiB)
	}
	if s.Kernel == "" && (s.Initrd != "" || s.Cmdline != "") {
		return invalid("kernel", "initrd and cmdline need a kernel")
	}
	seen := map[string]bool{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		if !targetRE.MatchString(d.Target) {
			return invalid(f+".target", "%q is not a device name like vda", d.Target)
		}
		if seen[d.Target] {
			return invalid(f+".target", "%q used twice", d.Target)
		}
		seen[d.Target] = true
		switch d.Format {
		case "", "raw", "qcow2":
		default:
			return invalid(f+".format", "%q must be raw or qcow2", d.Format)
		}
		if (d.File == "") == (d.RBD == nil) {
			return invalid(f, "exactly one of file and rbd must be set")
		}
		if r := d.RBD; r != nil {
			if r.Pool == "" || r.Image == "" || strings.Contains(r.Pool, "/") {
				return invalid(f+".rbd", "pool and image are required")
			}
			if len(r.Monitors) == 0 {
				return invalid(f+".rbd.monitors", "at least one monitor is required")
			}
			for _, m := range r.Monitors {
				if _, _, err := splitHostPort(m); err != nil {
					return invalid(f+".rbd.monitors", "%q: %v", m, err)
				}
			}
			if (r.User == "") != (r.SecretUUID == "") {
				return invalid(f+".rbd", "user and secret UUID go together")
			}
			if r.SecretUUID != "" {
				if _, err := uuid.Parse(r.SecretUUID); err != nil {
					return invalid(f+".rbd.secret", "%q is not a UUID", r.SecretUUID)
				}
			}
		}
	}
	for i, n := range s.NICs {
		f := fmt.Sprintf("nics[%d]", i)
		if !macRE.MatchString(n.MAC) {
			return invalid(f+".mac", "%q is not a lower-case MAC like 52:54:00:12:34:56", n.MAC)
		}
		if mac, _ := net.ParseMAC(n.MAC); mac[0]&1 == 1 {
			return invalid(f+".mac", "%q is a multicast address", n.MAC)
		}
		if n.Bridge == "" {
			return invalid(f+".bridge", "required")
		}
		if n.VLAN < 0 || n.VLAN > 4094 {
			return invalid(f+".vlan", "%d is outside 0-4094", n.VLAN)
		}
		if n.VLAN != 0 && !n.OVS {
			return invalid(f+".vlan", "a tag needs an OVS bridge; Linux bridges here are one per VLAN")
		}
		if n.Target != "" && !tapRE.MatchString(n.Target) {
			return invalid(f+".target", "%q is not a valid interface name", n.Target)
		}
		for _, p := range reservedTapPrefixes {
			if strings.HasPrefix(n.Target, p) {
				// libvirt drops such names from a definition and picks its
				// own, so a later live update would see a different name.
				return invalid(f+".target", "%q: prefix %q is reserved by libvirt", n.Target, p)
			}
		}
	}
	return nil
}

func splitHostPort(hp string) (string, string, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", "", err
	}
	if h == "" {
		return "", "", errors.New("empty host")
	}
	if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
		return "", "", fmt.Errorf("bad port %q", p)
	}
	return h, p, nil
}
