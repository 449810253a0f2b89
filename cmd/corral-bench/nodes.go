package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/minet/corral/internal/testenv"
	pb "github.com/minet/corral/proto/corral/v1"
)

// node is one lab host with its daemons.
type node struct {
	name    string
	host    *testenv.Host
	libvirt *testenv.Libvirtd // nil for --no-agent
	corrald *testenv.Corrald
}

// cluster is a set of nodes forming one corral cluster.
type cluster struct {
	name  string
	nodes []*node
}

// startCluster adds the hosts, starts libvirtd on each when withLibvirt,
// corrald with extra args, and forms the cluster with all as voters.
func startCluster(ctx context.Context, b *bench, lab *testenv.Lab, name string, hosts []string, withLibvirt bool, args ...string) (*cluster, error) {
	c := &cluster{name: name}
	for _, h := range hosts {
		host, err := lab.AddHost(h)
		if err != nil {
			return nil, err
		}
		n := &node{name: h, host: host}
		opts := testenv.CorraldOptions{Args: args}
		if withLibvirt {
			if n.libvirt, err = host.StartLibvirtd(ctx); err != nil {
				return nil, err
			}
			opts.Libvirt = n.libvirt
		}
		if n.corrald, err = host.StartCorrald(ctx, b.bins, opts); err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	members := make([]*testenv.Corrald, len(c.nodes))
	for i, n := range c.nodes {
		members[i] = n.corrald
	}
	if err := testenv.FormCluster(ctx, name, members, nil); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *cluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// cli runs the corral CLI on n over its local socket against the cluster.
func (c *cluster) cli(ctx context.Context, n *node, args ...string) (string, error) {
	out, err := n.corrald.CLI(ctx, append([]string{"--cluster", c.name}, args...)...)
	if err != nil {
		return out, fmt.Errorf("corral %s on %s: %w", strings.Join(args, " "), n.name, err)
	}
	return out, nil
}

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

// cliJSON runs a CLI command with -o json and decodes its answer into m.
func (c *cluster) cliJSON(ctx context.Context, n *node, m proto.Message, args ...string) error {
	out, err := c.cli(ctx, n, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := unmarshal.Unmarshal([]byte(out), m); err != nil {
		return fmt.Errorf("decode answer of corral %s: %w: %.300s", strings.Join(args, " "), err, out)
	}
	return nil
}

// nodes lists the cluster's nodes as seen from n.
func (c *cluster) listNodes(ctx context.Context, n *node) ([]*pb.Node, error) {
	var resp pb.ListNodesResponse
	if err := c.cliJSON(ctx, n, &resp, "node", "list"); err != nil {
		return nil, err
	}
	return resp.GetNodes(), nil
}

// vm fetches a VM as seen from n.
func (c *cluster) vm(ctx context.Context, n *node, name string) (*pb.VM, error) {
	var v pb.VM
	if err := c.cliJSON(ctx, n, &v, "vm", "show", name); err != nil {
		return nil, err
	}
	return &v, nil
}

// waitNodesReady waits until every name is ready, healthy and unfenced, as
// seen from n.
func (c *cluster) waitNodesReady(ctx context.Context, n *node, timeout time.Duration, names ...string) error {
	var last string
	return poll(ctx, timeout, 300*time.Millisecond, func() (bool, error) {
		nodes, err := c.listNodes(ctx, n)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ok := map[string]bool{}
		var states []string
		for _, x := range nodes {
			ok[x.Name] = x.Ready && !x.Fenced && x.Health == pb.NodeHealth_NODE_HEALTH_READY
			states = append(states, fmt.Sprintf("%s ready=%v fenced=%v %s", x.Name, x.Ready, x.Fenced, x.Health))
		}
		last = strings.Join(states, "; ")
		for _, name := range names {
			if !ok[name] {
				return false, nil
			}
		}
		return true, nil
	}, func() string { return "nodes " + strings.Join(names, ",") + " ready: " + last })
}

// poll calls check every interval until it returns true or an error, or
// timeout or ctx ends; what describes the wait for the error.
func poll(ctx context.Context, timeout, interval time.Duration, check func() (bool, error), what func() string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
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
			return fmt.Errorf("waiting for %s: %w", what(), ctx.Err())
		case <-time.After(interval):
		}
	}
}

// guestScript runs in the guest right after its GUEST-READY line: one line
// with the boot id (a new one on every boot: it tells a restarted guest
// from the one before) and the guest's own uptime at that point (kernel
// start to init, without QEMU's own start-up), then the default counter.
const guestScript = `echo "BENCH boot=$(cat /proc/sys/kernel/random/boot_id) uptime=$(cut -d' ' -f1 /proc/uptime) BENCH-READY"
` + testenv.DefaultInitScript

const readyMarker = "BENCH-READY"

var bootLine = regexp.MustCompile(`BENCH boot=([0-9a-f-]{36}) uptime=([0-9.]+) BENCH-READY`)

// parseBoot finds the guest's boot line in console output.
func parseBoot(out string) (bootID string, uptime time.Duration, ok bool) {
	m := bootLine.FindStringSubmatch(out)
	if m == nil {
		return "", 0, false
	}
	f, err := strconv.ParseFloat(m[2], 64)
	if err != nil {
		return "", 0, false
	}
	return m[1], time.Duration(f * float64(time.Second)), true
}

// buildGuest builds the bench guest in the lab directory.
func buildGuest(lab *testenv.Lab) (kernel, initrd string, err error) {
	return testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{InitScript: guestScript})
}

// guestArgs are the vm create flags of a kernel-boot guest.
func guestArgs(kernel, initrd, memory string) []string {
	return []string{"--vcpus", "1", "--memory", memory, "--kernel", kernel, "--initrd", initrd, "--cmdline", guestCmdline}
}

// console waits on n until the VM's console (replayed from boot) shows
// until, for at most d, and returns the output.
func (c *cluster) console(ctx context.Context, n *node, vm, until string, d time.Duration) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, d+15*time.Second)
	defer cancel()
	return c.cli(cctx, n, "vm", "console", vm, "--until", until, "--for", d.String())
}
