package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Defaults of the harness, in one place.
const (
	// LabsRoot holds every lab's registration (slots/) and, unless
	// Options.Dir says otherwise, the lab directories themselves.
	LabsRoot = "/tmp/corral-labs"
	// DefaultStopGrace is how long Close and Process.Stop wait after
	// SIGTERM before SIGKILL.
	DefaultStopGrace = 2 * time.Second
	// DefaultCephOSDBytes is the memstore size of each OSD.
	DefaultCephOSDBytes int64 = 2 << 30
	// DefaultRunTimeout bounds Host.Run and the harness' own commands when
	// the caller's context has no deadline.
	DefaultRunTimeout = 2 * time.Minute

	labPrefix = "crl" // netns names are "crl<slot>-<host>"
	maxSlots  = 256   // one 10.77.<slot>.0/24 each
	switchNS  = "sw"
)

// Options configures a lab.
type Options struct {
	Dir  string // lab directory; default: a new dir under LabsRoot
	Keep bool   // do not delete Dir on Close (for demo)
}

// Lab is a set of simulated hosts on one switch, plus everything started in
// them. All methods are safe for concurrent use.
type Lab struct {
	Dir    string
	Subnet netip.Prefix // 10.77.<slot>.0/24, unique among live labs
	ID     string       // "crl<slot>": prefix of every netns of the lab

	// CephOSDBytes is the memstore size of each OSD StartCeph creates.
	CephOSDBytes int64
	// StopGrace is the SIGTERM-to-SIGKILL delay of Close and Process.Stop.
	StopGrace time.Duration

	mu       sync.Mutex
	rec      record
	slotFile string
	hosts    map[string]*Host
	order    []*Host
	nextIP   netip.Addr
	procs    []*Process
	closed   bool

	closeOnce sync.Once
	closeErr  error
}

// record is lab.json: enough for another process to clean up after a lab
// whose owner died.
type record struct {
	ID          string       `json:"id"`
	Slot        int          `json:"slot"`
	Subnet      string       `json:"subnet"`
	Dir         string       `json:"dir"`
	Keep        bool         `json:"keep"`
	Owner       procID       `json:"owner"`
	Netns       []string     `json:"netns"`
	Processes   []procRecord `json:"processes"`
	LibvirtDirs []string     `json:"libvirt_dirs"`
}

type procID struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc/PID/stat starttime: guards against PID reuse
}

type procRecord struct {
	Name string `json:"name"`
	procID
}

// New starts an empty lab for a test and registers its Close as a cleanup.
// It fails the test if prerequisites are missing. When the test failed, the
// tail of every tracked process' log is logged before the lab is closed.
func New(tb testing.TB, opts Options) *Lab {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			l.logTails(tb)
		}
		if err := l.Close(); err != nil {
			tb.Errorf("testenv: close lab %s: %v", l.ID, err)
		}
	})
	return l
}

// Start is New for non-test callers (demo, bench). The caller must Close
// the lab.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if err := checkPrereqs(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(LabsRoot, "slots"), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", LabsRoot, err)
	}
	unlock, err := lockRoot(ctx)
	if err != nil {
		return nil, err
	}
	l, err := register(opts)
	unlock()
	if err != nil {
		return nil, err
	}
	if err := l.startSwitch(ctx); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// Sweep cleans the labs under LabsRoot whose owning process is dead (as New
// and Start do first), for scripts that want a clean machine (CI, demo).
func Sweep(ctx context.Context) error {
	if err := checkPrereqs(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(LabsRoot, "slots"), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", LabsRoot, err)
	}
	unlock, err := lockRoot(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	sweepStale()
	return nil
}

func checkPrereqs() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces)")
	}
	for _, bin := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found: run scripts/install-deps.sh", bin)
		}
	}
	return nil
}

// lockRoot serialises slot allocation and sweeping between processes.
func lockRoot(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(LabsRoot, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lab lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", LabsRoot, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", LabsRoot, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// register sweeps stale labs, takes a free slot and writes lab.json. The
// caller holds the root lock.
func register(opts Options) (*Lab, error) {
	sweepStale()
	self, err := readProcID(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("identify own process: %w", err)
	}
	slot, slotFile := -1, ""
	for n := 0; n < maxSlots; n++ {
		p := filepath.Join(LabsRoot, "slots", fmt.Sprintf("%s%d", labPrefix, n))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			continue
		}
		f.Close()
		slot, slotFile = n, p
		break
	}
	if slot < 0 {
		return nil, fmt.Errorf("all %d lab slots under %s are in use", maxSlots, LabsRoot)
	}
	id := fmt.Sprintf("%s%d", labPrefix, slot)
	dir, err := prepareDir(opts.Dir, id)
	if err != nil {
		os.Remove(slotFile)
		return nil, err
	}
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(slot), 0}), 24)
	l := &Lab{
		Dir:          dir,
		Subnet:       subnet,
		ID:           id,
		CephOSDBytes: DefaultCephOSDBytes,
		StopGrace:    DefaultStopGrace,
		slotFile:     slotFile,
		hosts:        map[string]*Host{},
		nextIP:       subnet.Addr().Next(),
		rec: record{
			ID: id, Slot: slot, Subnet: subnet.String(), Dir: dir, Keep: opts.Keep,
			Owner: self,
		},
	}
	if err := l.saveLocked(); err != nil {
		os.Remove(slotFile)
		return nil, err
	}
	if err := os.WriteFile(slotFile, []byte(dir), 0o644); err != nil {
		os.Remove(slotFile)
		return nil, fmt.Errorf("write slot %s: %w", slotFile, err)
	}
	return l, nil
}

// prepareDir creates the lab directory. A given directory must be empty or
// hold a dead lab (whose leftovers are cleaned first): the harness never
// deletes data it did not create.
func prepareDir(dir, id string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp(LabsRoot, id+"-*")
		if err != nil {
			return "", fmt.Errorf("create lab dir: %w", err)
		}
		return d, nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("lab dir %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create lab dir: %w", err)
		}
		return dir, nil
	case err != nil:
		return "", fmt.Errorf("read lab dir: %w", err)
	case len(entries) == 0:
		return dir, nil
	}
	old, err := readRecord(dir)
	if err != nil {
		return "", fmt.Errorf("lab dir %s is not empty and holds no lab.json: choose another directory", dir)
	}
	if alive(old.Owner) {
		return "", fmt.Errorf("lab dir %s is in use by lab %s of process %d", dir, old.ID, old.Owner.PID)
	}
	// sweepStale has already dealt with the old lab's namespaces (its slot
	// may now belong to a live lab: no matching by name prefix here).
	killRecorded(old)
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return "", fmt.Errorf("empty old lab dir: %w", err)
		}
	}
	return dir, nil
}

func (l *Lab) ns(name string) string { return l.ID + "-" + name }

func (l *Lab) startSwitch(ctx context.Context) error {
	sw := l.ns(switchNS)
	if err := l.recordNetns(sw); err != nil {
		return err
	}
	return runCmds(ctx, [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br0", "up"},
	})
}

// Host returns the host called name, or nil.
func (l *Lab) Host(name string) *Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hosts[name]
}

// Hosts returns the lab's hosts in creation order.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.order...)
}

func (l *Lab) recordNetns(ns string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errClosed
	}
	l.rec.Netns = append(l.rec.Netns, ns)
	return l.saveLocked()
}

func (l *Lab) recordLibvirtDir(dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errClosed
	}
	l.rec.LibvirtDirs = append(l.rec.LibvirtDirs, dir)
	return l.saveLocked()
}

var errClosed = errors.New("lab is closed")

func (l *Lab) saveLocked() error {
	b, err := json.MarshalIndent(l.rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab.json: %w", err)
	}
	tmp := filepath.Join(l.Dir, ".lab.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write lab.json: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(l.Dir, "lab.json")); err != nil {
		return fmt.Errorf("write lab.json: %w", err)
	}
	return nil
}

func readRecord(dir string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode %s/lab.json: %w", dir, err)
	}
	return r, nil
}

// Close kills every process the lab started (tracked children, the QEMU
// processes of its libvirtds, anything else still inside its namespaces),
// deletes its namespaces and removes Dir unless Keep. It is idempotent.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	procs := append([]*Process(nil), l.procs...)
	rec := l.rec
	grace := l.StopGrace
	l.mu.Unlock()

	var errs []error
	// Guests are throwaway: no need to be polite to QEMU.
	qemus := qemuPIDs(rec.LibvirtDirs)
	signalAll(qemus, syscall.SIGKILL)

	// SIGTERM our children and anything else living in our namespaces.
	strays := nsProcesses(allNetns(rec))
	for _, p := range procs {
		p.signal(syscall.SIGTERM)
	}
	signalAll(strays, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-time.After(time.Until(deadline)):
		}
	}
	waitGone(strays, time.Until(deadline))
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	// Catch whatever was started in the namespaces meanwhile.
	left := append(nsProcesses(allNetns(rec)), qemus...)
	left = append(left, strays...)
	signalAll(left, syscall.SIGKILL)
	if pids := waitGone(left, 10*time.Second); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("processes still alive after SIGKILL: %v", pids))
	}
	if left, err := deleteNetnsAndStragglers(allNetns(rec)); err != nil || len(left) > 0 {
		errs = append(errs, err)
		if len(left) > 0 {
			errs = append(errs, fmt.Errorf("processes still alive in deleted namespaces: %v", left))
		}
	}
	if !rec.Keep {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	if err := os.Remove(l.slotFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("free slot: %w", err))
	}
	return errors.Join(errs...)
}

// allNetns lists the recorded namespaces of a lab plus any existing one with
// its prefix (created but not yet recorded when its owner died).
func allNetns(rec record) []string {
	set := map[string]bool{}
	for _, ns := range rec.Netns {
		set[ns] = true
	}
	for _, ns := range listNetns() {
		if strings.HasPrefix(ns, rec.ID+"-") {
			set[ns] = true
		}
	}
	out := make([]string, 0, len(set))
	for ns := range set {
		out = append(out, ns)
	}
	return out
}

func listNetns() []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func deleteNetns(ns string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("delete netns %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

var slotName = regexp.MustCompile(`^` + labPrefix + `(\d+)$`)

// sweepStale cleans the labs whose owner process is dead, and namespaces
// with the lab prefix that no slot accounts for. The caller holds the root
// lock, so no live lab is half-registered.
func sweepStale() {
	sweepBuilds()
	slots, _ := os.ReadDir(filepath.Join(LabsRoot, "slots"))
	live := map[string]bool{}
	for _, s := range slots {
		m := slotName.FindStringSubmatch(s.Name())
		if m == nil {
			continue
		}
		id := s.Name()
		slotFile := filepath.Join(LabsRoot, "slots", id)
		dir, _ := os.ReadFile(slotFile)
		rec, err := readRecord(string(dir))
		if err == nil && rec.ID == id && alive(rec.Owner) {
			live[id] = true
			continue
		}
		if err != nil || rec.ID != id {
			// Crashed between taking the slot and writing lab.json: only
			// the namespaces can be found.
			rec = record{ID: id, Keep: true}
		}
		cleanRecord(rec, true)
		os.Remove(slotFile)
	}
	for _, ns := range listNetns() {
		id, _, ok := strings.Cut(ns, "-")
		if !ok || !slotName.MatchString(id) || live[id] {
			continue
		}
		if _, err := os.Stat(filepath.Join(LabsRoot, "slots", id)); err == nil {
			continue // a slot taken just now by this sweep's caller
		}
		cleanRecord(record{ID: id, Keep: true}, true)
	}
}

// cleanRecord kills what a dead lab left and deletes its namespaces; with
// removeDir it also deletes the lab directory (unless the lab was Keep).
func cleanRecord(rec record, removeDir bool) {
	pids := nsProcesses(allNetns(rec))
	signalAll(pids, syscall.SIGKILL)
	killRecorded(rec)
	waitGone(pids, 10*time.Second)
	_, _ = deleteNetnsAndStragglers(allNetns(rec))
	if removeDir && !rec.Keep && rec.Dir != "" {
		if r, err := readRecord(rec.Dir); err == nil && r.ID == rec.ID {
			os.RemoveAll(rec.Dir)
		}
	}
}

// killRecorded kills the live processes a lab record names: its tracked
// children (checked by start time) and the QEMU processes of its libvirtds.
func killRecorded(rec record) {
	pids := qemuPIDs(rec.LibvirtDirs)
	for _, p := range rec.Processes {
		if alive(p.procID) {
			pids = append(pids, p.procID)
		}
	}
	signalAll(pids, syscall.SIGKILL)
	waitGone(pids, 10*time.Second)
}

// nsInodes returns the inode numbers of the named network namespaces: they
// identify the namespaces' processes even after the names are deleted.
func nsInodes(nss []string) map[uint64]bool {
	inodes := map[uint64]bool{}
	for _, ns := range nss {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/run/netns", ns), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	return inodes
}

// nsProcesses lists the processes whose network namespace is one of nss.
func nsProcesses(nss []string) []procID { return procsInNetns(nsInodes(nss)) }

func procsInNetns(inodes map[uint64]bool) []procID {
	if len(inodes) == 0 {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []procID
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil || !inodes[st.Ino] {
			continue
		}
		if id, err := readProcID(pid); err == nil {
			out = append(out, id)
		}
	}
	return out
}

// deleteNetnsAndStragglers deletes the namespaces, then kills what still
// lives in them: a process between opening a namespace and setns (as in
// `ip netns exec`) is invisible to the scan that precedes the deletion.
func deleteNetnsAndStragglers(nss []string) ([]int, error) {
	inodes := nsInodes(nss)
	var errs []error
	for _, ns := range nss {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	var left []int
	for i := 0; i < 3; i++ {
		time.Sleep(30 * time.Millisecond)
		ids := procsInNetns(inodes)
		if len(ids) == 0 {
			break
		}
		signalAll(ids, syscall.SIGKILL)
		left = waitGone(ids, 5*time.Second)
	}
	return left, errors.Join(errs...)
}

func (l *Lab) logTails(tb testing.TB) {
	l.mu.Lock()
	procs := append([]*Process(nil), l.procs...)
	l.mu.Unlock()
	for _, p := range procs {
		tb.Logf("testenv: %s (pid %d) log %s:\n%s", p.name, p.pid, p.logPath, logTail(p.logPath, 20))
	}
}

func runCmds(ctx context.Context, cmds [][]string) error {
	for _, c := range cmds {
		if err := runCmd(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func runCmd(ctx context.Context, name string, args ...string) error {
	ctx, cancel := withDefault(ctx)
	defer cancel()
	_, err := output(exec.CommandContext(ctx, name, args...))
	return err
}

// withDefault bounds ctx by DefaultRunTimeout when it has no deadline.
func withDefault(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultRunTimeout)
}

// output runs cmd and returns its combined output; the error carries the
// output's tail. The caller bounds cmd by its context.
func output(cmd *exec.Cmd) (string, error) {
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, tail(string(out), 15))
	}
	return string(out), nil
}
