package rbd

import (
	"context"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

func TestTmpProbe(t *testing.T) {
	c := startCluster(t, 2<<30)
	p, _ := c.open(t, "n1")
	ctx := context.Background()
	out, err := c.ceph.RBD(ctx, "create", "--size", "256M", "rbd/b1")
	t.Log(out, err)
	t0 := time.Now()
	out, err = c.ceph.RBD(ctx, "bench", "--io-type", "write", "--io-size", "4M", "--io-total", "256M", "--io-pattern", "seq", "rbd/b1")
	t.Log(time.Since(t0), out, err)
	t0 = time.Now()
	out, err = c.ceph.RBD(ctx, "bench", "--io-type", "write", "--io-size", "4M", "--io-threads", "1", "--io-total", "256M", "--io-pattern", "seq", "rbd/b1")
	t.Log("1 thread", time.Since(t0), out, err)
	size := uint64(256 << 20)
	t0 = time.Now()
	src := io.LimitReader(randReader{rand.NewChaCha8([32]byte{1})}, int64(size))
	if _, err := p.Import(ctx, "imp", src, size, nil); err != nil {
		t.Fatal(err)
	}
	t.Log("import", time.Since(t0))
	t0 = time.Now()
	if _, err := p.Copy(ctx, "imp", "cp", nil); err != nil {
		t.Fatal(err)
	}
	t.Log("copy", time.Since(t0))
}
