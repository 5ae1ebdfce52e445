package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// TestReplayMetrics: the window's budgets and their use are exported as
// the sse_ring_ and sse_replay_cache_ metrics, read at scrape time.
func TestReplayMetrics(t *testing.T) {
	ctx := context.Background()
	b, err := pubsub.NewMemory(pubsub.MemoryConfig{MaxLen: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	// A ring budget below one entry: every entry is evicted by budget.
	w, err := replay.New(b, replay.Config{RingBytes: 50, PageCacheBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(func(topic string, entries []pubsub.Entry) { w.Append(topic, entries) }); err != nil {
		t.Fatal(err)
	}
	if err := w.Acquire(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	defer w.Release("t")
	id, err := b.Publish(ctx, "t", "", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; { // the reader delivers it
		if last, _ := w.Last("t"); last == id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("entry never delivered")
		}
		time.Sleep(time.Millisecond)
	}
	reg := prometheus.NewRegistry()
	registerReplayMetrics(reg, w.Stats)
	want := `
# HELP sse_ring_budget_bytes SSE_RING_BYTES: the budget of all replay rings.
# TYPE sse_ring_budget_bytes gauge
sse_ring_budget_bytes 50
# HELP sse_ring_bytes Bytes held by the replay rings of all topics (data, event, traceparent and 72 per entry).
# TYPE sse_ring_bytes gauge
sse_ring_bytes 0
# HELP sse_replay_cache_budget_bytes SSE_REPLAY_CACHE_BYTES: the budget of the Redis pages kept for resumes.
# TYPE sse_replay_cache_budget_bytes gauge
sse_replay_cache_budget_bytes 4096
# HELP sse_replay_cache_bytes Bytes held by the Redis pages kept for resumes (same entry count as rings).
# TYPE sse_replay_cache_bytes gauge
sse_replay_cache_bytes 0
# HELP sse_ring_evictions_total Entries that left the replay rings of watched topics, by reason: size (SSE_RING_SIZE), age (SSE_REPLAY_MAXAGE), stream (trimmed or deleted in Redis), budget (SSE_RING_BYTES).
# TYPE sse_ring_evictions_total counter
sse_ring_evictions_total{reason="age"} 0
sse_ring_evictions_total{reason="budget"} 1
sse_ring_evictions_total{reason="size"} 0
sse_ring_evictions_total{reason="stream"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
