// Package agent is the node reconcile loop. For every cluster this daemon
// belongs to, it reads the replicated desired state, converges the local
// hypervisor, bridges and volumes to it, and reports what it observes back
// through Raft. It acts only on a state it knows is current (a read index
// confirmed by the leader): a node cut off from its cluster changes
// nothing, so its guests keep running and storage fencing keeps data safe.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/hypervisor"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
)

// Defaults of the agent.
const (
	DefaultResync          = 2 * time.Second
	DefaultInventoryEvery  = 30 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultCallTimeout     = 30 * time.Second
	// DefaultUsageEvery is how often a running VM's usage is refreshed
	// in the cluster state when nothing else about it changes.
	DefaultUsageEvery = 30 * time.Second
)

// Hypervisor is what the agent needs from a libvirt connection.
type Hypervisor interface {
	Host(ctx context.Context) (hypervisor.HostInfo, error)
	Define(ctx context.Context, s hypervisor.Spec) error
	Start(ctx context.Context, name string) error
	Shutdown(ctx context.Context, name string, timeout time.Duration) error
	Destroy(ctx context.Context, name string) error
	Reboot(ctx context.Context, name string) error
	Undefine(ctx context.Context, name string) error
	List(ctx context.Context, cluster string) ([]hypervisor.Domain, error)
	Events(ctx context.Context) (<-chan hypervisor.Event, error)
	OpenConsole(ctx context.Context, name string) (io.ReadWriteCloser, error)
	Disconnected() <-chan struct{}
	Close() error
}

// Config configures an Agent.
type Config struct {
	Node    string
	DataDir string // seeds
	// ConsoleDir holds the serial logs. Use the same path on every node:
	// a migrated guest keeps writing to the path it started with.
	ConsoleDir string
	Dial       func(ctx context.Context) (Hypervisor, error)  // connects to the local libvirtd
	Probe      func(ctx context.Context, h Hypervisor) string // "kvm" or "qemu"
	Logger     *slog.Logger                                   // carries the node key (corrald adds it once)
	Resync     time.Duration
	Networks   NetworkConverger // nil: networks not managed on this node
	Storage    StorageOpener    // nil: only file disks
	Migration  MigrationConfig
}

// Agent reconciles this node for every cluster of the manager.
type Agent struct {
	cfg Config
	m   *cluster.Manager
	log *slog.Logger

	mu       sync.Mutex
	hv       Hypervisor
	hvType   string
	kick     chan struct{}
	vmMemory map[string]*vmMemo // key: cluster/vm

	inventorySent map[string]string
	netSent       map[string]string

	// unconfirmed is, per cluster, since when its state could not be
	// confirmed (no read index): the agent does nothing meanwhile, so a
	// long spell is logged (only the pass goroutine touches it).
	unconfirmed map[string]time.Time
	warnedAt    map[string]time.Time
	memberships int // groups seen by the last pass: a join lays out TLS files
}

// Thresholds past which a pass is worth a warning.
const (
	slowPass         = 5 * time.Second
	unconfirmedAlarm = 5 * time.Second
)

// vmMemo is what the agent remembers of a VM between passes.
type vmMemo struct {
	definedGen  int64
	bootedGen   int64
	rebootSeq   int64 // reboots attempted up to this sequence (not retried)
	rebooted    int64 // reboots carried out up to this sequence (reported)
	expectStop  bool
	stopping    bool
	lastReport  string
	lastFailure string
	usageAt     time.Time // last report carrying the guest's usage
}

// New returns an agent; Run starts it.
func New(cfg Config, m *cluster.Manager) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	return &Agent{cfg: cfg, m: m, log: cfg.Logger, kick: make(chan struct{}, 1),
		vmMemory: map[string]*vmMemo{}, inventorySent: map[string]string{}, netSent: map[string]string{},
		unconfirmed: map[string]time.Time{}, warnedAt: map[string]time.Time{}}
}

// Kick asks for a reconcile pass soon.
func (a *Agent) Kick() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) conn() Hypervisor {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hv
}

// Run reconciles until ctx ends: at each state change, libvirt event, or
// resync tick.
func (a *Agent) Run(ctx context.Context) {
	go a.connectLoop(ctx)
	go a.watchStates(ctx)
	go a.runTasks(ctx)
	t := time.NewTicker(a.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		}
		a.pass(ctx)
	}
}

// watchStates kicks a pass whenever any group's state changes.
func (a *Agent) watchStates(ctx context.Context) {
	for {
		stop := make(chan struct{})
		select {
		case <-ctx.Done():
			close(stop)
			return
		case <-a.stateChanged(stop):
		case <-time.After(5 * time.Second): // groups may have been added
		}
		close(stop)
		a.Kick()
		// Coalesce bursts of applies into one pass.
		time.Sleep(20 * time.Millisecond)
	}
}

// stateChanged closes when any group's state changes; its goroutines end
// with stop.
func (a *Agent) stateChanged(stop <-chan struct{}) <-chan struct{} {
	var chans []<-chan struct{}
	for _, g := range a.m.Groups() {
		_, ch := g.Store.Watch()
		chans = append(chans, ch)
	}
	return anyOf(chans, stop)
}

// connectLoop keeps a libvirt connection, reconnecting when libvirtd
// restarts, and turns lifecycle events into passes.
func (a *Agent) connectLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		hv, err := a.cfg.Dial(ctx)
		if err != nil {
			a.log.Warn("libvirt unreachable", "err", err)
			a.reportInventory(ctx, nil)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		if a.domainType() == "" {
			t := "qemu"
			if a.cfg.Probe != nil {
				t = a.cfg.Probe(ctx, hv)
			}
			a.mu.Lock()
			a.hvType = t
			a.mu.Unlock()
			a.log.Info("hypervisor type", "type", t)
		}
		evs, err := hv.Events(ctx)
		if err != nil {
			a.log.Warn("libvirt events", "err", err)
			hv.Close()
			continue
		}
		a.mu.Lock()
		a.hv = hv
		a.mu.Unlock()
		a.log.Info("connected to libvirt")
		a.reportInventory(ctx, hv)
		a.Kick()
		inv := time.NewTicker(DefaultInventoryEvery)
	loop:
		for {
			select {
			case <-ctx.Done():
				inv.Stop()
				hv.Close()
				return
			case <-hv.Disconnected():
				break loop
			case ev, ok := <-evs:
				if !ok {
					break loop
				}
				a.log.Debug("libvirt event", "domain", ev.Name, "kind", ev.Kind)
				a.Kick()
			case <-inv.C:
				a.syncLibvirtTLS()
				a.reportInventory(ctx, hv)
			}
		}
		inv.Stop()
		a.mu.Lock()
		a.hv = nil
		a.mu.Unlock()
		hv.Close()
		a.log.Warn("libvirt connection lost; reconnecting")
		a.reportInventory(ctx, nil)
	}
}

// reportInventory proposes this node's inventory to every group when it
// changed; a nil hypervisor reports the node not ready (libvirt down), so
// the scheduler places nothing here.
func (a *Agent) reportInventory(ctx context.Context, hv Hypervisor) {
	var inv *pb.Inventory
	if hv != nil {
		cctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
		h, err := hv.Host(cctx)
		cancel()
		if err != nil {
			a.log.Warn("host info", "err", err)
		} else {
			inv = &pb.Inventory{Cpus: int32(h.CPUs), MemoryMib: int64(h.MemoryMiB), Hypervisor: a.domainType(),
				LibvirtVersion: h.LibvirtVersion, QemuVersion: h.QEMUVersion, Hostname: h.Hostname}
		}
	}
	for _, g := range a.m.Groups() {
		if g.Role == pb.NodeRole_NODE_ROLE_WITNESS {
			continue
		}
		key := inv.String()
		a.mu.Lock()
		same := a.inventorySent[g.Name] == key && key != ""
		a.mu.Unlock()
		if same {
			continue
		}
		var cur *pb.Node
		g.Store.Read(func(s *raftstore.State) { cur = s.Nodes[a.cfg.Node] })
		if cur == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_NODE_INVENTORY, &pb.NodeInventoryCommand{
			Name: a.cfg.Node, Inventory: inv, StorageAddress: a.m.AdvertiseIP(),
		}, "node:"+a.cfg.Node)
		cancel()
		if err == nil {
			a.mu.Lock()
			a.inventorySent[g.Name] = key
			a.mu.Unlock()
		}
	}
}

// pass reconciles every group once.
func (a *Agent) pass(ctx context.Context) {
	start := time.Now()
	if n := len(a.m.Groups()); n != a.memberships {
		a.memberships = n
		a.syncLibvirtTLS()
	}
	// Only act on a state confirmed current by the leader: without a
	// quorum, do nothing at all (no self-fencing, guests keep running).
	// One read index per group serves the whole pass.
	var confirmed []*cluster.Group
	all := true
	for _, g := range a.m.Groups() {
		if g.Role == pb.NodeRole_NODE_ROLE_WITNESS {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := a.m.ReadIndex(sctx, g)
		cancel()
		if err != nil {
			a.notConfirmed(g.Name, err)
			all = false
			continue
		}
		if since, ok := a.unconfirmed[g.Name]; ok {
			a.log.Info("cluster state confirmed again; acting", "cluster", g.Name, "after", time.Since(since).Round(time.Millisecond))
			delete(a.unconfirmed, g.Name)
		}
		confirmed = append(confirmed, g)
	}
	confirmedAt := time.Now()
	// Bridges are node-wide: converge them only when every cluster's
	// state is confirmed, never tearing down networking under guests.
	if a.cfg.Networks != nil && all {
		a.convergeNetworks(ctx, confirmed)
	}
	netsAt := time.Now()
	defer func() {
		if d := time.Since(start); d > slowPass {
			a.log.Warn("slow reconcile pass", "took", d.Round(time.Millisecond),
				"read_index", confirmedAt.Sub(start).Round(time.Millisecond),
				"networks", netsAt.Sub(confirmedAt).Round(time.Millisecond),
				"vms", time.Since(netsAt).Round(time.Millisecond))
		}
	}()
	hv := a.conn()
	if hv == nil {
		return
	}
	for _, g := range confirmed {
		if err := a.reconcileVMs(ctx, g, hv); err != nil {
			a.log.Warn("reconcile", "cluster", g.Name, "err", err)
		}
	}
}

// notConfirmed notes a failed read index; a spell longer than
// unconfirmedAlarm is a warning (every 10 s), shorter ones debug.
func (a *Agent) notConfirmed(cluster string, err error) {
	now := time.Now()
	since, ok := a.unconfirmed[cluster]
	if !ok {
		a.unconfirmed[cluster], since = now, now
	}
	if now.Sub(since) < unconfirmedAlarm || now.Sub(a.warnedAt[cluster]) < 10*time.Second {
		a.log.Debug("state not confirmed; not acting", "cluster", cluster, "err", err)
		return
	}
	a.warnedAt[cluster] = now
	a.log.Warn("state not confirmed by the leader; not acting", "cluster", cluster,
		"for", now.Sub(since).Round(time.Second), "err", err)
}

func (a *Agent) memo(cluster, vm string) *vmMemo {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := cluster + "/" + vm
	m, ok := a.vmMemory[k]
	if !ok {
		m = &vmMemo{definedGen: -1, rebootSeq: -1}
		a.vmMemory[k] = m
	}
	return m
}

func (a *Agent) forget(cluster, vm string) {
	a.mu.Lock()
	delete(a.vmMemory, cluster+"/"+vm)
	a.mu.Unlock()
}

// DomainName is the libvirt name of a VM: clusters may reuse VM names.
func DomainName(cluster, vm string) string { return cluster + "-" + vm }

// ConsoleLog is where a VM's serial output is kept on its node.
func (a *Agent) ConsoleLog(cluster, vm string) string {
	return filepath.Join(a.consoleDir(), cluster, vm+".log")
}

func (a *Agent) ensureDirs(cluster string) error {
	return os.MkdirAll(filepath.Join(a.consoleDir(), cluster), 0o750)
}

func (a *Agent) consoleDir() string {
	if a.cfg.ConsoleDir != "" {
		return a.cfg.ConsoleDir
	}
	return filepath.Join(a.cfg.DataDir, "console")
}

var errNotHere = errors.New("vm does not run on this node")

func (a *Agent) actor() string { return "node:" + a.cfg.Node }

func wrapf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// domainType is the probed hypervisor type ("kvm" or "qemu"), "" before
// the first connection.
func (a *Agent) domainType() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hvType
}
