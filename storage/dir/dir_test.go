package dir

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minet/corral/storage"
)

const mib = 1 << 20

func newDir(t *testing.T) *Dir {
	t.Helper()
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// writePattern fills [off, off+n) of a volume with byte b through qemu-io,
// as a guest would.
func writePattern(t *testing.T, d *Dir, name string, b byte, off, n int) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c",
		"write -P "+strconv.Itoa(int(b))+" "+strconv.Itoa(off)+" "+strconv.Itoa(n), d.path(name)).CombinedOutput()
	if err != nil || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io write %s: %v: %s", name, err, out)
	}
}

// readRaw returns the guest-visible content of a volume.
func readRaw(t *testing.T, d *Dir, name string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "out.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", d.path(name), raw).CombinedOutput(); err != nil {
		t.Fatalf("read %s: %v: %s", name, err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNames(t *testing.T) {
	t.Parallel()
	d := newDir(t)
	ctx := context.Background()
	bad := []string{"", "../x", "a/b", ".hidden", "a@b", "has space"}
	for _, n := range bad {
		if _, err := d.Create(ctx, n, mib); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", n, err)
		}
		if err := d.Snapshot(ctx, "x", n); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Snapshot(x, %q) = %v, want ErrInvalidName", n, err)
		}
		if _, err := d.Clone(ctx, "x", "s", n); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Clone(x, s, %q) = %v, want ErrInvalidName", n, err)
		}
	}
	if ents, _ := os.ReadDir(d.root); len(ents) != 1 { // only .exports
		t.Errorf("bad names left files: %v", ents)
	}
}

func TestOperations(t *testing.T) {
	t.Parallel()
	d := newDir(t)
	ctx := context.Background()
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.root, &st); err != nil {
		t.Fatal(err)
	}
	free := st.Bavail * uint64(st.Bsize)

	steps := []struct {
		what string
		do   func() error
		want error
	}{
		{"create", func() error { _, err := d.Create(ctx, "a", 8*mib); return err }, nil},
		{"create again", func() error { _, err := d.Create(ctx, "a", 8*mib); return err }, storage.ErrExists},
		{"create larger than free space", func() error { _, err := d.Create(ctx, "huge", 2*free+1<<30); return err }, storage.ErrNoSpace},
		{"grow", func() error { return d.Resize(ctx, "a", 16*mib) }, nil},
		{"same size", func() error { return d.Resize(ctx, "a", 16*mib) }, nil},
		{"shrink", func() error { return d.Resize(ctx, "a", 8*mib) }, storage.ErrShrink},
		{"grow beyond free space", func() error { return d.Resize(ctx, "a", 2*free+1<<30) }, storage.ErrNoSpace},
		{"resize missing", func() error { return d.Resize(ctx, "nope", 16*mib) }, storage.ErrNotFound},
		{"get missing", func() error { _, err := d.Get(ctx, "nope"); return err }, storage.ErrNotFound},
		{"delete missing", func() error { return d.Delete(ctx, "nope") }, storage.ErrNotFound},
		{"snapshot", func() error { return d.Snapshot(ctx, "a", "s1") }, nil},
		{"snapshot again", func() error { return d.Snapshot(ctx, "a", "s1") }, storage.ErrExists},
		{"snapshot missing volume", func() error { return d.Snapshot(ctx, "nope", "s1") }, storage.ErrNotFound},
		{"rollback missing snapshot", func() error { return d.Rollback(ctx, "a", "s9") }, storage.ErrNotFound},
		{"delete missing snapshot", func() error { return d.DeleteSnapshot(ctx, "a", "s9") }, storage.ErrNotFound},
		{"clone missing snapshot", func() error { _, err := d.Clone(ctx, "a", "s9", "c"); return err }, storage.ErrNotFound},
		{"clone", func() error { _, err := d.Clone(ctx, "a", "s1", "c1"); return err }, nil},
		{"clone onto existing", func() error { _, err := d.Clone(ctx, "a", "s1", "c1"); return err }, storage.ErrExists},
		{"delete source with clones", func() error { return d.Delete(ctx, "a") }, storage.ErrInUse},
		{"delete cloned snapshot", func() error { return d.DeleteSnapshot(ctx, "a", "s1") }, storage.ErrInUse},
		{"copy onto existing", func() error { _, err := d.Copy(ctx, "a", "c1", nil); return err }, storage.ErrExists},
		{"copy missing", func() error { _, err := d.Copy(ctx, "nope", "x", nil); return err }, storage.ErrNotFound},
		{"delete clone", func() error { return d.Delete(ctx, "c1") }, nil},
		{"delete snapshot", func() error { return d.DeleteSnapshot(ctx, "a", "s1") }, nil},
		{"delete source", func() error { return d.Delete(ctx, "a") }, nil},
	}
	for _, s := range steps {
		err := s.do()
		if s.want == nil && err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if s.want != nil && !errors.Is(err, s.want) {
			t.Fatalf("%s: got %v, want %v", s.what, err, s.want)
		}
	}
	vols, err := d.List(ctx)
	if err != nil || len(vols) != 0 {
		t.Errorf("List after deleting all = %v, %v", vols, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.root, exportsDir)); len(ents) != 0 {
		t.Errorf("exports left behind: %v", ents)
	}
}

func TestSnapshotCloneCopyContent(t *testing.T) {
	t.Parallel()
	d := newDir(t)
	ctx := context.Background()
	if _, err := d.Create(ctx, "tpl", 4*mib); err != nil {
		t.Fatal(err)
	}
	writePattern(t, d, "tpl", 0xaa, 0, mib)
	if err := d.Snapshot(ctx, "tpl", "gold"); err != nil {
		t.Fatal(err)
	}
	gold := readRaw(t, d, "tpl")
	writePattern(t, d, "tpl", 0xbb, 0, 2*mib)

	c, err := d.Clone(ctx, "tpl", "gold", "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Parent != "tpl@gold" || c.SizeBytes != 4*mib || c.Format != "qcow2" {
		t.Errorf("clone = %+v, want parent tpl@gold, 4 MiB qcow2", c)
	}
	if got := readRaw(t, d, "vm1"); !bytes.Equal(got, gold) {
		t.Error("clone does not show the snapshot's content")
	}
	// The clone must stay linked: its file holds almost nothing.
	if fi, _ := os.Stat(d.path("vm1")); fi.Size() > mib {
		t.Errorf("clone file is %d bytes, not a linked clone", fi.Size())
	}
	// Rolling the source back and rewriting it leaves the clone alone.
	if err := d.Rollback(ctx, "tpl", "gold"); err != nil {
		t.Fatal(err)
	}
	if got := readRaw(t, d, "tpl"); !bytes.Equal(got, gold) {
		t.Error("rollback did not restore the snapshot's content")
	}
	writePattern(t, d, "tpl", 0xcc, 0, 4*mib)
	if got := readRaw(t, d, "vm1"); !bytes.Equal(got, gold) {
		t.Error("writing the source changed its clone")
	}

	var last, calls uint64
	cp, err := d.Copy(ctx, "vm1", "vm1-copy", func(done, total uint64) {
		calls++
		last = done
		if total != 4*mib {
			t.Errorf("progress total %d, want %d", total, 4*mib)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if cp.Parent != "" {
		t.Errorf("copy has parent %q, want an independent volume", cp.Parent)
	}
	if calls == 0 || last != 4*mib {
		t.Errorf("progress: %d calls, last %d", calls, last)
	}
	if got := readRaw(t, d, "vm1-copy"); !bytes.Equal(got, gold) {
		t.Error("copy differs from its source")
	}
	if err := d.Delete(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	// The copy does not depend on anything.
	if err := d.DeleteSnapshot(ctx, "tpl", "gold"); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, "tpl"); err != nil {
		t.Fatal(err)
	}
	if got := readRaw(t, d, "vm1-copy"); !bytes.Equal(got, gold) {
		t.Error("copy changed after its source was deleted")
	}
	// Resize works on a volume with snapshots too.
	if err := d.Snapshot(ctx, "vm1-copy", "s"); err != nil {
		t.Fatal(err)
	}
	if err := d.Resize(ctx, "vm1-copy", 8*mib); err != nil {
		t.Fatal(err)
	}
	v, err := d.Get(ctx, "vm1-copy")
	if err != nil || v.SizeBytes != 8*mib || len(v.Snapshots) != 1 || v.Snapshots[0] != "s" {
		t.Errorf("after resize: %+v, %v", v, err)
	}
}

// cutReader yields n bytes of data then fails, like a dropped upload.
type cutReader struct {
	r io.Reader
	n int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func TestImport(t *testing.T) {
	t.Parallel()
	d := newDir(t)
	ctx := context.Background()
	size := 9*mib + 4096 // not a multiple of the chunk
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data[:3*mib] {
		data[i] = byte(rng.Uint32())
	}
	// leave a zero hole in the middle, then more data
	for i := 6 * mib; i < size; i++ {
		data[i] = byte(rng.Uint32())
	}

	tests := []struct {
		name string
		r    io.Reader
		size uint64
		ok   bool
	}{
		{"full", bytes.NewReader(data), uint64(size), true},
		{"cut stream", &cutReader{r: bytes.NewReader(data), n: 5 * mib}, uint64(size), false},
		{"short stream", bytes.NewReader(data[:size-1]), uint64(size), false},
		{"long stream", bytes.NewReader(append(data, 1)), uint64(size), false},
	}
	for i, tt := range tests {
		name := "imp" + strconv.Itoa(i)
		var last uint64
		v, err := d.Import(ctx, name, tt.r, tt.size, func(done, total uint64) { last = done })
		if tt.ok {
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if v.SizeBytes != uint64(size) || last != uint64(size) {
				t.Errorf("%s: size %d, last progress %d", tt.name, v.SizeBytes, last)
			}
			if got := readRaw(t, d, name); !bytes.Equal(got, data) {
				t.Errorf("%s: imported content differs", tt.name)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", tt.name)
		}
		if _, err := d.Get(ctx, name); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s: volume left after failed import: %v", tt.name, err)
		}
	}
	ents, _ := os.ReadDir(d.root)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{exportsDir, "imp0.qcow2"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("directory holds %v, want %v", names, want)
	}
	if _, err := d.Import(ctx, "huge", bytes.NewReader(nil), 1<<62, nil); !errors.Is(err, storage.ErrNoSpace) {
		t.Errorf("import larger than free space: %v", err)
	}
	if _, err := d.Import(ctx, "imp0", bytes.NewReader(data), uint64(size), nil); !errors.Is(err, storage.ErrExists) {
		t.Errorf("import onto existing: %v", err)
	}
}

// TestDeleteLocked holds a volume open with qemu-nbd (which takes the same
// locks as a running VM's QEMU) and checks that Delete refuses it.
func TestDeleteLocked(t *testing.T) {
	t.Parallel()
	d := newDir(t)
	ctx := context.Background()
	if _, err := d.Create(ctx, "busy", 4*mib); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("qemu-nbd", "--socket="+sock, "-f", "qcow2", d.path("busy"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-nbd: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait until qemu-nbd holds the image lock (its socket may appear
	// first on a loaded machine).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil && checkUnlocked(d.path("busy")) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu-nbd did not open and lock the volume")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Delete(ctx, "busy"); !errors.Is(err, storage.ErrInUse) {
		t.Fatalf("Delete of an open volume = %v, want ErrInUse", err)
	}
	// Metadata stays readable while in use.
	if _, err := d.Get(ctx, "busy"); err != nil {
		t.Errorf("Get of an open volume: %v", err)
	}
	if err := d.Snapshot(ctx, "busy", "s"); !errors.Is(err, storage.ErrInUse) {
		t.Errorf("offline snapshot of an open volume = %v, want ErrInUse", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := d.Delete(ctx, "busy"); err != nil {
		t.Errorf("Delete after close: %v", err)
	}
}
