// Command corral-lab starts the association's layout as a real local lab
// (network namespaces, one corrald and libvirtd per host) with the shared
// harness, creates demo VMs, and keeps it running until SIGTERM. It backs
// `make demo`; scripts/demo.sh starts and stops it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/minet/corral/internal/testenv"
)

func main() {
	state := flag.String("state", ".lab", "directory for the CLI wrappers and the ready marker")
	flag.Parse()
	if err := run(*state); err != nil {
		fmt.Fprintln(os.Stderr, "corral-lab:", err)
		os.Exit(1)
	}
}

func run(stateDir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	abs, _ := filepath.Abs(stateDir)
	bins, err := testenv.Build()
	defer testenv.RemoveBuild() // after the lab's Close (defers run last-in first-out)
	if err != nil {
		return err
	}
	lab, err := testenv.Start(ctx, testenv.Options{})
	if err != nil {
		return err
	}
	defer lab.Close()
	setup, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	kernel, initrd, err := testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{})
	if err != nil {
		return err
	}
	nodes := map[string]*testenv.Corrald{}
	for _, name := range []string{"atlantis", "discovery", "houston", "challenger", "rosetta"} {
		h, err := lab.AddHost(name)
		if err != nil {
			return err
		}
		opts := testenv.CorraldOptions{}
		if name != "houston" {
			// A trunk link to the lab's switch and Open vSwitch: the
			// clusters' VLANs ride on trunk0 as on the association's
			// switches.
			if _, err := lab.AddTrunk(h); err != nil {
				return err
			}
			o, err := h.StartOVS(setup)
			if err != nil {
				return err
			}
			d, err := h.StartLibvirtd(setup)
			if err != nil {
				return err
			}
			opts.Libvirt, opts.OVS = d, o
		}
		c, err := h.StartCorrald(setup, bins, opts)
		if err != nil {
			return err
		}
		nodes[name] = c
		fmt.Printf("host %-10s %s  corrald socket %s\n", name, h.IP, c.Socket)
	}
	if err := testenv.FormCluster(setup, "prod", []*testenv.Corrald{nodes["atlantis"], nodes["discovery"]}, []*testenv.Corrald{nodes["houston"]}); err != nil {
		return err
	}
	if err := testenv.FormCluster(setup, "dev", []*testenv.Corrald{nodes["challenger"], nodes["rosetta"]}, []*testenv.Corrald{nodes["houston"]}); err != nil {
		return err
	}
	// CLI wrappers: root on a node talks to its local socket.
	for file, node := range map[string]string{"corral-prod": "atlantis", "corral-dev": "challenger", "corral-houston": "houston"} {
		c := nodes[node]
		script := fmt.Sprintf("#!/bin/sh\n# corral as root on %s (local admin socket)\nexec ip netns exec %s %s --socket %s \"$@\"\n", node, c.Host.NS, bins.Corral, c.Socket)
		if err := os.WriteFile(filepath.Join(abs, file), []byte(script), 0o755); err != nil {
			return err
		}
	}
	// One VLAN per cluster, declared once for the cluster.
	for _, n := range []struct{ node, cluster, name, vlan string }{
		{"atlantis", "prod", "prod-lan", "10"}, {"challenger", "dev", "dev-lan", "20"},
	} {
		if out, err := nodes[n.node].CLI(setup, "--cluster", n.cluster, "net", "create", n.name, "--vlan", n.vlan, "--kind", "ovs", "--uplink", "trunk0"); err != nil {
			return fmt.Errorf("net create %s: %v: %s", n.name, err, out)
		}
	}
	for _, vm := range []struct{ node, cluster, name, net, ip string }{
		{"atlantis", "prod", "web", "prod-lan", "10.10.0.1/24"}, {"atlantis", "prod", "db", "prod-lan", "10.10.0.2/24"},
		{"challenger", "dev", "test1", "dev-lan", "10.20.0.1/24"},
	} {
		guestArgs := []string{"--vcpus", "1", "--memory", "192", "--kernel", kernel, "--initrd", initrd,
			"--net", vm.net, "--cmdline", "console=ttyS0 quiet corral.ip=" + vm.ip}
		// Wait until the cluster has a ready voter.
		deadline := time.Now().Add(90 * time.Second)
		for {
			out, err := nodes[vm.node].CLI(setup, append([]string{"--cluster", vm.cluster, "vm", "create", vm.name}, guestArgs...)...)
			if err == nil {
				fmt.Print(out)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("create %s/%s: %v: %s", vm.cluster, vm.name, err, out)
			}
			time.Sleep(2 * time.Second)
		}
	}
	for _, c := range []string{"prod", "dev"} {
		node := map[string]string{"prod": "atlantis", "dev": "challenger"}[c]
		for _, args := range [][]string{{"cluster", "status"}, {"net", "list"}, {"vm", "list"}} {
			out, _ := nodes[node].CLI(setup, append([]string{"--cluster", c}, args...)...)
			fmt.Printf("\n$ corral --cluster %s %s\n%s", c, args[0]+" "+args[1], out)
		}
	}
	if err := os.WriteFile(filepath.Join(abs, "ready"), []byte(lab.Dir+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("\ncorral-lab: ready; lab directory", lab.Dir)
	<-ctx.Done()
	fmt.Println("corral-lab: stopping")
	os.Remove(filepath.Join(abs, "ready"))
	return nil
}
