package raftstore

import (
	"maps"
	"slices"
	"sort"

	pb "github.com/minet/corral/proto/corral/v1"
	"google.golang.org/protobuf/proto"
)

// Retention bounds for the append-only parts of the state.
const (
	MaxEvents        = 10000
	MaxFinishedTasks = 1000
)

// State is one cluster's replicated state. Only the FSM mutates it, and it
// never mutates a stored message in place: it stores a modified clone, so a
// reader may keep a pointer it got under the read lock.
type State struct {
	Cluster  *pb.ClusterInfo
	Nodes    map[string]*pb.Node
	VMs      map[string]*pb.VM
	Networks map[string]*pb.Network
	Pools    map[string]*pb.StoragePool
	Volumes  map[string]*pb.Volume // key: pool/name
	Tasks    map[string]*pb.Task
	Tokens   map[string]*pb.JoinToken
	Events   []*pb.Event

	NextEventIndex uint64
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		Nodes:          map[string]*pb.Node{},
		VMs:            map[string]*pb.VM{},
		Networks:       map[string]*pb.Network{},
		Pools:          map[string]*pb.StoragePool{},
		Volumes:        map[string]*pb.Volume{},
		Tasks:          map[string]*pb.Task{},
		Tokens:         map[string]*pb.JoinToken{},
		NextEventIndex: 1,
	}
}

// VolumeKey is the key of a volume in State.Volumes.
func VolumeKey(pool, name string) string { return pool + "/" + name }

// Settings returns the cluster settings with defaults filled in.
func (s *State) Settings() *pb.Settings {
	out := DefaultSettings()
	if s.Cluster != nil && s.Cluster.Settings != nil {
		proto.Merge(out, s.Cluster.Settings)
	}
	return out
}

// DefaultSettings are the cluster tunables before any change.
func DefaultSettings() *pb.Settings {
	return &pb.Settings{
		CpuOvercommit:   4,
		MemOvercommit:   1,
		SuspectAfterMs:  3000,
		DownAfterMs:     5000,
		MaxRestarts:     3,
		RestartWindowMs: 10 * 60 * 1000,
	}
}

func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortedValues[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// Export returns the whole state as one message with every table sorted by
// key, so equal states give byte-equal snapshots.
func (s *State) Export() *pb.State {
	return &pb.State{
		Cluster:        s.Cluster,
		Nodes:          sortedValues(s.Nodes),
		Vms:            sortedValues(s.VMs),
		Networks:       sortedValues(s.Networks),
		Pools:          sortedValues(s.Pools),
		Volumes:        sortedValues(s.Volumes),
		Tasks:          sortedValues(s.Tasks),
		Tokens:         sortedValues(s.Tokens),
		Events:         s.Events,
		NextEventIndex: s.NextEventIndex,
	}
}

// Import replaces s with the content of a snapshot message.
func Import(m *pb.State) *State {
	s := NewState()
	s.Cluster = m.GetCluster()
	for _, n := range m.Nodes {
		s.Nodes[n.Name] = n
	}
	for _, v := range m.Vms {
		s.VMs[v.Name] = v
	}
	for _, n := range m.Networks {
		s.Networks[n.Name] = n
	}
	for _, p := range m.Pools {
		s.Pools[p.Name] = p
	}
	for _, v := range m.Volumes {
		s.Volumes[VolumeKey(v.Pool, v.Name)] = v
	}
	for _, t := range m.Tasks {
		s.Tasks[t.Id] = t
	}
	for _, t := range m.Tokens {
		s.Tokens[t.Id] = t
	}
	s.Events = m.Events
	s.NextEventIndex = max(m.NextEventIndex, 1)
	return s
}

// SortedNodes returns the nodes by name.
func (s *State) SortedNodes() []*pb.Node { return sortedValues(s.Nodes) }

// SortedVMs returns the VMs by name.
func (s *State) SortedVMs() []*pb.VM { return sortedValues(s.VMs) }

// SortedNetworks returns the networks by name.
func (s *State) SortedNetworks() []*pb.Network { return sortedValues(s.Networks) }

// SortedPools returns the pools by name.
func (s *State) SortedPools() []*pb.StoragePool { return sortedValues(s.Pools) }

// SortedVolumes returns the volumes by pool/name.
func (s *State) SortedVolumes() []*pb.Volume { return sortedValues(s.Volumes) }

// SortedTasks returns the tasks by creation time then ID.
func (s *State) SortedTasks() []*pb.Task {
	out := sortedValues(s.Tasks)
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedUnixNano < out[j].CreatedUnixNano })
	return out
}

func (s *State) addEvent(e *pb.Event) {
	e.Index = s.NextEventIndex
	s.NextEventIndex++
	s.Events = append(s.Events, e)
	if len(s.Events) > MaxEvents {
		// Re-slicing shares the array; append copies once it is full, so
		// memory stays bounded without copying at every event.
		s.Events = s.Events[len(s.Events)-MaxEvents:]
	}
}

// pruneTasks keeps at most MaxFinishedTasks finished tasks, dropping the
// oldest; running tasks are never dropped.
func (s *State) pruneTasks() {
	var done []*pb.Task
	for _, t := range s.Tasks {
		if TaskFinished(t.State) {
			done = append(done, t)
		}
	}
	if len(done) <= MaxFinishedTasks {
		return
	}
	sort.Slice(done, func(i, j int) bool {
		if done[i].UpdatedUnixNano != done[j].UpdatedUnixNano {
			return done[i].UpdatedUnixNano < done[j].UpdatedUnixNano
		}
		return done[i].Id < done[j].Id
	})
	for _, t := range done[:len(done)-MaxFinishedTasks] {
		delete(s.Tasks, t.Id)
	}
}

// TaskFinished reports whether a task state is final.
func TaskFinished(st pb.TaskState) bool {
	return st == pb.TaskState_TASK_STATE_SUCCEEDED || st == pb.TaskState_TASK_STATE_FAILED ||
		st == pb.TaskState_TASK_STATE_CANCELLED
}

// VMsOn returns the VMs placed on node, by name.
func (s *State) VMsOn(node string) []*pb.VM {
	var out []*pb.VM
	for _, v := range s.SortedVMs() {
		if v.Node == node {
			out = append(out, v)
		}
	}
	return out
}

// Copy returns a snapshot of s that stays valid after the read lock is
// released: the FSM replaces map entries in place, so a reader that keeps
// the maps beyond Read must keep copies (the messages themselves are never
// changed in place and are shared).
func (s *State) Copy() *State {
	c := *s
	c.Nodes, c.VMs, c.Networks, c.Pools = maps.Clone(s.Nodes), maps.Clone(s.VMs), maps.Clone(s.Networks), maps.Clone(s.Pools)
	c.Volumes, c.Tasks, c.Tokens = maps.Clone(s.Volumes), maps.Clone(s.Tasks), maps.Clone(s.Tokens)
	c.Events = slices.Clip(s.Events)
	return &c
}
