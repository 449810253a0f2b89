package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

func TestVMLifecycle(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	bins, err := testenv.Build()
	if err != nil {
		t.Fatal(err)
	}
	lab := testenv.New(t, testenv.Options{})
	kernel, initrd, err := testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodes, libv := startVMNodes(t, ctx, lab, bins, "n1", "n2", "n3")
	if err := testenv.FormCluster(ctx, "prod", []*testenv.Corrald{nodes["n1"], nodes["n2"], nodes["n3"]}, nil); err != nil {
		t.Fatal(err)
	}
	c := clusterCLI{t: t, ctx: ctx, cluster: "prod", nodes: nodes}
	cli, must := c.cli, c.must
	c.waitReady("n1", 3, 60*time.Second)

	// Each node laid out its cluster certificate for libvirt and QEMU TLS
	// (live migration in production): valid for its IP, under the CA.
	for name, c := range nodes {
		pkiDir := filepath.Join(libv[name].HostDir, "etc/pki")
		eventually(t, 40*time.Second, name+" libvirt TLS files", func() (bool, string) {
			err := checkLibvirtTLS(pkiDir, c.Host.IP.String())
			return err == nil, fmt.Sprint(err)
		})
	}

	base := []string{"--vcpus", "1", "--memory", "192", "--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 quiet"}
	// Dry run shows the choice and why not elsewhere.
	out := must("n2", append([]string{"vm", "create", "web", "--dry-run"}, base...)...)
	for _, n := range []string{"n1", "n2", "n3"} {
		if !strings.Contains(out, n) {
			t.Fatalf("dry run lacks %s:\n%s", n, out)
		}
	}
	// Bad input: clear errors and nothing left behind.
	bad := map[string][]string{
		"unknown node":    append([]string{"vm", "create", "bad1", "--node", "nope"}, base...),
		"no node can":     {"vm", "create", "bad2", "--vcpus", "1", "--memory", "900000", "--kernel", kernel},
		"kernel":          {"vm", "create", "bad3", "--vcpus", "1", "--memory", "192", "--kernel", "/nonexistent/vmlinuz"},
		"invalid vm name": append([]string{"vm", "create", "Bad_Name"}, base...),
	}
	for want, args := range bad {
		out, err := cli("n1", args...)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("%v: want error containing %q, got err=%v\n%s", args, want, err, out)
		}
	}
	out = must("n1", "vm", "list")
	if strings.Contains(out, "bad") {
		t.Fatalf("half-created VM left behind:\n%s", out)
	}

	start := time.Now()
	must("n2", append([]string{"vm", "create", "web", "--node", "n3"}, base...)...)
	if out, err := cli("n1", append([]string{"vm", "create", "web"}, base...)...); err == nil || !strings.Contains(out, "already exists") {
		t.Fatalf("duplicate name: %v\n%s", err, out)
	}
	// The ready line, read through the API from a node that does not run it.
	out, err = cli("n1", "vm", "console", "web", "--until", "GUEST-READY", "--for", "90s")
	if err != nil {
		t.Fatalf("console: %v\n%s", err, out)
	}
	t.Logf("vm create to GUEST-READY through the console: %s", time.Since(start).Round(time.Millisecond))

	// The guest's usage reaches the cluster state, not only its state.
	usage := regexp.MustCompile(`"cpu_time_ns":\s*"[1-9][0-9]*"`)
	eventually(t, 30*time.Second, "vCPU time of web reported", func() (bool, string) {
		out, _ := cli("n1", "vm", "show", "web", "-o", "json")
		return usage.MatchString(out), out
	})

	qemuPID := func() string {
		b, _ := os.ReadFile(filepath.Join(libv["n3"].HostDir, "run/libvirt/qemu/prod-web.pid"))
		return strings.TrimSpace(string(b))
	}
	pid := qemuPID()
	if pid == "" {
		t.Fatal("no qemu pid for prod-web on n3")
	}
	// Restarting corrald leaves the guest untouched.
	if err := nodes["n3"].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := nodes["n3"].Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if got := qemuPID(); got != pid {
		t.Fatalf("guest restarted by corrald restart: pid %s -> %s", pid, got)
	}
	eventually(t, 20*time.Second, "web running after restart", func() (bool, string) {
		out, _ := cli("n1", "vm", "show", "web", "-o", "json")
		return strings.Contains(out, "VM_STATE_RUNNING"), out
	})

	// Stop / start.
	must("n1", "vm", "stop", "web")
	out = must("n1", "vm", "show", "web", "-o", "json")
	if !strings.Contains(out, "VM_STATE_STOPPED") {
		t.Fatalf("after stop:\n%s", out)
	}
	must("n1", "vm", "start", "web")

	// A config change applies at the next boot: `vm reboot` after an edit
	// is a cold reboot into a new QEMU with the new memory size.
	eventually(t, 30*time.Second, "running before the edit", func() (bool, string) {
		out, _ := cli("n1", "vm", "show", "web", "-o", "json")
		return strings.Contains(out, "VM_STATE_RUNNING") && qemuPID() != "", out
	})
	oldPID := qemuPID()
	must("n1", "vm", "edit", "web", "--memory", "256")
	if got := qemuPID(); got != oldPID {
		t.Fatalf("edit restarted the guest at once (pid %s -> %s): it must wait for the next boot", oldPID, got)
	}
	out = must("n1", "vm", "reboot", "web")
	if show := must("n1", "vm", "show", "web", "-o", "json"); !regexp.MustCompile(`"observed_reboot_seq":\s*"1"`).MatchString(show) {
		t.Errorf("vm reboot returned before the agent reported the reboot:\n%s", show)
	}
	if got := qemuPID(); got == oldPID || got == "" {
		t.Fatalf("cold reboot kept QEMU pid %s (now %q)", oldPID, got)
	}
	if out, err := nodes["n3"].Host.Run(ctx, "virsh", "-c", libv["n3"].LocalURI(), "dominfo", "prod-web"); err != nil || !strings.Contains(out, "262144 KiB") {
		t.Fatalf("after the cold reboot the domain should have 256 MiB: %v\n%s", err, out)
	}
	if out, err := cli("n1", "vm", "console", "web", "--until", "GUEST-READY", "--for", "90s"); err != nil {
		t.Fatalf("guest not ready again after the cold reboot: %v\n%s", err, out)
	}

	// Destroyed from outside corral: the state follows.
	eventually(t, 30*time.Second, "running before destroy", func() (bool, string) {
		out, _ := cli("n1", "vm", "show", "web", "-o", "json")
		return strings.Contains(out, "VM_STATE_RUNNING"), out
	})
	if out, err := nodes["n3"].Host.Run(ctx, "virsh", "-c", libv["n3"].LocalURI(), "destroy", "prod-web"); err != nil {
		t.Fatalf("virsh destroy: %v\n%s", err, out)
	}
	destroyed := time.Now()
	withEvents := func(out string) string {
		ev, _ := cli("n1", "event", "list")
		return out + "\nevents:\n" + ev
	}
	eventually(t, 10*time.Second, "state follows virsh destroy", func() (bool, string) {
		out, _ := cli("n1", "vm", "show", "web", "-o", "json")
		return strings.Contains(out, "VM_STATE_STOPPED"), withEvents(out)
	})
	t.Logf("virsh destroy seen in the cluster state after %s", time.Since(destroyed).Round(time.Millisecond))
	// Like Proxmox without HA, a guest stopped from outside stays off:
	// corral records it as stopped and does not boot it again.
	time.Sleep(3 * time.Second) // a few reconcile passes
	out = must("n1", "vm", "show", "web", "-o", "json")
	if !strings.Contains(out, "VM_STATE_STOPPED") || !strings.Contains(out, "POWER_STATE_STOPPED") || qemuPID() != "" {
		t.Fatalf("guest destroyed from outside was started again (qemu pid %q):\n%s", qemuPID(), withEvents(out))
	}

	must("n1", "vm", "delete", "web")
	out = must("n1", "vm", "list")
	if strings.Contains(out, "web") {
		t.Fatalf("deleted VM still listed:\n%s", out)
	}
	if out, _ := nodes["n3"].Host.Run(ctx, "virsh", "-c", libv["n3"].LocalURI(), "list", "--all", "--name"); strings.Contains(out, "prod-web") {
		t.Fatalf("domain still defined after delete:\n%s", out)
	}
}

// checkLibvirtTLS verifies the TLS files corrald lays out for libvirtd and
// QEMU: the node certificate verifies under the CA bundle, for ip, as
// server and client, and its key matches.
func checkLibvirtTLS(dir, ip string) error {
	read := func(rel string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, rel)) }
	bundle, err := read("CA/cacert.pem")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return fmt.Errorf("CA bundle does not parse")
	}
	for _, pair := range [][2]string{
		{"libvirt/servercert.pem", "libvirt/private/serverkey.pem"},
		{"libvirt/clientcert.pem", "libvirt/private/clientkey.pem"},
		{"qemu/server-cert.pem", "qemu/server-key.pem"},
		{"qemu/client-cert.pem", "qemu/client-key.pem"},
	} {
		certPEM, err := read(pair[0])
		if err != nil {
			return err
		}
		keyPEM, err := read(pair[1])
		if err != nil {
			return err
		}
		kp, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("%s: %w", pair[0], err)
		}
		cert, err := x509.ParseCertificate(kp.Certificate[0])
		if err != nil {
			return err
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
			return fmt.Errorf("%s: %w", pair[0], err)
		}
		if err := cert.VerifyHostname(ip); err != nil {
			return fmt.Errorf("%s: %w", pair[0], err)
		}
	}
	return nil
}
