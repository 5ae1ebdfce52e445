package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// Handler returns the public handler: GET /events.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/events", n.ServeEvents)
	return mux
}

// subscribeRequest is a parsed and validated GET /events.
type subscribeRequest struct {
	topics []string
	pos    []pubsub.ID
	resume bool   // a position was given
	whole  []bool // topics asking for the whole window (replay.WholeWindow)
}

// parseSubscribe validates the topics and the resume position. Its errors
// are meant for the client, as the body of a 400.
func (n *Node) parseSubscribe(r *http.Request) (subscribeRequest, error) {
	// Count before parsing: a hostile query of thousands of parameters
	// costs a scan, not thousands of allocations.
	if k := strings.Count(r.URL.RawQuery, "&") + 1; k > n.cfg.MaxTopics+maxOtherParams {
		if t := strings.Count(r.URL.RawQuery, "topic="); t > n.cfg.MaxTopics {
			return subscribeRequest{}, fmt.Errorf("too many topics: %d, at most %d", t, n.cfg.MaxTopics)
		}
		return subscribeRequest{}, fmt.Errorf("too many query parameters: %d, at most %d", k, n.cfg.MaxTopics+maxOtherParams)
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return subscribeRequest{}, fmt.Errorf("bad query: %w", err)
	}
	topics := q["topic"]
	if len(topics) == 0 {
		return subscribeRequest{}, errors.New("missing topic parameter: use /events?topic=NAME")
	}
	if len(topics) > n.cfg.MaxTopics {
		return subscribeRequest{}, fmt.Errorf("too many topics: %d, at most %d", len(topics), n.cfg.MaxTopics)
	}
	for i, t := range topics {
		if err := pubsub.ValidateTopic(t); err != nil {
			return subscribeRequest{}, fmt.Errorf("bad topic %q: %w", truncate(t, 64), err)
		}
		for _, u := range topics[:i] {
			if u == t {
				return subscribeRequest{}, fmt.Errorf("bad topic %q: given twice", t)
			}
		}
	}
	raw := r.Header.Get("Last-Event-ID")
	if raw == "" {
		raw = q.Get("lastEventId")
	}
	pos, ok, err := replay.ParseLastEventID(raw, len(topics))
	if err != nil {
		return subscribeRequest{}, fmt.Errorf("bad Last-Event-ID %q: %w", truncate(raw, 64), err)
	}
	if !ok {
		pos = make([]pubsub.ID, len(topics))
	}
	req := subscribeRequest{topics: topics, pos: pos, resume: ok}
	if ok {
		req.whole = replay.WholeWindow(raw, len(topics))
	}
	return req, nil
}

// maxOtherParams is how many query parameters besides topic a subscribe
// may carry (lastEventId, access_token, a client's cache buster...).
const maxOtherParams = 16

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ServeEvents serves one SSE stream: validate, admit, subscribe to live,
// replay from the requested position, then write live frames until the
// client leaves, falls behind, or the node drains.
func (n *Node) ServeEvents(w http.ResponseWriter, r *http.Request) {
	if n.cors != nil {
		if next, refused := n.cors.handle(w, r); !next {
			if refused {
				n.m.connTotal.WithLabelValues(outcomeCORS).Inc()
			}
			return // preflight answered, or origin refused
		}
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	req, err := n.parseSubscribe(r)
	if err != nil {
		n.m.connTotal.WithLabelValues(outcomeBadRequest).Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var expires time.Time // zero: the stream does not expire
	if n.cfg.Auth != nil {
		if expires, err = n.cfg.Auth.Authorize(r, req.topics); err != nil {
			n.denied(w, err)
			return
		}
	}
	if n.draining.Load() {
		n.reject(w, outcomeDraining, "node is draining: reconnect to another node")
		return
	}
	admitted, ok := n.admit(w, r, req.topics)
	if !ok {
		return
	}
	if !req.resume {
		// Live from now: everything after what the window has seen. Taken
		// before registering, so an entry fanned out in between is replayed
		// rather than missed; the writer drops what it has already sent.
		for i, t := range req.topics {
			req.pos[i], _ = n.window.Last(t)
		}
	}
	s := &stream{
		topics:   req.topics,
		slots:    make([]int, len(req.topics)),
		pos:      req.pos,
		admitted: admitted,
		announce: !req.resume && (n.cfg.AnnouncePosition || n.cfg.AnnounceToBrowsers && r.Header.Get("Sec-Fetch-Mode") != ""),
		whole:    req.whole,
		retry:    n.retryLine(),
	}
	s.q = newQueue(n.cfg.ClientBuffer, n.cfg.ClientBufferBytes, n.cfg.SlowClient == PolicyDrop, s.wake)
	s.positioned.Store(req.resume)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	n.m.connections.Inc()
	n.m.connTotal.WithLabelValues(outcomeAccepted).Inc()

	// HTTP/1.1: take the connection over, so that an idle stream holds no
	// goroutine and no net/http buffers (see pool.go). HTTP/2 streams, and
	// servers that cannot hijack, stay on the net/http path; so do TLS
	// streams (a timed-out write breaks a tls.Conn, and the pool relies on
	// short write deadlines) and HTTP/1.0 (no chunked encoding).
	if n.pool != nil && r.ProtoMajor == 1 && r.ProtoMinor >= 1 && r.TLS == nil {
		if header, ok := n.pool.hijack(w, s); ok {
			n.hub.subscribe(s)
			n.expireAt(s, expires)
			n.pool.open(s, header)
			return
		}
	}
	s.signal = make(chan struct{}, 1)
	n.streams.add(s)
	n.hub.subscribe(s)
	n.expireAt(s, expires)
	w.WriteHeader(http.StatusOK)
	reason := n.serve(r.Context(), newHTTPSink(w), s)
	n.finish(s, reason)
	if reason != reasonClientGone {
		// The server ends this stream: abort it rather than end the body
		// cleanly. http.ErrAbortHandler is net/http's documented way to
		// abort a response: HTTP/1.1 closes the connection without the
		// terminating chunk, HTTP/2 resets the stream. Every client
		// library reads that as a broken connection and reconnects,
		// whereas some (r3labs/sse) take a clean end of the body as the
		// end of the subscription and never come back.
		panic(http.ErrAbortHandler)
	}
}

// expireAt closes s at expires (Authorizer.Authorize), so that the client
// reconnects with fresh credentials. A zero expires never expires.
func (n *Node) expireAt(s *stream, expires time.Time) {
	if expires.IsZero() {
		return
	}
	s.expiry = time.AfterFunc(time.Until(expires), func() {
		n.closeStream(s, reasonTokenExpired)
	})
}

// finish releases everything an ended stream held, in order: unregister
// from the hub first, so no fan-out pushes after the queue lets go of its
// frames; then what admission took (the window's topics, the counts).
func (n *Node) finish(s *stream, reason string) {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	n.hub.unsubscribe(s)
	n.streams.remove(s)
	s.q.close()
	s.admitted.release()
	n.m.connections.Dec()
	n.m.disconnects.WithLabelValues(reason).Inc()
	if reason == reasonStreamReset {
		// Here, not where the reset is decided: a stream told to close
		// may end first for another reason (its client left), and the
		// two counters must count the same streams (README).
		n.m.slowDisconnects.WithLabelValues(reasonStreamReset).Inc()
	}
}

// admit takes a stream's places in order: the connection count, its
// address's, its topics in the window. On a refusal it gives back what it
// took, answers the request and reports false; else the stream's
// admission holds everything, for one release.
func (n *Node) admit(w http.ResponseWriter, r *http.Request, topics []string) (admission, bool) {
	a := admission{n: n, counted: true}
	if n.conns.Add(1) > int64(n.cfg.MaxConnections) {
		a.release()
		n.reject(w, outcomeFull, "node is full: too many connections")
		return a, false
	}
	if n.perIP != nil {
		if a.ip = n.perIP.key(r); !n.perIP.acquire(a.ip) {
			a.release()
			n.tooMany(w)
			return a, false
		}
		a.ipHeld = true
	}
	for i, t := range topics {
		if err := n.window.Acquire(r.Context(), t); err != nil {
			a.release()
			if errors.Is(err, pubsub.ErrWrongType) {
				// Retrying cannot help: say which topic, and no Retry-After.
				n.m.connTotal.WithLabelValues(outcomeBadRequest).Inc()
				http.Error(w, fmt.Sprintf("topic %q: its Redis key holds something that is not a stream", t), http.StatusConflict)
				return a, false
			}
			if r.Context().Err() != nil {
				// The client left while its topics loaded: not the
				// broker's failure, nor one to alert on.
				n.m.connTotal.WithLabelValues(outcomeClientGone).Inc()
				return a, false
			}
			n.log.Warn("subscribe: broker unavailable", "topic", t, "err", err)
			n.reject(w, outcomeUnavailable, "broker unavailable: retry later")
			return a, false
		}
		a.topics = topics[:i+1]
	}
	return a, true
}

func (n *Node) reject(w http.ResponseWriter, outcome, msg string) {
	n.m.connTotal.WithLabelValues(outcome).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(n.cfg.Retry/time.Second))))
	http.Error(w, msg, http.StatusServiceUnavailable)
}

// start writes the stream's opening (a retry: line and a comment) and
// replays what the client missed. It returns "" on success, else why the
// stream must end.
func (n *Node) start(ctx context.Context, to sink, w *wire, s *stream) (reason string) {
	ctx, span := n.startSpan(ctx, "sse.subscribe", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.StringSlice("sse.topics", s.topics)}
	})
	defer func() {
		if reason != "" {
			span.SetAttributes(attribute.String("sse.end", reason))
		}
		span.End()
	}()
	// The opening is a lone blank line, which no parser dispatches: it
	// gets bytes through proxies at once. A comment or a retry: line here
	// would be dispatched as an empty event by client libraries that take
	// any block (r3labs/sse, and the bytes left after the last blank line
	// of a broken connection) as an event; retry: rides the first event.
	if s.announce {
		// Opt-in (Config.AnnouncePosition): the opening tells a client
		// that came without a position where it starts. An id: field with
		// no data sets EventSource's last event ID without dispatching an
		// event, so a stream that ends before its first event still
		// resumes without loss; literal client libraries dispatch it as
		// an empty event.
		b := s.appendRetry(make([]byte, 0, 64))
		b = append(b, "id: "...)
		b = replay.AppendLastEventID(b, s.pos)
		w.add(append(b, "\n\n"...))
	} else {
		w.ref(opening)
	}
	if err := n.send(s, to, w); err != nil {
		return n.writeFailed(s, err)
	}
	for i, t := range s.topics {
		if err := n.replay(ctx, to, w, s, i, t); err != nil {
			// net/http cancels the request's context when a write fails:
			// look at the write error first.
			if errors.Is(err, errWrite) {
				return n.writeFailed(s, err)
			}
			if ctx.Err() != nil {
				return reasonClientGone
			}
			// The client reconnects with what it has and resumes.
			n.log.Warn("replay failed", "topic", t, "after", s.pos[i], "err", err)
			return reasonWriteError
		}
	}
	return ""
}

// retryLine is a stream's retry: line: spread over [Retry, 2*Retry) so
// that the reconnects of streams closed together (a drain, a rebalance,
// tokens that expire at once) do not all land at the same moment. It is
// sent with the stream's first event, the only place no client library
// turns it into an event of its own, and a parser applies it as soon as it
// reads the line.
func (n *Node) retryLine() []byte {
	retry := n.cfg.Retry + rand.N(n.cfg.Retry) // positive: Config defaults it
	b := make([]byte, 0, 24)
	b = append(b, "retry: "...)
	b = strconv.AppendInt(b, retry.Milliseconds(), 10)
	return append(b, '\n')
}

// serve runs a net/http stream to its end and returns why it ended. The
// writer is the request goroutine itself, woken by s.signal.
func (n *Node) serve(ctx context.Context, to sink, s *stream) string {
	w := new(wire)
	defer w.reset()
	if reason := n.start(ctx, to, w, s); reason != "" {
		return reason
	}
	hb := time.NewTimer(n.cfg.Heartbeat)
	defer hb.Stop()
	var batch []*frame
	heartbeatDue := false
	for {
		// A step first: a drain that began before s was registered woke
		// no one.
		var reason string
		if reason, batch = n.step(s, w, batch, heartbeatDue); reason != "" {
			return reason
		}
		if w.size > 0 {
			start, sent, live := time.Now(), w.events, w.live
			if err := n.send(s, to, w); err != nil {
				return n.writeFailed(s, err)
			}
			n.wrote(start, time.Now(), sent, live)
			hb.Reset(n.cfg.Heartbeat)
		}
		heartbeatDue = false
		select {
		case <-ctx.Done():
			return reasonClientGone
		case <-hb.C:
			heartbeatDue = true
		case <-s.signal:
		}
	}
}

// errWrite marks errors from writing to the client, as opposed to reading
// the replay window.
var errWrite = errors.New("node: write to client")

// writeFailed counts and returns why a failed write ends s, whichever
// writer made it: the queue's overflow when one cut the write (schedule
// cuts a stuck write, the replay's included), else a timeout or an error.
func (n *Node) writeFailed(s *stream, err error) string {
	if why, ok := s.q.overflow(); ok {
		n.m.slowDisconnects.WithLabelValues(why.reason()).Inc()
		return reasonSlowClient
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		n.m.slowDisconnects.WithLabelValues(reasonWriteTimeout).Inc()
		return reasonWriteTimeout
	}
	return reasonWriteError
}

// send writes what w gathered for s through the sink, within the write
// timeout, and lets go of w's frames whatever happens.
func (n *Node) send(s *stream, to sink, w *wire) error {
	defer w.reset()
	if err := armWrite(s, to, time.Now().Add(n.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("%w: %w", errWrite, err)
	}
	if err := to.send(w); err != nil {
		return fmt.Errorf("%w: %w", errWrite, err)
	}
	return nil
}

// replayFlushBytes is the most a replay gathers before it writes (or the
// client's SSE_CLIENT_BUFFER_BYTES if smaller). Replay frames are the
// client's own, unlike live frames, which all subscribers share: a client
// that does not read holds what its replay gathered until the write
// timeout, so this is small. It is the default socket buffer
// (SSE_SOCKET_SNDBUF): a larger write would wait for the client anyway.
const replayFlushBytes = 64 << 10

// replay sends topic i's missed entries, an sse-gap event first if some
// were lost. Each entry is encoded into a frame that goes out by reference
// (a large one is shared by every replay that sends it, see sharedFrames),
// and a write goes out whenever replayFlushBytes are gathered.
func (n *Node) replay(ctx context.Context, to sink, w *wire, s *stream, i int, topic string) error {
	ctx, span := n.startSpan(ctx, "sse.replay", replayAttrs(topic, s.pos[i]))
	sent := 0
	res, err := n.window.Replay(ctx, topic, s.pos[i],
		func(g replay.Gap) error {
			if s.whole != nil && s.whole[i] && !g.Reset && g.Requested.IsZero() {
				// Asked for what the window holds, not for the stream
				// from its first entry: its lost start is no gap.
				return nil
			}
			n.m.replayRequests.WithLabelValues("gap").Inc()
			// After a reset the stream's history restarted (see
			// stream.restart). Any other gap leaves the position, so live
			// frames at or below it are still discarded.
			if g.Reset {
				s.restart(i)
			}
			b := s.appendRetry(nil)
			b = append(b, "event: sse-gap\ndata: "...)
			b = g.AppendJSON(b)
			w.add(append(b, "\n\n"...))
			return n.send(s, to, w)
		},
		func(e pubsub.Entry) error {
			sent += s.gather(w, n.shared.encode(topic, &e))
			if w.size < min(replayFlushBytes, n.cfg.ClientBufferBytes) {
				return nil
			}
			return n.send(s, to, w)
		})
	if err == nil && w.size > 0 {
		err = n.send(s, to, w)
	}
	w.reset()
	replayResult(span, res, sent)
	endSpan(span, err)
	if sent > 0 || res.Count > 0 {
		n.m.replayRequests.WithLabelValues(string(res.From)).Inc()
		n.m.replayEvents.Add(float64(sent))
		n.m.delivered.Add(float64(sent))
	}
	return err
}
