package netbridge

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minet/corral/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func nsPath(h *testenv.Host) string { return "/var/run/netns/" + h.NS }

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(discard{}, nil))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func run(t testing.TB, h *testenv.Host, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := h.Run(ctx, args[0], args[1:]...)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return out
}

// ipLink is what `ip -d -j link show` tells of a link: read by iproute2, not
// by netbridge's own parser, so the tests check the kernel's view.
type ipLink struct {
	Index    int    `json:"ifindex"`
	Name     string `json:"ifname"`
	MTU      int    `json:"mtu"`
	Master   string `json:"master"`
	Alias    string `json:"ifalias"`
	Flags    []string
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			STPState int `json:"stp_state"`
			Priority int `json:"priority"`
			ID       int `json:"id"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func (l ipLink) up() bool {
	for _, f := range l.Flags {
		if f == "UP" {
			return true
		}
	}
	return false
}

// links lists every link of the host, by name.
func links(t testing.TB, h *testenv.Host) map[string]ipLink {
	t.Helper()
	out := run(t, h, "ip", "-d", "-j", "link", "show")
	var ls []ipLink
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("parse ip -j link: %v\n%s", err, out)
	}
	m := map[string]ipLink{}
	for _, l := range ls {
		m[l.Name] = l
	}
	return m
}

// addVeth creates a veth pair name/name+"p" inside the host, both up.
func addVeth(t testing.TB, h *testenv.Host, name string) {
	t.Helper()
	run(t, h, "ip", "link", "add", name, "type", "veth", "peer", "name", name+"p")
	run(t, h, "ip", "link", "set", name+"p", "up")
}

// linkEvents records RTM_NEWLINK/DELLINK notifications of a namespace. A
// sentinel change on a dummy link marks the end of a window, so "no event
// before the sentinel" is exact, with no sleeping.
type linkEvents struct {
	ch       chan netlink.LinkUpdate
	done     chan struct{}
	h        *testenv.Host
	sentinel string
	seq      int
}

func watchLinks(t testing.TB, h *testenv.Host) *linkEvents {
	t.Helper()
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	w := &linkEvents{ch: make(chan netlink.LinkUpdate, 4096), done: make(chan struct{}), h: h, sentinel: "nbsent"}
	// No dummy driver in this kernel: a veth end serves.
	run(t, h, "ip", "link", "add", w.sentinel, "type", "veth", "peer", "name", w.sentinel+"p")
	// The kernel announces an alias change only for a link that is up.
	run(t, h, "ip", "link", "set", w.sentinel, "up")
	if err := netlink.LinkSubscribeWithOptions(w.ch, w.done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: func(err error) {
		select {
		case <-w.done: // closing the socket ends the receive loop
		default:
			t.Logf("link subscription: %v", err)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(w.done) })
	return w
}

// drain returns the configuration changes seen since the last drain:
// link creations, deletions, and RTM_NEWLINK whose MTU, alias, master or
// admin state differ from before. Kernel notices that change nothing of
// that (carrier coming up through linkwatch, bridge port STP states, sent
// as AF_BRIDGE) are not configuration writes and are skipped.
func (w *linkEvents) drain(t testing.TB, before map[string]ipLink) []string {
	t.Helper()
	w.seq++
	mark := fmt.Sprintf("mark-%d", w.seq)
	run(t, w.h, "ip", "link", "set", w.sentinel, "alias", mark)
	var changed []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case u := <-w.ch:
			a := u.Attrs()
			if a.Name == w.sentinel {
				if a.Alias == mark {
					return changed
				}
				continue
			}
			if u.IfInfomsg.Family == syscall.AF_BRIDGE {
				continue
			}
			b, known := before[a.Name]
			if u.Header.Type == syscall.RTM_NEWLINK && known && b.Index == a.Index && b.MTU == a.MTU &&
				b.Alias == a.Alias && b.up() == (a.Flags&net.FlagUp != 0) &&
				(b.Master != "") == (a.MasterIndex != 0) {
				continue
			}
			changed = append(changed, fmt.Sprintf("%s(type %d)", a.Name, u.Header.Type))
		case <-timeout:
			t.Fatalf("sentinel event %s not seen", mark)
		}
	}
}

func statusByName(st []Status) map[string]Status {
	m := map[string]Status{}
	for _, s := range st {
		m[s.Network] = s
	}
	return m
}

func requireApplied(t testing.TB, st []Status, names ...string) {
	t.Helper()
	m := statusByName(st)
	for _, n := range names {
		if s, ok := m[n]; !ok || !s.Applied || s.Error != "" {
			t.Fatalf("network %s not applied: %+v (all: %+v)", n, s, st)
		}
	}
}

func requireFailed(t testing.TB, st []Status, name, substr string) {
	t.Helper()
	s, ok := statusByName(st)[name]
	if !ok || s.Applied || !strings.Contains(s.Error, substr) {
		t.Fatalf("network %s: want failure containing %q, got %+v", name, substr, s)
	}
}

// runRoot runs a command from the root namespace (only ip/netns plumbing
// and commands that enter a lab namespace themselves).
func runRoot(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}
