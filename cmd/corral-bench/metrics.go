package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// scrape reads the Prometheus text of a corrald's /metrics through dial
// (from inside a lab host) and returns the value of every sample named in
// want (a series name with its labels, as printed).
func scrape(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, want ...string) (map[string]float64, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	return parseMetrics(resp.Body, want...)
}

func parseMetrics(r io.Reader, want ...string) (map[string]float64, error) {
	out := map[string]float64{}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") || !wanted[line[:i]] {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// raftSeries are the leader-side series that split a write's latency.
func raftSeries(cluster string) (apiSum, apiCount, commitSum, commitCount, batches string) {
	c := `{cluster="` + cluster + `"}`
	return `corral_api_call_seconds_sum{method="UpdateSettings"}`, `corral_api_call_seconds_count{method="UpdateSettings"}`,
		"corral_raft_commit_seconds_sum" + c, "corral_raft_commit_seconds_count" + c, "corral_raft_apply_seconds_count" + c
}

// fetchProfile saves a CPU profile of d from the pprof handler at addr.
func fetchProfile(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, d time.Duration, path string) error {
	hc := &http.Client{Timeout: d + 10*time.Second, Transport: &http.Transport{DialContext: dial}}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", addr, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
