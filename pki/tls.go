package pki

import (
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ServerTLS is the TLS server configuration of a corrald that may serve
// several clusters on one listener. The client names the cluster in SNI;
// the server answers with its certificate for that cluster and verifies the
// client certificate, if any, against that cluster's CA only.
//
// Clients without a certificate are let through the handshake because
// joining nodes have none yet: callers MUST gate every request with
// VerifiedIdentity (the gRPC API allows only Join without an identity; the
// Raft transport allows only role node).
type ServerTLS struct {
	mu       sync.RWMutex
	clusters map[string]*tls.Config
}

// NewServerTLS returns a ServerTLS serving no cluster yet.
func NewServerTLS() *ServerTLS {
	return &ServerTLS{clusters: map[string]*tls.Config{}}
}

// Set starts serving c.Cluster with these credentials, replacing previous
// ones (certificate renewal); established connections are unaffected.
// An expired certificate is accepted here (peers will refuse it) so that a
// node can still start and be diagnosed.
func (s *ServerTLS) Set(c Creds) error {
	pair, pool, err := c.parse(time.Time{})
	if err != nil {
		return fmt.Errorf("serve cluster %s: %w", c.Cluster, err)
	}
	id, err := IdentityOf(pair.Leaf)
	if err != nil {
		return fmt.Errorf("serve cluster %s: %w", c.Cluster, err)
	}
	if id.Role != RoleNode {
		return fmt.Errorf("serve cluster %s: certificate %s is not a node certificate", c.Cluster, id)
	}
	cluster := c.Cluster
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		// Tickets would be encrypted with keys shared by every cluster
		// config, letting a session established for one cluster resume
		// under another; connections are long-lived, so the full
		// handshake costs nothing noticeable.
		SessionTicketsDisabled: true,
		VerifyConnection: func(st tls.ConnectionState) error {
			if len(st.PeerCertificates) == 0 {
				return nil // joining client: gated by VerifiedIdentity
			}
			id, err := PeerIdentity(st)
			if err != nil {
				return err
			}
			if id.Cluster != cluster {
				return fmt.Errorf("client %s does not belong to cluster %s", id, cluster)
			}
			return nil
		},
	}
	s.mu.Lock()
	s.clusters[cluster] = cfg
	s.mu.Unlock()
	return nil
}

// Remove stops serving cluster; new handshakes naming it fail.
func (s *ServerTLS) Remove(cluster string) {
	s.mu.Lock()
	delete(s.clusters, cluster)
	s.mu.Unlock()
}

// Clusters lists the clusters served, sorted.
func (s *ServerTLS) Clusters() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.clusters))
	for c := range s.clusters {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// Config returns the listener configuration; it follows later Set and
// Remove calls.
func (s *ServerTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if hello.ServerName == "" {
				return nil, errors.New("client sent no server name: set it to the cluster name")
			}
			s.mu.RLock()
			cfg, ok := s.clusters[hello.ServerName]
			s.mu.RUnlock()
			if !ok {
				return nil, fmt.Errorf("this node does not serve cluster %q", hello.ServerName)
			}
			return cfg, nil
		},
	}
}

// ClientTLS is the configuration for a member of cluster (node or admin)
// dialing a node of that cluster: SNI names the cluster, the server must
// hold a node certificate of that cluster issued by its CA, and the client
// presents its own certificate.
func ClientTLS(c Creds, cluster string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: cluster,
		VerifyConnection: func(st tls.ConnectionState) error {
			return verifyServerIdentity(st.PeerCertificates, cluster)
		},
	}
	if c.Cluster != cluster {
		// Signature has no error: make every handshake fail clearly.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return nil, fmt.Errorf("credentials are for cluster %q, not %q", c.Cluster, cluster)
		}
		cfg.RootCAs = x509.NewCertPool()
		return cfg
	}
	caCert, err := ParseCertPEM(c.CACertPEM)
	pool := x509.NewCertPool()
	if err == nil {
		pool.AddCert(caCert)
	}
	cfg.RootCAs = pool // empty on error: handshakes fail with an unknown authority
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return nil, fmt.Errorf("client credentials of cluster %s: %w", cluster, err)
		}
	} else {
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

func verifyServerIdentity(chain []*x509.Certificate, cluster string) error {
	if len(chain) == 0 {
		return errors.New("server sent no certificate")
	}
	id, err := IdentityOf(chain[0])
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	if id.Cluster != cluster || id.Role != RoleNode {
		return fmt.Errorf("server %s is not a node of cluster %s", id, cluster)
	}
	return nil
}

// PinnedClientTLS is the configuration of a node joining cluster: it sends
// no client certificate and trusts the server only if the server's chain
// contains a CA whose fingerprint is caFingerprint (from the join token)
// and the server's certificate is a node of cluster issued by that CA.
//
// InsecureSkipVerify only disables crypto/tls's own verification, which
// needs the CA in advance; VerifyConnection does the full chain
// verification against the pinned CA.
func PinnedClientTLS(cluster, caFingerprint string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         cluster,
		InsecureSkipVerify: true,
		VerifyConnection: func(st tls.ConnectionState) error {
			return verifyPinned(st.PeerCertificates, cluster, caFingerprint, time.Now())
		},
	}
}

func verifyPinned(chain []*x509.Certificate, cluster, pin string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("server sent no certificate")
	}
	var ca *x509.Certificate
	for _, c := range chain[1:] {
		if subtle.ConstantTimeCompare([]byte(Fingerprint(c)), []byte(pin)) == 1 {
			ca = c
			break
		}
	}
	if ca == nil {
		return fmt.Errorf("server chain has no CA with pinned fingerprint %s: wrong cluster or token", pin)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:       roots,
		DNSName:     cluster,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("server certificate does not verify against the pinned CA: %w", err)
	}
	return verifyServerIdentity(chain, cluster)
}
