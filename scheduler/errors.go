package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/minet/corral/errdefs"
)

// Sentinels for errors.Is. They are *errdefs.Error values, so the API edge
// maps them to a status code by kind without knowing this package.
var (
	// ErrNoFit: no node can take the VM (or the forced node cannot).
	ErrNoFit error = &errdefs.Error{Kind: errdefs.KindExhausted, Msg: "no node fits"}
	// ErrUnknownNode: the forced node is not a cluster member.
	ErrUnknownNode error = &errdefs.Error{Kind: errdefs.KindNotFound, Msg: "unknown node"}
)

// NoFitError says why no node can take a VM: Error lists every node with
// its reason, sorted by node name.
type NoFitError struct {
	Request    Request
	Candidates []Candidate
}

func (e *NoFitError) Error() string {
	var b strings.Builder
	vm := e.Request.VM
	if e.Request.Node != "" {
		fmt.Fprintf(&b, "requested node %s cannot take vm %s (%d MiB, %d vCPU)",
			e.Request.Node, vm.Name, vm.MemoryMiB, vm.VCPUs)
		for _, c := range e.Candidates {
			if c.Node == e.Request.Node {
				b.WriteString(": ")
				b.WriteString(c.Reason)
			}
		}
		return b.String()
	}
	fmt.Fprintf(&b, "no node can take vm %s (%d MiB, %d vCPU)", vm.Name, vm.MemoryMiB, vm.VCPUs)
	if len(e.Candidates) == 0 {
		b.WriteString(": the cluster has no nodes")
		return b.String()
	}
	cs := slices.Clone(e.Candidates)
	slices.SortFunc(cs, func(a, b Candidate) int { return strings.Compare(a.Node, b.Node) })
	for i, c := range cs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(c.Node)
		b.WriteString(": ")
		b.WriteString(c.Reason)
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrNoFit) and errdefs.KindOf work.
func (e *NoFitError) Unwrap() error { return ErrNoFit }

// UnknownNodeError reports a forced node that is not in the snapshot.
type UnknownNodeError struct {
	Node  string
	Known []string // every node name, sorted, so the user can correct a typo
}

func (e *UnknownNodeError) Error() string {
	return "unknown node " + strconv.Quote(e.Node) + " (nodes: " + strings.Join(e.Known, ", ") + ")"
}

// Unwrap makes errors.Is(err, ErrUnknownNode) and errdefs.KindOf work.
func (e *UnknownNodeError) Unwrap() error { return ErrUnknownNode }

// BatchFailure is one request PlaceAll could not place.
type BatchFailure struct {
	Index int // position in PlaceAll's reqs
	VM    string
	Err   error // *NoFitError, *UnknownNodeError or an invalid request
}

// BatchError reports every request of a PlaceAll batch that could not be
// placed, in placement (priority) order.
type BatchError struct {
	Total    int
	Failures []BatchFailure
}

func (e *BatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot place %d of %d vms", len(e.Failures), e.Total)
	for i, f := range e.Failures {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(f.Err.Error())
	}
	return b.String()
}

// Unwrap exposes every failure to errors.Is and errors.As.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, len(e.Failures))
	for i, f := range e.Failures {
		errs[i] = f.Err
	}
	return errs
}
