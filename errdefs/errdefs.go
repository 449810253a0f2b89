// Package errdefs holds corral's domain error kinds. Packages return these
// (wrapped with context as they travel up); the API edge alone maps a kind to
// a gRPC status code, so the rest of the code never imports grpc/codes.
package errdefs

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the caller: what went wrong from the user's
// point of view, not where.
type Kind int

const (
	KindUnknown Kind = iota
	KindInvalid
	KindNotFound
	KindExists
	KindPrecondition // the request is valid but the state refuses it now
	KindUnavailable  // retry later: no leader, no quorum, a node unreachable
	KindExhausted    // not enough capacity anywhere
	KindDenied       // authenticated but not allowed
	KindUnauthenticated
	KindDeadline
)

func (k Kind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindNotFound:
		return "not found"
	case KindExists:
		return "already exists"
	case KindPrecondition:
		return "failed precondition"
	case KindUnavailable:
		return "unavailable"
	case KindExhausted:
		return "exhausted"
	case KindDenied:
		return "denied"
	case KindUnauthenticated:
		return "unauthenticated"
	case KindDeadline:
		return "deadline"
	}
	return "unknown"
}

// Error is a domain error with a kind and a message meant for the user.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // optional cause
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func newf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// Invalid reports bad input that the user must correct.
func Invalid(format string, args ...any) error { return newf(KindInvalid, format, args...) }

// NotFound reports a named object that does not exist.
func NotFound(format string, args ...any) error { return newf(KindNotFound, format, args...) }

// Exists reports a name already taken.
func Exists(format string, args ...any) error { return newf(KindExists, format, args...) }

// Precondition reports a valid request the current state refuses.
func Precondition(format string, args ...any) error {
	return newf(KindPrecondition, format, args...)
}

// Unavailable reports a transient condition: retry later.
func Unavailable(format string, args ...any) error { return newf(KindUnavailable, format, args...) }

// Exhausted reports missing capacity.
func Exhausted(format string, args ...any) error { return newf(KindExhausted, format, args...) }

// Denied reports a caller that may not do this.
func Denied(format string, args ...any) error { return newf(KindDenied, format, args...) }

// Unauthenticated reports a caller without valid credentials.
func Unauthenticated(format string, args ...any) error {
	return newf(KindUnauthenticated, format, args...)
}

// Wrap gives err a kind and a message while keeping it as the cause.
func Wrap(k Kind, err error, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...), Err: err}
}

// KindOf returns the kind of the first *Error in err's chain.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}

// Is reports whether err has kind k.
func Is(err error, k Kind) bool { return KindOf(err) == k }
