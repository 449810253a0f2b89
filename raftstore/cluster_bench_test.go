package raftstore

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
)

// benchCluster is 3 on-disk stores over the real TLS stream layer on
// 127.0.0.1, the way corrald runs them: bolt log, file snapshots, mutual
// TLS 1.3 between members.
type benchCluster struct {
	stores []*Store
	dir    string
}

func benchTLS(b *testing.B, ca *pki.CA, node string) (server, client *tls.Config) {
	b.Helper()
	creds, err := ca.NewCreds(pki.RoleNode, node, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	pair, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	}
	return server, pki.ClientTLS(creds, ca.Cluster())
}

func freeAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newBenchCluster(b *testing.B) *benchCluster {
	b.Helper()
	ca, err := pki.NewCA("c1", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	c := &benchCluster{dir: b.TempDir()}
	b.Cleanup(func() {
		for _, s := range c.stores {
			_ = s.Close()
		}
	})
	addrs := make([]string, 3)
	for i := range addrs {
		id := fmt.Sprintf("n%d", i+1)
		addrs[i] = freeAddr(b)
		server, client := benchTLS(b, ca, id)
		s, err := Open(Config{
			Cluster: "c1", NodeID: id, Dir: filepath.Join(c.dir, id), RaftAddr: addrs[i],
			ServerTLS: server, ClientTLS: client, Bootstrap: i == 0, Logger: quiet,
			OnFatal: func(err error) { panic(err) },
			// The API's leader RPC, minus gRPC: ApplyLocal on the leader.
			Forward: func(ctx context.Context, leaderID, _ string, cmd *pb.Command) (uint64, error) {
				for _, s := range c.stores {
					if s.NodeID() == leaderID {
						_, idx, err := s.ApplyLocal(ctx, cmd)
						return idx, err
					}
				}
				return 0, fmt.Errorf("no store %s", leaderID)
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		c.stores = append(c.stores, s)
	}
	leader := c.stores[0]
	waitForB(b, 10*time.Second, leader.IsLeader)
	for i, s := range c.stores[1:] {
		if err := leader.AddVoter(s.NodeID(), addrs[i+1]); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	boot := cmd(pb.CommandType_COMMAND_TYPE_BOOTSTRAP, &pb.BootstrapCommand{
		Cluster: &pb.ClusterInfo{Name: "c1", CreatedUnixNano: t0},
		Node:    &pb.Node{Name: "n1", Role: pb.NodeRole_NODE_ROLE_VOTER},
	})
	_, idx, err := leader.ApplyLocal(ctx, boot)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range c.stores {
		if err := s.WaitApplied(ctx, idx); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

func waitForB(b *testing.B, d time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settingsCmd is the command the corral-bench raft figure commits: an
// UpdateSettings whose value changes each time.
func settingsCmd(n int64) *pb.Command {
	return cmd(pb.CommandType_COMMAND_TYPE_SETTINGS, &pb.SettingsCommand{Settings: &pb.Settings{RestartWindowMs: 10*60*1000 + n%1000}})
}

// BenchmarkClusterTLS commits SETTINGS commands through Store.Propose on
// the leader of a 3-node on-disk cluster over the TLS transport.
//
//	serial:     one proposer; reports p50/p99 commit latency
//	parallel64: 64 concurrent proposers; reports writes/s
//	fsync:      the floor: 4 KiB append + fsync in the same directory
func BenchmarkClusterTLS(b *testing.B) {
	b.Run("fsync", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "probe"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		block := make([]byte, 4096)
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t := time.Now()
			if _, err := f.Write(block); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
		}
		reportLatency(b, lat)
	})
	b.Run("serial", func(b *testing.B) { benchSerial(b, false) })
	// A write proposed on a follower: forwarded to the leader, then
	// waited for until the follower applied it (read your own write).
	b.Run("serial-follower", func(b *testing.B) { benchSerial(b, true) })
	b.Run("parallel64", func(b *testing.B) {
		c := newBenchCluster(b)
		leader := c.stores[0]
		ctx := context.Background()
		for i := range 200 {
			if _, err := leader.Propose(ctx, settingsCmd(int64(i))); err != nil {
				b.Fatal(err)
			}
		}
		var next, seq atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					if _, err := leader.Propose(ctx, settingsCmd(seq.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
	})
}

// benchSerial commits one write at a time through Propose on the leader
// (follower false) or on a follower.
func benchSerial(b *testing.B, follower bool) {
	c := newBenchCluster(b)
	var s *Store
	for _, m := range c.stores {
		if m.IsLeader() != follower {
			s = m
			break
		}
	}
	ctx := context.Background()
	for i := range 200 { // warm-up
		if _, err := s.Propose(ctx, settingsCmd(int64(i))); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	var n int64
	b.ResetTimer()
	for b.Loop() {
		n++
		t := time.Now()
		if _, err := s.Propose(ctx, settingsCmd(n)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100].Microseconds()) / 1000 }
	b.ReportMetric(pct(50), "p50-ms")
	b.ReportMetric(pct(99), "p99-ms")
}
