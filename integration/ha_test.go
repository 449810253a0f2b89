package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/minet/corral/internal/testenv"
	pb "github.com/minet/corral/proto/corral/v1"
)

// Layout of the sequence log the HA guests keep on their RBD disk: record
// n (from 1) is the 512-byte sector seqLogStart+n and reads
// "<bootid> <n> <k>" (k counts the records of that boot), space padded.
const (
	seqLogStart   = 2048
	seqLogSectors = 4096
)

// seqGuestScript is the guests' /init payload: it continues the sequence
// found on /dev/vda under a fresh boot id, one O_DIRECT + fsync record a
// second, and prints "SEQ n" once n is on the disk. A failed write (fenced
// storage) is retried with the same n, so a healthy log has no holes.
var seqGuestScript = fmt.Sprintf(`LOG=%d; MAX=%d
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
boot=$(cat /proc/sys/kernel/random/uuid)
last=$(dd if=/dev/vda bs=512 skip=$LOG count=$MAX iflag=direct 2>/dev/null | tr -d '\000' | awk '$2+0 > m {m=$2+0} END {print m+0}')
echo "BOOT $boot after $last"
n=$((last+1)); k=0
while :; do
	if printf '%%-511s\n' "$boot $n $k" | dd of=/dev/vda bs=512 seek=$((LOG+n)) count=1 iflag=fullblock oflag=direct conv=notrunc,fsync 2>/dev/null; then
		echo "SEQ $n"; n=$((n+1)); k=$((k+1))
	else
		echo "WRITE-FAILED $n"
	fi
	sleep 1
done`, seqLogStart, seqLogSectors)

// seqRecord is one sector of the log.
type seqRecord struct {
	Boot string
	N, K int
}

// seqSegment is a run of consecutive records written by one boot.
type seqSegment struct {
	Boot          string
	First, Last   int
	FirstK, LastK int
}

// parseSeqLog checks an exported image: records 1..N without holes, each
// at its own sector, k increasing by one within a boot, and every boot id
// in a single run (a boot id seen again after another boot wrote means two
// copies wrote the disk: a fork).
func parseSeqLog(img []byte) ([]seqSegment, error) {
	var segs []seqSegment
	seen := map[string]bool{}
	end := false
	for n := 1; n < seqLogSectors; n++ {
		off := (seqLogStart + n) * 512
		if off+512 > len(img) {
			break
		}
		sec := img[off : off+512]
		if len(bytes.Trim(sec, "\x00")) == 0 {
			end = true
			continue
		}
		if end {
			return segs, fmt.Errorf("record %d written after a hole", n)
		}
		f := strings.Fields(string(sec))
		if len(f) != 3 {
			return segs, fmt.Errorf("record %d is garbled: %q", n, strings.TrimSpace(string(sec)))
		}
		gotN, err1 := strconv.Atoi(f[1])
		k, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || gotN != n {
			return segs, fmt.Errorf("sector of record %d holds %q", n, strings.TrimSpace(string(sec)))
		}
		r := seqRecord{Boot: f[0], N: gotN, K: k}
		if len(segs) > 0 && segs[len(segs)-1].Boot == r.Boot {
			s := &segs[len(segs)-1]
			if r.K != s.LastK+1 {
				return segs, fmt.Errorf("record %d of boot %s has k=%d after k=%d: records lost or rewritten", n, r.Boot, r.K, s.LastK)
			}
			s.Last, s.LastK = n, r.K
			continue
		}
		if seen[r.Boot] {
			return segs, fmt.Errorf("FORK: boot %s writes record %d after boot %s took over", r.Boot, n, segs[len(segs)-1].Boot)
		}
		seen[r.Boot] = true
		segs = append(segs, seqSegment{Boot: r.Boot, First: n, Last: n, FirstK: r.K, LastK: r.K})
	}
	return segs, nil
}

// haLab is the shared lab of TestHA.
type haLab struct {
	t      *testing.T
	ctx    context.Context
	lab    *testenv.Lab
	ceph   *testenv.Ceph
	nodes  map[string]*testenv.Corrald
	libv   map[string]*testenv.Libvirtd
	kernel string
	initrd string
	// away are the nodes cut off or crashed: the CLI avoids them.
	away  map[string]bool
	order []string
}

var haNames = []string{"n1", "n2", "n3", "w"}

func startHALab(t *testing.T, ctx context.Context) *haLab {
	t.Helper()
	bins, err := testenv.Build()
	if err != nil {
		t.Fatal(err)
	}
	lab := testenv.New(t, testenv.Options{})
	l := &haLab{t: t, ctx: ctx, lab: lab, nodes: map[string]*testenv.Corrald{}, libv: map[string]*testenv.Libvirtd{}, away: map[string]bool{},
		order: append([]string(nil), haNames...)}
	l.kernel, l.initrd, err = testenv.BuildGuest(filepath.Join(lab.Dir, "guest"), testenv.GuestOptions{InitScript: seqGuestScript})
	if err != nil {
		t.Fatal(err)
	}
	cephDone := make(chan error, 1)
	go func() {
		var err error
		l.ceph, err = lab.StartCeph(ctx, 1)
		cephDone <- err
	}()
	for _, name := range haNames {
		h, err := lab.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		opts := testenv.CorraldOptions{}
		if name != "w" {
			d, err := h.StartLibvirtd(ctx)
			if err != nil {
				t.Fatal(err)
			}
			l.libv[name] = d
			opts.Libvirt = d
		}
		c, err := h.StartCorrald(ctx, bins, opts)
		if err != nil {
			t.Fatal(err)
		}
		l.nodes[name] = c
	}
	n := l.nodes
	if err := testenv.FormCluster(ctx, "prod", []*testenv.Corrald{n["n1"], n["n2"], n["n3"]}, []*testenv.Corrald{n["w"]}); err != nil {
		t.Fatal(err)
	}
	if err := <-cephDone; err != nil {
		t.Fatal(err)
	}
	return l
}

// cli runs the CLI on the first node of l.order that is neither cut off
// nor crashed. A node that just came back goes last in l.order: until it
// caught up, its (follower) reads may predate what happened meanwhile.
func (l *haLab) cli(args ...string) (string, error) {
	for _, name := range l.order {
		if !l.away[name] {
			return l.nodes[name].CLI(l.ctx, append([]string{"--cluster", "prod"}, args...)...)
		}
	}
	return "", fmt.Errorf("every node is away")
}

func (l *haLab) must(args ...string) string {
	l.t.Helper()
	out, err := l.cli(args...)
	if err != nil {
		l.t.Fatalf("corral %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

func (l *haLab) get(m proto.Message, args ...string) error {
	out, err := l.cli(append(args, "-o", "json")...)
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	if err := unmarshal.Unmarshal([]byte(out), m); err != nil {
		return fmt.Errorf("decode %q: %w", out, err)
	}
	return nil
}

func (l *haLab) vm(name string) (*pb.VM, error) {
	v := &pb.VM{}
	return v, l.get(v, "vm", "show", name)
}

func (l *haLab) nodeList() (map[string]*pb.Node, error) {
	resp := &pb.ListNodesResponse{}
	if err := l.get(resp, "node", "list"); err != nil {
		return nil, err
	}
	out := map[string]*pb.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetName()] = n
	}
	return out, nil
}

func (l *haLab) events() ([]*pb.Event, error) {
	resp := &pb.ListEventsResponse{}
	if err := l.get(resp, "event", "list", "--limit", "10000"); err != nil {
		return nil, err
	}
	if len(resp.GetEvents()) == 0 {
		out, err := l.cli("event", "list", "--limit", "10000", "-o", "json")
		return nil, fmt.Errorf("no event at all: %v\n%s", err, out)
	}
	return resp.GetEvents(), nil
}

func (l *haLab) leader() (string, error) {
	st := &pb.ClusterStatusResponse{}
	if err := l.get(st, "cluster", "status"); err != nil {
		return "", err
	}
	return st.GetLeader(), nil
}

func (l *haLab) blocklist() string {
	out, err := l.ceph.Run(l.ctx, "osd", "blocklist", "ls")
	if err != nil {
		l.t.Fatalf("ceph osd blocklist ls: %v\n%s", err, out)
	}
	return out
}

// blocklisted tells whether the host-wide entry of the node's address
// ("IP:0/0", what fencing adds) is listed. Entries "IP:0/NONCE" name one
// client: librbd adds them (1 h) for the dead owner whose exclusive lock
// the restarted guest broke.
func (l *haLab) blocklisted(node string) bool {
	return strings.Contains(l.blocklist(), l.nodes[node].Host.IP.String()+":0/0 ")
}

func (l *haLab) qemuPID(node, vm string) string {
	b, _ := os.ReadFile(filepath.Join(l.libv[node].HostDir, "run/libvirt/qemu/prod-"+vm+".pid"))
	return strings.TrimSpace(string(b))
}

// domains lists the running domains of a node's libvirtd.
func (l *haLab) domains(node string) (string, error) {
	return l.nodes[node].Host.Run(l.ctx, "virsh", "-c", l.libv[node].LocalURI(), "list", "--name")
}

var seqLine = regexp.MustCompile(`SEQ (\d+)`)

// lastSeq reads the VM's console through the API and returns the last
// "SEQ n" it printed (-1 if none yet).
func (l *haLab) lastSeq(vm string) int {
	out, _ := l.cli("vm", "console", vm, "--for", "2s")
	m := seqLine.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return -1
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// waitRunning waits until vm runs on a node accepted by where, and its
// console shows a SEQ above after.
func (l *haLab) waitRunning(t *testing.T, vm string, d time.Duration, after int, where func(string) bool) *pb.VM {
	t.Helper()
	var got *pb.VM
	eventually(t, d, vm+" running", func() (bool, string) {
		v, err := l.vm(vm)
		if err != nil {
			return false, err.Error()
		}
		got = v
		return v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING && v.GetMigratingTo() == "" && where(v.GetNode()),
			fmt.Sprintf("node %s status %v", v.GetNode(), v.GetStatus())
	})
	eventually(t, d, vm+" writing its sequence", func() (bool, string) {
		s := l.lastSeq(vm)
		return s > after, fmt.Sprintf("last SEQ %d, want > %d", s, after)
	})
	return got
}

// proof exports the VM's disk and checks its sequence log.
func (l *haLab) proof(t *testing.T, vol string) []seqSegment {
	t.Helper()
	file := filepath.Join(l.ceph.Host.Dir, "export-"+vol)
	os.Remove(file)
	if out, err := l.ceph.RBD(l.ctx, "export", "rbd/"+vol, file); err != nil {
		t.Fatalf("rbd export %s: %v\n%s", vol, err, out)
	}
	img, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(file)
	segs, err := parseSeqLog(img)
	if err != nil {
		t.Fatalf("disk of %s: %v (runs: %+v)", vol, err, segs)
	}
	if len(segs) == 0 {
		t.Fatalf("disk of %s holds no record", vol)
	}
	t.Logf("disk of %s: %d records in %d boot(s), no fork: %+v", vol, segs[len(segs)-1].Last, len(segs), segs)
	return segs
}

func (l *haLab) cut(names ...string) {
	l.t.Helper()
	for _, n := range names {
		l.away[n] = true
		if err := l.nodes[n].Host.Cut(); err != nil {
			l.t.Fatal(err)
		}
	}
}

func (l *haLab) reconnect(names ...string) {
	l.t.Helper()
	for _, n := range names {
		if err := l.nodes[n].Host.Reconnect(); err != nil {
			l.t.Fatal(err)
		}
		l.back(n)
	}
}

// back marks a node reachable again, last in the CLI's preference.
func (l *haLab) back(node string) {
	delete(l.away, node)
	order := []string{}
	for _, n := range l.order {
		if n != node {
			order = append(order, n)
		}
	}
	l.order = append(order, node)
}

// sameBootProgress waits until the VM wrote a few more records under the
// boot id it had (a live move must not reboot it).
func (l *haLab) sameBootProgress(t *testing.T, vol string, before seqSegment) {
	t.Helper()
	eventually(t, 45*time.Second, vol+" sequence continues on the same boot", func() (bool, string) {
		now, err := l.diskSeq(vol)
		if err != nil {
			return false, err.Error()
		}
		if now.Boot != before.Boot {
			t.Fatalf("%s rebooted: boot %s -> %s", vol, before.Boot, now.Boot)
		}
		return now.Last > before.Last+2, fmt.Sprintf("last record %d, was %d", now.Last, before.Last)
	})
}

// diskSeq reads the last record of a VM's sequence log from its image.
func (l *haLab) diskSeq(vol string) (seqSegment, error) {
	file := filepath.Join(l.ceph.Host.Dir, "peek-"+vol)
	defer os.Remove(file)
	if out, err := l.ceph.RBD(l.ctx, "export", "rbd/"+vol, file); err != nil {
		return seqSegment{}, fmt.Errorf("rbd export %s: %v: %s", vol, err, out)
	}
	img, err := os.ReadFile(file)
	if err != nil {
		return seqSegment{}, err
	}
	segs, err := parseSeqLog(img)
	if err != nil || len(segs) == 0 {
		return seqSegment{}, fmt.Errorf("sequence log of %s: %v (%d runs)", vol, err, len(segs))
	}
	return segs[len(segs)-1], nil
}

// eventIndex returns the index of the first event after `after` matching
// action and target (0 if none).
func eventIndex(evs []*pb.Event, after uint64, action, target string) uint64 {
	return eventResult(evs, after, action, target, "")
}

// eventResult is eventIndex also matching the result, unless empty.
func eventResult(evs []*pb.Event, after uint64, action, target, result string) uint64 {
	for _, e := range evs {
		if e.GetIndex() > after && e.GetAction() == action && e.GetTarget() == target && (result == "" || e.GetResult() == result) {
			return e.GetIndex()
		}
	}
	return 0
}

func lastEventIndex(evs []*pb.Event) uint64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].GetIndex()
}

// waitRejoined waits until a node that was fenced came back: its stale
// copies gone, reported clean, blocklist entry removed, unfenced, ready.
func (l *haLab) waitRejoined(t *testing.T, node string, since uint64, stale []string) {
	t.Helper()
	eventually(t, 60*time.Second, node+" unfenced", func() (bool, string) {
		ns, err := l.nodeList()
		if err != nil {
			return false, err.Error()
		}
		n := ns[node]
		return !n.GetFenced() && n.GetHealth() == pb.NodeHealth_NODE_HEALTH_READY && n.GetReady(), fmt.Sprint(n)
	})
	out, err := l.domains(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range stale {
		if strings.Contains(out, "prod-"+vm) {
			t.Fatalf("%s still runs its stale copy of %s:\n%s", node, vm, out)
		}
	}
	if l.blocklisted(node) {
		t.Fatalf("%s unfenced but still blocklisted:\n%s", node, l.blocklist())
	}
	evs, err := l.events()
	if err != nil {
		t.Fatal(err)
	}
	clean, unfence := eventIndex(evs, since, "ha.clean", node), eventIndex(evs, since, "ha.unfence", node)
	if clean == 0 || unfence == 0 || clean > unfence {
		t.Fatalf("%s: want ha.clean then ha.unfence after event %d, got clean=%d unfence=%d", node, since, clean, unfence)
	}
}

// failover cuts (or crashes, with crash) the node running the victims and
// checks they restart elsewhere after the node was fenced, in that order.
func (l *haLab) failover(t *testing.T, node string, victims []string, lose func()) {
	t.Helper()
	since := l.lastEvent(t)
	seqs := map[string]int{}
	for _, v := range victims {
		seqs[v] = l.lastSeq(v)
	}
	start := time.Now()
	lose()
	for _, v := range victims {
		eventually(t, 90*time.Second, v+" running elsewhere", func() (bool, string) {
			got, err := l.vm(v)
			if err != nil {
				return false, err.Error()
			}
			return got.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING && got.GetNode() != node && got.GetStatus().GetNode() == got.GetNode(),
				fmt.Sprintf("node %s status %v", got.GetNode(), got.GetStatus())
		})
		t.Logf("%s: %s RUNNING elsewhere %.1f s after the loss of %s", t.Name(), v, time.Since(start).Seconds(), node)
	}
	for _, v := range victims {
		l.waitRunning(t, v, 60*time.Second, seqs[v], func(n string) bool { return n != node })
		t.Logf("%s: %s writes SEQ > %d %.1f s after the loss of %s", t.Name(), v, seqs[v], time.Since(start).Seconds(), node)
	}
	evs, err := l.events()
	if err != nil {
		t.Fatal(err)
	}
	fence := eventIndex(evs, since, "ha.fence", node)
	if fence == 0 {
		t.Fatalf("no ha.fence of %s after event %d", node, since)
	}
	for _, v := range victims {
		r := eventIndex(evs, since, "ha.restart", v)
		if r == 0 || r < fence {
			t.Fatalf("ha.restart of %s at %d, ha.fence of %s at %d: restart must come after the fence", v, r, node, fence)
		}
	}
	if !l.blocklisted(node) {
		t.Fatalf("%s (%s) not blocklisted after its fence:\n%s", node, l.nodes[node].Host.IP, l.blocklist())
	}
	at := func(i uint64) string {
		for _, e := range evs {
			if e.GetIndex() == i {
				return fmt.Sprintf("%.1f s", time.Unix(0, e.GetTimeUnixNano()).Sub(start).Seconds())
			}
		}
		return "?"
	}
	line := fmt.Sprintf("timeline after the loss of %s: down %s, fence %s", node,
		at(eventResult(evs, since, "node.health", node, "down")), at(fence))
	for _, v := range victims {
		line += fmt.Sprintf(", %s restart %s, running %s", v, at(eventIndex(evs, since, "ha.restart", v)), at(eventResult(evs, since, "vm.state", v, "running")))
	}
	t.Log(line)
}

func TestHA(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	l := startHALab(t, ctx)

	eventually(t, 60*time.Second, "voters ready", func() (bool, string) {
		ns, err := l.nodeList()
		if err != nil {
			return false, err.Error()
		}
		ok := true
		for _, n := range []string{"n1", "n2", "n3"} {
			ok = ok && ns[n].GetReady()
		}
		return ok, fmt.Sprint(ns)
	})
	// The default heartbeat timings (suspect 3 s, down 5 s) are kept: the
	// machine is loaded and a false "down" would fence a healthy node.
	t.Logf("settings:\n%s", l.must("cluster", "settings"))
	key, err := l.ceph.CreateClient(ctx, "corral")
	if err != nil {
		t.Fatal(err)
	}
	l.must("storage", "add", "ceph", "--kind", "rbd", "--monitors", l.ceph.MonAddr, "--ceph-pool", "rbd", "--user", "corral", "--key", key)
	base := []string{"--vcpus", "1", "--memory", "192", "--kernel", l.kernel, "--initrd", l.initrd, "--cmdline", "console=ttyS0 quiet"}
	create := func(name, node string, extra ...string) {
		l.must("volume", "create", "ceph/"+name, "--size", "16M")
		args := append([]string{"vm", "create", name, "--node", node, "--disk", "ceph/" + name}, base...)
		l.must(append(args, extra...)...)
	}
	// ha1 and mig1 refuse to share a node: that makes every failover and
	// drain target below deterministic, and gives drain a refusal case.
	create("ha1", "n3", "--ha", "restart", "--anti-affinity", "seq")
	create("mig1", "n1", "--ha", "restart", "--anti-affinity", "seq")
	l.waitRunning(t, "ha1", 120*time.Second, 0, func(n string) bool { return n == "n3" })
	l.waitRunning(t, "mig1", 120*time.Second, 0, func(n string) bool { return n == "n1" })

	t.Run("AllCut", func(t *testing.T) {
		pids := map[string]string{"ha1": l.qemuPID("n3", "ha1"), "mig1": l.qemuPID("n1", "mig1")}
		boots := map[string]int64{}
		for vm := range pids {
			v, err := l.vm(vm)
			if err != nil {
				t.Fatal(err)
			}
			boots[vm] = v.GetStatus().GetBoots()
		}
		evs, err := l.events()
		if err != nil {
			t.Fatal(err)
		}
		since := lastEventIndex(evs)
		l.cut(haNames...)
		time.Sleep(8 * time.Second)
		l.reconnect(haNames...)
		// Wait for a leader and for the guests' I/O to resume.
		for vm, node := range map[string]string{"ha1": "n3", "mig1": "n1"} {
			l.waitRunning(t, vm, 60*time.Second, 0, func(n string) bool { return n == node })
		}
		// Give HA time to act if it (wrongly) would.
		time.Sleep(6 * time.Second)
		for vm, node := range map[string]string{"ha1": "n3", "mig1": "n1"} {
			if got := l.qemuPID(node, vm); got != pids[vm] || got == "" {
				t.Errorf("%s on %s: qemu pid %s -> %s", vm, node, pids[vm], got)
			}
			v, err := l.vm(vm)
			if err != nil {
				t.Fatal(err)
			}
			if v.GetNode() != node || v.GetStatus().GetBoots() != boots[vm] {
				t.Errorf("%s: node %s boots %d, want %s and %d", vm, v.GetNode(), v.GetStatus().GetBoots(), node, boots[vm])
			}
		}
		for _, node := range []string{"n1", "n2", "n3"} {
			out, err := l.domains(node)
			if err != nil {
				t.Fatal(err)
			}
			for vm, home := range map[string]string{"ha1": "n3", "mig1": "n1"} {
				if strings.Contains(out, "prod-"+vm) != (node == home) {
					t.Errorf("%s on %s: running domains %q", vm, node, out)
				}
			}
		}
		for _, n := range haNames {
			if l.blocklisted(n) {
				t.Errorf("%s blocklisted after a cut of everybody:\n%s", n, l.blocklist())
			}
		}
		evs, err = l.events()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d events, last index %d, %d before the cut", len(evs), lastEventIndex(evs), since)
		for _, e := range evs {
			if e.GetIndex() > since && strings.HasPrefix(e.GetAction(), "ha.") {
				t.Errorf("HA acted on a cut of everybody: %v", e)
			}
		}
		l.proof(t, "ha1")
		l.proof(t, "mig1")
	})

	t.Run("Migration", func(t *testing.T) {
		before, err := l.vm("mig1")
		if err != nil {
			t.Fatal(err)
		}
		seq, err := l.diskSeq("mig1")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out := l.must("vm", "migrate", "mig1", "--node", "n2")
		total := time.Since(start)
		after, err := l.vm("mig1")
		if err != nil {
			t.Fatal(err)
		}
		if after.GetNode() != "n2" || after.GetStatus().GetState() != pb.VMState_VM_STATE_RUNNING {
			t.Fatalf("after its migration mig1 is on %s, %v", after.GetNode(), after.GetStatus())
		}
		// The console is not used here: the serial log path in the
		// migrated domain XML is still the source node's (see report).
		l.sameBootProgress(t, "mig1", seq)
		if after.GetStatus().GetBoots() != before.GetStatus().GetBoots() {
			t.Errorf("mig1 boots %d -> %d: a live migration must not reboot", before.GetStatus().GetBoots(), after.GetStatus().GetBoots())
		}
		info, err := l.nodes["n2"].Host.Run(ctx, "virsh", "-c", l.libv["n2"].LocalURI(), "domjobinfo", "prod-mig1", "--completed")
		if err != nil {
			t.Fatalf("domjobinfo: %v\n%s", err, info)
		}
		t.Logf("live migration n1 -> n2: %s total through the CLI; %s; destination job: %s", total.Round(time.Millisecond),
			finalLine(out), jobFields(info, "Time elapsed", "Total downtime"))
		if d, _ := l.domains("n1"); strings.Contains(d, "prod-mig1") {
			t.Fatalf("mig1 still runs on n1 after its migration:\n%s", d)
		}
		segs := l.proof(t, "mig1")
		if len(segs) != 1 {
			t.Fatalf("migration changed the boot id of mig1: %+v", segs)
		}

		// Bad input: clear errors and nothing moves. The capacity case
		// shrinks every node's memory with the overcommit ratio.
		l.must("storage", "add", "local", "--kind", "dir", "--path", filepath.Join(l.lab.Dir, "dirpool"))
		l.must("volume", "create", "local/dir1", "--size", "16M", "--node", "n1")
		l.must(append([]string{"vm", "create", "dir1", "--node", "n1", "--disk", "local/dir1"}, base...)...)
		eventually(t, 60*time.Second, "dir1 running", func() (bool, string) {
			v, err := l.vm("dir1")
			return err == nil && v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING, fmt.Sprint(v.GetStatus(), err)
		})
		cases := []struct {
			vm, to, want string
			setup        []string
		}{
			{"mig1", "w", "witness", nil},
			{"mig1", "n2", "already runs on n2", nil},
			{"mig1", "n3", "anti-affinity", nil},
			{"mig1", "nope", "unknown node", nil},
			{"dir1", "n2", "local storage", nil},
			{"mig1", "n1", "MiB free", []string{"cluster", "settings", "--mem-overcommit", "0.005"}},
		}
		for _, c := range cases {
			if c.setup != nil {
				l.must(c.setup...)
			}
			out, err := l.cli("vm", "migrate", c.vm, "--node", c.to)
			if c.setup != nil {
				l.must("cluster", "settings", "--mem-overcommit", "1")
			}
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("migrate %s to %s: want an error with %q, got %v:\n%s", c.vm, c.to, c.want, err, out)
			} else {
				t.Logf("migrate %s to %s refused: %s", c.vm, c.to, strings.TrimSpace(out))
			}
			v, err := l.vm(c.vm)
			if err != nil {
				t.Fatal(err)
			}
			if v.GetMigratingTo() != "" || (c.vm == "mig1" && v.GetNode() != "n2") {
				t.Errorf("refused migration of %s moved something: node %s migrating to %q", c.vm, v.GetNode(), v.GetMigratingTo())
			}
		}
		if got := l.qemuPID("n2", "mig1"); got == "" {
			t.Errorf("mig1 no longer runs on n2")
		}
		l.must("vm", "delete", "dir1")
	})

	t.Run("Drain", func(t *testing.T) {
		seq, err := l.diskSeq("mig1")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		l.must("node", "drain", "n2")
		t.Logf("drain of n2 took %s", time.Since(start).Round(time.Millisecond))
		if v, err := l.vm("mig1"); err != nil || v.GetNode() != "n1" || v.GetStatus().GetState() != pb.VMState_VM_STATE_RUNNING {
			t.Fatalf("after the drain of n2, mig1: %v %v", v, err)
		}
		l.sameBootProgress(t, "mig1", seq)
		ns, err := l.nodeList()
		if err != nil {
			t.Fatal(err)
		}
		if !ns["n2"].GetMaintenance() {
			t.Fatalf("n2 drained but not in maintenance: %v", ns["n2"])
		}
		if d, _ := l.domains("n2"); strings.Contains(d, "prod-") {
			t.Fatalf("n2 still runs guests after its drain:\n%s", d)
		}
		// n1 is the last voter with room for mig1: n2 is in maintenance
		// and n3 runs ha1, which mig1 refuses to share a node with.
		out, err := l.cli("node", "drain", "n1")
		if err == nil || !strings.Contains(out, "nothing was moved") {
			t.Fatalf("drain of n1 should be refused: %v\n%s", err, out)
		}
		t.Logf("drain n1 refused: %s", strings.TrimSpace(out))
		ns, err = l.nodeList()
		if err != nil {
			t.Fatal(err)
		}
		v, err := l.vm("mig1")
		if err != nil {
			t.Fatal(err)
		}
		if ns["n1"].GetMaintenance() || v.GetNode() != "n1" || v.GetMigratingTo() != "" {
			t.Fatalf("refused drain changed something: n1 maintenance %v, mig1 on %s migrating to %q", ns["n1"].GetMaintenance(), v.GetNode(), v.GetMigratingTo())
		}
		l.must("node", "resume", "n2")
		ns, err = l.nodeList()
		if err != nil {
			t.Fatal(err)
		}
		if ns["n2"].GetMaintenance() {
			t.Fatalf("n2 still in maintenance after resume")
		}
		if segs := l.proof(t, "mig1"); len(segs) != 1 {
			t.Fatalf("drain rebooted mig1: %+v", segs)
		}
	})

	t.Run("NodeLoss", func(t *testing.T) {
		// plain1 has HA off: it stays placed on n3, is powered off while
		// n3 is fenced (its storage client is blocklisted) and runs again
		// there once n3 is unfenced.
		l.must(append([]string{"vm", "create", "plain1", "--node", "n3"}, base...)...)
		eventually(t, 120*time.Second, "plain1 running on n3", func() (bool, string) {
			v, err := l.vm("plain1")
			if err != nil {
				return false, err.Error()
			}
			return v.GetNode() == "n3" && v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING, fmt.Sprint(v.GetStatus())
		})
		since := l.lastEvent(t)
		// ha1 can only go to n2: mig1 is on n1.
		l.failover(t, "n3", []string{"ha1"}, func() { l.cut("n3") })
		v, _ := l.vm("ha1")
		if v.GetNode() != "n2" {
			t.Errorf("ha1 restarted on %s, want n2 (anti-affinity with mig1 on n1)", v.GetNode())
		}
		l.reconnect("n3")
		l.waitRejoined(t, "n3", since, []string{"ha1"})
		eventually(t, 120*time.Second, "plain1 running again on n3 after unfence", func() (bool, string) {
			v, err := l.vm("plain1")
			if err != nil {
				return false, err.Error()
			}
			return v.GetNode() == "n3" && v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING && v.GetStatus().GetBoots() >= 2, fmt.Sprint(v.GetStatus())
		})
		if segs := l.proof(t, "ha1"); len(segs) < 2 {
			t.Fatalf("ha1 restarted but its disk shows one boot: %+v", segs)
		}
	})

	t.Run("Crash", func(t *testing.T) {
		v, err := l.vm("ha1")
		if err != nil {
			t.Fatal(err)
		}
		node := v.GetNode()
		since := l.lastEvent(t)
		l.failover(t, node, []string{"ha1"}, func() {
			l.away[node] = true
			if err := l.nodes[node].Kill(); err != nil {
				t.Fatal(err)
			}
			if err := l.libv[node].Kill(); err != nil {
				t.Fatal(err)
			}
		})
		if err := l.libv[node].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.nodes[node].Start(ctx); err != nil {
			t.Fatal(err)
		}
		l.back(node)
		l.waitRejoined(t, node, since, []string{"ha1"})
		l.proof(t, "ha1")
	})

	t.Run("LeaderPartition", func(t *testing.T) {
		var leader string
		eventually(t, 30*time.Second, "a voter leads", func() (bool, string) {
			var err error
			leader, err = l.leader()
			return err == nil && leader != "" && leader != "w", fmt.Sprint(leader, err)
		})
		var victims []string
		vms := &pb.ListVMsResponse{}
		if err := l.get(vms, "vm", "list"); err != nil {
			t.Fatal(err)
		}
		for _, v := range vms.GetVms() {
			if v.GetNode() == leader && v.GetSpec().GetHa() == pb.HAMode_HA_MODE_RESTART {
				victims = append(victims, v.GetName())
			}
		}
		if len(victims) == 0 {
			create("ha3", leader, "--ha", "restart")
			l.waitRunning(t, "ha3", 120*time.Second, 0, func(n string) bool { return n == leader })
			victims = []string{"ha3"}
		}
		t.Logf("leader %s runs %v", leader, victims)
		since := l.lastEvent(t)
		l.failover(t, leader, victims, func() { l.cut(leader) })
		if now, err := l.leader(); err != nil || now == leader {
			t.Fatalf("leader after the partition: %q, %v", now, err)
		}
		l.reconnect(leader)
		l.waitRejoined(t, leader, since, victims)
		for _, v := range victims {
			l.proof(t, v)
		}
	})
}

// lastEvent is the index of the newest event.
func (l *haLab) lastEvent(t *testing.T) uint64 {
	t.Helper()
	evs, err := l.events()
	if err != nil {
		t.Fatal(err)
	}
	return lastEventIndex(evs)
}

func finalLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// jobFields picks "name: value" lines out of virsh domjobinfo.
func jobFields(info string, names ...string) string {
	var out []string
	for _, line := range strings.Split(info, "\n") {
		for _, n := range names {
			if strings.HasPrefix(strings.TrimSpace(line), n+":") {
				out = append(out, strings.Join(strings.Fields(line), " "))
			}
		}
	}
	return strings.Join(out, ", ")
}

// TestParseSeqLog checks the disk proof itself: it must catch a fork, a
// hole, a lost record and a misplaced one.
func TestParseSeqLog(t *testing.T) {
	t.Parallel()
	img := func(recs ...string) []byte {
		b := make([]byte, (seqLogStart+seqLogSectors)*512)
		for i, r := range recs {
			if r == "" {
				continue
			}
			copy(b[(seqLogStart+i+1)*512:], fmt.Sprintf("%-511s\n", r))
		}
		return b
	}
	cases := []struct {
		name string
		recs []string
		runs int
		err  string
	}{
		{"one boot", []string{"A 1 0", "A 2 1", "A 3 2"}, 1, ""},
		{"failover", []string{"A 1 0", "A 2 1", "B 3 0", "B 4 1"}, 2, ""},
		{"fork", []string{"A 1 0", "B 2 0", "A 3 1"}, 2, "FORK"},
		{"hole", []string{"A 1 0", "", "A 3 2"}, 1, "hole"},
		{"lost record", []string{"A 1 0", "A 2 1", "A 3 5"}, 1, "k=5"},
		{"misplaced", []string{"A 1 0", "A 7 1"}, 1, "sector of record 2"},
		{"garbled", []string{"A 1 0", "A 2"}, 1, "garbled"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			segs, err := parseSeqLog(img(c.recs...))
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("err %v, want %q", err, c.err)
			}
			if len(segs) != c.runs {
				t.Fatalf("%d runs, want %d: %+v", len(segs), c.runs, segs)
			}
		})
	}
}
