package node

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus collectors (DESIGN "Observability").
type metrics struct {
	connections     prometheus.Gauge
	connTotal       *prometheus.CounterVec // by outcome
	disconnects     *prometheus.CounterVec // by reason
	slowDisconnects *prometheus.CounterVec // by reason
	brokerEvents    prometheus.Counter
	delivered       prometheus.Counter
	dropped         *prometheus.CounterVec // by reason
	flush           prometheus.Histogram
	queueDepth      prometheus.Histogram
	replayRequests  *prometheus.CounterVec // by source
	replayEvents    prometheus.Counter
	readLag         prometheus.Histogram
	deliveryLag     prometheus.Histogram
	draining        prometheus.Gauge
	brokerUp        prometheus.Gauge
}

// Connection outcomes and disconnect reasons, as label values.
const (
	outcomeAccepted     = "accepted"
	outcomeBadRequest   = "bad_request"
	outcomeFull         = "rejected_full"
	outcomeDraining     = "rejected_draining"
	outcomeUnavailable  = "broker_unavailable"
	outcomeUnauthorized = "unauthorized"
	outcomeForbidden    = "forbidden"
	outcomeIPLimit      = "rejected_ip_limit"
	outcomeCORS         = "cors_refused"
	outcomeClientGone   = "client_gone"

	reasonClientGone   = "client_gone"
	reasonWriteError   = "write_error"
	reasonWriteTimeout = "write_timeout"
	reasonSlowClient   = "slow_client"
	reasonDrain        = "drain"
	reasonTokenExpired = "token_expired"
	reasonStreamReset  = "stream_reset"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections:     newGauge("sse_connections", "Open SSE streams on this node."),
		connTotal:       newCounterVec("sse_connections_total", "SSE subscribe requests by outcome.", "outcome"),
		disconnects:     newCounterVec("sse_disconnects_total", "Closed SSE streams by reason.", "reason"),
		slowDisconnects: newCounterVec("sse_slow_client_disconnects_total", "Streams closed because the client could not keep up, by reason.", "reason"),
		brokerEvents:    newCounter("sse_broker_events_total", "Entries received from the broker for local topics."),
		delivered:       newCounter("sse_frames_delivered_total", "Frames written to clients (live and replayed)."),
		dropped:         newCounterVec("sse_frames_dropped_total", "Frames a client queue refused under the drop policy, by reason.", "reason"),
		flush:           newHistogram("sse_flush_duration_seconds", "Time to write and flush one batch of frames to a client.", prometheus.ExponentialBuckets(100e-6, 2, 10)),
		queueDepth:      newHistogram("sse_queue_depth", "Frames waiting in a client queue when its writer takes them.", []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}),
		replayRequests:  newCounterVec("sse_replay_requests_total", "Resumes by the source that served them (ring, redis) and gaps reported.", "source"),
		replayEvents:    newCounter("sse_replay_events_total", "Events sent to clients from replay."),
		readLag:         newHistogram("sse_broker_read_lag_seconds", "Time from an entry's ID timestamp to its local fan-out.", prometheus.ExponentialBuckets(250e-6, 2, 16)),
		deliveryLag:     newHistogram("sse_delivery_lag_seconds", "Time from the ID timestamp of the oldest live event in a write to a client to the end of that write.", deliveryLagBuckets),
		draining:        newGauge("sse_draining", "1 while the node drains for shutdown."),
		brokerUp:        newGauge("sse_broker_up", "1 when the last broker health check succeeded."),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.connTotal, m.disconnects, m.slowDisconnects,
			m.brokerEvents, m.delivered, m.dropped, m.flush, m.queueDepth,
			m.replayRequests, m.replayEvents, m.readLag, m.deliveryLag, m.draining, m.brokerUp)
	}
	// Pre-create the label sets dashboards and alerts look for.
	for _, o := range []string{outcomeAccepted, outcomeBadRequest, outcomeFull, outcomeDraining, outcomeUnavailable, outcomeUnauthorized, outcomeForbidden, outcomeIPLimit} {
		m.connTotal.WithLabelValues(o)
	}
	for _, r := range []string{reasonClientGone, reasonWriteError, reasonWriteTimeout, reasonSlowClient, reasonDrain} {
		m.disconnects.WithLabelValues(r)
	}
	for _, r := range []string{"queue_frames", "queue_bytes", reasonWriteTimeout, reasonStreamReset} {
		m.slowDisconnects.WithLabelValues(r)
	}
	for _, r := range []string{"queue_frames", "queue_bytes"} {
		m.dropped.WithLabelValues(r)
	}
	for _, s := range []string{"ring", "redis", "gap"} {
		m.replayRequests.WithLabelValues(s)
	}
	return m
}

// BrokerMetrics counts what a broker reports through its callbacks
// (pubsub.RedisConfig's OnBadEntry and OnReadError). The broker knows
// nothing of Prometheus; the node owns the metric names.
type BrokerMetrics struct {
	badEntries *prometheus.CounterVec
	readErrors prometheus.Counter
}

// NewBrokerMetrics creates sse_broker_bad_entries_total and
// sse_broker_errors_total and registers them on reg when it is not nil
// (panicking on a name registered twice, as the node's own metrics do).
func NewBrokerMetrics(reg prometheus.Registerer) *BrokerMetrics {
	m := &BrokerMetrics{
		badEntries: newCounterVec("sse_broker_bad_entries_total", "Stream entries or keys the broker could not use, by reason.", "reason"),
		readErrors: newCounter("sse_broker_errors_total", "Errors reading from Redis (each followed by a backoff)."),
	}
	if reg != nil {
		reg.MustRegister(m.badEntries, m.readErrors)
	}
	return m
}

// BadEntry counts an entry or key of topic that the broker could not use.
func (m *BrokerMetrics) BadEntry(topic, reason string) { m.badEntries.WithLabelValues(reason).Inc() }

// ReadError counts a failed read from the broker.
func (m *BrokerMetrics) ReadError(error) { m.readErrors.Inc() }

func newGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func newCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func newCounterVec(name, help, label string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
}

// deliveryLagBuckets run from 1 ms (the IDs' resolution) to 7.6 s in steps
// of 20 %: fan-out latencies of tens of milliseconds differ by less than
// a factor of two, and quantiles read from powers of two could not tell
// them apart.
var deliveryLagBuckets = prometheus.ExponentialBuckets(1e-3, 1.2, 50)

func newHistogram(name, help string, buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}
