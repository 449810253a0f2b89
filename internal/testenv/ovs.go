package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// DefaultOVSStartTimeout bounds StartOVS without a context deadline.
const DefaultOVSStartTimeout = time.Minute

// OVS is an ovsdb-server and ovs-vswitchd pair running in a host's
// namespace on its own database. Bridges must use datapath_type=netdev (the
// kernel has no openvswitch module).
type OVS struct {
	DBSock string // unix socket path of the database (JSON-RPC, libovsdb)
	Dir    string // run, log and database directory
	// Vsctl runs ovs-vsctl against this database inside the host.
	Vsctl func(ctx context.Context, args ...string) (string, error)

	DBServer *Process
	VSwitchd *Process
}

// StartOVS starts Open vSwitch in the host and returns once ovs-vswitchd
// has applied the database's configuration.
func (h *Host) StartOVS(ctx context.Context) (*OVS, error) {
	for _, bin := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("start ovs on %s: %s not found: run scripts/install-deps.sh", h.Name, bin)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultOVSStartTimeout)
		defer cancel()
	}
	dir := filepath.Join(h.Dir, "ovs")
	o := &OVS{Dir: dir, DBSock: filepath.Join(dir, "db.sock")}
	if len(o.DBSock) > 90 {
		return nil, fmt.Errorf("start ovs on %s: socket path %s too long: use a shorter lab Dir", h.Name, o.DBSock)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start ovs on %s: %w", h.Name, err)
	}
	// Both daemons and ovs-vsctl would otherwise use /var/run/openvswitch.
	env := append(os.Environ(), "OVS_RUNDIR="+dir, "OVS_LOGDIR="+dir, "OVS_DBDIR="+dir, "OVS_SYSCONFDIR="+dir)
	command := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		cmd := h.Command(ctx, name, args...)
		cmd.Env = env
		return cmd
	}
	o.Vsctl = func(ctx context.Context, args ...string) (string, error) {
		ctx, cancel := withDefault(ctx)
		defer cancel()
		out, err := output(command(ctx, "ovs-vsctl", append([]string{"--db=unix:" + o.DBSock, "--timeout=30"}, args...)...))
		if err != nil {
			return out, fmt.Errorf("on %s: %w", h.Name, err)
		}
		return out, nil
	}
	schema := "/usr/share/openvswitch/vswitch.ovsschema"
	if _, err := output(command(ctx, "ovsdb-tool", "create", filepath.Join(dir, "conf.db"), schema)); err != nil {
		return nil, fmt.Errorf("start ovs on %s: %w", h.Name, err)
	}
	db, err := h.StartProcess("ovsdb-server", command(context.Background(), "ovsdb-server",
		"--remote=punix:"+o.DBSock, "--pidfile="+filepath.Join(dir, "ovsdb-server.pid"),
		"--unixctl="+filepath.Join(dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(dir, "ovsdb-server.log"), filepath.Join(dir, "conf.db")))
	if err != nil {
		return nil, fmt.Errorf("start ovs on %s: %w", h.Name, err)
	}
	o.DBServer = db
	if err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if !db.Running() {
			return false, db.exitError("ovsdb-server")
		}
		_, err := os.Stat(o.DBSock)
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("start ovs on %s: wait for db socket: %w", h.Name, err)
	}
	if _, err := o.Vsctl(ctx, "--no-wait", "init"); err != nil {
		return nil, fmt.Errorf("start ovs on %s: %w", h.Name, err)
	}
	vs, err := h.StartProcess("ovs-vswitchd", command(context.Background(), "ovs-vswitchd",
		"unix:"+o.DBSock, "--pidfile="+filepath.Join(dir, "ovs-vswitchd.pid"),
		"--unixctl="+filepath.Join(dir, "ovs-vswitchd.ctl"),
		"--log-file="+filepath.Join(dir, "ovs-vswitchd.log")))
	if err != nil {
		return nil, fmt.Errorf("start ovs on %s: %w", h.Name, err)
	}
	o.VSwitchd = vs
	// Without --no-wait, ovs-vsctl waits until ovs-vswitchd has applied the
	// change: proof that the switch daemon is up and reading the database.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-vs.Exited():
			cancel()
		case <-wctx.Done():
		}
	}()
	if _, err := o.Vsctl(wctx, "set", "Open_vSwitch", ".", "external_ids:corral-lab="+h.lab.ID); err != nil {
		if !vs.Running() {
			return nil, fmt.Errorf("start ovs on %s: %w", h.Name, vs.exitError("ovs-vswitchd"))
		}
		return nil, fmt.Errorf("start ovs on %s: wait for ovs-vswitchd: %w; log:\n%s", h.Name, err, logTail(vs.logPath, 20))
	}
	return o, nil
}
