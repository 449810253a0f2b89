package agent

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/minet/corral/raftstore"
)

// Console attaches to a VM running on this node: output is the serial log
// (from boot when replay is set, so a late client still sees the ready
// line), input goes to the guest through libvirt's console stream.
func (a *Agent) Console(ctx context.Context, clusterName, vm string, replay bool, in <-chan []byte, out func([]byte) error) error {
	g, err := a.m.Group(clusterName)
	if err != nil {
		return err
	}
	var node string
	g.Store.Read(func(s *raftstore.State) {
		if v, ok := s.VMs[vm]; ok {
			node = v.Node
		}
	})
	if node != a.cfg.Node {
		return errNotHere
	}
	f, err := openLog(ctx, a.ConsoleLog(clusterName, vm))
	if err != nil {
		return err
	}
	defer func() { f.Close() }() // follow may move f to a recreated log
	if !replay {
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if hv := a.conn(); hv != nil {
		open := func() io.ReadWriteCloser {
			c, err := hv.OpenConsole(ctx, DomainName(clusterName, vm))
			if err != nil {
				a.log.Warn("console input unavailable", "vm", vm, "err", err)
				return nil
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
			return c
		}
		c := open()
		go func() {
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for {
				select {
				case b, ok := <-in:
					if !ok {
						cancel()
						return
					}
					if c != nil {
						if _, err := c.Write(b); err == nil {
							continue
						}
						c.Close()
					}
					// The guest restarted (a cold boot is a new QEMU):
					// attach to the new one for this input and the next.
					if c = open(); c != nil {
						_, _ = c.Write(b)
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return follow(ctx, &f, a.ConsoleLog(clusterName, vm), out)
}

// follow copies *fp (opened on path) to out as it grows, like tail -f,
// until ctx ends. A cold boot replaces the serial log (newConsole: its
// history restarts with the new boot); a replaced or truncated log is
// followed from its start, so a client attached across a restart sees the
// new boot. *fp is replaced when the log is reopened; the caller closes
// it.
func follow(ctx context.Context, fp **os.File, path string, out func([]byte) error) error {
	f := *fp
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			off += int64(n)
			if err := out(append([]byte(nil), buf[:n]...)); err != nil {
				return err
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if n > 0 {
			continue
		}
		if cur, err := os.Stat(path); err == nil {
			if fi, ferr := f.Stat(); ferr == nil && !os.SameFile(fi, cur) {
				// Replaced: follow the new file from its start.
				if nf, err := os.Open(path); err == nil {
					f.Close()
					f, *fp, off = nf, nf, 0
					continue
				}
			} else if cur.Size() < off {
				// Truncated under us: read the new boot from the start.
				if _, err := f.Seek(0, io.SeekStart); err == nil {
					off = 0
					continue
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// openLog opens a serial log, waiting a little for it to appear: between
// a cold boot's reset of the log and the new QEMU creating it, the file
// is briefly absent.
func openLog(ctx context.Context, path string) (*os.File, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.Open(path)
		if err == nil || !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return f, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
