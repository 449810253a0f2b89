package rbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Fencing: before another node starts a VM whose node stopped answering,
// the HA leader blocklists that node's address so its librbd clients
// (QEMU) can no longer write, then waits for the newest osdmap so the
// entry has reached the OSDs it will talk to.

// monCommand sends one JSON command to the monitors.
func (p *Pool) monCommand(ctx context.Context, cmd map[string]any) ([]byte, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, "", err
	}
	out, status, err := p.conn.MonCommand(b)
	if err != nil {
		return out, status, fmt.Errorf("%w (%s)", mapErr(err), strings.TrimSpace(status))
	}
	return out, status, nil
}

// Blocklist fences every client at addr ("IP" for a whole host, or
// "IP:0/NONCE" for one client) for expiry. An existing entry is removed
// first: re-adding does not extend its expiry.
func (p *Pool) Blocklist(ctx context.Context, addr string, expiry time.Duration) error {
	if addr == "" {
		return errors.New("blocklist: empty address")
	}
	if expiry < time.Second {
		return fmt.Errorf("blocklist %s: expiry %s is too short to fence anything", addr, expiry)
	}
	if err := p.Unblocklist(ctx, addr); err != nil {
		return fmt.Errorf("blocklist %s: %w", addr, err)
	}
	// Pacific rejects an integer or string expire (EINVAL): it must be a
	// JSON number with a fraction.
	secs := json.Number(strconv.FormatFloat(expiry.Seconds(), 'f', 1, 64))
	if _, _, err := p.monCommand(ctx, map[string]any{
		"prefix": "osd blocklist", "blocklistop": "add", "addr": addr, "expire": secs,
	}); err != nil {
		return fmt.Errorf("blocklist %s: %w", addr, err)
	}
	return nil
}

// Unblocklist removes addr's entry; an absent entry is not an error.
func (p *Pool) Unblocklist(ctx context.Context, addr string) error {
	if _, _, err := p.monCommand(ctx, map[string]any{
		"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr,
	}); err != nil {
		return fmt.Errorf("unblocklist %s: %w", addr, err)
	}
	return nil
}

// Blocklisted lists the blocklisted addresses as Ceph prints them
// ("10.77.0.1:0/0" for a whole host).
func (p *Pool) Blocklisted(ctx context.Context) ([]string, error) {
	out, _, err := p.monCommand(ctx, map[string]any{"prefix": "osd blocklist ls", "format": "json"})
	if err != nil {
		return nil, fmt.Errorf("list blocklist: %w", err)
	}
	// Pacific prints the address list and then the (empty) range list as
	// two JSON arrays back to back.
	dec := json.NewDecoder(bytes.NewReader(out))
	var addrs []string
	for {
		var entries []struct {
			Addr string `json:"addr"`
		}
		err := dec.Decode(&entries)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list blocklist: decode %q: %w", out, err)
		}
		for _, e := range entries {
			if e.Addr != "" {
				addrs = append(addrs, e.Addr)
			}
		}
	}
	return addrs, nil
}

// WaitForLatestOSDMap blocks until this client has the cluster's newest
// osdmap, so a blocklist entry added before is enforced on every OSD it
// talks to.
func (p *Pool) WaitForLatestOSDMap(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.conn.WaitForLatestOSDMap(); err != nil {
		return fmt.Errorf("wait for latest osdmap: %w", mapErr(err))
	}
	return nil
}

// Watchers lists the addresses ("IP:0/NONCE") of the other clients that
// have image open, e.g. the QEMU running its VM.
func (p *Pool) Watchers(ctx context.Context, image string) ([]string, error) {
	img, err := p.open(ctx, image, true)
	if err != nil {
		return nil, fmt.Errorf("watchers: %w", err)
	}
	defer img.Close()
	ws, err := p.watchers(img)
	if err != nil {
		return nil, fmt.Errorf("watchers of %s: %w", image, err)
	}
	return ws, nil
}
