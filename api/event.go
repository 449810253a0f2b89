package api

import (
	"context"

	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
)

// DefaultEventLimit is how many events a list returns when not told.
const DefaultEventLimit = 100

func eventsAfter(st *raftstore.State, after uint64, target string) []*pb.Event {
	var out []*pb.Event
	for _, e := range st.Events {
		if e.Index > after && (target == "" || e.Target == target) {
			out = append(out, e)
		}
	}
	return out
}

func (s *Server) ListEvents(ctx context.Context, req *pb.ListEventsRequest) (*pb.ListEventsResponse, error) {
	g, err := s.group(req.Cluster)
	if err != nil {
		return nil, err
	}
	limit := int(req.Limit)
	if limit <= 0 {
		limit = DefaultEventLimit
	}
	out := &pb.ListEventsResponse{}
	g.Store.Read(func(st *raftstore.State) { out.Events = eventsAfter(st, req.After, req.Target) })
	if len(out.Events) > limit {
		out.Events = out.Events[len(out.Events)-limit:]
	}
	return out, nil
}

// WatchEvents streams events after req.After as they are applied.
func (s *Server) WatchEvents(req *pb.WatchEventsRequest, stream pb.EventService_WatchEventsServer) error {
	g, err := s.group(req.Cluster)
	if err != nil {
		return err
	}
	after := req.After
	for {
		_, ch := g.Store.Watch()
		var evs []*pb.Event
		g.Store.Read(func(st *raftstore.State) { evs = eventsAfter(st, after, "") })
		for _, e := range evs {
			if err := stream.Send(&pb.WatchEventsResponse{Event: e}); err != nil {
				return err
			}
			after = e.Index
		}
		select {
		case <-ch:
		case <-stream.Context().Done():
			return nil
		}
	}
}
