// Package node serves Server-Sent Events: the HTTP handler, the local fan-out
// hub, each client's bounded queue and writer, frame encoding over pooled
// buffers, cluster membership and rebalancing, and the shutdown drain.
//
// Events come from a Broker through a single Handler; each is encoded once
// into a reference-counted frame, appended to the replay window and handed
// to every local subscriber's queue without blocking. By default an
// HTTP/1.1 stream is then taken over from net/http (pool.go): it holds no
// goroutine while idle, and a small pool of writers serves the streams that
// have frames. HTTP/2, TLS and HTTP/1.0 streams, and every stream with
// Config.NoHijack, keep their request goroutine as writer. Both drivers
// serve the one stream type and run its step (stream.go), and write frames
// by reference, a batch in one write, with a per-write deadline; every
// server-side end goes through closeStream.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// Broker is the one broker a node uses: it delivers, publishes, answers
// health checks and, as the replay.Source of the window New builds over
// it, serves replays.
type Broker interface {
	replay.Source
	// Start begins delivering the entries of watched topics to h.
	Start(h pubsub.Handler) error
	// Publish appends an event to a topic.
	Publish(ctx context.Context, topic, event string, data []byte) (pubsub.ID, error)
	// Ping reports whether the backing store is reachable.
	Ping(ctx context.Context) error
}

// Slow-client policies.
const (
	// PolicyDisconnect closes a client whose queue is full; it reconnects
	// with its Last-Event-ID and loses nothing still in the window.
	PolicyDisconnect = "disconnect"
	// PolicyDrop discards the frames a full queue cannot take, counted.
	PolicyDrop = "drop"
)

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("node: closed")

// ErrDraining is returned by Drain when called twice, and describes the
// state in which new streams are refused.
var ErrDraining = errors.New("node: draining")

// Config sets the node's behaviour. Zero values mean the documented defaults.
type Config struct {
	// ClientBuffer is the queue length in frames per client; 0 means 64.
	ClientBuffer int
	// ClientBufferBytes bounds the bytes queued per client; 0 means 1 MiB.
	ClientBufferBytes int
	// SlowClient is PolicyDisconnect (default, "") or PolicyDrop.
	SlowClient string
	// Heartbeat is the idle time after which a comment is sent; 0 means 15s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write and flush to a client; 0 means 10s.
	WriteTimeout time.Duration
	// Retry is the reconnection delay sent in the retry: field; 0 means 2s.
	Retry time.Duration
	// MaxConnections caps open streams; beyond it new ones get 503; 0 means 100000.
	MaxConnections int
	// MaxTopics caps topics per stream; 0 means 16.
	MaxTopics int
	// AnnouncePosition sends a stream that came without a position its
	// starting position, as an id: line in a block of its own, so that a
	// stream cut before its first event resumes without loss. Browsers
	// ignore such a block, as the SSE specification says, but client
	// libraries that dispatch every block (go-sse, launchdarkly, r3labs)
	// deliver it as an empty event; so false, the default, sends none
	// (see README "Position announcement").
	AnnouncePosition bool
	// AnnounceToBrowsers sends the announcement of AnnouncePosition only to
	// requests that carry Sec-Fetch-Mode, which browsers send with every
	// fetch and whose EventSource never dispatches a block without data:
	// browsers resume without loss, client libraries get no empty event.
	AnnounceToBrowsers bool
	// NoHijack keeps HTTP/1.1 streams on the net/http path (a goroutine and
	// net/http's buffers per stream) instead of taking the connection over.
	NoHijack bool
	// SocketSendBuffer caps each hijacked stream's kernel send buffer
	// (SO_SNDBUF), so a slow client's backlog waits in its bounded queue
	// where policy applies; 0 leaves the kernel's default.
	SocketSendBuffer int
	// Auth, when set, decides who may subscribe to what (JWTAuth
	// requires a JWT granting the topics): 401 without valid credentials,
	// 403 for a topic not granted. nil lets anyone subscribe to anything.
	Auth Authorizer
	// PublishToken, when set, is the bearer token POST /publish requires;
	// "" leaves publishing open to whoever reaches the admin listener.
	PublishToken string
	// CORSOrigins lists the origins (scheme://host[:port], or "*") whose
	// pages may subscribe; requests from other origins get 403. Empty sends
	// no CORS headers at all.
	CORSOrigins []string
	// MaxConnectionsPerIP caps open streams per client address (an IPv6
	// /64); beyond it new ones get 429. 0 means no cap.
	MaxConnectionsPerIP int
	// TrustedProxies are the load balancers whose X-Forwarded-For names
	// the client address MaxConnectionsPerIP counts; nil trusts none.
	TrustedProxies []netip.Prefix
	// TracerProvider traces streams, replays, drains and deliveries of
	// entries that carry a traceparent; nil traces nothing, at no cost.
	TracerProvider trace.TracerProvider
	// Window configures the replay window the node keeps over its broker.
	Window replay.Config
	// Logger receives the node's logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the node's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.ClientBuffer, 64)
	def(&c.ClientBufferBytes, 1<<20)
	def(&c.MaxConnections, 100000)
	def(&c.MaxTopics, 16)
	defDur(&c.Heartbeat, 15*time.Second)
	defDur(&c.WriteTimeout, 10*time.Second)
	defDur(&c.Retry, 2*time.Second)
	if c.SlowClient == "" {
		c.SlowClient = PolicyDisconnect
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.ClientBuffer < 1:
		return fmt.Errorf("node: client buffer %d: must be at least 1", c.ClientBuffer)
	case c.ClientBufferBytes < 1:
		return fmt.Errorf("node: client buffer bytes %d: must be positive", c.ClientBufferBytes)
	case c.MaxConnections < 1:
		return fmt.Errorf("node: max connections %d: must be positive", c.MaxConnections)
	case c.MaxTopics < 1 || c.MaxTopics > replay.MaxTopics:
		return fmt.Errorf("node: max topics %d: must be between 1 and %d (the longest Last-Event-ID a client may send back)", c.MaxTopics, replay.MaxTopics)
	case c.Heartbeat < 0 || c.WriteTimeout < 0 || c.Retry < 0:
		return fmt.Errorf("node: heartbeat %v, write timeout %v, retry %v: must not be negative", c.Heartbeat, c.WriteTimeout, c.Retry)
	case c.MaxConnectionsPerIP < 0:
		return fmt.Errorf("node: max connections per IP %d: must not be negative", c.MaxConnectionsPerIP)
	case c.SlowClient != PolicyDisconnect && c.SlowClient != PolicyDrop:
		return fmt.Errorf("node: slow client policy %q: want %q or %q", c.SlowClient, PolicyDisconnect, PolicyDrop)
	}
	return nil
}

// Node is one SSE server: it serves /events from a broker through a replay
// window. Create it with New, call Start, serve Handler and AdminHandler,
// and on shutdown call Drain.
type Node struct {
	cfg    Config // immutable after New
	broker Broker
	window *replay.Window
	shared sharedFrames // large replayed entries, encoded once
	hub    *hub
	m      *metrics
	log    *slog.Logger
	cors   *cors      // nil without CORSOrigins
	perIP  *ipLimiter // nil without MaxConnectionsPerIP

	conns    atomic.Int64   // open streams
	streams  streamRegistry // every open stream, for shedding and age limits
	draining atomic.Bool
	life     sync.Mutex // orders Start and Close
	started  atomic.Bool
	closed   atomic.Bool

	cluster atomic.Pointer[Cluster] // set by NewCluster; nil without one

	tracer trace.Tracer    // nil when tracing is off
	pool   *writerPool     // the hijacked streams' writers; nil with NoHijack
	ctx    context.Context // ends with Close; replays of hijacked streams run under it
	cancel context.CancelFunc
}

// New validates cfg and returns a node that serves events from b, through
// a replay window of its own over the same broker.
func New(cfg Config, b Broker) (*Node, error) {
	if b == nil {
		return nil, errors.New("node: a broker is required")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c, err := newCORS(cfg.CORSOrigins)
	if err != nil {
		return nil, err
	}
	var perIP *ipLimiter
	if cfg.MaxConnectionsPerIP > 0 {
		perIP = newIPLimiter(cfg.MaxConnectionsPerIP, cfg.TrustedProxies)
	}
	w, err := replay.New(b, cfg.Window)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var tracer trace.Tracer
	if cfg.TracerProvider != nil {
		tracer = cfg.TracerProvider.Tracer(tracerName)
	}
	return &Node{
		tracer: tracer,
		cors:   c,
		perIP:  perIP,
		cfg:    cfg,
		broker: b,
		window: w,
		hub:    newHub(),
		m:      newMetrics(cfg.Registerer),
		log:    cfg.Logger,
		ctx:    ctx,
		cancel: cancel,
	}, nil
}

// Start connects the node to its broker's deliveries. Call it once.
func (n *Node) Start() error {
	n.life.Lock()
	defer n.life.Unlock()
	if n.closed.Load() {
		return ErrClosed
	}
	if !n.started.CompareAndSwap(false, true) {
		return errors.New("node: already started")
	}
	if !n.cfg.NoHijack {
		p, err := newWriterPool(n)
		if err != nil {
			return err
		}
		n.pool = p
	}
	if err := n.broker.Start(n.deliver); err != nil {
		return fmt.Errorf("node: start broker: %w", err)
	}
	return nil
}

// Close stops the node's own goroutines and closes the hijacked streams
// still open, including those still replaying on their request goroutine
// (Drain first to let them move gracefully). Streams on the net/http path
// end when their server closes their connections. It waits for everything
// it started and is safe to call more than once; Start after Close fails
// with ErrClosed.
func (n *Node) Close() error {
	n.life.Lock()
	defer n.life.Unlock()
	if !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	n.cancel()
	if n.pool != nil {
		n.pool.close()
	}
	return nil
}

// deliver is the broker's Handler: window first, so that a client that
// registers after this point finds the entries in the ring, then fan-out.
// No entries is the broker's reset signal (see pubsub.Handler).
func (n *Node) deliver(topic string, entries []pubsub.Entry) {
	if len(entries) == 0 {
		n.reset(topic)
		return
	}
	prev := n.window.Append(topic, entries)
	n.m.brokerEvents.Add(float64(len(entries)))
	now := time.Now()
	for i := range entries {
		n.m.readLag.Observe(now.Sub(entries[i].Time()).Seconds())
	}
	var stack [8]*frame
	frames := encodeFrames(stack[:0], topic, prev, entries)
	subs := n.hub.fanout(topic, frames, n.refused)
	if n.tracer != nil {
		n.traceDeliveries(topic, entries, subs)
	}
	for _, f := range frames {
		f.Release()
	}
}

// reset reacts to topic's stream moving under the broker's reader: the
// window forgets the topic, then every local stream of it is closed
// (closeStream), so that clients resume with their Last-Event-ID and the
// replay tells them of the gap (with reset) before the new history. Those
// that end for that reason are counted as slow-client disconnects of
// reason stream_reset too (finish), which the alerts leave out.
func (n *Node) reset(topic string) {
	n.log.Warn("node: stream reset under the reader; resuming its clients", "topic", topic)
	n.window.Reset(topic)
	for _, s := range n.hub.subscribers(nil, topic) {
		n.closeStream(s, reasonStreamReset)
	}
}

func (n *Node) refused(_ *stream, o overflow) {
	if n.cfg.SlowClient == PolicyDrop {
		n.m.dropped.WithLabelValues(o.reason()).Inc()
	}
}

// WindowStats is the replay window's use of its budgets.
func (n *Node) WindowStats() replay.Stats { return n.window.Stats() }

// Connections is the number of open streams.
func (n *Node) Connections() int { return int(n.conns.Load()) }

// Draining reports whether Drain has started.
func (n *Node) Draining() bool { return n.draining.Load() }

// Ready reports nil when the node takes new streams: not draining and the
// broker reachable.
func (n *Node) Ready(ctx context.Context) error {
	if n.draining.Load() {
		return ErrDraining
	}
	if err := n.broker.Ping(ctx); err != nil {
		n.m.brokerUp.Set(0)
		return fmt.Errorf("node: broker: %w", err)
	}
	n.m.brokerUp.Set(1)
	return nil
}

// Drain fails readiness, refuses new streams and closes every open stream
// as closeStream does, so its client reconnects elsewhere (after the
// jittered retry: it had with its first event), then waits until
// all streams are gone or ctx ends. It is safe to call more than once.
func (n *Node) Drain(ctx context.Context) (err error) {
	_, span := n.startSpan(ctx, "sse.drain", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int64("sse.streams", n.conns.Load())}
	})
	defer func() { endSpan(span, err) }()
	if !n.draining.Swap(true) {
		n.m.draining.Set(1)
	}
	// Every stream's writer sees the drain at its next step.
	n.streams.each((*stream).wake)
	// Poll rather than wait in a goroutine that could outlive ctx.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n.conns.Load() > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("node: drain with %d streams open: %w", n.conns.Load(), ctx.Err())
		}
	}
	return nil
}
