package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/minet/corral/cluster"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"github.com/minet/corral/storage"
	"google.golang.org/protobuf/proto"
)

// TemplateSnapshot is the snapshot linked clones of a template share.
const TemplateSnapshot = "corral-template"

func (a *Agent) putVolume(ctx context.Context, g *cluster.Group, v *pb.Volume) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VOLUME_PUT, &pb.VolumePutCommand{Volume: v}, a.actor())
	return err
}

func (a *Agent) dropVolume(g *cluster.Group, pool, name string) {
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VOLUME_DELETE, &pb.VolumeDeleteCommand{Pool: pool, Name: name}, a.actor())
}

// taskVolumeCreate makes a new volume: empty, a linked clone of a template
// (params from, full=false) or a full copy. On failure the volume record
// is removed so nothing half-created remains.
func (a *Agent) taskVolumeCreate(ctx context.Context, g *cluster.Group, t *pb.Task, progress func(float64, string)) (err error) {
	vol, pool, err := a.volumeTarget(ctx, g, t)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			a.dropVolume(g, pool.Name, vol.Name)
		}
	}()
	be, err := a.backend(ctx, g, pool)
	if err != nil {
		return err
	}
	var got storage.Volume
	switch from := t.Params["from"]; {
	case from == "":
		got, err = be.Create(ctx, vol.Name, paramU64(t, "size"))
	case t.Params["full"] == "true":
		got, err = be.Copy(ctx, from, vol.Name, func(done, total uint64) {
			if total > 0 {
				progress(float64(done)/float64(total), fmt.Sprintf("copied %d of %d MiB", done>>20, total>>20))
			}
		})
	default:
		if err = be.Snapshot(ctx, from, TemplateSnapshot); err != nil && !errors.Is(err, storage.ErrExists) {
			return fmt.Errorf("snapshot template %s: %w", from, err)
		}
		got, err = be.Clone(ctx, from, TemplateSnapshot, vol.Name)
	}
	if err != nil {
		return err
	}
	if size := paramU64(t, "size"); size > got.SizeBytes {
		if err = be.Resize(ctx, vol.Name, size); err != nil {
			return err
		}
		got.SizeBytes = size
	}
	nv := proto.Clone(vol).(*pb.Volume)
	nv.SizeBytes, nv.Ready, nv.Snapshots = got.SizeBytes, true, got.Snapshots
	if t.Params["from"] != "" && t.Params["full"] != "true" {
		nv.Parent = t.Params["from"]
	}
	return a.putVolume(ctx, g, nv)
}

func (a *Agent) taskVolumeResize(ctx context.Context, g *cluster.Group, t *pb.Task, _ func(float64, string)) error {
	vol, be, err := a.taskBackend(ctx, g, t)
	if err != nil {
		return err
	}
	size := paramU64(t, "size")
	if err := be.Resize(ctx, vol.Name, size); err != nil {
		return err
	}
	// A running guest sees the new size at once (virtio-blk resize).
	if vol.Vm != "" {
		if err := a.liveResize(ctx, g, vol, size); err != nil {
			return err
		}
	}
	nv := proto.Clone(vol).(*pb.Volume)
	nv.SizeBytes = size
	return a.putVolume(ctx, g, nv)
}

// liveResize tells the hypervisor running the volume's VM about its new
// size, if that VM runs here.
func (a *Agent) liveResize(ctx context.Context, g *cluster.Group, vol *pb.Volume, size uint64) error {
	var vm *pb.VM
	g.Store.Read(func(s *raftstore.State) { vm = s.VMs[vol.Vm] })
	if vm == nil || vm.Node != a.cfg.Node || vm.Status.GetState() != pb.VMState_VM_STATE_RUNNING {
		return nil
	}
	hv := a.conn()
	r, ok := hv.(interface {
		BlockResize(ctx context.Context, name, target string, bytes uint64) error
	})
	if hv == nil || !ok {
		return fmt.Errorf("libvirt is not connected on %s", a.cfg.Node)
	}
	for i, d := range vm.Spec.Disks {
		if d.Pool == vol.Pool && d.Volume == vol.Name {
			target := d.Target
			if target == "" {
				target = "vd" + string(rune('a'+i))
			}
			return r.BlockResize(ctx, DomainName(g.Name, vm.Name), target, size)
		}
	}
	return nil
}

func (a *Agent) taskVolumeSnapshot(ctx context.Context, g *cluster.Group, t *pb.Task, _ func(float64, string)) error {
	vol, be, err := a.taskBackend(ctx, g, t)
	if err != nil {
		return err
	}
	if err := be.Snapshot(ctx, vol.Name, t.Params["snapshot"]); err != nil {
		return err
	}
	nv := proto.Clone(vol).(*pb.Volume)
	nv.Snapshots = append(nv.Snapshots, t.Params["snapshot"])
	return a.putVolume(ctx, g, nv)
}

func (a *Agent) taskVolumeRollback(ctx context.Context, g *cluster.Group, t *pb.Task, _ func(float64, string)) error {
	vol, be, err := a.taskBackend(ctx, g, t)
	if err != nil {
		return err
	}
	return be.Rollback(ctx, vol.Name, t.Params["snapshot"])
}

func (a *Agent) taskVolumeDelete(ctx context.Context, g *cluster.Group, t *pb.Task, _ func(float64, string)) error {
	vol, be, err := a.taskBackend(ctx, g, t)
	if err != nil {
		return err
	}
	if err := be.Delete(ctx, vol.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = g.Propose(cctx, pb.CommandType_COMMAND_TYPE_VOLUME_DELETE, &pb.VolumeDeleteCommand{Pool: vol.Pool, Name: vol.Name}, a.actor())
	return err
}

// taskBackend returns a volume task's volume and its pool's backend.
func (a *Agent) taskBackend(ctx context.Context, g *cluster.Group, t *pb.Task) (*pb.Volume, storage.Backend, error) {
	vol, pool, err := a.volumeTarget(ctx, g, t)
	if err != nil {
		return nil, nil, err
	}
	be, err := a.backend(ctx, g, pool)
	return vol, be, err
}

// ImportVolume writes a stream into a volume record created by the API.
func (a *Agent) ImportVolume(ctx context.Context, clusterName, poolName, name string, r io.Reader, size uint64, progress func(done, total uint64)) (err error) {
	g, err := a.m.Group(clusterName)
	if err != nil {
		return err
	}
	var (
		pool *pb.StoragePool
		vol  *pb.Volume
	)
	g.Store.Read(func(s *raftstore.State) {
		pool = s.Pools[poolName]
		vol = s.Volumes[raftstore.VolumeKey(poolName, name)]
	})
	if pool == nil || vol == nil {
		return fmt.Errorf("volume %s/%s not found", poolName, name)
	}
	defer func() {
		if err != nil {
			a.dropVolume(g, poolName, name)
		}
	}()
	be, err := a.backend(ctx, g, pool)
	if err != nil {
		return err
	}
	got, err := be.Import(ctx, name, r, size, progress)
	if err != nil {
		return err
	}
	nv := proto.Clone(vol).(*pb.Volume)
	nv.SizeBytes, nv.Ready = got.SizeBytes, true
	return a.putVolume(ctx, g, nv)
}
