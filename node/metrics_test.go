package node

import (
	"errors"
	"strings"
	"testing"

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
