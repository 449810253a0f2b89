package hypervisor

import (
	"context"
	"fmt"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

// Reason strings indexed by libvirt's virDomain*Reason enums.
var (
	runningReasons = []string{"unknown", "booted", "migrated", "restored", "from-snapshot", "unpaused", "migration-canceled", "save-canceled", "wakeup", "crashed", "postcopy", "postcopy-failed"}
	pausedReasons  = []string{"unknown", "user", "migration", "save", "dump", "ioerror", "watchdog", "from-snapshot", "shutting-down", "snapshot", "crashed", "starting-up", "postcopy", "postcopy-failed", "api-error"}
	shutoffReasons = []string{"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot", "daemon"}
	crashedReasons = []string{"unknown", "panicked"}
)

func reasonName(table []string, r int32) string {
	if r >= 0 && int(r) < len(table) {
		return table[r]
	}
	return fmt.Sprintf("reason-%d", r)
}

// mapState turns libvirt's (state, reason) into corral's State and reason.
func mapState(st libvirt.DomainState, reason int32) (State, string) {
	switch st {
	case libvirt.DomainRunning, libvirt.DomainBlocked:
		return StateRunning, reasonName(runningReasons, reason)
	case libvirt.DomainPaused, libvirt.DomainPmsuspended:
		return StatePaused, reasonName(pausedReasons, reason)
	case libvirt.DomainShutdown:
		return StateShuttingDown, "user"
	case libvirt.DomainShutoff:
		r := reasonName(shutoffReasons, reason)
		if r == "crashed" {
			// on_crash=destroy leaves a crashed guest shut off: report
			// the crash, which is what the HA policy acts on.
			return StateCrashed, r
		}
		return StateStopped, r
	case libvirt.DomainCrashed:
		return StateCrashed, reasonName(crashedReasons, reason)
	default:
		return StateUnknown, ""
	}
}

// Event is one domain lifecycle change.
type Event struct {
	Name string
	UUID string
	// Kind is libvirt's event: defined, undefined, started, suspended,
	// resumed, stopped, shutdown, pmsuspended, crashed.
	Kind string
	// State is the state the domain is in after the event; "" for
	// defined and undefined, which do not change it.
	State State
	// Detail is libvirt's detail of the event, e.g. "destroyed" for
	// stopped or "migrated" for started.
	Detail string
}

var eventKinds = []string{"defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"}

// Detail names indexed by event kind, then by libvirt's detail enum.
var eventDetails = [][]string{
	{"added", "updated", "renamed", "from-snapshot"},
	{"removed", "renamed"},
	{"booted", "migrated", "restored", "from-snapshot", "wakeup", "recreated"},
	{"paused", "migrated", "ioerror", "watchdog", "restored", "from-snapshot", "api-error", "postcopy", "postcopy-failed"},
	{"unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed"},
	{"shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"},
	{"finished", "guest", "host"},
	{"memory", "disk"},
	{"panicked", "crashloaded"},
}

func toEvent(m libvirt.DomainEventLifecycleMsg) Event {
	ev := Event{Name: m.Dom.Name, UUID: uuid.UUID(m.Dom.UUID).String(), Kind: fmt.Sprintf("event-%d", m.Event)}
	if m.Event >= 0 && int(m.Event) < len(eventKinds) {
		ev.Kind = eventKinds[m.Event]
		ev.Detail = reasonName(eventDetails[m.Event], m.Detail)
	}
	switch libvirt.DomainEventType(m.Event) {
	case libvirt.DomainEventStarted, libvirt.DomainEventResumed:
		ev.State = StateRunning
	case libvirt.DomainEventSuspended, libvirt.DomainEventPmsuspended:
		ev.State = StatePaused
	case libvirt.DomainEventStopped:
		ev.State = StateStopped
		if ev.Detail == "crashed" || ev.Detail == "failed" {
			// "failed" is QEMU dying under libvirt (killed, OOM, host
			// crash): libvirt records the domain as shut off/crashed.
			ev.State = StateCrashed
		}
	case libvirt.DomainEventShutdown:
		ev.State = StateShuttingDown
	case libvirt.DomainEventCrashed:
		ev.State = StateCrashed
	}
	return ev
}

// Events streams lifecycle events of all domains on this host until ctx
// ends or the connection is lost; then the channel is closed. Callers
// filter by name (see List for ownership) and re-list after a reconnect,
// since events are not replayed.
func (c *Conn) Events(ctx context.Context) (<-chan Event, error) {
	in, err := call(ctx, DefaultCallTimeout, func() (<-chan libvirt.DomainEventLifecycleMsg, error) {
		return c.l.LifecycleEvents(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to lifecycle events: %w", err)
	}
	out := make(chan Event, 64)
	go func() {
		defer close(out)
		for m := range in {
			select {
			case out <- toEvent(m):
			case <-ctx.Done():
				// go-libvirt closes in once it sees ctx done; keep
				// draining so its goroutine is never stuck on a send.
			}
		}
	}()
	return out, nil
}
