package hypervisor

import (
	"testing"

	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

func TestToEvent(t *testing.T) {
	id := uuid.MustParse("5d1c2e0a-8f0b-4e58-9b1a-3c0d6f7e8a91")
	tests := []struct {
		event, detail int32
		want          Event
	}{
		{2, 0, Event{Kind: "started", State: StateRunning, Detail: "booted"}},
		{2, 1, Event{Kind: "started", State: StateRunning, Detail: "migrated"}},
		{5, 1, Event{Kind: "stopped", State: StateStopped, Detail: "destroyed"}},
		{5, 2, Event{Kind: "stopped", State: StateCrashed, Detail: "crashed"}},
		{5, 3, Event{Kind: "stopped", State: StateStopped, Detail: "migrated"}},
		{5, 5, Event{Kind: "stopped", State: StateCrashed, Detail: "failed"}},
		{3, 0, Event{Kind: "suspended", State: StatePaused, Detail: "paused"}},
		{4, 0, Event{Kind: "resumed", State: StateRunning, Detail: "unpaused"}},
		{6, 1, Event{Kind: "shutdown", State: StateShuttingDown, Detail: "guest"}},
		{8, 0, Event{Kind: "crashed", State: StateCrashed, Detail: "panicked"}},
		{0, 0, Event{Kind: "defined", Detail: "added"}},
		{1, 0, Event{Kind: "undefined", Detail: "removed"}},
		{42, 0, Event{Kind: "event-42"}},
	}
	for _, tt := range tests {
		got := toEvent(libvirt.DomainEventLifecycleMsg{
			Dom:   libvirt.Domain{Name: "vm1", UUID: libvirt.UUID(id)},
			Event: tt.event, Detail: tt.detail,
		})
		tt.want.Name, tt.want.UUID = "vm1", id.String()
		if got != tt.want {
			t.Errorf("event %d/%d = %+v, want %+v", tt.event, tt.detail, got, tt.want)
		}
	}
}

func TestRPCErrorDecoding(t *testing.T) {
	var x xdrBuf
	x.u32(42) // VIR_ERR_NO_DOMAIN
	x.u32(10) // source
	msg := "Domain not found: no domain with matching name 'x'"
	x.optStr(&msg)
	x.u32(2) // level
	err := decodeRPCError(x.b)
	if !isLibvirtErr(err, libvirt.ErrNoDomain) || err.Error() != msg {
		t.Errorf("decoded %#v", err)
	}
	if err := decodeRPCError(x.b[:6]); isLibvirtErr(err, libvirt.ErrNoDomain) || err == nil {
		t.Errorf("truncated error decoded as %#v", err)
	}
	// Strings are padded to 4 bytes.
	var y xdrBuf
	y.str("abcde")
	if len(y.b) != 12 {
		t.Errorf("xdr string of 5 bytes takes %d bytes, want 12", len(y.b))
	}
}
