package hypervisor

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"
)

// Timeouts of the driver. go-libvirt calls take no context, so every call
// runs under one of these deadlines when the caller's context has none.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultCallTimeout = 30 * time.Second
	// statePoll is how often Shutdown looks whether the guest is off.
	statePoll = 200 * time.Millisecond
)

// ErrNotFound is returned (wrapped) when a domain does not exist.
var ErrNotFound = errors.New("domain not found")

// ErrNotOwned is returned when an operation would modify a domain that
// exists but was not defined by corral for the same cluster and VM.
var ErrNotOwned = errors.New("domain exists but is not owned by this corral VM")

// Conn is a connection to one libvirtd. It is safe for concurrent use.
type Conn struct {
	l      *libvirt.Libvirt
	socket string
	log    *slog.Logger
}

// Dial connects to the libvirtd listening on a unix socket
// (e.g. /run/libvirt/libvirt-sock).
func Dial(ctx context.Context, socket string) (*Conn, error) {
	timeout := DefaultDialTimeout
	if dl, ok := ctx.Deadline(); ok {
		if timeout = time.Until(dl); timeout <= 0 {
			return nil, fmt.Errorf("connect to libvirtd at %s: %w", socket, context.DeadlineExceeded)
		}
	}
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(socket), dialers.WithLocalTimeout(timeout)))
	c := &Conn{l: l, socket: socket, log: slog.Default().With("libvirt", socket)}
	// Connect also runs the auth handshake, which can hang on a wedged
	// daemon: bound it too.
	if err := do(ctx, DefaultDialTimeout, l.Connect); err != nil {
		_ = l.Disconnect()
		return nil, fmt.Errorf("connect to libvirtd at %s: %w", socket, err)
	}
	return c, nil
}

// Close ends the connection.
func (c *Conn) Close() error {
	// Disconnect says goodbye to libvirtd first, which a wedged daemon
	// would never answer.
	if err := do(context.Background(), DefaultCallTimeout, c.l.Disconnect); err != nil {
		return fmt.Errorf("disconnect from %s: %w", c.socket, err)
	}
	return nil
}

// Disconnected is closed when the connection is lost (libvirtd died or was
// restarted) or closed; the caller then Dials again.
func (c *Conn) Disconnected() <-chan struct{} { return c.l.Disconnected() }

// call runs f with the context's deadline, or def when it has none. The
// RPC itself cannot be cancelled: on timeout its goroutine finishes when
// libvirtd answers or the connection drops.
func call[T any](ctx context.Context, def time.Duration, f func() (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, def)
		defer cancel()
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("libvirt call: %w", ctx.Err())
	}
}

func do(ctx context.Context, def time.Duration, f func() error) error {
	_, err := call(ctx, def, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

func isLibvirtErr(err error, code libvirt.ErrorNumber) bool {
	var e libvirt.Error
	return errors.As(err, &e) && e.Code == uint32(code)
}

// HostInfo describes the hypervisor host.
type HostInfo struct {
	Hostname       string
	CPUs           int
	MemoryMiB      int
	LibvirtVersion string
	QEMUVersion    string
}

func versionString(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// Host reports the host's size and software versions.
func (c *Conn) Host(ctx context.Context) (HostInfo, error) {
	return call(ctx, DefaultCallTimeout, func() (HostInfo, error) {
		var h HostInfo
		var err error
		if h.Hostname, err = c.l.ConnectGetHostname(); err != nil {
			return h, fmt.Errorf("host name: %w", err)
		}
		_, memKiB, cpus, _, _, _, _, _, err := c.l.NodeGetInfo()
		if err != nil {
			return h, fmt.Errorf("node info: %w", err)
		}
		h.CPUs, h.MemoryMiB = int(cpus), int(memKiB/1024)
		lv, err := c.l.ConnectGetLibVersion()
		if err != nil {
			return h, fmt.Errorf("libvirt version: %w", err)
		}
		qv, err := c.l.ConnectGetVersion()
		if err != nil {
			return h, fmt.Errorf("hypervisor version: %w", err)
		}
		h.LibvirtVersion, h.QEMUVersion = versionString(lv), versionString(qv)
		return h, nil
	})
}

// lookup finds a domain by name, mapping libvirt's error to ErrNotFound.
func (c *Conn) lookup(ctx context.Context, name string) (libvirt.Domain, error) {
	dom, err := call(ctx, DefaultCallTimeout, func() (libvirt.Domain, error) { return c.l.DomainLookupByName(name) })
	if isLibvirtErr(err, libvirt.ErrNoDomain) {
		return dom, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if err != nil {
		return dom, fmt.Errorf("look up %s: %w", name, err)
	}
	return dom, nil
}

// owner reads corral's metadata element; ok is false for foreign domains.
func (c *Conn) owner(ctx context.Context, dom libvirt.Domain) (o ownership, ok bool, err error) {
	doc, err := call(ctx, DefaultCallTimeout, func() (string, error) {
		return c.l.DomainGetMetadata(dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{MetadataNamespace}, 0)
	})
	if isLibvirtErr(err, libvirt.ErrNoDomainMetadata) {
		return o, false, nil
	}
	if err != nil {
		return o, false, fmt.Errorf("read metadata of %s: %w", dom.Name, err)
	}
	o, err = parseOwnership(doc)
	if err != nil {
		return o, false, fmt.Errorf("%s: %w", dom.Name, err)
	}
	return o, true, nil
}

// Define defines the domain, or redefines it when it already exists; a
// running domain keeps its current configuration until its next boot.
// It refuses to overwrite a domain another owner defined.
func (c *Conn) Define(ctx context.Context, s Spec) error {
	doc, err := DomainXML(s)
	if err != nil {
		return fmt.Errorf("define %s: %w", s.Name, err)
	}
	if s.UEFI {
		for _, f := range []string{Firmware.Code, Firmware.Vars} {
			if _, err := os.Stat(f); err != nil {
				return fmt.Errorf("define %s: %w (%s missing)", s.Name, ErrNoUEFIFirmware, f)
			}
		}
	}
	if dom, err := c.lookup(ctx, s.Name); err == nil {
		o, ok, err := c.owner(ctx, dom)
		if err != nil {
			return fmt.Errorf("define %s: %w", s.Name, err)
		}
		if !ok || o.Cluster != s.Cluster || o.VMID != s.VMID {
			return fmt.Errorf("define %s: %w (found cluster %q vm %q)", s.Name, ErrNotOwned, o.Cluster, o.VMID)
		}
	} else if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("define %s: %w", s.Name, err)
	}
	_, err = call(ctx, DefaultCallTimeout, func() (libvirt.Domain, error) {
		return c.l.DomainDefineXMLFlags(doc, libvirt.DomainDefineValidate)
	})
	if err != nil {
		return fmt.Errorf("define %s: %w", s.Name, err)
	}
	return nil
}

// Start boots a defined domain. Starting a running domain is not an error.
func (c *Conn) Start(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	_, err = call(ctx, DefaultCallTimeout, func() (libvirt.Domain, error) { return c.l.DomainCreateWithFlags(dom, 0) })
	if isLibvirtErr(err, libvirt.ErrOperationInvalid) {
		if st, _, serr := c.state(ctx, dom); serr == nil && st == libvirt.DomainRunning {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

func (c *Conn) state(ctx context.Context, dom libvirt.Domain) (libvirt.DomainState, int32, error) {
	type sr struct{ s, r int32 }
	v, err := call(ctx, DefaultCallTimeout, func() (sr, error) {
		s, r, err := c.l.DomainGetState(dom, 0)
		return sr{s, r}, err
	})
	return libvirt.DomainState(v.s), v.r, err
}

// Destroy stops a domain at once (power cut). Not an error when the domain
// is not running.
func (c *Conn) Destroy(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("destroy: %w", err)
	}
	return c.destroy(ctx, dom)
}

func (c *Conn) destroy(ctx context.Context, dom libvirt.Domain) error {
	err := do(ctx, DefaultCallTimeout, func() error { return c.l.DomainDestroyFlags(dom, 0) })
	if isLibvirtErr(err, libvirt.ErrOperationInvalid) {
		// "domain is not running"
		return nil
	}
	if err != nil {
		return fmt.Errorf("destroy %s: %w", dom.Name, err)
	}
	return nil
}

// Shutdown presses the ACPI power button, waits up to timeout for the guest
// to power off, then destroys it. Not an error when it is already off.
func (c *Conn) Shutdown(ctx context.Context, name string, timeout time.Duration) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	err = do(ctx, DefaultCallTimeout, func() error { return c.l.DomainShutdownFlags(dom, libvirt.DomainShutdownAcpiPowerBtn) })
	if isLibvirtErr(err, libvirt.ErrOperationInvalid) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shutdown %s: %w", name, err)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(statePoll)
	defer tick.Stop()
	for {
		st, _, err := c.state(ctx, dom)
		if err != nil {
			return fmt.Errorf("shutdown %s: %w", name, err)
		}
		if st == libvirt.DomainShutoff || st == libvirt.DomainCrashed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shutdown %s: %w", name, ctx.Err())
		case <-deadline.C:
			c.log.Warn("guest ignored ACPI shutdown, destroying", "vm", name, "timeout", timeout)
			return c.destroy(ctx, dom)
		case <-tick.C:
		}
	}
}

// Reboot asks the guest to reboot (ACPI), like pressing reset politely.
func (c *Conn) Reboot(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	if err := do(ctx, DefaultCallTimeout, func() error { return c.l.DomainReboot(dom, 0) }); err != nil {
		return fmt.Errorf("reboot %s: %w", name, err)
	}
	return nil
}

// Undefine destroys the domain if it runs and removes its definition with
// its NVRAM, snapshots and managed-save metadata. Not an error when absent.
func (c *Conn) Undefine(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("undefine: %w", err)
	}
	if err := c.destroy(ctx, dom); err != nil {
		return fmt.Errorf("undefine: %w", err)
	}
	flags := libvirt.DomainUndefineNvram | libvirt.DomainUndefineManagedSave |
		libvirt.DomainUndefineSnapshotsMetadata | libvirt.DomainUndefineCheckpointsMetadata
	err = do(ctx, DefaultCallTimeout, func() error { return c.l.DomainUndefineFlags(dom, flags) })
	if err != nil && !isLibvirtErr(err, libvirt.ErrNoDomain) {
		return fmt.Errorf("undefine %s: %w", name, err)
	}
	return nil
}

// State is a domain's run state as corral reports it.
type State string

const (
	StateRunning      State = "running"
	StateStopped      State = "stopped"
	StatePaused       State = "paused"
	StateCrashed      State = "crashed"
	StateShuttingDown State = "shutting-down"
	StateUnknown      State = "unknown"
)

// Domain is what the driver observes about one domain.
type Domain struct {
	Name      string
	UUID      string
	Cluster   string
	VMID      string
	State     State
	Reason    string // libvirt's reason for the state, e.g. "destroyed"
	CPUTimeNs uint64
	MemoryKiB uint64
}

// List returns the domains corral defined for cluster, running or not.
func (c *Conn) List(ctx context.Context, cluster string) ([]Domain, error) {
	doms, err := call(ctx, DefaultCallTimeout, func() ([]libvirt.Domain, error) {
		d, _, err := c.l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive|libvirt.ConnectListDomainsInactive)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	var out []Domain
	for _, dom := range doms {
		o, ok, err := c.owner(ctx, dom)
		if isLibvirtErr(err, libvirt.ErrNoDomain) {
			continue // undefined since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("list domains: %w", err)
		}
		if !ok || o.Cluster != cluster {
			continue
		}
		d, err := c.describe(ctx, dom, o)
		if isLibvirtErr(err, libvirt.ErrNoDomain) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list domains: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Get describes one domain by name, whoever owns it (Cluster and VMID are
// empty for foreign domains).
func (c *Conn) Get(ctx context.Context, name string) (Domain, error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return Domain{}, err
	}
	o, _, err := c.owner(ctx, dom)
	if err != nil {
		return Domain{}, err
	}
	return c.describe(ctx, dom, o)
}

func (c *Conn) describe(ctx context.Context, dom libvirt.Domain, o ownership) (Domain, error) {
	st, reason, err := c.state(ctx, dom)
	if err != nil {
		return Domain{}, fmt.Errorf("state of %s: %w", dom.Name, err)
	}
	type info struct{ mem, cpu uint64 }
	inf, err := call(ctx, DefaultCallTimeout, func() (info, error) {
		_, _, mem, _, cpu, err := c.l.DomainGetInfo(dom)
		return info{mem, cpu}, err
	})
	if err != nil {
		return Domain{}, fmt.Errorf("info of %s: %w", dom.Name, err)
	}
	s, r := mapState(st, reason)
	return Domain{
		Name:      dom.Name,
		UUID:      uuid.UUID(dom.UUID).String(),
		Cluster:   o.Cluster,
		VMID:      o.VMID,
		State:     s,
		Reason:    r,
		CPUTimeNs: inf.cpu,
		MemoryKiB: inf.mem,
	}, nil
}

// BlockResize grows a disk of a running domain to bytes (the guest sees
// the new size at once).
func (c *Conn) BlockResize(ctx context.Context, name, target string, bytes uint64) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	err = do(ctx, DefaultCallTimeout, func() error { return c.l.DomainBlockResize(dom, target, bytes, libvirt.DomainBlockResizeBytes) })
	if err != nil {
		return fmt.Errorf("resize %s of %s to %d bytes: %w", target, name, bytes, err)
	}
	return nil
}

// UpdateNIC changes a NIC (matched by MAC) of a domain, live and in its
// persistent definition: bridge, VLAN tag or link.
func (c *Conn) UpdateNIC(ctx context.Context, name string, nic NIC) error {
	if err := (Spec{Name: name, Cluster: "-", VMID: "-", Type: TypeQEMU, VCPUs: 1, MemoryMiB: 1, NICs: []NIC{nic}}).Validate(); err != nil {
		return fmt.Errorf("update nic of %s: %w", name, err)
	}
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return fmt.Errorf("update nic: %w", err)
	}
	doc, err := interfaceXML(nic)
	if err != nil {
		return err
	}
	flags := libvirt.DomainDeviceModifyConfig
	if st, _, err := c.state(ctx, dom); err == nil && st != libvirt.DomainShutoff {
		flags |= libvirt.DomainDeviceModifyLive
	}
	if err := do(ctx, DefaultCallTimeout, func() error { return c.l.DomainUpdateDeviceFlags(dom, doc, flags) }); err != nil {
		return fmt.Errorf("update nic %s of %s: %w", nic.MAC, name, err)
	}
	return nil
}

// DefineCephSecret stores a cephx key as a private libvirt secret that RBD
// disks reference by uuid. Defining it again updates the value.
func (c *Conn) DefineCephSecret(ctx context.Context, secretUUID, usage, base64Key string) error {
	if _, err := uuid.Parse(secretUUID); err != nil {
		return fmt.Errorf("define ceph secret: %w", &ValidationError{Field: "uuid", Reason: err.Error()})
	}
	doc, err := (&libvirtxml.Secret{
		Ephemeral: "no",
		Private:   "yes",
		UUID:      secretUUID,
		Usage:     &libvirtxml.SecretUsage{Type: "ceph", Name: usage},
	}).Marshal()
	if err != nil {
		return fmt.Errorf("define ceph secret %s: %w", secretUUID, err)
	}
	// libvirt stores the raw key bytes (as `virsh secret-set-value
	// --base64` does) and base64-encodes them again for QEMU.
	raw, err := base64.StdEncoding.DecodeString(base64Key)
	if err != nil || len(raw) == 0 {
		return fmt.Errorf("define ceph secret %s: key is not base64 (as printed by `ceph auth get-key`)", secretUUID)
	}
	err = do(ctx, DefaultCallTimeout, func() error {
		sec, err := c.l.SecretDefineXML(doc, 0)
		if err != nil {
			return err
		}
		return c.l.SecretSetValue(sec, raw, 0)
	})
	if err != nil {
		return fmt.Errorf("define ceph secret %s: %w", secretUUID, err)
	}
	return nil
}
