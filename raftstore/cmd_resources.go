package raftstore

import (
	"fmt"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

func init() {
	register(pb.CommandType_COMMAND_TYPE_NETWORK_CREATE, checkNetworkCreate, applyNetworkCreate)
	register(pb.CommandType_COMMAND_TYPE_NETWORK_UPDATE, checkNetworkUpdate, applyNetworkUpdate)
	register(pb.CommandType_COMMAND_TYPE_NETWORK_DELETE, checkNetworkDelete, applyNetworkDelete)
	register(pb.CommandType_COMMAND_TYPE_NETWORK_STATUS, checkNetworkStatus, applyNetworkStatus)
	register(pb.CommandType_COMMAND_TYPE_POOL_ADD, checkPoolAdd, applyPoolAdd)
	register(pb.CommandType_COMMAND_TYPE_POOL_REMOVE, checkPoolRemove, applyPoolRemove)
	register(pb.CommandType_COMMAND_TYPE_VOLUME_PUT, checkVolumePut, applyVolumePut)
	register(pb.CommandType_COMMAND_TYPE_VOLUME_DELETE, checkVolumeDelete, applyVolumeDelete)
	register(pb.CommandType_COMMAND_TYPE_TASK_CREATE, checkTaskCreate, applyTaskCreate)
	register(pb.CommandType_COMMAND_TYPE_TASK_UPDATE, checkTaskUpdate, applyTaskUpdate)
}

// CheckNetwork validates a network on its own and against the others
// (two networks on one VLAN and uplink would bridge two VLANs together).
func CheckNetwork(s *State, n *pb.Network) error {
	if err := ValidName("network", n.GetName()); err != nil {
		return err
	}
	if n.Vlan < 0 || n.Vlan > 4094 {
		return errdefs.Invalid("VLAN id %d out of range: use 1-4094, or 0 for untagged", n.Vlan)
	}
	if n.Kind != "linux" && n.Kind != "ovs" {
		return errdefs.Invalid("network kind %q unknown: use linux or ovs", n.Kind)
	}
	if n.Mtu != 0 && (n.Mtu < 576 || n.Mtu > 9216) {
		return errdefs.Invalid("MTU %d out of range 576-9216", n.Mtu)
	}
	if n.Priority < 0 || n.Priority > 65535 {
		return errdefs.Invalid("bridge priority %d out of range 0-65535", n.Priority)
	}
	for _, o := range s.SortedNetworks() {
		if o.Name == n.Name {
			continue
		}
		if o.Vlan == n.Vlan && o.Uplink == n.Uplink {
			return errdefs.Exists("network %q already uses VLAN %d on uplink %q", o.Name, o.Vlan, o.Uplink)
		}
		if n.Kind == "ovs" && o.Kind == "ovs" && o.Uplink == n.Uplink && (o.Stp != n.Stp || o.Priority != n.Priority) {
			return errdefs.Invalid("OVS networks on uplink %q share one bridge: STP/priority must match network %q (stp=%v priority=%d)", n.Uplink, o.Name, o.Stp, o.Priority)
		}
	}
	return nil
}

func checkNetworkCreate(s *State, c *pb.NetworkCreateCommand, _ Meta) error {
	if _, ok := s.Networks[c.GetNetwork().GetName()]; ok {
		return errdefs.Exists("network %q already exists", c.Network.Name)
	}
	return CheckNetwork(s, c.GetNetwork())
}

func applyNetworkCreate(s *State, c *pb.NetworkCreateCommand, m Meta) any {
	n := proto.Clone(c.Network).(*pb.Network)
	n.CreatedUnixNano = m.Time
	n.Status = nil
	s.Networks[n.Name] = n
	event(s, m, "network.create", n.Name, "ok", fmt.Sprintf("vlan %d kind %s", n.Vlan, n.Kind))
	return n
}

func checkNetworkUpdate(s *State, c *pb.NetworkUpdateCommand, _ Meta) error {
	if _, ok := s.Networks[c.GetNetwork().GetName()]; !ok {
		return errdefs.NotFound("network %q not found", c.GetNetwork().GetName())
	}
	return CheckNetwork(s, c.GetNetwork())
}

func applyNetworkUpdate(s *State, c *pb.NetworkUpdateCommand, m Meta) any {
	old := s.Networks[c.Network.Name]
	n := proto.Clone(c.Network).(*pb.Network)
	n.CreatedUnixNano, n.Status = old.CreatedUnixNano, old.Status
	s.Networks[n.Name] = n
	event(s, m, "network.update", n.Name, "ok", "")
	return n
}

func checkNetworkDelete(s *State, c *pb.NetworkDeleteCommand, _ Meta) error {
	if _, ok := s.Networks[c.Name]; !ok {
		return errdefs.NotFound("network %q not found", c.Name)
	}
	for _, v := range s.SortedVMs() {
		for _, nic := range v.Spec.GetNics() {
			if nic.Network == c.Name {
				return errdefs.Precondition("network %q is used by vm %q: move or delete the VM first", c.Name, v.Name)
			}
		}
	}
	return nil
}

func applyNetworkDelete(s *State, c *pb.NetworkDeleteCommand, m Meta) any {
	delete(s.Networks, c.Name)
	event(s, m, "network.delete", c.Name, "ok", "")
	return nil
}

func checkNetworkStatus(s *State, c *pb.NetworkStatusCommand, _ Meta) error {
	if _, ok := s.Nodes[c.Node]; !ok {
		return errdefs.NotFound("node %q not found", c.Node)
	}
	return nil
}

func applyNetworkStatus(s *State, c *pb.NetworkStatusCommand, m Meta) any {
	for _, name := range sortedKeys(c.Status) {
		n, ok := s.Networks[name]
		if !ok {
			continue
		}
		n = proto.Clone(n).(*pb.Network)
		if n.Status == nil {
			n.Status = map[string]*pb.NetworkStatus{}
		}
		st := proto.Clone(c.Status[name]).(*pb.NetworkStatus)
		st.UpdatedUnixNano = m.Time
		n.Status[c.Node] = st
		s.Networks[name] = n
	}
	return nil
}

func checkPoolAdd(s *State, c *pb.PoolAddCommand, _ Meta) error {
	p := c.GetPool()
	if err := ValidName("storage pool", p.GetName()); err != nil {
		return err
	}
	if _, ok := s.Pools[p.Name]; ok {
		return errdefs.Exists("storage pool %q already exists", p.Name)
	}
	switch p.Kind {
	case "dir":
		if p.Path == "" || p.Path[0] != '/' {
			return errdefs.Invalid("dir pool needs an absolute --path")
		}
	case "rbd":
		if len(p.Monitors) == 0 || p.CephPool == "" || p.User == "" || p.SealedKey == "" {
			return errdefs.Invalid("rbd pool needs --monitors, --ceph-pool, --user and --key")
		}
	default:
		return errdefs.Invalid("storage kind %q unknown: use dir or rbd", p.Kind)
	}
	return nil
}

func applyPoolAdd(s *State, c *pb.PoolAddCommand, m Meta) any {
	p := proto.Clone(c.Pool).(*pb.StoragePool)
	p.CreatedUnixNano = m.Time
	s.Pools[p.Name] = p
	event(s, m, "storage.add", p.Name, "ok", p.Kind)
	return p
}

func checkPoolRemove(s *State, c *pb.PoolRemoveCommand, _ Meta) error {
	if _, ok := s.Pools[c.Name]; !ok {
		return errdefs.NotFound("storage pool %q not found", c.Name)
	}
	for _, v := range s.SortedVolumes() {
		if v.Pool == c.Name {
			return errdefs.Precondition("storage pool %q still holds volume %q: delete its volumes first", c.Name, v.Name)
		}
	}
	return nil
}

func applyPoolRemove(s *State, c *pb.PoolRemoveCommand, m Meta) any {
	delete(s.Pools, c.Name)
	event(s, m, "storage.remove", c.Name, "ok", "")
	return nil
}

func checkVolumePut(s *State, c *pb.VolumePutCommand, _ Meta) error {
	v := c.GetVolume()
	if err := ValidName("volume", v.GetName()); err != nil {
		return err
	}
	p, ok := s.Pools[v.Pool]
	if !ok {
		return errdefs.NotFound("storage pool %q not found: see `corral storage list`", v.Pool)
	}
	if p.Kind == "dir" && v.Node == "" {
		return errdefs.Invalid("volume %q on dir pool %q needs a node", v.Name, v.Pool)
	}
	_, exists := s.Volumes[VolumeKey(v.Pool, v.Name)]
	if c.Create && exists {
		return errdefs.Exists("volume %s/%s already exists", v.Pool, v.Name)
	}
	if !c.Create && !exists {
		return errdefs.NotFound("volume %s/%s not found", v.Pool, v.Name)
	}
	return nil
}

func applyVolumePut(s *State, c *pb.VolumePutCommand, m Meta) any {
	v := proto.Clone(c.Volume).(*pb.Volume)
	if c.Create {
		v.CreatedUnixNano = m.Time
		event(s, m, "volume.create", VolumeKey(v.Pool, v.Name), "ok", "")
	} else if old, ok := s.Volumes[VolumeKey(v.Pool, v.Name)]; ok {
		// Attachment belongs to VM commands: an update written from an
		// older read must not drop an attachment made meanwhile.
		v.Vm, v.CreatedUnixNano = old.Vm, old.CreatedUnixNano
	}
	s.Volumes[VolumeKey(v.Pool, v.Name)] = v
	return v
}

func checkVolumeDelete(s *State, c *pb.VolumeDeleteCommand, _ Meta) error {
	v, ok := s.Volumes[VolumeKey(c.Pool, c.Name)]
	if !ok {
		return errdefs.NotFound("volume %s/%s not found", c.Pool, c.Name)
	}
	if v.Vm != "" {
		return errdefs.Precondition("volume %s/%s is used by vm %q: delete or detach the VM first", c.Pool, c.Name, v.Vm)
	}
	for _, o := range s.SortedVolumes() {
		if o.Pool == c.Pool && o.Parent == c.Name {
			return errdefs.Precondition("volume %s/%s is the template of clone %q: delete the clones first", c.Pool, c.Name, o.Name)
		}
	}
	return nil
}

func applyVolumeDelete(s *State, c *pb.VolumeDeleteCommand, m Meta) any {
	delete(s.Volumes, VolumeKey(c.Pool, c.Name))
	event(s, m, "volume.delete", VolumeKey(c.Pool, c.Name), "ok", "")
	return nil
}

func checkTaskCreate(s *State, c *pb.TaskCreateCommand, _ Meta) error {
	t := c.GetTask()
	if t.GetId() == "" || t.Kind == "" {
		return errdefs.Invalid("task needs an id and a kind")
	}
	if _, ok := s.Tasks[t.Id]; ok {
		return errdefs.Exists("task %s exists", t.Id)
	}
	return nil
}

func applyTaskCreate(s *State, c *pb.TaskCreateCommand, m Meta) any {
	t := proto.Clone(c.Task).(*pb.Task)
	t.CreatedUnixNano, t.UpdatedUnixNano = m.Time, m.Time
	if t.State == pb.TaskState_TASK_STATE_UNSPECIFIED {
		t.State = pb.TaskState_TASK_STATE_PENDING
	}
	if t.Actor == "" {
		t.Actor = m.Actor
	}
	s.Tasks[t.Id] = t
	event(s, m, "task."+t.Kind, t.Target, "started", t.Id)
	return t
}

func checkTaskUpdate(s *State, c *pb.TaskUpdateCommand, _ Meta) error {
	t, ok := s.Tasks[c.Id]
	if !ok {
		return errdefs.NotFound("task %s not found", c.Id)
	}
	if TaskFinished(t.State) {
		return errdefs.Precondition("task %s already finished", c.Id)
	}
	if c.Progress < 0 || c.Progress > 1 {
		return errdefs.Invalid("progress must be within 0..1")
	}
	return nil
}

func applyTaskUpdate(s *State, c *pb.TaskUpdateCommand, m Meta) any {
	t := proto.Clone(s.Tasks[c.Id]).(*pb.Task)
	if c.Cancel {
		t.CancelRequested = true
	}
	if c.State != pb.TaskState_TASK_STATE_UNSPECIFIED {
		t.State = c.State
	}
	if c.Progress > t.Progress {
		t.Progress = c.Progress
	}
	if c.Message != "" {
		t.Message = c.Message
	}
	if c.Error != "" {
		t.Error = c.Error
	}
	t.UpdatedUnixNano = m.Time
	s.Tasks[t.Id] = t
	if TaskFinished(t.State) {
		result := "succeeded"
		switch t.State {
		case pb.TaskState_TASK_STATE_FAILED:
			result = "failed"
		case pb.TaskState_TASK_STATE_CANCELLED:
			result = "cancelled"
		}
		event(s, m, "task."+t.Kind, t.Target, result, t.Error)
		s.pruneTasks()
	}
	return t
}
