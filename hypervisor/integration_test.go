package hypervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
	"github.com/minet/corral/internal/testenv"
	"github.com/minet/corral/pki"
)

// Integration tests: real libvirtd (through testenv) and real TCG guests.

const testCluster = "test"

type testHost struct {
	h    *testenv.Host
	d    *testenv.Libvirtd
	conn *Conn
}

func startHost(t *testing.T, ctx context.Context, lab *testenv.Lab, name string) *testHost {
	t.Helper()
	return startHostWith(t, ctx, lab, name, nil)
}

// startHostWith starts a host whose libvirtd also serves TLS with the
// credentials creds returns for the host's IP (nil: TCP only).
func startHostWith(t *testing.T, ctx context.Context, lab *testenv.Lab, name string, creds func(ip net.IP) (pki.Creds, error), daemonConf ...string) *testHost {
	t.Helper()
	h, err := lab.AddHost(name)
	if err != nil {
		t.Fatalf("add host %s: %v", name, err)
	}
	opts := testenv.LibvirtdOptions{DaemonConf: strings.Join(daemonConf, "\n")}
	if creds != nil {
		opts.TLS = func(dir string) error {
			c, err := creds(net.IP(h.IP.AsSlice()))
			if err != nil {
				return err
			}
			_, err = pki.LibvirtTLS{Dir: dir}.Write(c)
			return err
		}
	}
	d, err := h.StartLibvirtdWith(ctx, opts)
	if err != nil {
		t.Fatalf("start libvirtd on %s: %v", name, err)
	}
	c, err := Dial(ctx, d.Socket)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &testHost{h: h, d: d, conn: c}
}

func guestSpec(t *testing.T, name, kernel, initrd string) Spec {
	return Spec{
		Name: name, UUID: "", Cluster: testCluster, VMID: "id-" + name,
		Type: TypeQEMU, VCPUs: 1, MemoryMiB: 192,
		Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1",
		SerialLog: filepath.Join(t.TempDir(), name+".serial"),
	}
}

// bootGuest defines and starts the test guest name on th (kernel and
// initrd from testenv.BuildGuest).
func bootGuest(t *testing.T, ctx context.Context, th *testHost, name, kernel, initrd string) Spec {
	t.Helper()
	s := guestSpec(t, name, kernel, initrd)
	if err := th.conn.Define(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := th.conn.Start(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFile polls a file until re matches its content.
func waitFile(t *testing.T, path string, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if re.Match(b) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q after %s; content:\n%s", path, re, timeout, excerpt(string(b)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// excerpt keeps the start (boot messages) and the end of a serial log.
func excerpt(s string) string {
	if len(s) > 6000 {
		return s[:3000] + "\n...\n" + s[len(s)-3000:]
	}
	return s
}

var countRE = regexp.MustCompile(`count (\d+)`)

func counts(s string) []int {
	var out []int
	for _, m := range countRE.FindAllStringSubmatch(s, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func TestIntegrationLifecycle(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lab := testenv.New(t, testenv.Options{})
	th := startHost(t, ctx, lab, "n1")
	c := th.conn
	// The guest echoes each line typed on its console back as "ECHO:<line>"
	// so that the console's write direction is checked too.
	kernel, initrd, err := testenv.BuildGuest(t.TempDir(), testenv.GuestOptions{InitScript: echoInit})
	if err != nil {
		t.Fatal(err)
	}

	hi, err := c.Host(ctx)
	if err != nil {
		t.Fatalf("Host: %v", err)
	}
	if hi.CPUs < 1 || hi.MemoryMiB < 256 || hi.Hostname == "" || !strings.HasPrefix(hi.LibvirtVersion, "9.") || hi.QEMUVersion == "0.0.0" {
		t.Errorf("implausible host info %+v", hi)
	}

	s := guestSpec(t, "life", kernel, initrd)
	s.UUID = "5d1c2e0a-8f0b-4e58-9b1a-3c0d6f7e8a91"
	disk := filepath.Join(t.TempDir(), "data.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Disks = []Disk{{Target: "vda", File: disk}}
	if _, err := th.h.Run(ctx, "ip", "link", "add", "br0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	if _, err := th.h.Run(ctx, "ip", "link", "add", "br1", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	s.NICs = []NIC{{MAC: "52:54:00:aa:00:01", Bridge: "br0", Target: "tap-life"}}

	if err := c.Define(ctx, s); err != nil {
		t.Fatalf("Define: %v", err)
	}
	events, err := c.Events(ctx)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	if err := c.Start(ctx, s.Name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := c.Start(ctx, s.Name); err != nil {
		t.Errorf("Start of a running domain: %v", err)
	}
	start := time.Now()
	waitFile(t, s.SerialLog, regexp.MustCompile(ReadyLine), 60*time.Second)
	t.Logf("GUEST-READY in serial log %.1fs after start", time.Since(start).Seconds())

	t.Run("list and get", func(t *testing.T) {
		list, err := c.List(ctx, testCluster)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Name != s.Name || list[0].UUID != s.UUID || list[0].VMID != s.VMID || list[0].Cluster != testCluster {
			t.Fatalf("List = %+v, want just %s/%s", list, s.Name, s.VMID)
		}
		if list[0].State != StateRunning || list[0].Reason != "booted" || list[0].CPUTimeNs == 0 || list[0].MemoryKiB != 192*1024 {
			t.Errorf("List entry %+v: want running/booted with CPU time and 192 MiB", list[0])
		}
		other, err := c.List(ctx, "another-cluster")
		if err != nil || len(other) != 0 {
			t.Errorf("List(another-cluster) = %+v, %v; want none", other, err)
		}
	})

	t.Run("foreign domains are left alone", func(t *testing.T) {
		foreign := `<domain type="qemu"><name>foreign</name><memory unit="MiB">64</memory><os><type arch="x86_64">hvm</type></os></domain>`
		if _, err := c.l.DomainDefineXMLFlags(foreign, 0); err != nil {
			t.Fatal(err)
		}
		list, err := c.List(ctx, testCluster)
		if err != nil || len(list) != 1 {
			t.Errorf("List with a foreign domain = %+v, %v", list, err)
		}
		fs := guestSpec(t, "foreign", kernel, initrd)
		if err := c.Define(ctx, fs); !errors.Is(err, ErrNotOwned) {
			t.Errorf("Define over a foreign domain: got %v, want ErrNotOwned", err)
		}
		other := s
		other.VMID = "someone-else"
		if err := c.Define(ctx, other); !errors.Is(err, ErrNotOwned) {
			t.Errorf("Define over another VM's domain: got %v, want ErrNotOwned", err)
		}
		if err := c.Undefine(ctx, "foreign"); err != nil {
			t.Error(err)
		}
	})

	t.Run("console", func(t *testing.T) {
		con, err := c.OpenConsole(ctx, s.Name)
		if err != nil {
			t.Fatalf("OpenConsole: %v", err)
		}
		defer con.Close()
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(con)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		var seen []string
		expect := func(re *regexp.Regexp) {
			t.Helper()
			timeout := time.After(10 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("console closed before %q; read %q", re, seen)
					}
					seen = append(seen, l)
					if re.MatchString(l) {
						return
					}
				case <-timeout:
					b, _ := os.ReadFile(s.SerialLog)
					t.Fatalf("no %q on the console within 10s; read %q; serial log ends with %q", re, seen, excerpt(string(b[max(0, len(b)-300):])))
				}
			}
		}
		expect(countRE)
		if _, err := io.WriteString(con, "hello-console\r"); err != nil {
			t.Fatalf("console write: %v", err)
		}
		expect(regexp.MustCompile(`ECHO:hello-console`))
		// A second session takes the console over; the first one ends.
		con2, err := c.OpenConsole(ctx, s.Name)
		if err != nil {
			t.Fatalf("second OpenConsole: %v", err)
		}
		defer con2.Close()
		buf := make([]byte, 64)
		if _, err := io.ReadAtLeast(con2, buf, 1); err != nil {
			t.Errorf("second console read: %v", err)
		}
	})

	t.Run("resize and nic update", func(t *testing.T) {
		if err := c.BlockResize(ctx, s.Name, "vda", 2<<20); err != nil {
			t.Fatalf("BlockResize: %v", err)
		}
		if fi, err := os.Stat(disk); err != nil || fi.Size() != 2<<20 {
			t.Errorf("disk file after resize: %v %v, want 2 MiB", fi.Size(), err)
		}
		nic := s.NICs[0]
		nic.Bridge = "br1"
		if err := c.UpdateNIC(ctx, s.Name, nic); err != nil {
			t.Fatalf("UpdateNIC: %v", err)
		}
		out, err := th.h.Run(ctx, "ip", "-o", "link", "show", "tap-life")
		if err != nil || !strings.Contains(out, "master br1") {
			t.Errorf("tap after UpdateNIC: %q %v, want master br1", out, err)
		}
		for _, flags := range []libvirt.DomainXMLFlags{0, libvirt.DomainXMLInactive} {
			dom, _ := c.l.DomainLookupByName(s.Name)
			doc, err := c.l.DomainGetXMLDesc(dom, flags)
			if err != nil || !strings.Contains(doc, "<source bridge='br1'/>") {
				t.Errorf("domain XML (flags %d) has no br1 after UpdateNIC: %v", flags, err)
			}
		}
	})

	t.Run("reboot", func(t *testing.T) {
		// busybox ignores the ACPI request; what is checked is that
		// libvirt accepts it for a running guest and the guest stays up.
		if err := c.Reboot(ctx, s.Name); err != nil {
			t.Errorf("Reboot: %v", err)
		}
		if err := c.Reboot(ctx, "absent"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Reboot of an absent domain: %v, want ErrNotFound", err)
		}
	})

	t.Run("redefine while running", func(t *testing.T) {
		s2 := s
		s2.MemoryMiB = 256
		if err := c.Define(ctx, s2); err != nil {
			t.Fatalf("redefine: %v", err)
		}
		d, err := c.Get(ctx, s.Name)
		if err != nil || d.State != StateRunning || d.MemoryKiB != 192*1024 {
			t.Errorf("after redefine: %+v %v; want still running with 192 MiB until next boot", d, err)
		}
		dom, _ := c.l.DomainLookupByName(s.Name)
		doc, _ := c.l.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
		if !strings.Contains(doc, "<memory unit='KiB'>262144</memory>") {
			t.Errorf("persistent definition was not updated:\n%s", doc)
		}
	})

	t.Run("qemu crash event", func(t *testing.T) {
		pids := th.d.QEMUPIDs()
		if len(pids) != 1 {
			t.Fatalf("QEMU pids %v, want one", pids)
		}
		drain(events)
		// libvirt sees the crash once the dead QEMU is reaped. Here PID 1
		// reaps orphans only every second or so (systemd does it at once),
		// so the deadline counts from the reaping, watched in /proc.
		reaped := make(chan time.Time, 1)
		go func() {
			for {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", pids[0])); err != nil {
					reaped <- time.Now()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		t0 := time.Now()
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var tr time.Time
		select {
		case tr = <-reaped:
		case <-time.After(15 * time.Second):
			t.Fatal("QEMU not reaped within 15s")
		}
		ev := waitEvent(t, events, s.Name, StateCrashed, time.Until(tr.Add(time.Second)))
		t.Logf("QEMU reaped %s after SIGKILL, event %s after reaping: %+v", tr.Sub(t0), time.Since(tr), ev)
		if ev.Detail != "failed" {
			t.Errorf("event %+v: want detail failed", ev)
		}
		if d, err := c.Get(ctx, s.Name); err != nil || d.State != StateCrashed {
			t.Errorf("Get after crash = %+v, %v; want crashed", d, err)
		}
	})

	t.Run("restart picks up new definition", func(t *testing.T) {
		if err := c.Start(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
		if d, err := c.Get(ctx, s.Name); err != nil || d.MemoryKiB != 256*1024 {
			t.Errorf("after restart: %+v %v; want 256 MiB", d, err)
		}
	})

	t.Run("destroy event", func(t *testing.T) {
		drain(events)
		t0 := time.Now()
		if err := c.Destroy(ctx, s.Name); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		// libvirt emits the event once QEMU is reaped, which is also
		// when Destroy returns.
		t1 := time.Now()
		ev := waitEvent(t, events, s.Name, StateStopped, time.Second)
		t.Logf("Destroy took %s; stopped event %s after it returned: %+v", t1.Sub(t0), time.Since(t1), ev)
		if ev.Detail != "destroyed" || ev.UUID != s.UUID {
			t.Errorf("event %+v: want detail destroyed and uuid %s", ev, s.UUID)
		}
		d, err := c.Get(ctx, s.Name)
		if err != nil || d.State != StateStopped || d.Reason != "destroyed" {
			t.Errorf("Get after Destroy = %+v, %v", d, err)
		}
		if err := c.Destroy(ctx, s.Name); err != nil {
			t.Errorf("Destroy of a stopped domain: %v", err)
		}
	})

	t.Run("shutdown timeout destroys", func(t *testing.T) {
		if err := c.Start(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
		drain(events)
		// busybox init has no ACPI handling: the power button is ignored.
		t0 := time.Now()
		if err := c.Shutdown(ctx, s.Name, 2*time.Second); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if el := time.Since(t0); el < 2*time.Second {
			t.Errorf("Shutdown returned after %s, before its timeout", el)
		}
		d, err := c.Get(ctx, s.Name)
		if err != nil || d.State != StateStopped || d.Reason != "destroyed" {
			t.Errorf("after Shutdown timeout: %+v %v; want stopped/destroyed", d, err)
		}
		if err := c.Shutdown(ctx, s.Name, time.Second); err != nil {
			t.Errorf("Shutdown of a stopped domain: %v", err)
		}
	})

	t.Run("undefine", func(t *testing.T) {
		if err := c.Start(ctx, s.Name); err != nil {
			t.Fatal(err)
		}
		if err := c.Undefine(ctx, s.Name); err != nil {
			t.Fatalf("Undefine of a running domain: %v", err)
		}
		if _, err := c.Get(ctx, s.Name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Undefine: %v, want ErrNotFound", err)
		}
		if err := c.Undefine(ctx, s.Name); err != nil {
			t.Errorf("Undefine of an absent domain: %v", err)
		}
		if err := c.Start(ctx, s.Name); !errors.Is(err, ErrNotFound) {
			t.Errorf("Start of an absent domain: %v, want ErrNotFound", err)
		}
		if list, err := c.List(ctx, testCluster); err != nil || len(list) != 0 {
			t.Errorf("List after Undefine = %+v, %v", list, err)
		}
	})
}

// echoInit prints a counter and echoes console input back.
const echoInit = `(while read -r l; do echo "ECHO:$l"; done) </dev/ttyS0 >/dev/ttyS0 &
i=0; while :; do echo "count $i" >/dev/ttyS0; i=$((i+1)); sleep 1; done`

func drain(ch <-chan Event) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func waitEvent(t *testing.T, ch <-chan Event, name string, st State, within time.Duration) Event {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event channel closed")
			}
			if ev.Name == name && ev.State == st {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event for %s within %s", st, name, within)
		}
	}
}

func waitAnyEvent(t *testing.T, ch <-chan Event, name string, within time.Duration) Event {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event channel closed")
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no event for %s within %s", name, within)
		}
	}
}

func TestIntegrationProbeKVM(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lab := testenv.New(t, testenv.Options{})
	th := startHost(t, ctx, lab, "n1")
	kernel, initrd, err := testenv.BuildGuest(t.TempDir(), testenv.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	// TCG needs ~3 s to print the ready line; KVM far less. 8 s leaves
	// room on a busy machine without making the fallback slow.
	typ, err := th.conn.ProbeKVM(ctx, kernel, initrd, 8*time.Second)
	if err != nil {
		t.Fatalf("ProbeKVM: %v", err)
	}
	el := time.Since(t0)
	t.Logf("ProbeKVM = %s in %s", typ, el)
	switch typ {
	case TypeKVM:
		// Only possible if the ready line was seen, i.e. a kvm guest ran.
	case TypeQEMU:
		// Falling back must follow a failed start or the full timeout.
	default:
		t.Fatalf("ProbeKVM returned %q", typ)
	}
	doms, _, err := th.conn.l.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		if strings.HasPrefix(d.Name, "corral-kvm-probe") {
			t.Errorf("probe domain %s left behind", d.Name)
		}
	}
	// The two outcomes of the boot check itself, on TCG where both can be
	// produced: a guest that prints the ready line, and one that runs but
	// stays silent (an initrd that is not one: the kernel panics), which
	// is what a kvm guest looks like on a PVM-only host.
	ok, err := th.conn.bootProbe(ctx, TypeQEMU, kernel, initrd, 90*time.Second)
	if err != nil || !ok {
		t.Errorf("boot probe of a good TCG guest = %v, %v; want booted", ok, err)
	}
	bogus := filepath.Join(t.TempDir(), "bogus.img")
	if err := os.WriteFile(bogus, []byte("not an initramfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	ok, err = th.conn.bootProbe(ctx, TypeQEMU, kernel, bogus, 3*time.Second)
	if err != nil || ok || time.Since(t1) < 3*time.Second {
		t.Errorf("boot probe of a silent guest = %v, %v after %s; want not booted after the 3s timeout", ok, err, time.Since(t1))
	}
	doms, _, err = th.conn.l.ConnectListAllDomains(1, 0)
	if err != nil || len(doms) != 0 {
		t.Errorf("domains left after probes: %+v %v", doms, err)
	}

	// Whatever the probe said must boot.
	s := guestSpec(t, "probed", kernel, initrd)
	s.Type = typ
	if err := th.conn.Define(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := th.conn.Start(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	defer th.conn.Undefine(ctx, s.Name)
	waitFile(t, s.SerialLog, regexp.MustCompile(ReadyLine), 60*time.Second)
}

func TestIntegrationMigrate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lab := testenv.New(t, testenv.Options{})
	src := startHost(t, ctx, lab, "src")
	dst := startHost(t, ctx, lab, "dst")
	kernel, initrd, err := testenv.BuildGuest(t.TempDir(), testenv.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := bootGuest(t, ctx, src, "mig", kernel, initrd)
	waitFile(t, s.SerialLog, regexp.MustCompile(`count 2\b`), 60*time.Second)
	dstEvents, err := dst.conn.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var ticks []Progress
	res, err := src.conn.Migrate(ctx, s.Name, src.d.URI, MigrateOptions{}, nil)
	if err == nil {
		t.Fatalf("migrating to the source itself succeeded: %+v", res)
	}

	// Cancelling the context aborts the job; the guest stays on the source.
	cctx, ccancel := context.WithCancel(ctx)
	_, err = src.conn.Migrate(cctx, s.Name, dst.d.URI, MigrateOptions{BandwidthMiBs: 1, Unsafe: true},
		func(p Progress) { ccancel() })
	ccancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Migrate: %v, want context.Canceled", err)
	}
	if d, err := src.conn.Get(ctx, s.Name); err != nil || d.State != StateRunning {
		t.Fatalf("source after an aborted migration: %+v %v; want running", d, err)
	}
	if _, err := dst.conn.Get(ctx, s.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("destination after an aborted migration: %v, want ErrNotFound", err)
	}
	res, err = src.conn.Migrate(ctx, s.Name, dst.d.URI, MigrateOptions{
		MaxDowntime: 300 * time.Millisecond, Unsafe: true, Dest: dst.conn,
	}, func(p Progress) { ticks = append(ticks, p) })
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	before := counts(string(mustRead(t, s.SerialLog)))
	t.Logf("migrated in %s, downtime %d ms, %d progress reports, last %+v", res.Duration, res.DowntimeMs, len(ticks), res.Last)
	if res.DowntimeMs == 0 || res.DowntimeMs > 5000 {
		t.Errorf("downtime %d ms: want a measured, plausible value", res.DowntimeMs)
	}
	if dt, err := dst.conn.CompletedJobDowntime(ctx, s.Name); err != nil || dt != res.DowntimeMs {
		t.Errorf("CompletedJobDowntime = %d, %v; want %d", dt, err, res.DowntimeMs)
	}
	waitEvent(t, dstEvents, s.Name, StateRunning, 5*time.Second)

	if _, err := src.conn.Get(ctx, s.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("source still has the domain: %v", err)
	}
	d, err := dst.conn.Get(ctx, s.Name)
	if err != nil || d.State != StateRunning || d.VMID != s.VMID {
		t.Fatalf("destination: %+v %v; want running with our metadata", d, err)
	}
	if list, err := dst.conn.List(ctx, testCluster); err != nil || len(list) != 1 {
		t.Errorf("destination List = %+v, %v; want the persistent domain", list, err)
	}
	// The counter goes on from where it was: same guest, no reboot.
	last := before[len(before)-1]
	log := waitFile(t, s.SerialLog, regexp.MustCompile(fmt.Sprintf(`count %d\b`, last+3)), 30*time.Second)
	if n := strings.Count(log, ReadyLine); n != 1 {
		t.Errorf("%d ready lines in the serial log: the guest rebooted", n)
	}
	all := counts(log)
	for i := 1; i < len(all); i++ {
		if all[i] != all[i-1]+1 {
			t.Errorf("counter jumped from %d to %d", all[i-1], all[i])
		}
	}
	if err := dst.conn.Undefine(ctx, s.Name); err != nil {
		t.Error(err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIntegrationReconnect(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lab := testenv.New(t, testenv.Options{})
	th := startHost(t, ctx, lab, "n1")
	kernel, initrd, err := testenv.BuildGuest(t.TempDir(), testenv.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := bootGuest(t, ctx, th, "survivor", kernel, initrd)
	events, err := th.conn.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-th.conn.Disconnected():
		t.Fatal("Disconnected closed on a live connection")
	default:
	}
	t0 := time.Now()
	if err := th.d.KillDaemonOnly(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-th.conn.Disconnected():
		t.Logf("Disconnected %s after the kill", time.Since(t0))
	case <-time.After(5 * time.Second):
		t.Fatal("Disconnected did not fire within 5s of killing libvirtd")
	}
	select {
	case _, ok := <-events:
		for ok {
			_, ok = <-events
		}
	case <-time.After(5 * time.Second):
		t.Error("event channel not closed after the connection was lost")
	}
	if _, err := th.conn.Get(ctx, s.Name); err == nil {
		t.Error("Get on a lost connection succeeded")
	}
	if err := th.d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c2, err := Dial(ctx, th.d.Socket)
	if err != nil {
		t.Fatalf("re-Dial: %v", err)
	}
	defer c2.Close()
	d, err := c2.Get(ctx, s.Name)
	if err != nil || d.State != StateRunning {
		t.Fatalf("after restart: %+v %v; want the guest still running", d, err)
	}
	// Still the same boot: the counter keeps going with one ready line.
	log := string(mustRead(t, s.SerialLog))
	n := counts(log)
	var last int
	if len(n) > 0 {
		last = n[len(n)-1]
	}
	log = waitFile(t, s.SerialLog, regexp.MustCompile(fmt.Sprintf(`count %d\b`, last+2)), 30*time.Second)
	if strings.Count(log, ReadyLine) != 1 {
		t.Errorf("guest rebooted across the libvirtd restart")
	}
	if err := c2.Undefine(ctx, s.Name); err != nil {
		t.Error(err)
	}
}

func TestIntegrationCephSecret(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lab := testenv.New(t, testenv.Options{})
	th := startHost(t, ctx, lab, "n1")
	// UEFI needs OVMF on the host: Define says so clearly when it is absent.
	us := Spec{Name: "uefi", Cluster: testCluster, VMID: "u", Type: TypeQEMU, VCPUs: 1, MemoryMiB: 64, UEFI: true}
	err := th.conn.Define(ctx, us)
	if _, serr := os.Stat(Firmware.Code); serr != nil {
		if !errors.Is(err, ErrNoUEFIFirmware) {
			t.Errorf("UEFI Define without OVMF: %v, want ErrNoUEFIFirmware", err)
		}
	} else if err != nil {
		t.Errorf("UEFI Define with OVMF installed: %v", err)
	}

	const id = "0b4e5e8c-6f1a-4d2c-9a33-0c1b2d3e4f50"
	for _, key := range []string{"AQBc9lFkAAAAABAAxOQ8tmjBaUMIRDTFmbNnJg==", "AQCj2YpRiAe6CxAA7/ETt7Hcl9IyxyYciVs47w=="} {
		if err := th.conn.DefineCephSecret(ctx, id, "client.corral secret", key); err != nil {
			t.Fatalf("DefineCephSecret: %v", err)
		}
		sec, err := th.conn.l.SecretLookupByUUID(libvirt.UUID(uuid.MustParse(id)))
		if err != nil {
			t.Fatal(err)
		}
		// Private secrets cannot be read back over the API; the XML shows
		// the definition took.
		doc, err := th.conn.l.SecretGetXMLDesc(sec, 0)
		if err != nil || !strings.Contains(doc, "private='yes'") || !strings.Contains(doc, "<name>client.corral secret</name>") {
			t.Errorf("secret XML %q %v", doc, err)
		}
		if _, err := th.conn.l.SecretGetValue(sec, 0); err == nil {
			t.Error("private secret value readable")
		}
		// libvirt 9 keeps the value base64-encoded on disk: it must be the
		// key itself, not the key encoded twice.
		stored, err := os.ReadFile(filepath.Join(th.d.HostDir, "etc/libvirt/secrets", id+".base64"))
		if err != nil || string(stored) != key {
			t.Errorf("stored secret %q %v, want %q", stored, err, key)
		}
	}
	if err := th.conn.DefineCephSecret(ctx, id, "x", "not base64!"); err == nil {
		t.Error("a non-base64 key was accepted")
	}
}

// libvirtNodesOnly is the README's tls_allowed_dn_list for cluster prod:
// node certificates only (GnuTLS may print the DN either way round).
const libvirtNodesOnly = `tls_allowed_dn_list = ["*OU=node*O=corral prod*", "*O=corral prod*OU=node*"]`

// TestIntegrationMigrateTLS migrates as production does: qemu+tls:// to the
// destination's libvirtd and an encrypted QEMU stream, both authenticated by
// the cluster CA through the files pki.LibvirtTLS lays out. A host whose
// certificate comes from another cluster's CA is refused.
func TestIntegrationMigrateTLS(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	now := time.Now()
	prod, err := pki.NewCA("prod", now)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := pki.NewCA("dev", now)
	if err != nil {
		t.Fatal(err)
	}
	issuer := func(ca *pki.CA, name string) func(net.IP) (pki.Creds, error) {
		return func(ip net.IP) (pki.Creds, error) {
			return ca.NewCreds(pki.RoleNode, name, []net.IP{ip}, now, time.Hour)
		}
	}
	lab := testenv.New(t, testenv.Options{})
	// The README's restriction: only prod's node certificates may talk to
	// these libvirtds (an admin certificate of the CA may not).
	src := startHostWith(t, ctx, lab, "src", issuer(prod, "src"), libvirtNodesOnly)
	dst := startHostWith(t, ctx, lab, "dst", issuer(prod, "dst"), libvirtNodesOnly)
	rogue := startHostWith(t, ctx, lab, "rogue", issuer(dev, "rogue"))
	// A libvirtd whose list admits no corral prod node refuses the source
	// even with a valid certificate: the list is enforced.
	strict := startHostWith(t, ctx, lab, "strict", issuer(prod, "strict"), `tls_allowed_dn_list = ["*O=corral nobody*"]`)
	kernel, initrd, err := testenv.BuildGuest(t.TempDir(), testenv.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := bootGuest(t, ctx, src, "tlsmig", kernel, initrd)
	waitFile(t, s.SerialLog, regexp.MustCompile(`count 2\b`), 60*time.Second)

	// refused migrates to uri, which must fail with the guest staying on
	// the source.
	refused := func(uri, why string) {
		t.Helper()
		if _, err := src.conn.Migrate(ctx, s.Name, uri, MigrateOptions{TLS: true, Unsafe: true}, nil); err == nil {
			t.Fatalf("migration %s succeeded", why)
		} else {
			t.Logf("%s: %v", why, err)
		}
		if d, err := src.conn.Get(ctx, s.Name); err != nil || d.State != StateRunning {
			t.Fatalf("source after the migration %s: %+v %v; want running", why, d, err)
		}
	}
	// Another cluster's node: the TLS handshake fails, nothing moves.
	refused(rogue.d.TLSURI, "to a host of another CA")
	refused(strict.d.TLSURI, "to a libvirtd whose tls_allowed_dn_list excludes the source")

	// The QEMU stream is encrypted: without the destination QEMU's key the
	// migration fails.
	key := filepath.Join(dst.d.HostDir, "etc/pki/qemu/server-key.pem")
	if err := os.Rename(key, key+".away"); err != nil {
		t.Fatal(err)
	}
	refused(dst.d.TLSURI, "without the destination QEMU's key (the stream would not be encrypted)")
	if err := os.Rename(key+".away", key); err != nil {
		t.Fatal(err)
	}

	res, err := src.conn.Migrate(ctx, s.Name, dst.d.TLSURI, MigrateOptions{TLS: true, Unsafe: true, Dest: dst.conn}, nil)
	if err != nil {
		t.Fatalf("Migrate over TLS: %v", err)
	}
	t.Logf("migrated over TLS in %s, downtime %d ms", res.Duration, res.DowntimeMs)
	d, err := dst.conn.Get(ctx, s.Name)
	if err != nil || d.State != StateRunning {
		t.Fatalf("destination: %+v %v; want running", d, err)
	}
	if _, err := src.conn.Get(ctx, s.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("source still has the domain after the migration: %v", err)
	}
	// The guest runs on the destination: its vCPUs keep consuming time
	// there. (TestIntegrationMigrate checks the counter on the console;
	// here the transport is what is under test.)
	deadline := time.Now().Add(30 * time.Second)
	for {
		later, err := dst.conn.Get(ctx, s.Name)
		if err == nil && later.State == StateRunning && later.CPUTimeNs > d.CPUTimeNs+100_000_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest not running on the destination: %+v %v (cpu time at arrival %d ns)", later, err, d.CPUTimeNs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := dst.conn.Undefine(ctx, s.Name); err != nil {
		t.Error(err)
	}
}
