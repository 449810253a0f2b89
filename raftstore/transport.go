package raftstore

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStream is a raft.StreamLayer over mutual TLS: the peers of a cluster
// authenticate each other with certificates from the cluster's CA.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

func newTLSStream(bind string, server, client *tls.Config) (*tlsStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft listen %s: %w", bind, err)
	}
	addr, err := net.ResolveTCPAddr("tcp", bind)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("raft address %s: %w", bind, err)
	}
	if server != nil {
		ln = tls.NewListener(ln, server)
	}
	return &tlsStream{Listener: ln, advertise: addr, client: client}, nil
}

func (t *tlsStream) Addr() net.Addr { return t.advertise }

func (t *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if t.client == nil {
		return d.Dial("tcp", string(address))
	}
	return tls.DialWithDialer(d, "tcp", string(address), t.client)
}
