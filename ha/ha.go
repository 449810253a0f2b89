// Package ha restarts the VMs of a lost node elsewhere. It runs on every
// daemon but acts only where this node leads a cluster (and never on a
// witness while a voter could lead): it turns heartbeat silence into
// suspect and down, fences the lost node on storage (a Ceph blocklist entry
// with a long expiry) before anything else, and only then re-places its HA
// VMs. Every decision is recorded as an event through Raft.
package ha

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"github.com/minet/corral/scheduler"
	"github.com/minet/corral/storage/rbd"
	"google.golang.org/protobuf/proto"
)

// Defaults of the HA loop.
const (
	DefaultTick         = 250 * time.Millisecond
	DefaultFenceExpiry  = 30 * 24 * time.Hour
	DefaultFenceTimeout = 15 * time.Second
)

// Fencer blocklists and unblocklists a node's storage address. sealKey
// unseals the pools' stored credentials.
type Fencer interface {
	Fence(ctx context.Context, sealKey []byte, pools []*pb.StoragePool, addr string) error
	Unfence(ctx context.Context, sealKey []byte, pools []*pb.StoragePool, addr string) error
}

// group is what HA needs of this node's membership of one cluster; a
// *cluster.Group provides it through clusterGroup.
type group interface {
	Name() string
	Witness() bool // this node is a witness in this cluster
	SealKey() []byte
	IsLeader() bool
	Term() uint64 // the current Raft term
	LeaderSince() time.Time
	// PreviousLeader is the leader this node followed before it led, and
	// that leader's last contact with it.
	PreviousLeader() (string, time.Time)
	LastHeartbeat(node string) (time.Time, bool)
	Read(fn func(*raftstore.State))
	Barrier(ctx context.Context) error
	Propose(ctx context.Context, t pb.CommandType, payload proto.Message, actor string) (any, error)
}

// clusterGroup adapts a *cluster.Group to group.
type clusterGroup struct{ g *cluster.Group }

func (c clusterGroup) Name() string                        { return c.g.Name }
func (c clusterGroup) Witness() bool                       { return c.g.Role == pb.NodeRole_NODE_ROLE_WITNESS }
func (c clusterGroup) SealKey() []byte                     { return c.g.SealKey }
func (c clusterGroup) IsLeader() bool                      { return c.g.Store.IsLeader() }
func (c clusterGroup) Term() uint64                        { return c.g.Store.Raft().CurrentTerm() }
func (c clusterGroup) LeaderSince() time.Time              { return c.g.LeaderSince() }
func (c clusterGroup) PreviousLeader() (string, time.Time) { return c.g.PreviousLeader() }
func (c clusterGroup) Read(fn func(*raftstore.State))      { c.g.Store.Read(fn) }
func (c clusterGroup) Barrier(ctx context.Context) error   { return c.g.Store.Barrier(ctx) }
func (c clusterGroup) LastHeartbeat(node string) (time.Time, bool) {
	return c.g.LastHeartbeat(node)
}
func (c clusterGroup) Propose(ctx context.Context, t pb.CommandType, payload proto.Message, actor string) (any, error) {
	return c.g.Propose(ctx, t, payload, actor)
}

// HA is the failure detector and restarter.
type HA struct {
	self   string         // this node's name
	groups func() []group // this node's memberships
	log    *slog.Logger
	fencer Fencer
	now    func() time.Time
	// terms remembers, per cluster, the Raft term this node last led and
	// when HA first saw it lead in that term.
	terms map[string]leaderTerm
}

type leaderTerm struct {
	term  uint64
	since time.Time
}

// New returns an HA loop fencing through Ceph.
func New(m *cluster.Manager, log *slog.Logger) *HA {
	groups := func() []group {
		var out []group
		for _, g := range m.Groups() {
			out = append(out, clusterGroup{g})
		}
		return out
	}
	return &HA{self: m.NodeName(), groups: groups, log: log, fencer: cephFencer{}, now: time.Now, terms: map[string]leaderTerm{}}
}

// leaderSince returns from when heartbeat silence may be counted in this
// leadership. Every leadership has a new Raft term, so a step-down and
// re-election between two ticks cannot go unnoticed (the manager's
// LeaderSince is refreshed on its own, slower tick and may still date from
// the previous leadership, when heartbeats stopped during a partition).
func (h *HA) leaderSince(g group, now time.Time) time.Time {
	term := g.Term()
	if h.terms == nil {
		h.terms = map[string]leaderTerm{}
	}
	lt, ok := h.terms[g.Name()]
	if !ok || lt.term != term {
		lt = leaderTerm{term: term, since: now}
		h.terms[g.Name()] = lt
	}
	if s := g.LeaderSince(); s.After(lt.since) {
		return s
	}
	return lt.since
}

// Run checks every cluster this node leads at each tick until ctx ends.
func (h *HA) Run(ctx context.Context) {
	t := time.NewTicker(DefaultTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.tick(ctx)
	}
}

// tick checks once every cluster this node leads as a voter.
func (h *HA) tick(ctx context.Context) {
	for _, g := range h.groups() {
		if g.IsLeader() && !g.Witness() {
			h.check(ctx, g)
		}
	}
}

func (h *HA) check(ctx context.Context, g group) {
	var (
		st       *raftstore.State
		settings *pb.Settings
	)
	g.Read(func(s *raftstore.State) { st, settings = s.Copy(), s.Settings() })
	now := h.now()
	if g.LeaderSince().IsZero() {
		return
	}
	since := h.leaderSince(g, now)
	suspectAfter := time.Duration(settings.SuspectAfterMs) * time.Millisecond
	downAfter := time.Duration(settings.DownAfterMs) * time.Millisecond
	var silentNodes []string // suspect or down: no place to restart a VM
	prev, prevContact := g.PreviousLeader()
	for _, n := range st.SortedNodes() {
		if n.Name == h.self {
			continue
		}
		last, ok := g.LastHeartbeat(n.Name)
		if !ok || last.Before(since) {
			// Count silence from when this node became leader: it has no
			// heartbeats from before. The previous leader is the
			// exception: this node heard from it last at prevContact, and
			// its crash is what made this election (a lost leader's VMs
			// would otherwise wait an election and a full suspect delay
			// longer than any other node's).
			last = since
			if n.Name == prev && !prevContact.IsZero() && prevContact.Before(since) {
				last = prevContact
			}
		}
		silent := now.Sub(last)
		if silent >= suspectAfter {
			silentNodes = append(silentNodes, n.Name)
		}
		switch {
		case silent < suspectAfter:
			h.alive(ctx, g, st, n)
		case silent < downAfter:
			if n.Health == pb.NodeHealth_NODE_HEALTH_READY {
				h.health(ctx, g, &pb.NodeHealthCommand{Name: n.Name, Health: pb.NodeHealth_NODE_HEALTH_SUSPECT,
					Reason: fmt.Sprintf("no heartbeat for %s", silent.Round(time.Millisecond))})
			}
		default:
			h.down(ctx, g, st, n, silent)
		}
	}
	h.restart(ctx, g, st, settings, silentNodes)
	h.sweepTasks(ctx, g, st)
}

// sweepTasks fails the unfinished tasks of a node declared down: nobody
// else will finish them, and a caller waiting on one must hear why.
func (h *HA) sweepTasks(ctx context.Context, g group, st *raftstore.State) {
	for _, t := range st.SortedTasks() {
		if raftstore.TaskFinished(t.State) || t.Node == "" {
			continue
		}
		n, ok := st.Nodes[t.Node]
		if ok && n.Health != pb.NodeHealth_NODE_HEALTH_DOWN {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_TASK_UPDATE, &pb.TaskUpdateCommand{
			Id: t.Id, State: pb.TaskState_TASK_STATE_FAILED, Error: fmt.Sprintf("node %s running this task was lost", t.Node),
		}, "ha")
		cancel()
		if err != nil {
			h.log.Warn("ha: fail orphaned task", "cluster", g.Name(), "task", t.Id, "err", err)
		}
		if t.Kind == "vm.migrate" && t.Params["vm"] != "" {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VM_MIGRATING, &pb.VMMigratingCommand{Name: t.Params["vm"]}, "ha")
			cancel()
		}
	}
}

func (h *HA) health(ctx context.Context, g group, c *pb.NodeHealthCommand) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_NODE_HEALTH, c, "ha")
	if err != nil {
		h.log.Warn("ha: node health", "cluster", g.Name(), "node", c.Name, "err", err)
	}
	return err
}

// alive handles a node that heartbeats: back to ready, and a fenced node
// that reported itself clean is unblocklisted, then unfenced.
func (h *HA) alive(ctx context.Context, g group, st *raftstore.State, n *pb.Node) {
	if n.Fenced {
		if !n.FenceClean {
			return // it must first destroy its stale guests
		}
		// Lifting the blocklist is as irreversible as setting it, and the
		// Raft check of the unfence command comes only after it: confirm
		// leadership, then decide on the state as of that barrier (st may
		// predate entries a new leader had not applied yet, such as a
		// re-fence of this node).
		bctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := g.Barrier(bctx)
		cancel()
		if err != nil {
			return
		}
		var (
			cur   *pb.Node // entries are replaced, never changed in place
			pools []*pb.StoragePool
		)
		g.Read(func(s *raftstore.State) { cur, pools = s.Nodes[n.Name], rbdPools(s) })
		if cur == nil || !cur.Fenced || !cur.FenceClean {
			return
		}
		fctx, cancel := context.WithTimeout(ctx, DefaultFenceTimeout)
		err = h.fencer.Unfence(fctx, g.SealKey(), pools, cur.StorageAddress)
		cancel()
		if err != nil {
			h.log.Error("ha: unblocklist", "cluster", g.Name(), "node", n.Name, "err", err)
			return
		}
		_ = h.health(ctx, g, &pb.NodeHealthCommand{Name: n.Name, Health: pb.NodeHealth_NODE_HEALTH_READY, Unfence: true,
			Reason: "node came back clean; storage blocklist entry removed"})
		return
	}
	if n.Health != pb.NodeHealth_NODE_HEALTH_READY {
		_ = h.health(ctx, g, &pb.NodeHealthCommand{Name: n.Name, Health: pb.NodeHealth_NODE_HEALTH_READY, Reason: "heartbeat resumed"})
	}
}

// down declares a node down and fences it before anything of it restarts.
func (h *HA) down(ctx context.Context, g group, st *raftstore.State, n *pb.Node, silent time.Duration) {
	if n.Health != pb.NodeHealth_NODE_HEALTH_DOWN {
		if h.health(ctx, g, &pb.NodeHealthCommand{Name: n.Name, Health: pb.NodeHealth_NODE_HEALTH_DOWN,
			Reason: fmt.Sprintf("no heartbeat for %s", silent.Round(time.Millisecond))}) != nil {
			return
		}
	}
	if n.Fenced || n.Role == pb.NodeRole_NODE_ROLE_WITNESS {
		return
	}
	if !needsFence(st, n.Name) {
		return
	}
	// Confirm leadership right before the irreversible step: a leader cut
	// off from the rest must not fence anybody.
	bctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := g.Barrier(bctx)
	cancel()
	if err != nil {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, DefaultFenceTimeout)
	err = h.fencer.Fence(fctx, g.SealKey(), rbdPools(st), n.StorageAddress)
	cancel()
	if err != nil {
		h.log.Error("ha: fence failed; not restarting its VMs", "cluster", g.Name(), "node", n.Name, "err", err)
		return
	}
	_ = h.health(ctx, g, &pb.NodeHealthCommand{Name: n.Name, Fence: true,
		Reason: fmt.Sprintf("blocklisted %s on storage", n.StorageAddress)})
}

// needsFence: only a node holding HA VMs needs fencing to restart them.
func needsFence(st *raftstore.State, node string) bool {
	for _, v := range st.VMs {
		if v.Node == node && (v.Deleting || v.Spec.GetHa() == pb.HAMode_HA_MODE_RESTART && v.Power == pb.PowerState_POWER_STATE_RUNNING) {
			return true
		}
	}
	return false
}

func rbdPools(st *raftstore.State) []*pb.StoragePool {
	var out []*pb.StoragePool
	for _, p := range st.SortedPools() {
		if p.Kind == "rbd" {
			out = append(out, p)
		}
	}
	return out
}

// restart re-places the HA VMs of fenced nodes, by priority, never on a
// node in silent (not heartbeating: likely lost too, and the scheduler only
// refuses nodes already recorded down).
func (h *HA) restart(ctx context.Context, g group, st *raftstore.State, settings *pb.Settings, silent []string) {
	var victims []*pb.VM
	for _, v := range st.SortedVMs() {
		n, ok := st.Nodes[v.Node]
		if ok && n.Fenced && v.Deleting {
			// Its node is fenced: nobody will undefine it there, and the
			// node destroys it when it comes back. Finish the delete.
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VM_REMOVE, &pb.VMRemoveCommand{Name: v.Name, Node: v.Node}, "ha")
			cancel()
			continue
		}
		if !ok || !n.Fenced || v.Spec.GetHa() != pb.HAMode_HA_MODE_RESTART || v.Power != pb.PowerState_POWER_STATE_RUNNING {
			continue
		}
		victims = append(victims, v)
	}
	if len(victims) == 0 {
		return
	}
	sort.SliceStable(victims, func(i, j int) bool { return victims[i].Spec.HaPriority > victims[j].Spec.HaPriority })
	snap := st.SchedulerSnapshot()
	window := time.Duration(settings.RestartWindowMs) * time.Millisecond
	now := h.now()
	for _, v := range victims {
		recent := 0
		for _, t := range v.RestartsUnixNano {
			if now.Sub(time.Unix(0, t)) < window {
				recent++
			}
		}
		cmd := &pb.VMFailoverCommand{Name: v.Name, From: v.Node}
		if int32(recent) >= settings.MaxRestarts {
			cmd.GiveUp = true
			cmd.Reason = fmt.Sprintf("restarted %d times within %s: giving up", recent, window)
		} else {
			req := scheduler.Request{VM: raftstore.SchedulerVM(v), Exclude: append([]string{v.Node}, silent...), Priority: int(v.Spec.HaPriority), Brief: true}
			req.VM.Node = ""
			if grp := v.Spec.HaGroup; grp != "" {
				req.Preferred = splitGroup(grp)
			}
			dec, err := scheduler.Place(snap, req)
			if err != nil {
				h.log.Warn("ha: no room to restart", "cluster", g.Name(), "vm", v.Name, "err", err)
				continue
			}
			placed := req.VM
			placed.Node = dec.Node
			snap.Commit(placed)
			cmd.To = dec.Node
			cmd.Reason = fmt.Sprintf("node %s lost and fenced", v.Node)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VM_FAILOVER, cmd, "ha")
		cancel()
		if err != nil {
			h.log.Warn("ha: failover", "cluster", g.Name(), "vm", v.Name, "err", err)
		} else {
			h.log.Info("ha: failover", "cluster", g.Name(), "vm", v.Name, "from", v.Node, "to", cmd.To, "give_up", cmd.GiveUp)
		}
	}
}

func splitGroup(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// cephFencer blocklists on every RBD pool's Ceph cluster.
type cephFencer struct{}

func openPool(ctx context.Context, sealKey []byte, p *pb.StoragePool) (*rbd.Pool, error) {
	key, err := pki.Unseal(sealKey, p.SealedKey)
	if err != nil {
		return nil, fmt.Errorf("unseal key of %s: %w", p.Name, err)
	}
	return rbd.Open(ctx, rbd.Config{Monitors: p.Monitors, User: p.User, Key: string(key), Pool: p.CephPool})
}

func (cephFencer) Fence(ctx context.Context, sealKey []byte, pools []*pb.StoragePool, addr string) error {
	for _, p := range pools {
		pool, err := openPool(ctx, sealKey, p)
		if err != nil {
			return err
		}
		err = pool.Blocklist(ctx, addr, DefaultFenceExpiry)
		pool.Close()
		if err != nil {
			return fmt.Errorf("blocklist %s on %s: %w", addr, p.Name, err)
		}
	}
	return nil
}

func (cephFencer) Unfence(ctx context.Context, sealKey []byte, pools []*pb.StoragePool, addr string) error {
	for _, p := range pools {
		pool, err := openPool(ctx, sealKey, p)
		if err != nil {
			return err
		}
		err = pool.Unblocklist(ctx, addr)
		pool.Close()
		if err != nil {
			return fmt.Errorf("unblocklist %s on %s: %w", addr, p.Name, err)
		}
	}
	return nil
}
