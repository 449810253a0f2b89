package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// association starts the association's layout: prod (atlantis, discovery,
// witness houston) and dev (challenger, rosetta, witness houston).
type association struct {
	lab   *testenv.Lab
	nodes map[string]*testenv.Corrald
	libv  map[string]*testenv.Libvirtd
}

func startAssociation(t *testing.T, ctx context.Context, withLibvirt bool) *association {
	t.Helper()
	bins, err := testenv.Build()
	if err != nil {
		t.Fatal(err)
	}
	lab := testenv.New(t, testenv.Options{})
	a := &association{lab: lab, nodes: map[string]*testenv.Corrald{}, libv: map[string]*testenv.Libvirtd{}}
	for _, name := range []string{"atlantis", "discovery", "houston", "challenger", "rosetta"} {
		h, err := lab.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		opts := testenv.CorraldOptions{}
		if withLibvirt && name != "houston" {
			d, err := h.StartLibvirtd(ctx)
			if err != nil {
				t.Fatal(err)
			}
			a.libv[name] = d
			opts.Libvirt = d
		}
		c, err := h.StartCorrald(ctx, bins, opts)
		if err != nil {
			t.Fatal(err)
		}
		a.nodes[name] = c
	}
	n := a.nodes
	if err := testenv.FormCluster(ctx, "prod", []*testenv.Corrald{n["atlantis"], n["discovery"]}, []*testenv.Corrald{n["houston"]}); err != nil {
		t.Fatal(err)
	}
	if err := testenv.FormCluster(ctx, "dev", []*testenv.Corrald{n["challenger"], n["rosetta"]}, []*testenv.Corrald{n["houston"]}); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *association) cli(t *testing.T, ctx context.Context, node string, args ...string) string {
	t.Helper()
	out, err := a.nodes[node].CLI(ctx, args...)
	if err != nil {
		t.Fatalf("corral %s on %s: %v\n%s", strings.Join(args, " "), node, err, out)
	}
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		ok, info := cond()
		if ok {
			return
		}
		last = info
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last: %s", what, d, last)
}

func TestControlPlane(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := startAssociation(t, ctx, false)

	// houston witnesses both groups at once.
	for _, c := range []string{"prod", "dev"} {
		out := a.cli(t, ctx, "houston", "--cluster", c, "cluster", "status", "-o", "json")
		if !strings.Contains(out, `"houston"`) || !strings.Contains(out, "WITNESS") {
			t.Fatalf("%s status on houston lacks the witness:\n%s", c, out)
		}
	}
	out := a.cli(t, ctx, "houston", "cluster", "list")
	if !strings.Contains(out, "prod") || !strings.Contains(out, "dev") {
		t.Fatalf("houston should be in both clusters:\n%s", out)
	}

	// Isolation: a dev member knows nothing of prod.
	if out, err := a.nodes["rosetta"].CLI(ctx, "--cluster", "prod", "node", "list"); err == nil || !strings.Contains(out, "not a member") {
		t.Fatalf("rosetta answered for prod: err=%v\n%s", err, out)
	}

	// A write through a follower is forwarded to the leader and visible.
	leader := func(cluster string) string {
		out := a.cli(t, ctx, "houston", "--cluster", cluster, "cluster", "status", "-o", "json")
		i := strings.Index(out, `"leader":`)
		if i < 0 {
			return ""
		}
		rest := out[i+len(`"leader":`):]
		rest = strings.TrimLeft(rest, ` "`)
		return rest[:strings.IndexAny(rest, `",`)]
	}
	var follower string
	eventually(t, 20*time.Second, "a voter leads prod", func() (bool, string) {
		l := leader("prod")
		return l == "atlantis" || l == "discovery", l
	})
	if leader("prod") == "atlantis" {
		follower = "discovery"
	} else {
		follower = "atlantis"
	}
	a.cli(t, ctx, follower, "--cluster", "prod", "net", "create", "lan10", "--vlan", "10", "--kind", "ovs", "--uplink", "eth0")
	out = a.cli(t, ctx, follower, "--cluster", "prod", "net", "list")
	if !strings.Contains(out, "lan10") {
		t.Fatalf("write through follower not visible there:\n%s", out)
	}
	// A linearizable read through the witness (a follower): read index
	// from the leader, then the local state.
	if out := a.cli(t, ctx, "houston", "--cluster", "prod", "--consistent", "net", "list"); !strings.Contains(out, "lan10") {
		t.Fatalf("consistent read on houston lacks lan10:\n%s", out)
	}
	// Bad input: a clear error and exit code != 0.
	if out, err := a.nodes[follower].CLI(ctx, "--cluster", "prod", "net", "create", "Bad_Name", "--vlan", "5000"); err == nil {
		t.Fatalf("bad network accepted:\n%s", out)
	}
	if out, err := a.nodes[follower].CLI(ctx, "--cluster", "prod", "net", "create", "lan10b", "--vlan", "10", "--kind", "ovs", "--uplink", "eth0"); err == nil || !strings.Contains(out, "VLAN 10") {
		t.Fatalf("duplicate VLAN accepted or unclear: %v\n%s", err, out)
	}

	// Admins over mutual TLS from another host: a prod admin certificate
	// works against any prod node; a dev certificate is refused by prod.
	admin, err := a.lab.AddHost("admin")
	if err != nil {
		t.Fatal(err)
	}
	bins0, _ := testenv.Build()
	cfg := filepath.Join(a.lab.Dir, "corral-config.yaml")
	for _, c := range []struct{ cluster, node string }{{"prod", "atlantis"}, {"dev", "challenger"}} {
		out, err := a.nodes[c.node].Host.Run(ctx, "env", "CORRAL_CONFIG="+cfg, bins0.Corral, "--socket", a.nodes[c.node].Socket,
			"--cluster", c.cluster, "admin", "issue-cert", "alice-"+c.cluster, "--out-dir", filepath.Join(a.lab.Dir, "certs-"+c.cluster),
			"--context-name", c.cluster)
		if err != nil {
			t.Fatalf("issue-cert %s: %v\n%s", c.cluster, err, out)
		}
	}
	viaTLS := func(context, cluster, endpoint string, args ...string) (string, error) {
		full := append([]string{"CORRAL_CONFIG=" + cfg, bins0.Corral, "--context", context, "--cluster", cluster, "--endpoint", endpoint, "--timeout", "10s"}, args...)
		return admin.Run(ctx, "env", full...)
	}
	if out, err := viaTLS("prod", "prod", a.nodes[follower].APIAddr, "node", "list"); err != nil || !strings.Contains(out, "houston") {
		t.Fatalf("prod admin over mTLS: %v\n%s", err, out)
	}
	if out, err := viaTLS("dev", "prod", a.nodes["atlantis"].APIAddr, "node", "list"); err == nil {
		t.Fatalf("dev certificate accepted by prod:\n%s", out)
	} else {
		t.Logf("dev certificate against prod refused: %s", strings.TrimSpace(out))
	}

	// A used token is refused.
	tok := strings.TrimSpace(a.cli(t, ctx, "atlantis", "--cluster", "prod", "cluster", "token"))
	h, err := a.lab.AddHost("extra")
	if err != nil {
		t.Fatal(err)
	}
	bins, _ := testenv.Build()
	extra, err := h.StartCorrald(ctx, bins, testenv.CorraldOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := extra.CLI(ctx, "cluster", "join", "prod", "--token", tok, "--peer", a.nodes["atlantis"].APIAddr, "--witness"); err != nil {
		t.Fatalf("join with fresh token: %v\n%s", err, out)
	}
	h2, _ := a.lab.AddHost("extra2")
	extra2, err := h2.StartCorrald(ctx, bins, testenv.CorraldOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := extra2.CLI(ctx, "cluster", "join", "prod", "--token", tok, "--peer", a.nodes["atlantis"].APIAddr); err == nil || !strings.Contains(out, "already used") {
		t.Fatalf("reused token: err=%v\n%s", err, out)
	}

	// Kill the prod leader: a new leader within seconds, writes continue,
	// and the killed node rejoins from its data directory by itself.
	old := leader("prod")
	if err := a.nodes[old].Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	other := "atlantis"
	if old == "atlantis" {
		other = "discovery"
	}
	eventually(t, 20*time.Second, "a write after the leader died", func() (bool, string) {
		out, err := a.nodes[other].CLI(ctx, "--timeout", "3s", "--cluster", "prod", "net", "create", "after-kill", "--vlan", "30", "--kind", "ovs", "--uplink", "eth0")
		return err == nil || strings.Contains(out, "already exists"), out
	})
	t.Logf("prod accepted writes again %s after SIGKILL of leader %s", time.Since(start).Round(time.Millisecond), old)
	if err := a.nodes[old].Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "restarted node catches up", func() (bool, string) {
		out, err := a.nodes[old].CLI(ctx, "--cluster", "prod", "net", "list")
		return err == nil && strings.Contains(out, "after-kill") && strings.Contains(out, "lan10"), out
	})

	// Without quorum a write fails with Unavailable, after a deadline.
	if err := a.nodes["challenger"].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := a.nodes["houston"].Kill(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	out, err = a.nodes["rosetta"].CLI(ctx, "--timeout", "10s", "--cluster", "dev", "net", "create", "noquorum", "--vlan", "40", "--kind", "ovs", "--uplink", "eth0")
	if err == nil || !(strings.Contains(strings.ToLower(out), "unavailable") || strings.Contains(out, "no leader") || strings.Contains(out, "quorum") || strings.Contains(out, "unreachable")) {
		t.Fatalf("write without quorum: err=%v\n%s", err, out)
	}
	t.Logf("write without quorum refused after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}
