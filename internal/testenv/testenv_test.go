package testenv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a lab owner that crashes (see
// TestSweepStaleLab).
const helperEnv = "CORRAL_TESTENV_CRASH_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		crashHelper()
		return
	}
	os.Exit(m.Run())
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustHost(t *testing.T, l *Lab, name string) *Host {
	t.Helper()
	h, err := l.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// serve answers every connection with "hello" until ln is closed.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello"))
		c.Close()
	}
}

func dialHello(ctx context.Context, from *Host, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "hello" {
		return fmt.Errorf("got %q, want hello", b)
	}
	return nil
}

func TestPingDialCutReconnect(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	l := New(t, Options{})
	h1, h2 := mustHost(t, l, "h1"), mustHost(t, l, "h2")
	if !l.Subnet.Contains(h1.IP) || !l.Subnet.Contains(h2.IP) || h1.IP == h2.IP {
		t.Fatalf("addresses %s %s not distinct in %s", h1.IP, h2.IP, l.Subnet)
	}
	if l.Host("h1") != h1 || l.Host("nope") != nil {
		t.Fatal("Lab.Host lookup wrong")
	}
	if _, err := h1.Run(ctx, "ping", "-c1", "-W2", h2.IP.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Run(ctx, "ping", "-c1", "-W2", h1.IP.String()); err != nil {
		t.Fatal(err)
	}
	out, err := h1.Run(ctx, "ethtool", "-k", "eth0")
	if err != nil || !strings.Contains(out, "tx-checksumming: off") {
		t.Fatalf("tx checksum offload not off on eth0: %v\n%s", err, out)
	}

	ln, err := h2.Listen("tcp", net.JoinHostPort(h2.IP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serve(ln)
	addr := ln.Addr().String()
	if err := dialHello(ctx, h1, addr, 3*time.Second); err != nil {
		t.Fatalf("dial before cut: %v", err)
	}
	if err := h2.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := dialHello(ctx, h1, addr, 500*time.Millisecond); err == nil {
		t.Fatal("dial succeeded while h2 is cut off")
	}
	if err := h2.Reconnect(); err != nil {
		t.Fatal(err)
	}
	if err := dialHello(ctx, h1, addr, 3*time.Second); err != nil {
		t.Fatalf("dial after reconnect: %v", err)
	}
	if _, err := h1.DialContext(ctx, "tcp", "localhost:80"); err == nil {
		t.Fatal("DialContext accepted a host name")
	}
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestDoLeavesNoThreadInNetns(t *testing.T) {
	// Not parallel: the final check looks at every thread of the process,
	// and another test's Do may legitimately have one in a host namespace
	// at that moment (CI failed so once).
	l := New(t, Options{})
	h := mustHost(t, l, "h1")
	hostIno := netnsInode(t, "/run/netns/"+h.NS)
	rootIno := netnsInode(t, "/proc/self/ns/net")
	errBoom := errors.New("boom")
	tests := []struct {
		name string
		fn   func() error
		want error
	}{
		{"sees host namespace", func() error {
			if ino := netnsInode(t, "/proc/thread-self/ns/net"); ino != hostIno {
				return fmt.Errorf("thread in netns %d, want %d", ino, hostIno)
			}
			ifc, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if strings.HasPrefix(a.String(), h.IP.String()+"/") {
					return nil
				}
			}
			return fmt.Errorf("eth0 has %v, want %s", addrs, h.IP)
		}, nil},
		{"returns fn error", func() error { return errBoom }, errBoom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 20)
			for i := 0; i < 20; i++ {
				go func() { done <- h.Do(tc.fn) }()
			}
			for i := 0; i < 20; i++ {
				if err := <-done; !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
					t.Fatalf("Do = %v, want %v", err, tc.want)
				}
			}
		})
	}
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("panic in fn: recovered %v, want kaboom", r)
			}
		}()
		h.Do(func() error { panic("kaboom") })
	}()
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, task := range tasks {
		var st syscall.Stat_t
		if syscall.Stat(task, &st) == nil && st.Ino != rootIno {
			t.Errorf("%s is in netns %d, not the root one", task, st.Ino)
		}
	}
}

// assertGone checks that nothing of a closed lab remains.
func assertGone(t *testing.T, l *Lab, pids []int) {
	t.Helper()
	for _, ns := range listNetns() {
		if strings.HasPrefix(ns, l.ID+"-") {
			t.Errorf("netns %s still exists", ns)
		}
	}
	for _, pid := range pids {
		if alive(procID{PID: pid}) {
			t.Errorf("process %d still alive", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(LabsRoot, "slots", l.ID)); err == nil {
		t.Errorf("slot %s not freed", l.ID)
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keep bool
	}{{"remove dir", false}, {"keep dir", true}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t, time.Minute)
			dir := filepath.Join(t.TempDir(), "lab")
			l, err := Start(ctx, Options{Dir: dir, Keep: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			h := mustHost(t, l, "h1")
			p, err := h.StartProcess("sleeper", h.Command(context.Background(), "sleep", "600"))
			if err != nil {
				t.Fatal(err)
			}
			// An untracked process inside the namespace must die too.
			stray := h.Command(context.Background(), "sh", "-c", "sleep 600 & sleep 600")
			if err := stray.Start(); err != nil {
				t.Fatal(err)
			}
			// sleeper, sh and its two sleeps (dash may exec the last one).
			var inNS []procID
			for deadline := time.Now().Add(10 * time.Second); len(inNS) < 3; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("expected >= 3 processes in %s, found %v", h.NS, inNS)
				}
				inNS = nsProcesses([]string{h.NS})
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			stray.Wait()
			var pids []int
			for _, id := range inNS {
				pids = append(pids, id.PID)
			}
			assertGone(t, l, append(pids, p.PID()))
			_, err = os.Stat(filepath.Join(dir, "lab.json"))
			if tc.keep && err != nil {
				t.Errorf("Keep: lab.json gone: %v", err)
			}
			if !tc.keep && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("lab dir not removed: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func TestParallelLabsAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	type res struct {
		l   *Lab
		err error
	}
	ch := make(chan res, 2)
	for i := 0; i < 2; i++ {
		go func() {
			l, err := Start(ctx, Options{})
			ch <- res{l, err}
		}()
	}
	var labs []*Lab
	for i := 0; i < 2; i++ {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.l.Close() })
		labs = append(labs, r.l)
	}
	a, b := labs[0], labs[1]
	if a.ID == b.ID || a.Subnet == b.Subnet || a.Dir == b.Dir {
		t.Fatalf("labs clash: %s %s %s / %s %s %s", a.ID, a.Subnet, a.Dir, b.ID, b.Subnet, b.Dir)
	}
	a1, a2, b1 := mustHost(t, a, "x"), mustHost(t, a, "y"), mustHost(t, b, "x")
	if _, err := a1.Run(ctx, "ping", "-c1", "-W2", a2.IP.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := a1.Run(ctx, "ping", "-c1", "-W1", b1.IP.String()); err == nil {
		t.Fatalf("lab %s reached lab %s", a.ID, b.ID)
	}
}

// crashHelper owns a lab with a detached process in it, reports them and
// dies without closing anything.
func crashHelper() {
	l, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	h, err := l.AddHost("h1")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	// setsid: no Pdeathsig, own session; only the sweep can end it.
	cmd := h.Command(context.Background(), "setsid", "sleep", "600")
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	// Report only once it is inside the namespace.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid)); strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			fmt.Println("ERR sleep did not start")
			os.Exit(1)
		}
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{"id": l.ID, "dir": l.Dir, "ns": h.NS, "pid": cmd.Process.Pid})
	os.Stdout.Sync()
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

func TestSweepStaleLab(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, _ := cmd.Output() // it dies by SIGKILL
	var got struct {
		ID, Dir, NS string
		PID         int
	}
	line, _ := bufio.NewReader(strings.NewReader(string(out))).ReadString('\n')
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	if _, err := os.Stat("/run/netns/" + got.NS); err != nil {
		t.Fatalf("helper's netns missing before sweep: %v", err)
	}
	if !alive(procID{PID: got.PID}) {
		t.Fatalf("helper's process %d not running before sweep", got.PID)
	}
	l := New(t, Options{}) // sweeps
	if l.ID == got.ID {
		t.Logf("slot %s reused after the sweep", l.ID)
	}
	if _, err := os.Stat("/run/netns/" + got.NS); err == nil {
		t.Errorf("stale netns %s survived the sweep", got.NS)
	}
	if alive(procID{PID: got.PID}) {
		t.Errorf("stale process %d survived the sweep", got.PID)
	}
	if _, err := os.Stat(got.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale lab dir %s survived: %v", got.Dir, err)
	}
}

func TestOVS(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 2*time.Minute)
	l := New(t, Options{})
	h := mustHost(t, l, "sw1")
	start := time.Now()
	o, err := h.StartOVS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("OVS ready in %v", time.Since(start).Round(time.Millisecond))
	if _, err := o.Vsctl(ctx, "add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"); err != nil {
		t.Fatal(err)
	}
	out, err := o.Vsctl(ctx, "list-br")
	if err != nil || strings.TrimSpace(out) != "br0" {
		t.Fatalf("list-br = %q, %v", out, err)
	}
	// The userspace datapath creates br0 as a tap in the host's namespace,
	// proof that ovs-vswitchd runs there.
	if _, err := h.Run(ctx, "ip", "link", "show", "br0"); err != nil {
		t.Fatal(err)
	}
	if o.DBServer.PID() == o.VSwitchd.PID() || !o.VSwitchd.Running() {
		t.Fatal("ovs daemons not tracked")
	}
}

func TestCeph(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 3*time.Minute)
	l := New(t, Options{})
	l.CephOSDBytes = 512 << 20
	start := time.Now()
	c, err := l.StartCeph(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Ceph (1 OSD, pool rbd) ready in %v", time.Since(start).Round(time.Millisecond))
	key, err := c.CreateClient(ctx, "corral")
	if err != nil {
		t.Fatal(err)
	}
	client := mustHost(t, l, "client")
	conf := filepath.Join(client.Dir, "ceph.conf")
	if err := c.WriteClientConf(conf, "corral", key); err != nil {
		t.Fatal(err)
	}
	rbd := func(args ...string) string {
		t.Helper()
		out, err := client.Run(ctx, "rbd", append([]string{"-c", conf, "--id", "corral"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	rbd("create", "--size", "16", "rbd/img1")
	if out := rbd("info", "rbd/img1"); !strings.Contains(out, "size 16 MiB") {
		t.Fatalf("rbd info:\n%s", out)
	}
	if out := rbd("ls", "rbd"); strings.TrimSpace(out) != "img1" {
		t.Fatalf("rbd ls = %q", out)
	}
	// The fencing cap: host-wide blocklist commands.
	if _, err := client.Run(ctx, "ceph", "-c", conf, "--id", "corral", "osd", "blocklist", "ls"); err != nil {
		t.Fatal(err)
	}
	pids := []int{c.Mon.PID()}
	for _, p := range c.OSDs {
		pids = append(pids, p.PID())
	}
	start = time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab with Ceph closed in %v", time.Since(start).Round(time.Millisecond))
	assertGone(t, l, pids)
}

func TestLibvirtdAndGuest(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 4*time.Minute)
	l := New(t, Options{})
	h1, h2 := mustHost(t, l, "n1"), mustHost(t, l, "n2")
	var ds []*Libvirtd
	for _, h := range []*Host{h1, h2} {
		start := time.Now()
		d, err := h.StartLibvirtd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("libvirtd on %s ready in %v", h.Name, time.Since(start).Round(time.Millisecond))
		ds = append(ds, d)
	}
	d1, d2 := ds[0], ds[1]
	if _, err := h1.Run(ctx, "virsh", "-c", d1.LocalURI(), "list", "--all"); err != nil {
		t.Fatal(err)
	}
	// TCP from the other host, as migration uses it.
	out, err := h2.Run(ctx, "virsh", "-c", d1.URI, "hostname")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("virsh -c %s hostname: %s", d1.URI, strings.TrimSpace(out))
	if _, err := h1.Run(ctx, "virsh", "-c", d2.URI, "list", "--all"); err != nil {
		t.Fatal(err)
	}

	guestIP := l.Subnet.Addr().As4()
	guestIP[3] = 200
	kernel, initrd, err := BuildGuest(t.TempDir(), GuestOptions{
		InitScript: "ip -4 -o addr show dev eth0\n" + DefaultInitScript,
	})
	if err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(h1.Dir, "g1.serial")
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>g1</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet corral.ip=%d.%d.%d.%d/24</cmdline>
  </os>
  <devices>
    <serial type='file'><source path='%s' append='on'/><target port='0'/></serial>
    <interface type='ethernet'><model type='virtio'/></interface>
  </devices>
</domain>
`, kernel, initrd, guestIP[0], guestIP[1], guestIP[2], guestIP[3], serial)
	xmlPath := filepath.Join(h1.Dir, "g1.xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh := func(args ...string) string {
		t.Helper()
		out, err := h1.Run(ctx, "virsh", append([]string{"-c", d1.LocalURI()}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	virsh("define", xmlPath)
	start := time.Now()
	virsh("start", "g1")
	waitSerial := func(want string, timeout time.Duration) string {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			b, _ := os.ReadFile(serial)
			if strings.Contains(string(b), want) {
				return string(b)
			}
			if strings.Contains(string(b), "Kernel panic") {
				t.Fatalf("guest kernel panic before %q; serial tail:\n%s", want, tail(string(b), 40))
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q on the serial after %v; serial tail:\n%s", want, timeout, tail(string(b), 20))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitSerial("GUEST-READY", 90*time.Second)
	t.Logf("guest ready %v after virsh start", time.Since(start).Round(time.Millisecond))
	text := waitSerial("count 1", 30*time.Second)
	ipAddr := fmt.Sprintf("inet %d.%d.%d.%d/24", guestIP[0], guestIP[1], guestIP[2], guestIP[3])
	if !strings.Contains(text, ipAddr) {
		t.Errorf("corral.ip not applied: want %q on the serial:\n%s", ipAddr, tail(text, 20))
	}
	qemus := d1.QEMUPIDs()
	if len(qemus) != 1 {
		t.Fatalf("QEMU pids = %v, want one", qemus)
	}

	// Daemon crash: the guest survives and a new libvirtd re-attaches.
	if err := d1.KillDaemonOnly(); err != nil {
		t.Fatal(err)
	}
	if !alive(procID{PID: qemus[0]}) {
		t.Fatal("KillDaemonOnly killed the guest")
	}
	start = time.Now()
	if err := d1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("libvirtd restart in %v", time.Since(start).Round(time.Millisecond))
	if st := strings.TrimSpace(virsh("domstate", "g1")); st != "running" {
		t.Fatalf("after restart g1 is %q", st)
	}
	// Host crash: daemon and guest die.
	daemonPID := d1.Process().PID()
	if err := d1.Kill(); err != nil {
		t.Fatal(err)
	}
	if alive(procID{PID: qemus[0]}) || alive(procID{PID: daemonPID}) {
		t.Fatal("Kill left libvirtd or QEMU running")
	}
	d2PID := d2.Process().PID()
	start = time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab with libvirtd closed in %v", time.Since(start).Round(time.Millisecond))
	assertGone(t, l, []int{d2PID, daemonPID, qemus[0]})
}
