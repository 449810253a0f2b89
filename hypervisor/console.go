package hypervisor

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// OpenConsole attaches to the serial console of a running domain through
// libvirtd (virDomainOpenConsole), interactively: reads return what the
// guest prints, writes type into it. Closing it detaches; the guest is not
// affected. An older session on the same console is taken over.
//
// go-libvirt's generated DomainOpenConsole only receives (it has no
// outgoing stream), so the console uses its own connection and speaks the
// few libvirt RPC messages needed here: auth list, connect open, open
// console, then stream packets both ways. A dedicated connection also keeps
// a long console session from holding up calls on the main one.
func (c *Conn) OpenConsole(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open console: %w", err)
	}
	cc, err := openConsole(ctx, c.socket, dom)
	if err != nil {
		return nil, fmt.Errorf("open console of %s: %w", name, err)
	}
	return cc, nil
}

// Libvirt RPC framing (src/rpc/virnetprotocol.x).
const (
	rpcProgram     = 0x20008086 // REMOTE_PROGRAM
	rpcKeepalive   = 0x6b656570 // KEEPALIVE_PROGRAM
	rpcVersion     = 1
	procConnOpen   = 1
	procAuthList   = 66
	procAuthPolkit = 70
	procOpenCons   = 201
	keepalivePing  = 1
	keepalivePong  = 2

	typeCall    = 0
	typeReply   = 1
	typeMessage = 2
	typeStream  = 3

	statusOK       = 0
	statusError    = 1
	statusContinue = 2

	headerLen = 28
	// maxStreamChunk keeps packets far below libvirt's 4 MiB limit.
	maxStreamChunk = 256 << 10
	maxPacket      = 32 << 20
)

type rpcHeader struct {
	Len, Prog, Vers, Proc, Type uint32
	Serial                      uint32
	Status                      uint32
}

type xdrBuf struct{ b []byte }

func (x *xdrBuf) u32(v uint32) { x.b = binary.BigEndian.AppendUint32(x.b, v) }
func (x *xdrBuf) opaque(p []byte) {
	x.b = append(x.b, p...)
	for len(x.b)%4 != 0 {
		x.b = append(x.b, 0)
	}
}
func (x *xdrBuf) str(s string) { x.u32(uint32(len(s))); x.opaque([]byte(s)) }
func (x *xdrBuf) optStr(s *string) {
	if s == nil {
		x.u32(0)
		return
	}
	x.u32(1)
	x.str(*s)
}
func (x *xdrBuf) domain(d libvirt.Domain) {
	x.str(d.Name)
	x.opaque(d.UUID[:])
	x.u32(uint32(d.ID))
}

type xdrReader struct {
	b   []byte
	err error
}

func (r *xdrReader) u32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.err = io.ErrUnexpectedEOF
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *xdrReader) str() string {
	n := int(r.u32())
	padded := (n + 3) &^ 3
	if r.err != nil || n < 0 || len(r.b) < padded {
		r.err = io.ErrUnexpectedEOF
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[padded:]
	return s
}

// decodeRPCError reads the head of a remote_error.
func decodeRPCError(p []byte) error {
	r := &xdrReader{b: p}
	code := r.u32()
	_ = r.u32() // domain (error source)
	msg := "unknown error"
	if r.u32() == 1 {
		msg = r.str()
	}
	if r.err != nil {
		return fmt.Errorf("libvirt error (undecodable: %w)", r.err)
	}
	return libvirt.Error{Code: code, Message: msg}
}

type consoleConn struct {
	conn   net.Conn
	br     *bufio.Reader
	serial uint32 // serial of the open-console call: tags the stream

	wmu sync.Mutex // one packet at a time on the wire

	pr *io.PipeReader
	pw *io.PipeWriter

	closeOnce sync.Once
}

func openConsole(ctx context.Context, socket string, dom libvirt.Domain) (*consoleConn, error) {
	d := net.Dialer{Timeout: DefaultDialTimeout}
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultCallTimeout)
	}
	_ = conn.SetDeadline(deadline)
	cc := &consoleConn{conn: conn, br: bufio.NewReader(conn)}
	if err := cc.handshake(dom); err != nil {
		conn.Close()
		return nil, err
	}
	// The session lasts as long as the caller wants.
	_ = conn.SetDeadline(time.Time{})
	cc.pr, cc.pw = io.Pipe()
	go cc.readLoop()
	return cc, nil
}

func (cc *consoleConn) send(h rpcHeader, payload []byte) error {
	h.Len = uint32(headerLen + len(payload))
	h.Prog, h.Vers = rpcProgram, rpcVersion
	if h.Proc == keepalivePong {
		h.Prog = rpcKeepalive
	}
	buf := make([]byte, 0, h.Len)
	for _, v := range []uint32{h.Len, h.Prog, h.Vers, h.Proc, h.Type, h.Serial, h.Status} {
		buf = binary.BigEndian.AppendUint32(buf, v)
	}
	buf = append(buf, payload...)
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_, err := cc.conn.Write(buf)
	return err
}

func (cc *consoleConn) recv() (rpcHeader, []byte, error) {
	var hb [headerLen]byte
	if _, err := io.ReadFull(cc.br, hb[:]); err != nil {
		return rpcHeader{}, nil, err
	}
	var h rpcHeader
	for i, p := range []*uint32{&h.Len, &h.Prog, &h.Vers, &h.Proc, &h.Type, &h.Serial, &h.Status} {
		*p = binary.BigEndian.Uint32(hb[i*4:])
	}
	if h.Len < headerLen || h.Len > maxPacket {
		return h, nil, fmt.Errorf("bad libvirt packet length %d", h.Len)
	}
	payload := make([]byte, h.Len-headerLen)
	if _, err := io.ReadFull(cc.br, payload); err != nil {
		return h, nil, err
	}
	return h, payload, nil
}

// rpc makes one call and waits for its reply, skipping anything else.
func (cc *consoleConn) rpc(serial, proc uint32, payload []byte) ([]byte, error) {
	if err := cc.send(rpcHeader{Proc: proc, Type: typeCall, Serial: serial}, payload); err != nil {
		return nil, err
	}
	for {
		h, p, err := cc.recv()
		if err != nil {
			return nil, err
		}
		if h.Prog != rpcProgram || h.Type != typeReply || h.Serial != serial {
			continue
		}
		if h.Status == statusError {
			return nil, decodeRPCError(p)
		}
		return p, nil
	}
}

func (cc *consoleConn) handshake(dom libvirt.Domain) error {
	p, err := cc.rpc(1, procAuthList, nil)
	if err != nil {
		return fmt.Errorf("auth list: %w", err)
	}
	r := &xdrReader{b: p}
	// As go-libvirt does: only the first offered method matters.
	if n := r.u32(); n > 0 && r.u32() == 2 /* REMOTE_AUTH_POLKIT */ && r.err == nil {
		if _, err := cc.rpc(2, procAuthPolkit, nil); err != nil {
			return fmt.Errorf("polkit auth: %w", err)
		}
	}
	var x xdrBuf
	uri := string(libvirt.QEMUSystem)
	x.optStr(&uri)
	x.u32(0)
	if _, err := cc.rpc(3, procConnOpen, x.b); err != nil {
		return fmt.Errorf("connect open: %w", err)
	}
	x = xdrBuf{}
	x.domain(dom)
	x.optStr(nil) // first console
	x.u32(uint32(libvirt.DomainConsoleForce))
	cc.serial = 4
	if _, err := cc.rpc(cc.serial, procOpenCons, x.b); err != nil {
		return fmt.Errorf("open console: %w", err)
	}
	return nil
}

func (cc *consoleConn) readLoop() {
	for {
		h, p, err := cc.recv()
		if err != nil {
			cc.pw.CloseWithError(err)
			return
		}
		switch {
		case h.Prog == rpcKeepalive && h.Proc == keepalivePing:
			_ = cc.send(rpcHeader{Proc: keepalivePong, Type: typeMessage}, nil)
		case h.Prog == rpcProgram && h.Type == typeStream && h.Serial == cc.serial:
			switch h.Status {
			case statusContinue:
				if len(p) == 0 {
					cc.pw.Close() // libvirt ends some streams this way
					return
				}
				if _, err := cc.pw.Write(p); err != nil {
					return // reader closed
				}
			case statusOK:
				cc.pw.Close()
				return
			default:
				cc.pw.CloseWithError(decodeRPCError(p))
				return
			}
		}
	}
}

// Read returns console output; io.EOF when the guest stops.
func (cc *consoleConn) Read(b []byte) (int, error) { return cc.pr.Read(b) }

// Write types into the console.
func (cc *consoleConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), maxStreamChunk)]
		if err := cc.send(rpcHeader{Proc: procOpenCons, Type: typeStream, Serial: cc.serial, Status: statusContinue}, chunk); err != nil {
			return n, fmt.Errorf("console write: %w", err)
		}
		n += len(chunk)
		b = b[len(chunk):]
	}
	return n, nil
}

// Close finishes the stream and the connection.
func (cc *consoleConn) Close() error {
	var err error
	cc.closeOnce.Do(func() {
		_ = cc.conn.SetWriteDeadline(time.Now().Add(time.Second))
		// Finish the stream so libvirtd frees the console at once.
		ferr := cc.send(rpcHeader{Proc: procOpenCons, Type: typeStream, Serial: cc.serial, Status: statusOK}, nil)
		err = errors.Join(ferr, cc.conn.Close())
		cc.pr.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}
