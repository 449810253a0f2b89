package main

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/minet/corral/cluster"
	"github.com/prometheus/client_golang/prometheus"
)

// raftCollector exports each membership's Raft state at scrape time.
type raftCollector struct {
	m                            *cluster.Manager
	state, term, commit, applied *prometheus.Desc
}

func newRaftCollector(m *cluster.Manager) *raftCollector {
	l := []string{"cluster"}
	return &raftCollector{m: m,
		state:   prometheus.NewDesc("corral_raft_leader", "1 if this node leads the cluster.", l, nil),
		term:    prometheus.NewDesc("corral_raft_term", "Current Raft term.", l, nil),
		commit:  prometheus.NewDesc("corral_raft_commit_index", "Last committed index.", l, nil),
		applied: prometheus.NewDesc("corral_raft_applied_index", "Last applied index.", l, nil),
	}
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.term
	ch <- c.commit
	ch <- c.applied
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	for _, g := range c.m.Groups() {
		r := g.Store.Raft()
		leader := 0.0
		if r.State() == raft.Leader {
			leader = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, leader, g.Name)
		ch <- prometheus.MustNewConstMetric(c.term, prometheus.GaugeValue, float64(r.CurrentTerm()), g.Name)
		ch <- prometheus.MustNewConstMetric(c.commit, prometheus.GaugeValue, float64(r.CommitIndex()), g.Name)
		ch <- prometheus.MustNewConstMetric(c.applied, prometheus.GaugeValue, float64(r.AppliedIndex()), g.Name)
	}
}

// raftLatency exports commit and apply latencies.
type raftLatency struct{ commit, apply *prometheus.HistogramVec }

func newRaftLatency(reg prometheus.Registerer) *raftLatency {
	b := prometheus.ExponentialBuckets(0.0001, 2, 18)
	l := &raftLatency{
		commit: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_raft_commit_seconds",
			Help: "Leader: from proposing an entry to its apply result.", Buckets: b}, []string{"cluster"}),
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_raft_apply_seconds",
			Help: "FSM time per applied batch.", Buckets: b}, []string{"cluster"}),
	}
	reg.MustRegister(l.commit, l.apply)
	return l
}

func (l *raftLatency) ObserveCommit(cluster string, d time.Duration) {
	l.commit.WithLabelValues(cluster).Observe(d.Seconds())
}

func (l *raftLatency) ObserveApply(cluster string, d time.Duration) {
	l.apply.WithLabelValues(cluster).Observe(d.Seconds())
}
