package node

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// Tracing: spans for opening a stream (sse.subscribe), each topic's replay
// (sse.replay), the shutdown drain (sse.drain) and, for entries that carry
// a traceparent field, their local fan-out (sse.deliver), linked to the
// publisher's span. With no TracerProvider configured nothing is traced and
// no attribute is even built.

const tracerName = "github.com/ssecluster/ssecluster/node"

var noopSpan = noop.Span{}

// startSpan starts a span when tracing is on; attrs is called only then.
func (n *Node) startSpan(ctx context.Context, name string, attrs func() []attribute.KeyValue) (context.Context, trace.Span) {
	if n.tracer == nil {
		return ctx, noopSpan
	}
	var opts []trace.SpanStartOption
	if attrs != nil {
		opts = append(opts, trace.WithAttributes(attrs()...))
	}
	return n.tracer.Start(ctx, name, opts...)
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// traceDeliveries records one sse.deliver span per entry that names its
// publisher's trace. Called only when tracing is on.
func (n *Node) traceDeliveries(topic string, entries []pubsub.Entry, subscribers int) {
	prop := propagation.TraceContext{}
	for i := range entries {
		e := &entries[i]
		if e.TraceParent == "" {
			continue
		}
		remote := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": e.TraceParent}))
		opts := []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(
				attribute.String("sse.topic", topic),
				attribute.String("sse.entry_id", e.ID.String()),
				attribute.Int("sse.local_subscribers", subscribers),
			),
		}
		if remote.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: remote}))
		}
		_, span := n.tracer.Start(context.Background(), "sse.deliver", opts...)
		span.End()
	}
}

func replayAttrs(topic string, after pubsub.ID) func() []attribute.KeyValue {
	return func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String("sse.topic", topic), attribute.String("sse.after", after.String())}
	}
}

func replayResult(span trace.Span, res replay.Result, sent int) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("sse.replay.source", string(res.From)), attribute.Int("sse.replay.events", sent), attribute.Bool("sse.replay.gap", res.Gap != nil))
}
