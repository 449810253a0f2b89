package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// Binaries are the corral programs built for a lab.
type Binaries struct {
	Corrald string
	Corral  string
}

var (
	buildOnce sync.Once
	buildBins Binaries
	buildErr  error
)

// moduleRoot finds the directory holding go.mod, from this source file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles corrald and corral once per process (the Go build cache
// makes later builds cheap) with the project's build tags, into
// LabsRoot/bin-PID-START: the next lab's sweep removes it once this process
// is gone (RemoveBuild does it at once).
func Build() (Binaries, error) {
	buildOnce.Do(func() {
		dir, err := buildDir()
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			buildErr = fmt.Errorf("build corral: %w", err)
			return
		}
		buildBins = Binaries{Corrald: filepath.Join(dir, "corrald"), Corral: filepath.Join(dir, "corral")}
		for bin, pkg := range map[string]string{buildBins.Corrald: "./cmd/corrald", buildBins.Corral: "./cmd/corral"} {
			cmd := exec.Command("go", "build", "-tags=pacific", "-o", bin, pkg)
			cmd.Dir = moduleRoot()
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %w: %s", pkg, err, out)
				return
			}
		}
	})
	return buildBins, buildErr
}

// RemoveBuild deletes the binaries Build made for this process; call it
// when no lab uses them any more.
func RemoveBuild() error {
	dir, err := buildDir()
	if err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

var buildDirName = regexp.MustCompile(`^bin-(\d+)-(\d+)$`)

func buildDir() (string, error) {
	self, err := readProcID(os.Getpid())
	if err != nil {
		return "", err
	}
	return filepath.Join(LabsRoot, fmt.Sprintf("bin-%d-%d", self.PID, self.Start)), nil
}

// sweepBuilds removes the binaries of processes that are gone.
func sweepBuilds() {
	entries, _ := os.ReadDir(LabsRoot)
	for _, e := range entries {
		m := buildDirName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		start, _ := strconv.ParseUint(m[2], 10, 64)
		if !alive(procID{PID: pid, Start: start}) {
			os.RemoveAll(filepath.Join(LabsRoot, e.Name()))
		}
	}
}

// CorraldOptions configures a corrald on a lab host.
type CorraldOptions struct {
	Libvirt *Libvirtd // nil: --no-agent (witness-only daemon)
	OVS     *OVS
	Args    []string // extra flags
}

// Corrald is a corral daemon running on a lab host.
type Corrald struct {
	Host    *Host
	Bin     Binaries
	Socket  string
	APIAddr string
	DataDir string
	opts    CorraldOptions

	mu   sync.Mutex
	proc *Process
}

// StartCorrald starts corrald on h and waits until its socket answers.
func (h *Host) StartCorrald(ctx context.Context, bins Binaries, opts CorraldOptions) (*Corrald, error) {
	c := &Corrald{Host: h, Bin: bins, Socket: filepath.Join(h.Dir, "corrald.sock"),
		APIAddr: net.JoinHostPort(h.IP.String(), "7443"), DataDir: filepath.Join(h.Dir, "corral"), opts: opts}
	return c, c.Start(ctx)
}

// Start (re)starts the daemon on its data directory.
func (c *Corrald) Start(ctx context.Context) error {
	args := []string{"--name", c.Host.Name, "--data-dir", c.DataDir, "--listen", c.APIAddr, "--socket", c.Socket,
		"--migration-uri", "qemu+tcp://%s/system", "--metrics", net.JoinHostPort(c.Host.IP.String(), "9443"),
		// One console directory for the lab, as production uses one path
		// on every node: a migrated guest keeps writing where it started.
		"--console-dir", filepath.Join(c.Host.Lab().Dir, "consoles")}
	if c.opts.Libvirt != nil {
		args = append(args, "--libvirt-socket", c.opts.Libvirt.Socket,
			// The node's certificate for libvirt/QEMU TLS, in the private
			// /etc/pki of its libvirtd.
			"--libvirt-pki-dir", filepath.Join(c.opts.Libvirt.HostDir, "etc/pki"))
	} else {
		args = append(args, "--no-agent")
	}
	if c.opts.OVS != nil {
		args = append(args, "--ovsdb-socket", c.opts.OVS.DBSock)
	}
	if os.Getenv("CORRAL_TEST_DEBUG") != "" {
		args = append(args, "-v") // debug logs, for chasing a flaky test
	}
	args = append(args, c.opts.Args...)
	cmd := c.Host.Command(context.Background(), c.Bin.Corrald, args...)
	p, err := c.Host.StartProcess("corrald", cmd)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if conn, err := net.DialTimeout("unix", c.Socket, time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("corrald on %s exited: %s", c.Host.Name, logTail(p.LogPath(), 30))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("corrald on %s: socket not ready: %s", c.Host.Name, logTail(p.LogPath(), 30))
		}
	}
}

// Process returns the running daemon process.
func (c *Corrald) Process() *Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc
}

// Kill SIGKILLs the daemon (its guests keep running).
func (c *Corrald) Kill() error { return c.Process().Kill() }

// Stop stops the daemon gracefully.
func (c *Corrald) Stop() error { return c.Process().Stop() }

// CLI runs `corral --socket <local socket> args...` inside the host: the
// local admin path, as root on that node.
func (c *Corrald) CLI(ctx context.Context, args ...string) (string, error) {
	return c.Host.Run(ctx, c.Bin.Corral, append([]string{"--socket", c.Socket}, args...)...)
}
