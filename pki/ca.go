package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// CA is a cluster certificate authority. Key is nil-safe only for
// verification; issuing needs it.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

const caCNPrefix, caCNSuffix = "corral ", " CA"

// NewCA creates the CA of cluster, valid CAValidity from now.
func NewCA(cluster string, now time.Time) (*CA, error) {
	if err := ValidateCluster(cluster); err != nil {
		return nil, err
	}
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: caCNPrefix + cluster + caCNSuffix, Organization: []string{"corral"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Path length 0: the CA signs leaves only, so a stolen node key
		// can never act as an intermediate.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA for cluster %s: %w", cluster, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// LoadCA parses a CA saved from CertPEM and KeyPEM and checks that the key
// belongs to the certificate.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("load CA: private key does not match certificate %q", cert.Subject.CommonName)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Cluster returns the cluster this CA belongs to ("" if the CA was not made
// by NewCA).
func (ca *CA) Cluster() string {
	cn := ca.Cert.Subject.CommonName
	if !strings.HasPrefix(cn, caCNPrefix) || !strings.HasSuffix(cn, caCNSuffix) {
		return ""
	}
	return strings.TrimSuffix(strings.TrimPrefix(cn, caCNPrefix), caCNSuffix)
}

// Fingerprint is the lowercase hex SHA-256 of the CA certificate DER; join
// tokens carry it so a joining node can pin the CA.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Role is what a certificate holder may do in a cluster.
type Role string

// Roles.
const (
	RoleNode  Role = "node"
	RoleAdmin Role = "admin"
)

// Issue signs a certificate of role for name with public key pub. Node
// certificates are for both TLS server and client and carry ips and the DNS
// names name and the cluster name (clients use the cluster as TLS server
// name so one corrald can serve several clusters); admin certificates are
// client-only and must have no IPs. NotAfter is clamped to the CA's.
func (ca *CA) Issue(role Role, name string, ips []net.IP, pub crypto.PublicKey, now time.Time, ttl time.Duration) ([]byte, error) {
	cluster := ca.Cluster()
	if err := ValidateCluster(cluster); err != nil {
		return nil, fmt.Errorf("issue %s %s: CA has no cluster name: %w", role, name, err)
	}
	if err := ValidateName(role, name); err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("issue %s %s: ttl %v must be positive", role, name, ttl)
	}
	if ca.Key == nil {
		return nil, fmt.Errorf("issue %s %s: CA private key not loaded", role, name)
	}
	switch pub.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("issue %s %s: unsupported public key type %T (want ECDSA or Ed25519)", role, name, pub)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"corral " + cluster}, OrganizationalUnit: []string{string(role)}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		URIs:         []*url.URL{identityURI(cluster, role, name)},
	}
	switch role {
	case RoleNode:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{name}
		if name != cluster {
			tmpl.DNSNames = append(tmpl.DNSNames, cluster)
		}
		tmpl.IPAddresses = ips
		// Meaningless for ECDSA, but libvirt and QEMU (GnuTLS) refuse a
		// certificate whose critical key usage lacks it, and node
		// certificates also secure live migration (LibvirtTLS).
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	case RoleAdmin:
		if len(ips) > 0 {
			return nil, fmt.Errorf("issue admin %s: admin certificates carry no IP addresses", name)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		// ECDSA keys also do key agreement in TLS 1.2; harmless and
		// expected by some stacks.
		tmpl.KeyUsage |= x509.KeyUsageKeyAgreement
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue %s %s in cluster %s: %w", role, name, cluster, err)
	}
	return encodeCert(der), nil
}

// NewCreds generates a key pair and issues a certificate for it: used to
// bootstrap the first node of a cluster and to create admin credentials.
func (ca *CA) NewCreds(role Role, name string, ips []net.IP, now time.Time, ttl time.Duration) (Creds, error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return Creds{}, err
	}
	certPEM, err := ca.Issue(role, name, ips, key.Public(), now, ttl)
	if err != nil {
		return Creds{}, err
	}
	return Creds{Cluster: ca.Cluster(), CACertPEM: ca.CertPEM, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// NewKey generates an ECDSA P-256 private key, also returned as PKCS#8 PEM.
func NewKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// CSR returns a PEM certificate request for name signed by key, so a
// joining node can obtain a certificate without sending its private key.
func CSR(key crypto.Signer, name string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: %w", name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// SignCSR checks the CSR's self-signature and that its common name is name,
// then issues a certificate for its public key. Only the public key of the
// CSR is used: role, name and IPs are decided by the caller, never by the
// requester.
func (ca *CA) SignCSR(csrPEM []byte, role Role, name string, ips []net.IP, now time.Time, ttl time.Duration) ([]byte, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("sign CSR for %s: no PEM CERTIFICATE REQUEST block", name)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", name, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign CSR for %s: bad self-signature: %w", name, err)
	}
	if csr.Subject.CommonName != name {
		return nil, fmt.Errorf("sign CSR: request is for %q, expected %q", csr.Subject.CommonName, name)
	}
	return ca.Issue(role, name, ips, csr.PublicKey, now, ttl)
}

// ParseCertPEM parses the first CERTIFICATE block of data.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse certificate: %w", err)
			}
			return cert, nil
		}
	}
}

// ParseKeyPEM parses a PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY")
// private key.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q for a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key type %T cannot sign", key)
	}
	return signer, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newSerial() (*big.Int, error) {
	// 128 random bits, as CAs do, so serials never collide across the
	// several processes that may hold the cluster CA.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}
