package api

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// testNode is one in-process corrald without agent: a cluster.Manager
// whose clusters each have a single-node Raft group on 127.0.0.1, served
// by this package's Server over TLS (127.0.0.1) and over a local
// in-memory connection standing for the unix socket.
type testNode struct {
	m       *cluster.Manager
	srv     *Server
	tlsAddr string
	local   *grpc.ClientConn // the daemon's local socket: root
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startNode(t *testing.T, clusters ...string) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := quietLogger()
	m := cluster.New(cluster.Config{
		NodeName: "n1", DataDir: t.TempDir(), AdvertiseIP: "127.0.0.1", APIAddr: ln.Addr().String(), Logger: log,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
	})
	t.Cleanup(func() { _ = m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range clusters {
		if _, err := m.Init(ctx, c, "127.0.0.1:0", pb.NodeRole_NODE_ROLE_VOTER); err != nil {
			t.Fatalf("init cluster %s: %v", c, err)
		}
	}
	srv := New(m, nil, log, prometheus.NewRegistry())
	gs := srv.GRPCServer(false)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	bl := bufconn.Listen(1 << 20)
	ls := srv.GRPCServer(true)
	go func() { _ = ls.Serve(bl) }()
	t.Cleanup(ls.Stop)
	local, err := grpc.NewClient("passthrough:///local",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return bl.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = local.Close() })
	return &testNode{m: m, srv: srv, tlsAddr: ln.Addr().String(), local: local}
}

// adminCreds obtains an admin certificate of cluster through the local
// socket, as `corral admin issue-cert` does.
func (n *testNode) adminCreds(t *testing.T, clusterName, name string) pki.Creds {
	t.Helper()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CSR(key, name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := pb.NewClusterServiceClient(n.local).IssueAdminCert(context.Background(),
		&pb.IssueAdminCertRequest{Cluster: clusterName, Name: name, CsrPem: csr})
	if err != nil {
		t.Fatalf("issue admin cert: %v", err)
	}
	return pki.Creds{Cluster: clusterName, CACertPEM: resp.CaCertPem, CertPEM: resp.CertPem, KeyPEM: keyPEM}
}

// dial connects to the TLS API with creds, naming cluster in SNI.
func (n *testNode) dial(t *testing.T, creds pki.Creds, clusterName string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+n.tlsAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLS(creds, clusterName))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (n *testNode) group(t *testing.T, name string) *cluster.Group {
	t.Helper()
	g, err := n.m.Group(name)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func pool(t *testing.T, caPEM []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate")
	}
	return p
}
