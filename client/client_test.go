package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/minet/corral/pki"
	"github.com/minet/corral/pki/pkitest"
	pb "github.com/minet/corral/proto/corral/v1"
)

// fake implements the few services the tests need.
type fake struct {
	pb.UnimplementedClusterServiceServer
	pb.UnimplementedVMServiceServer
	pb.UnimplementedTaskServiceServer
	pb.UnimplementedStorageServiceServer

	clusters []string
	tasks    map[string][]*pb.Task // updates WatchTask sends, by id

	mu          sync.Mutex
	consoleIn   bytes.Buffer
	consoleOut  []string
	consoleDone chan struct{}
	first       *pb.ConsoleRequest
	imported    []*pb.ImportVolumeRequest
	importErr   error
}

func (f *fake) ListClusters(context.Context, *pb.ListClustersRequest) (*pb.ListClustersResponse, error) {
	return &pb.ListClustersResponse{Clusters: f.clusters}, nil
}

func (f *fake) GetVM(_ context.Context, r *pb.GetVMRequest) (*pb.GetVMResponse, error) {
	return nil, status.Errorf(codes.NotFound, "vm %s not found in cluster %s", r.GetName(), r.GetCluster())
}

func (f *fake) WatchTask(r *pb.WatchTaskRequest, s grpc.ServerStreamingServer[pb.WatchTaskResponse]) error {
	updates, ok := f.tasks[r.GetId()]
	if !ok {
		return status.Errorf(codes.NotFound, "task %s not found", r.GetId())
	}
	for _, t := range updates {
		if err := s.Send(&pb.WatchTaskResponse{Task: t}); err != nil {
			return err
		}
	}
	return nil
}

// Console echoes each input chunk back as "echo:<input>" after sending the
// configured output.
func (f *fake) Console(s grpc.BidiStreamingServer[pb.ConsoleRequest, pb.ConsoleResponse]) error {
	defer close(f.consoleDone)
	first, err := s.Recv()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.first = first
	f.mu.Unlock()
	for _, o := range f.consoleOut {
		if err := s.Send(&pb.ConsoleResponse{Output: []byte(o)}); err != nil {
			return err
		}
	}
	for {
		r, err := s.Recv()
		if err != nil {
			return nil
		}
		f.mu.Lock()
		f.consoleIn.Write(r.GetInput())
		f.mu.Unlock()
		if err := s.Send(&pb.ConsoleResponse{Output: append([]byte("echo:"), r.GetInput()...)}); err != nil {
			return nil
		}
	}
}

func (f *fake) ImportVolume(s grpc.ClientStreamingServer[pb.ImportVolumeRequest, pb.ImportVolumeResponse]) error {
	var size uint64
	var hdr *pb.ImportVolumeRequest
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.imported = append(f.imported, r)
		f.mu.Unlock()
		if hdr == nil {
			hdr = r
			if f.importErr != nil {
				return f.importErr
			}
		}
		size += uint64(len(r.GetData()))
	}
	return s.SendAndClose(&pb.ImportVolumeResponse{Volume: &pb.Volume{Pool: hdr.GetPool(), Name: hdr.GetName(), SizeBytes: size}})
}

func newFake() *fake {
	return &fake{clusters: []string{"prod"}, tasks: map[string][]*pb.Task{}, consoleDone: make(chan struct{})}
}

func (f *fake) register(s *grpc.Server) {
	pb.RegisterClusterServiceServer(s, f)
	pb.RegisterVMServiceServer(s, f)
	pb.RegisterTaskServiceServer(s, f)
	pb.RegisterStorageServiceServer(s, f)
}

// serveUnix serves f on a unix socket in a temporary directory.
func serveUnix(t *testing.T, f *fake) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "corrald.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	f.register(s)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return sock
}

func dialUnix(t *testing.T, f *fake) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Options{Socket: serveUnix(t, f), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestErrorStatusPassesThrough(t *testing.T) {
	t.Parallel()
	c := dialUnix(t, newFake())
	_, err := c.VMs.GetVM(context.Background(), &pb.GetVMRequest{Cluster: "prod", Name: "web"})
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "vm web not found in cluster prod" {
		t.Fatalf("GetVM error = %v, want NotFound with the server's message", err)
	}
}

func TestWaitTask(t *testing.T) {
	t.Parallel()
	running := func(id string, p float64) *pb.Task {
		return &pb.Task{Id: id, Kind: "migrate", Target: "web", State: pb.TaskState_TASK_STATE_RUNNING, Progress: p}
	}
	end := func(id string, s pb.TaskState, msg string) *pb.Task {
		return &pb.Task{Id: id, Kind: "migrate", Target: "web", State: s, Progress: 1, Error: msg}
	}
	f := newFake()
	f.tasks["ok"] = []*pb.Task{running("ok", 0.1), running("ok", 0.7), end("ok", pb.TaskState_TASK_STATE_SUCCEEDED, "")}
	f.tasks["bad"] = []*pb.Task{running("bad", 0.4), end("bad", pb.TaskState_TASK_STATE_FAILED, "destination refused: out of memory")}
	f.tasks["cancelled"] = []*pb.Task{end("cancelled", pb.TaskState_TASK_STATE_CANCELLED, "")}
	c := dialUnix(t, f)
	for _, tc := range []struct {
		id        string
		updates   int
		wantState pb.TaskState
		wantErr   string // substring; "" for success
	}{
		{"ok", 3, pb.TaskState_TASK_STATE_SUCCEEDED, ""},
		{"bad", 2, pb.TaskState_TASK_STATE_FAILED, "task bad (migrate web) failed: destination refused: out of memory"},
		{"cancelled", 1, pb.TaskState_TASK_STATE_CANCELLED, "was cancelled"},
		{"missing", 0, pb.TaskState_TASK_STATE_UNSPECIFIED, "task missing not found"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			var seen int
			got, err := c.WaitTask(context.Background(), "prod", tc.id, func(*pb.Task) { seen++ })
			if seen != tc.updates {
				t.Errorf("callback called %d times, want %d", seen, tc.updates)
			}
			if got.GetState() != tc.wantState {
				t.Errorf("final state %v, want %v", got.GetState(), tc.wantState)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("WaitTask: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("WaitTask error = %v, want it to contain %q", err, tc.wantErr)
			}
			var te *TaskError
			if isTask := errors.As(err, &te); isTask != (tc.wantState != pb.TaskState_TASK_STATE_UNSPECIFIED) {
				t.Errorf("errors.As(TaskError) = %v for %v", isTask, err)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the console's receiving goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls a condition that another goroutine makes true; bounded.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConsoleEscape(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.consoleOut = []string{"login: "}
	c := dialUnix(t, f)
	inR, inW := io.Pipe()
	var out syncBuffer
	res := make(chan error, 1)
	go func() {
		res <- c.Console(context.Background(), "prod", "web", inR, &out, EscapeKey, WithReplay(false))
	}()
	waitFor(t, "the replayed output", func() bool { return strings.Contains(out.String(), "login: ") })
	if _, err := inW.Write([]byte("root\r")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the echo of the input", func() bool { return strings.Contains(out.String(), "echo:root\r") })
	// Everything from the escape byte on stays local.
	go inW.Write([]byte("ls\x1dsecret"))
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Console after escape = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Console did not return on the escape key")
	}
	<-f.consoleDone
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.consoleIn.String(); got != "root\rls" && got != "root\r" {
		t.Errorf("server received %q, want the input before the escape only", got)
	}
	if f.first.GetCluster() != "prod" || f.first.GetName() != "web" || f.first.GetReplay() {
		t.Errorf("first request = %v, want cluster prod, name web, replay false", f.first)
	}
	inW.Close()
}

func TestConsoleInputEOFKeepsOutput(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.consoleOut = []string{"Booting", " Linux\n", "login: "}
	c := dialUnix(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	res := make(chan error, 1)
	go func() { res <- c.Console(ctx, "prod", "web", strings.NewReader(""), &out, EscapeKey) }()
	waitFor(t, "all the output", func() bool { return out.String() == "Booting Linux\nlogin: " })
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Console = %v, want context.Canceled", err)
	}
	if !f.first.GetReplay() {
		t.Error("replay should default to true")
	}
}

func TestImportVolume(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), (5*ImportChunk/2)/16) // 2.5 chunks
	for _, tc := range []struct {
		name      string
		size      uint64
		serverErr error
		wantErr   string
	}{
		{"ok", uint64(len(data)), nil, ""},
		{"server refuses", uint64(len(data)), status.Error(codes.NotFound, "pool nope not found"), "pool nope not found"},
		{"short file", uint64(len(data)) + 1, nil, "expected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.importErr = tc.serverErr
			c := dialUnix(t, f)
			var progress []uint64
			vol, err := c.ImportVolume(context.Background(), "prod", "local", "disk", "n1", tc.size, bytes.NewReader(data),
				func(sent uint64) { progress = append(progress, sent) })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ImportVolume error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if vol.GetSizeBytes() != uint64(len(data)) || vol.GetPool() != "local" || vol.GetName() != "disk" {
				t.Errorf("volume = %v", vol)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			hdr := f.imported[0]
			if hdr.GetCluster() != "prod" || hdr.GetNode() != "n1" || hdr.GetSizeBytes() != uint64(len(data)) || len(hdr.GetData()) != 0 {
				t.Errorf("header = %v", hdr)
			}
			var got []byte
			for _, r := range f.imported[1:] {
				if len(r.GetData()) > ImportChunk {
					t.Errorf("chunk of %d bytes exceeds %d", len(r.GetData()), ImportChunk)
				}
				got = append(got, r.GetData()...)
			}
			if !bytes.Equal(got, data) {
				t.Error("server received different bytes")
			}
			if len(progress) != 3 || progress[len(progress)-1] != uint64(len(data)) {
				t.Errorf("progress = %v", progress)
			}
		})
	}
}

// tlsServer serves f over mutual TLS for ca's cluster on 127.0.0.1.
func tlsServer(t *testing.T, f *fake, ca *pki.CA) string {
	return tlsServerWith(t, ca, f.register)
}

// deadEndpoint returns a loopback address nothing listens on.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestDialTLS(t *testing.T) {
	t.Parallel()
	prod, err := pki.NewCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("prod", time.Now()) // same name, another CA
	if err != nil {
		t.Fatal(err)
	}
	admin, err := prod.NewCreds(pki.RoleAdmin, "alice", nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	live := tlsServer(t, newFake(), prod)
	impostor := tlsServer(t, newFake(), other)
	dead := deadEndpoint(t)
	for _, tc := range []struct {
		name      string
		endpoints []string
		cluster   string
		want      string // endpoint chosen, or "" when Dial must fail
		wantErr   string
	}{
		{"first answers", []string{live, dead}, "prod", live, ""},
		{"skips a dead node", []string{dead, live}, "prod", live, ""},
		{"skips a node of another CA", []string{impostor, live}, "prod", live, ""},
		{"all dead", []string{dead}, "prod", "", dead},
		{"wrong cluster name", []string{live}, "dev", "", "cannot connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var dials atomic.Int32
			dialer := func(ctx context.Context, addr string) (net.Conn, error) {
				dials.Add(1)
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := Dial(ctx, Options{
				Endpoints: tc.endpoints, Cluster: tc.cluster, Timeout: 3 * time.Second,
				CACert: admin.CACertPEM, Cert: admin.CertPEM, Key: admin.KeyPEM,
			}, WithContextDialer(dialer))
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Dial error = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Endpoint() != tc.want {
				t.Errorf("endpoint = %s, want %s", c.Endpoint(), tc.want)
			}
			resp, err := c.Cluster.ListClusters(ctx, &pb.ListClustersRequest{})
			if err != nil || len(resp.GetClusters()) != 1 {
				t.Fatalf("ListClusters = %v, %v", resp, err)
			}
			if dials.Load() == 0 {
				t.Error("the custom dialer was not used")
			}
		})
	}
}

func TestDialNeedsCredentials(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{},
		{Endpoints: []string{"127.0.0.1:1"}},
		{Endpoints: []string{"127.0.0.1:1"}, Cluster: "prod"},
	} {
		if c, err := Dial(context.Background(), o); err == nil {
			c.Close()
			t.Errorf("Dial(%+v) succeeded without credentials", o)
		}
	}
}

// TestFailoverOnUnavailable checks that a unary call moves to the next
// endpoint when the current one answers Unavailable (no quorum).
func TestFailoverOnUnavailable(t *testing.T) {
	t.Parallel()
	prod, err := pki.NewCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := prod.NewCreds(pki.RoleAdmin, "alice", nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sick := &unavailableVM{fake: newFake()}
	healthy := tlsServer(t, newFake(), prod)
	// The sick node answers ListClusters (so Dial picks it) but every VM
	// call with Unavailable.
	sickSrv := tlsServerWith(t, prod, func(s *grpc.Server) {
		pb.RegisterClusterServiceServer(s, sick.fake)
		pb.RegisterVMServiceServer(s, sick)
	})
	c, err := Dial(context.Background(), Options{
		Endpoints: []string{sickSrv, healthy}, Cluster: "prod", Timeout: 3 * time.Second,
		CACert: admin.CACertPEM, Cert: admin.CertPEM, Key: admin.KeyPEM,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Endpoint() != sickSrv {
		t.Fatalf("Dial picked %s, want the first endpoint", c.Endpoint())
	}
	_, err = c.VMs.GetVM(context.Background(), &pb.GetVMRequest{Cluster: "prod", Name: "web"})
	// The healthy fake answers NotFound: proof the call reached it.
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetVM = %v, want NotFound from the second endpoint", err)
	}
	if c.Endpoint() != healthy || sick.calls.Load() != 1 {
		t.Errorf("endpoint = %s after failover (sick called %d times), want %s", c.Endpoint(), sick.calls.Load(), healthy)
	}
}

type unavailableVM struct {
	*fake
	calls atomic.Int32
}

func (u *unavailableVM) GetVM(context.Context, *pb.GetVMRequest) (*pb.GetVMResponse, error) {
	u.calls.Add(1)
	return nil, status.Error(codes.Unavailable, "no leader")
}

func tlsServerWith(t *testing.T, ca *pki.CA, register func(*grpc.Server)) string {
	t.Helper()
	l, creds := pkitest.NodeListener(t, ca, "node1")
	s := grpc.NewServer(grpc.Creds(creds))
	register(s)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}
