// Package client is the Go client of corral's gRPC API, used by the corral
// CLI and by users' own tools.
//
// A Client talks either to the local corrald over its unix socket (no TLS;
// the local root user is an admin of every cluster of that daemon) or to any
// node of a cluster over mutual TLS, where the TLS server name is the
// cluster name and the client certificate is issued by that cluster's CA.
// Every node answers every call (followers forward writes to the leader), so
// the client only needs one reachable endpoint; it fails over to the next
// one when a call reports codes.Unavailable.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
)

// Defaults shared with the CLI.
const (
	// DefaultSocket is where corrald listens for local admin calls.
	DefaultSocket = "/run/corral/corrald.sock"
	// DefaultTimeout bounds each unary call that has no deadline of its
	// own, and connecting to each endpoint.
	DefaultTimeout = 30 * time.Second
)

// Options says where and how to connect.
type Options struct {
	// Socket is the path of corrald's unix socket; when set, Endpoints and
	// the credentials are ignored.
	Socket string
	// Endpoints are API addresses (host:port) of cluster nodes, tried in
	// order.
	Endpoints []string
	// Cluster names the cluster for mutual TLS (it is the TLS server name).
	Cluster string
	// CACert, Cert and Key are the PEM credentials issued by the cluster CA.
	CACert, Cert, Key []byte
	// Timeout bounds each unary call made without a deadline, and the
	// connection to each endpoint; DefaultTimeout when zero.
	Timeout time.Duration
}

// Option tunes how connections are made.
type Option func(*settings)

type settings struct {
	dialer   func(ctx context.Context, addr string) (net.Conn, error)
	grpcOpts []grpc.DialOption
}

// WithContextDialer makes TCP endpoints be dialed by f, e.g. from inside a
// network namespace. The unix socket is always dialed directly.
func WithContextDialer(f func(ctx context.Context, addr string) (net.Conn, error)) Option {
	return func(s *settings) { s.dialer = f }
}

// WithDialOptions adds gRPC dial options to every connection.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.grpcOpts = append(s.grpcOpts, opts...) }
}

// Client holds the service stubs of one connection to corral.
type Client struct {
	Cluster  pb.ClusterServiceClient
	Nodes    pb.NodeServiceClient
	VMs      pb.VMServiceClient
	Networks pb.NetworkServiceClient
	Storage  pb.StorageServiceClient
	Tasks    pb.TaskServiceClient
	Events   pb.EventServiceClient

	conn *failover
}

// Dial connects to the local socket or to the first endpoint that answers
// within the timeout. Later calls fail over to the next endpoint when one
// reports codes.Unavailable.
func Dial(ctx context.Context, o Options, opts ...Option) (*Client, error) {
	var s settings
	for _, opt := range opts {
		opt(&s)
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	f := &failover{timeout: timeout}
	var creds credentials.TransportCredentials
	switch {
	case o.Socket != "":
		f.targets = []string{"unix://" + o.Socket}
		f.names = []string{o.Socket}
		creds = insecure.NewCredentials()
	case len(o.Endpoints) > 0:
		if o.Cluster == "" {
			return nil, errors.New("connect: mutual TLS needs the cluster name")
		}
		if len(o.CACert) == 0 || len(o.Cert) == 0 || len(o.Key) == 0 {
			return nil, fmt.Errorf("connect to cluster %s: mutual TLS needs the CA certificate, a certificate and its key (see 'corral admin issue-cert')", o.Cluster)
		}
		for _, ep := range o.Endpoints {
			f.targets = append(f.targets, "passthrough:///"+ep)
			f.names = append(f.names, ep)
		}
		creds = credentials.NewTLS(pki.ClientTLS(pki.Creds{
			Cluster: o.Cluster, CACertPEM: o.CACert, CertPEM: o.Cert, KeyPEM: o.Key,
		}, o.Cluster))
	default:
		return nil, errors.New("connect: no socket and no endpoint given")
	}
	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, s.grpcOpts...)
	if s.dialer != nil && o.Socket == "" {
		dialOpts = append(dialOpts, grpc.WithContextDialer(s.dialer))
	}
	f.build = func(target string) (*grpc.ClientConn, error) {
		return grpc.NewClient(target, dialOpts...)
	}
	f.conns = make([]*grpc.ClientConn, len(f.targets))
	if err := f.pick(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return &Client{
		Cluster:  pb.NewClusterServiceClient(f),
		Nodes:    pb.NewNodeServiceClient(f),
		VMs:      pb.NewVMServiceClient(f),
		Networks: pb.NewNetworkServiceClient(f),
		Storage:  pb.NewStorageServiceClient(f),
		Tasks:    pb.NewTaskServiceClient(f),
		Events:   pb.NewEventServiceClient(f),
		conn:     f,
	}, nil
}

// Close closes every connection.
func (c *Client) Close() error { return c.conn.Close() }

// Endpoint is the socket path or endpoint currently in use.
func (c *Client) Endpoint() string {
	c.conn.mu.Lock()
	defer c.conn.mu.Unlock()
	return c.conn.names[c.conn.cur]
}

// Conn exposes the connection for services this package has no stub for.
func (c *Client) Conn() grpc.ClientConnInterface { return c.conn }

// failover is a grpc.ClientConnInterface over several endpoints: it uses
// one at a time and moves to the next when a call fails with Unavailable,
// which is what a dead node or a node without quorum answers.
type failover struct {
	targets, names []string
	build          func(target string) (*grpc.ClientConn, error)
	timeout        time.Duration

	mu     sync.Mutex
	conns  []*grpc.ClientConn // built lazily, one per target
	cur    int
	closed bool
}

// pick selects the first endpoint where a cheap call gets an answer, any
// answer but Unavailable: an error from the server proves the connection
// (TLS included) works.
func (f *failover) pick(ctx context.Context) error {
	var errs []string
	for i := range f.targets {
		cc, err := f.conn(i)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", f.names[i], err))
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, f.timeout)
		_, err = pb.NewClusterServiceClient(cc).ListClusters(pctx, &pb.ListClustersRequest{})
		cancel()
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			if ctx.Err() != nil {
				return fmt.Errorf("connect to %s: %w", f.names[i], ctx.Err())
			}
			errs = append(errs, fmt.Sprintf("%s: %s", f.names[i], status.Convert(err).Message()))
			continue
		}
		f.mu.Lock()
		f.cur = i
		f.mu.Unlock()
		return nil
	}
	return fmt.Errorf("cannot connect to corral: %s", strings.Join(errs, "; "))
}

func (f *failover) conn(i int) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("client is closed")
	}
	if f.conns[i] == nil {
		cc, err := f.build(f.targets[i])
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", f.names[i], err)
		}
		f.conns[i] = cc
	}
	return f.conns[i], nil
}

func (f *failover) current() (int, *grpc.ClientConn, error) {
	f.mu.Lock()
	i := f.cur
	f.mu.Unlock()
	cc, err := f.conn(i)
	return i, cc, err
}

// advance moves past endpoint i unless another call already did.
func (f *failover) advance(i int) {
	f.mu.Lock()
	if f.cur == i {
		f.cur = (i + 1) % len(f.targets)
	}
	f.mu.Unlock()
}

func (f *failover) retryable(ctx context.Context, err error) bool {
	return len(f.targets) > 1 && ctx.Err() == nil && status.Code(err) == codes.Unavailable
}

// Invoke runs a unary call, with the default timeout when ctx has no
// deadline, trying each endpoint at most once.
func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	var err error
	for range f.targets {
		var i int
		var cc *grpc.ClientConn
		if i, cc, err = f.current(); err != nil {
			return err
		}
		err = cc.Invoke(ctx, method, args, reply, opts...)
		if !f.retryable(ctx, err) {
			return err
		}
		f.advance(i)
	}
	return err
}

// NewStream opens a stream; only opening fails over, a stream that breaks
// later is the caller's to reopen.
func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	var err error
	for range f.targets {
		var i int
		var cc *grpc.ClientConn
		if i, cc, err = f.current(); err != nil {
			return nil, err
		}
		var cs grpc.ClientStream
		cs, err = cc.NewStream(ctx, desc, method, opts...)
		if !f.retryable(ctx, err) {
			return cs, err
		}
		f.advance(i)
	}
	return nil, err
}

func (f *failover) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	var errs []error
	for i, cc := range f.conns {
		if cc != nil {
			errs = append(errs, cc.Close())
			f.conns[i] = nil
		}
	}
	return errors.Join(errs...)
}
