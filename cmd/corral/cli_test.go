package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/minet/corral/pki"
	pb "github.com/minet/corral/proto/corral/v1"
)

func newFakeServer() *fakeServer {
	return &fakeServer{
		clusters: []string{"prod"},
		vms: []*pb.VM{
			{Name: "web", Node: "atlantis", Power: pb.PowerState_POWER_STATE_RUNNING, Generation: 7,
				Spec:   &pb.VMSpec{Vcpus: 2, MemoryMib: 2048, Ha: pb.HAMode_HA_MODE_RESTART, Cmdline: "console=ttyS0", Nics: []*pb.NICSpec{{Network: "lan", Mac: "52:54:00:12:34:56"}}},
				Status: &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING}},
			{Name: "db", Node: "discovery", Power: pb.PowerState_POWER_STATE_STOPPED,
				Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 512}, Status: &pb.VMStatus{State: pb.VMState_VM_STATE_STOPPED}},
		},
		tasks:    map[string][]*pb.Task{},
		settings: &pb.Settings{CpuOvercommit: 4, MemOvercommit: 1, SuspectAfterMs: 5000, DownAfterMs: 15000, MaxRestarts: 3},
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	f.tasks["t-busy"] = []*pb.Task{
		{Id: "t-busy", Kind: "delete-volume", Target: "ceph/busy", State: pb.TaskState_TASK_STATE_RUNNING, Progress: 0.5},
		{Id: "t-busy", Kind: "delete-volume", Target: "ceph/busy", State: pb.TaskState_TASK_STATE_FAILED, Error: "image has watchers"},
	}
	f.tasks["t-gone"] = []*pb.Task{{Id: "t-gone", Kind: "delete-volume", Target: "ceph/gone", State: pb.TaskState_TASK_STATE_SUCCEEDED, Progress: 1}}
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "config.yaml")
	for _, tc := range []struct {
		args    []string
		code    int
		wantErr string // exact stderr, or prefix when it ends with "…"
	}{
		{[]string{"vm", "start", "missing"}, exitError, "Error: vm missing not found\n"},
		{[]string{"vm", "start", "web"}, exitOK, ""},
		{[]string{"vm", "start"}, exitUsage, "Error: corral vm start needs 1 argument(s): NAME\n"},
		{[]string{"vm", "bogus"}, exitUsage, "Error: unknown command \"bogus\" for \"corral vm\"\n"},
		{[]string{"bogus"}, exitUsage, "Error: unknown command \"bogus\" for \"corral\"\n"},
		{[]string{"vm", "list", "--bogus"}, exitUsage, "Error: unknown flag: --bogus\n"},
		{[]string{"-o", "xml", "vm", "list"}, exitUsage, "Error: unknown output format \"xml\": use table, json or yaml\n"},
		{[]string{"vm", "create", "x", "--memory", "lots"}, exitUsage, "Error: --memory: …"},
		{[]string{"vm", "create", "x", "--ha", "maybe"}, exitUsage, "Error: --ha \"maybe\": use restart or off\n"},
		{[]string{"volume", "delete", "nopool"}, exitUsage, "Error: volume \"nopool\": write it POOL/NAME\n"},
		{[]string{"cluster", "join", "prod"}, exitUsage, "Error: required flag(s) …"},
		{[]string{"volume", "delete", "ceph/busy"}, exitError, "delete-volume ceph/busy: running  50%\ndelete-volume ceph/busy: failed   0%\n" +
			"Error: task t-busy (delete-volume ceph/busy) failed: image has watchers\n"},
		{[]string{"volume", "delete", "ceph/gone"}, exitOK, "delete-volume ceph/gone: succeeded 100%\n"},
		{[]string{"volume", "delete", "--no-wait", "ceph/busy"}, exitOK, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := cli(t, sock, config, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tc.code, r.errOut)
			}
			if prefix, ok := strings.CutSuffix(tc.wantErr, "…"); ok {
				if !strings.HasPrefix(r.errOut, prefix) {
					t.Errorf("stderr %q, want prefix %q", r.errOut, prefix)
				}
			} else if r.errOut != tc.wantErr {
				t.Errorf("stderr %q, want %q", r.errOut, tc.wantErr)
			}
		})
	}
}

func TestVMCreateFlags(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.pub")
	if err := os.WriteFile(keys, []byte("ssh-ed25519 AAAA alice\n# comment\n\nssh-ed25519 BBBB bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := cli(t, sock, filepath.Join(dir, "config.yaml"), "--cluster", "prod", "vm", "create", "web2",
		"--vcpus", "4", "--memory", "1.5G", "--disk", "ceph/web2-root", "--disk", "local/seed:ro",
		"--net", "lan", "--net", "dmz=52:54:00:aa:bb:cc", "--ha", "restart", "--ha-priority", "10", "--ha-group", "g1",
		"--anti-affinity", "web", "--cloud-init-user", "debian", "--ssh-key", "ssh-rsa CCCC carol", "--ssh-key", "@"+keys,
		"--from", "ceph/debian12", "--full", "--node", "atlantis", "--no-start", "--uefi", "--guest-agent",
		"--machine", "q35", "--cpu-model", "host-passthrough", "--kernel", "/boot/vmlinuz", "--cmdline", "console=ttyS0")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	got := last[*pb.CreateVMRequest](t, f)
	want := &pb.CreateVMRequest{
		Cluster: "prod", Name: "web2", Node: "atlantis", Start: false, From: "ceph/debian12", FullCopy: true,
		Spec: &pb.VMSpec{
			Vcpus: 4, MemoryMib: 1536, Machine: "q35", CpuModel: "host-passthrough", Kernel: "/boot/vmlinuz", Cmdline: "console=ttyS0",
			Uefi: true, GuestAgent: true, Ha: pb.HAMode_HA_MODE_RESTART, HaPriority: 10, HaGroup: "g1", AntiAffinity: "web",
			Disks: []*pb.DiskSpec{{Pool: "ceph", Volume: "web2-root"}, {Pool: "local", Volume: "seed", ReadOnly: true}},
			Nics:  []*pb.NICSpec{{Network: "lan"}, {Network: "dmz", Mac: "52:54:00:aa:bb:cc"}},
			CloudInit: &pb.CloudInit{Hostname: "web2", User: "debian",
				SshAuthorizedKeys: []string{"ssh-rsa CCCC carol", "ssh-ed25519 AAAA alice", "ssh-ed25519 BBBB bob"}},
		},
	}
	if !proto.Equal(got, want) {
		t.Errorf("CreateVM request:\n%v\nwant:\n%v", got, want)
	}
	if !strings.HasPrefix(r.out, "NAME  STATE  POWER    NODE      VCPUS  MEMORY   HA       AGE\nweb2  -      running  atlantis  4      1.5 GiB  restart  -\n") {
		t.Errorf("output:\n%s", r.out)
	}

	// Defaults: 1 vCPU, 256 MiB, HA off, started.
	r = cli(t, sock, filepath.Join(dir, "config.yaml"), "--cluster", "prod", "vm", "create", "tiny")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	got = last[*pb.CreateVMRequest](t, f)
	if s := got.GetSpec(); s.GetVcpus() != 1 || s.GetMemoryMib() != 256 || s.GetHa() != pb.HAMode_HA_MODE_OFF || !got.GetStart() || s.GetCloudInit() != nil {
		t.Errorf("defaults: %v", got)
	}
}

func TestVMCreateDryRun(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	r := cli(t, f.serve(t), filepath.Join(t.TempDir(), "c.yaml"), "vm", "create", "x", "--dry-run")
	want := "NODE      FITS  REASON\n" +
		"atlantis  yes   score 0.75\n" +
		"houston   no    witness: runs no VMs\n" +
		"\nChosen node: atlantis\n"
	if r.code != 0 || r.out != want {
		t.Errorf("exit %d, output:\n%s\nwant:\n%s", r.code, r.out, want)
	}
	if !last[*pb.CreateVMRequest](t, f).GetDryRun() {
		t.Error("dry_run not sent")
	}
}

func TestVMEdit(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	r := cli(t, sock, filepath.Join(t.TempDir(), "c.yaml"), "vm", "edit", "web", "--memory", "4G", "--net", "lan", "--net", "dmz")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	got := last[*pb.UpdateVMRequest](t, f)
	if got.GetExpectedGeneration() != 7 || got.GetCluster() != "prod" {
		t.Errorf("update request %v: want generation 7 in cluster prod", got)
	}
	want := &pb.VMSpec{Vcpus: 2, MemoryMib: 4096, Ha: pb.HAMode_HA_MODE_RESTART, Cmdline: "console=ttyS0",
		Nics: []*pb.NICSpec{{Network: "lan", Mac: "52:54:00:12:34:56"}, {Network: "dmz"}}}
	if !proto.Equal(got.GetSpec(), want) {
		t.Errorf("spec sent %v, want %v (only the flags given change)", got.GetSpec(), want)
	}
	if !last[*pb.GetVMRequest](t, f).GetConsistent() {
		t.Error("edit should read the VM consistently before updating it")
	}
}

func TestVMStopIsHard(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "c.yaml")
	for _, tc := range []struct {
		args  []string
		force bool
	}{
		{[]string{"vm", "stop", "web"}, true},
		{[]string{"vm", "stop", "--force", "web"}, true},
		{[]string{"vm", "shutdown", "web"}, false},
	} {
		if r := cli(t, sock, config, tc.args...); r.code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, r.code, r.errOut)
		}
		if got := last[*pb.StopVMRequest](t, f).GetForce(); got != tc.force {
			t.Errorf("%v: force = %v, want %v", tc.args, got, tc.force)
		}
	}
}

func TestListFormats(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	now := time.Now()
	f.vms[0].CreatedUnixNano = now.Add(-90 * time.Minute).UnixNano()
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "c.yaml")

	r := cli(t, sock, config, "vm", "list")
	want := "NAME  STATE    POWER    NODE       VCPUS  MEMORY   HA       AGE\n" +
		"web   running  running  atlantis   2      2 GiB    restart  1h\n" +
		"db    stopped  stopped  discovery  1      512 MiB  off      -\n"
	if r.code != 0 || r.out != want {
		t.Errorf("table (exit %d, %s):\n%s\nwant:\n%s", r.code, r.errOut, r.out, want)
	}

	r = cli(t, sock, config, "-o", "json", "vm", "list")
	var decoded struct {
		Vms []struct {
			Name   string `json:"name"`
			Status struct {
				State string `json:"state"`
			} `json:"status"`
			Spec struct {
				MemoryMib string `json:"memory_mib"` // int64 is a string in protojson
			} `json:"spec"`
		} `json:"vms"`
	}
	if err := json.Unmarshal([]byte(r.out), &decoded); err != nil {
		t.Fatalf("json output %q: %v", r.out, err)
	}
	if len(decoded.Vms) != 2 || decoded.Vms[0].Name != "web" || decoded.Vms[0].Status.State != "VM_STATE_RUNNING" || decoded.Vms[1].Spec.MemoryMib != "512" {
		t.Errorf("json decoded to %+v", decoded)
	}

	r = cli(t, sock, config, "-o", "yaml", "vm", "show", "web")
	for _, s := range []string{"name: web\n", "  vcpus: 2\n", "generation: \"7\"\n"} {
		if !strings.Contains(r.out, s) {
			t.Errorf("yaml output lacks %q:\n%s", s, r.out)
		}
	}
	// show renders YAML in table mode too.
	if r2 := cli(t, sock, config, "vm", "show", "web"); r2.out != r.out {
		t.Errorf("vm show differs from -o yaml:\n%s", r2.out)
	}
}

func TestClusterStatusAndSettings(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "c.yaml")
	r := cli(t, sock, config, "cluster", "status")
	for _, s := range []string{
		"Leader:       atlantis\n", "Term:         3\n", "Commit index: 42\n", "Answered by:  discovery (Follower)\n",
		"NAME      ROLE     RAFT-ADDR      API-ADDR  LEADER  HEALTH   LAST-CONTACT  MAINTENANCE  FENCED\n",
		"atlantis  voter    10.0.0.1:7000  -         yes     ready    -             -            -\n",
		"houston   witness  10.0.0.3:7000  -         -       suspect  1.5s          -            yes\n",
	} {
		if !strings.Contains(r.out, s) {
			t.Errorf("status lacks %q:\n%s", s, r.out)
		}
	}

	r = cli(t, sock, config, "cluster", "settings")
	if r.code != 0 || !strings.Contains(r.out, "down-after      15s\n") {
		t.Errorf("settings (exit %d):\n%s", r.code, r.out)
	}
	r = cli(t, sock, config, "cluster", "settings", "--down-after", "30s", "--mem-overcommit", "1.5")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	want := &pb.Settings{CpuOvercommit: 4, MemOvercommit: 1.5, SuspectAfterMs: 5000, DownAfterMs: 30000, MaxRestarts: 3}
	if got := last[*pb.UpdateSettingsRequest](t, f).GetSettings(); !proto.Equal(got, want) {
		t.Errorf("settings sent %v, want %v (unchanged ones kept)", got, want)
	}
}

func TestClusterAutoSelect(t *testing.T) {
	t.Parallel()
	one := newFakeServer()
	r := cli(t, one.serve(t), filepath.Join(t.TempDir(), "c.yaml"), "net", "list")
	if r.code != 0 || last[*pb.ListNetworksRequest](t, one).GetCluster() != "prod" {
		t.Errorf("single cluster: exit %d (%s)", r.code, r.errOut)
	}
	two := newFakeServer()
	two.clusters = []string{"prod", "dev"}
	r = cli(t, two.serve(t), filepath.Join(t.TempDir(), "c.yaml"), "net", "list")
	if r.code != exitError || r.errOut != "Error: this node is in clusters prod, dev: pass --cluster or select a context (corral config use-context)\n" {
		t.Errorf("two clusters: exit %d, stderr %q", r.code, r.errOut)
	}
}

func TestNetCreateAndList(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	f.networks = []*pb.Network{{Name: "vlan42", Vlan: 42, Kind: "ovs", Uplink: "bond0", Status: map[string]*pb.NetworkStatus{
		"atlantis": {Applied: true}, "discovery": {Error: "no uplink"},
	}}}
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "c.yaml")
	r := cli(t, sock, config, "net", "create", "vlan7", "--vlan", "7", "--uplink", "bond0", "--node-uplink", "houston=eno2", "--node-uplink", "atlantis=eno3", "--mtu", "9000")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	want := &pb.Network{Name: "vlan7", Vlan: 7, Kind: "linux", Uplink: "bond0", Mtu: 9000, NodeUplinks: map[string]string{"houston": "eno2", "atlantis": "eno3"}}
	if got := last[*pb.CreateNetworkRequest](t, f).GetNetwork(); !proto.Equal(got, want) {
		t.Errorf("network sent %v, want %v", got, want)
	}
	if r := cli(t, sock, config, "net", "create", "x", "--node-uplink", "houston"); r.code != exitUsage {
		t.Errorf("bad --node-uplink: exit %d", r.code)
	}
	r = cli(t, sock, config, "net", "list")
	wantOut := "NAME    VLAN  KIND  UPLINK  MTU  STATUS\n" +
		"vlan42  42    ovs   bond0   -    atlantis:ok discovery:ERR(no uplink)\n"
	if r.out != wantOut {
		t.Errorf("net list:\n%s\nwant:\n%s", r.out, wantOut)
	}
}

func TestConsoleUntil(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	f.console = []string{"Booting Linux\n", "Debian GNU/Linux 12 web ttyS0\n\nweb lo", "gin: "}
	sock := f.serve(t)
	config := filepath.Join(t.TempDir(), "c.yaml")
	for _, tc := range []struct {
		args    []string
		code    int
		wantErr string
	}{
		{[]string{"vm", "console", "web", "--until", "login:", "--for", "20s"}, 0, ""},
		{[]string{"vm", "console", "web", "--until", "Password:", "--for", "200ms"}, exitError, "Error: console of web: \"Password:\" not seen\n"},
		{[]string{"vm", "console", "nope", "--for", "5s"}, exitError, "Error: console of nope: vm nope not found\n"},
		// Last, so the request checked below is its own.
		{[]string{"vm", "console", "web", "--for", "200ms", "--replay=false"}, 0, ""},
	} {
		r := cli(t, sock, config, tc.args...)
		if r.code != tc.code || !strings.HasSuffix(r.errOut, tc.wantErr) {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tc.args, r.code, r.errOut, tc.code, tc.wantErr)
		}
		if tc.code == 0 && r.out != strings.Join(f.console, "") {
			t.Errorf("%v: output %q", tc.args, r.out)
		}
	}
	if last[*pb.ConsoleRequest](t, f).GetReplay() {
		t.Error("--replay=false not sent")
	}
}

func TestAdminIssueCert(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	ca, err := pki.NewCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.ca = ca
	sock := f.serve(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	out := filepath.Join(dir, "creds")

	r := cli(t, sock, config, "admin", "issue-cert", "alice", "--out-dir", out)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	if req := last[*pb.IssueAdminCertRequest](t, f); req.GetName() != "alice" || req.GetCluster() != "prod" {
		t.Errorf("request %v", req)
	}
	for _, name := range []string{"ca.crt", "admin.crt", "admin.key"} {
		st, err := os.Stat(filepath.Join(out, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", name, err, st.Mode().Perm())
		}
	}
	// The key written matches the certificate, which carries alice's
	// admin identity in cluster prod.
	creds := pki.Creds{Cluster: "prod"}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{"ca.crt", &creds.CACertPEM}, {"admin.crt", &creds.CertPEM}, {"admin.key", &creds.KeyPEM}} {
		if *f.dst, err = os.ReadFile(filepath.Join(out, f.name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM); err != nil {
		t.Fatalf("key does not match certificate: %v", err)
	}
	if err := creds.Validate(time.Now()); err != nil {
		t.Fatal(err)
	}
	if id, err := creds.Identity(); err != nil || id.Role != pki.RoleAdmin || id.Name != "alice" {
		t.Errorf("identity %v, %v", id, err)
	}
	cfg, err := loadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	x := cfg.find("prod")
	if cfg.CurrentContext != "prod" || x == nil || !slices.Equal(x.Endpoints, []string{"10.0.0.1:7443", "10.0.0.2:7443"}) ||
		x.Key != filepath.Join(out, "admin.key") || x.Cluster != "prod" {
		t.Errorf("config %+v", cfg)
	}

	// Explicit endpoints and context name; the current context stays.
	r = cli(t, sock, config, "admin", "issue-cert", "bob", "--out-dir", filepath.Join(dir, "bob"), "--context-name", "prod-bob", "--endpoint", "127.0.0.1:7443")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	cfg, _ = loadConfig(config)
	if x := cfg.find("prod-bob"); x == nil || !slices.Equal(x.Endpoints, []string{"127.0.0.1:7443"}) || cfg.CurrentContext != "prod" {
		t.Errorf("config %+v", cfg)
	}
}

// TestVolumeImport streams a raw image as is, and a qcow2 image converted
// by the real qemu-img.
func TestVolumeImport(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "c.yaml")

	raw := filepath.Join(dir, "disk.raw")
	data := make([]byte, 3*mib+123) // not a whole number of chunks
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := cli(t, sock, config, "volume", "import", raw, "local/disk", "--node", "atlantis")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	hdr := last[*pb.ImportVolumeRequest](t, f)
	if hdr.GetPool() != "local" || hdr.GetName() != "disk" || hdr.GetNode() != "atlantis" || hdr.GetSizeBytes() != uint64(len(data)) {
		t.Errorf("header %v", hdr)
	}
	f.mu.Lock()
	same := bytes.Equal(f.imported, data)
	f.mu.Unlock()
	if !same {
		t.Error("imported bytes differ from the file")
	}
	if !strings.Contains(r.errOut, "100% 3.0 MiB/3.0 MiB\n") {
		t.Errorf("progress bar: %q", r.errOut)
	}

	// qcow2: convert the raw file, import it, expect the raw bytes back
	// (qemu-img pads the virtual size to 512-byte sectors).
	qcow := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img (needed to test qcow2 import): %v: %s", err, out)
	}
	r = cli(t, sock, config, "volume", "import", qcow, "local/disk2")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	if !strings.Contains(r.errOut, "converting qcow2 image") {
		t.Errorf("no conversion notice: %q", r.errOut)
	}
	f.mu.Lock()
	got := f.imported
	f.mu.Unlock()
	if len(got) < len(data) || len(got)%512 != 0 || !bytes.Equal(got[:len(data)], data) || bytes.ContainsFunc(got[len(data):], func(r rune) bool { return r != 0 }) {
		t.Errorf("qcow2 import: got %d bytes, want the %d raw bytes zero-padded to a sector", len(got), len(data))
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	f := newFakeServer()
	sock := f.serve(t)
	r := cli(t, sock, filepath.Join(t.TempDir(), "c.yaml"), "__complete", "vm", "start", "")
	if r.code != 0 || !strings.HasPrefix(r.out, "web\ndb\n:4\n") {
		t.Errorf("completion (exit %d): %q", r.code, r.out)
	}
}

// TestMutualTLSContext drives the CLI through a context with credential
// files to a fake served over the cluster's mutual TLS.
func TestMutualTLSContext(t *testing.T) {
	t.Parallel()
	ca, err := pki.NewCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("prod", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeServer()
	addr := f.serveTLS(t, ca)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	for _, c := range []struct {
		name string
		ca   *pki.CA
	}{{"good", ca}, {"stranger", other}} {
		creds, err := c.ca.NewCreds(pki.RoleAdmin, "alice", nil, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		creds.CACertPEM = ca.CertPEM // the stranger trusts the real CA but holds a foreign cert
		if err := creds.Save(filepath.Join(dir, c.name)); err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(dir, c.name)
		r := cli(t, "", config, "--cluster", "prod", "--endpoint", addr, "config", "set-context", c.name,
			"--ca", filepath.Join(d, pki.CACertFile), "--cert", filepath.Join(d, pki.CertFile), "--key", filepath.Join(d, pki.KeyFile))
		if r.code != 0 {
			t.Fatalf("set-context: %s", r.errOut)
		}
	}
	r := cli(t, "", config, "--context", "good", "vm", "list")
	if r.code != 0 || !strings.Contains(r.out, "web ") {
		t.Errorf("vm list over mTLS: exit %d, %s%s", r.code, r.out, r.errOut)
	}
	if got := last[*pb.ListVMsRequest](t, f).GetCluster(); got != "prod" {
		t.Errorf("cluster sent %q", got)
	}
	r = cli(t, "", config, "--context", "stranger", "vm", "list")
	if r.code != exitError || !strings.HasPrefix(r.errOut, "Error: cannot connect to corral: "+addr) {
		t.Errorf("foreign certificate: exit %d, stderr %q", r.code, r.errOut)
	}
}
