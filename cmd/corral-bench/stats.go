package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// percentile is the nearest-rank percentile p (0 < p <= 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100+0.999999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// median is the middle value, or the mean of the two middle ones.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// list renders durations as "1.2s 1.3s …" in the order measured.
func list(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = secs(d)
	}
	return strings.Join(parts, " ")
}

// secs renders a duration in seconds with 0.1 s precision (1 ms below 1 s).
func secs(d time.Duration) string {
	if d < time.Second {
		return ms(d)
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// ms renders a duration in milliseconds with two decimals under 10 ms.
func ms(d time.Duration) string {
	m := float64(d) / float64(time.Millisecond)
	if m < 10 {
		return fmt.Sprintf("%.2fms", m)
	}
	return fmt.Sprintf("%.0fms", m)
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
