package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/minet/corral/pki"
	"github.com/minet/corral/pki/pkitest"
	pb "github.com/minet/corral/proto/corral/v1"
)

// fakeServer records requests and answers from canned data; it stands in
// for corrald so the CLI's parsing and rendering are tested alone.
type fakeServer struct {
	pb.UnimplementedClusterServiceServer
	pb.UnimplementedVMServiceServer
	pb.UnimplementedNetworkServiceServer
	pb.UnimplementedStorageServiceServer
	pb.UnimplementedTaskServiceServer

	clusters []string
	vms      []*pb.VM
	networks []*pb.Network
	tasks    map[string][]*pb.Task
	ca       *pki.CA
	settings *pb.Settings
	console  []string

	mu       sync.Mutex
	reqs     []any  // every request received, in order
	imported []byte // data of the last ImportVolume
}

func (f *fakeServer) record(r any) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
}

// last returns the last request of type T.
func last[T any](t *testing.T, f *fakeServer) T {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.reqs) - 1; i >= 0; i-- {
		if r, ok := f.reqs[i].(T); ok {
			return r
		}
	}
	var zero T
	t.Fatalf("no %T received", zero)
	return zero
}

func (f *fakeServer) ListClusters(context.Context, *pb.ListClustersRequest) (*pb.ListClustersResponse, error) {
	return &pb.ListClustersResponse{Clusters: f.clusters}, nil
}

func (f *fakeServer) ClusterStatus(_ context.Context, r *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	f.record(r)
	return &pb.ClusterStatusResponse{
		Cluster: r.GetCluster(), Leader: "atlantis", Term: 3, CommitIndex: 42, AppliedIndex: 41,
		RaftState: "Follower", AnsweredBy: "discovery", Settings: f.settings,
		Members: []*pb.Member{
			{Name: "atlantis", Role: pb.NodeRole_NODE_ROLE_VOTER, RaftAddress: "10.0.0.1:7000", Leader: true, LastContactMs: -1, Health: pb.NodeHealth_NODE_HEALTH_READY},
			{Name: "houston", Role: pb.NodeRole_NODE_ROLE_WITNESS, RaftAddress: "10.0.0.3:7000", LastContactMs: 1500, Health: pb.NodeHealth_NODE_HEALTH_SUSPECT, Fenced: true},
		},
	}, nil
}

func (f *fakeServer) UpdateSettings(_ context.Context, r *pb.UpdateSettingsRequest) (*pb.UpdateSettingsResponse, error) {
	f.record(r)
	return &pb.UpdateSettingsResponse{Settings: r.GetSettings()}, nil
}

func (f *fakeServer) IssueAdminCert(_ context.Context, r *pb.IssueAdminCertRequest) (*pb.IssueAdminCertResponse, error) {
	f.record(r)
	cert, err := f.ca.SignCSR(r.GetCsrPem(), pki.RoleAdmin, r.GetName(), nil, time.Now(), time.Hour)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IssueAdminCertResponse{CertPem: cert, CaCertPem: f.ca.CertPEM, Endpoints: []string{"10.0.0.1:7443", "10.0.0.2:7443"}}, nil
}

func (f *fakeServer) findVM(name string) (*pb.VM, error) {
	for _, v := range f.vms {
		if v.GetName() == name {
			return v, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "vm %s not found", name)
}

func (f *fakeServer) CreateVM(_ context.Context, r *pb.CreateVMRequest) (*pb.CreateVMResponse, error) {
	f.record(r)
	resp := &pb.CreateVMResponse{Vm: &pb.VM{Name: r.GetName(), Spec: r.GetSpec(), Node: "atlantis", Power: pb.PowerState_POWER_STATE_RUNNING}}
	if r.GetDryRun() {
		resp.Placements = []*pb.Placement{
			{Node: "atlantis", Fits: true, Reason: "score 0.75"},
			{Node: "houston", Fits: false, Reason: "witness: runs no VMs"},
		}
	}
	return resp, nil
}

func (f *fakeServer) ListVMs(_ context.Context, r *pb.ListVMsRequest) (*pb.ListVMsResponse, error) {
	f.record(r)
	return &pb.ListVMsResponse{Vms: f.vms}, nil
}

func (f *fakeServer) GetVM(_ context.Context, r *pb.GetVMRequest) (*pb.GetVMResponse, error) {
	f.record(r)
	v, err := f.findVM(r.GetName())
	return &pb.GetVMResponse{Vm: v}, err
}

func (f *fakeServer) UpdateVM(_ context.Context, r *pb.UpdateVMRequest) (*pb.UpdateVMResponse, error) {
	f.record(r)
	v, err := f.findVM(r.GetName())
	if err != nil {
		return nil, err
	}
	if r.GetExpectedGeneration() != v.GetGeneration() {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s changed meanwhile: retry", r.GetName())
	}
	return &pb.UpdateVMResponse{Vm: &pb.VM{Name: v.GetName(), Spec: r.GetSpec(), Generation: v.GetGeneration() + 1}}, nil
}

func (f *fakeServer) StartVM(_ context.Context, r *pb.StartVMRequest) (*pb.StartVMResponse, error) {
	f.record(r)
	v, err := f.findVM(r.GetName())
	return &pb.StartVMResponse{Vm: v}, err
}

func (f *fakeServer) StopVM(_ context.Context, r *pb.StopVMRequest) (*pb.StopVMResponse, error) {
	f.record(r)
	v, err := f.findVM(r.GetName())
	return &pb.StopVMResponse{Vm: v}, err
}

func (f *fakeServer) Console(s grpc.BidiStreamingServer[pb.ConsoleRequest, pb.ConsoleResponse]) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	f.record(first)
	if _, err := f.findVM(first.GetName()); err != nil {
		return err
	}
	for _, o := range f.console {
		if err := s.Send(&pb.ConsoleResponse{Output: []byte(o)}); err != nil {
			return err
		}
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeServer) ListNetworks(_ context.Context, r *pb.ListNetworksRequest) (*pb.ListNetworksResponse, error) {
	f.record(r)
	return &pb.ListNetworksResponse{Networks: f.networks}, nil
}

func (f *fakeServer) CreateNetwork(_ context.Context, r *pb.CreateNetworkRequest) (*pb.CreateNetworkResponse, error) {
	f.record(r)
	return &pb.CreateNetworkResponse{Network: r.GetNetwork()}, nil
}

func (f *fakeServer) DeleteVolume(_ context.Context, r *pb.DeleteVolumeRequest) (*pb.DeleteVolumeResponse, error) {
	f.record(r)
	return &pb.DeleteVolumeResponse{Task: &pb.Task{Id: "t-" + r.GetName(), Kind: "delete-volume", Target: r.GetPool() + "/" + r.GetName()}}, nil
}

func (f *fakeServer) ImportVolume(s grpc.ClientStreamingServer[pb.ImportVolumeRequest, pb.ImportVolumeResponse]) error {
	hdr, err := s.Recv()
	if err != nil {
		return err
	}
	var data []byte
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data = append(data, r.GetData()...)
	}
	f.record(hdr)
	f.mu.Lock()
	f.imported = data
	f.mu.Unlock()
	return s.SendAndClose(&pb.ImportVolumeResponse{Volume: &pb.Volume{Pool: hdr.GetPool(), Name: hdr.GetName(), SizeBytes: uint64(len(data)), Ready: true}})
}

func (f *fakeServer) WatchTask(r *pb.WatchTaskRequest, s grpc.ServerStreamingServer[pb.WatchTaskResponse]) error {
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

// serve starts f on a unix socket and returns its path.
func (f *fakeServer) serve(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "corrald.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f.start(t, l, grpc.NewServer())
	return sock
}

// serveTLS starts f on 127.0.0.1 with mutual TLS as a node of ca's cluster.
func (f *fakeServer) serveTLS(t *testing.T, ca *pki.CA) string {
	t.Helper()
	l, creds := pkitest.NodeListener(t, ca, "atlantis")
	f.start(t, l, grpc.NewServer(grpc.Creds(creds)))
	return l.Addr().String()
}

func (f *fakeServer) start(t *testing.T, l net.Listener, s *grpc.Server) {
	pb.RegisterClusterServiceServer(s, f)
	pb.RegisterVMServiceServer(s, f)
	pb.RegisterNetworkServiceServer(s, f)
	pb.RegisterStorageServiceServer(s, f)
	pb.RegisterTaskServiceServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
}

type result struct {
	code        int
	out, errOut string
}

// cli runs the CLI against sock with a private config file; extra global
// flags come first in args.
func cli(t *testing.T, sock, config string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"--config", config, "--timeout", "10s"}, args...)
	if sock != "" {
		all = append([]string{"--socket", sock}, all...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, all, strings.NewReader(""), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}
