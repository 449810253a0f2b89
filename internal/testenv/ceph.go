package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultCephStartTimeout bounds StartCeph without a context deadline.
const DefaultCephStartTimeout = 2 * time.Minute

// Ceph is a throwaway cluster on its own lab host "ceph": one mon (msgr2
// only, port 3300), memstore OSDs, cephx on, no mgr, pool "rbd" ready.
type Ceph struct {
	Host         *Host
	Conf         string // ceph.conf path (admin: [client] keyring)
	MonAddr      string // "IP:3300"
	AdminKeyring string
	FSID         string

	Mon  *Process
	OSDs []*Process
}

// StartCeph starts the cluster with osds OSDs of l.CephOSDBytes each and
// returns once pool "rbd" is created and initialised.
func (l *Lab) StartCeph(ctx context.Context, osds int) (*Ceph, error) {
	if osds < 1 {
		return nil, fmt.Errorf("start ceph: need at least one OSD, got %d", osds)
	}
	for _, bin := range []string{"ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rbd"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("start ceph: %s not found: run scripts/install-deps.sh", bin)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCephStartTimeout)
		defer cancel()
	}
	h, err := l.AddHost("ceph")
	if err != nil {
		return nil, fmt.Errorf("start ceph: %w", err)
	}
	c := &Ceph{
		Host:         h,
		Conf:         filepath.Join(h.Dir, "ceph.conf"),
		MonAddr:      net.JoinHostPort(h.IP.String(), "3300"),
		AdminKeyring: filepath.Join(h.Dir, "client.admin.keyring"),
		FSID:         newUUID(),
	}
	if err := c.bootstrap(ctx, l, osds); err != nil {
		return nil, fmt.Errorf("start ceph: %w", err)
	}
	return c, nil
}

func (c *Ceph) bootstrap(ctx context.Context, l *Lab, osds int) error {
	h, D := c.Host, c.Host.Dir
	for _, sub := range []string{"run", "log"} {
		if err := os.MkdirAll(filepath.Join(D, sub), 0o755); err != nil {
			return err
		}
	}
	if asok := filepath.Join(D, "run", "osd.99.asok"); len(asok) > 100 {
		return fmt.Errorf("admin socket path %s too long: use a shorter lab Dir", asok)
	}
	// In ceph.conf ';' starts a comment: one key per line, no notes in values.
	conf := fmt.Sprintf(`[global]
fsid = %[1]s
mon host = %[2]s
public addr = %[3]s
cluster addr = %[3]s
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = %[5]d
ms bind ipv6 = false
paxos propose interval = 0.1
paxos min wait = 0.01
mon mgr mkfs grace = 100000
pid file = %[4]s/run/$name.pid
run dir = %[4]s/run
admin socket = %[4]s/run/$name.asok
log file = %[4]s/log/$name.log
mon data = %[4]s/$name
osd data = %[4]s/$name
[client]
keyring = %[4]s/$name.keyring
admin socket =
`, c.FSID, c.MonAddr, h.IP, D, l.CephOSDBytes)
	if err := os.WriteFile(c.Conf, []byte(conf), 0o644); err != nil {
		return err
	}
	monKeyring := filepath.Join(D, "mon.keyring")
	monmap := filepath.Join(D, "monmap")
	steps := [][]string{
		{"ceph-authtool", "--create-keyring", monKeyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"},
		{"ceph-authtool", "--create-keyring", c.AdminKeyring, "--gen-key", "-n", "client.admin",
			"--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"},
		{"ceph-authtool", monKeyring, "--import-keyring", c.AdminKeyring},
		{"monmaptool", "--create", "--add", "a", c.MonAddr, "--fsid", c.FSID, monmap},
		{"ceph-mon", "-c", c.Conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", monKeyring},
	}
	for _, s := range steps {
		if _, err := h.Run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	mon, err := h.StartProcess("ceph-mon.a", h.Command(context.Background(), "ceph-mon", "-c", c.Conf, "-i", "a", "-f"))
	if err != nil {
		return err
	}
	c.Mon = mon
	if err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if !mon.Running() {
			return false, mon.exitError("ceph mon")
		}
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := h.DialContext(dctx, "tcp", c.MonAddr)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}); err != nil {
		return fmt.Errorf("wait for mon: %w", err)
	}

	for id := 0; id < osds; id++ {
		p, err := c.startOSD(ctx, id)
		if err != nil {
			return fmt.Errorf("osd.%d: %w", id, err)
		}
		c.OSDs = append(c.OSDs, p)
	}
	if err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		for _, p := range c.OSDs {
			if !p.Running() {
				return false, p.exitError("ceph osd")
			}
		}
		out, err := c.Run(ctx, "osd", "stat", "--format", "json")
		if err != nil {
			return false, nil
		}
		var st struct {
			Up int `json:"num_up_osds"`
		}
		if json.Unmarshal([]byte(out), &st) != nil {
			return false, nil
		}
		return st.Up == osds, nil
	}); err != nil {
		return fmt.Errorf("wait for %d OSDs up: %w", osds, err)
	}
	if _, err := c.Run(ctx, "osd", "pool", "create", "rbd", "8"); err != nil {
		return err
	}
	if _, err := c.RBD(ctx, "pool", "init", "rbd"); err != nil {
		return err
	}
	return nil
}

func (c *Ceph) startOSD(ctx context.Context, id int) (*Process, error) {
	h := c.Host
	sid := strconv.Itoa(id)
	out, err := h.Run(ctx, "ceph-authtool", "--gen-print-key")
	if err != nil {
		return nil, err
	}
	secret := strings.TrimSpace(out)
	uuid := newUUID()
	rctx, cancel := withDefault(ctx)
	defer cancel()
	cmd := h.Command(rctx, "ceph", "-c", c.Conf, "osd", "new", uuid, sid, "-i", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`{"cephx_secret": %q}`, secret))
	if _, err := output(cmd); err != nil {
		return nil, err
	}
	dataDir := filepath.Join(h.Dir, "osd."+sid)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	if _, err := h.Run(ctx, "ceph-authtool", "--create-keyring", filepath.Join(dataDir, "keyring"), "-n", "osd."+sid, "--add-key", secret); err != nil {
		return nil, err
	}
	if _, err := h.Run(ctx, "ceph-osd", "-c", c.Conf, "-i", sid, "--mkfs", "--osd-uuid", uuid); err != nil {
		return nil, err
	}
	return h.StartProcess("ceph-osd."+sid, h.Command(context.Background(), "ceph-osd", "-c", c.Conf, "-i", sid, "-f"))
}

// Run runs `ceph -c Conf args...` as client.admin inside the ceph host.
func (c *Ceph) Run(ctx context.Context, args ...string) (string, error) {
	return c.Host.Run(ctx, "ceph", append([]string{"-c", c.Conf, "--connect-timeout", "30"}, args...)...)
}

// RBD runs `rbd -c Conf args...` as client.admin inside the ceph host.
func (c *Ceph) RBD(ctx context.Context, args ...string) (string, error) {
	return c.Host.Run(ctx, "rbd", append([]string{"-c", c.Conf}, args...)...)
}

// ClientCaps are the caps CreateClient gives: RBD use plus host-wide
// blocklisting, which corral's fencing needs (one mon cap string: a second
// one would replace the first).
var ClientCaps = []string{"mon", `profile rbd, allow command "osd blocklist"`, "osd", "profile rbd"}

// CreateClient creates (or fetches) client.<name> with ClientCaps and
// returns its base64 key.
func (c *Ceph) CreateClient(ctx context.Context, name string) (string, error) {
	out, err := c.Run(ctx, append([]string{"auth", "get-or-create-key", "client." + name}, ClientCaps...)...)
	if err != nil {
		return "", fmt.Errorf("create ceph client %s: %w", name, err)
	}
	key := strings.TrimSpace(out)
	if key == "" {
		return "", fmt.Errorf("create ceph client %s: empty key", name)
	}
	return key, nil
}

// ClientKeyringPath is where WriteClientConf puts the keyring of a conf.
func ClientKeyringPath(confPath, name string) string {
	return filepath.Join(filepath.Dir(confPath), "ceph.client."+name+".keyring")
}

// WriteClientConf writes a ceph.conf at path for client.<name> (mon host,
// keyring) and its keyring at ClientKeyringPath(path, name). Use it with
// `--id name` (CLI) or rados.NewConnWithUser(name) + ReadConfigFile(path).
func (c *Ceph) WriteClientConf(path, name, key string) error {
	keyring := ClientKeyringPath(path, name)
	if err := os.WriteFile(keyring, []byte(fmt.Sprintf("[client.%s]\n\tkey = %s\n", name, key)), 0o600); err != nil {
		return fmt.Errorf("write keyring for client.%s: %w", name, err)
	}
	conf := fmt.Sprintf(`[global]
fsid = %s
mon host = %s
ms bind ipv6 = false
[client]
keyring = %s
admin socket =
log file =
`, c.FSID, c.MonAddr, keyring)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write ceph.conf for client.%s: %w", name, err)
	}
	return nil
}
