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
	f, err := os.Open(a.ConsoleLog(clusterName, vm))
	if err != nil {
		return err
	}
	defer f.Close()
	if !replay {
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if hv := a.conn(); hv != nil {
		if c, err := hv.OpenConsole(ctx, DomainName(clusterName, vm)); err == nil {
			defer c.Close()
			go func() { _, _ = io.Copy(io.Discard, c) }()
			go func() {
				for {
					select {
					case b, ok := <-in:
						if !ok {
							cancel()
							return
						}
						if _, err := c.Write(b); err != nil {
							return
						}
					case <-ctx.Done():
						return
					}
				}
			}()
		} else {
			a.log.Warn("console input unavailable", "vm", vm, "err", err)
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := out(append([]byte(nil), buf[:n]...)); err != nil {
				return err
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if n == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}
