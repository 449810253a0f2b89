package hypervisor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

// ReadyLine is what the probe guest prints on its serial port once booted.
const ReadyLine = "GUEST-READY"

// ProbeKVM tells whether type='kvm' guests really run here. The domain state
// cannot be trusted: on hosts where /dev/kvm only runs paravirtualised (PVM)
// guests, a kvm domain shows "running" at full CPU and never prints a
// thing. So it boots the given kernel+initrd (which must print ReadyLine
// on ttyS0) as a transient kvm domain and returns TypeKVM only if the line
// appears within timeout, TypeQEMU otherwise. The probe domain is always
// destroyed. Errors are returned only when libvirt itself is unusable.
func (c *Conn) ProbeKVM(ctx context.Context, kernel, initrd string, timeout time.Duration) (DomainType, error) {
	ok, err := c.bootProbe(ctx, TypeKVM, kernel, initrd, timeout)
	switch {
	case err != nil:
		return "", fmt.Errorf("kvm probe: %w", err)
	case ok:
		return TypeKVM, nil
	default:
		return TypeQEMU, nil
	}
}

// bootProbe boots a transient guest of type typ and reports whether it
// printed ReadyLine within timeout. A guest libvirt refuses to start
// counts as not booted.
func (c *Conn) bootProbe(ctx context.Context, typ DomainType, kernel, initrd string, timeout time.Duration) (bool, error) {
	dir, err := os.MkdirTemp("", "corral-kvm-probe-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	logPath := filepath.Join(dir, "serial.log")
	name := "corral-kvm-probe-" + uuid.NewString()[:8]
	s := Spec{
		Name: name, Cluster: "-", VMID: "-", Type: typ, VCPUs: 1, MemoryMiB: 128,
		Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1",
		SerialLog: logPath,
	}
	doc, err := DomainXML(s)
	if err != nil {
		return false, err
	}
	// Transient and auto-destroyed: if this connection drops mid-probe,
	// libvirt removes the guest itself.
	dom, err := call(ctx, DefaultCallTimeout, func() (libvirt.Domain, error) {
		return c.l.DomainCreateXML(doc, libvirt.DomainStartAutodestroy)
	})
	if err != nil {
		if !c.l.IsConnected() {
			return false, err
		}
		c.log.Info("probe guest does not start", "type", typ, "err", err)
		return false, nil
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultCallTimeout)
		defer cancel()
		if err := c.destroy(dctx, dom); err != nil {
			c.log.Warn("kvm probe guest not destroyed", "vm", name, "err", err)
		}
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(ReadyLine)) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-deadline.C:
			c.log.Info("probe guest printed no ready line", "type", typ, "timeout", timeout)
			return false, nil
		case <-tick.C:
		}
	}
}
