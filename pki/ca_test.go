package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Now().Truncate(time.Second)

func mustCA(t testing.TB, cluster string) *CA {
	t.Helper()
	return mustCAAt(t, cluster, t0)
}

func mustCAAt(t testing.TB, cluster string, now time.Time) *CA {
	t.Helper()
	ca, err := NewCA(cluster, now)
	if err != nil {
		t.Fatalf("NewCA(%s): %v", cluster, err)
	}
	return ca
}

func mustCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// craft signs an arbitrary leaf with ca, for identities Issue refuses to make.
func craft(t testing.TB, ca *CA, mod func(*x509.Certificate)) Creds {
	t.Helper()
	key, keyPEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "x"},
		NotBefore:    t0.Add(-time.Hour),
		NotAfter:     t0.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	mod(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return Creds{Cluster: ca.Cluster(), CACertPEM: ca.CertPEM, CertPEM: encodeCert(der), KeyPEM: keyPEM}
}

func TestNewCA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cluster string
		wantErr bool
	}{
		{"prod", false},
		{"dev-2", false},
		{"", true},
		{"Prod", true},
		{"a.b", true},
		{"-x", true},
		{strings.Repeat("a", 64), true},
	} {
		t.Run(tc.cluster, func(t *testing.T) {
			t.Parallel()
			ca, err := NewCA(tc.cluster, t0)
			if (err != nil) != tc.wantErr {
				t.Fatalf("NewCA(%q) err = %v, wantErr %v", tc.cluster, err, tc.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidName) {
					t.Errorf("err %v is not ErrInvalidName", err)
				}
				return
			}
			c := ca.Cert
			if got, want := c.Subject.CommonName, "corral "+tc.cluster+" CA"; got != want {
				t.Errorf("CN = %q, want %q", got, want)
			}
			if !c.IsCA || !c.MaxPathLenZero || c.MaxPathLen != 0 {
				t.Errorf("IsCA=%v MaxPathLenZero=%v MaxPathLen=%d", c.IsCA, c.MaxPathLenZero, c.MaxPathLen)
			}
			if d := c.NotAfter.Sub(t0); d != CAValidity {
				t.Errorf("validity %v, want %v", d, CAValidity)
			}
			if ca.Cluster() != tc.cluster {
				t.Errorf("Cluster() = %q", ca.Cluster())
			}
			if fp := ca.Fingerprint(); len(fp) != 64 || strings.ToLower(fp) != fp {
				t.Errorf("fingerprint %q", fp)
			}
			loaded, err := LoadCA(ca.CertPEM, ca.KeyPEM)
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			if loaded.Fingerprint() != ca.Fingerprint() || loaded.Cluster() != tc.cluster {
				t.Errorf("loaded CA differs")
			}
		})
	}
}

func TestNewCAUniqueFingerprints(t *testing.T) {
	t.Parallel()
	a, b := mustCA(t, "prod"), mustCA(t, "prod")
	if a.Fingerprint() == b.Fingerprint() {
		t.Fatal("two CAs of the same cluster share a fingerprint")
	}
}

func TestLoadCAErrors(t *testing.T) {
	t.Parallel()
	ca, other := mustCA(t, "prod"), mustCA(t, "prod")
	leaf, err := ca.NewCreds(RoleNode, "hv1", nil, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		cert, key   []byte
		errContains string
	}{
		{"other key", ca.CertPEM, other.KeyPEM, "does not match"},
		{"leaf as CA", leaf.CertPEM, leaf.KeyPEM, "not a CA"},
		{"garbage cert", []byte("nope"), ca.KeyPEM, "no PEM"},
		{"garbage key", ca.CertPEM, []byte("nope"), "no PEM"},
		{"cert as key", ca.CertPEM, ca.CertPEM, "unexpected PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCA(tc.cert, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.errContains) {
				t.Fatalf("LoadCA err = %v, want containing %q", err, tc.errContains)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	t.Parallel()
	ca := mustCA(t, "prod")
	ecKey, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ips := []net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1")}
	for _, tc := range []struct {
		name      string
		role      Role
		node      string
		ips       []net.IP
		pub       crypto.PublicKey
		ttl       time.Duration
		wantErr   string
		wantEKU   []x509.ExtKeyUsage
		wantDNS   []string
		wantAfter time.Time
	}{
		{name: "node", role: RoleNode, node: "hv1", ips: ips, pub: ecKey.Public(), ttl: DefaultCertTTL,
			wantEKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, wantDNS: []string{"hv1", "prod"}, wantAfter: t0.Add(DefaultCertTTL)},
		{name: "node named like cluster", role: RoleNode, node: "prod", pub: ecKey.Public(), ttl: time.Hour,
			wantEKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, wantDNS: []string{"prod"}, wantAfter: t0.Add(time.Hour)},
		{name: "admin ed25519", role: RoleAdmin, node: "jean.dupont@minet.net", pub: edPub, ttl: time.Hour,
			wantEKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, wantAfter: t0.Add(time.Hour)},
		{name: "ttl clamped to CA", role: RoleNode, node: "hv2", pub: ecKey.Public(), ttl: 2 * CAValidity,
			wantEKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, wantDNS: []string{"hv2", "prod"}, wantAfter: ca.Cert.NotAfter},
		{name: "admin with ips", role: RoleAdmin, node: "bob", ips: ips, pub: ecKey.Public(), ttl: time.Hour, wantErr: "no IP"},
		{name: "bad role", role: "root", node: "bob", pub: ecKey.Public(), ttl: time.Hour, wantErr: "role"},
		{name: "bad node name", role: RoleNode, node: "hv_1", pub: ecKey.Public(), ttl: time.Hour, wantErr: "node name"},
		{name: "empty name", role: RoleAdmin, node: "", pub: ecKey.Public(), ttl: time.Hour, wantErr: "admin name"},
		{name: "slash in name", role: RoleAdmin, node: "a/b", pub: ecKey.Public(), ttl: time.Hour, wantErr: "admin name"},
		{name: "zero ttl", role: RoleNode, node: "hv1", pub: ecKey.Public(), ttl: 0, wantErr: "ttl"},
		{name: "rsa key", role: RoleNode, node: "hv1", pub: &rsaKey.PublicKey, ttl: time.Hour, wantErr: "unsupported public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			certPEM, err := ca.Issue(tc.role, tc.node, tc.ips, tc.pub, t0, tc.ttl)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Issue err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			c := mustCert(t, certPEM)
			if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: t0, KeyUsages: tc.wantEKU}); err != nil {
				t.Errorf("verify: %v", err)
			}
			id, err := IdentityOf(c)
			if err != nil {
				t.Fatalf("IdentityOf: %v", err)
			}
			if want := (Identity{Cluster: "prod", Role: tc.role, Name: tc.node}); id != want {
				t.Errorf("identity %+v, want %+v", id, want)
			}
			if got := c.URIs[0].String(); got != "corral://prod/"+string(tc.role)+"/"+tc.node {
				t.Errorf("URI %s", got)
			}
			if c.Subject.CommonName != tc.node {
				t.Errorf("CN %q", c.Subject.CommonName)
			}
			if !slices.Equal(c.ExtKeyUsage, tc.wantEKU) {
				t.Errorf("EKU %v, want %v", c.ExtKeyUsage, tc.wantEKU)
			}
			if !slices.Equal(c.DNSNames, tc.wantDNS) {
				t.Errorf("DNS %v, want %v", c.DNSNames, tc.wantDNS)
			}
			if len(c.IPAddresses) != len(tc.ips) {
				t.Errorf("IPs %v, want %v", c.IPAddresses, tc.ips)
			}
			for i := range tc.ips {
				if !c.IPAddresses[i].Equal(tc.ips[i]) {
					t.Errorf("IP %d = %v, want %v", i, c.IPAddresses[i], tc.ips[i])
				}
			}
			if !c.NotAfter.Equal(tc.wantAfter) {
				t.Errorf("NotAfter %v, want %v", c.NotAfter, tc.wantAfter)
			}
			if c.IsCA {
				t.Error("leaf is a CA")
			}
		})
	}
}

func TestIssueWithoutKey(t *testing.T) {
	t.Parallel()
	ca := mustCA(t, "prod")
	pubOnly := &CA{Cert: ca.Cert, CertPEM: ca.CertPEM}
	if _, err := pubOnly.Issue(RoleNode, "hv1", nil, ca.Key.Public(), t0, time.Hour); err == nil {
		t.Fatal("issued without a CA key")
	}
}

func TestSignCSR(t *testing.T) {
	t.Parallel()
	ca := mustCA(t, "prod")
	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := CSR(key, "hv3")
	if err != nil {
		t.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edCSR, err := CSR(edKey, "hv4")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(csr)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-1] ^= 1 // inside the signature
	tamperedPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})

	for _, tc := range []struct {
		name    string
		csr     []byte
		node    string
		pub     crypto.PublicKey
		wantErr string
	}{
		{"ecdsa", csr, "hv3", key.Public(), ""},
		{"ed25519", edCSR, "hv4", edPub, ""},
		{"name mismatch", csr, "hv9", nil, "expected"},
		{"tampered", tamperedPEM, "hv3", nil, "sign CSR"},
		{"not pem", []byte("hello"), "hv3", nil, "no PEM"},
		{"cert not csr", ca.CertPEM, "hv3", nil, "no PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			certPEM, err := ca.SignCSR(tc.csr, RoleNode, tc.node, []net.IP{net.IPv4(127, 0, 0, 1)}, t0, time.Hour)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("SignCSR err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := mustCert(t, certPEM)
			if !publicKeysEqual(c.PublicKey, tc.pub) {
				t.Error("certificate is not for the CSR's key")
			}
			if id, err := IdentityOf(c); err != nil || id.Name != tc.node || id.Role != RoleNode {
				t.Errorf("identity %+v, %v", id, err)
			}
		})
	}
}

func TestIdentityOfMalformed(t *testing.T) {
	t.Parallel()
	ca := mustCA(t, "prod")
	u := func(s string) *url.URL {
		p, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		mod  func(*x509.Certificate)
		ok   bool
	}{
		{"valid", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/node/hv1")}
		}, true},
		{"other schemes ignored", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("spiffe://prod/x"), u("corral://prod/node/hv1")}
		}, true},
		{"no uri", func(c *x509.Certificate) { c.Subject.CommonName = "hv1" }, false},
		{"two uris", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/node/hv1"), u("corral://prod/admin/hv1")}
		}, false},
		{"cn mismatch", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv2"
			c.URIs = []*url.URL{u("corral://prod/node/hv1")}
		}, false},
		{"bad role", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/root/hv1")}
		}, false},
		{"extra path", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/node/hv1/x")}
		}, false},
		{"no name", func(c *x509.Certificate) { c.Subject.CommonName = ""; c.URIs = []*url.URL{u("corral://prod/node")} }, false},
		{"user info", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://a@prod/node/hv1")}
		}, false},
		{"query", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/node/hv1?x=1")}
		}, false},
		{"bad cluster", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://Prod/node/hv1")}
		}, false},
		{"is CA", func(c *x509.Certificate) {
			c.Subject.CommonName = "hv1"
			c.URIs = []*url.URL{u("corral://prod/node/hv1")}
			c.IsCA, c.BasicConstraintsValid = true, true
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cr := craft(t, ca, tc.mod)
			id, err := IdentityOf(mustCert(t, cr.CertPEM))
			if (err == nil) != tc.ok {
				t.Fatalf("IdentityOf = %+v, %v; want ok=%v", id, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrNoIdentity) && !errors.Is(err, ErrInvalidName) {
				t.Errorf("error %v is not a domain error", err)
			}
		})
	}
	if _, err := IdentityOf(nil); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("IdentityOf(nil) = %v", err)
	}
}

func TestCredsSaveLoad(t *testing.T) {
	t.Parallel()
	ca, other := mustCA(t, "prod"), mustCA(t, "prod")
	good, err := ca.NewCreds(RoleNode, "hv1", []net.IP{net.IPv4(127, 0, 0, 1)}, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	old := mustCAAt(t, "prod", t0.Add(-72*time.Hour))
	expired, err := old.NewCreds(RoleNode, "hv1", nil, t0.Add(-48*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := good
	_, otherKey.KeyPEM, _ = NewKey()
	otherCA := good
	otherCA.CACertPEM = other.CertPEM
	for _, tc := range []struct {
		name       string
		creds      Creds
		loadOK     bool
		validNowOK bool
	}{
		{"good", good, true, true},
		{"expired loads but is invalid", expired, true, false},
		{"key mismatch", otherKey, false, false},
		{"other CA", otherCA, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "creds", "prod")
			if err := tc.creds.Save(dir); err != nil {
				t.Fatalf("Save: %v", err)
			}
			for _, f := range []string{CACertFile, CertFile, KeyFile} {
				st, err := os.Stat(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
				}
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 3 {
				t.Errorf("dir holds %d entries, want 3 (temp files left?)", len(entries))
			}
			got, err := LoadCreds(dir)
			if (err == nil) != tc.loadOK {
				t.Fatalf("LoadCreds err = %v, want ok=%v", err, tc.loadOK)
			}
			if err == nil {
				if got.Cluster != "prod" || string(got.CertPEM) != string(tc.creds.CertPEM) ||
					string(got.KeyPEM) != string(tc.creds.KeyPEM) || string(got.CACertPEM) != string(tc.creds.CACertPEM) {
					t.Error("loaded credentials differ from saved ones")
				}
			}
			if err := tc.creds.Validate(time.Now()); (err == nil) != tc.validNowOK {
				t.Errorf("Validate = %v, want ok=%v", err, tc.validNowOK)
			}
		})
	}
	if _, err := LoadCreds(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadCreds(empty dir) = %v, want ErrNotExist", err)
	}
}

func TestParseKeyPEMFormats(t *testing.T) {
	t.Parallel()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	pk8, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pem  []byte
		pub  crypto.PublicKey
	}{
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), k.Public()},
		{"pkcs8 ed25519", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}), edKey.Public()},
	} {
		got, err := ParseKeyPEM(tc.pem)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !publicKeysEqual(got.Public(), tc.pub) {
			t.Errorf("%s: wrong key", tc.name)
		}
	}
}
