// Command corral-bench measures corral end to end on a lab of the shared
// harness (internal/testenv): committed Raft writes over mutual TLS against
// the fsync floor of the disk, VM create to ready, live migration and HA
// failover. Each section starts its own lab, runs alone and prints what it
// measured; a failed section is reported and the next one still runs.
//
// It needs root (network namespaces) and, for vm/migrate/failover,
// libvirtd and QEMU; failover also needs Ceph. See `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/minet/corral/internal/testenv"
)

// Defaults of the benchmark, in one place.
const (
	defaultVMRuns       = 5
	defaultMigrateRuns  = 3
	defaultFailoverRuns = 5

	raftClients      = 64
	raftLoadDuration = 10 * time.Second
	raftSerialWrites = 2000
	fsyncDuration    = 3 * time.Second
	fsyncBlock       = 4096

	raftTargetWrites = 10000                 // committed writes/s at 64 clients
	raftTargetP99    = 10 * time.Millisecond // 1 client
	failoverTarget   = 10 * time.Second      // crash to ready on another node

	// guestMemory is the memory of the create/failover guests (MiB).
	guestMemory = "192"
	// migrateMemory is the memory of the migrated guest (MiB).
	migrateMemory = "256"
	guestCmdline  = "console=ttyS0 quiet"
)

// section is one independent measurement with its own lab.
type section struct {
	name    string
	what    string
	timeout time.Duration
	run     func(ctx context.Context, b *bench) ([]figure, error)
}

var sections = []section{
	{"raft", "Raft over TLS: committed writes vs the fsync floor", 6 * time.Minute, benchRaft},
	{"vm", "VM create to ready", 15 * time.Minute, benchVM},
	{"migrate", "Live migration", 15 * time.Minute, benchMigrate},
	{"failover", "HA failover", 25 * time.Minute, benchFailover},
}

// figure is one line of the report: a value and what it measured.
type figure struct {
	Name  string
	Value string
	Note  string
}

// bench holds what every section shares.
type bench struct {
	bins testenv.Binaries
	runs int // 0: the section's default
	log  *slog.Logger
	// guestBoot is the median create-to-ready of the vm section when it
	// ran before, shown next to the failover figure.
	guestBoot time.Duration
	// leaderProfile, when set, receives a CPU profile of the Raft leader
	// taken during the 64-client run.
	leaderProfile string
}

func (b *bench) runsOr(def int) int {
	if b.runs > 0 {
		return b.runs
	}
	return def
}

func main() {
	only := flag.String("only", "raft,vm,migrate,failover", "comma-separated sections to run: raft, vm, migrate, failover")
	runs := flag.Int("runs", 0, fmt.Sprintf("repetitions per section (default: vm %d, migrate %d, failover %d)",
		defaultVMRuns, defaultMigrateRuns, defaultFailoverRuns))
	verbose := flag.Bool("v", false, "progress logs on stderr")
	leaderProfile := flag.String("leader-cpuprofile", "", "write a CPU profile of the Raft leader during the 64-client run to this file (go tool pprof)")
	flag.Parse()

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			want[s] = true
		}
	}
	for s := range want {
		if !known(s) {
			fmt.Fprintf(os.Stderr, "corral-bench: unknown section %q (want raft, vm, migrate, failover)\n", s)
			os.Exit(2)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, want, *runs, *leaderProfile, log, os.Stdout))
}

func known(name string) bool {
	for _, s := range sections {
		if s.name == name {
			return true
		}
	}
	return false
}

func run(ctx context.Context, want map[string]bool, runs int, leaderProfile string, log *slog.Logger, out io.Writer) int {
	// The CLI's admin issue-cert saves a context in its config file: keep
	// that away from root's own ~/.config/corral.
	cfgDir, err := os.MkdirTemp("", "corral-bench-")
	if err != nil {
		fmt.Fprintf(out, "corral-bench: %v\n", err)
		return 1
	}
	defer os.RemoveAll(cfgDir)
	os.Setenv("CORRAL_CONFIG", filepath.Join(cfgDir, "config.yaml"))

	bins, err := testenv.Build()
	defer testenv.RemoveBuild()
	if err != nil {
		fmt.Fprintf(out, "corral-bench: build: %v\n", err)
		return 1
	}
	b := &bench{bins: bins, runs: runs, log: log, leaderProfile: leaderProfile}
	fmt.Fprintf(out, "corral-bench: %d CPUs, GOMAXPROCS %d, load average %s; other jobs on the machine skew every figure\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), loadAvg())
	failed := 0
	for _, s := range sections {
		if !want[s.name] {
			continue
		}
		if ctx.Err() != nil {
			fmt.Fprintf(out, "== %s: skipped: %v\n\n", s.name, ctx.Err())
			failed++
			continue
		}
		start := time.Now()
		sctx, cancel := context.WithTimeout(ctx, s.timeout)
		figs, err := s.run(sctx, b)
		cancel()
		fmt.Fprintf(out, "== %s (%s), %s, load average at end %s\n", s.name, s.what, time.Since(start).Round(time.Second), loadAvg())
		printFigures(out, figs)
		if err != nil {
			failed++
			fmt.Fprintf(out, "FAILED: %v\n", err)
		}
		fmt.Fprintln(out)
	}
	if failed > 0 {
		fmt.Fprintf(out, "corral-bench: %d section(s) failed\n", failed)
		return 1
	}
	return 0
}

func printFigures(w io.Writer, figs []figure) {
	if len(figs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  FIGURE\tVALUE\tMEASURED")
	for _, f := range figs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.Name, f.Value, f.Note)
	}
	tw.Flush()
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// withLab runs fn on a new lab and always closes it.
func withLab(ctx context.Context, fn func(lab *testenv.Lab) ([]figure, error)) (figs []figure, err error) {
	lab, err := testenv.Start(ctx, testenv.Options{})
	if err != nil {
		return nil, fmt.Errorf("start lab: %w", err)
	}
	defer func() {
		if cerr := lab.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close lab %s: %w", lab.ID, cerr)
		}
	}()
	return fn(lab)
}
