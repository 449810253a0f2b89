package pki

import (
	"bytes"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// LibvirtTLS lays out a node's credentials where libvirtd and QEMU look for
// their TLS files (the layout of libvirt's "TLS x509 certificate" guide),
// so live migration runs over qemu+tls:// with an encrypted QEMU stream
// (VIR_MIGRATE_TLS), authenticated by the cluster CA:
//
//	DIR/CA/cacert.pem                       CAs trusted by libvirtd
//	DIR/libvirt/{server,client}cert.pem     this node's certificate
//	DIR/libvirt/private/{server,client}key.pem
//	DIR/qemu/ca-cert.pem, {server,client}-{cert,key}.pem
//
// DIR is /etc/pki in production. Node certificates are both server and
// client certificates with the node's IPs, as libvirt and QEMU check.
type LibvirtTLS struct {
	Dir string
	// QEMUGroup may read the QEMU key (QEMU runs as libvirt-qemu on
	// Debian); "" or a group that does not exist keeps it root-only.
	QEMUGroup string
}

// Write writes creds (this node's identity) and trusts every CA of cas
// (the CAs of all clusters this node belongs to; creds' own CA is always
// trusted). Files are replaced atomically and only when they differ, so a
// periodic call costs nothing. It reports whether anything changed:
// libvirtd reads its certificates at start only.
func (l LibvirtTLS) Write(creds Creds, cas ...[]byte) (changed bool, err error) {
	if len(creds.CertPEM) == 0 || len(creds.KeyPEM) == 0 {
		return false, fmt.Errorf("libvirt TLS files in %s: no node certificate", l.Dir)
	}
	bundle := append([]byte(nil), creds.CACertPEM...)
	for _, ca := range cas {
		if !bytes.Contains(bundle, bytes.TrimSpace(ca)) {
			bundle = append(bundle, ca...)
		}
	}
	gid := -1
	if l.QEMUGroup != "" {
		if g, err := user.LookupGroup(l.QEMUGroup); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
		gid  int
	}{
		{"CA/cacert.pem", bundle, 0o644, -1},
		{"libvirt/servercert.pem", creds.CertPEM, 0o644, -1},
		{"libvirt/clientcert.pem", creds.CertPEM, 0o644, -1},
		{"libvirt/private/serverkey.pem", creds.KeyPEM, 0o600, -1},
		{"libvirt/private/clientkey.pem", creds.KeyPEM, 0o600, -1},
		{"qemu/ca-cert.pem", bundle, 0o644, -1},
		{"qemu/server-cert.pem", creds.CertPEM, 0o644, -1},
		{"qemu/client-cert.pem", creds.CertPEM, 0o644, -1},
		{"qemu/server-key.pem", creds.KeyPEM, 0o640, gid},
		{"qemu/client-key.pem", creds.KeyPEM, 0o640, gid},
	}
	for _, f := range files {
		path := filepath.Join(l.Dir, f.path)
		mode := f.mode
		if mode == 0o640 && f.gid < 0 {
			mode = 0o600
		}
		if same(path, f.data, mode, f.gid) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return changed, fmt.Errorf("libvirt TLS files: %w", err)
		}
		if err := writeFileMode(path, f.data, mode, f.gid); err != nil {
			return changed, fmt.Errorf("libvirt TLS files: write %s: %w", path, err)
		}
		changed = true
	}
	return changed, nil
}

// same reports whether path holds data with mode and, if gid >= 0, that
// group: a file whose content is right but whose mode or group is not (a
// failed chown, a group created since) is written again.
func same(path string, data []byte, mode os.FileMode, gid int) bool {
	cur, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(cur, data) {
		return false
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != mode {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && gid >= 0 && int(st.Gid) != gid {
		return false
	}
	return true
}

// writeFileMode replaces path atomically by a file holding data with mode
// and, if gid >= 0, that group, set before the rename so that no reader
// ever sees the file with other permissions.
func writeFileMode(path string, data []byte, mode os.FileMode, gid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	err = tmp.Chmod(mode)
	if err == nil && gid >= 0 {
		err = tmp.Chown(-1, gid)
	}
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
