package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of /proc CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU is the user+system CPU time process pid used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces): state is 3,
	// utime 14, stime 15 (1-based, man proc).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// selfCPU is this process's user+system CPU time (the benchmark clients).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns the busy and total CPU time of the whole machine
// (/proc/stat), summed over its CPUs.
func machineCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("parse /proc/stat")
	}
	var idle int64
	for k, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		if k < 8 { // user nice system idle iowait irq softirq steal (guest is in user)
			total += time.Duration(n) * clockTick
			if k == 3 || k == 4 {
				idle += n
			}
		}
	}
	return total - time.Duration(idle)*clockTick, total, nil
}

// cpuMeter measures CPU used between start and stop by named processes,
// this process and the whole machine.
type cpuMeter struct {
	pids              map[string]int
	procs             map[string]time.Duration
	self, busy, total time.Duration
}

func startCPU(pids map[string]int) *cpuMeter {
	m := &cpuMeter{pids: pids, procs: map[string]time.Duration{}}
	for name, pid := range pids {
		m.procs[name], _ = procCPU(pid)
	}
	m.self = selfCPU()
	m.busy, m.total, _ = machineCPU()
	return m
}

// stop returns the CPU each named process used, this process's, and the
// machine's busy fraction since start.
func (m *cpuMeter) stop() (procs map[string]time.Duration, self time.Duration, busyFrac float64) {
	procs = map[string]time.Duration{}
	for name, pid := range m.pids {
		now, err := procCPU(pid)
		if err == nil {
			procs[name] = now - m.procs[name]
		}
	}
	busy, total, err := machineCPU()
	if err == nil && total > m.total {
		busyFrac = float64(busy-m.busy) / float64(total-m.total)
	}
	return procs, selfCPU() - m.self, busyFrac
}
