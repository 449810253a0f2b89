package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// clusterCLI runs the corral CLI of a lab's nodes against one cluster.
type clusterCLI struct {
	t       *testing.T
	ctx     context.Context
	cluster string
	nodes   map[string]*testenv.Corrald
}

// cli runs corral --cluster C ARGS on node; the output holds stdout and
// stderr.
func (c clusterCLI) cli(node string, args ...string) (string, error) {
	return c.nodes[node].CLI(c.ctx, append([]string{"--cluster", c.cluster}, args...)...)
}

// must is cli that fails the test on an error.
func (c clusterCLI) must(node string, args ...string) string {
	c.t.Helper()
	out, err := c.cli(node, args...)
	if err != nil {
		c.t.Fatalf("corral %s on %s: %v\n%s", strings.Join(args, " "), node, err, out)
	}
	return out
}

// refused runs a command on node that must fail with a message containing
// want.
func (c clusterCLI) refused(node, want string, args ...string) string {
	c.t.Helper()
	out, err := c.cli(node, args...)
	if err == nil || !strings.Contains(out, want) {
		c.t.Fatalf("corral %s: want an error containing %q, got err=%v\n%s", strings.Join(args, " "), want, err, out)
	}
	return out
}

// waitReady waits until n nodes are ready (libvirt up, inventory in).
func (c clusterCLI) waitReady(from string, n int, d time.Duration) {
	c.t.Helper()
	eventually(c.t, d, "nodes ready", func() (bool, string) {
		out, _ := c.cli(from, "node", "list", "-o", "json")
		return strings.Count(strings.ReplaceAll(out, " ", ""), `"ready":true`) == n, out
	})
}

// startVMNodes starts libvirtd and a corrald on a new lab host per name.
func startVMNodes(t *testing.T, ctx context.Context, lab *testenv.Lab, bins testenv.Binaries, names ...string) (map[string]*testenv.Corrald, map[string]*testenv.Libvirtd) {
	t.Helper()
	nodes := map[string]*testenv.Corrald{}
	libv := map[string]*testenv.Libvirtd{}
	for _, name := range names {
		h, err := lab.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		d, err := h.StartLibvirtd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		libv[name] = d
		if nodes[name], err = h.StartCorrald(ctx, bins, testenv.CorraldOptions{Libvirt: d}); err != nil {
			t.Fatal(err)
		}
	}
	return nodes, libv
}
