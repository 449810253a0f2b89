package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Identity is who a certificate speaks for.
type Identity struct {
	Cluster string
	Role    Role
	Name    string
}

func (id Identity) String() string { return identityURI(id.Cluster, id.Role, id.Name).String() }

const uriScheme = "corral"

func identityURI(cluster string, role Role, name string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: cluster, Path: "/" + string(role) + "/" + name}
}

// IdentityOf extracts the identity of a leaf certificate: exactly one URI
// SAN corral://<cluster>/<role>/<name> whose name matches the common name.
// It does not verify the certificate's signature or validity: only use it
// on certificates that went through chain verification.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, ErrNoIdentity
	}
	var found []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, ErrNoIdentity)
	case 1:
	default:
		return Identity{}, fmt.Errorf("certificate %q: %d corral URIs, want one: %w", cert.Subject.CommonName, len(found), ErrNoIdentity)
	}
	u := found[0]
	role, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	id := Identity{Cluster: u.Host, Role: Role(role), Name: name}
	if !ok || !strings.HasPrefix(u.Path, "/") || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Identity{}, fmt.Errorf("certificate %q: malformed identity %q: %w", cert.Subject.CommonName, u, ErrNoIdentity)
	}
	if err := ValidateCluster(id.Cluster); err != nil {
		return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	if err := ValidateName(id.Role, id.Name); err != nil {
		return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	if cert.Subject.CommonName != id.Name {
		return Identity{}, fmt.Errorf("certificate %q: common name differs from identity name %q: %w", cert.Subject.CommonName, id.Name, ErrNoIdentity)
	}
	if cert.IsCA {
		return Identity{}, fmt.Errorf("certificate %q is a CA: %w", cert.Subject.CommonName, ErrNoIdentity)
	}
	return id, nil
}

// PeerIdentity returns the identity of the peer of a TLS connection whose
// certificate chain was verified by crypto/tls. Connections where the peer
// sent no certificate, or where verification was skipped (PinnedClientTLS),
// have no identity.
func PeerIdentity(state tls.ConnectionState) (Identity, error) {
	if len(state.PeerCertificates) == 0 {
		return Identity{}, fmt.Errorf("peer sent no certificate: %w", ErrNoIdentity)
	}
	if len(state.VerifiedChains) == 0 {
		return Identity{}, fmt.Errorf("peer certificate was not verified: %w", ErrNoIdentity)
	}
	return IdentityOf(state.PeerCertificates[0])
}

// VerifiedIdentity returns the identity of a client connected to a server
// using ServerTLS.Config for cluster, and false when the client presented
// no verified certificate of that cluster. The API layer must refuse every
// method but Join when ok is false. It may be called from a
// tls.Config.VerifyConnection callback (where HandshakeComplete is still
// false): VerifiedChains is only set once crypto/tls verified the chain.
func VerifiedIdentity(state tls.ConnectionState, cluster string) (id Identity, ok bool) {
	if state.ServerName != cluster {
		return Identity{}, false
	}
	id, err := PeerIdentity(state)
	if err != nil || id.Cluster != cluster {
		return Identity{}, false
	}
	return id, true
}
