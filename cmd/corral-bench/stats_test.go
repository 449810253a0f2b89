package main

import (
	"strings"
	"testing"
	"time"

	pb "github.com/minet/corral/proto/corral/v1"
)

func TestPercentileAndMedian(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reversed: the functions must sort
	}
	tests := []struct {
		name          string
		in            []time.Duration
		p50, p99, med time.Duration
	}{
		{"empty", nil, 0, 0, 0},
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"even", ms(4, 1, 3, 2), 2 * time.Millisecond, 4 * time.Millisecond, 2500 * time.Microsecond},
		{"odd", ms(5, 1, 9), 5 * time.Millisecond, 9 * time.Millisecond, 5 * time.Millisecond},
		{"hundred", ms(hundred...), 50 * time.Millisecond, 99 * time.Millisecond, 50500 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.in, 50); got != tt.p50 {
				t.Errorf("p50 = %v, want %v", got, tt.p50)
			}
			if got := percentile(tt.in, 99); got != tt.p99 {
				t.Errorf("p99 = %v, want %v", got, tt.p99)
			}
			if got := median(tt.in); got != tt.med {
				t.Errorf("median = %v, want %v", got, tt.med)
			}
		})
	}
}

func TestParseDowntime(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want time.Duration
		ok   bool
	}{
		{"virsh", "Job type:         Completed\nTime elapsed:     1290         ms\nTotal downtime:   41           ms\nDowntime w/o network: 38 ms\n", 41 * time.Millisecond, true},
		{"missing", "Job type:         None\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDowntime(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("parseDowntime = %v, %v; want %v, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseBoot(t *testing.T) {
	out := "Connected to ha\nGUEST-READY\r\nBENCH boot=0b9a6d0e-3c0e-4d55-9a3f-2a1c6f7d8e90 uptime=3.52 BENCH-READY\r\ncount 0\r\n"
	id, up, ok := parseBoot(out)
	if !ok || id != "0b9a6d0e-3c0e-4d55-9a3f-2a1c6f7d8e90" || up != 3520*time.Millisecond {
		t.Fatalf("parseBoot = %q, %v, %v", id, up, ok)
	}
	if _, _, ok := parseBoot("GUEST-READY\n"); ok {
		t.Fatal("parseBoot found a boot line in output without one")
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP corral_raft_commit_seconds x
corral_raft_commit_seconds_sum{cluster="bench"} 1.5
corral_raft_commit_seconds_count{cluster="bench"} 300
corral_raft_commit_seconds_count{cluster="other"} 7
corral_api_call_seconds_count{method="UpdateSettings"} 2e+03
`
	_, apiCount, commitSum, commitCount, batches := raftSeries("bench")
	got, err := parseMetrics(strings.NewReader(text), apiCount, commitSum, commitCount, batches)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{apiCount: 2000, commitSum: 1.5, commitCount: 300}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestFailoverTimeline(t *testing.T) {
	crash := time.Unix(1000, 0)
	at := func(d time.Duration) int64 { return crash.Add(d).UnixNano() }
	events := []*pb.Event{
		{TimeUnixNano: at(-time.Minute), Action: "node.health", Target: "n1", Result: "down"}, // an earlier run
		{TimeUnixNano: at(3 * time.Second), Action: "node.health", Target: "n1", Result: "suspect"},
		{TimeUnixNano: at(3 * time.Second), Action: "node.health", Target: "n2", Result: "suspect"}, // another node
		{TimeUnixNano: at(5 * time.Second), Action: "node.health", Target: "n1", Result: "down"},
		{TimeUnixNano: at(5500 * time.Millisecond), Action: "ha.fence", Target: "n1", Result: "ok"},
		{TimeUnixNano: at(5600 * time.Millisecond), Action: "ha.restart", Target: "ha", Result: "ok"},
		{TimeUnixNano: at(6 * time.Second), Action: "vm.state", Target: "ha", Result: "starting"},
		{TimeUnixNano: at(7 * time.Second), Action: "vm.state", Target: "ha", Result: "running"},
		{TimeUnixNano: at(9 * time.Second), Action: "vm.state", Target: "ha", Result: "running"},
	}
	got := failoverTimeline(events, crash, "n1", "ha")
	want := map[string]time.Duration{"suspect": 3 * time.Second, "down": 5 * time.Second, "fenced": 5500 * time.Millisecond,
		"restart": 5600 * time.Millisecond, "running": 7 * time.Second}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
}
