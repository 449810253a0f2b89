package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/minet/corral/cloudinit"
	"github.com/minet/corral/cluster"
	"github.com/minet/corral/hypervisor"
	"github.com/minet/corral/netbridge"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"github.com/minet/corral/storage"
)

// NetworkConverger builds this node's bridges.
type NetworkConverger interface {
	Apply(ctx context.Context, nets []netbridge.Network) []netbridge.Status
	BridgeFor(n netbridge.Network) string
}

// StorageOpener opens a pool's backend on this node. key is the pool's
// secret in clear (unsealed by the agent), empty for dir pools.
type StorageOpener func(ctx context.Context, pool *pb.StoragePool, key string) (storage.Backend, error)

// MigrationConfig says how to reach other nodes' libvirtd.
type MigrationConfig struct {
	// URITemplate is the destination libvirt URI with %s for the node's
	// IP, e.g. "qemu+tls://%s/system" (production) or "qemu+tcp://%s/system".
	// With qemu+tls and PKI the QEMU stream is encrypted too
	// (VIR_MIGRATE_TLS).
	URITemplate string
	Unsafe      bool
	// PKI, when set, is where the agent lays out this node's cluster
	// certificate for libvirtd and QEMU (normally /etc/pki).
	PKI *pki.LibvirtTLS
}

// tls reports whether QEMU's migration stream is encrypted too: with a
// qemu+tls:// URI when corral lays out QEMU's x509 files (PKI); with
// certificates managed by hand, /etc/pki/qemu may not exist, and asking
// for it would fail every migration.
func (m MigrationConfig) tls() bool {
	return m.PKI != nil && strings.HasPrefix(m.template(), "qemu+tls://")
}

func (m MigrationConfig) template() string {
	if m.URITemplate == "" {
		return "qemu+tls://%s/system"
	}
	return m.URITemplate
}

// cephSecretUsage names the libvirt secret of a pool.
func cephSecretUsage(cluster, pool string) string { return "corral " + cluster + "/" + pool }

// cephSecretUUID is stable per cluster and pool.
func cephSecretUUID(cluster, pool string) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte("corral:ceph:"+cluster+"/"+pool)).String()
}

// netName is the netbridge name of a cluster's network: clusters may reuse
// network names on one node.
func netName(cluster, name string) string { return cluster + "-" + name }

func (a *Agent) bridgeNetwork(cluster string, n *pb.Network) netbridge.Network {
	uplink := n.Uplink
	if u, ok := n.NodeUplinks[a.cfg.Node]; ok && u != "" {
		uplink = u
	}
	return netbridge.Network{Name: netName(cluster, n.Name), VLAN: int(n.Vlan), Kind: netbridge.Kind(n.Kind),
		Uplink: uplink, MTU: int(n.Mtu), STP: n.Stp, Priority: int(n.Priority)}
}

// domainSpec turns a VM into a libvirt domain spec for this node.
func (a *Agent) domainSpec(ctx context.Context, g *cluster.Group, st *raftstore.State, nets map[string]*pb.Network, v *pb.VM) (hypervisor.Spec, error) {
	spec := v.Spec
	if spec.Kernel != "" {
		if _, err := os.Stat(spec.Kernel); err != nil {
			return hypervisor.Spec{}, fmt.Errorf("kernel %s not found on node %s", spec.Kernel, a.cfg.Node)
		}
	}
	if spec.Initrd != "" {
		if _, err := os.Stat(spec.Initrd); err != nil {
			return hypervisor.Spec{}, fmt.Errorf("initrd %s not found on node %s", spec.Initrd, a.cfg.Node)
		}
	}
	out := hypervisor.Spec{
		Name: DomainName(g.Name, v.Name), UUID: v.Uuid, Cluster: g.Name, VMID: v.Name,
		Type: hypervisor.DomainType(a.domainType()), VCPUs: int(spec.Vcpus), MemoryMiB: int(spec.MemoryMib),
		Machine: spec.Machine, CPUModel: spec.CpuModel, Kernel: spec.Kernel, Initrd: spec.Initrd, Cmdline: spec.Cmdline,
		UEFI: spec.Uefi, SerialLog: a.ConsoleLog(g.Name, v.Name), VNC: spec.Vnc, GuestAgent: spec.GuestAgent,
	}
	if out.Type == "" {
		out.Type = "qemu"
	}
	for i, d := range spec.Disks {
		pool, ok := st.Pools[d.Pool]
		if !ok {
			return hypervisor.Spec{}, fmt.Errorf("storage pool %q not found", d.Pool)
		}
		be, err := a.backend(ctx, g, pool)
		if err != nil {
			return hypervisor.Spec{}, err
		}
		sd := be.Disk(d.Volume)
		target := d.Target
		if target == "" {
			target = "vd" + string(rune('a'+i))
		}
		hd := hypervisor.Disk{Target: target, Format: sd.Format, ReadOnly: d.ReadOnly, File: sd.File}
		if sd.RBD != nil {
			hd.RBD = &hypervisor.RBDSource{Pool: sd.RBD.Pool, Image: sd.RBD.Image, Monitors: sd.RBD.Monitors,
				User: sd.RBD.User, SecretUUID: cephSecretUUID(g.Name, pool.Name)}
		}
		out.Disks = append(out.Disks, hd)
	}
	if ci := spec.CloudInit; ci != nil {
		seed, err := a.buildSeed(g.Name, v)
		if err != nil {
			return hypervisor.Spec{}, err
		}
		out.Disks = append(out.Disks, hypervisor.Disk{Target: "vd" + string(rune('a'+len(out.Disks))), Format: "raw", ReadOnly: true, File: seed})
	}
	for _, nic := range spec.Nics {
		n, ok := nets[nic.Network]
		if !ok {
			return hypervisor.Spec{}, fmt.Errorf("network %q not found", nic.Network)
		}
		bn := a.bridgeNetwork(g.Name, n)
		hn := hypervisor.NIC{MAC: nic.Mac, Bridge: netbridge.BridgeFor(bn)}
		if n.Kind == "ovs" {
			hn.OVS, hn.VLAN = true, int(n.Vlan)
		}
		out.NICs = append(out.NICs, hn)
	}
	return out, nil
}

func (a *Agent) buildSeed(clusterName string, v *pb.VM) (string, error) {
	ci := v.Spec.CloudInit
	dir := filepath.Join(a.cfg.DataDir, "seeds", clusterName)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	path := filepath.Join(dir, v.Name+".img")
	host := ci.Hostname
	if host == "" {
		host = v.Name
	}
	c := cloudinit.Config{InstanceID: v.Uuid, Hostname: host}
	if ci.User != "" || len(ci.SshAuthorizedKeys) > 0 {
		user := ci.User
		if user == "" {
			user = "admin"
		}
		c.Users = append(c.Users, cloudinit.User{Name: user, SSHAuthorizedKeys: ci.SshAuthorizedKeys})
	}
	if err := cloudinit.BuildSeed(path, c); err != nil {
		return "", fmt.Errorf("cloud-init seed: %w", err)
	}
	return path, nil
}

// storages caches opened backends per cluster/pool.
type storages struct {
	mu sync.Mutex
	m  map[string]storage.Backend
}

var backends = storages{m: map[string]storage.Backend{}}

func (a *Agent) backend(ctx context.Context, g *cluster.Group, pool *pb.StoragePool) (storage.Backend, error) {
	key := g.Name + "/" + pool.Name + "/" + pool.SealedKey + "/" + strings.Join(pool.Monitors, ",")
	backends.mu.Lock()
	be, ok := backends.m[key]
	backends.mu.Unlock()
	if ok {
		return be, nil
	}
	if a.cfg.Storage == nil {
		return nil, fmt.Errorf("storage is not configured on node %s", a.cfg.Node)
	}
	secret := ""
	if pool.SealedKey != "" {
		b, err := pki.Unseal(g.SealKey, pool.SealedKey)
		if err != nil {
			return nil, fmt.Errorf("unseal key of pool %s: %w", pool.Name, err)
		}
		secret = string(b)
	}
	// Opened without the lock: an unreachable cluster takes its timeout,
	// and other pools must not wait for it.
	be, err := a.cfg.Storage(ctx, pool, secret)
	if err != nil {
		return nil, fmt.Errorf("open storage pool %s: %w", pool.Name, err)
	}
	if pool.Kind == "rbd" {
		if hv := a.conn(); hv != nil {
			if d, ok := hv.(interface {
				DefineCephSecret(ctx context.Context, uuid, usage, key string) error
			}); ok {
				if err := d.DefineCephSecret(ctx, cephSecretUUID(g.Name, pool.Name), cephSecretUsage(g.Name, pool.Name), secret); err != nil {
					be.Close()
					return nil, fmt.Errorf("libvirt ceph secret: %w", err)
				}
			}
		}
	}
	backends.mu.Lock()
	defer backends.mu.Unlock()
	if won, ok := backends.m[key]; ok {
		be.Close()
		return won, nil
	}
	backends.m[key] = be
	return be, nil
}

// prepareStart runs before a VM starts here: for RBD disks, wait for the
// latest OSD map so a blocklist entry that fenced a previous owner is in
// force before this node opens the image.
func (a *Agent) prepareStart(ctx context.Context, g *cluster.Group, v *pb.VM) error {
	var pools []*pb.StoragePool
	g.Store.Read(func(s *raftstore.State) {
		for _, d := range v.Spec.Disks {
			if p, ok := s.Pools[d.Pool]; ok {
				pools = append(pools, p)
			}
		}
	})
	for _, p := range pools {
		be, err := a.backend(ctx, g, p)
		if err != nil {
			return err
		}
		if w, ok := be.(interface{ WaitForLatestOSDMap(context.Context) error }); ok {
			if err := w.WaitForLatestOSDMap(ctx); err != nil {
				return fmt.Errorf("wait for latest OSD map: %w", err)
			}
		}
	}
	return nil
}

// deleteDisks removes the volumes of a deleted VM (unless templates).
func (a *Agent) deleteDisks(ctx context.Context, g *cluster.Group, v *pb.VM) {
	_ = os.Remove(filepath.Join(a.cfg.DataDir, "seeds", g.Name, v.Name+".img"))
}

// convergeNetworks applies the networks of groups (every voter membership
// of this node, each with a confirmed state) at once, as bridges are
// node-wide, and reports per-network status when it changed.
func (a *Agent) convergeNetworks(ctx context.Context, groups []*cluster.Group) {
	type owned struct {
		g    *cluster.Group
		name string
	}
	var (
		all   []netbridge.Network
		owner = map[string]owned{}
	)
	for _, g := range groups {
		g.Store.Read(func(s *raftstore.State) {
			for _, n := range s.SortedNetworks() {
				bn := a.bridgeNetwork(g.Name, n)
				all = append(all, bn)
				owner[bn.Name] = owned{g, n.Name}
			}
		})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	statuses := a.cfg.Networks.Apply(ctx, all)
	reports := map[*cluster.Group]map[string]*pb.NetworkStatus{}
	for _, st := range statuses {
		o, ok := owner[st.Network]
		if !ok {
			continue
		}
		if reports[o.g] == nil {
			reports[o.g] = map[string]*pb.NetworkStatus{}
		}
		reports[o.g][o.name] = &pb.NetworkStatus{Applied: st.Applied, Bridge: st.Bridge, Error: st.Error}
	}
	for g, rep := range reports {
		key := fmt.Sprint(sortedReport(rep))
		a.mu.Lock()
		same := a.netSent[g.Name] == key
		a.mu.Unlock()
		if same {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_NETWORK_STATUS, &pb.NetworkStatusCommand{Node: a.cfg.Node, Status: rep}, a.actor())
		cancel()
		if err == nil {
			a.mu.Lock()
			a.netSent[g.Name] = key
			a.mu.Unlock()
		}
	}
}

func sortedReport(m map[string]*pb.NetworkStatus) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v.String())
	}
	sort.Strings(out)
	return out
}
