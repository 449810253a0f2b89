package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Creds are a node's (or admin's) credentials for one cluster.
type Creds struct {
	Cluster   string
	CACertPEM []byte
	CertPEM   []byte
	KeyPEM    []byte
}

// File names inside a credentials directory.
const (
	CACertFile = "ca.crt"
	CertFile   = "node.crt"
	KeyFile    = "node.key"
)

// Save writes the credentials into dir (created 0700) as ca.crt, node.crt
// and node.key, each 0600. Each file is replaced atomically so a crash never
// leaves a truncated key.
func (c Creds) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save credentials of cluster %s: %w", c.Cluster, err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{CACertFile, c.CACertPEM}, {CertFile, c.CertPEM}, {KeyFile, c.KeyPEM}} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data); err != nil {
			return fmt.Errorf("save credentials of cluster %s: %w", c.Cluster, err)
		}
	}
	return nil
}

// writeFileAtomic replaces path by a file holding data, mode 0600.
func writeFileAtomic(path string, data []byte) error { return writeFileMode(path, data, 0o600, -1) }

// LoadCreds reads credentials saved by Save; the cluster name comes from
// the certificate's identity. The credentials are validated (see Validate)
// except for expiry, so an expired certificate can still be loaded and
// renewed.
func LoadCreds(dir string) (Creds, error) {
	var c Creds
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{CACertFile, &c.CACertPEM}, {CertFile, &c.CertPEM}, {KeyFile, &c.KeyPEM}} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return Creds{}, fmt.Errorf("load credentials: %w", err)
		}
		*f.dst = data
	}
	cert, err := ParseCertPEM(c.CertPEM)
	if err != nil {
		return Creds{}, fmt.Errorf("load credentials from %s: %w", dir, err)
	}
	id, err := IdentityOf(cert)
	if err != nil {
		return Creds{}, fmt.Errorf("load credentials from %s: %w", dir, err)
	}
	c.Cluster = id.Cluster
	if _, _, err := c.parse(time.Time{}); err != nil {
		return Creds{}, fmt.Errorf("load credentials from %s: %w", dir, err)
	}
	return c, nil
}

// Identity returns the identity of the credentials' certificate.
func (c Creds) Identity() (Identity, error) {
	cert, err := ParseCertPEM(c.CertPEM)
	if err != nil {
		return Identity{}, err
	}
	return IdentityOf(cert)
}

// Validate checks that the key matches the certificate, that the
// certificate chains to the CA and is valid at now, and that its identity
// is in c.Cluster.
func (c Creds) Validate(now time.Time) error {
	if now.IsZero() {
		return fmt.Errorf("validate credentials: zero time")
	}
	_, _, err := c.parse(now)
	return err
}

// parse validates the credentials at now (a zero now skips the validity
// period check) and returns the TLS certificate
// (leaf then CA, so PinnedClientTLS peers can find the CA) and the CA pool.
func (c Creds) parse(now time.Time) (tls.Certificate, *x509.CertPool, error) {
	if err := ValidateCluster(c.Cluster); err != nil {
		return tls.Certificate{}, nil, err
	}
	caCert, err := ParseCertPEM(c.CACertPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("CA of cluster %s: %w", c.Cluster, err)
	}
	if !caCert.IsCA {
		return tls.Certificate{}, nil, fmt.Errorf("CA of cluster %s: certificate %q is not a CA", c.Cluster, caCert.Subject.CommonName)
	}
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate of cluster %s: %w", c.Cluster, err)
	}
	leaf := pair.Leaf
	pair.Certificate = append(pair.Certificate[:1:1], caCert.Raw)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if now.IsZero() {
		// Check the chain at a moment where both certificates should be
		// valid; only an expiry check is skipped.
		now = leaf.NotBefore
		if caCert.NotBefore.After(now) {
			now = caCert.NotBefore
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate %q does not verify against the CA of cluster %s: %w", leaf.Subject.CommonName, c.Cluster, err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	if id.Cluster != c.Cluster {
		return tls.Certificate{}, nil, fmt.Errorf("certificate %s belongs to cluster %s, not %s", id, id.Cluster, c.Cluster)
	}
	return pair, pool, nil
}
