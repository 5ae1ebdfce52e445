package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssecluster/ssecluster/replay"
)

// evictReasons are the reasons replay.Stats counts ring evictions by.
var evictReasons = []string{"size", "age", "stream", "budget"}

// registerReplayMetrics registers the replay window's budgets and their
// use, read from stats (the node's window) at scrape time: nothing on the
// hot path.
func registerReplayMetrics(reg prometheus.Registerer, stats func() replay.Stats) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_ring_bytes", Help: "Bytes held by the replay rings of all topics (data, event, traceparent and 72 per entry).",
		}, func() float64 { return float64(stats().RingBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_ring_budget_bytes", Help: "SSE_RING_BYTES: the budget of all replay rings.",
		}, func() float64 { return float64(stats().RingBudget) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_replay_cache_bytes", Help: "Bytes held by the Redis pages kept for resumes (same entry count as rings).",
		}, func() float64 { return float64(stats().PageCacheBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_replay_cache_budget_bytes", Help: "SSE_REPLAY_CACHE_BYTES: the budget of the Redis pages kept for resumes.",
		}, func() float64 { return float64(stats().PageCacheBudget) }),
	)
	for _, reason := range evictReasons {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "sse_ring_evictions_total",
			Help:        "Entries that left the replay rings of watched topics, by reason: size (SSE_RING_SIZE), age (SSE_REPLAY_MAXAGE), stream (trimmed or deleted in Redis), budget (SSE_RING_BYTES).",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(stats().Evicted[reason]) }))
	}
}
