package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// Host is a simulated machine: a network namespace with "eth0" on the lab
// switch and a directory for its daemons.
type Host struct {
	Name string
	NS   string     // network namespace name, "<labid>-<name>"
	IP   netip.Addr // address of eth0 in the lab subnet
	Dir  string     // per-host directory inside the lab directory

	lab  *Lab
	port string // switch-side veth
}

var hostName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// AddHost creates a host: netns "<labid>-<name>", a veth pair whose eth0
// end gets the next free address of the lab subnet and whose other end is
// plugged into the switch bridge, lo up, and transmit checksum offload off
// on eth0 (TCP over an OVS netdev datapath needs it).
func (l *Lab) AddHost(name string) (*Host, error) {
	if !hostName.MatchString(name) || name == switchNS {
		return nil, fmt.Errorf("add host %q: name must match %s and not be %q", name, hostName, switchNS)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("add host %s: %w", name, errClosed)
	}
	if _, dup := l.hosts[name]; dup {
		l.mu.Unlock()
		return nil, fmt.Errorf("add host %s: already exists", name)
	}
	ip := l.nextIP
	if !l.Subnet.Contains(ip) || ip.As4()[3] == 255 {
		l.mu.Unlock()
		return nil, fmt.Errorf("add host %s: subnet %s is full", name, l.Subnet)
	}
	l.nextIP = ip.Next()
	h := &Host{
		Name: name, NS: l.ns(name), IP: ip, Dir: filepath.Join(l.Dir, name),
		lab: l, port: fmt.Sprintf("v%d", len(l.order)+1),
	}
	l.hosts[name] = h
	l.order = append(l.order, h)
	l.rec.Netns = append(l.rec.Netns, h.NS)
	err := l.saveLocked()
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	ctx, cancel := withDefault(context.Background())
	defer cancel()
	sw := l.ns(switchNS)
	err = runCmds(ctx, [][]string{
		{"ip", "netns", "add", h.NS},
		{"ip", "-n", sw, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"ip", "-n", sw, "link", "set", h.port, "master", "br0", "up"},
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
		{"ip", "-n", h.NS, "addr", "add", netip.PrefixFrom(ip, l.Subnet.Bits()).String(), "dev", "eth0"},
		{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", h.NS, "ethtool", "-K", "eth0", "tx", "off"},
	})
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	return h, nil
}

// Lab returns the lab the host belongs to.
func (h *Host) Lab() *Lab { return h.lab }

// Command builds a command that runs inside the host's network namespace
// (ip netns exec). The context kills it, as with exec.CommandContext.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a command inside the host and returns its combined output. The
// error includes the output. Without a deadline on ctx, DefaultRunTimeout
// applies.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := withDefault(ctx)
	defer cancel()
	out, err := output(h.Command(ctx, name, args...))
	if err != nil {
		return out, fmt.Errorf("on %s: %w", h.Name, err)
	}
	return out, nil
}

// Do runs fn on an OS thread switched into the host's network namespace:
// sockets fn creates belong to the host. Goroutines fn starts do not run
// there. The thread is switched back afterwards; if that fails it is
// discarded (its goroutine exits still locked, so the runtime terminates
// it) rather than reused. A panic in fn is re-raised in the caller.
func (h *Host) Do(fn func() error) error {
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", h.NS, err)
	}
	defer target.Close()
	type result struct {
		err   error
		panic any
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// From here on, return without UnlockOSThread unless the thread is
		// known to be back in its own namespace.
		orig, err := netns.Get()
		if err != nil {
			res <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			res <- result{err: fmt.Errorf("enter netns %s: %w", h.NS, err)}
			return
		}
		var r result
		func() {
			defer func() { r.panic = recover() }()
			r.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			r.err = errors.Join(r.err, fmt.Errorf("leave netns %s (thread discarded): %w", h.NS, err))
			res <- r
			return
		}
		runtime.UnlockOSThread()
		res <- r
	}()
	r := <-res
	if r.panic != nil {
		panic(r.panic)
	}
	return r.err
}

// DialContext dials from inside the host (for grpc.WithContextDialer). The
// address must be an IP literal or a unix socket path: name resolution could
// run on other threads, outside the namespace.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, err
	}
	var conn net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, h.Name, err)
	}
	return conn, nil
}

// Listen opens a listener inside the host (same address rules as
// DialContext). Accept works from any goroutine.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	if err := checkLiteral(network, addr); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s on %s: %w", network, addr, h.Name, err)
	}
	return ln, nil
}

func checkLiteral(network, addr string) error {
	if strings.HasPrefix(network, "unix") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("address %q: host must be an IP literal", addr)
	}
	return nil
}

// Cut takes the switch side of the host's link down: the host is cut off
// from every other host but keeps running.
func (h *Host) Cut() error { return h.setPort("down") }

// Reconnect undoes Cut.
func (h *Host) Reconnect() error { return h.setPort("up") }

func (h *Host) setPort(state string) error {
	ctx, cancel := withDefault(context.Background())
	defer cancel()
	if err := runCmd(ctx, "ip", "-n", h.lab.ns(switchNS), "link", "set", h.port, state); err != nil {
		return fmt.Errorf("set link of %s %s: %w", h.Name, state, err)
	}
	return nil
}
