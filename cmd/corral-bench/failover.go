package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minet/corral/client"

	"github.com/minet/corral/internal/testenv"
	pb "github.com/minet/corral/proto/corral/v1"
)

// benchFailover crashes the node of an HA guest on Ceph (corrald and
// libvirtd with its QEMU SIGKILLed: the host died) and times the crash to
// the restarted guest's ready line, read through `vm console` on a
// surviving node. The crashed node is restarted between runs and must come
// back unfenced before the next crash.
func benchFailover(ctx context.Context, b *bench) ([]figure, error) {
	return withLab(ctx, func(lab *testenv.Lab) ([]figure, error) {
		ceph, err := lab.StartCeph(ctx, 1)
		if err != nil {
			return nil, err
		}
		key, err := ceph.CreateClient(ctx, "corral")
		if err != nil {
			return nil, err
		}
		cl, err := startCluster(ctx, b, lab, "prod", []string{"n1", "n2", "n3"}, true)
		if err != nil {
			return nil, err
		}
		kernel, initrd, err := buildGuest(lab)
		if err != nil {
			return nil, err
		}
		n1 := cl.nodes[0]
		if err := cl.waitNodesReady(ctx, n1, 2*time.Minute, "n1", "n2", "n3"); err != nil {
			return nil, err
		}
		steps := [][]string{
			{"storage", "add", "ceph", "--kind", "rbd", "--monitors", ceph.MonAddr, "--ceph-pool", "rbd", "--user", "corral", "--key", key},
			{"volume", "create", "ceph/vol", "--size", "64M"},
			append([]string{"vm", "create", "ha", "--ha", "restart", "--disk", "ceph/vol", "--node", "n1"}, guestArgs(kernel, initrd, guestMemory)...),
		}
		var start time.Time // of the last step, vm create
		for _, s := range steps {
			start = time.Now()
			if out, err := cl.cli(ctx, n1, s...); err != nil {
				return nil, fmt.Errorf("%w: %s", err, out)
			}
		}
		out, err := cl.console(ctx, n1, "ha", readyMarker, 120*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}
		firstBoot := time.Since(start)
		bootID, firstUptime, ok := parseBoot(out)
		if !ok {
			return nil, fmt.Errorf("no boot line in the console of ha: %.500s", out)
		}
		seen := map[string]bool{bootID: true}

		var readies, uptimes []time.Duration
		timeline := map[string][]time.Duration{}
		staleMax := 0
		var leaderRuns []string // runs whose crashed node led the cluster
		var rebootedVictims []string
		result := func() []figure {
			boot := fmt.Sprintf("create to ready of the same guest here: %s (guest's own %s)", secs(firstBoot), secs(firstUptime))
			if b.guestBoot > 0 {
				boot += fmt.Sprintf("; vm section median %s", secs(b.guestBoot))
			}
			figs := []figure{{"guest boot reference", secs(firstBoot), boot}}
			if len(readies) == 0 {
				return figs
			}
			m := median(readies)
			figs = append(figs,
				figure{"crash to ready", secs(m), fmt.Sprintf("median of %d: %s; SIGKILL corrald+libvirtd+QEMU of the VM's node to a new boot's ready line on another node; target <= %s: %s",
					len(readies), list(readies), secs(failoverTarget), metOrNot(m <= failoverTarget))},
				figure{"guest's own boot", secs(median(uptimes)), fmt.Sprintf("median guest /proc/uptime at its ready line after restart: %s", list(uptimes))})
			if len(leaderRuns) > 0 {
				figs = append(figs, figure{"leader crashed", fmt.Sprintf("%d of %d", len(leaderRuns), len(readies)),
					"runs " + strings.Join(leaderRuns, ", ") + " crashed the Raft leader too: an election precedes detection"})
			}
			figs = append(figs, figure{"boots on restarted node", strconv.Itoa(len(rebootedVictims)),
				"runs where the crashed node, back and unfenced, ran the guest too (virsh list; must be 0) " + strings.Join(rebootedVictims, "; ")})
			if staleMax > 0 {
				figs = append(figs, figure{"stale boots replayed", strconv.Itoa(staleMax), "most earlier instances' boot lines in one console replay: an attach before the new node truncated the log for its boot replays the old one (boot ids tell them apart)"})
			}
			for _, p := range phases {
				if ds := timeline[p.key]; len(ds) > 0 {
					figs = append(figs, figure{"  crash to " + p.key, secs(median(ds)), fmt.Sprintf("median of %d: %s; %s", len(ds), list(ds), p.what)})
				}
			}
			return figs
		}

		for i := 1; i <= b.runsOr(defaultFailoverRuns); i++ {
			v, err := cl.vm(ctx, n1, "ha")
			if err != nil {
				return result(), err
			}
			victim := cl.node(v.GetNode())
			if victim == nil {
				return result(), fmt.Errorf("vm ha is on unknown node %q", v.GetNode())
			}
			var watcher *node
			for _, n := range cl.nodes {
				if n != victim {
					watcher = n
					break
				}
			}
			var status pb.ClusterStatusResponse
			if err := cl.cliJSON(ctx, watcher, &status, "cluster", "status"); err != nil {
				return result(), err
			}
			if status.GetLeader() == victim.name {
				leaderRuns = append(leaderRuns, strconv.Itoa(i))
			}
			b.log.Info("failover: crash", "run", i, "node", victim.name, "leader", status.GetLeader(), "watch_from", watcher.name)
			crash := time.Now()
			if err := errors.Join(victim.corrald.Kill(), victim.libvirt.Kill()); err != nil {
				return result(), fmt.Errorf("crash %s: %w", victim.name, err)
			}
			newNode, newID, up, stale, err := waitNewBoot(ctx, cl, watcher, victim.name, "ha", seen)
			if err != nil {
				return result(), err
			}
			ready := time.Since(crash)
			readies, uptimes = append(readies, ready), append(uptimes, up)
			seen[newID] = true
			staleMax = max(staleMax, stale)
			b.log.Info("failover: ready", "run", i, "from", victim.name, "to", newNode, "ready", ready, "stale_boots_in_replay", stale)
			var evs pb.ListEventsResponse
			if err := cl.cliJSON(ctx, watcher, &evs, "event", "list", "--limit", "500"); err != nil {
				return result(), err
			}
			for k, d := range failoverTimeline(evs.GetEvents(), crash, victim.name, "ha") {
				timeline[k] = append(timeline[k], d)
			}

			// Bring the crashed node back; it must destroy nothing (its
			// QEMU is dead), report clean and be unfenced, and never boot
			// the guest that now runs elsewhere.
			if err := victim.libvirt.Restart(ctx); err != nil {
				return result(), err
			}
			if err := victim.corrald.Start(ctx); err != nil {
				return result(), err
			}
			if err := cl.waitNodesReady(ctx, watcher, 3*time.Minute, victim.name); err != nil {
				return result(), err
			}
			running, err := victim.host.Run(ctx, "virsh", "-c", victim.libvirt.LocalURI(), "list", "--name")
			if err != nil {
				return result(), fmt.Errorf("list domains on %s: %w", victim.name, err)
			}
			if strings.Contains(running, "prod-ha") {
				rebootedVictims = append(rebootedVictims, fmt.Sprintf("run %d on %s", i, victim.name))
				b.log.Warn("failover: the restarted node runs the guest again", "run", i, "node", victim.name)
			}
			// An admin start acknowledges the restarts, so that
			// max_restarts (3 in 10 min by default) does not end the runs.
			if out, err := cl.cli(ctx, watcher, "vm", "start", "ha"); err != nil {
				return result(), fmt.Errorf("%w: %s", err, out)
			}
		}
		return result(), nil
	})
}

// phases of a failover, as the cluster's event log records them (times are
// the proposing leader's clock, the same clock as the crash here).
var phases = []struct{ key, what string }{
	{"suspect", "event node.health suspect of the crashed node (default suspect_after 3 s of heartbeat silence)"},
	{"down", "event node.health down (default down_after 5 s)"},
	{"fenced", "event ha.fence: Ceph blocklist entry written"},
	{"restart", "event ha.restart: new placement committed"},
	{"running", "event vm.state running reported by the new node's agent (guest boot follows)"},
}

// failoverTimeline returns, per phase, the time from crash to the first
// matching event after it.
func failoverTimeline(events []*pb.Event, crash time.Time, node, vm string) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, e := range events {
		t := time.Unix(0, e.GetTimeUnixNano())
		if t.Before(crash) {
			continue
		}
		var key string
		switch {
		case e.GetAction() == "node.health" && e.GetTarget() == node && (e.GetResult() == "suspect" || e.GetResult() == "down"):
			key = e.GetResult()
		case e.GetAction() == "ha.fence" && e.GetTarget() == node:
			key = "fenced"
		case e.GetAction() == "ha.restart" && e.GetTarget() == vm:
			key = "restart"
		case e.GetAction() == "vm.state" && e.GetTarget() == vm && e.GetResult() == "running":
			key = "running"
		default:
			continue
		}
		if d, seen := out[key]; !seen || t.Sub(crash) < d {
			out[key] = t.Sub(crash)
		}
	}
	return out
}

// waitNewBoot waits, through the API on watcher's local socket, until vm is
// placed off the crashed node and its console shows a boot line whose boot
// id is not in seen. It reads the console with the Go client and checks
// boot ids rather than `corral vm console --until`: an attach that comes
// before the new node truncated the log for the new boot replays the
// earlier instance's ready line, which --until would match at once.
func waitNewBoot(ctx context.Context, cl *cluster, watcher *node, crashed, vm string, seen map[string]bool) (newNode, bootID string, uptime time.Duration, stale int, err error) {
	c, err := client.Dial(ctx, client.Options{Socket: watcher.corrald.Socket, Timeout: 5 * time.Second})
	if err != nil {
		return "", "", 0, 0, fmt.Errorf("dial corrald on %s: %w", watcher.name, err)
	}
	defer c.Close()
	err = poll(ctx, 2*time.Minute, 50*time.Millisecond, func() (bool, error) {
		resp, err := c.VMs.GetVM(ctx, &pb.GetVMRequest{Cluster: cl.name, Name: vm})
		if err != nil {
			return false, nil
		}
		newNode = resp.GetVm().GetNode()
		return newNode != crashed && newNode != "", nil
	}, func() string { return "vm " + vm + " re-placed off " + crashed })
	if err != nil {
		return "", "", 0, 0, err
	}
	err = poll(ctx, 2*time.Minute, 100*time.Millisecond, func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		w := &bootWatcher{seen: seen, found: cancel}
		in, inW := io.Pipe()
		defer inW.Close()
		_ = c.Console(cctx, cl.name, vm, in, w, 0, client.WithReplay(true))
		bootID, uptime, stale = w.result()
		return bootID != "", nil
	}, func() string { return "a new boot of " + vm + " on " + newNode })
	return newNode, bootID, uptime, stale, err
}

// bootWatcher scans console output for a boot line with an unseen boot id.
type bootWatcher struct {
	seen  map[string]bool
	found func()

	mu     sync.Mutex
	buf    []byte
	id     string
	uptime time.Duration
	stale  map[string]bool // earlier boots found in the replay
}

func (w *bootWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.id != "" {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for _, m := range bootLine.FindAllSubmatch(w.buf, -1) {
		id := string(m[1])
		if w.seen[id] {
			if w.stale == nil {
				w.stale = map[string]bool{}
			}
			w.stale[id] = true
			continue
		}
		f, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			continue
		}
		w.id, w.uptime = id, time.Duration(f*float64(time.Second))
		w.found()
		break
	}
	// Keep only a tail that may hold a partial line.
	if len(w.buf) > 4096 {
		w.buf = append([]byte(nil), w.buf[len(w.buf)-256:]...)
	}
	return len(p), nil
}

func (w *bootWatcher) result() (string, time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.id, w.uptime, len(w.stale)
}
