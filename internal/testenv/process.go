package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a child started by Host.StartProcess. It is killed when the
// lab closes, and by the kernel (SIGKILL) if the test process dies.
type Process struct {
	name    string
	lab     *Lab
	cmd     *exec.Cmd
	pid     int
	logPath string
	logFile *os.File
	exited  chan struct{}
	waitErr error
}

var processName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// StartProcess starts cmd (built by Host.Command) as a tracked child whose
// stdout and stderr go to Dir/<name>.log (appended, so a restarted daemon
// keeps its history). The process gets its own process group and SIGKILL
// when the test process dies.
func (h *Host) StartProcess(name string, cmd *exec.Cmd) (*Process, error) {
	if !processName.MatchString(name) {
		return nil, fmt.Errorf("start process %q: invalid name", name)
	}
	logPath := filepath.Join(h.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	fmt.Fprintf(f, "=== testenv %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &Process{name: h.Name + "/" + name, lab: h.lab, cmd: cmd, logPath: logPath, logFile: f, exited: make(chan struct{})}

	l := h.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, errClosed)
	}
	if err := spawn(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.pid = cmd.Process.Pid
	id, _ := readProcID(p.pid)
	id.PID = p.pid
	l.procs = append(l.procs, p)
	l.rec.Processes = append(l.rec.Processes, procRecord{Name: p.name, procID: id})
	saveErr := l.saveLocked()
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	if saveErr != nil {
		return p, fmt.Errorf("start %s: %w", name, saveErr)
	}
	return p, nil
}

// spawnReq asks the spawner thread to start a command.
type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var spawnCh = make(chan spawnReq)

// The kernel sends Pdeathsig when the *thread* that forked the child exits,
// and Go ends the thread of a goroutine that exits while locked to it. All
// tracked children are therefore forked from one goroutine locked to a
// thread for the life of the process.
func init() {
	go func() {
		runtime.LockOSThread()
		for r := range spawnCh {
			r.done <- r.cmd.Start()
		}
	}()
}

func spawn(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd, done}
	return <-done
}

// Name returns "<host>/<name>".
func (p *Process) Name() string { return p.name }

// PID returns the process ID.
func (p *Process) PID() int { return p.pid }

// LogPath returns the file receiving the process' output.
func (p *Process) LogPath() string { return p.logPath }

// Exited is closed once the process has exited and been reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err returns the result of Wait once Exited is closed, nil before.
func (p *Process) Err() error {
	select {
	case <-p.exited:
		return p.waitErr
	default:
		return nil
	}
}

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process group (children included) and to the
// process itself, never to the test process.
func (p *Process) signal(sig syscall.Signal) {
	if !p.Running() || !safeToKill(p.pid) {
		return
	}
	if pgid, err := syscall.Getpgid(p.pid); err == nil && pgid == p.pid && pgid != syscall.Getpgrp() {
		_ = syscall.Kill(-pgid, sig)
	}
	_ = syscall.Kill(p.pid, sig)
}

// signalPID sends sig to the process only, not its group.
func (p *Process) signalPID(sig syscall.Signal) {
	if p.Running() && safeToKill(p.pid) {
		_ = syscall.Kill(p.pid, sig)
	}
}

// Kill sends SIGKILL (to its process group too) and waits for the exit.
func (p *Process) Kill() error {
	p.signal(syscall.SIGKILL)
	return p.wait(10 * time.Second)
}

// Stop sends SIGTERM, waits the lab's StopGrace, then SIGKILL.
func (p *Process) Stop() error {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(p.lab.StopGrace):
	}
	return p.Kill()
}

func (p *Process) wait(d time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s (pid %d) still running %v after SIGKILL", p.name, p.pid, d)
	}
}

// exitError describes an unexpected exit with the tail of the log.
func (p *Process) exitError(what string) error {
	return fmt.Errorf("%s: %s exited (%v); log %s:\n%s", what, p.name, p.Err(), p.logPath, logTail(p.logPath, 25))
}

// readProcID returns pid with its start time, from /proc.
func readProcID(pid int) (procID, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procID{}, err
	}
	// Fields after the command name, which may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procID{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return procID{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procID{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return procID{PID: pid, Start: start}, nil
}

// procState returns the one-letter state of pid ("" if gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// alive reports whether the process identified by id still runs (a zombie
// counts as gone: its parent may never reap it).
func alive(id procID) bool {
	if id.PID <= 0 {
		return false
	}
	cur, err := readProcID(id.PID)
	if err != nil || (id.Start != 0 && cur.Start != id.Start) {
		return false
	}
	st := procState(id.PID)
	return st != "" && st != "Z" && st != "X"
}

var ancestors = func() map[int]bool {
	m := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !m[pid]; {
		m[pid] = true
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			break
		}
		pid, _ = strconv.Atoi(f[1])
	}
	return m
}()

// safeToKill refuses PID 1, the test process and its ancestors: a stray
// record or a thread of ours left in a lab namespace must never make the
// harness kill its own caller.
func safeToKill(pid int) bool {
	return pid > 1 && pid != os.Getpid() && !ancestors[pid]
}

func signalAll(ids []procID, sig syscall.Signal) {
	for _, id := range ids {
		if safeToKill(id.PID) && alive(id) {
			_ = syscall.Kill(id.PID, sig)
		}
	}
}

// waitGone waits up to d for ids to die and returns those still alive.
func waitGone(ids []procID, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		var left []int
		for _, id := range ids {
			if safeToKill(id.PID) && alive(id) {
				left = append(left, id.PID)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qemuPIDs reads the QEMU pid files of libvirt host directories, keeping
// only live processes whose command is QEMU (pid files outlive them).
func qemuPIDs(libvirtDirs []string) []procID {
	var out []procID
	for _, d := range libvirtDirs {
		files, _ := filepath.Glob(filepath.Join(d, "run/libvirt/qemu/*.pid"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				continue
			}
			comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if err != nil || !strings.HasPrefix(string(comm), "qemu") {
				continue
			}
			if id, err := readProcID(pid); err == nil {
				out = append(out, id)
			}
		}
	}
	return out
}

// logTail returns the last n lines of a file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	return tail(string(b), n)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
