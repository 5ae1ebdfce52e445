package node

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	tn := newTestNode(t, testOpts{cfg: Config{TracerProvider: tp}})
	tn.publish(t, "tr", "", "old")
	c := dial(t, tn.srv.URL+"/events?topic=tr", "0")
	c.next(t)

	// An entry that names its publisher's trace: the delivery span links it.
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	tn.deliver("tr", []pubsub.Entry{{ID: pubsub.ID{Ms: uint64(time.Now().UnixMilli()), Seq: 9}, Data: []byte("x"),
		TraceParent: "00-" + traceID + "-00f067aa0ba902b7-01"}})
	c.next(t)

	eventually(t, 5*time.Second, "spans", func() bool {
		names := map[string]bool{}
		for _, s := range rec.Ended() {
			names[s.Name()] = true
		}
		return names["sse.subscribe"] && names["sse.replay"] && names["sse.deliver"]
	})
	for _, s := range rec.Ended() {
		if s.Name() != "sse.deliver" {
			continue
		}
		if len(s.Links()) != 1 || s.Links()[0].SpanContext.TraceID().String() != traceID {
			t.Fatalf("deliver span links %v, want the publisher's trace %s", s.Links(), traceID)
		}
	}
}

// Tracing off costs nothing on the fan-out path.
func TestNoTracingNoAllocs(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	entries := []pubsub.Entry{{ID: pubsub.ID{Ms: 1, Seq: 1}, Data: []byte("x"), TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	if tn.tracer != nil {
		t.Fatal("tracer set without a TracerProvider")
	}
	if raceEnabled {
		// Frames come from a sync.Pool, which -race empties at random;
		// make test also runs this test without -race.
		t.Log("allocation count checked only without -race")
		return
	}
	allocs := testing.AllocsPerRun(100, func() { tn.deliver("nobody", entries) })
	if allocs != 0 {
		t.Fatalf("deliver with tracing off: %v allocs", allocs)
	}
}
