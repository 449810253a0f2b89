package api

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"

	pb "github.com/minet/corral/proto/corral/v1"
	"github.com/minet/corral/raftstore"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// wantStatus fails unless err is a status with code and a message holding
// every fragment.
func wantStatus(t *testing.T, what string, err error, code codes.Code, fragments ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok {
		t.Fatalf("%s: err = %v, want %v", what, err, code)
	}
	if st.Code() != code {
		t.Fatalf("%s: %v %q, want %v", what, st.Code(), st.Message(), code)
	}
	for _, f := range fragments {
		if !strings.Contains(st.Message(), f) {
			t.Errorf("%s: message %q lacks %q", what, st.Message(), f)
		}
	}
}

func TestNetworkCreateErrors(t *testing.T) {
	n := startNode(t, "prod")
	ctx := context.Background()
	nets := pb.NewNetworkServiceClient(n.dial(t, n.adminCreds(t, "prod", "alice"), "prod"))

	_, err := nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan", Vlan: 5000}})
	wantStatus(t, "vlan 5000", err, codes.InvalidArgument, "VLAN id 5000 out of range", "1-4094")
	_, err = nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan", Vlan: -1}})
	wantStatus(t, "vlan -1", err, codes.InvalidArgument, "VLAN id -1 out of range")
	_, err = nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod"})
	wantStatus(t, "no network", err, codes.InvalidArgument, "no network given")
	_, err = nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "Bad_Name", Vlan: 10}})
	wantStatus(t, "bad name", err, codes.InvalidArgument, `invalid network name "Bad_Name"`)

	// Nothing was created by the refused calls.
	list, err := nets.ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: "prod", Consistent: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Networks) != 0 {
		t.Fatalf("refused creates left networks behind: %v", list.Networks)
	}
	_, err = nets.GetNetwork(ctx, &pb.GetNetworkRequest{Cluster: "prod", Name: "lan"})
	wantStatus(t, "get refused network", err, codes.NotFound, `network "lan" not found in cluster prod`)

	created, err := nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan", Vlan: 10}})
	if err != nil {
		t.Fatal(err)
	}
	if got := created.Network; got.GetName() != "lan" || got.Vlan != 10 || got.Kind != "linux" || got.CreatedUnixNano == 0 {
		t.Fatalf("created network = %v, want lan on VLAN 10, kind linux (the default), with a creation time", got)
	}
	_, err = nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan", Vlan: 11}})
	wantStatus(t, "duplicate name", err, codes.AlreadyExists, `network "lan" already exists`)
	_, err = nets.CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan2", Vlan: 10}})
	wantStatus(t, "duplicate vlan", err, codes.AlreadyExists, `network "lan" already uses VLAN 10`)

	got, err := nets.GetNetwork(ctx, &pb.GetNetworkRequest{Cluster: "prod", Name: "lan"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Network.Vlan != 10 {
		t.Fatalf("the duplicate overwrote the network: %v", got.Network)
	}

	// The handler ran as the certificate's identity.
	var actor string
	n.group(t, "prod").Store.Read(func(st *raftstore.State) {
		for _, e := range st.Events {
			if e.Action == "network.create" && e.Target == "lan" {
				actor = e.Actor
			}
		}
	})
	if actor != "admin:alice" {
		t.Fatalf("network.create event actor = %q, want admin:alice", actor)
	}
}

func TestUnknownCluster(t *testing.T) {
	n := startNode(t, "prod")
	ctx := context.Background()
	// Root may name any cluster: the handler says this node is not in it.
	_, err := pb.NewNetworkServiceClient(n.local).ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: "nope"})
	wantStatus(t, "local, unknown cluster", err, codes.NotFound, `not a member of cluster "nope"`, "n1")
	_, err = pb.NewVMServiceClient(n.local).CreateVM(ctx, &pb.CreateVMRequest{Cluster: "nope", Name: "web"})
	wantStatus(t, "local create vm, unknown cluster", err, codes.NotFound, `cluster "nope"`)

	// An admin of prod naming another cluster is refused before any
	// handler, naming both clusters.
	admin := n.dial(t, n.adminCreds(t, "prod", "alice"), "prod")
	_, err = pb.NewNetworkServiceClient(admin).ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: "nope"})
	wantStatus(t, "admin, other cluster", err, codes.PermissionDenied, `for cluster "prod", not "nope"`)
}

func TestCreateVMWithoutReadyNode(t *testing.T) {
	n := startNode(t, "prod")
	ctx := context.Background()
	vms := pb.NewVMServiceClient(n.dial(t, n.adminCreds(t, "prod", "alice"), "prod"))
	spec := &pb.VMSpec{Vcpus: 2, MemoryMib: 512, Kernel: "/boot/vmlinuz"}

	// A dry run explains every node's verdict and creates nothing.
	dry, err := vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "web", Spec: spec, DryRun: true})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if len(dry.Placements) != 1 || dry.Placements[0].Node != "n1" || dry.Placements[0].Fits ||
		!strings.Contains(dry.Placements[0].Reason, "not ready") {
		t.Fatalf("dry run placements = %v, want n1 refused as not ready", dry.Placements)
	}
	if dry.Vm.GetNode() != "" {
		t.Fatalf("dry run placed the vm on %q", dry.Vm.GetNode())
	}

	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "web", Spec: spec})
	wantStatus(t, "create", err, codes.ResourceExhausted, "no node can take vm web (512 MiB, 2 vCPU)", "n1: not ready")
	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "web", Spec: spec, Node: "n7"})
	wantStatus(t, "create on unknown node", err, codes.NotFound, `unknown node "n7"`, "n1", "corral node list")
	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "web", Spec: &pb.VMSpec{Vcpus: 0, MemoryMib: 512, Kernel: "/k"}, DryRun: true})
	wantStatus(t, "dry run, bad spec", err, codes.InvalidArgument, "vcpus must be between 1 and 256")
	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "web", DryRun: true})
	wantStatus(t, "dry run, no spec", err, codes.InvalidArgument)
	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Cluster: "prod", Name: "Web!", Spec: spec, DryRun: true})
	wantStatus(t, "bad name", err, codes.InvalidArgument, `invalid vm name "Web!"`)

	list, err := vms.ListVMs(ctx, &pb.ListVMsRequest{Cluster: "prod", Consistent: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Vms) != 0 {
		t.Fatalf("refused creates left vms behind: %v", list.Vms)
	}
}

// TestUpdateVMWithoutSpec: an update without a spec is refused as invalid;
// it used to dereference the nil spec and crash the daemon.
func TestUpdateVMWithoutSpec(t *testing.T) {
	n := startNode(t, "prod")
	ctx := context.Background()
	g := n.group(t, "prod")
	vm := &pb.VM{Name: "web", Uuid: "00000000-0000-0000-0000-000000000001", Node: "n1",
		Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 256, Kernel: "/k"}}
	if _, err := g.Propose(ctx, pb.CommandType_COMMAND_TYPE_VM_CREATE, &pb.VMCreateCommand{Vm: vm}, "test"); err != nil {
		t.Fatal(err)
	}
	vms := pb.NewVMServiceClient(n.dial(t, n.adminCreds(t, "prod", "alice"), "prod"))
	_, err := vms.UpdateVM(ctx, &pb.UpdateVMRequest{Cluster: "prod", Name: "web"})
	wantStatus(t, "update without spec", err, codes.InvalidArgument, "missing VM spec")
	_, err = vms.UpdateVM(ctx, &pb.UpdateVMRequest{Cluster: "prod", Name: "db", Spec: vm.Spec})
	wantStatus(t, "update unknown vm", err, codes.NotFound, `"db"`)
	got, err := vms.GetVM(ctx, &pb.GetVMRequest{Cluster: "prod", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Vm.Spec.GetMemoryMib() != 256 {
		t.Fatalf("refused update changed the vm: %v", got.Vm.Spec)
	}
}

// TestAccessOverTLS checks the interceptors on a real listener: which
// certificate reaches which method, and that refusals are counted.
func TestAccessOverTLS(t *testing.T) {
	n := startNode(t, "prod", "dev")
	ctx := context.Background()
	g := n.group(t, "prod")
	admin := n.dial(t, n.adminCreds(t, "prod", "alice"), "prod")
	node := n.dial(t, g.Creds, "prod") // this node's own certificate
	devAdmin := n.dial(t, n.adminCreds(t, "dev", "bob"), "dev")

	// Node-only methods.
	_, err := pb.NewClusterServiceClient(admin).Heartbeat(ctx, &pb.HeartbeatRequest{Cluster: "prod", Node: "n1"})
	wantStatus(t, "admin heartbeat", err, codes.PermissionDenied, "Heartbeat is for cluster nodes only")
	_, err = pb.NewClusterServiceClient(admin).Propose(ctx, &pb.ProposeRequest{Cluster: "prod"})
	wantStatus(t, "admin propose", err, codes.PermissionDenied, "Propose is for cluster nodes only")
	_, err = pb.NewClusterServiceClient(n.local).Propose(ctx, &pb.ProposeRequest{Cluster: "prod"})
	wantStatus(t, "local propose", err, codes.PermissionDenied, "for cluster nodes only")
	hb, err := pb.NewClusterServiceClient(node).Heartbeat(ctx, &pb.HeartbeatRequest{Cluster: "prod", Node: "n1"})
	if err != nil {
		t.Fatalf("node heartbeat: %v", err)
	}
	if hb.Leader != "n1" {
		t.Fatalf("heartbeat leader = %q", hb.Leader)
	}
	_, err = pb.NewClusterServiceClient(node).Heartbeat(ctx, &pb.HeartbeatRequest{Cluster: "prod", Node: "n2"})
	wantStatus(t, "node heartbeat for another", err, codes.PermissionDenied, "only for itself")
	if _, err := pb.NewClusterServiceClient(node).ReadIndex(ctx, &pb.ReadIndexRequest{Cluster: "prod"}); err != nil {
		t.Fatalf("node read index: %v", err)
	}
	_, err = pb.NewClusterServiceClient(devAdmin).ReadIndex(ctx, &pb.ReadIndexRequest{Cluster: "prod"})
	wantStatus(t, "admin of dev, read index of prod", err, codes.PermissionDenied, "for cluster nodes only")

	// Admin-only actions refuse node certificates.
	_, err = pb.NewClusterServiceClient(node).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Cluster: "prod"})
	wantStatus(t, "node creates token", err, codes.PermissionDenied, "nodes cannot create join tokens")
	_, err = pb.NewClusterServiceClient(node).IssueAdminCert(ctx, &pb.IssueAdminCertRequest{Cluster: "prod", Name: "eve"})
	wantStatus(t, "node issues admin cert", err, codes.PermissionDenied, "only admins")
	if _, err := pb.NewClusterServiceClient(admin).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Cluster: "prod"}); err != nil {
		t.Fatalf("admin creates token: %v", err)
	}

	// Local-only methods.
	_, err = pb.NewClusterServiceClient(admin).InitCluster(ctx, &pb.InitClusterRequest{Cluster: "qa"})
	wantStatus(t, "admin init", err, codes.PermissionDenied, "only on the daemon's local socket")
	if _, err := n.m.Group("qa"); err == nil {
		t.Fatal("refused init created the cluster")
	}

	// A certificate of dev, on a daemon that serves both, names prod.
	_, err = pb.NewNetworkServiceClient(devAdmin).CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "x", Vlan: 3}})
	wantStatus(t, "dev admin on prod", err, codes.PermissionDenied, `your certificate is for cluster "dev", not "prod"`)
	if _, err := pb.NewNetworkServiceClient(devAdmin).CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "dev", Network: &pb.Network{Name: "x", Vlan: 3}}); err != nil {
		t.Fatalf("dev admin on dev: %v", err)
	}
	var prodNets int
	g.Store.Read(func(st *raftstore.State) { prodNets = len(st.Networks) })
	if prodNets != 0 {
		t.Fatalf("prod has %d networks after a refused create", prodNets)
	}

	// ListClusters shows a certificate its own cluster only; root sees all.
	for _, c := range []struct {
		name string
		conn *grpc.ClientConn
		want string
	}{{"local", n.local, "dev,prod"}, {"prod admin", admin, "prod"}, {"dev admin", devAdmin, "dev"}, {"prod node", node, "prod"}} {
		resp, err := pb.NewClusterServiceClient(c.conn).ListClusters(ctx, &pb.ListClustersRequest{})
		if err != nil {
			t.Fatalf("%s: list clusters: %v", c.name, err)
		}
		if got := strings.Join(resp.Clusters, ","); got != c.want {
			t.Errorf("%s: clusters %q, want %q", c.name, got, c.want)
		}
	}

	// TLS without a client certificate: only Admit (which checks its
	// token itself) gets through.
	anonTLS := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "prod", RootCAs: pool(t, g.Creds.CACertPEM)}
	anon, err := grpc.NewClient("passthrough:///"+n.tlsAddr, grpc.WithTransportCredentials(credentials.NewTLS(anonTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	_, err = pb.NewClusterServiceClient(anon).ListClusters(ctx, &pb.ListClustersRequest{})
	wantStatus(t, "anonymous list clusters", err, codes.Unauthenticated, "corral admin issue-cert")
	_, err = pb.NewNetworkServiceClient(anon).ListNetworks(ctx, &pb.ListNetworksRequest{Cluster: "prod"})
	wantStatus(t, "anonymous list networks", err, codes.Unauthenticated, `certificate of cluster "prod" is required`)
	_, err = pb.NewClusterServiceClient(anon).Admit(ctx, &pb.AdmitRequest{Cluster: "prod", Token: "garbage", Name: "n2"})
	wantStatus(t, "anonymous admit, bad token", err, codes.InvalidArgument, "join token")

	// Refusals are counted by method and code.
	if got := counted(t, n, "Heartbeat", codes.PermissionDenied); got != 2 {
		t.Errorf("Heartbeat PermissionDenied counted %v times, want 2", got)
	}
	if got := counted(t, n, "Heartbeat", codes.OK); got != 1 {
		t.Errorf("Heartbeat OK counted %v times, want 1", got)
	}
}

// TestStreamAccess: streaming methods authorize their first message, which
// names the cluster.
func TestStreamAccess(t *testing.T) {
	n := startNode(t, "prod", "dev")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := n.dial(t, n.adminCreds(t, "prod", "alice"), "prod")
	devAdmin := n.dial(t, n.adminCreds(t, "dev", "bob"), "dev")

	refused, err := pb.NewEventServiceClient(devAdmin).WatchEvents(ctx, &pb.WatchEventsRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = refused.Recv()
	wantStatus(t, "dev admin watches prod", err, codes.PermissionDenied, `your certificate is for cluster "dev", not "prod"`)

	if _, err := pb.NewNetworkServiceClient(admin).CreateNetwork(ctx, &pb.CreateNetworkRequest{Cluster: "prod", Network: &pb.Network{Name: "lan", Vlan: 10}}); err != nil {
		t.Fatal(err)
	}
	w, err := pb.NewEventServiceClient(admin).WatchEvents(ctx, &pb.WatchEventsRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("watch events: %v", err)
		}
		if ev.Event.Action == "network.create" {
			if ev.Event.Actor != "admin:alice" {
				t.Fatalf("event actor %q", ev.Event.Actor)
			}
			break
		}
	}

	_, err = pb.NewTaskServiceClient(admin).GetTask(ctx, &pb.GetTaskRequest{Cluster: "prod", Id: "nope"})
	wantStatus(t, "get unknown task", err, codes.NotFound, `task "nope" not found`)
	wt, err := pb.NewTaskServiceClient(devAdmin).WatchTask(ctx, &pb.WatchTaskRequest{Cluster: "prod", Id: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wt.Recv()
	wantStatus(t, "dev admin watches prod task", err, codes.PermissionDenied)
}

func counted(t *testing.T, n *testNode, method string, code codes.Code) float64 {
	t.Helper()
	var m dto.Metric
	if err := n.srv.calls.WithLabelValues(method, code.String()).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
