package api

import (
	"context"
	"io"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/minet/corral/cluster"
	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

// DefaultVolumeWait bounds how long volume calls wait for their task.
const DefaultVolumeWait = 10 * time.Minute

// VolumeImporter writes an import stream on the node holding the volume.
type VolumeImporter interface {
	ImportVolume(ctx context.Context, cluster, pool, name string, r io.Reader, size uint64, progress func(done, total uint64)) error
}

func (s *Server) AddPool(ctx context.Context, req *pb.AddPoolRequest) (*pb.AddPoolResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if req.Pool == nil {
		return nil, errdefs.Invalid("no pool given")
	}
	p := proto.Clone(req.Pool).(*pb.StoragePool)
	p.SealedKey = ""
	if req.Key != "" {
		// The key enters the replicated state only sealed.
		if p.SealedKey, err = pki.Seal(g.SealKey, []byte(req.Key)); err != nil {
			return nil, err
		}
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_POOL_ADD, &pb.PoolAddCommand{Pool: p}, actor(ctx)); err != nil {
		return nil, err
	}
	return &pb.AddPoolResponse{Pool: redact(p)}, nil
}

func redact(p *pb.StoragePool) *pb.StoragePool {
	p = proto.Clone(p).(*pb.StoragePool)
	if p.SealedKey != "" {
		p.SealedKey = "(sealed)"
	}
	return p
}

func (s *Server) ListPools(ctx context.Context, req *pb.ListPoolsRequest) (*pb.ListPoolsResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	out := &pb.ListPoolsResponse{}
	g.Store.Read(func(st *raftstore.State) {
		for _, p := range st.SortedPools() {
			out.Pools = append(out.Pools, redact(p))
		}
	})
	return out, nil
}

func (s *Server) RemovePool(ctx context.Context, req *pb.RemovePoolRequest) (*pb.RemovePoolResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	_, err = g.Propose(ctx, pb.CommandType_COMMAND_TYPE_POOL_REMOVE, &pb.PoolRemoveCommand{Name: req.Name}, actor(ctx))
	return &pb.RemovePoolResponse{}, err
}

// executor chooses the node that runs a volume task: the volume's node for
// node-local pools, else the node running the volume's VM (only its
// hypervisor can tell the guest about a resize), else this node when it can
// run tasks, else the first ready voter.
func (s *Server) executor(st *raftstore.State, vol *pb.Volume) (string, error) {
	if vol.Node != "" {
		return vol.Node, nil
	}
	if vm, ok := st.VMs[vol.Vm]; ok && vm.Node != "" && vm.Status.GetState() == pb.VMState_VM_STATE_RUNNING {
		if n, ok := st.Nodes[vm.Node]; ok && n.Ready && !n.Fenced {
			return n.Name, nil
		}
	}
	if n, ok := st.Nodes[s.m.NodeName()]; ok && n.Role == pb.NodeRole_NODE_ROLE_VOTER && n.Ready {
		return n.Name, nil
	}
	for _, n := range st.SortedNodes() {
		if n.Role == pb.NodeRole_NODE_ROLE_VOTER && n.Ready && !n.Fenced {
			return n.Name, nil
		}
	}
	return "", errdefs.Unavailable("no node can run storage tasks right now")
}

// volumeTask creates a task for a volume and waits for it to finish.
func (s *Server) volumeTask(ctx context.Context, g *cluster.Group, kind string, vol *pb.Volume, params map[string]string, wait bool) (*pb.Task, error) {
	var (
		node string
		err  error
	)
	g.Store.Read(func(st *raftstore.State) { node, err = s.executor(st, vol) })
	if err != nil {
		return nil, err
	}
	if params == nil {
		params = map[string]string{}
	}
	params["pool"], params["name"] = vol.Pool, vol.Name
	id := uuid.NewString()
	t := &pb.Task{Id: id, Kind: kind, Target: raftstore.VolumeKey(vol.Pool, vol.Name), Node: node, Params: params}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_TASK_CREATE, &pb.TaskCreateCommand{Task: t}, actor(ctx)); err != nil {
		return nil, err
	}
	if !wait {
		g.Store.Read(func(st *raftstore.State) { t = st.Tasks[id] })
		return t, nil
	}
	wctx, cancel := context.WithTimeout(ctx, DefaultVolumeWait)
	defer cancel()
	err = waitState(wctx, g, func(st *raftstore.State) (bool, error) {
		t = st.Tasks[id]
		if t == nil || !raftstore.TaskFinished(t.State) {
			return false, nil
		}
		if t.State != pb.TaskState_TASK_STATE_SUCCEEDED {
			return false, errdefs.Precondition("%s of %s failed on %s: %s", kind, t.Target, node, t.Error)
		}
		return true, nil
	})
	return t, err
}

// volumeOf returns the group and the volume a request names.
func (s *Server) volumeOf(clusterName, pool, name string) (*cluster.Group, *pb.Volume, error) {
	g, err := s.group(clusterName)
	if err != nil {
		return nil, nil, err
	}
	v, err := s.getVolume(g, pool, name)
	return g, v, err
}

func (s *Server) getVolume(g *cluster.Group, pool, name string) (*pb.Volume, error) {
	var v *pb.Volume
	g.Store.Read(func(st *raftstore.State) { v = st.Volumes[raftstore.VolumeKey(pool, name)] })
	if v == nil {
		return nil, errdefs.NotFound("volume %s/%s not found: see `corral volume list`", pool, name)
	}
	return v, nil
}

// createVolume records the volume, then has a node create it (empty, as
// a linked clone or a full copy of from); a failure removes the record.
func (s *Server) createVolume(ctx context.Context, g *cluster.Group, req *pb.CreateVolumeRequest) (*pb.Volume, *pb.Task, error) {
	var (
		pool *pb.StoragePool
		src  *pb.Volume
	)
	g.Store.Read(func(st *raftstore.State) {
		pool = st.Pools[req.Pool]
		if req.From != "" {
			src = st.Volumes[raftstore.VolumeKey(req.Pool, req.From)]
		}
	})
	if pool == nil {
		return nil, nil, errdefs.NotFound("storage pool %q not found: see `corral storage list`", req.Pool)
	}
	if req.From != "" && src == nil {
		return nil, nil, errdefs.NotFound("template volume %s/%s not found (clones are made within one pool)", req.Pool, req.From)
	}
	if req.From == "" && req.SizeBytes == 0 {
		return nil, nil, errdefs.Invalid("volume size required (--size)")
	}
	vol := &pb.Volume{Name: req.Name, Pool: req.Pool, SizeBytes: req.SizeBytes}
	if pool.Kind == "dir" {
		vol.Node = req.Node
		if src != nil {
			vol.Node = src.Node
		}
		if vol.Node == "" {
			vol.Node = s.m.NodeName()
		}
	}
	if src != nil {
		vol.Parent = src.Name
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VOLUME_PUT, &pb.VolumePutCommand{Volume: vol, Create: true}, actor(ctx)); err != nil {
		return nil, nil, err
	}
	params := map[string]string{"size": strconv.FormatUint(req.SizeBytes, 10), "from": req.From, "full": strconv.FormatBool(req.FullCopy)}
	t, err := s.volumeTask(ctx, g, "volume.create", vol, params, true)
	if err != nil {
		return nil, t, err
	}
	v, err := s.getVolume(g, req.Pool, req.Name)
	return v, t, err
}

func (s *Server) CreateVolume(ctx context.Context, req *pb.CreateVolumeRequest) (*pb.CreateVolumeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	v, t, err := s.createVolume(ctx, g, req)
	if err != nil {
		return nil, err
	}
	return &pb.CreateVolumeResponse{Volume: v, Task: t}, nil
}

// cloneBootDisk creates the VM's boot volume from a template volume
// ("pool/name") as a linked clone (or full copy) and puts it first.
func (s *Server) cloneBootDisk(ctx context.Context, g *cluster.Group, req *pb.CreateVMRequest, spec *pb.VMSpec) error {
	pool, name, ok := splitVolume(req.From)
	if !ok {
		return errdefs.Invalid("--from wants POOL/TEMPLATE, got %q", req.From)
	}
	src, err := s.getVolume(g, pool, name)
	if err != nil {
		return err
	}
	if !src.Template {
		return errdefs.Precondition("volume %s is not a template: mark it with `corral volume template %s`", req.From, req.From)
	}
	var exists bool
	g.Store.Read(func(st *raftstore.State) { _, exists = st.VMs[req.Name] })
	if exists {
		return errdefs.Exists("vm %q already exists", req.Name)
	}
	disk := req.Name + "-disk0"
	if _, _, err := s.createVolume(ctx, g, &pb.CreateVolumeRequest{Cluster: req.Cluster, Pool: pool, Name: disk, From: name, FullCopy: req.FullCopy}); err != nil {
		return err
	}
	spec.Disks = append([]*pb.DiskSpec{{Pool: pool, Volume: disk}}, spec.Disks...)
	return nil
}

func splitVolume(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], i > 0 && i < len(s)-1
		}
	}
	return "", "", false
}

func (s *Server) ListVolumes(ctx context.Context, req *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	out := &pb.ListVolumesResponse{}
	g.Store.Read(func(st *raftstore.State) {
		for _, v := range st.SortedVolumes() {
			if req.Pool == "" || v.Pool == req.Pool {
				out.Volumes = append(out.Volumes, v)
			}
		}
	})
	return out, nil
}

func (s *Server) ResizeVolume(ctx context.Context, req *pb.ResizeVolumeRequest) (*pb.ResizeVolumeResponse, error) {
	g, v, err := s.volumeOf(req.Cluster, req.Pool, req.Name)
	if err != nil {
		return nil, err
	}
	if req.SizeBytes < v.SizeBytes {
		return nil, errdefs.Invalid("volume %s/%s is %d bytes: shrinking to %d would lose data; only growing is supported", req.Pool, req.Name, v.SizeBytes, req.SizeBytes)
	}
	t, err := s.volumeTask(ctx, g, "volume.resize", v, map[string]string{"size": strconv.FormatUint(req.SizeBytes, 10)}, true)
	return &pb.ResizeVolumeResponse{Task: t}, err
}

func (s *Server) SnapshotVolume(ctx context.Context, req *pb.SnapshotVolumeRequest) (*pb.SnapshotVolumeResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if err := raftstore.ValidName("snapshot", req.Snapshot); err != nil {
		return nil, err
	}
	v, err := s.getVolume(g, req.Pool, req.Name)
	if err != nil {
		return nil, err
	}
	t, err := s.volumeTask(ctx, g, "volume.snapshot", v, map[string]string{"snapshot": req.Snapshot}, true)
	return &pb.SnapshotVolumeResponse{Task: t}, err
}

func (s *Server) RollbackVolume(ctx context.Context, req *pb.RollbackVolumeRequest) (*pb.RollbackVolumeResponse, error) {
	g, v, err := s.volumeOf(req.Cluster, req.Pool, req.Name)
	if err != nil {
		return nil, err
	}
	if v.Vm != "" {
		var vm *pb.VM
		g.Store.Read(func(st *raftstore.State) { vm = st.VMs[v.Vm] })
		if vm != nil && vm.Status.GetState() != pb.VMState_VM_STATE_STOPPED {
			return nil, errdefs.Precondition("volume %s/%s is used by running vm %q: stop it before a rollback", req.Pool, req.Name, v.Vm)
		}
	}
	t, err := s.volumeTask(ctx, g, "volume.rollback", v, map[string]string{"snapshot": req.Snapshot}, true)
	return &pb.RollbackVolumeResponse{Task: t}, err
}

func (s *Server) DeleteVolume(ctx context.Context, req *pb.DeleteVolumeRequest) (*pb.DeleteVolumeResponse, error) {
	g, v, err := s.volumeOf(req.Cluster, req.Pool, req.Name)
	if err != nil {
		return nil, err
	}
	// Check before any I/O: the same rule the FSM applies at the end.
	var cerr error
	cmd, _ := raftstore.NewCommand(pb.CommandType_COMMAND_TYPE_VOLUME_DELETE, &pb.VolumeDeleteCommand{Pool: req.Pool, Name: req.Name}, time.Now().UnixNano(), actor(ctx))
	g.Store.Read(func(st *raftstore.State) { cerr = raftstore.Check(st, cmd) })
	if cerr != nil {
		return nil, cerr
	}
	t, err := s.volumeTask(ctx, g, "volume.delete", v, nil, true)
	return &pb.DeleteVolumeResponse{Task: t}, err
}

func (s *Server) SetTemplate(ctx context.Context, req *pb.SetTemplateRequest) (*pb.SetTemplateResponse, error) {
	g, v, err := s.volumeOf(req.Cluster, req.Pool, req.Name)
	if err != nil {
		return nil, err
	}
	if req.Template && v.Vm != "" {
		return nil, errdefs.Precondition("volume %s/%s is used by vm %q: delete the VM (keeping disks) before making it a template", req.Pool, req.Name, v.Vm)
	}
	nv := proto.Clone(v).(*pb.Volume)
	nv.Template = req.Template
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VOLUME_PUT, &pb.VolumePutCommand{Volume: nv}, actor(ctx)); err != nil {
		return nil, err
	}
	return &pb.SetTemplateResponse{Volume: nv}, nil
}

// ImportVolume receives a raw image stream and writes it into a new volume
// on the node that holds it (proxying there when needed).
func (s *Server) ImportVolume(stream pb.StorageService_ImportVolumeServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	g, err := s.group(first.Cluster)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	vol, err := s.getVolume(g, first.Pool, first.Name)
	if err != nil {
		// First hop: record the volume, then stream to its node.
		if first.SizeBytes == 0 {
			return errdefs.Invalid("import needs the image size")
		}
		var pool *pb.StoragePool
		g.Store.Read(func(st *raftstore.State) { pool = st.Pools[first.Pool] })
		if pool == nil {
			return errdefs.NotFound("storage pool %q not found", first.Pool)
		}
		vol = &pb.Volume{Name: first.Name, Pool: first.Pool, SizeBytes: first.SizeBytes}
		if pool.Kind == "dir" {
			vol.Node = first.Node
			if vol.Node == "" {
				vol.Node = s.m.NodeName()
			}
		}
		if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VOLUME_PUT, &pb.VolumePutCommand{Volume: vol, Create: true}, actor(ctx)); err != nil {
			return err
		}
	} else if vol.Ready {
		return errdefs.Exists("volume %s/%s already exists", first.Pool, first.Name)
	}
	var node string
	g.Store.Read(func(st *raftstore.State) { node, err = s.executor(st, vol) })
	if err != nil {
		return err
	}
	if node != s.m.NodeName() {
		conn, err := s.m.NodeConn(ctx, first.Cluster, node)
		if err != nil {
			return err
		}
		up, err := pb.NewStorageServiceClient(conn).ImportVolume(ctx)
		if err != nil {
			return err
		}
		for m := first; ; {
			if err := up.Send(m); err != nil {
				return err
			}
			if m, err = stream.Recv(); err == io.EOF {
				break
			} else if err != nil {
				return err
			}
		}
		resp, err := up.CloseAndRecv()
		if err != nil {
			return err
		}
		return stream.SendAndClose(resp)
	}
	imp, ok := s.node.(VolumeImporter)
	if !ok {
		return errdefs.Unavailable("node %s has no agent to write volumes", node)
	}
	pr, pw := io.Pipe()
	go func() {
		if len(first.Data) > 0 {
			if _, err := pw.Write(first.Data); err != nil {
				return
			}
		}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(m.Data); err != nil {
				return
			}
		}
	}()
	if err := imp.ImportVolume(ctx, first.Cluster, first.Pool, first.Name, pr, vol.SizeBytes, nil); err != nil {
		pr.CloseWithError(err)
		return errdefs.Precondition("import into %s/%s failed: %v", first.Pool, first.Name, err)
	}
	v, err := s.getVolume(g, first.Pool, first.Name)
	if err != nil {
		return err
	}
	return stream.SendAndClose(&pb.ImportVolumeResponse{Volume: v})
}
