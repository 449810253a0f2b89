package rbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/minet/corral/internal/testenv"
	"github.com/minet/corral/storage"
)

const mib = 1 << 20

// cluster is one throwaway Ceph shared by the subtests of a test.
type cluster struct {
	lab  *testenv.Lab
	ceph *testenv.Ceph
	key  string
}

func startCluster(t testing.TB, osdBytes int64) *cluster {
	t.Helper()
	lab := testenv.New(t, testenv.Options{})
	if osdBytes > 0 {
		lab.CephOSDBytes = osdBytes
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ceph, err := lab.StartCeph(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ceph.CreateClient(ctx, "corral")
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{lab: lab, ceph: ceph, key: key}
}

// open connects from inside a new lab host, as corrald would from its node.
func (c *cluster) open(t testing.TB, host string) (*Pool, *testenv.Host) {
	t.Helper()
	h, err := c.lab.AddHost(host)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := Open(ctx, Config{Monitors: []string{c.ceph.MonAddr}, User: "corral", Key: c.key, Pool: "rbd",
		Timeout: 10 * time.Second, Do: h.Do})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, h
}

// randomData returns n random bytes with, when n allows, a zero hole of
// two chunks in the middle so that the sparse paths are exercised too.
func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	rng.Read(b)
	if n >= 3*chunk {
		clear(b[n/3 : n/3+2*chunk])
	}
	return b
}

// readAll reads an image's whole content through librbd.
func readAll(t *testing.T, p *Pool, name string) []byte {
	t.Helper()
	img, err := librbd.OpenImageReadOnly(p.ioctx, name, librbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func writeAt(t *testing.T, p *Pool, name string, b []byte, off int64) {
	t.Helper()
	img, err := librbd.OpenImage(p.ioctx, name, librbd.NoSnapshot)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	if _, err := img.WriteAt(b, off); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

// cutReader yields n bytes then fails, like a dropped upload.
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

func TestRBD(t *testing.T) {
	c := startCluster(t, 0)
	p, _ := c.open(t, "n1")
	ctx := context.Background()

	t.Run("operations", func(t *testing.T) {
		steps := []struct {
			what string
			do   func() error
			want error
		}{
			{"create", func() error { _, err := p.Create(ctx, "a", 8*mib); return err }, nil},
			{"create again", func() error { _, err := p.Create(ctx, "a", 8*mib); return err }, storage.ErrExists},
			{"bad name", func() error { _, err := p.Create(ctx, "a@b", 8*mib); return err }, storage.ErrInvalidName},
			{"grow", func() error { return p.Resize(ctx, "a", 16*mib) }, nil},
			{"same size", func() error { return p.Resize(ctx, "a", 16*mib) }, nil},
			{"shrink", func() error { return p.Resize(ctx, "a", 8*mib) }, storage.ErrShrink},
			{"resize missing", func() error { return p.Resize(ctx, "nope", 16*mib) }, storage.ErrNotFound},
			{"get missing", func() error { _, err := p.Get(ctx, "nope"); return err }, storage.ErrNotFound},
			{"delete missing", func() error { return p.Delete(ctx, "nope") }, storage.ErrNotFound},
			{"snapshot", func() error { return p.Snapshot(ctx, "a", "s1") }, nil},
			{"snapshot again", func() error { return p.Snapshot(ctx, "a", "s1") }, storage.ErrExists},
			{"rollback missing snapshot", func() error { return p.Rollback(ctx, "a", "s9") }, storage.ErrNotFound},
			{"delete missing snapshot", func() error { return p.DeleteSnapshot(ctx, "a", "s9") }, storage.ErrNotFound},
			{"clone missing snapshot", func() error { _, err := p.Clone(ctx, "a", "s9", "c"); return err }, storage.ErrNotFound},
			{"clone", func() error { _, err := p.Clone(ctx, "a", "s1", "c1"); return err }, nil},
			{"clone onto existing", func() error { _, err := p.Clone(ctx, "a", "s1", "c1"); return err }, storage.ErrExists},
			{"delete source with clones", func() error { return p.Delete(ctx, "a") }, storage.ErrInUse},
			{"delete cloned snapshot", func() error { return p.DeleteSnapshot(ctx, "a", "s1") }, storage.ErrInUse},
			{"copy onto existing", func() error { _, err := p.Copy(ctx, "a", "c1", nil); return err }, storage.ErrExists},
			{"copy missing", func() error { _, err := p.Copy(ctx, "nope", "x", nil); return err }, storage.ErrNotFound},
			{"delete clone", func() error { return p.Delete(ctx, "c1") }, nil},
			{"delete unused snapshot", func() error { return p.DeleteSnapshot(ctx, "a", "s1") }, nil},
			{"snapshot for delete", func() error { return p.Snapshot(ctx, "a", "s2") }, nil},
			{"delete with snapshots", func() error { return p.Delete(ctx, "a") }, nil},
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
		if vols, err := p.List(ctx); err != nil || len(vols) != 0 {
			t.Errorf("List after deleting all = %+v, %v", vols, err)
		}
	})

	t.Run("content", func(t *testing.T) {
		size := 3*chunk + 12345 // not a multiple of the chunk
		data := randomData(1, size)
		var last uint64
		v, err := p.Import(ctx, "tpl", bytes.NewReader(data), uint64(size), func(done, total uint64) { last = done })
		if err != nil {
			t.Fatal(err)
		}
		if v.SizeBytes != uint64(size) || v.Format != "raw" || last != uint64(size) {
			t.Errorf("imported %+v, last progress %d", v, last)
		}
		if !bytes.Equal(readAll(t, p, "tpl"), data) {
			t.Fatal("imported content differs from the stream")
		}

		if err := p.Snapshot(ctx, "tpl", "gold"); err != nil {
			t.Fatal(err)
		}
		other := randomData(2, chunk)
		writeAt(t, p, "tpl", other, 0)
		if err := p.Rollback(ctx, "tpl", "gold"); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readAll(t, p, "tpl"), data) {
			t.Fatal("rollback did not restore the snapshot")
		}
		writeAt(t, p, "tpl", other, 0) // the clone must not see this

		cl, err := p.Clone(ctx, "tpl", "gold", "vm1")
		if err != nil {
			t.Fatal(err)
		}
		if cl.Parent != "tpl@gold" {
			t.Errorf("clone parent %q, want tpl@gold", cl.Parent)
		}
		info, err := c.ceph.RBD(ctx, "info", "rbd/vm1")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(info, "parent: rbd/tpl@gold") {
			t.Errorf("rbd info shows no parent:\n%s", info)
		}
		for _, f := range []string{"layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"} {
			if !strings.Contains(info, f) {
				t.Errorf("clone lacks feature %s:\n%s", f, info)
			}
		}
		if !bytes.Equal(readAll(t, p, "vm1"), data) {
			t.Fatal("clone does not show the snapshot's content")
		}
		writeAt(t, p, "vm1", other, chunk) // a guest write on the clone

		calls := 0
		var total uint64
		cp, err := p.Copy(ctx, "vm1", "vm1-copy", func(done, tot uint64) { calls++; last, total = done, tot })
		if err != nil {
			t.Fatal(err)
		}
		if cp.Parent != "" || cp.SizeBytes != uint64(size) {
			t.Errorf("copy = %+v, want independent %d bytes", cp, size)
		}
		if calls < 2 || last != uint64(size) || total != uint64(size) {
			t.Errorf("copy progress: %d calls, last %d/%d", calls, last, total)
		}
		// The temporary snapshot the copy read from is gone.
		img, err := librbd.OpenImageReadOnly(p.ioctx, "vm1", librbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := img.GetSnapshotNames()
		img.Close()
		if err != nil || len(snaps) != 0 {
			t.Errorf("source snapshots after copy: %v, %v", snaps, err)
		}
		want := slices.Clone(data)
		copy(want[chunk:], other)
		if !bytes.Equal(readAll(t, p, "vm1-copy"), want) {
			t.Fatal("copy differs from its source")
		}

		if err := p.Delete(ctx, "tpl"); !errors.Is(err, storage.ErrInUse) || !strings.Contains(err.Error(), "vm1") {
			t.Errorf("delete of a template with clones = %v, want ErrInUse naming vm1", err)
		}
		for _, n := range []string{"vm1", "tpl", "vm1-copy"} {
			if err := p.Delete(ctx, n); err != nil {
				t.Fatalf("delete %s: %v", n, err)
			}
		}
	})

	t.Run("import failures", func(t *testing.T) {
		size := 2*chunk + 7
		data := randomData(3, size)
		tests := []struct {
			name string
			r    io.Reader
		}{
			{"cut", &cutReader{r: bytes.NewReader(data), n: chunk + 100}},
			{"short", bytes.NewReader(data[:size-1])},
			{"long", bytes.NewReader(append(slices.Clone(data), 1))},
		}
		for _, tt := range tests {
			if _, err := p.Import(ctx, "imp-"+tt.name, tt.r, uint64(size), nil); err == nil {
				t.Errorf("%s stream: no error", tt.name)
			}
			if _, err := p.Get(ctx, "imp-"+tt.name); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("%s stream: image left behind (%v)", tt.name, err)
			}
		}
	})

	t.Run("disk", func(t *testing.T) {
		d := p.Disk("vm7")
		if d.RBD == nil || d.RBD.Pool != "rbd" || d.RBD.Image != "vm7" || d.RBD.User != "corral" ||
			!slices.Equal(d.RBD.Monitors, []string{c.ceph.MonAddr}) || d.Format != "raw" || !p.Shared() {
			t.Errorf("Disk = %+v %+v", d, d.RBD)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		other, err := c.ceph.CreateClient(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		h, err := c.lab.AddHost("n-badkey")
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err = Open(cctx, Config{Monitors: []string{c.ceph.MonAddr}, User: "corral", Key: other, Pool: "rbd",
			Timeout: 10 * time.Second, Do: h.Do})
		if !errors.Is(err, storage.ErrAuth) {
			t.Fatalf("Open with another client's key = %v, want ErrAuth", err)
		}
		t.Log(err)
	})

	t.Run("unreachable", func(t *testing.T) {
		// A lab host with no monitor: connections are refused inside the
		// lab and librados retries until its mount timeout.
		h, err := c.lab.AddHost("n-nomon")
		if err != nil {
			t.Fatal(err)
		}
		const timeout = 3 * time.Second
		cctx, cancel := context.WithTimeout(ctx, timeout+20*time.Second)
		defer cancel()
		start := time.Now()
		_, err = Open(cctx, Config{Monitors: []string{net.JoinHostPort(h.IP.String(), "3300")}, User: "corral",
			Key: c.key, Pool: "rbd", Timeout: timeout, Do: h.Do})
		if !errors.Is(err, storage.ErrUnreachable) {
			t.Fatalf("Open without a monitor = %v, want ErrUnreachable", err)
		}
		t.Logf("gave up after %s: %v", time.Since(start).Round(time.Millisecond), err)
	})

	t.Run("fencing", func(t *testing.T) {
		p2, h2 := c.open(t, "n2")
		if _, err := p.Create(ctx, "fenced", 8*mib); err != nil {
			t.Fatal(err)
		}
		// n2 runs the "VM": it holds the image open and writes to it.
		img, err := librbd.OpenImage(p2.ioctx, "fenced", librbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if _, err := img.WriteAt(randomData(4, 4096), 0); err != nil {
			t.Fatal(err)
		}
		ws, err := p.Watchers(ctx, "fenced")
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != 1 || !strings.HasPrefix(ws[0], h2.IP.String()+":") {
			t.Errorf("watchers %v, want one client of %s", ws, h2.IP)
		}
		if err := p.Delete(ctx, "fenced"); !errors.Is(err, storage.ErrInUse) {
			t.Errorf("delete of an open image = %v, want ErrInUse", err)
		}
		if err := p.Rollback(ctx, "fenced", "none"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("rollback to a missing snapshot = %v", err)
		}

		addr := h2.IP.String()
		if err := p.Blocklist(ctx, addr, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		// Again: rm then add must succeed on an existing entry.
		if err := p.Blocklist(ctx, addr, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		bl, err := p.Blocklisted(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(bl, addr+":0/0") {
			t.Errorf("blocklist %v lacks %s:0/0", bl, addr)
		}
		if err := p.WaitForLatestOSDMap(ctx); err != nil {
			t.Fatal(err)
		}
		_, err = img.WriteAt(randomData(5, 4096), 0)
		if err == nil {
			t.Fatal("a fenced client could still write")
		}
		if !errors.Is(mapErr(err), storage.ErrFenced) {
			t.Errorf("fenced write: %v, want an error that maps to ErrFenced", err)
		}

		if err := p.Unblocklist(ctx, addr); err != nil {
			t.Fatal(err)
		}
		bl, err = p.Blocklisted(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(bl, addr+":0/0") {
			t.Errorf("blocklist %v still has %s after Unblocklist", bl, addr)
		}
		if err := p.Blocklist(ctx, addr, time.Millisecond); err == nil {
			t.Error("Blocklist accepted an expiry too short to fence")
		}
	})
}

func TestMonHost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []string
		want string
		ok   bool
	}{
		{[]string{"10.0.0.1:3300"}, "[v2:10.0.0.1:3300]", true},
		{[]string{"10.0.0.1:6789", "10.0.0.2"}, "[v1:10.0.0.1:6789],10.0.0.2", true},
		{[]string{"v2:10.0.0.1:3300"}, "v2:10.0.0.1:3300", true},
		{[]string{"10.0.0.1:7000"}, "10.0.0.1:7000", true},
		{[]string{"mon.example"}, "", false},
	}
	for _, tt := range tests {
		got, err := monHost(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("monHost(%v) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
