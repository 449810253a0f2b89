package api

import (
	"context"
	"errors"

	"github.com/minet/corral/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus maps a domain error to a gRPC status: the one place where
// errdefs kinds become codes. A status that came from another node
// (forwarding) passes through unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return s.Err()
	}
	var code codes.Code
	switch errdefs.KindOf(err) {
	case errdefs.KindInvalid:
		code = codes.InvalidArgument
	case errdefs.KindNotFound:
		code = codes.NotFound
	case errdefs.KindExists:
		code = codes.AlreadyExists
	case errdefs.KindPrecondition:
		code = codes.FailedPrecondition
	case errdefs.KindUnavailable:
		code = codes.Unavailable
	case errdefs.KindExhausted:
		code = codes.ResourceExhausted
	case errdefs.KindDenied:
		code = codes.PermissionDenied
	case errdefs.KindUnauthenticated:
		code = codes.Unauthenticated
	case errdefs.KindDeadline:
		code = codes.DeadlineExceeded
	default:
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code = codes.DeadlineExceeded
		case errors.Is(err, context.Canceled):
			code = codes.Canceled
		default:
			code = codes.Internal
		}
	}
	return status.Error(code, err.Error())
}
