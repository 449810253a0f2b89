// Package pki holds the certificates and secrets of corral clusters.
//
// Each cluster (one Raft group, e.g. "prod" or "dev") has its own CA. Nodes
// and admins authenticate with mutual TLS using certificates issued by that
// CA; the identity lives in a URI SAN "corral://<cluster>/<role>/<name>".
// A corrald may belong to several clusters, so ServerTLS picks the server
// certificate by SNI (ServerName == cluster name) and verifies clients
// against the CA of that cluster only.
//
// Joining nodes have no certificate yet: they dial with PinnedClientTLS,
// which trusts the server only if its chain ends at a CA whose fingerprint
// was carried in the join Token, and they send a CSR so their private key
// never leaves them. The server therefore accepts TLS clients without a
// certificate (tls.VerifyClientCertIfGiven); the API layer MUST call
// VerifiedIdentity and refuse every method except Join when it reports no
// identity.
//
// Seal/Unseal keep secrets (Ceph keys, …) out of the replicated state in
// clear, with AES-256-GCM under a per-cluster key.
//
// Everything is pure Go (crypto/x509); keys are ECDSA P-256, and Ed25519
// public keys are accepted in CSRs.
package pki

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Validity defaults; callers may pass other TTLs to Issue.
const (
	// CAValidity is the lifetime of a cluster CA: long, because rotating a
	// CA means re-issuing every node and admin certificate.
	CAValidity = 10 * 365 * 24 * time.Hour
	// DefaultCertTTL is the suggested lifetime of node and admin certificates.
	DefaultCertTTL = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so a freshly issued certificate is
	// accepted by a peer whose clock is slightly behind.
	clockSkew = 5 * time.Minute
)

// Domain errors callers may need to tell apart (use errors.Is).
var (
	ErrInvalidName    = errors.New("invalid name")
	ErrNoIdentity     = errors.New("certificate carries no corral identity")
	ErrMalformedToken = errors.New("malformed join token")
	ErrUnseal         = errors.New("cannot unseal: wrong key or tampered data")
)

var (
	// Cluster names are used as TLS server names (SNI) and URI hosts, so
	// they are single lowercase DNS labels.
	clusterRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// Node names become DNS SANs: lowercase hostnames.
	nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	// Admin names are user names, possibly e-mail-like.
	adminNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9._@-]{0,126}[a-z0-9])?$`)
)

// ValidateCluster reports whether s can name a cluster.
func ValidateCluster(s string) error {
	if !clusterRe.MatchString(s) {
		return fmt.Errorf("cluster %q: %w: use 1-63 lowercase letters, digits or '-'", s, ErrInvalidName)
	}
	return nil
}

// ValidateName reports whether name is acceptable for a certificate of role.
func ValidateName(role Role, name string) error {
	switch role {
	case RoleNode:
		if !nodeNameRe.MatchString(name) {
			return fmt.Errorf("node name %q: %w: use a lowercase hostname (letters, digits, '-', '.')", name, ErrInvalidName)
		}
	case RoleAdmin:
		if !adminNameRe.MatchString(name) {
			return fmt.Errorf("admin name %q: %w: use lowercase letters, digits, '.', '_', '@', '-'", name, ErrInvalidName)
		}
	default:
		return fmt.Errorf("role %q: %w: want %q or %q", role, ErrInvalidName, RoleNode, RoleAdmin)
	}
	return nil
}
