// Command corrald is the daemon every node runs: it holds the node's
// cluster memberships (Raft groups), serves the gRPC API on TLS and on a
// local unix socket, and runs the node agent. Wiring and flags only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/minet/corral/agent"
	"github.com/minet/corral/api"
	"github.com/minet/corral/cluster"
	"github.com/minet/corral/ha"
	"github.com/minet/corral/hypervisor"
	"github.com/minet/corral/netbridge"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/storage"
	"github.com/minet/corral/storage/dir"
	"github.com/minet/corral/storage/rbd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "corrald:", err)
		os.Exit(1)
	}
}

func run() error {
	host, _ := os.Hostname()
	var (
		name        = flag.String("name", host, "node name (DNS label)")
		dataDir     = flag.String("data-dir", "/var/lib/corral", "data directory (memberships, raft logs, consoles)")
		listen      = flag.String("listen", ":7443", "TLS gRPC API address (host:port)")
		advertise   = flag.String("advertise", "", "IP other nodes and Ceph see for this node (default: host of --listen)")
		socket      = flag.String("socket", "/run/corral/corrald.sock", "local admin unix socket (root on this host is admin of every cluster)")
		metrics     = flag.String("metrics", "", "Prometheus metrics (and /debug/pprof) address (host:port), empty to disable")
		libvirtSock = flag.String("libvirt-socket", "/run/libvirt/libvirt-sock", "libvirtd unix socket")
		noAgent     = flag.Bool("no-agent", false, "do not manage VMs on this node (pure witness)")
		raftBase    = flag.Int("raft-port", cluster.DefaultRaftPortBase, "first Raft port; each cluster membership takes the next free one")
		ovsdb       = flag.String("ovsdb-socket", "", "ovsdb-server unix socket for OVS networks (empty: OVS unsupported here)")
		migrateURI  = flag.String("migration-uri", "qemu+tls://%s/system", "destination libvirt URI template for live migration (%s = node IP)")
		libvirtPKI  = flag.String("libvirt-pki-dir", "", "lay out this node's cluster certificate for libvirtd and QEMU TLS under this directory (production: /etc/pki; libvirtd needs listen_tls); empty: certificates are managed by hand")
		migrateUnsf = flag.Bool("migration-unsafe", false, "allow migrating disks libvirt cannot prove shared (tests only)")
		probeKernel = flag.String("kvm-probe-kernel", "", "kernel for the KVM probe guest (empty: assume TCG unless /dev/kvm probing is possible)")
		probeInitrd = flag.String("kvm-probe-initrd", "", "initrd for the KVM probe guest")
		consoleDir  = flag.String("console-dir", "/var/log/corral/console", "serial console logs (same path on every node: a migrated guest keeps its log path)")
		verbose     = flag.Bool("v", false, "debug logs")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", *name)
	slog.SetDefault(log)

	ip := *advertise
	if ip == "" {
		h, _, err := net.SplitHostPort(*listen)
		if err != nil || h == "" {
			return errors.New("--advertise is required when --listen has no host")
		}
		ip = h
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector())
	m := cluster.New(cluster.Config{NodeName: *name, DataDir: *dataDir, AdvertiseIP: ip,
		APIAddr: net.JoinHostPort(ip, portOf(*listen)), RaftPortBase: *raftBase, Logger: log,
		Observe: newRaftLatency(reg)})
	if err := m.Restore(); err != nil {
		return err
	}
	defer m.Close()

	srv := api.New(m, nil, log, reg)
	reg.MustRegister(newRaftCollector(m))

	if !*noAgent {
		var nets agent.NetworkConverger
		if conv, err := netbridge.New(netbridge.Options{OVSDBSock: *ovsdb, Logger: log}); err != nil {
			log.Warn("networks unmanaged on this node", "err", err)
		} else {
			defer conv.Close()
			nets = conv
		}
		if strings.HasPrefix(*migrateURI, "qemu+tls://") && *libvirtPKI == "" {
			log.Warn("live migration: libvirt connection over TLS with certificates managed by hand; QEMU's migration stream is not encrypted (set --libvirt-pki-dir /etc/pki to let corrald lay out the cluster's certificates and encrypt it)")
		}
		ag := agent.New(agent.Config{
			Node: *name, DataDir: *dataDir, ConsoleDir: *consoleDir, Logger: log, Networks: nets,
			Dial: func(ctx context.Context) (agent.Hypervisor, error) {
				return hypervisor.Dial(ctx, *libvirtSock)
			},
			Probe: func(ctx context.Context, h agent.Hypervisor) string {
				c, ok := h.(*hypervisor.Conn)
				if !ok || *probeKernel == "" {
					return "qemu"
				}
				t, err := c.ProbeKVM(ctx, *probeKernel, *probeInitrd, 20*time.Second)
				if err != nil {
					log.Warn("kvm probe failed; using TCG", "err", err)
					return "qemu"
				}
				return string(t)
			},
			Storage:   openStorage(*dataDir),
			Migration: agent.MigrationConfig{URITemplate: *migrateURI, Unsafe: *migrateUnsf, PKI: pkiLayout(*libvirtPKI)},
		}, m)
		srv.SetNode(ag)
		go ag.Run(ctx)
	}
	go m.Run(ctx)
	go ha.New(m, log).Run(ctx)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	tlsSrv := srv.GRPCServer(false)
	go func() { _ = tlsSrv.Serve(ln) }()
	defer tlsSrv.Stop()

	if err := os.MkdirAll(filepath.Dir(*socket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(*socket)
	uln, err := net.Listen("unix", *socket)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *socket, err)
	}
	_ = os.Chmod(*socket, 0o600)
	localSrv := srv.GRPCServer(true)
	go func() { _ = localSrv.Serve(uln) }()
	defer localSrv.Stop()

	if *metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		hs := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.ListenAndServe() }()
		defer hs.Close()
	}
	log.Info("corrald ready", "api", *listen, "socket", *socket, "clusters", len(m.Groups()))
	<-ctx.Done()
	log.Info("corrald stopping")
	return nil
}

func portOf(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "7443"
	}
	return p
}

// openStorage opens pool backends on this node.
func openStorage(dataDir string) agent.StorageOpener {
	return func(ctx context.Context, p *pb.StoragePool, key string) (storage.Backend, error) {
		switch p.Kind {
		case "dir":
			return dir.New(p.Path)
		case "rbd":
			return rbd.Open(ctx, rbd.Config{Monitors: p.Monitors, User: p.User, Key: key, Pool: p.CephPool})
		}
		return nil, fmt.Errorf("unknown storage kind %q", p.Kind)
	}
}

// pkiLayout is where the agent writes libvirt's TLS files, nil for none.
func pkiLayout(dir string) *pki.LibvirtTLS {
	if dir == "" {
		return nil
	}
	return &pki.LibvirtTLS{Dir: dir, QEMUGroup: "libvirt-qemu"}
}
