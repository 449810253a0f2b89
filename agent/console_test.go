package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFollowAcrossRestarts: a console client attached before a cold boot
// truncates the serial log, or before the log is recreated, still sees
// what the next boot prints.
func TestFollowAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.log")
	if err := os.WriteFile(path, []byte("boot 1 GUEST-READY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	done := make(chan error, 1)
	// On any exit: stop follow, wait for it, then close what it holds.
	defer func() {
		cancel()
		<-done
		f.Close()
	}()
	var mu sync.Mutex
	var got strings.Builder
	seen := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(got.String(), s)
	}
	go func() {
		done <- follow(ctx, &f, path, func(b []byte) error {
			mu.Lock()
			got.Write(b)
			mu.Unlock()
			return nil
		})
	}()
	wait := func(s string) {
		t.Helper()
		for !seen(s) {
			select {
			case <-ctx.Done():
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("never saw %q; got:\n%s", s, got.String())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	wait("boot 1 GUEST-READY")
	appendTo := func(s string) {
		t.Helper()
		w, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteString(s); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	appendTo("count 1\ncount 2\n")
	wait("count 2")
	// Cold boot: truncated, then a shorter history than what was read.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	appendTo("boot 2\n")
	wait("boot 2")
	// Recreated (a new file at the same path).
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte("boot 3 GUEST-READY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	wait("boot 3 GUEST-READY")
	cancel()
	err = <-done
	done <- err // for the deferred wait
	if err != nil {
		t.Fatal(err)
	}
}
