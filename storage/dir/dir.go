// Package dir is the local storage backend: each volume is a qcow2 file in
// one directory of the node, managed with qemu-img. Volumes are not shared
// between nodes, so a VM on them cannot fail over.
//
// Linked clones are qcow2 files whose backing file is a frozen export of the
// source's internal snapshot (kept under .exports/, made once per snapshot
// by qemu-img convert). The source can therefore keep changing, roll back or
// take new snapshots without corrupting its clones, like a protected RBD
// snapshot. An export is removed with its snapshot once no clone uses it.
package dir

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/minet/corral/storage"
)

const (
	ext        = ".qcow2"
	exportsDir = ".exports"
	// chunk is the unit in which Import reads its stream.
	chunk = 4 << 20
)

// Dir is a storage.Backend over the qcow2 files of one directory.
type Dir struct {
	root string
	// mu serialises the check-then-act parts of operations (existence,
	// clones, rename into place); long copies run outside it.
	mu sync.Mutex
}

var _ storage.Backend = (*Dir)(nil)

// New opens (creating it if needed) the directory that holds the volumes.
func New(root string) (*Dir, error) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("dir storage needs qemu-img (package qemu-utils): %w", err)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("dir storage %s: %w", root, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, exportsDir), 0o750); err != nil {
		return nil, fmt.Errorf("dir storage %s: %w", abs, err)
	}
	return &Dir{root: abs}, nil
}

func (d *Dir) path(name string) string { return filepath.Join(d.root, name+ext) }

// exportRel is the backing file name recorded in clones, relative to the
// clone so the directory can be moved.
func exportRel(src, snap string) string { return filepath.Join(exportsDir, src+"@"+snap+ext) }

func (d *Dir) exportPath(src, snap string) string {
	return filepath.Join(d.root, exportRel(src, snap))
}

// Shared is false: the files are local to this node.
func (d *Dir) Shared() bool { return false }

// Close releases nothing: the backend holds no open files.
func (d *Dir) Close() error { return nil }

// Disk points the hypervisor at the qcow2 file.
func (d *Dir) Disk(name string) storage.Disk {
	return storage.Disk{File: d.path(name), Format: storage.FormatQCOW2}
}

// Create makes an empty, thin qcow2 volume.
func (d *Dir) Create(ctx context.Context, name string, size uint64) (storage.Volume, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Volume{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.mustNotExist(name); err != nil {
		return storage.Volume{}, err
	}
	if err := d.checkSpace(name, size); err != nil {
		return storage.Volume{}, err
	}
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", d.path(name), strconv.FormatUint(size, 10)); err != nil {
		os.Remove(d.path(name))
		return storage.Volume{}, fmt.Errorf("create volume %s: %w", name, err)
	}
	return d.get(ctx, name)
}

// Delete removes a volume unless clones depend on it or a process (QEMU)
// holds it open.
func (d *Dir) Delete(ctx context.Context, name string) error {
	if err := storage.ValidateName(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.mustExist(name); err != nil {
		return err
	}
	clones, err := d.clonesOf(name, "")
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	if len(clones) > 0 {
		return fmt.Errorf("delete volume %s: %w: linked clones %s depend on it; delete or copy them first",
			name, storage.ErrInUse, strings.Join(clones, ", "))
	}
	if err := checkUnlocked(d.path(name)); err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	parent, _ := readBacking(d.path(name))
	if err := os.Remove(d.path(name)); err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	// The volume's own exports have no clones (checked above).
	matches, _ := filepath.Glob(filepath.Join(d.root, exportsDir, name+"@*"+ext))
	for _, m := range matches {
		os.Remove(m)
	}
	// An export whose source volume is gone and which has no clone left
	// would otherwise never be collected.
	if src, snap, ok := parseExport(parent); ok {
		if _, err := os.Stat(d.path(src)); errors.Is(err, os.ErrNotExist) {
			if rest, err := d.clonesOf(src, snap); err == nil && len(rest) == 0 {
				os.Remove(d.exportPath(src, snap))
			}
		}
	}
	return nil
}

// Resize grows the volume's virtual size.
func (d *Dir) Resize(ctx context.Context, name string, size uint64) error {
	if err := storage.ValidateName(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case size < v.SizeBytes:
		return fmt.Errorf("resize volume %s to %d bytes: %w (now %d bytes)", name, size, storage.ErrShrink, v.SizeBytes)
	case size == v.SizeBytes:
		return nil
	}
	if err := d.checkSpace(name, size-v.SizeBytes); err != nil {
		return err
	}
	if _, err := qemuImg(ctx, "resize", "-q", "-f", "qcow2", d.path(name), strconv.FormatUint(size, 10)); err != nil {
		return fmt.Errorf("resize volume %s: %w", name, err)
	}
	return nil
}

// Snapshot takes an internal qcow2 snapshot.
func (d *Dir) Snapshot(ctx context.Context, name, snap string) error {
	v, err := d.snapCheck(ctx, name, snap)
	if err != nil {
		return err
	}
	defer d.mu.Unlock()
	if contains(v.Snapshots, snap) {
		return fmt.Errorf("snapshot %s@%s: %w", name, snap, storage.ErrExists)
	}
	if _, err := qemuImg(ctx, "snapshot", "-q", "-c", snap, d.path(name)); err != nil {
		return fmt.Errorf("snapshot %s@%s: %w", name, snap, err)
	}
	return nil
}

// Rollback reverts the volume to a snapshot. Clones of that snapshot are
// unaffected: they read from its export.
func (d *Dir) Rollback(ctx context.Context, name, snap string) error {
	v, err := d.snapCheck(ctx, name, snap)
	if err != nil {
		return err
	}
	defer d.mu.Unlock()
	if !contains(v.Snapshots, snap) {
		return fmt.Errorf("rollback %s to %s: %w: no such snapshot", name, snap, storage.ErrNotFound)
	}
	if _, err := qemuImg(ctx, "snapshot", "-q", "-a", snap, d.path(name)); err != nil {
		return fmt.Errorf("rollback %s to %s: %w", name, snap, err)
	}
	return nil
}

// DeleteSnapshot removes a snapshot, refusing while clones depend on it.
func (d *Dir) DeleteSnapshot(ctx context.Context, name, snap string) error {
	v, err := d.snapCheck(ctx, name, snap)
	if err != nil {
		return err
	}
	defer d.mu.Unlock()
	if !contains(v.Snapshots, snap) {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, storage.ErrNotFound)
	}
	clones, err := d.clonesOf(name, snap)
	if err != nil {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, err)
	}
	if len(clones) > 0 {
		return fmt.Errorf("delete snapshot %s@%s: %w: linked clones %s depend on it",
			name, snap, storage.ErrInUse, strings.Join(clones, ", "))
	}
	if _, err := qemuImg(ctx, "snapshot", "-q", "-d", snap, d.path(name)); err != nil {
		return fmt.Errorf("delete snapshot %s@%s: %w", name, snap, err)
	}
	os.Remove(d.exportPath(name, snap))
	return nil
}

// snapCheck validates names, takes d.mu (released by the caller) and
// reads the volume.
func (d *Dir) snapCheck(ctx context.Context, name, snap string) (storage.Volume, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Volume{}, err
	}
	if err := storage.ValidateName(snap); err != nil {
		return storage.Volume{}, err
	}
	d.mu.Lock()
	v, err := d.get(ctx, name)
	if err != nil {
		d.mu.Unlock()
		return storage.Volume{}, err
	}
	return v, nil
}

// Clone makes dst a qcow2 file backed by the export of src@snap, creating
// the export (a full copy of the snapshot, once) if needed.
func (d *Dir) Clone(ctx context.Context, src, snap, dst string) (storage.Volume, error) {
	for _, n := range []string{src, snap, dst} {
		if err := storage.ValidateName(n); err != nil {
			return storage.Volume{}, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(ctx, src)
	if err != nil {
		return storage.Volume{}, err
	}
	if !contains(v.Snapshots, snap) {
		return storage.Volume{}, fmt.Errorf("clone %s@%s: %w: no such snapshot; take one first", src, snap, storage.ErrNotFound)
	}
	if err := d.mustNotExist(dst); err != nil {
		return storage.Volume{}, err
	}
	exp := d.exportPath(src, snap)
	if _, err := os.Stat(exp); errors.Is(err, os.ErrNotExist) {
		if err := d.checkSpace(src, v.SizeBytes); err != nil {
			return storage.Volume{}, err
		}
		tmp := exp + ".tmp"
		if _, err := qemuImg(ctx, "convert", "-f", "qcow2", "-O", "qcow2", "-l", "snapshot.name="+snap, d.path(src), tmp); err != nil {
			os.Remove(tmp)
			return storage.Volume{}, fmt.Errorf("clone %s@%s: export snapshot: %w", src, snap, err)
		}
		if err := os.Rename(tmp, exp); err != nil {
			os.Remove(tmp)
			return storage.Volume{}, fmt.Errorf("clone %s@%s: %w", src, snap, err)
		}
	}
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", exportRel(src, snap),
		d.path(dst), strconv.FormatUint(v.SizeBytes, 10)); err != nil {
		os.Remove(d.path(dst))
		return storage.Volume{}, fmt.Errorf("clone %s@%s to %s: %w", src, snap, dst, err)
	}
	return d.get(ctx, dst)
}

// Copy writes a full, flattened copy of src into dst.
func (d *Dir) Copy(ctx context.Context, src, dst string, progress func(done, total uint64)) (storage.Volume, error) {
	for _, n := range []string{src, dst} {
		if err := storage.ValidateName(n); err != nil {
			return storage.Volume{}, err
		}
	}
	d.mu.Lock()
	v, err := d.get(ctx, src)
	if err == nil {
		err = d.mustNotExist(dst)
	}
	if err == nil {
		err = d.checkSpace(dst, v.SizeBytes)
	}
	d.mu.Unlock()
	if err != nil {
		return storage.Volume{}, err
	}
	tmp := d.tempPath(dst)
	defer os.Remove(tmp)
	if err := convertWithProgress(ctx, d.path(src), tmp, v.SizeBytes, progress); err != nil {
		return storage.Volume{}, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return d.commit(ctx, tmp, dst)
}

// Import streams exactly size raw bytes into a new volume. The stream goes
// to a sparse raw file first (qemu-img cannot write qcow2 from a pipe),
// then is converted; nothing is left behind on error.
func (d *Dir) Import(ctx context.Context, name string, r io.Reader, size uint64, progress func(done, total uint64)) (storage.Volume, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Volume{}, err
	}
	d.mu.Lock()
	err := d.mustNotExist(name)
	if err == nil {
		err = d.checkSpace(name, size)
	}
	d.mu.Unlock()
	if err != nil {
		return storage.Volume{}, err
	}
	raw := d.tempPath(name) + ".raw"
	defer os.Remove(raw)
	if err := writeSparse(ctx, raw, r, size, progress); err != nil {
		return storage.Volume{}, fmt.Errorf("import %s: %w", name, err)
	}
	tmp := d.tempPath(name)
	defer os.Remove(tmp)
	if _, err := qemuImg(ctx, "convert", "-f", "raw", "-O", "qcow2", raw, tmp); err != nil {
		return storage.Volume{}, fmt.Errorf("import %s: %w", name, err)
	}
	return d.commit(ctx, tmp, name)
}

// writeSparse copies exactly size bytes of r into a new file, seeking over
// zero chunks so that empty regions take no space.
func writeSparse(ctx context.Context, path string, r io.Reader, size uint64, progress func(done, total uint64)) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, chunk)
	var done uint64
	for done < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(len(buf)), size-done)
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("stream ended after about %d of %d bytes: %w", done, size, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("read stream at %d: %w", done, err)
		}
		if isZero(buf[:n]) {
			if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
				return err
			}
		} else if _, err := f.Write(buf[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return fmt.Errorf("%w: %v", storage.ErrNoSpace, err)
			}
			return err
		}
		done += n
		if progress != nil {
			progress(done, size)
		}
	}
	// A longer stream than announced means the size was wrong: refuse
	// rather than silently truncate the disk.
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return fmt.Errorf("stream is longer than the announced %d bytes", size)
	}
	if err := f.Truncate(int64(size)); err != nil {
		return err
	}
	return f.Close()
}

// commit renames a finished temporary file into place as volume name.
func (d *Dir) commit(ctx context.Context, tmp, name string) (storage.Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.mustNotExist(name); err != nil {
		return storage.Volume{}, err
	}
	if err := os.Rename(tmp, d.path(name)); err != nil {
		return storage.Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	return d.get(ctx, name)
}

// tempPath is a hidden, unique file name in the directory, so that a
// rename into place is atomic and List never shows half-written volumes.
func (d *Dir) tempPath(name string) string {
	var b [6]byte
	rand.Read(b[:])
	return filepath.Join(d.root, "."+name+"."+hex.EncodeToString(b[:])+".tmp")
}

// Get describes one volume.
func (d *Dir) Get(ctx context.Context, name string) (storage.Volume, error) {
	if err := storage.ValidateName(name); err != nil {
		return storage.Volume{}, err
	}
	return d.get(ctx, name)
}

// List describes every volume, sorted by name.
func (d *Dir) List(ctx context.Context) ([]storage.Volume, error) {
	names, err := d.names()
	if err != nil {
		return nil, err
	}
	out := make([]storage.Volume, 0, len(names))
	for _, n := range names {
		v, err := d.get(ctx, n)
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

func (d *Dir) names() ([]string, error) {
	ents, err := os.ReadDir(d.root)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.root, err)
	}
	var names []string
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ext)
		if ok && e.Type().IsRegular() && storage.ValidateName(n) == nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

type imgInfo struct {
	VirtualSize     uint64 `json:"virtual-size"`
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	Snapshots       []struct {
		Name string `json:"name"`
	} `json:"snapshots"`
}

func (d *Dir) get(ctx context.Context, name string) (storage.Volume, error) {
	if err := d.mustExist(name); err != nil {
		return storage.Volume{}, err
	}
	// -U: reading metadata must work while a VM has the image open.
	out, err := qemuImg(ctx, "info", "-U", "--output=json", d.path(name))
	if err != nil {
		return storage.Volume{}, fmt.Errorf("volume %s: %w", name, err)
	}
	var info imgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return storage.Volume{}, fmt.Errorf("volume %s: qemu-img info: %w", name, err)
	}
	v := storage.Volume{Name: name, SizeBytes: info.VirtualSize, Format: info.Format}
	if src, snap, ok := parseExport(info.BackingFilename); ok {
		v.Parent = src + "@" + snap
	} else {
		v.Parent = info.BackingFilename
	}
	for _, s := range info.Snapshots {
		v.Snapshots = append(v.Snapshots, s.Name)
	}
	return v, nil
}

// parseExport recognises a backing file name made by Clone.
func parseExport(backing string) (src, snap string, ok bool) {
	rest, ok := strings.CutPrefix(backing, exportsDir+"/")
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutSuffix(rest, ext)
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, "@")
}

// clonesOf lists volumes whose backing file is an export of src (of snap
// only, when snap is set). It reads qcow2 headers directly: one qemu-img
// process per volume would make Delete slow on a full directory.
func (d *Dir) clonesOf(src, snap string) ([]string, error) {
	names, err := d.names()
	if err != nil {
		return nil, err
	}
	var clones []string
	for _, n := range names {
		b, err := readBacking(d.path(n))
		if err != nil {
			return nil, err
		}
		s, sn, ok := parseExport(b)
		if ok && s == src && (snap == "" || sn == snap) {
			clones = append(clones, n)
		}
	}
	return clones, nil
}

// readBacking returns the backing file name stored in a qcow2 header
// (big-endian: offset 8 holds its offset, 16 its length), or "".
func readBacking(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return "", fmt.Errorf("%s: short qcow2 header: %w", path, err)
	}
	if string(hdr[:4]) != "QFI\xfb" {
		return "", fmt.Errorf("%s: not a qcow2 file", path)
	}
	off := binary.BigEndian.Uint64(hdr[8:16])
	n := binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || n == 0 {
		return "", nil
	}
	if n > 4096 {
		return "", fmt.Errorf("%s: backing file name of %d bytes", path, n)
	}
	name := make([]byte, n)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("%s: read backing file name: %w", path, err)
	}
	return string(name), nil
}

// QEMU locks bytes 100+perm and 200+perm of images it opens (OFD locks,
// see QEMU's file-posix.c); any lock in that range means a live user.
const (
	lockStart = 100
	lockLen   = 200
	fOFDGetlk = 36 // F_OFD_GETLK, missing from package syscall
)

// checkUnlocked returns ErrInUse if a process such as QEMU holds the file.
func checkUnlocked(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart, Start: lockStart, Len: lockLen}
	if err := syscall.FcntlFlock(f.Fd(), fOFDGetlk, &lk); err != nil {
		return fmt.Errorf("check lock of %s: %w", path, err)
	}
	if lk.Type != syscall.F_UNLCK {
		return fmt.Errorf("%w: %s is open by another process (a running VM?); stop it first", storage.ErrInUse, filepath.Base(path))
	}
	return nil
}

func (d *Dir) mustExist(name string) error {
	if _, err := os.Stat(d.path(name)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("volume %s: %w", name, storage.ErrNotFound)
		}
		return fmt.Errorf("volume %s: %w", name, err)
	}
	return nil
}

func (d *Dir) mustNotExist(name string) error {
	_, err := os.Stat(d.path(name))
	if err == nil {
		return fmt.Errorf("volume %s: %w; choose another name or delete it", name, storage.ErrExists)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	return nil
}

// checkSpace refuses to promise more bytes than the filesystem has free.
// qcow2 files are thin, so this is a guard against obvious overcommit, not
// a reservation.
func (d *Dir) checkSpace(name string, need uint64) error {
	free, err := freeBytes(d.root)
	if err != nil {
		return err
	}
	if need > free {
		return fmt.Errorf("volume %s needs %d bytes, %s has %d free: %w; free space or choose a smaller size",
			name, need, d.root, free, storage.ErrNoSpace)
	}
	return nil
}

func freeBytes(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// qemuImg runs qemu-img and turns its failures into typed errors where
// callers need to tell them apart.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, qemuImgError(args[0], stderr.String(), err)
	}
	return out, nil
}

func qemuImgError(op, stderr string, err error) error {
	msg := strings.TrimSpace(stderr)
	switch {
	case strings.Contains(msg, "lock"):
		return fmt.Errorf("qemu-img %s: %w: %s (is a VM using it?)", op, storage.ErrInUse, msg)
	case strings.Contains(msg, "No space left"):
		return fmt.Errorf("qemu-img %s: %w: %s", op, storage.ErrNoSpace, msg)
	}
	return fmt.Errorf("qemu-img %s: %w: %s", op, err, msg)
}

// convertWithProgress runs qemu-img convert -p, turning its percentage
// lines ("    (12.34/100%)\r") into byte counts of total.
func convertWithProgress(ctx context.Context, src, dst string, total uint64, progress func(done, total uint64)) error {
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-p", "-O", "qcow2", src, dst)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdout)
	sc.Split(splitCR)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimPrefix(line, "(")
		pct, _, ok := strings.Cut(line, "/")
		if !ok || progress == nil {
			continue
		}
		if p, err := strconv.ParseFloat(pct, 64); err == nil {
			progress(uint64(p/100*float64(total)), total)
		}
	}
	if err := cmd.Wait(); err != nil {
		return qemuImgError("convert", stderr.String(), err)
	}
	if progress != nil {
		progress(total, total)
	}
	return nil
}

// splitCR splits on '\r' or '\n'.
func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
