package integration

// Helpers for the cluster tests: in-process nodes on real TCP listeners fed
// by one Redis, an SSE client that resumes with Last-Event-ID as EventSource
// does, node kills, metrics and Redis command counts.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/node"
	"github.com/ssecluster/ssecluster/pubsub"
)

// nodeConfig is what startNode builds a node from; edit it with an option.
type nodeConfig struct {
	Redis pubsub.RedisConfig
	Node  node.Config
	// Broker, when set, wraps the broker the node uses, to slow or count
	// its reads.
	Broker func(*pubsub.Redis) node.Broker
	// Listen is the public listener's address; "" means a free loopback
	// port. A node restarted on the same address stays behind a proxy.
	Listen string
}

// clusterNode is one in-process node: Redis broker, replay window, node,
// and an http.Server on a loopback TCP listener, wired as cmd/ssenode does.
type clusterNode struct {
	name   string
	addr   string // host:port of the public listener
	n      *node.Node
	broker *pubsub.Redis
	reg    *prometheus.Registry
	admin  http.Handler
	srv    *http.Server
	served chan struct{} // closed when Serve returns

	mu sync.Mutex
	// conns holds every accepted public connection not yet closed by
	// net/http, hijacked ones included (the node owns those), for kill.
	conns map[net.Conn]struct{}

	down atomic.Bool // killed or stopped
}

// startNode starts a node on srv with the given key prefix. The node's
// sse_broker_bad_entries_total and sse_broker_errors_total are wired to the
// broker as in cmd/ssenode. The node is drained and closed at cleanup
// unless it was killed first.
func startNode(t testing.TB, srv *redistest.Server, prefix, name string, edit func(*nodeConfig)) *clusterNode {
	t.Helper()
	reg := prometheus.NewRegistry()
	bm := node.NewBrokerMetrics(reg)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", name)
	cfg := nodeConfig{
		Redis: pubsub.RedisConfig{
			URL:         srv.URL(),
			Prefix:      prefix,
			Logger:      log,
			OnBadEntry:  bm.BadEntry,
			OnReadError: bm.ReadError,
		},
		// These tests' clients parse like a browser, which ignores the
		// id-only block, and count on it: a stream cut before its first
		// event resumes without loss.
		Node: node.Config{Logger: log, Registerer: reg, AnnouncePosition: true},
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := pubsub.NewRedis(cfg.Redis)
	if err != nil {
		t.Fatal(err)
	}
	var nb node.Broker = b
	if cfg.Broker != nil {
		nb = cfg.Broker(b)
	}
	n, err := node.New(cfg.Node, nb)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		b.Close()
		t.Fatal(err)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	cn := &clusterNode{
		name:   name,
		addr:   ln.Addr().String(),
		n:      n,
		broker: b,
		reg:    reg,
		admin:  n.AdminHandler(reg),
		served: make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
	}
	cn.srv = &http.Server{
		Handler: n.Handler(),
		// Long enough for the storm's pre-dialed connections on a slow
		// machine; cmd/ssenode uses 10s.
		ReadHeaderTimeout: time.Minute,
		ConnState:         cn.connState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(cn.served)
		_ = cn.srv.Serve(trackingListener{ln, cn.track})
	}()
	t.Cleanup(func() { cn.stop(t) })
	return cn
}

// trackingListener hands every accepted connection, unwrapped (the node
// needs the *net.TCPConn of a hijacked stream), to track.
type trackingListener struct {
	net.Listener
	track func(net.Conn)
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.track(c)
	}
	return c, err
}

func (cn *clusterNode) track(c net.Conn) {
	cn.mu.Lock()
	cn.conns[c] = struct{}{}
	cn.mu.Unlock()
}

// connState forgets connections net/http has closed. A hijacked one stays
// tracked: net/http no longer sees it, and kill must reset it too.
func (cn *clusterNode) connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed {
		cn.mu.Lock()
		delete(cn.conns, c)
		cn.mu.Unlock()
	}
}

// stop drains the node (its streams are told to go elsewhere), closes the
// server and the broker, and waits for every handler to return.
func (cn *clusterNode) stop(t testing.TB) {
	if !cn.down.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cn.n.Drain(ctx); err != nil {
		t.Errorf("%s: drain: %v", cn.name, err)
	}
	_ = cn.srv.Close()
	<-cn.served
	if err := cn.n.Close(); err != nil { // hijacked streams and the node's goroutines
		t.Errorf("%s: close node: %v", cn.name, err)
	}
	cn.waitHandlers(t)
	if err := cn.broker.Close(); err != nil {
		t.Errorf("%s: close broker: %v", cn.name, err)
	}
}

// kill ends the node as a crash would: the listener and every open
// connection, hijacked or not, are closed at once (with SO_LINGER 0, so
// clients see a reset), and the broker is closed without a drain. It returns once the node's
// handlers have all returned, so none is left running.
func (cn *clusterNode) kill(t testing.TB) {
	t.Helper()
	if !cn.down.CompareAndSwap(false, true) {
		t.Fatalf("%s: already down", cn.name)
	}
	_ = cn.srv.Close() // the listener, and the connections net/http still holds
	cn.mu.Lock()
	for c := range cn.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	cn.mu.Unlock()
	_ = cn.broker.Close()
	_ = cn.n.Close() // stops the node's goroutines; its streams are already reset
	<-cn.served
	cn.waitHandlers(t)
}

// waitHandlers waits until the node has no open stream: its handlers have
// returned (they end once their connection or broker is gone).
func (cn *clusterNode) waitHandlers(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for cn.n.Connections() > 0 {
		if time.Now().After(deadline) {
			t.Errorf("%s: %d streams still open 10s after close", cn.name, cn.n.Connections())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readyz returns the status of GET /readyz on the node's admin handler.
func (cn *clusterNode) readyz() int {
	rec := httptest.NewRecorder()
	cn.admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code
}

// metrics returns the node's /metrics text.
func (cn *clusterNode) metrics() string {
	rec := httptest.NewRecorder()
	cn.admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// metricLines returns the node's /metrics sample lines whose name starts
// with one of names, for logs.
func (cn *clusterNode) metricLines(names ...string) []string {
	var out []string
	for _, line := range strings.Split(cn.metrics(), "\n") {
		for _, n := range names {
			if strings.HasPrefix(line, n) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// metric returns the value of the counter or gauge name whose labels
// include the given name=value pairs, summed over matching series (0 when
// none).
func (cn *clusterNode) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := cn.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// event is one SSE event as an EventSource dispatches it.
type event struct {
	ID, Event, Data string
}

// statusError is a non-200 answer to a subscribe request.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("status %d: %s", e.code, strings.TrimSpace(e.body))
}

// sseConn is one open SSE response read straight off a TCP connection, so
// that each stream has its own connection and no http.Transport goroutines
// outlive it.
type sseConn struct {
	conn   net.Conn
	body   io.ReadCloser
	r      *bufio.Reader
	stop   func() bool // stops the AfterFunc that closes conn with ctx
	line   []byte      // reused by readLine
	lastID string      // the last event ID, as EventSource keeps it
}

// eventsPath is the subscribe path for topics.
func eventsPath(topics ...string) string {
	var b strings.Builder
	b.WriteString("/events?")
	for i, t := range topics {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString("topic=")
		b.WriteString(t)
	}
	return b.String()
}

// dialTCP connects to addr within 5s.
func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// openSSE dials addr and subscribes; see startSSE.
func openSSE(ctx context.Context, addr, path, lastID string) (*sseConn, error) {
	conn, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	return startSSE(ctx, conn, addr, path, lastID)
}

// startSSE sends the subscribe request on conn and reads the response up to
// the end of the stream's opening (a blank line), so that
// when it returns the node has registered the stream. conn is closed when
// ctx ends or on error. A non-200 answer is a *statusError.
func startSSE(ctx context.Context, conn net.Conn, host, path, lastID string) (*sseConn, error) {
	c := &sseConn{conn: conn, lastID: lastID}
	c.stop = context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (*sseConn, error) {
		c.stop()
		conn.Close()
		return nil, err
	}
	// Bounds the request and the opening only; generous, as a loaded node
	// (-race, thousands of streams on two cores) may take seconds.
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n", path, host)
	if lastID != "" {
		fmt.Fprintf(&req, "Last-Event-ID: %s\r\n", lastID)
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return fail(&statusError{resp.StatusCode, string(b)})
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		resp.Body.Close()
		return fail(fmt.Errorf("content type %q", ct))
	}
	c.body = resp.Body
	c.r = bufio.NewReaderSize(resp.Body, 8<<10)
	// The opening: up to the first blank line, no event.
	e, dispatched, err := c.block()
	if err != nil {
		return fail(fmt.Errorf("reading the stream opening: %w", err))
	}
	if dispatched {
		return fail(fmt.Errorf("stream opening with an event: %+v", e))
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// close ends the stream.
func (c *sseConn) close() {
	c.stop()
	c.conn.Close()
	c.body.Close()
}

// readLine returns the next line without its "\n"; the slice is valid until
// the next call. The node splits every CR and LF of a payload into data:
// lines and ends lines with "\n" only.
func (c *sseConn) readLine() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err == nil {
		return line[:len(line)-1], nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	c.line = append(c.line[:0], line...)
	for {
		line, err = c.r.ReadSlice('\n')
		c.line = append(c.line, line...)
		if err == nil {
			return c.line[:len(c.line)-1], nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// next reads until the next event is dispatched.
func (c *sseConn) next() (event, error) {
	for {
		e, dispatched, err := c.block()
		if err != nil {
			return event{}, err
		}
		if dispatched {
			return e.event, nil
		}
	}
}

// parsedBlock is what one block of lines (up to a blank line) held.
type parsedBlock struct {
	event
	retry bool // a retry: field was seen
}

// block reads lines up to the next blank line and applies the EventSource
// rules for the fields the node sends: at the blank line the last event ID
// takes the id: field's value (even when no event is dispatched, which is
// how a server gives a client a position without an event), and an event
// is dispatched only if it had data.
func (c *sseConn) block() (b parsedBlock, dispatched bool, err error) {
	var data []byte
	haveData := false
	idBuf, haveID := "", false
	for {
		line, err := c.readLine()
		if err != nil {
			return parsedBlock{}, false, err
		}
		if len(line) == 0 {
			if haveID {
				c.lastID = idBuf
			}
			if !haveData {
				return b, false, nil
			}
			b.ID = c.lastID
			b.Data = string(data[:len(data)-1])
			return b, true, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "id":
			if !bytes.ContainsRune(value, 0) {
				idBuf, haveID = string(value), true
			}
		case "event":
			b.Event = string(value)
		case "data":
			haveData = true
			data = append(data, value...)
			data = append(data, '\n')
		case "retry":
			b.retry = true
		}
	}
}

// sseClient is a client of one stream that keeps it open as EventSource
// does: when the stream ends or breaks, it connects again (to the address
// pick gives for that attempt) with the last ID it saw as Last-Event-ID.
// It does not wait for the retry: delay (a short fixed pause instead), so
// tests run fast.
type sseClient struct {
	path string
	pick func(attempt int) string // address for the n-th connection attempt
	// keep records every event; otherwise only IDs are kept.
	keep bool
	// discard keeps no IDs either, only the count and the last ID.
	discard bool
	// onEvent, when set, sees every event on the client's goroutine.
	onEvent func(e event)
	// conn, when set, is a connection already dialed to pick(0) for the
	// first attempt, whose request waits for gate to close (nil: no wait).
	conn net.Conn
	gate <-chan struct{}

	mu       sync.Mutex
	ids      []string
	n        int // events received (gaps aside)
	events   []event
	gaps     []event
	lastID   string
	connects int      // streams opened
	fails    []string // failed attempts and broken streams, for logs
	changed  chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

// clientOpts are the optional settings of startClient.
type clientOpts struct {
	lastID  string // initial Last-Event-ID; "" means live
	keep    bool
	discard bool
	onEvent func(event)
	conn    net.Conn
	gate    <-chan struct{}
}

// startClient runs a resuming client of topics until the test ends (or
// halt), and waits until its first stream is open.
func startClient(t testing.TB, pick func(int) string, o clientOpts, topics ...string) *sseClient {
	t.Helper()
	c := newClient(pick, o, topics...)
	c.start()
	t.Cleanup(c.halt)
	c.waitConnected(t, 1, 20*time.Second)
	return c
}

func newClient(pick func(int) string, o clientOpts, topics ...string) *sseClient {
	return &sseClient{
		path:    eventsPath(topics...),
		pick:    pick,
		keep:    o.keep,
		discard: o.discard,
		onEvent: o.onEvent,
		conn:    o.conn,
		gate:    o.gate,
		lastID:  o.lastID,
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

func (c *sseClient) start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(ctx)
}

// halt stops the client and waits for its goroutine.
func (c *sseClient) halt() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
}

func (c *sseClient) run(ctx context.Context) {
	defer close(c.done)
	for attempt := 0; ctx.Err() == nil; attempt++ {
		addr := c.pick(attempt)
		c.mu.Lock()
		last := c.lastID
		c.mu.Unlock()
		var s *sseConn
		var err error
		if attempt == 0 && c.conn != nil {
			if c.gate != nil {
				select {
				case <-c.gate:
				case <-ctx.Done():
					c.conn.Close()
					return
				}
			}
			s, err = startSSE(ctx, c.conn, addr, c.path, last)
		} else {
			s, err = openSSE(ctx, addr, c.path, last)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failed(fmt.Sprintf("attempt %d to %s: %v", attempt, addr, err))
			pause(ctx, time.Duration(20+rand.IntN(30))*time.Millisecond)
			continue
		}
		c.mu.Lock()
		c.connects++
		c.lastID = s.lastID // the opening may have set it
		c.mu.Unlock()
		c.signal()
		err = c.read(s)
		s.close()
		if ctx.Err() != nil {
			return
		}
		c.failed(fmt.Sprintf("stream from %s ended: %v", addr, err))
		pause(ctx, time.Duration(5+rand.IntN(20))*time.Millisecond)
	}
}

// read records the events of one stream until it ends.
func (c *sseClient) read(s *sseConn) error {
	for {
		e, err := s.next()
		if err != nil {
			return err
		}
		if c.onEvent != nil {
			c.onEvent(e)
		}
		c.mu.Lock()
		if e.Event == "sse-gap" {
			c.gaps = append(c.gaps, e)
			if strings.Contains(e.Data, `"reset":true`) {
				// The stream's history restarted (deleted, recreated, or
				// its last ID went back in a failover): what follows is
				// checked against the new history alone.
				c.ids = c.ids[:0]
			}
		} else {
			c.n++
			if !c.discard {
				c.ids = append(c.ids, e.ID)
			}
			if c.keep {
				c.events = append(c.events, e)
			}
		}
		c.lastID = s.lastID
		c.mu.Unlock()
		c.signal()
	}
}

func (c *sseClient) failed(msg string) {
	c.mu.Lock()
	if len(c.fails) < 100 {
		c.fails = append(c.fails, msg)
	}
	c.mu.Unlock()
}

func (c *sseClient) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// snapshot returns copies of what the client has received.
func (c *sseClient) snapshot() (ids []string, events []event, gaps []event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids), slices.Clone(c.events), slices.Clone(c.gaps)
}

func (c *sseClient) connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connects
}

func (c *sseClient) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *sseClient) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastID
}

func (c *sseClient) failures() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.fails)
}

// waitFor polls cond, woken by events, until it holds or d passes.
func (c *sseClient) waitFor(d time.Duration, cond func() bool) bool {
	return pollUntil(d, 20*time.Millisecond, c.changed, cond)
}

func (c *sseClient) waitConnected(t testing.TB, n int, d time.Duration) {
	t.Helper()
	if !c.waitFor(d, func() bool { return c.connections() >= n }) {
		t.Fatalf("client %s: %d streams opened within %v, want %d; failures: %q", c.path, c.connections(), d, n, c.failures())
	}
}

// waitLast waits until the client's last ID is id.
func (c *sseClient) waitLast(t testing.TB, id string, d time.Duration) {
	t.Helper()
	if !c.waitFor(d, func() bool { return c.last() == id }) {
		t.Fatalf("client %s: last id %q after %v, want %q (%d events); failures: %q", c.path, c.last(), d, id, c.count(), c.failures())
	}
}

// always picks the same address.
func always(addr string) func(int) string { return func(int) string { return addr } }

// firstThen picks first for the first attempt and then cycles through rest.
func firstThen(first string, rest ...string) func(int) string {
	return func(attempt int) string {
		if attempt == 0 || len(rest) == 0 {
			return first
		}
		return rest[(attempt-1)%len(rest)]
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// xrangeEntries returns every entry of key as (id, data) with XRANGE, in
// pages, the ground truth a client's sequence is checked against.
func xrangeEntries(t testing.TB, srv *redistest.Server, key, from string) []event {
	t.Helper()
	var out []event
	start := from
	for {
		msgs, err := srv.Client(t).XRangeN(ctxT(t), key, start, "+", 10000).Result()
		if err != nil {
			t.Fatalf("xrange %s: %v", key, err)
		}
		for _, m := range msgs {
			e := event{ID: m.ID}
			if d, ok := m.Values["data"].(string); ok {
				e.Data = d
			}
			if ev, ok := m.Values["event"].(string); ok {
				e.Event = ev
			}
			out = append(out, e)
		}
		if len(msgs) < 10000 {
			return out
		}
		id, err := pubsub.ParseID(msgs[len(msgs)-1].ID)
		if err != nil {
			t.Fatal(err)
		}
		start = id.Next().String()
	}
}

func eventIDs(es []event) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

// checkSequence compares a client's IDs with want and describes the first
// difference: a gap, a duplicate or a reordering.
func checkSequence(got, want []string) error {
	if slices.Equal(got, want) {
		return nil
	}
	seen := make(map[string]int, len(got))
	for i, id := range got {
		if j, dup := seen[id]; dup {
			return fmt.Errorf("duplicate %s at %d and %d", id, j, i)
		}
		seen[id] = i
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Errorf("at %d: got %s, want %s (got %d events, want %d)", i, got[i], want[i], len(got), len(want))
		}
	}
	return fmt.Errorf("got %d events, want %d", len(got), len(want))
}

// commandStats reads INFO commandstats: calls per command ("xrange", ...).
func commandStats(t testing.TB, srv *redistest.Server) map[string]int64 {
	t.Helper()
	s, err := srv.Client(t).Info(ctxT(t), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	out := make(map[string]int64)
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("commandstats line %q: %v", line, err)
				}
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out
}

// statsDelta is after - before per command, and the total.
func statsDelta(before, after map[string]int64) (map[string]int64, int64) {
	d := make(map[string]int64)
	var total int64
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
			total += n
		}
	}
	return d, total
}

// rawPublisher XADDs numbered entries to key with go-redis Do (raw
// commands, not the pubsub helper) in pipelined batches on a ticker, for
// at most max entries and d; the stream is the record of what was
// published. Payloads are "<seq> <unix nanos>".
type rawPublisher struct {
	stop chan struct{}
	done chan struct{}
	sent atomic.Int64
	errs atomic.Int64
}

func startRawPublisher(t testing.TB, srv *redistest.Server, key string, every time.Duration, batch, max int, d time.Duration) *rawPublisher {
	p := &rawPublisher{stop: make(chan struct{}), done: make(chan struct{})}
	c := srv.Client(t)
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		end := time.NewTimer(d)
		defer end.Stop()
		seq := 0
		for seq < max {
			select {
			case <-p.stop:
				return
			case <-end.C:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			pipe := c.Pipeline()
			n := min(batch, max-seq)
			for range n {
				payload := strconv.Itoa(seq) + " " + strconv.FormatInt(time.Now().UnixNano(), 10)
				pipe.Do(ctx, "XADD", key, "*", "data", payload)
				seq++
			}
			cmds, _ := pipe.Exec(ctx)
			cancel()
			for _, cmd := range cmds {
				if cmd.Err() != nil {
					p.errs.Add(1)
				} else {
					p.sent.Add(1)
				}
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

func (p *rawPublisher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// wait waits for the publisher to finish on its own.
func (p *rawPublisher) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("publisher still running after %v", d)
	}
}
