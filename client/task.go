package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/minet/corral/proto/corral/v1"
)

// TaskError reports a task that ended FAILED or CANCELLED.
type TaskError struct {
	Task *pb.Task
}

func (e *TaskError) Error() string {
	t := e.Task
	what := "failed"
	if t.GetState() == pb.TaskState_TASK_STATE_CANCELLED {
		what = "was cancelled"
	}
	msg := fmt.Sprintf("task %s (%s %s) %s", t.GetId(), t.GetKind(), t.GetTarget(), what)
	if t.GetError() != "" {
		msg += ": " + t.GetError()
	}
	return msg
}

// Done reports whether a task reached a final state.
func Done(t *pb.Task) bool {
	switch t.GetState() {
	case pb.TaskState_TASK_STATE_SUCCEEDED, pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_CANCELLED:
		return true
	}
	return false
}

// watchRetries bounds how often WaitTask reopens a watch that broke (a
// leader change or a node restart) before giving up.
const watchRetries = 5

// WaitTask follows task id until it ends, calling fn (if not nil) with each
// update. It returns the final task, and a *TaskError when the task failed
// or was cancelled. A watch broken by an unavailable node is reopened, on
// the next endpoint if there is one.
func (c *Client) WaitTask(ctx context.Context, cluster, id string, fn func(*pb.Task)) (*pb.Task, error) {
	var last *pb.Task
	var lastErr error
	for attempt := 0; attempt <= watchRetries; attempt++ {
		if attempt > 0 {
			// Back off a little so a cluster electing a leader is not
			// hammered; bounded by watchRetries.
			select {
			case <-ctx.Done():
				return last, fmt.Errorf("wait for task %s: %w", id, ctx.Err())
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		t, err := c.watchOnce(ctx, cluster, id, fn)
		if t != nil {
			last = t
		}
		if err == nil && Done(last) {
			if last.GetState() != pb.TaskState_TASK_STATE_SUCCEEDED {
				return last, &TaskError{Task: last}
			}
			return last, nil
		}
		if err != nil && status.Code(err) != codes.Unavailable {
			return last, fmt.Errorf("wait for task %s: %w", id, err)
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = errors.New("watch kept ending before the task finished")
	}
	return last, fmt.Errorf("wait for task %s: %w", id, lastErr)
}

// watchOnce follows one WatchTask stream until the task ends (nil error,
// final task) or the stream ends.
func (c *Client) watchOnce(ctx context.Context, cluster, id string, fn func(*pb.Task)) (*pb.Task, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Tasks.WatchTask(ctx, &pb.WatchTaskRequest{Cluster: cluster, Id: id})
	if err != nil {
		return nil, err
	}
	var last *pb.Task
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		last = resp.GetTask()
		if fn != nil {
			fn(last)
		}
		if Done(last) {
			return last, nil
		}
	}
}
