// Package pkitest serves tests that need a node of a cluster on loopback:
// a listener with the node's mutual-TLS server credentials.
package pkitest

import (
	"net"
	"testing"
	"time"

	"github.com/minet/corral/pki"
	"google.golang.org/grpc/credentials"
)

// NodeListener listens on 127.0.0.1 (a free port) as node name of ca's
// cluster: serve gRPC on it with grpc.Creds(creds).
func NodeListener(t testing.TB, ca *pki.CA, name string) (l net.Listener, creds credentials.TransportCredentials) {
	t.Helper()
	node, err := ca.NewCreds(pki.RoleNode, name, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st := pki.NewServerTLS()
	if err := st.Set(node); err != nil {
		t.Fatal(err)
	}
	l, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l, credentials.NewTLS(st.Config())
}
