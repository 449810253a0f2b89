package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// Token is a join token "<cluster>.<id>.<secret>.<caFingerprint>". The ID
// lets the server find the token record, which stores only
// HashSecret(Secret); the fingerprint lets the joining node pin the CA.
// Every part is made of [a-z0-9_-], so the string is safe in URLs and
// shells.
type Token struct {
	Cluster, ID, Secret, CAFingerprint string
}

const (
	tokenIDBytes     = 6  // 12 hex characters: only needs to be unique per cluster
	tokenSecretBytes = 32 // 256 bits, base64url without padding: 43 characters
)

var (
	tokenIDRe     = regexp.MustCompile(`^[0-9a-f]{12}$`)
	tokenSecretRe = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	fingerprintRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// NewToken returns a fresh random token for cluster pinning the CA with
// fingerprint caFingerprint (CA.Fingerprint).
func NewToken(cluster, caFingerprint string) (Token, error) {
	if err := ValidateCluster(cluster); err != nil {
		return Token{}, fmt.Errorf("new token: %w", err)
	}
	if !fingerprintRe.MatchString(caFingerprint) {
		return Token{}, fmt.Errorf("new token: CA fingerprint %q is not 64 lowercase hex digits", caFingerprint)
	}
	buf := make([]byte, tokenIDBytes+tokenSecretBytes)
	if _, err := rand.Read(buf); err != nil {
		return Token{}, fmt.Errorf("new token: %w", err)
	}
	return Token{
		Cluster:       cluster,
		ID:            hex.EncodeToString(buf[:tokenIDBytes]),
		Secret:        base64.RawURLEncoding.EncodeToString(buf[tokenIDBytes:]),
		CAFingerprint: caFingerprint,
	}, nil
}

func (t Token) String() string {
	return t.Cluster + "." + t.ID + "." + t.Secret + "." + t.CAFingerprint
}

// ParseToken parses a token as printed by String; surrounding white space
// (from copy and paste) is ignored.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 {
		return Token{}, fmt.Errorf("%w: want 4 dot-separated parts, got %d", ErrMalformedToken, len(parts))
	}
	t := Token{Cluster: parts[0], ID: parts[1], Secret: parts[2], CAFingerprint: parts[3]}
	switch {
	case ValidateCluster(t.Cluster) != nil:
		return Token{}, fmt.Errorf("%w: bad cluster name %q", ErrMalformedToken, t.Cluster)
	case !tokenIDRe.MatchString(t.ID):
		return Token{}, fmt.Errorf("%w: bad token id", ErrMalformedToken)
	case !tokenSecretRe.MatchString(t.Secret):
		return Token{}, fmt.Errorf("%w: bad secret", ErrMalformedToken)
	case !fingerprintRe.MatchString(t.CAFingerprint):
		return Token{}, fmt.Errorf("%w: bad CA fingerprint", ErrMalformedToken)
	}
	return t, nil
}

// HashSecret is what the server stores for a token secret (hex SHA-256):
// the secret has 256 random bits, so a plain hash suffices.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// CheckSecret reports, in constant time, whether secret hashes to hash.
func CheckSecret(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}
