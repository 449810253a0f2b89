package agent

import (
	"sort"

	pb "github.com/minet/corral/proto/corral/v1"
)

// syncLibvirtTLS lays out this node's certificate for libvirtd and QEMU
// (Migration.PKI), so live migration runs over libvirt's TLS transport
// authenticated by the cluster CA. The identity comes from the first
// cluster (by name) this node runs VMs in, witness memberships last; every
// cluster's CA is trusted. Unchanged files are left alone.
func (a *Agent) syncLibvirtTLS() {
	l := a.cfg.Migration.PKI
	if l == nil {
		return
	}
	groups := a.m.Groups()
	if len(groups) == 0 {
		return
	}
	sort.SliceStable(groups, func(i, j int) bool {
		wi, wj := groups[i].Role == pb.NodeRole_NODE_ROLE_WITNESS, groups[j].Role == pb.NodeRole_NODE_ROLE_WITNESS
		if wi != wj {
			return !wi
		}
		return groups[i].Name < groups[j].Name
	})
	var cas [][]byte
	for _, g := range groups {
		cas = append(cas, g.Creds.CACertPEM)
	}
	changed, err := l.Write(groups[0].Creds, cas...)
	switch {
	case err != nil:
		a.log.Error("libvirt TLS files", "dir", l.Dir, "err", err)
	case changed:
		// libvirtd reads its certificates at start (or on
		// `virt-admin server-update-tls libvirtd`); QEMU at each migration.
		a.log.Info("libvirt TLS files written; libvirtd loads them at its next start or on 'virt-admin server-update-tls libvirtd'",
			"dir", l.Dir, "identity_cluster", groups[0].Name)
	}
}
