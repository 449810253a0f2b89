// Package rbd is the shared storage backend: volumes are RBD images in one
// Ceph pool, reached with librados/librbd through go-ceph (build with
// -tags pacific on Debian 12). Every node sees the same images, so a VM can
// be migrated or restarted elsewhere once its old node is fenced; the
// fencing helpers (Blocklist, WaitForLatestOSDMap, Watchers) live here too.
//
// All configuration comes from Config (no ceph.conf, no keyring file).
// Timeouts are set on the librados client itself so that an unreachable or
// partitioned cluster fails with storage.ErrUnreachable instead of
// blocking an agent forever.
package rbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/minet/corral/storage"
)

// DefaultTimeout bounds connecting and each monitor or OSD operation when
// Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Features of every image corral creates: layering for linked clones,
// exclusive-lock so two writers cannot interleave, object-map and
// fast-diff for quick copies and sizes, deep-flatten to detach clones.
const Features = librbd.FeatureLayering | librbd.FeatureExclusiveLock |
	librbd.FeatureObjectMap | librbd.FeatureFastDiff | librbd.FeatureDeepFlatten

// copySnapPrefix names the temporary snapshots Copy reads from; Get and
// List do not show them.
const copySnapPrefix = "corral-copy-"

// order 22 = 4 MiB objects, Ceph's default; chunk matches it so each
// read or write touches one object.
const (
	order = 22
	chunk = 1 << order
	// copyWorkers is how many chunks Copy moves at once: enough to hide
	// OSD round trips without flooding a small cluster.
	copyWorkers = 8
)

// Config says how to reach one pool.
type Config struct {
	// Monitors are "IP:port" (3300 for msgr2, 6789 for v1) or "IP".
	Monitors []string
	// User is the cephx name without "client." (e.g. "corral").
	User string
	// Key is the base64 cephx secret.
	Key  string
	Pool string
	// Timeout bounds connecting and every monitor/OSD operation
	// (DefaultTimeout if zero).
	Timeout time.Duration
	// Do runs fn on the thread that must make the connection. librados
	// starts its threads at Connect and they inherit that thread's
	// network namespace: tests pass a function running fn inside a
	// simulated host. Nil calls fn directly.
	Do func(fn func() error) error
}

// Pool is a storage.Backend on one RBD pool, plus fencing helpers.
type Pool struct {
	cfg   Config
	conn  *rados.Conn
	ioctx *rados.IOContext
	// self is this client's global id, to leave our own watch out of the
	// watcher lists.
	self int64
}

var _ storage.Backend = (*Pool)(nil)

// Open connects to the cluster and opens the pool. A wrong key gives
// storage.ErrAuth, no answering monitor within Timeout storage.ErrUnreachable.
func Open(ctx context.Context, cfg Config) (*Pool, error) {
	if len(cfg.Monitors) == 0 || cfg.User == "" || cfg.Key == "" || cfg.Pool == "" {
		return nil, errors.New("rbd: monitors, user, key and pool are all required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Do == nil {
		cfg.Do = func(fn func() error) error { return fn() }
	}
	monHost, err := monHost(cfg.Monitors)
	if err != nil {
		return nil, err
	}
	secs := strconv.FormatFloat(cfg.Timeout.Seconds(), 'f', -1, 64)
	opts := [][2]string{
		{"mon_host", monHost},
		{"key", cfg.Key},
		// Do not look for keyrings or ceph.conf on this machine.
		{"keyring", ""},
		{"client_mount_timeout", secs},
		{"rados_mon_op_timeout", secs},
		{"rados_osd_op_timeout", secs},
		// Keep librados' log off the agent's stderr.
		{"log_to_stderr", "false"},
		{"err_to_stderr", "false"},
		{"admin_socket", ""},
	}

	type result struct {
		conn *rados.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var conn *rados.Conn
		err := cfg.Do(func() error {
			c, err := rados.NewConnWithUser(cfg.User)
			if err != nil {
				return fmt.Errorf("rbd: new client %s: %w", cfg.User, err)
			}
			for _, o := range opts {
				if err := c.SetConfigOption(o[0], o[1]); err != nil {
					c.Shutdown()
					return fmt.Errorf("rbd: set %s: %w", o[0], err)
				}
			}
			if err := c.Connect(); err != nil {
				c.Shutdown()
				return connectError(cfg, err)
			}
			conn = c
			return nil
		})
		done <- result{conn, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// Connect is a blocking C call; let it finish in the background
		// (it gives up after Timeout) and release what it made.
		go func() {
			if r := <-done; r.conn != nil {
				r.conn.Shutdown()
			}
		}()
		return nil, fmt.Errorf("rbd: connect to %s: %w", monHost, ctx.Err())
	}
	if r.err != nil {
		return nil, r.err
	}
	p := &Pool{cfg: cfg, conn: r.conn, self: int64(r.conn.GetInstanceID())}
	p.ioctx, err = r.conn.OpenIOContext(cfg.Pool)
	if err != nil {
		r.conn.Shutdown()
		return nil, fmt.Errorf("rbd: open pool %s: %w", cfg.Pool, mapErr(err))
	}
	return p, nil
}

// monHost renders mon_host, pinning the messenger version from the port:
// a bare "IP:3300" would otherwise also be tried as v1.
func monHost(mons []string) (string, error) {
	parts := make([]string, 0, len(mons))
	for _, m := range mons {
		if strings.HasPrefix(m, "v1:") || strings.HasPrefix(m, "v2:") || strings.HasPrefix(m, "[") {
			parts = append(parts, m)
			continue
		}
		_, port, err := net.SplitHostPort(m)
		switch {
		case err != nil:
			if net.ParseIP(m) == nil {
				return "", fmt.Errorf("rbd: monitor %q: want IP or IP:port", m)
			}
			parts = append(parts, m)
		case port == "3300":
			parts = append(parts, "[v2:"+m+"]")
		case port == "6789":
			parts = append(parts, "[v1:"+m+"]")
		default:
			parts = append(parts, m)
		}
	}
	return strings.Join(parts, ","), nil
}

func connectError(cfg Config, err error) error {
	where := strings.Join(cfg.Monitors, ",")
	switch errno(err) {
	case syscall.EACCES, syscall.EPERM:
		return fmt.Errorf("rbd: connect to %s as client.%s: %w: check the user and its key (%v)", where, cfg.User, storage.ErrAuth, err)
	case syscall.ETIMEDOUT, syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENOTCONN:
		return fmt.Errorf("rbd: connect to %s: %w: no monitor answered within %s (%v)", where, storage.ErrUnreachable, cfg.Timeout, err)
	}
	return fmt.Errorf("rbd: connect to %s: %w", where, mapErr(err))
}

// errno extracts the positive errno from a go-ceph error, or 0.
func errno(err error) syscall.Errno {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		c := ce.ErrorCode()
		if c < 0 {
			c = -c
		}
		return syscall.Errno(c)
	}
	return 0
}

// mapErr wraps go-ceph errors with the storage sentinel they mean.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var s error
	switch errno(err) {
	case syscall.ENOENT:
		s = storage.ErrNotFound
	case syscall.EEXIST:
		s = storage.ErrExists
	case syscall.EBUSY, syscall.ENOTEMPTY:
		s = storage.ErrInUse
	case syscall.ENOSPC, syscall.EDQUOT:
		s = storage.ErrNoSpace
	case syscall.EACCES, syscall.EPERM:
		s = storage.ErrAuth
	case syscall.ETIMEDOUT, syscall.ENOTCONN:
		s = storage.ErrUnreachable
	case syscall.ESHUTDOWN:
		s = storage.ErrFenced
	default:
		return err
	}
	return fmt.Errorf("%w: %v", s, err)
}

// Close disconnects from the cluster.
func (p *Pool) Close() error {
	if p.ioctx != nil {
		p.ioctx.Destroy()
		p.ioctx = nil
	}
	if p.conn != nil {
		p.conn.Shutdown()
		p.conn = nil
	}
	return nil
}

// Shared is true: every node sees the pool.
func (p *Pool) Shared() bool { return true }

// Disk tells the hypervisor how to reach the image; the key goes to
// libvirt separately, as a secret.
func (p *Pool) Disk(name string) storage.Disk {
	return storage.Disk{Format: storage.FormatRaw, RBD: &storage.RBDSource{
		Pool:     p.cfg.Pool,
		Image:    name,
		Monitors: append([]string(nil), p.cfg.Monitors...),
		User:     p.cfg.User,
	}}
}

func imageOptions() (*librbd.ImageOptions, error) {
	o := librbd.NewRbdImageOptions()
	if err := o.SetUint64(librbd.ImageOptionFormat, 2); err != nil {
		o.Destroy()
		return nil, err
	}
	if err := o.SetUint64(librbd.ImageOptionFeatures, Features); err != nil {
		o.Destroy()
		return nil, err
	}
	if err := o.SetUint64(librbd.ImageOptionOrder, order); err != nil {
		o.Destroy()
		return nil, err
	}
	return o, nil
}

// Create makes an empty, thin image.
func (p *Pool) Create(ctx context.Context, name string, size uint64) (storage.Volume, error) {
	if err := p.create(ctx, name, size); err != nil {
		return storage.Volume{}, err
	}
	return p.Get(ctx, name)
}

func (p *Pool) create(ctx context.Context, name string, size uint64) error {
	if err := storage.ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	o, err := imageOptions()
	if err != nil {
		return fmt.Errorf("create image %s: %w", name, err)
	}
	defer o.Destroy()
	if err := librbd.CreateImage(p.ioctx, name, size, o); err != nil {
		return fmt.Errorf("create image %s: %w", name, mapErr(err))
	}
	return nil
}

// open opens an image read-write, or read-only (no watch registered, no
// lock taken) for inspection.
func (p *Pool) open(ctx context.Context, name string, readOnly bool) (*librbd.Image, error) {
	if err := storage.ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var img *librbd.Image
	var err error
	if readOnly {
		img, err = librbd.OpenImageReadOnly(p.ioctx, name, librbd.NoSnapshot)
	} else {
		img, err = librbd.OpenImage(p.ioctx, name, librbd.NoSnapshot)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, mapErr(err))
	}
	return img, nil
}

// Get describes one image.
func (p *Pool) Get(ctx context.Context, name string) (storage.Volume, error) {
	img, err := p.open(ctx, name, true)
	if err != nil {
		return storage.Volume{}, err
	}
	defer img.Close()
	return describe(name, img)
}

func describe(name string, img *librbd.Image) (storage.Volume, error) {
	size, err := img.GetSize()
	if err != nil {
		return storage.Volume{}, fmt.Errorf("image %s: size: %w", name, mapErr(err))
	}
	v := storage.Volume{Name: name, SizeBytes: size, Format: storage.FormatRaw}
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return storage.Volume{}, fmt.Errorf("image %s: snapshots: %w", name, mapErr(err))
	}
	for _, s := range snaps {
		if !strings.HasPrefix(s.Name, copySnapPrefix) {
			v.Snapshots = append(v.Snapshots, s.Name)
		}
	}
	parent, err := img.GetParent()
	switch {
	case err == nil:
		v.Parent = parent.Image.ImageName + "@" + parent.Snap.SnapName
	case errno(err) != syscall.ENOENT:
		return storage.Volume{}, fmt.Errorf("image %s: parent: %w", name, mapErr(err))
	}
	return v, nil
}

// List describes every image of the pool, in librbd's order.
func (p *Pool) List(ctx context.Context) ([]storage.Volume, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names, err := librbd.GetImageNames(p.ioctx)
	if err != nil {
		return nil, fmt.Errorf("list pool %s: %w", p.cfg.Pool, mapErr(err))
	}
	out := make([]storage.Volume, 0, len(names))
	for _, n := range names {
		if storage.ValidateName(n) != nil {
			continue // not made by corral
		}
		v, err := p.Get(ctx, n)
		if errors.Is(err, storage.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// watchers lists the clients with an image open, leaving out this one.
func (p *Pool) watchers(img *librbd.Image) ([]string, error) {
	ws, err := img.ListWatchers()
	if err != nil {
		return nil, mapErr(err)
	}
	var out []string
	for _, w := range ws {
		if w.Id != p.self {
			out = append(out, w.Addr)
		}
	}
	return out, nil
}

// children lists the linked clones of one snapshot.
func (p *Pool) children(name, snap string) ([]string, error) {
	img, err := librbd.OpenImageReadOnly(p.ioctx, name, snap)
	if err != nil {
		return nil, mapErr(err)
	}
	defer img.Close()
	specs, err := img.ListChildrenAttributes()
	if err != nil {
		return nil, mapErr(err)
	}
	var out []string
	for _, s := range specs {
		n := s.ImageName
		if s.Trash {
			n += " (in trash)"
		}
		out = append(out, n)
	}
	return out, nil
}

// Delete removes an image and its snapshots. It refuses (ErrInUse) while
// linked clones depend on it or another client (a running VM) has it open.
func (p *Pool) Delete(ctx context.Context, name string) error {
	img, err := p.open(ctx, name, false)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			img.Close()
		}
	}()
	ws, err := p.watchers(img)
	if err != nil {
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	if len(ws) > 0 {
		return fmt.Errorf("delete image %s: %w: open by %s; stop the VM first", name, storage.ErrInUse, strings.Join(ws, ", "))
	}
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return fmt.Errorf("delete image %s: %w", name, mapErr(err))
	}
	for _, s := range snaps {
		kids, err := p.children(name, s.Name)
		if err != nil {
			return fmt.Errorf("delete image %s: snapshot %s: %w", name, s.Name, err)
		}
		if len(kids) > 0 {
			return fmt.Errorf("delete image %s: %w: linked clones %s depend on snapshot %s; delete or flatten them first",
				name, storage.ErrInUse, strings.Join(kids, ", "), s.Name)
		}
	}
	for _, s := range snaps {
		if err := removeSnap(img.GetSnapshot(s.Name)); err != nil {
			return fmt.Errorf("delete image %s: snapshot %s: %w", name, s.Name, err)
		}
	}
	img.Close()
	closed = true
	if err := librbd.RemoveImage(p.ioctx, name); err != nil {
		return fmt.Errorf("delete image %s: %w", name, mapErr(err))
	}
	return nil
}

func removeSnap(s *librbd.Snapshot) error {
	prot, err := s.IsProtected()
	if err != nil {
		return mapErr(err)
	}
	if prot {
		if err := s.Unprotect(); err != nil {
			return mapErr(err)
		}
	}
	return mapErr(s.Remove())
}

// Resize grows an image; shrinking would destroy guest data, so it is
// refused with ErrShrink.
func (p *Pool) Resize(ctx context.Context, name string, size uint64) error {
	img, err := p.open(ctx, name, false)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	defer img.Close()
	cur, err := img.GetSize()
	if err != nil {
		return fmt.Errorf("resize image %s: %w", name, mapErr(err))
	}
	switch {
	case size < cur:
		return fmt.Errorf("resize image %s to %d bytes: %w (now %d bytes)", name, size, storage.ErrShrink, cur)
	case size == cur:
		return nil
	}
	if err := img.Resize(size); err != nil {
		return fmt.Errorf("resize image %s: %w", name, mapErr(err))
	}
	return nil
}

func (p *Pool) openWithSnap(ctx context.Context, name, snap string) (*librbd.Image, bool, error) {
	if err := storage.ValidateName(snap); err != nil {
		return nil, false, err
	}
	img, err := p.open(ctx, name, false)
	if err != nil {
		return nil, false, err
	}
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		img.Close()
		return nil, false, fmt.Errorf("image %s: %w", name, mapErr(err))
	}
	for _, s := range snaps {
		if s.Name == snap {
			return img, true, nil
		}
	}
	return img, false, nil
}

// Snapshot takes a crash-consistent snapshot; it works while a VM runs.
func (p *Pool) Snapshot(ctx context.Context, name, snap string) error {
	img, found, err := p.openWithSnap(ctx, name, snap)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer img.Close()
	if found {
		return fmt.Errorf("snapshot %s@%s: %w", name, snap, storage.ErrExists)
	}
	if _, err := img.CreateSnapshot(snap); err != nil {
		return fmt.Errorf("snapshot %s@%s: %w", name, snap, mapErr(err))
	}
	return nil
}

// Rollback reverts an image to a snapshot. It refuses while another
// client has the image open: the guest would see its disk change under it.
func (p *Pool) Rollback(ctx context.Context, name, snap string) error {
	img, found, err := p.openWithSnap(ctx, name, snap)
	if err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	defer img.Close()
	if !found {
		return fmt.Errorf("rollback %s to %s: %w: no such snapshot", name, snap, storage.ErrNotFound)
	}
	ws, err := p.watchers(img)
	if err != nil {
		return fmt.Errorf("rollback %s: %w", name, err)
	}
	if len(ws) > 0 {
		return fmt.Errorf("rollback %s: %w: open by %s; stop the VM first", name, storage.ErrInUse, strings.Join(ws, ", "))
	}
	if err := img.GetSnapshot(snap).Rollback(); err != nil {
		return fmt.Errorf("rollback %s to %s: %w", name, snap, mapErr(err))
	}
	return nil
}

// DeleteSnapshot removes a snapshot unless linked clones depend on it.
func (p *Pool) DeleteSnapshot(ctx context.Context, name, snap string) error {
	img, found, err := p.openWithSnap(ctx, name, snap)
	if err != nil {
		return fmt.Errorf("delete snapshot: %w", err)
	}
	defer img.Close()
	if !found {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, storage.ErrNotFound)
	}
	kids, err := p.children(name, snap)
	if err != nil {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, err)
	}
	if len(kids) > 0 {
		return fmt.Errorf("delete snapshot %s@%s: %w: linked clones %s depend on it", name, snap, storage.ErrInUse, strings.Join(kids, ", "))
	}
	if err := removeSnap(img.GetSnapshot(snap)); err != nil {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, err)
	}
	return nil
}

// Clone protects src@snap (so it cannot be deleted under its clones) and
// makes dst a copy-on-write child of it.
func (p *Pool) Clone(ctx context.Context, src, snap, dst string) (storage.Volume, error) {
	if err := storage.ValidateName(dst); err != nil {
		return storage.Volume{}, err
	}
	img, found, err := p.openWithSnap(ctx, src, snap)
	if err != nil {
		return storage.Volume{}, fmt.Errorf("clone: %w", err)
	}
	defer img.Close()
	if !found {
		return storage.Volume{}, fmt.Errorf("clone %s@%s: %w: no such snapshot; take one first", src, snap, storage.ErrNotFound)
	}
	s := img.GetSnapshot(snap)
	prot, err := s.IsProtected()
	if err != nil {
		return storage.Volume{}, fmt.Errorf("clone %s@%s: %w", src, snap, mapErr(err))
	}
	if !prot {
		if err := s.Protect(); err != nil && errno(err) != syscall.EBUSY {
			return storage.Volume{}, fmt.Errorf("clone %s@%s: protect: %w", src, snap, mapErr(err))
		}
	}
	o, err := imageOptions()
	if err != nil {
		return storage.Volume{}, err
	}
	defer o.Destroy()
	if err := librbd.CloneImage(p.ioctx, src, snap, p.ioctx, dst, o); err != nil {
		return storage.Volume{}, fmt.Errorf("clone %s@%s to %s: %w", src, snap, dst, mapErr(err))
	}
	return p.Get(ctx, dst)
}

// Copy makes dst a full, independent copy of src's current content. It
// reads from a temporary snapshot, so the copy is one point in time even
// while a VM writes to src. Only allocated objects are read (fast-diff
// tells which), zero chunks are not written, and copyWorkers chunks move
// at once.
func (p *Pool) Copy(ctx context.Context, src, dst string, progress func(done, total uint64)) (storage.Volume, error) {
	if err := storage.ValidateName(dst); err != nil {
		return storage.Volume{}, err
	}
	if _, err := p.Get(ctx, dst); err == nil {
		return storage.Volume{}, fmt.Errorf("copy %s: image %s: %w", src, dst, storage.ErrExists)
	}
	snap := copySnapPrefix + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := p.Snapshot(ctx, src, snap); err != nil {
		return storage.Volume{}, fmt.Errorf("copy: %w", err)
	}
	defer func() {
		img, err := librbd.OpenImage(p.ioctx, src, librbd.NoSnapshot)
		if err == nil {
			removeSnap(img.GetSnapshot(snap))
			img.Close()
		}
	}()
	in, err := librbd.OpenImageReadOnly(p.ioctx, src, snap)
	if err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s: %w", src, mapErr(err))
	}
	defer in.Close()
	size, err := in.GetSize()
	if err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s: %w", src, mapErr(err))
	}
	var extents [][2]uint64
	err = in.DiffIterate(librbd.DiffIterateConfig{
		Length:        size,
		IncludeParent: librbd.IncludeParent,
		WholeObject:   librbd.EnableWholeObject,
		Callback: func(off, n uint64, exists int, _ interface{}) int {
			if exists != 0 {
				extents = append(extents, [2]uint64{off, n})
			}
			return 0
		},
	})
	if err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s: list allocated extents: %w", src, mapErr(err))
	}
	if err := p.create(ctx, dst, size); err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s: %w", src, err)
	}
	if err := p.fill(ctx, dst, func(out *librbd.Image) error {
		return copyExtents(ctx, in, out, extents, size, progress)
	}); err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return p.Get(ctx, dst)
}

// fill opens a just-created image, runs write on it, and removes the
// image if anything fails so no half-written volume remains.
func (p *Pool) fill(ctx context.Context, name string, write func(*librbd.Image) error) error {
	out, err := librbd.OpenImage(p.ioctx, name, librbd.NoSnapshot)
	if err == nil {
		err = write(out)
		if ferr := out.Flush(); err == nil && ferr != nil {
			err = mapErr(ferr)
		}
		if cerr := out.Close(); err == nil && cerr != nil {
			err = mapErr(cerr)
		}
	} else {
		err = mapErr(err)
	}
	if err != nil {
		if rerr := librbd.RemoveImage(p.ioctx, name); rerr != nil {
			return fmt.Errorf("%w (and removing the partial image failed: %v)", err, rerr)
		}
	}
	return err
}

func copyExtents(ctx context.Context, in, out *librbd.Image, extents [][2]uint64, size uint64, progress func(done, total uint64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan [2]uint64)
	results := make(chan error, copyWorkers)
	copied := make(chan uint64, copyWorkers)
	for range copyWorkers {
		go func() {
			buf := make([]byte, chunk)
			for j := range jobs {
				b := buf[:j[1]]
				if _, err := in.ReadAt(b, int64(j[0])); err != nil {
					results <- fmt.Errorf("read at %d: %w", j[0], mapErr(err))
					return
				}
				if !isZero(b) {
					if _, err := out.WriteAt(b, int64(j[0])); err != nil {
						results <- fmt.Errorf("write at %d: %w", j[0], mapErr(err))
						return
					}
				}
				copied <- j[1]
			}
			results <- nil
		}()
	}
	var allocated uint64
	for _, e := range extents {
		allocated += e[1]
	}
	// Holes count as done at once: progress is over the whole image.
	done := size - allocated
	if progress != nil {
		progress(done, size)
	}
	go func() {
		defer close(jobs)
		for _, e := range extents {
			for off := e[0]; off < e[0]+e[1]; off += chunk {
				n := min(chunk, e[0]+e[1]-off)
				select {
				case jobs <- [2]uint64{off, n}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	var firstErr error
	for running := copyWorkers; running > 0; {
		select {
		case n := <-copied:
			done += n
			if progress != nil {
				progress(done, size)
			}
		case err := <-results:
			running--
			if err != nil && firstErr == nil {
				firstErr = err
				cancel()
				// Unblock the other workers.
				go func() {
					for range jobs {
					}
				}()
			}
		}
	}
	// Drain progress sent just before the workers ended.
	for len(copied) > 0 {
		done += <-copied
		if progress != nil {
			progress(done, size)
		}
	}
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// Import writes exactly size raw bytes from r into a new image in 4 MiB
// chunks, skipping zero chunks (the image is thin). A short or long stream
// or any error removes the image.
func (p *Pool) Import(ctx context.Context, name string, r io.Reader, size uint64, progress func(done, total uint64)) (storage.Volume, error) {
	if err := p.create(ctx, name, size); err != nil {
		return storage.Volume{}, fmt.Errorf("import: %w", err)
	}
	if err := p.fill(ctx, name, func(out *librbd.Image) error {
		return importStream(ctx, out, r, size, progress)
	}); err != nil {
		return storage.Volume{}, fmt.Errorf("import %s: %w", name, err)
	}
	return p.Get(ctx, name)
}

// importStream reads the stream in one goroutine and writes its chunks
// with copyWorkers writers, so several writes are in flight as in Copy.
func importStream(ctx context.Context, out *librbd.Image, r io.Reader, size uint64, progress func(done, total uint64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type piece struct {
		off uint64
		buf []byte
	}
	free := make(chan []byte, copyWorkers+1)
	for range copyWorkers + 1 {
		free <- make([]byte, chunk)
	}
	jobs := make(chan piece)
	readErr := make(chan error, 1)
	// The reader touches only r and these channels, so it may outlive
	// this function if r.Read blocks after a failure.
	go func() {
		defer close(jobs)
		readErr <- func() error {
			for off := uint64(0); off < size; {
				var buf []byte
				select {
				case buf = <-free:
				case <-ctx.Done():
					return ctx.Err()
				}
				n := min(chunk, size-off)
				if _, err := io.ReadFull(r, buf[:n]); err != nil {
					if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
						return fmt.Errorf("stream ended before %d of %d bytes: %w", off+n, size, io.ErrUnexpectedEOF)
					}
					return fmt.Errorf("read stream at %d: %w", off, err)
				}
				select {
				case jobs <- piece{off: off, buf: buf[:n]}:
				case <-ctx.Done():
					return ctx.Err()
				}
				off += n
			}
			// A longer stream than announced means a wrong size: refuse
			// rather than silently cut the disk.
			var one [1]byte
			if n, _ := r.Read(one[:]); n > 0 {
				return fmt.Errorf("stream is longer than the announced %d bytes", size)
			}
			return nil
		}()
	}()

	written := make(chan uint64, copyWorkers)
	results := make(chan error, copyWorkers)
	for range copyWorkers {
		go func() {
			for {
				var pc piece
				var ok bool
				select {
				case pc, ok = <-jobs:
				case <-ctx.Done():
					results <- nil
					return
				}
				if !ok {
					results <- nil
					return
				}
				if !isZero(pc.buf) {
					if _, err := out.WriteAt(pc.buf, int64(pc.off)); err != nil {
						results <- fmt.Errorf("write at %d: %w", pc.off, mapErr(err))
						return
					}
				}
				written <- uint64(len(pc.buf))
				free <- pc.buf[:cap(pc.buf)]
			}
		}()
	}

	// Wait for every writer (none may touch out once we return), then for
	// the reader unless a failure made us stop early.
	var done uint64
	var firstErr error
	for running := copyWorkers; running > 0; {
		select {
		case n := <-written:
			done += n
			if progress != nil {
				progress(done, size)
			}
		case err := <-results:
			running--
			if err != nil && firstErr == nil {
				firstErr = err
				cancel()
			}
		}
	}
	for len(written) > 0 {
		done += <-written
		if progress != nil {
			progress(done, size)
		}
	}
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := <-readErr; err != nil {
		return err
	}
	if done != size {
		return fmt.Errorf("stream ended after %d of %d bytes: %w", done, size, io.ErrUnexpectedEOF)
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
