package rbd

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"
)

// benchOSDBytes sizes the benchmark's memstore OSD: a 4 GiB template plus
// its 4 GiB full copy, with room for metadata. memstore takes RAM only as
// data is written.
const benchOSDBytes = 10 << 30

// randReader is an endless stream of random (so never all-zero) bytes.
type randReader struct{ r *rand.ChaCha8 }

func (r randReader) Read(p []byte) (int, error) { return r.r.Read(p) }

// BenchmarkTemplate measures what it costs to give a VM its disk from a
// fully written template: a linked clone (metadata only) against a full
// copy, for 1 GiB and 4 GiB templates. Metrics are seconds per operation.
// Run: go test -tags pacific -run '^$' -bench Template ./storage/rbd
func BenchmarkTemplate(b *testing.B) {
	c := startCluster(b, benchOSDBytes)
	p, _ := c.open(b, "n1")
	ctx := context.Background()
	for _, size := range []uint64{1 << 30, 4 << 30} {
		label := fmt.Sprintf("%dGiB", size>>30)
		tpl := "tpl-" + label
		// Writing the template is measured too: it is what uploading an
		// image costs (Import, copyWorkers writes in flight).
		b.Run("import-"+label, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := p.Get(ctx, tpl); err == nil {
					if err := p.Delete(ctx, tpl); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				src := io.LimitReader(randReader{rand.NewChaCha8([32]byte{1})}, int64(size))
				t0 := time.Now()
				if _, err := p.Import(ctx, tpl, src, size, nil); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/import")
			b.ReportMetric(float64(size>>20)*float64(b.N)/total.Seconds(), "MiB/s")
		})
		if _, err := p.Get(ctx, tpl); err != nil { // import filtered out by -bench
			src := io.LimitReader(randReader{rand.NewChaCha8([32]byte{1})}, int64(size))
			if _, err := p.Import(ctx, tpl, src, size, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := p.Snapshot(ctx, tpl, "gold"); err != nil {
			b.Fatal(err)
		}

		b.Run("clone-"+label, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				dst := fmt.Sprintf("clone-%s-%d", label, i)
				t0 := time.Now()
				if _, err := p.Clone(ctx, tpl, "gold", dst); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				b.StopTimer()
				if err := p.Delete(ctx, dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/clone")
		})
		b.Run("copy-"+label, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				dst := fmt.Sprintf("copy-%s-%d", label, i)
				t0 := time.Now()
				if _, err := p.Copy(ctx, tpl, dst, nil); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				b.StopTimer()
				if err := p.Delete(ctx, dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/copy")
			b.ReportMetric(float64(size>>20)*float64(b.N)/total.Seconds(), "MiB/s")
		})
		if err := p.Delete(ctx, tpl); err != nil {
			b.Fatal(err)
		}
	}
}
