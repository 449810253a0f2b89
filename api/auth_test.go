package api

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// authWorld is a daemon serving two clusters, prod and dev, on one TLS
// listener, and the TLS connection states its callers produce.
type authWorld struct {
	prod, dev *pki.CA
	server    *tls.Config
}

func newAuthWorld(t *testing.T) *authWorld {
	t.Helper()
	w := &authWorld{}
	st := pki.NewServerTLS()
	for _, c := range []struct {
		name string
		ca   **pki.CA
	}{{"prod", &w.prod}, {"dev", &w.dev}} {
		ca, err := pki.NewCA(c.name, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		node, err := ca.NewCreds(pki.RoleNode, "n1", []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Set(node); err != nil {
			t.Fatal(err)
		}
		*c.ca = ca
	}
	w.server = st.Config()
	return w
}

func (w *authWorld) creds(t *testing.T, ca *pki.CA, role pki.Role, name string) pki.Creds {
	t.Helper()
	var ips []net.IP
	if role == pki.RoleNode {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	c, err := ca.NewCreds(role, name, ips, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// handshake runs a real TLS handshake against the daemon's configuration
// and returns the server side's view, as gRPC hands it to authorize.
func (w *authWorld) handshake(t *testing.T, client *tls.Config) tls.ConnectionState {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv, cli := tls.Server(a, w.server), tls.Client(b, client)
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	serr := srv.Handshake()
	if serr != nil {
		b.Close() // unblock the client
	}
	cerr := <-errc
	if serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
	return srv.ConnectionState()
}

func tlsPeer(st tls.ConnectionState) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}, AuthInfo: credentials.TLSInfo{State: st},
	})
}

// A request naming cluster prod for each access class.
var authMethods = []struct {
	class, method string
	req           any
}{
	{"member", pb.NetworkService_CreateNetwork_FullMethodName, &pb.CreateNetworkRequest{Cluster: "prod"}},
	{"member", pb.VMService_GetVM_FullMethodName, &pb.GetVMRequest{Cluster: "prod"}},
	{"member", pb.ClusterService_IssueAdminCert_FullMethodName, &pb.IssueAdminCertRequest{Cluster: "prod"}},
	{"node", pb.ClusterService_Propose_FullMethodName, &pb.ProposeRequest{Cluster: "prod"}},
	{"node", pb.ClusterService_Heartbeat_FullMethodName, &pb.HeartbeatRequest{Cluster: "prod"}},
	{"node", pb.ClusterService_ReadIndex_FullMethodName, &pb.ReadIndexRequest{Cluster: "prod"}},
	{"open", pb.ClusterService_Admit_FullMethodName, &pb.AdmitRequest{Cluster: "prod"}},
	{"local", pb.ClusterService_InitCluster_FullMethodName, &pb.InitClusterRequest{Cluster: "prod"}},
	{"local", pb.ClusterService_JoinCluster_FullMethodName, &pb.JoinClusterRequest{Cluster: "prod"}},
	{"any", pb.ClusterService_ListClusters_FullMethodName, &pb.ListClustersRequest{}},
}

// want is the outcome of a class for one caller: "" (allowed) or the
// error kind and a fragment of its message.
type want struct {
	kind errdefs.Kind
	msg  string
}

var allowed = want{}

func TestAuthorize(t *testing.T) {
	w := newAuthWorld(t)
	prodAdmin := w.creds(t, w.prod, pki.RoleAdmin, "alice")
	prodNode := w.creds(t, w.prod, pki.RoleNode, "n2")
	devAdmin := w.creds(t, w.dev, pki.RoleAdmin, "bob")
	devNode := w.creds(t, w.dev, pki.RoleNode, "n2")
	anon := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "prod", RootCAs: w.prod.Pool()}

	denyNode := want{errdefs.KindDenied, "is for cluster nodes only"}
	denyLocal := want{errdefs.KindDenied, "works only on the daemon's local socket"}
	needCert := want{errdefs.KindUnauthenticated, `a client certificate of cluster "prod" is required`}
	wrongCluster := want{errdefs.KindDenied, `your certificate is for cluster "dev", not "prod"`}

	for _, caller := range []struct {
		name  string
		local bool
		ctx   func() context.Context
		who   string // caller.String() when allowed
		wants map[string]want
	}{
		{
			name: "local socket", local: true, ctx: context.Background, who: "local:root",
			// Raft-internal methods need a node identity even from root.
			wants: map[string]want{"member": allowed, "node": denyNode, "open": allowed, "local": allowed, "any": allowed},
		},
		{
			name: "admin of the cluster", ctx: func() context.Context { return tlsPeer(w.handshake(t, pki.ClientTLS(prodAdmin, "prod"))) },
			who:   "admin:alice",
			wants: map[string]want{"member": allowed, "node": denyNode, "open": allowed, "local": denyLocal, "any": allowed},
		},
		{
			name: "node of the cluster", ctx: func() context.Context { return tlsPeer(w.handshake(t, pki.ClientTLS(prodNode, "prod"))) },
			who:   "node:n2",
			wants: map[string]want{"member": allowed, "node": allowed, "open": allowed, "local": denyLocal, "any": allowed},
		},
		{
			// Verified against dev's CA (SNI dev) but naming prod.
			name: "admin of another cluster", ctx: func() context.Context { return tlsPeer(w.handshake(t, pki.ClientTLS(devAdmin, "dev"))) },
			wants: map[string]want{"member": wrongCluster, "node": denyNode, "open": allowed, "local": denyLocal, "any": allowed},
		},
		{
			name: "node of another cluster", ctx: func() context.Context { return tlsPeer(w.handshake(t, pki.ClientTLS(devNode, "dev"))) },
			wants: map[string]want{"member": {errdefs.KindDenied, `your certificate is for cluster "dev", not "prod"`}, "node": denyNode,
				"open": allowed, "local": denyLocal, "any": allowed},
		},
		{
			name: "TLS without certificate", ctx: func() context.Context { return tlsPeer(w.handshake(t, anon)) },
			wants: map[string]want{"member": needCert, "node": denyNode, "open": allowed, "local": denyLocal,
				"any": {errdefs.KindUnauthenticated, "a client certificate issued by the cluster CA is required"}},
		},
		{
			name: "no TLS", ctx: func() context.Context {
				return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
			},
			wants: map[string]want{"member": needCert, "node": denyNode, "open": {errdefs.KindUnauthenticated, "TLS required"},
				"local": denyLocal, "any": {errdefs.KindUnauthenticated, "a client certificate issued by the cluster CA is required"}},
		},
		{
			name: "no peer at all", ctx: context.Background,
			wants: map[string]want{"member": needCert, "node": denyNode, "open": {errdefs.KindUnauthenticated, "TLS required"},
				"local": denyLocal, "any": {errdefs.KindUnauthenticated, "a client certificate"}},
		},
	} {
		t.Run(caller.name, func(t *testing.T) {
			ctx := caller.ctx()
			for _, m := range authMethods {
				wnt, ok := caller.wants[m.class]
				if !ok {
					t.Fatalf("no expectation for class %s", m.class)
				}
				c, err := authorize(ctx, caller.local, m.method, m.req)
				name := methodName(m.method)
				if wnt == allowed {
					if err != nil {
						t.Errorf("%s (%s): refused: %v", name, m.class, err)
						continue
					}
					if caller.who != "" && c.String() != caller.who {
						t.Errorf("%s: caller %q, want %q", name, c.String(), caller.who)
					}
					continue
				}
				if err == nil {
					t.Errorf("%s (%s): allowed, want %v %q", name, m.class, wnt.kind, wnt.msg)
					continue
				}
				if k := errdefs.KindOf(err); k != wnt.kind || !strings.Contains(err.Error(), wnt.msg) {
					t.Errorf("%s (%s): %v %q, want %v containing %q", name, m.class, k, err, wnt.kind, wnt.msg)
				}
				// A refused caller never carries an identity into a handler.
				if c.id != (pki.Identity{}) && c.id.Cluster != "prod" {
					t.Errorf("%s: refused caller holds identity %v", name, c.id)
				}
			}
		})
	}
}

// TestAuthorizeForeignIdentityNotKept: a certificate of another cluster,
// even where it is let through (Admit, ListClusters), gives no identity
// for the request's cluster, so handlers that trust callerFrom (Heartbeat,
// CreateJoinToken, IssueAdminCert, ListClusters) cannot be fooled.
func TestAuthorizeForeignIdentityNotKept(t *testing.T) {
	w := newAuthWorld(t)
	devNode := w.creds(t, w.dev, pki.RoleNode, "n1")
	ctx := tlsPeer(w.handshake(t, pki.ClientTLS(devNode, "dev")))
	c, err := authorize(ctx, false, pb.ClusterService_Admit_FullMethodName, &pb.AdmitRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if c.id != (pki.Identity{}) || !c.tls {
		t.Fatalf("caller = %+v, want TLS without identity", c)
	}
	// Without a cluster in the request (ListClusters), the verified
	// identity is its own cluster's.
	c, err = authorize(ctx, false, pb.ClusterService_ListClusters_FullMethodName, &pb.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if c.id.Cluster != "dev" || c.id.Role != pki.RoleNode || c.id.Name != "n1" {
		t.Fatalf("caller = %+v, want node n1 of dev", c)
	}
}

// TestAuthorizeUnverifiedCertificate: a certificate that crypto/tls did not
// verify (no VerifiedChains, as with InsecureSkipVerify-style states) is
// no identity, whatever it claims.
func TestAuthorizeUnverifiedCertificate(t *testing.T) {
	w := newAuthWorld(t)
	admin := w.creds(t, w.prod, pki.RoleAdmin, "alice")
	st := w.handshake(t, pki.ClientTLS(admin, "prod"))
	if len(st.VerifiedChains) == 0 {
		t.Fatal("the handshake verified no chain: test setup broken")
	}
	st.VerifiedChains = nil
	_, err := authorize(tlsPeer(st), false, pb.NetworkService_CreateNetwork_FullMethodName, &pb.CreateNetworkRequest{Cluster: "prod"})
	if !errdefs.Is(err, errdefs.KindUnauthenticated) {
		t.Fatalf("unverified certificate: %v, want unauthenticated", err)
	}
	// Verified, but for a TLS session naming another cluster in SNI.
	st = w.handshake(t, pki.ClientTLS(admin, "prod"))
	st.ServerName = "dev"
	if _, err := authorize(tlsPeer(st), false, pb.NetworkService_CreateNetwork_FullMethodName, &pb.CreateNetworkRequest{Cluster: "prod"}); err == nil {
		t.Fatal("certificate verified under another SNI accepted")
	}
}

// TestMethodAccessNamesExist catches a renamed RPC: an access entry whose
// method no longer exists would leave the new name in the default class
// (members), e.g. opening a Raft-internal method to admins.
func TestMethodAccessNamesExist(t *testing.T) {
	methods := map[string]bool{}
	for _, d := range []grpc.ServiceDesc{pb.ClusterService_ServiceDesc, pb.NodeService_ServiceDesc, pb.VMService_ServiceDesc,
		pb.NetworkService_ServiceDesc, pb.StorageService_ServiceDesc, pb.TaskService_ServiceDesc, pb.EventService_ServiceDesc} {
		for _, m := range d.Methods {
			if methods[m.MethodName] {
				t.Errorf("method name %s is in two services: access is keyed by method name only", m.MethodName)
			}
			methods[m.MethodName] = true
		}
		for _, s := range d.Streams {
			if methods[s.StreamName] {
				t.Errorf("method name %s is in two services: access is keyed by method name only", s.StreamName)
			}
			methods[s.StreamName] = true
		}
	}
	for name := range methodAccess {
		if !methods[name] {
			t.Errorf("methodAccess names %q, which no service has", name)
		}
	}
	for _, m := range authMethods {
		if !methods[methodName(m.method)] {
			t.Errorf("test table names unknown method %s", m.method)
		}
	}
}
