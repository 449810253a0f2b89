package api

import (
	"context"

	"github.com/minet/corral/errdefs"
	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	"google.golang.org/protobuf/proto"
)

func (s *Server) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	out := &pb.ListTasksResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Tasks = st.SortedTasks() })
	return out, nil
}

func (s *Server) GetTask(ctx context.Context, req *pb.GetTaskRequest) (*pb.GetTaskResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	out := &pb.GetTaskResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Task = st.Tasks[req.Id] })
	if out.Task == nil {
		return nil, errdefs.NotFound("task %q not found: see `corral task list`", req.Id)
	}
	return out, nil
}

// WatchTask streams a task at each change until it finishes.
func (s *Server) WatchTask(req *pb.WatchTaskRequest, stream pb.TaskService_WatchTaskServer) error {
	g, err := s.group(req.Cluster)
	if err != nil {
		return err
	}
	var last *pb.Task
	for {
		_, ch := g.Store.Watch()
		var t *pb.Task
		g.Store.Read(func(st *raftstore.State) { t = st.Tasks[req.Id] })
		if t == nil {
			return errdefs.NotFound("task %q not found", req.Id)
		}
		if last == nil || !proto.Equal(t, last) {
			if err := stream.Send(&pb.WatchTaskResponse{Task: t}); err != nil {
				return err
			}
			last = t
		}
		if raftstore.TaskFinished(t.State) {
			return nil
		}
		select {
		case <-ch:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (s *Server) CancelTask(ctx context.Context, req *pb.CancelTaskRequest) (*pb.CancelTaskResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_TASK_UPDATE, &pb.TaskUpdateCommand{Id: req.Id, Cancel: true}, actor(ctx)); err != nil {
		return nil, err
	}
	out := &pb.CancelTaskResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Task = st.Tasks[req.Id] })
	return out, nil
}
