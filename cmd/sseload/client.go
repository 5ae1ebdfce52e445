package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// defaultRetry is the reconnect delay before the server has sent retry:.
const defaultRetry = time.Second

// statusError is a response other than 200 to the subscribe request.
type statusError struct {
	code       int
	retryAfter time.Duration
}

func (e *statusError) Error() string {
	return "sseload: subscribe: HTTP status " + strconv.Itoa(e.code)
}

// permanent reports whether retrying cannot help, as EventSource gives up
// on any status but 200: 4xx other than 408 and 429.
func (e *statusError) permanent() bool {
	return e.code >= 400 && e.code < 500 && e.code != 408 && e.code != 429
}

// errProtocol is a response that is not a usable event stream.
var errProtocol = errors.New("sseload: bad response")

// client is one SSE connection and the goroutine that reads it. Everything
// but the fields marked otherwise belongs to that goroutine.
type client struct {
	r      *runner
	idx    int
	topics []int  // indices into the run's topics, in subscribe order
	slots  []slot // per subscribed topic
	slow   bool
	done   <-chan struct{} // closed when the client's group ends

	urlIdx int
	lr     *lineReader
	// lastID is EventSource's last event ID string, sent on reconnect;
	// idBuf is its last event ID buffer, set by id: fields and copied to
	// lastID when an event is dispatched. A stream cut inside an event
	// (a large one, say) resumes from before it, as a browser does.
	lastID, idBuf []byte
	retry         time.Duration
	t             tally
	flushF        func()

	// Event being parsed.
	evGap   bool
	hasData bool
	pOK     bool
	p       payload
	sum     lineSum // the data line's, with -verify

	// Shared with the controller.
	opened    atomic.Bool // a stream has opened at least once
	permanent atomic.Bool // gave up: a status retrying cannot fix
	mu        sync.Mutex
	conn      net.Conn // guarded by mu
	stopped   bool     // guarded by mu: no more connections
}

func (c *client) flush() {
	if c.t != (tally{}) {
		c.r.tot.add(&c.t)
		c.t = tally{}
	}
}

// run connects, reads and reconnects until the group ends or ctx is done.
//
// The goroutine parks in readEvents for most of its life, so the frames
// below run are kept small: dialing (deep, and rare) happens in open, which
// has returned by then, and the runtime can shrink the stack to 4 KiB.
func (c *client) run(ctx context.Context) {
	var lostAt time.Time // when the previous stream ended, for the resume time
	var err error
	for first := true; c.wait(ctx, err, first, &lostAt); first = false {
		if err = c.open(ctx, &lostAt); err != nil {
			continue
		}
		if c.slow {
			c.hold(ctx)
		} else {
			err = c.readEvents()
		}
		c.closed()
	}
	c.closeConn()
}

// wait decides whether and when to connect again after err (nil on the
// first attempt): it waits for the storm gate, the retry delay, or gives
// up. It returns false when the client must end.
//
//go:noinline
func (c *client) wait(ctx context.Context, err error, first bool, lostAt *time.Time) bool {
	r := c.r
	c.flush()
	if !first {
		if c.isStopped() || ctx.Err() != nil {
			return false
		}
		if lostAt.IsZero() {
			*lostAt = time.Now()
		}
		delay := c.retry
		if r.cfg.Retry > 0 {
			delay = r.cfg.Retry
		}
		var se *statusError
		if errors.As(err, &se) {
			if se.permanent() {
				c.permanent.Store(true)
				return false
			}
			if se.retryAfter > 0 {
				delay = se.retryAfter
			}
		}
		if r.gate.Load() != nil {
			delay = 0 // a storm: the gate decides when
		}
		if !sleepCtx(ctx, c.done, delay) {
			return false
		}
		c.urlIdx = (c.urlIdx + 1) % len(r.targets)
	}
	waited, ok := r.waitGate(ctx, c.done)
	if waited && !lostAt.IsZero() {
		*lostAt = time.Now() // offline on purpose: time the resume from the release
	}
	return ok
}

func sleepCtx(ctx context.Context, done <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-done:
		return false
	case <-t.C:
		return true
	}
}

// errOffline ends a connection made while the storm gate was closing.
var errOffline = errors.New("sseload: offline")

// open dials, writes the request and reads the response headers. On nil
// the stream is open and counted, and closed must follow.
//
//go:noinline
func (c *client) open(ctx context.Context, lostAt *time.Time) error {
	r := c.r
	tg := &r.targets[c.urlIdx]
	r.attempts.Add(1)
	dctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectWait)
	conn, err := r.dialer(c).DialContext(dctx, "tcp", tg.addr)
	cancel()
	if err != nil {
		r.failedDial.Add(1)
		return fmt.Errorf("sseload: dial %s: %w", tg.addr, err)
	}
	if !c.setConn(conn) {
		return errOffline
	}
	if r.gate.Load() != nil {
		c.closeConn()
		return errOffline // went offline while dialing
	}

	_ = conn.SetDeadline(time.Now().Add(r.cfg.ConnectWait))
	if _, err := conn.Write(c.request(tg)); err != nil {
		c.closeConn()
		r.failedProto.Add(1)
		return fmt.Errorf("sseload: write request to %s: %w", tg.addr, err)
	}
	if c.lr == nil {
		c.lr = newLineReader(conn, r.cfg.BufSize)
		c.lr.beforeRead = c.flushF
	} else {
		c.lr.reset(conn)
	}
	chunked, err := c.readHeaders()
	if err != nil {
		c.closeConn()
		var se *statusError
		if errors.As(err, &se) {
			r.failedStatus.Add(1)
		} else {
			r.failedProto.Add(1)
		}
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	if chunked {
		c.lr.startChunked()
	}

	r.ok.Add(1)
	r.connsOpen.Add(1)
	if !c.opened.Load() {
		for i := range c.slots {
			c.slots[i].open(r.cfg.FromStart)
		}
		c.opened.Store(true)
	} else {
		r.reconnects.Add(1)
		if !lostAt.IsZero() {
			r.resume.Record(c.idx, int64(time.Since(*lostAt)))
		}
	}
	*lostAt = time.Time{}
	return nil
}

// hold keeps a slow client's socket open without reading until the end.
//
//go:noinline
func (c *client) hold(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-c.done:
	}
}

// closed ends an open stream.
//
//go:noinline
func (c *client) closed() {
	if !c.isStopped() {
		c.r.disconnects.Add(1)
	}
	c.r.connsOpen.Add(-1)
	c.closeConn()
}

// request is the subscribe request, written by hand.
func (c *client) request(tg *target) []byte {
	b := make([]byte, 0, 256)
	b = append(b, "GET "...)
	b = append(b, tg.path...)
	for i, t := range c.topics {
		if i == 0 {
			b = append(b, "?topic="...)
		} else {
			b = append(b, "&topic="...)
		}
		b = append(b, url.QueryEscape(c.r.cfg.Topics[t])...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, tg.host...)
	b = append(b, "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: sseload\r\n"...)
	if tok := c.r.cfg.Token; tok != "" {
		b = append(b, "Authorization: Bearer "...)
		b = append(b, tok...)
		b = append(b, "\r\n"...)
	}
	if len(c.lastID) > 0 {
		b = append(b, "Last-Event-ID: "...)
		b = append(b, c.lastID...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// readHeaders reads the status line and headers; a status other than 200
// is a *statusError. It reports whether the body is chunked.
func (c *client) readHeaders() (chunked bool, err error) {
	lr := c.lr
	line, err := lr.readLine()
	if err != nil {
		return false, fmt.Errorf("%w: status line: %w", errProtocol, err)
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return false, fmt.Errorf("%w: status line %q", errProtocol, line)
	}
	code, ok := parseUintBytes(line[9:12])
	if !ok {
		return false, fmt.Errorf("%w: status line %q", errProtocol, line)
	}
	var retryAfter time.Duration
	for {
		line, err := lr.readLine()
		if err != nil {
			return false, fmt.Errorf("%w: headers: %w", errProtocol, err)
		}
		if lr.skip {
			return false, errLongHeader
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return false, fmt.Errorf("%w: header line %q", errProtocol, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case bytes.EqualFold(name, []byte("Retry-After")):
			if s, ok := parseUintBytes(value); ok {
				retryAfter = time.Duration(min(s, 3600)) * time.Second
			}
		}
	}
	if code != 200 {
		return false, &statusError{code: int(code), retryAfter: retryAfter}
	}
	return chunked, nil
}

// readEvents parses the SSE stream until it ends. This is the hot path:
// no allocation per event.
func (c *client) readEvents() error {
	lr := c.lr
	c.evGap, c.hasData, c.pOK = false, false, false
	c.idBuf = append(c.idBuf[:0], c.lastID...)
	for {
		line, err := lr.readLine()
		if err != nil {
			return err
		}
		if len(line) == 0 {
			c.dispatch()
			continue
		}
		if line[0] == ':' {
			continue // comment or heartbeat
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if c.hasData {
				continue // our payloads are one line; the first line is enough
			}
			c.hasData = true
			if c.evGap {
				c.gap(value)
				continue
			}
			c.p, c.pOK = scanPayload(value)
			if c.r.sums != nil {
				c.sum = lineSum{}
				c.sum.write(value)
				if lr.skip {
					lr.sum = &c.sum // the line reader hashes the rest
				} else {
					c.sum.content()
				}
			}
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				c.idBuf = append(c.idBuf[:0], value...)
			}
		case "event":
			c.evGap = string(value) == "sse-gap"
		case "retry":
			if v, ok := parseUintBytes(value); ok {
				c.retry = time.Duration(min(v, 3600_000)) * time.Millisecond
			}
		}
	}
}

// dispatch ends one event at a blank line.
func (c *client) dispatch() {
	c.lastID = append(c.lastID[:0], c.idBuf...)
	hasData, gap, ok := c.hasData, c.evGap, c.pOK
	c.evGap, c.hasData, c.pOK = false, false, false
	if !hasData || gap {
		return
	}
	p := &c.p
	if ok && p.run == c.r.run {
		for k, ti := range c.topics {
			if int64(ti) == p.topic {
				c.r.lat.Record(c.idx, max(c.lr.now.UnixNano()-p.ts, 0))
				c.slots[k].event(&c.t, p.seq, idPart(c.lastID, k))
				if c.r.sums != nil {
					c.r.sums.check(&c.t, p.topic, p.seq, c.sum.payloadSum)
				}
				return
			}
		}
	}
	c.t.foreign++
}

// gap notes an sse-gap event: the next jump of its topic is reported.
func (c *client) gap(data []byte) {
	c.t.gaps++
	name := gapTopic(data)
	for k, ti := range c.topics {
		if string(name) == c.r.cfg.Topics[ti] {
			c.slots[k].gapPending = true
			return
		}
	}
	// A gap for a topic we cannot tell: mark them all.
	for k := range c.slots {
		c.slots[k].gapPending = true
	}
}

// setConn registers the connection so the controller can close it; false
// (and the connection closed) when the client is already stopped.
func (c *client) setConn(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		_ = conn.Close()
		return false
	}
	c.conn = conn
	return true
}

// closeConn closes the current connection, if any. Safe from any goroutine.
func (c *client) closeConn() {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
}

// stop ends the client: no more connections, the current one closed.
func (c *client) stop() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.closeConn()
}

func (c *client) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}
