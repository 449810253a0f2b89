package agent

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/hypervisor"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

// Migrator is the hypervisor's live migration.
type Migrator interface {
	Migrate(ctx context.Context, name, destURI string, o hypervisor.MigrateOptions, progress func(hypervisor.Progress)) (hypervisor.MigrateResult, error)
}

// taskMigrate live-migrates a VM from this node (the task's executor) to
// params["to"], peer to peer, then records the move.
func (a *Agent) taskMigrate(ctx context.Context, g *cluster.Group, t *pb.Task, progress func(float64, string)) error {
	name, to := t.Params["vm"], t.Params["to"]
	var (
		vm   *pb.VM
		dest *pb.Node
	)
	g.Store.Read(func(s *raftstore.State) { vm, dest = s.VMs[name], s.Nodes[to] })
	if vm == nil || dest == nil {
		return fmt.Errorf("vm %q or node %q vanished", name, to)
	}
	clear := func() {
		a.mustPropose(ctx, g, pb.CommandType_COMMAND_TYPE_VM_MIGRATING, &pb.VMMigratingCommand{Name: name})
	}
	hv := a.conn()
	mig, ok := hv.(Migrator)
	if hv == nil || !ok {
		clear()
		return fmt.Errorf("libvirt is not connected on %s", a.cfg.Node)
	}
	uri := fmt.Sprintf(a.cfg.Migration.template(), dest.StorageAddress)
	opts := hypervisor.MigrateOptions{Unsafe: a.cfg.Migration.Unsafe, TLS: a.cfg.Migration.tls()}
	if ms, err := strconv.ParseInt(t.Params["max_downtime_ms"], 10, 64); err == nil && ms > 0 {
		opts.MaxDowntime = time.Duration(ms) * time.Millisecond
	}
	if bw, err := strconv.ParseUint(t.Params["bandwidth_mibs"], 10, 64); err == nil {
		opts.BandwidthMiBs = bw
	}
	progress(0, "migrating to "+to)
	res, err := mig.Migrate(ctx, DomainName(g.Name, name), uri, opts, func(p hypervisor.Progress) {
		if p.DataTotal > 0 {
			progress(float64(p.DataProcessed)/float64(p.DataTotal)*0.95, fmt.Sprintf("iteration %d, %d MiB remaining", p.Iteration, p.DataRemaining>>20))
		}
	})
	if err != nil {
		clear()
		return fmt.Errorf("migrate %s to %s: %w", name, to, err)
	}
	// The guest now runs only on the destination: the move must be
	// recorded whatever it takes, or the VM would stay marked migrating.
	if err := a.mustPropose(ctx, g, pb.CommandType_COMMAND_TYPE_VM_MOVE, &pb.VMMoveCommand{
		Name: name, From: a.cfg.Node, To: to, Reason: fmt.Sprintf("live migration in %s", res.Duration.Round(time.Millisecond)),
	}); err != nil {
		return fmt.Errorf("record move: %w", err)
	}
	a.forget(g.Name, name)
	progress(1, fmt.Sprintf("migrated in %s", res.Duration.Round(time.Millisecond)))
	return nil
}

// mustPropose retries a proposal while the cluster is unavailable (an
// election), for facts that already happened and must be recorded. It
// gives up on a refusal (the state moved on) or when ctx ends.
func (a *Agent) mustPropose(ctx context.Context, g *cluster.Group, t pb.CommandType, m proto.Message) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := g.Propose(cctx, t, m, a.actor())
		cancel()
		if err == nil || !errdefs.Is(err, errdefs.KindUnavailable) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
