package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	pb "github.com/minet/corral/proto/corral/v1"
)

// EscapeKey is the default console escape, Ctrl-] as in virsh and telnet.
const EscapeKey byte = 0x1d

// ConsoleOption tunes Console.
type ConsoleOption func(*consoleSettings)

type consoleSettings struct{ replay bool }

// WithReplay says whether the server first sends the console log since boot
// (the default) or only what the guest prints from now on.
func WithReplay(replay bool) ConsoleOption {
	return func(s *consoleSettings) { s.replay = replay }
}

// Console attaches to the serial console of VM name: what the guest prints
// is copied to out and what is read from in is sent to the guest. It
// returns nil when in yields the escape byte (0 disables escaping) or the
// server ends the console, and ctx's error when ctx ends first. The end of
// in does not detach: output keeps flowing until ctx ends, so a script can
// wait for a line while sending nothing.
//
// in is read by a goroutine that may stay blocked in Read after Console
// returns; give it a reader that can be abandoned (stdin, a pipe).
func (c *Client) Console(ctx context.Context, cluster, name string, in io.Reader, out io.Writer, escape byte, opts ...ConsoleOption) error {
	s := consoleSettings{replay: true}
	for _, o := range opts {
		o(&s)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.VMs.Console(ctx)
	if err != nil {
		return fmt.Errorf("console of %s: %w", name, err)
	}
	// A failed Send reports io.EOF; the cause comes from Recv below.
	if err := stream.Send(&pb.ConsoleRequest{Cluster: cluster, Name: name, Replay: s.replay}); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("console of %s: %w", name, err)
	}

	done := make(chan error, 2)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				chunk, escaped := buf[:n], false
				if escape != 0 {
					if i := bytes.IndexByte(chunk, escape); i >= 0 {
						chunk, escaped = chunk[:i], true
					}
				}
				if len(chunk) > 0 {
					if stream.Send(&pb.ConsoleRequest{Input: bytes.Clone(chunk)}) != nil {
						return // the receiving side reports why
					}
				}
				if escaped {
					done <- nil
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				done <- nil
				return
			}
			if err != nil {
				done <- fmt.Errorf("console of %s: %w", name, err)
				return
			}
			if _, err := out.Write(resp.GetOutput()); err != nil {
				done <- fmt.Errorf("console of %s: write output: %w", name, err)
				return
			}
		}
	}()
	var result error
	select {
	case result = <-done:
	case <-ctx.Done():
		result = ctx.Err()
	}
	// Stop the stream and wait for the receiver so nothing writes to out
	// once Console returned.
	cancel()
	<-recvDone
	return result
}
