package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

type handshakeResult struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

func (r handshakeResult) ok() bool { return r.serverErr == nil && r.clientErr == nil }

// exchange runs a TLS handshake between the two ends of conn pair and, when
// it succeeds, one byte from server to client: in TLS 1.3 the client
// finishes its handshake before the server has checked the client
// certificate, so only the read tells whether the server accepted it.
func exchange(t testing.TB, serverConn, clientConn net.Conn, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	serverConn.SetDeadline(deadline)
	clientConn.SetDeadline(deadline)
	var r handshakeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer serverConn.Close()
		s := tls.Server(serverConn, serverCfg)
		if r.serverErr = s.Handshake(); r.serverErr != nil {
			return
		}
		r.server = s.ConnectionState()
		_, r.serverErr = s.Write([]byte{'k'})
	}()
	c := tls.Client(clientConn, clientCfg)
	r.clientErr = c.Handshake()
	if r.clientErr == nil {
		r.client = c.ConnectionState()
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			r.clientErr = err
		}
	}
	clientConn.Close()
	<-done
	if errors.Is(r.serverErr, os.ErrDeadlineExceeded) || errors.Is(r.clientErr, os.ErrDeadlineExceeded) {
		t.Fatalf("handshake hung: server %v, client %v", r.serverErr, r.clientErr)
	}
	return r
}

func pipeHandshake(t testing.TB, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	a, b := net.Pipe()
	return exchange(t, a, b, serverCfg, clientCfg)
}

// fixture holds two clusters and assorted credentials.
type fixture struct {
	prod, dev, fakeProd, oldProd *CA
	server                       *ServerTLS
	prodNode, prodAdmin, devNode Creds
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{
		prod:     mustCA(t, "prod"),
		dev:      mustCA(t, "dev"),
		fakeProd: mustCA(t, "prod"), // same name, other key: an attacker's CA
		oldProd:  mustCA(t, "prod"),
		server:   NewServerTLS(),
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	var err error
	if f.prodNode, err = f.prod.NewCreds(RoleNode, "hv1", lo, t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if f.prodAdmin, err = f.prod.NewCreds(RoleAdmin, "alice", nil, t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if f.devNode, err = f.dev.NewCreds(RoleNode, "hv1", lo, t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := f.server.Set(f.prodNode); err != nil {
		t.Fatal(err)
	}
	if err := f.server.Set(f.devNode); err != nil {
		t.Fatal(err)
	}
	return f
}

func mustCreds(t testing.TB, ca *CA, role Role, name string, now time.Time, ttl time.Duration) Creds {
	t.Helper()
	c, err := ca.NewCreds(role, name, nil, now, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// withCert returns ClientTLS(c, cluster) but presenting the certificate of
// other, to emulate a hostile client. GetClientCertificate makes it send the
// certificate even when its issuer is not among the server's acceptable CAs
// (crypto/tls would otherwise send none).
func withCert(c Creds, cluster string, other Creds) *tls.Config {
	cfg := ClientTLS(c, cluster)
	pair, err := tls.X509KeyPair(other.CertPEM, other.KeyPEM)
	if err != nil {
		panic(err)
	}
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	return cfg
}

func TestHandshake(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	prodNode2 := mustCreds(t, f.prod, RoleNode, "hv2", t0, time.Hour)
	past := t0.Add(-72 * time.Hour)
	oldCA := mustCAAt(t, "prod", past)
	expiredServer := NewServerTLS()
	if err := expiredServer.Set(mustCreds(t, oldCA, RoleNode, "hv1", past, time.Hour)); err != nil {
		t.Fatal(err)
	}
	expiredClient := mustCreds(t, f.prod, RoleNode, "hv2", t0.Add(-2*time.Hour), time.Minute)
	expiredClient.CACertPEM = f.prod.CertPEM
	futureClient := mustCreds(t, f.prod, RoleNode, "hv2", t0.Add(24*time.Hour), time.Hour)
	// Signed by the prod CA but claiming to be in dev: only the identity
	// check can refuse it.
	crossID := craft(t, f.prod, func(c *x509.Certificate) {
		c.Subject.CommonName = "hv2"
		c.URIs = []*url.URL{{Scheme: "corral", Host: "dev", Path: "/node/hv2"}}
	})
	noID := craft(t, f.prod, func(c *x509.Certificate) { c.Subject.CommonName = "hv2" })
	serverOnly := craft(t, f.prod, func(c *x509.Certificate) {
		c.Subject.CommonName = "hv2"
		c.URIs = []*url.URL{{Scheme: "corral", Host: "prod", Path: "/node/hv2"}}
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	fakeClient := mustCreds(t, f.fakeProd, RoleAdmin, "mallory", t0, time.Hour)

	noSNI := ClientTLS(prodNode2, "prod")
	noSNI.ServerName = ""
	noSNI.InsecureSkipVerify = true

	for _, tc := range []struct {
		name       string
		server     *ServerTLS
		client     *tls.Config
		wantOK     bool
		wantServer *Identity // identity the server sees, nil for none
		cluster    string
	}{
		{"prod node", f.server, ClientTLS(prodNode2, "prod"), true, &Identity{"prod", RoleNode, "hv2"}, "prod"},
		{"prod admin", f.server, ClientTLS(f.prodAdmin, "prod"), true, &Identity{"prod", RoleAdmin, "alice"}, "prod"},
		{"dev node on dev", f.server, ClientTLS(mustCreds(t, f.dev, RoleNode, "hv7", t0, time.Hour), "dev"), true, &Identity{"dev", RoleNode, "hv7"}, "dev"},
		{"dev cert to prod SNI", f.server, withCert(prodNode2, "prod", mustCreds(t, f.dev, RoleNode, "hv2", t0, time.Hour)), false, nil, "prod"},
		{"prod cert to dev SNI", f.server, withCert(mustCreds(t, f.dev, RoleNode, "hv2", t0, time.Hour), "dev", prodNode2), false, nil, "dev"},
		{"foreign cert silently withheld", f.server, func() *tls.Config {
			c := ClientTLS(prodNode2, "prod")
			pair, _ := tls.X509KeyPair(f.devNode.CertPEM, f.devNode.KeyPEM)
			c.Certificates = []tls.Certificate{pair} // crypto/tls sends no cert: anonymous
			return c
		}(), true, nil, "prod"},
		{"creds of other cluster", f.server, ClientTLS(f.devNode, "prod"), false, nil, "prod"},
		{"attacker CA named prod", f.server, withCert(prodNode2, "prod", fakeClient), false, nil, "prod"},
		{"prod-signed cert claiming dev", f.server, withCert(prodNode2, "prod", crossID), false, nil, "prod"},
		{"prod-signed cert without identity", f.server, withCert(prodNode2, "prod", noID), false, nil, "prod"},
		{"cert without client auth usage", f.server, withCert(prodNode2, "prod", serverOnly), false, nil, "prod"},
		{"expired client cert", f.server, ClientTLS(expiredClient, "prod"), false, nil, "prod"},
		{"not yet valid client cert", f.server, ClientTLS(futureClient, "prod"), false, nil, "prod"},
		{"expired server cert", expiredServer, ClientTLS(prodNode2, "prod"), false, nil, "prod"},
		{"unknown cluster", f.server, ClientTLS(mustCreds(t, mustCA(t, "test"), RoleNode, "a", t0, time.Hour), "test"), false, nil, "test"},
		{"no SNI", f.server, noSNI, false, nil, ""},
		{"client trusting another CA", f.server, ClientTLS(mustCreds(t, f.fakeProd, RoleNode, "hv2", t0, time.Hour), "prod"), false, nil, "prod"},
		{"pinned join", f.server, PinnedClientTLS("prod", f.prod.Fingerprint()), true, nil, "prod"},
		{"pinned join dev", f.server, PinnedClientTLS("dev", f.dev.Fingerprint()), true, nil, "dev"},
		{"pinned wrong fingerprint", f.server, PinnedClientTLS("prod", f.fakeProd.Fingerprint()), false, nil, "prod"},
		{"pinned other cluster's CA", f.server, PinnedClientTLS("prod", f.dev.Fingerprint()), false, nil, "prod"},
		{"pinned leaf fingerprint", f.server, PinnedClientTLS("prod", Fingerprint(mustCert(t, f.prodNode.CertPEM))), false, nil, "prod"},
		{"pinned expired server", expiredServer, PinnedClientTLS("prod", oldCA.Fingerprint()), false, nil, "prod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := pipeHandshake(t, tc.server.Config(), tc.client)
			if r.ok() != tc.wantOK {
				t.Fatalf("accepted=%v, want %v (server: %v; client: %v)", r.ok(), tc.wantOK, r.serverErr, r.clientErr)
			}
			if !r.ok() {
				return
			}
			id, ok := VerifiedIdentity(r.server, tc.cluster)
			if (tc.wantServer != nil) != ok || (ok && id != *tc.wantServer) {
				t.Errorf("server sees identity %+v ok=%v, want %+v", id, ok, tc.wantServer)
			}
			if ok {
				// The identity is bound to the cluster named in SNI.
				other := "dev"
				if tc.cluster == "dev" {
					other = "prod"
				}
				if _, ok := VerifiedIdentity(r.server, other); ok {
					t.Errorf("identity also valid for cluster %s", other)
				}
			}
			// The client learns which node it reached, when verification
			// was done by crypto/tls.
			cid, err := PeerIdentity(r.client)
			pinned := tc.client.InsecureSkipVerify
			if pinned != (err != nil) {
				t.Errorf("client PeerIdentity = %+v, %v (pinned=%v)", cid, err, pinned)
			}
			if err == nil && (cid.Cluster != tc.cluster || cid.Role != RoleNode || cid.Name != "hv1") {
				t.Errorf("client sees server %+v", cid)
			}
		})
	}
}

// TestServerTLSLoopback serves two clusters on one real TCP listener and
// checks Set (renewal), Remove and the SNI routing.
func TestServerTLSLoopback(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", f.server.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		id  Identity
		ok  bool
		err error
	}
	results := make(chan result)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					results <- result{err: err}
					return
				}
				st := tc.ConnectionState()
				id, ok := VerifiedIdentity(st, st.ServerName)
				_, err := tc.Write([]byte{'k'})
				results <- result{id: id, ok: ok, err: err}
			}()
		}
	}()
	dial := func(cfg *tls.Config) (Identity, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadFull(c, make([]byte, 1))
			c.Close()
		}
		r := <-results
		if err == nil {
			err = r.err
		}
		if err == nil && !r.ok {
			err = errors.New("no verified identity")
		}
		return r.id, err
	}
	devAdmin := mustCreds(t, f.dev, RoleAdmin, "bob", t0, time.Hour)
	renewed := mustCreds(t, f.prod, RoleNode, "hv1", t0, 2*time.Hour)
	steps := []struct {
		name   string
		action func() error
		client *tls.Config
		want   *Identity
	}{
		{"prod admin", nil, ClientTLS(f.prodAdmin, "prod"), &Identity{"prod", RoleAdmin, "alice"}},
		{"dev admin", nil, ClientTLS(devAdmin, "dev"), &Identity{"dev", RoleAdmin, "bob"}},
		{"dev admin to prod", nil, withCert(f.prodAdmin, "prod", devAdmin), nil},
		{"renew prod", func() error { return f.server.Set(renewed) }, ClientTLS(f.prodAdmin, "prod"), &Identity{"prod", RoleAdmin, "alice"}},
		{"remove dev", func() error { f.server.Remove("dev"); return nil }, ClientTLS(devAdmin, "dev"), nil},
		{"prod still served", nil, ClientTLS(f.prodAdmin, "prod"), &Identity{"prod", RoleAdmin, "alice"}},
		{"dev back", func() error { return f.server.Set(f.devNode) }, ClientTLS(devAdmin, "dev"), &Identity{"dev", RoleAdmin, "bob"}},
	}
	for _, s := range steps {
		if s.action != nil {
			if err := s.action(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		id, err := dial(s.client)
		if (err == nil) != (s.want != nil) || (err == nil && id != *s.want) {
			t.Errorf("%s: identity %+v, err %v; want %+v", s.name, id, err, s.want)
		}
	}
	if got := len(f.server.Clusters()); got != 2 {
		t.Errorf("serving %d clusters, want 2", got)
	}
}

// TestNodeOnlyWrapper checks the pattern the Raft transport uses: wrap the
// per-cluster config to require a node certificate, with VerifiedIdentity
// called inside VerifyConnection (before the handshake completes).
func TestNodeOnlyWrapper(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	base := f.server.Config()
	server := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := base.GetConfigForClient(hello)
			if err != nil {
				return nil, err
			}
			c = c.Clone()
			c.ClientAuth = tls.RequireAndVerifyClientCert
			prev := c.VerifyConnection
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if err := prev(cs); err != nil {
					return err
				}
				if id, ok := VerifiedIdentity(cs, hello.ServerName); !ok || id.Role != RoleNode {
					return errors.New("nodes only")
				}
				return nil
			}
			return c, nil
		},
	}
	for _, tc := range []struct {
		name   string
		client *tls.Config
		wantOK bool
	}{
		{"prod node", ClientTLS(mustCreds(t, f.prod, RoleNode, "hv2", t0, time.Hour), "prod"), true},
		{"dev node", ClientTLS(mustCreds(t, f.dev, RoleNode, "hv2", t0, time.Hour), "dev"), true},
		{"prod admin", ClientTLS(f.prodAdmin, "prod"), false},
		{"anonymous", PinnedClientTLS("prod", f.prod.Fingerprint()), false},
		{"dev node to prod", withCert(f.prodAdmin, "prod", f.devNode), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := pipeHandshake(t, server, tc.client)
			if r.ok() != tc.wantOK {
				t.Fatalf("accepted=%v, want %v (server: %v; client: %v)", r.ok(), tc.wantOK, r.serverErr, r.clientErr)
			}
		})
	}
}

func TestServerTLSSetRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	mismatch := f.prodNode
	mismatch.Cluster = "dev"
	otherKey := f.prodNode
	_, otherKey.KeyPEM, _ = NewKey()
	for _, tc := range []struct {
		name  string
		creds Creds
		want  string
	}{
		{"admin cert", f.prodAdmin, "not a node"},
		{"cluster mismatch", mismatch, "belongs to cluster prod"},
		{"key mismatch", otherKey, "private key does not match"},
		{"empty", Creds{}, "cluster"},
		{"foreign CA", Creds{Cluster: "prod", CACertPEM: f.fakeProd.CertPEM, CertPEM: f.prodNode.CertPEM, KeyPEM: f.prodNode.KeyPEM}, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServerTLS()
			err := s.Set(tc.creds)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Set err = %v, want containing %q", err, tc.want)
			}
			if len(s.Clusters()) != 0 {
				t.Error("refused credentials are served")
			}
		})
	}
}

func BenchmarkHandshake(b *testing.B) {
	f := newFixture(b)
	client := ClientTLS(f.prodAdmin, "prod")
	cfg := f.server.Config()
	for b.Loop() {
		if r := pipeHandshake(b, cfg, client); !r.ok() {
			b.Fatal(r.serverErr, r.clientErr)
		}
	}
}
