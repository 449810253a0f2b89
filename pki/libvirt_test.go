package pki

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLibvirtTLSWrite(t *testing.T) {
	now := time.Now()
	prod, err := NewCA("prod", now)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := NewCA("dev", now)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := prod.NewCreds(RoleNode, "atlantis", []net.IP{net.ParseIP("10.0.0.1")}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	devCreds, err := dev.NewCreds(RoleNode, "atlantis", nil, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l := LibvirtTLS{Dir: t.TempDir(), QEMUGroup: "no-such-group-here"}
	changed, err := l.Write(creds, devCreds.CACertPEM, creds.CACertPEM)
	if err != nil || !changed {
		t.Fatalf("first Write = %v, %v; want changed", changed, err)
	}
	read := func(rel string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(l.Dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The bundle trusts both clusters, each once.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(read("CA/cacert.pem")) {
		t.Fatal("CA bundle does not parse")
	}
	if n := len(roots.Subjects()); n != 2 { //nolint:staticcheck // counting our own CAs
		t.Errorf("CA bundle holds %d certificates, want 2 (prod and dev once each)", n)
	}
	// libvirt and QEMU check the certificate as server and as client,
	// against the bundle, with the node's IP, and the key usages GnuTLS
	// insists on.
	for _, rel := range []string{"libvirt/servercert.pem", "libvirt/clientcert.pem", "qemu/server-cert.pem", "qemu/client-cert.pem"} {
		cert, err := ParseCertPEM(read(rel))
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Errorf("%s does not verify for %v: %v", rel, usage, err)
			}
		}
		if err := cert.VerifyHostname("10.0.0.1"); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
		if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
			t.Errorf("%s: key usage %b lacks digital signature or key encipherment", rel, cert.KeyUsage)
		}
	}
	for _, rel := range []string{"libvirt/private/serverkey.pem", "libvirt/private/clientkey.pem", "qemu/server-key.pem", "qemu/client-key.pem"} {
		if _, err := ParseKeyPEM(read(rel)); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
		fi, err := os.Stat(filepath.Join(l.Dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600 (no QEMU group here)", rel, fi.Mode().Perm())
		}
	}
	// Same input: nothing rewritten.
	if changed, err := l.Write(creds, devCreds.CACertPEM); err != nil || changed {
		t.Errorf("second Write = %v, %v; want unchanged", changed, err)
	}
	// Right content, wrong mode (a failed chmod or chown earlier): fixed.
	bundlePath := filepath.Join(l.Dir, "CA/cacert.pem")
	if err := os.Chmod(bundlePath, 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := l.Write(creds, devCreds.CACertPEM); err != nil || !changed {
		t.Errorf("Write over a file with the wrong mode = %v, %v; want changed", changed, err)
	}
	if fi, err := os.Stat(bundlePath); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o644 {
		t.Errorf("CA bundle mode after Write: %v, want 0644", fi.Mode().Perm())
	}
	// A renewed certificate is written.
	renewed, err := prod.NewCreds(RoleNode, "atlantis", []net.IP{net.ParseIP("10.0.0.1")}, now, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := l.Write(renewed, devCreds.CACertPEM); err != nil || !changed {
		t.Errorf("Write of renewed credentials = %v, %v; want changed", changed, err)
	}
	if _, err := (LibvirtTLS{Dir: l.Dir}).Write(Creds{}); err == nil {
		t.Error("Write without a certificate succeeded")
	}
}
