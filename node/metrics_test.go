package node

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBrokerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewBrokerMetrics(reg)
	m.BadEntry("a", "no_data")
	m.BadEntry("b", "no_data")
	m.BadEntry("a", "wrong_type")
	m.ReadError(errors.New("connection refused"))
	want := `
# HELP sse_broker_bad_entries_total Stream entries or keys the broker could not use, by reason.
# TYPE sse_broker_bad_entries_total counter
sse_broker_bad_entries_total{reason="no_data"} 2
sse_broker_bad_entries_total{reason="wrong_type"} 1
# HELP sse_broker_errors_total Errors reading from Redis (each followed by a backoff).
# TYPE sse_broker_errors_total counter
sse_broker_errors_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestDeliveryLag: sse_delivery_lag_seconds counts each write of live
// events, timed from the oldest one's ID, and never a replay (its events
// are old by design).
func TestDeliveryLag(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	first := tn.publish(t, "lag", "", "one")
	tn.publish(t, "lag", "", "two")
	tn.publish(t, "lag", "", "three")
	c := dial(t, tn.srv.URL+"/events?topic=lag", first.String())
	for _, want := range []string{"two", "three"} {
		if e := c.next(t); e.Data != want {
			t.Fatalf("replay: got %q, want %q", e.Data, want)
		}
	}
	lag := func() (uint64, float64) {
		mfs, err := tn.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "sse_delivery_lag_seconds" {
				h := mf.GetMetric()[0].GetHistogram()
				return h.GetSampleCount(), h.GetSampleSum()
			}
		}
		t.Fatal("sse_delivery_lag_seconds not registered")
		return 0, 0
	}
	if n, _ := lag(); n != 0 {
		t.Fatalf("after a replay of 2 events: %d writes counted, want 0", n)
	}
	tn.publish(t, "lag", "", "four")
	if e := c.next(t); e.Data != "four" {
		t.Fatalf("live: got %q, want four", e.Data)
	}
	// The count follows the write, which the client may see end first.
	eventually(t, 5*time.Second, "one live write counted", func() bool { n, _ := lag(); return n == 1 })
	if _, sum := lag(); sum < 0 || sum > 5 {
		t.Fatalf("lag of one live event written at once: %.3f s", sum)
	}
	// Buckets fine enough to tell fan-out latencies apart that differ by
	// less than a factor of two (bench/run.sh reads S2's p99 from them).
	b := deliveryLagBuckets
	if b[0] > 1e-3 || b[len(b)-1] < 5 {
		t.Fatalf("buckets span %g-%g s, want 1 ms to 5 s at least", b[0], b[len(b)-1])
	}
	for i := 1; i < len(b); i++ {
		if b[i]/b[i-1] > 1.2001 {
			t.Fatalf("buckets %g and %g are %.2f apart, want at most 1.2", b[i-1], b[i], b[i]/b[i-1])
		}
	}
}
