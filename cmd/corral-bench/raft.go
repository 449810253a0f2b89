package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minet/corral/client"
	"github.com/minet/corral/internal/testenv"
	pb "github.com/minet/corral/proto/corral/v1"
)

// benchRaft measures committed writes (UpdateSettings: one SETTINGS Raft
// command each) through the leader's mTLS API from a client host, then the
// fsync floor of the lab's filesystem.
func benchRaft(ctx context.Context, b *bench) ([]figure, error) {
	return withLab(ctx, func(lab *testenv.Lab) ([]figure, error) {
		var figs []figure
		cl, err := startCluster(ctx, b, lab, "bench", []string{"n1", "n2", "n3"}, false)
		if err != nil {
			return nil, err
		}
		clientHost, err := lab.AddHost("client")
		if err != nil {
			return nil, err
		}
		credDir := filepath.Join(lab.Dir, "admin")
		if out, err := cl.cli(ctx, cl.nodes[0], "admin", "issue-cert", "bench", "--out-dir", credDir); err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}
		opts := client.Options{Cluster: cl.name, Timeout: 10 * time.Second}
		for name, dst := range map[string]*[]byte{"ca.crt": &opts.CACert, "admin.crt": &opts.Cert, "admin.key": &opts.Key} {
			if *dst, err = os.ReadFile(filepath.Join(credDir, name)); err != nil {
				return nil, fmt.Errorf("read admin credentials: %w", err)
			}
		}
		// Every byte to 10.77.x leaves from the client host's namespace.
		dialer := client.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return clientHost.DialContext(ctx, "tcp", addr)
		})
		leaderAddr, leader, err := findLeader(ctx, cl, opts, dialer)
		if err != nil {
			return nil, err
		}
		opts.Endpoints = []string{leaderAddr}
		b.log.Info("raft: leader found", "node", leader, "addr", leaderAddr)

		one, err := client.Dial(ctx, opts, dialer)
		if err != nil {
			return nil, fmt.Errorf("dial leader %s over mTLS: %w", leaderAddr, err)
		}
		defer one.Close()
		// Warm-up: connections, TLS session, Raft pipelines.
		var seq atomic.Int64
		for range 200 {
			if err := write(ctx, one, cl.name, seq.Add(1)); err != nil {
				return nil, fmt.Errorf("warm-up write: %w", err)
			}
		}

		lat := make([]time.Duration, 0, raftSerialWrites)
		for range raftSerialWrites {
			t := time.Now()
			if err := write(ctx, one, cl.name, seq.Add(1)); err != nil {
				return figs, fmt.Errorf("1-client write: %w", err)
			}
			lat = append(lat, time.Since(t))
		}
		p50, p99 := percentile(lat, 50), percentile(lat, 99)
		figs = append(figs,
			figure{"1 client p50", ms(p50), fmt.Sprintf("%d sequential UpdateSettings, mTLS from netns host to leader %s, commit on 3 voters", raftSerialWrites, leader)},
			figure{"1 client p99", ms(p99), fmt.Sprintf("same; target <= %s: %s", ms(raftTargetP99), metOrNot(p99 <= raftTargetP99))})

		// The leader's own histograms split a write's time: API handler,
		// Raft commit (propose to apply result), entries per FSM batch.
		metricsAddr := net.JoinHostPort(cl.node(leader).host.IP.String(), "9443")
		apiSum, apiCount, commitSum, commitCount, batches := raftSeries(cl.name)
		series := []string{apiSum, apiCount, commitSum, commitCount, batches}
		before, scrapeErr := scrape(ctx, clientHost.DialContext, metricsAddr, series...)

		pids := map[string]int{}
		for _, n := range cl.nodes {
			if p := n.corrald.Process(); p != nil {
				pids[n.name] = p.PID()
			}
		}
		meter := startCPU(pids)
		profDone := make(chan error, 1)
		if b.leaderProfile != "" {
			go func() {
				profDone <- fetchProfile(ctx, clientHost.DialContext, metricsAddr, raftLoadDuration/2, b.leaderProfile)
			}()
		} else {
			profDone <- nil
		}
		rate, errs, err := concurrentWrites(ctx, opts, dialer, cl.name, &seq, raftClients)
		if perr := <-profDone; perr != nil {
			b.log.Warn("leader CPU profile", "err", perr)
		}
		if err != nil {
			return figs, err
		}
		figs = append(figs, cpuFigures(meter, leader, rate*raftLoadDuration.Seconds())...)
		figs = append(figs, figure{fmt.Sprintf("%d clients", raftClients), fmt.Sprintf("%.0f writes/s", rate),
			fmt.Sprintf("%d connections each looping UpdateSettings for %s (%d errors); target >= %d/s: %s",
				raftClients, raftLoadDuration, errs, raftTargetWrites, metOrNot(rate >= raftTargetWrites && errs == 0))})
		after, err := scrape(ctx, clientHost.DialContext, metricsAddr, series...)
		if err = errors.Join(scrapeErr, err); err != nil {
			figs = append(figs, figure{"leader split", "-", "metrics unavailable: " + err.Error()})
		} else {
			d := func(k string) float64 { return after[k] - before[k] }
			mean := func(sum, count string) time.Duration {
				if d(count) == 0 {
					return 0
				}
				return time.Duration(d(sum) / d(count) * float64(time.Second))
			}
			perBatch := 0.0
			if d(batches) > 0 {
				perBatch = d(commitCount) / d(batches)
			}
			figs = append(figs, figure{"leader split", fmt.Sprintf("%s / %s", ms(mean(apiSum, apiCount)), ms(mean(commitSum, commitCount))),
				fmt.Sprintf("leader metrics during the %d-client run: mean API handler / mean Raft commit (propose to apply); %.1f entries per FSM batch",
					raftClients, perBatch)})
		}

		// The same 64 callers multiplexed on one connection, as the
		// callers of one program share a client: gRPC batches their frames
		// into fewer TLS records and syscalls.
		meter = startCPU(pids)
		rate1, errs1, err := concurrentWrites(ctx, opts, dialer, cl.name, &seq, 1)
		if err != nil {
			return figs, err
		}
		shared := cpuFigures(meter, leader, rate1*raftLoadDuration.Seconds())
		cpuNote := ""
		if len(shared) > 0 {
			cpuNote = "; cpu per write (leader / followers / clients) " + shared[0].Value
		}
		figs = append(figs, figure{fmt.Sprintf("%d callers, 1 conn", raftClients), fmt.Sprintf("%.0f writes/s", rate1),
			fmt.Sprintf("the same load over one shared connection (%d errors)%s", errs1, cpuNote)})

		fsRate, fs50, fs99, err := fsyncFloor(filepath.Join(lab.Dir, "fsync-floor"))
		if err != nil {
			return figs, err
		}
		figs = append(figs,
			figure{"fsync floor", fmt.Sprintf("%.0f syncs/s", fsRate), fmt.Sprintf("4 KiB append + fsync loop for %s in the lab dir (same filesystem as the Raft logs), cluster idle", fsyncDuration)},
			figure{"fsync p50/p99", ms(fs50) + " / " + ms(fs99), "latency of each 4 KiB write + fsync"},
			figure{"ratio", fmt.Sprintf("%.1f writes per fsync", rate/fsRate), fmt.Sprintf("%d-client writes/s over syncs/s (>1: batching; every commit needs a leader fsync and one follower fsync)", raftClients)},
			figure{"ratio p99", fmt.Sprintf("%.1f x fsync p99", float64(p99)/float64(fs99)), "1-client commit p99 over fsync p99"})
		return figs, nil
	})
}

// findLeader asks any member for the cluster status and returns the
// leader's API address.
func findLeader(ctx context.Context, cl *cluster, opts client.Options, dialer client.Option) (addr, name string, err error) {
	for _, n := range cl.nodes {
		opts.Endpoints = append(opts.Endpoints, n.corrald.APIAddr)
	}
	c, err := client.Dial(ctx, opts, dialer)
	if err != nil {
		return "", "", fmt.Errorf("dial cluster %s over mTLS: %w", cl.name, err)
	}
	defer c.Close()
	err = poll(ctx, 30*time.Second, 200*time.Millisecond, func() (bool, error) {
		st, err := c.Cluster.ClusterStatus(ctx, &pb.ClusterStatusRequest{Cluster: cl.name})
		if err != nil {
			return false, nil
		}
		for _, m := range st.GetMembers() {
			if m.GetName() == st.GetLeader() && m.GetApiAddress() != "" {
				addr, name = m.GetApiAddress(), m.GetName()
				return true, nil
			}
		}
		return false, nil
	}, func() string { return "a leader of " + cl.name })
	return addr, name, err
}

// write commits one SETTINGS command with a value that changes each time.
func write(ctx context.Context, c *client.Client, cluster string, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.Cluster.UpdateSettings(ctx, &pb.UpdateSettingsRequest{Cluster: cluster,
		Settings: &pb.Settings{RestartWindowMs: 10*60*1000 + n%1000}})
	return err
}

// concurrentWrites runs raftClients callers over conns connections (each
// its own when conns is raftClients) for raftLoadDuration and returns the
// committed writes per second.
func concurrentWrites(ctx context.Context, opts client.Options, dialer client.Option, cluster string, seq *atomic.Int64, conns int) (rate float64, errs int64, err error) {
	clients := make([]*client.Client, 0, conns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range conns {
		c, err := client.Dial(ctx, opts, dialer)
		if err != nil {
			return 0, 0, fmt.Errorf("dial client %d: %w", len(clients), err)
		}
		clients = append(clients, c)
	}
	var ok, failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(raftLoadDuration)
	for i := range raftClients {
		c := clients[i%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := write(ctx, c, cluster, seq.Add(1)); err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ok.Load() == 0 {
		return 0, failed.Load(), fmt.Errorf("no write committed: %w", errors.Join(firstErr, ctx.Err()))
	}
	return float64(ok.Load()) / elapsed.Seconds(), failed.Load(), nil
}

// fsyncFloor appends 4 KiB blocks to a file in dir, each followed by
// fsync, for fsyncDuration: the most commits per second one disk-bound log
// can reach without batching.
func fsyncFloor(dir string) (rate float64, p50, p99 time.Duration, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, 0, fmt.Errorf("fsync floor: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("fsync floor: %w", err)
	}
	defer os.RemoveAll(dir)
	defer f.Close()
	block := make([]byte, fsyncBlock)
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < fsyncDuration {
		t := time.Now()
		if _, err := f.Write(block); err != nil {
			return 0, 0, 0, fmt.Errorf("fsync floor: write: %w", err)
		}
		if err := f.Sync(); err != nil {
			return 0, 0, 0, fmt.Errorf("fsync floor: fsync: %w", err)
		}
		lat = append(lat, time.Since(t))
	}
	return float64(len(lat)) / time.Since(start).Seconds(), percentile(lat, 50), percentile(lat, 99), nil
}

// cpuFigures splits the CPU the concurrent run cost per committed write
// between the leader, the followers and the clients, and says how close
// the machine came to running out of CPU: the ceiling this box puts on
// writes/s whatever the disk does.
func cpuFigures(m *cpuMeter, leader string, writes float64) []figure {
	procs, clients, busy := m.stop()
	if writes <= 0 {
		return nil
	}
	per := func(d time.Duration) time.Duration { return time.Duration(float64(d) / writes) }
	var lead, follow time.Duration
	for name, d := range procs {
		if name == leader {
			lead += d
		} else {
			follow += d
		}
	}
	all := lead + follow + clients
	ceiling := float64(runtime.NumCPU()) * float64(time.Second) / float64(per(all))
	return []figure{
		{"cpu per write", fmt.Sprintf("%s / %s / %s", us(per(lead)), us(per(follow)), us(per(clients))),
			"leader / both followers / the 64 clients (gRPC + mTLS), user+system CPU during the run"},
		{"cpu ceiling", fmt.Sprintf("%.0f writes/s", ceiling),
			fmt.Sprintf("%d CPUs over the CPU of one write end to end (server and clients on this one machine); machine %.0f%% busy during the run",
				runtime.NumCPU(), busy*100)},
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%dµs", d.Microseconds()) }
