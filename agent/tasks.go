package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minet/corral/cluster"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
)

// taskFunc runs one task kind. progress reports 0..1 with a message.
type taskFunc func(ctx context.Context, g *cluster.Group, t *pb.Task, progress func(float64, string)) error

func (a *Agent) taskKinds() map[string]taskFunc {
	return map[string]taskFunc{
		"volume.create":   a.taskVolumeCreate,
		"volume.resize":   a.taskVolumeResize,
		"volume.snapshot": a.taskVolumeSnapshot,
		"volume.rollback": a.taskVolumeRollback,
		"volume.delete":   a.taskVolumeDelete,
		"vm.migrate":      a.taskMigrate,
		"node.drain":      a.taskDrain,
	}
}

// runTasks starts the pending tasks assigned to this node, each once.
func (a *Agent) runTasks(ctx context.Context) {
	var (
		mu      sync.Mutex
		started = map[string]bool{}
	)
	kinds := a.taskKinds()
	// Tasks this node was running when corrald stopped cannot resume:
	// fail them so that nobody waits forever.
	for _, g := range a.m.Groups() {
		var stale []*pb.Task
		g.Store.Read(func(s *raftstore.State) {
			for _, t := range s.SortedTasks() {
				if t.Node == a.cfg.Node && t.State == pb.TaskState_TASK_STATE_RUNNING {
					stale = append(stale, t)
				}
			}
		})
		for _, t := range stale {
			started[t.Id] = true
			a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, State: pb.TaskState_TASK_STATE_FAILED,
				Error: "interrupted: corrald restarted on " + a.cfg.Node})
		}
	}
	for {
		for _, g := range a.m.Groups() {
			var todo []*pb.Task
			g.Store.Read(func(s *raftstore.State) {
				for _, t := range s.SortedTasks() {
					if t.Node == a.cfg.Node && t.State == pb.TaskState_TASK_STATE_PENDING {
						todo = append(todo, t)
					}
				}
			})
			for _, t := range todo {
				mu.Lock()
				if started[t.Id] {
					mu.Unlock()
					continue
				}
				started[t.Id] = true
				mu.Unlock()
				fn, ok := kinds[t.Kind]
				if !ok {
					continue // another component (HA, drain) runs it
				}
				go a.runTask(ctx, g, t, fn)
			}
		}
		stop := make(chan struct{})
		select {
		case <-ctx.Done():
			close(stop)
			return
		case <-a.stateChanged(stop):
		case <-time.After(time.Second):
		}
		close(stop)
	}
}

// anyOf closes its channel when one of chans closes; its goroutines end
// with stop.
func anyOf(chans []<-chan struct{}, stop <-chan struct{}) <-chan struct{} {
	out := make(chan struct{})
	var once sync.Once
	for _, ch := range chans {
		go func(ch <-chan struct{}) {
			select {
			case <-ch:
				once.Do(func() { close(out) })
			case <-stop:
			}
		}(ch)
	}
	return out
}

// UpdateTask proposes a task update; errors are logged.
// A final state is retried through elections: a task left RUNNING would
// keep its caller waiting.
func (a *Agent) updateTask(ctx context.Context, g *cluster.Group, u *pb.TaskUpdateCommand) {
	var err error
	if u.State != pb.TaskState_TASK_STATE_UNSPECIFIED && raftstore.TaskFinished(u.State) {
		err = a.mustPropose(ctx, g, pb.CommandType_COMMAND_TYPE_TASK_UPDATE, u)
	} else {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_TASK_UPDATE, u, a.actor())
		cancel()
	}
	if err != nil {
		a.log.Warn("task update", "cluster", g.Name, "task", u.Id, "err", err)
	}
}

func (a *Agent) runTask(ctx context.Context, g *cluster.Group, t *pb.Task, fn taskFunc) {
	log := a.log.With("cluster", g.Name, "task", t.Id, "kind", t.Kind)
	log.Info("task started", "target", t.Target)
	a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, State: pb.TaskState_TASK_STATE_RUNNING})
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Cancellation is a field in the replicated task: watch for it.
	go func() {
		for tctx.Err() == nil {
			_, ch := g.Store.Watch()
			var cancelReq bool
			g.Store.Read(func(s *raftstore.State) {
				if cur, ok := s.Tasks[t.Id]; ok {
					cancelReq = cur.CancelRequested
				}
			})
			if cancelReq {
				cancel()
				return
			}
			select {
			case <-ch:
			case <-tctx.Done():
			}
		}
	}()
	var lastSent time.Time
	progress := func(p float64, msg string) {
		if time.Since(lastSent) < 200*time.Millisecond && p < 1 {
			return
		}
		lastSent = time.Now()
		a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, Progress: min(max(p, 0), 1), Message: msg})
	}
	err := fn(tctx, g, t, progress)
	switch {
	case err == nil:
		a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, State: pb.TaskState_TASK_STATE_SUCCEEDED, Progress: 1})
		log.Info("task succeeded")
	case tctx.Err() != nil && ctx.Err() == nil:
		a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, State: pb.TaskState_TASK_STATE_CANCELLED, Error: err.Error()})
		log.Info("task cancelled", "err", err)
	default:
		a.updateTask(ctx, g, &pb.TaskUpdateCommand{Id: t.Id, State: pb.TaskState_TASK_STATE_FAILED, Error: err.Error()})
		log.Warn("task failed", "err", err)
	}
}

func paramU64(t *pb.Task, k string) uint64 {
	v, _ := strconv.ParseUint(t.Params[k], 10, 64)
	return v
}

func (a *Agent) volumeTarget(ctx context.Context, g *cluster.Group, t *pb.Task) (*pb.Volume, *pb.StoragePool, error) {
	var (
		vol  *pb.Volume
		pool *pb.StoragePool
	)
	g.Store.Read(func(s *raftstore.State) {
		vol = s.Volumes[raftstore.VolumeKey(t.Params["pool"], t.Params["name"])]
		pool = s.Pools[t.Params["pool"]]
	})
	if pool == nil {
		return nil, nil, fmt.Errorf("storage pool %q not found", t.Params["pool"])
	}
	if vol == nil {
		return nil, nil, fmt.Errorf("volume %s/%s not found", t.Params["pool"], t.Params["name"])
	}
	return vol, pool, nil
}

// taskDrain follows the migrations of a drain (params["tasks"]) and fails
// if one of them fails; the node stays in maintenance either way.
func (a *Agent) taskDrain(ctx context.Context, g *cluster.Group, t *pb.Task, progress func(float64, string)) error {
	var ids []string
	if t.Params["tasks"] != "" {
		ids = strings.Split(t.Params["tasks"], ",")
	}
	for {
		done, failed := 0, []string{}
		_, ch := g.Store.Watch()
		g.Store.Read(func(s *raftstore.State) {
			for _, id := range ids {
				c, ok := s.Tasks[id]
				switch {
				case !ok:
					done++
				case raftstore.TaskFinished(c.State):
					done++
					if c.State != pb.TaskState_TASK_STATE_SUCCEEDED {
						failed = append(failed, c.Target+": "+c.Error)
					}
				}
			}
		})
		if len(ids) > 0 {
			progress(float64(done)/float64(len(ids)), fmt.Sprintf("%d of %d VMs moved off %s", done, len(ids), t.Params["node"]))
		}
		if done == len(ids) {
			if len(failed) > 0 {
				return fmt.Errorf("drain of %s: %s", t.Params["node"], strings.Join(failed, "; "))
			}
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
