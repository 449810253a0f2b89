package testenv

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultLibvirtdStartTimeout bounds StartLibvirtd and Restart without a
// context deadline; the first start on a machine probes QEMU (~8.5 s).
const DefaultLibvirtdStartTimeout = 90 * time.Second

// Libvirtd is a libvirtd running in a host's namespace on private copies of
// /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
// /etc/pki.
type Libvirtd struct {
	Socket string // unix socket path (reachable from any namespace)
	URI    string // qemu+tcp://IP/system, for other hosts of the lab
	// TLSURI is qemu+tls://IP/system when started with TLS files.
	TLSURI  string
	HostDir string // root of the private directories

	host *Host
	mu   sync.Mutex
	proc *Process
}

// LocalURI is the URI for virsh or go-libvirt through the unix socket.
func (d *Libvirtd) LocalURI() string { return "qemu:///system?socket=" + d.Socket }

// Process returns the current libvirtd process.
func (d *Libvirtd) Process() *Process {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc
}

// libvirtdScript binds the host directory over libvirt's paths inside a
// private mount namespace. sh -e matters: a failed bind mount must not leave
// libvirtd running on the machine's real directories.
const libvirtdScript = `for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /etc/pki; do
  mkdir -p $d $HOSTDIR$d; mount --bind $HOSTDIR$d $d; done
exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid`

// LibvirtdOptions tune StartLibvirtdWith.
type LibvirtdOptions struct {
	// TLS, when set, writes the TLS files into the daemon's private
	// /etc/pki (the directory it is given) before the start; libvirtd then
	// also listens for qemu+tls:// on IP:16514 and QEMU finds its x509
	// files for encrypted migration streams.
	TLS func(pkiDir string) error
	// DaemonConf is appended to libvirtd.conf (e.g. tls_allowed_dn_list).
	DaemonConf string
}

// StartLibvirtd starts libvirtd on the host (recipe of real-components.md)
// and waits until it answers on its unix socket and on tcp://IP:16509.
func (h *Host) StartLibvirtd(ctx context.Context) (*Libvirtd, error) {
	return h.StartLibvirtdWith(ctx, LibvirtdOptions{})
}

// StartLibvirtdWith is StartLibvirtd with options.
func (h *Host) StartLibvirtdWith(ctx context.Context, opts LibvirtdOptions) (*Libvirtd, error) {
	for _, bin := range []string{"libvirtd", "unshare", "virsh"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("start libvirtd on %s: %s not found: run scripts/install-deps.sh", h.Name, bin)
		}
	}
	hostDir := filepath.Join(h.Dir, "libvirt")
	d := &Libvirtd{
		HostDir: hostDir,
		Socket:  filepath.Join(hostDir, "run/libvirt/libvirt-sock"),
		URI:     "qemu+tcp://" + h.IP.String() + "/system",
		host:    h,
	}
	if len(d.Socket) > 100 {
		return nil, fmt.Errorf("start libvirtd on %s: socket path %s too long for a unix socket: use a shorter lab Dir", h.Name, d.Socket)
	}
	if _, err := os.Stat(hostDir); err == nil {
		return nil, fmt.Errorf("start libvirtd on %s: %s exists: use Restart", h.Name, hostDir)
	}
	if err := writeLibvirtConfig(hostDir, h.IP, opts.TLS != nil); err != nil {
		return nil, fmt.Errorf("start libvirtd on %s: %w", h.Name, err)
	}
	if opts.DaemonConf != "" {
		if err := appendFile(filepath.Join(hostDir, "etc/libvirt/libvirtd.conf"), "\n"+opts.DaemonConf+"\n"); err != nil {
			return nil, fmt.Errorf("start libvirtd on %s: %w", h.Name, err)
		}
	}
	if opts.TLS != nil {
		if err := opts.TLS(filepath.Join(hostDir, "etc/pki")); err != nil {
			return nil, fmt.Errorf("start libvirtd on %s: TLS files: %w", h.Name, err)
		}
		d.TLSURI = "qemu+tls://" + h.IP.String() + "/system"
	}
	if err := h.lab.recordLibvirtDir(hostDir); err != nil {
		return nil, fmt.Errorf("start libvirtd on %s: %w", h.Name, err)
	}
	if err := d.start(ctx); err != nil {
		return nil, fmt.Errorf("start libvirtd on %s: %w", h.Name, err)
	}
	return d, nil
}

func writeLibvirtConfig(hostDir string, ip netip.Addr, tls bool) error {
	for _, sub := range []string{"etc/pki", "run/libvirt", "var/lib/libvirt", "var/log/libvirt"} {
		if err := os.MkdirAll(filepath.Join(hostDir, sub), 0o755); err != nil {
			return err
		}
	}
	if out, err := exec.Command("cp", "-a", "/etc/libvirt", filepath.Join(hostDir, "etc")).CombinedOutput(); err != nil {
		return fmt.Errorf("copy /etc/libvirt: %w: %s", err, out)
	}
	// The packaged default network would try to bring up virbr0 and dnsmasq.
	autostart, _ := filepath.Glob(filepath.Join(hostDir, "etc/libvirt/qemu/networks/autostart/*"))
	for _, f := range autostart {
		os.Remove(f)
	}
	qemu := fmt.Sprintf(`
# added by corral testenv
stdio_handler = "file"
cgroup_controllers = [ ]
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
migration_address = "%s"
migration_host = "%s"
`, ip, ip)
	listenTLS := 0
	if tls {
		listenTLS = 1
	}
	daemon := fmt.Sprintf(`
# added by corral testenv
listen_tls = %d
listen_tcp = 1
auth_tcp = "none"
listen_addr = "%s"
host_uuid = "%s"
`, listenTLS, ip, newUUID())
	if err := appendFile(filepath.Join(hostDir, "etc/libvirt/qemu.conf"), qemu); err != nil {
		return err
	}
	return appendFile(filepath.Join(hostDir, "etc/libvirt/libvirtd.conf"), daemon)
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (d *Libvirtd) start(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultLibvirtdStartTimeout)
		defer cancel()
	}
	h := d.host
	// The daemon outlives ctx, which only bounds the start.
	cmd := h.Command(context.Background(), "unshare", "-m", "--propagation", "private", "sh", "-ec", libvirtdScript)
	// libvirtd plugs <virtualport type='openvswitch'/> NICs by running
	// ovs-vsctl, which looks for $OVS_RUNDIR/db.sock: point it at the
	// directory StartOVS uses on this host (before or after this start).
	cmd.Env = append(os.Environ(), "HOSTDIR="+d.HostDir, "OVS_RUNDIR="+filepath.Join(h.Dir, "ovs"))
	p, err := h.StartProcess("libvirtd", cmd)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.proc = p
	d.mu.Unlock()
	tcpAddr := net.JoinHostPort(h.IP.String(), "16509")
	err = poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if !p.Running() {
			return false, p.exitError("libvirtd")
		}
		c, err := net.DialTimeout("unix", d.Socket, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err = h.DialContext(dctx, "tcp", tcpAddr)
		if err != nil {
			return false, nil
		}
		c.Close()
		if d.TLSURI != "" {
			c, err = h.DialContext(dctx, "tcp", net.JoinHostPort(h.IP.String(), "16514"))
			if err != nil {
				return false, nil
			}
			c.Close()
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("wait for libvirtd sockets: %w; log %s:\n%s", err, p.logPath, logTail(p.logPath, 25))
	}
	// An accepted connection does not mean the drivers are initialised: one
	// real call waits for that (and for the capabilities probe).
	if _, err := h.Run(ctx, "virsh", "-c", d.LocalURI(), "list", "--all"); err != nil {
		return fmt.Errorf("libvirtd not answering: %w; log %s:\n%s", err, p.logPath, logTail(p.logPath, 25))
	}
	return nil
}

// Kill SIGKILLs libvirtd and its QEMU processes (from the pid files under
// HostDir) and waits until they are gone: the host crashed.
func (d *Libvirtd) Kill() error {
	qemus := qemuPIDs([]string{d.HostDir})
	signalAll(qemus, syscall.SIGKILL)
	err := d.KillDaemonOnly()
	if left := waitGone(qemus, 10*time.Second); len(left) > 0 {
		return fmt.Errorf("kill libvirtd of %s: QEMU processes %v still alive", d.host.Name, left)
	}
	return err
}

// KillDaemonOnly SIGKILLs libvirtd alone; its guests keep running.
func (d *Libvirtd) KillDaemonOnly() error {
	p := d.Process()
	if p == nil {
		return nil
	}
	p.signalPID(syscall.SIGKILL)
	if err := p.wait(10 * time.Second); err != nil {
		return fmt.Errorf("kill libvirtd of %s: %w", d.host.Name, err)
	}
	return nil
}

// Restart starts libvirtd again on the same directories (killing the
// running one first, if any); it re-attaches to the guests still running.
func (d *Libvirtd) Restart(ctx context.Context) error {
	if err := d.KillDaemonOnly(); err != nil {
		return err
	}
	if err := d.start(ctx); err != nil {
		return fmt.Errorf("restart libvirtd on %s: %w", d.host.Name, err)
	}
	return nil
}

// QEMUPIDs returns the live QEMU processes of this libvirtd's guests.
func (d *Libvirtd) QEMUPIDs() []int {
	var out []int
	for _, id := range qemuPIDs([]string{d.HostDir}) {
		if alive(id) {
			out = append(out, id.PID)
		}
	}
	return out
}

// poll calls check every interval until it returns true or an error, or
// ctx ends.
func poll(ctx context.Context, interval time.Duration, check func() (bool, error)) error {
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// newUUID returns a random RFC 4122 version 4 UUID.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return strings.ToLower(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]))
}
