package api

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/minet/corral/errdefs"
	"github.com/minet/corral/scheduler"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToStatus(t *testing.T) {
	cause := errors.New("disk on fire")
	remote := status.Error(codes.FailedPrecondition, "vm \"web\" is running on n2")
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		msg  string // the whole status message: nothing lost, nothing added
	}{
		{"invalid", errdefs.Invalid("VLAN id %d out of range", 5000), codes.InvalidArgument, "VLAN id 5000 out of range"},
		{"not found", errdefs.NotFound("vm %q not found", "web"), codes.NotFound, `vm "web" not found`},
		{"exists", errdefs.Exists("network %q already exists", "lan"), codes.AlreadyExists, `network "lan" already exists`},
		{"precondition", errdefs.Precondition("vm is running"), codes.FailedPrecondition, "vm is running"},
		{"unavailable", errdefs.Unavailable("no leader"), codes.Unavailable, "no leader"},
		{"exhausted", errdefs.Exhausted("no node fits"), codes.ResourceExhausted, "no node fits"},
		{"denied", errdefs.Denied("nodes only"), codes.PermissionDenied, "nodes only"},
		{"unauthenticated", errdefs.Unauthenticated("certificate required"), codes.Unauthenticated, "certificate required"},
		{"deadline kind", &errdefs.Error{Kind: errdefs.KindDeadline, Msg: "timed out"}, codes.DeadlineExceeded, "timed out"},

		// A kind survives wrapping on the way up, and the message keeps
		// every layer.
		{"wrapped by fmt", fmt.Errorf("create vm web: %w", errdefs.NotFound("network %q not found", "lan")),
			codes.NotFound, `create vm web: network "lan" not found`},
		{"kind with cause", errdefs.Wrap(errdefs.KindUnavailable, cause, "reach n2"), codes.Unavailable, "reach n2: disk on fire"},
		{"outer kind wins", errdefs.Wrap(errdefs.KindPrecondition, errdefs.NotFound("volume gone"), "cannot delete"),
			codes.FailedPrecondition, "cannot delete: volume gone"},
		// The kind decides even when the cause is a context error: a
		// write that was not proposed in time is retryable (Unavailable).
		{"kind over context", errdefs.Wrap(errdefs.KindUnavailable, context.DeadlineExceeded, "not proposed in time"),
			codes.Unavailable, "not proposed in time: context deadline exceeded"},
		{"waitState timeout", errdefs.Wrap(errdefs.KindDeadline, context.DeadlineExceeded, "timed out waiting for the cluster"),
			codes.DeadlineExceeded, "timed out waiting for the cluster: context deadline exceeded"},
		// Scheduler sentinels carry a kind (no errdefs import needed there).
		{"scheduler no fit", fmt.Errorf("place: %w", scheduler.ErrNoFit), codes.ResourceExhausted, "place: no node fits"},
		{"scheduler unknown node", &scheduler.UnknownNodeError{Node: "n9", Known: []string{"n1"}}, codes.NotFound, `unknown node "n9" (nodes: n1)`},

		// Bare context errors.
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "context deadline exceeded"},
		{"deadline wrapped", fmt.Errorf("apply: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "apply: context deadline exceeded"},
		{"canceled", context.Canceled, codes.Canceled, "context canceled"},
		{"canceled wrapped", fmt.Errorf("watch: %w", context.Canceled), codes.Canceled, "watch: context canceled"},

		// Anything without a kind is a bug or an unexpected failure.
		{"unknown", errors.New("boom"), codes.Internal, "boom"},
		{"unknown wrapped", fmt.Errorf("open raft log: %w", cause), codes.Internal, "open raft log: disk on fire"},
		{"unknown kind value", &errdefs.Error{Kind: errdefs.KindUnknown, Msg: "odd"}, codes.Internal, "odd"},

		// A status from another node (forwarding) passes through as is.
		{"remote status", remote, codes.FailedPrecondition, `vm "web" is running on n2`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := toStatus(tc.err)
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("toStatus(%v) = %T %v, not a status", tc.err, err, err)
			}
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("toStatus(%v) = %v %q, want %v %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestToStatusNil(t *testing.T) {
	if err := toStatus(nil); err != nil {
		t.Fatalf("toStatus(nil) = %v, want nil", err)
	}
}

// TestToStatusCoversEveryKind fails when a kind is added to errdefs but
// not mapped here: it would silently become Internal.
func TestToStatusCoversEveryKind(t *testing.T) {
	seen := map[codes.Code]errdefs.Kind{}
	for k := errdefs.KindUnknown + 1; k.String() != "unknown"; k++ {
		code := status.Code(toStatus(&errdefs.Error{Kind: k, Msg: "x"}))
		if code == codes.Internal || code == codes.Unknown {
			t.Errorf("kind %v maps to %v", k, code)
		}
		if prev, dup := seen[code]; dup {
			t.Errorf("kinds %v and %v both map to %v", prev, k, code)
		}
		seen[code] = k
	}
	if len(seen) < 9 {
		t.Errorf("only %d kinds found, errdefs has at least 9", len(seen))
	}
}
