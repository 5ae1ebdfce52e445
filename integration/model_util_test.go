package integration

// The window's promise checked from the outside: a strict WHATWG
// EventSource parser, a client that reconnects as EventSource does (optionally
// slow, with a tiny receive buffer), a record of every stream's history
// (what was added and when it may have left), and the checker that compares
// what each client received with that history. The regression tests of
// window_regress_test.go and the model-based checker of model_test.go share
// them.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/pubsub"
)

// ---------------------------------------------------------------------------
// WHATWG event stream parser

// wEvent is what the parser hands over at a blank line.
type wEvent struct {
	Type   string // event type; "message" when the stream gave none
	Data   string
	LastID string // the last event ID string after this block
}

// wParser interprets a text/event-stream body exactly as the HTML
// standard's "event stream interpretation" does: lines end with CRLF, LF or
// CR; one leading BOM is ignored; a line starting with ':' is a comment; a
// field without ':' has an empty value; one space after ':' is dropped; id
// values containing NUL are ignored; the last event ID buffer is kept across
// events and becomes the last event ID string at every blank line, whether
// or not an event is dispatched; an event is dispatched only if its data
// buffer is not empty; pending data at end of stream is discarded.
type wParser struct {
	r      io.Reader
	buf    []byte
	pos, n int
	start  bool // the BOM check is still due
	skipLF bool // the previous line ended with CR: a following LF is part of it
	line   []byte

	data   []byte
	typ    string
	idBuf  string
	lastID string
	retry  bool // a valid retry: field was seen
}

func newWParser(r io.Reader, lastID string) *wParser {
	return &wParser{r: r, buf: make([]byte, 2048), start: true, idBuf: lastID, lastID: lastID}
}

// readLine returns the next line without its terminator; valid until the
// next call.
func (p *wParser) readLine() ([]byte, error) {
	p.line = p.line[:0]
	for {
		if p.pos == p.n {
			n, err := p.r.Read(p.buf)
			if n == 0 {
				if err == nil {
					continue
				}
				return nil, err // an unterminated line is discarded with the stream
			}
			p.pos, p.n = 0, n
		}
		for p.pos < p.n {
			c := p.buf[p.pos]
			p.pos++
			if p.skipLF {
				p.skipLF = false
				if c == '\n' {
					continue
				}
			}
			switch c {
			case '\r':
				p.skipLF = true
				return p.line, nil
			case '\n':
				return p.line, nil
			}
			p.line = append(p.line, c)
			if p.start && len(p.line) == 3 && string(p.line) == "\uFEFF" {
				p.line = p.line[:0]
			}
			if len(p.line) >= 3 {
				p.start = false
			}
		}
	}
}

// block processes lines up to the next blank line. dispatched is false for
// a block that dispatches no event (comments, retry:, an id: alone).
func (p *wParser) block() (e wEvent, dispatched bool, err error) {
	for {
		line, err := p.readLine()
		if err != nil {
			return wEvent{}, false, err
		}
		p.start = false
		if len(line) == 0 {
			p.lastID = p.idBuf
			if len(p.data) == 0 {
				p.typ = ""
				return wEvent{LastID: p.lastID}, false, nil
			}
			e = wEvent{Type: p.typ, Data: string(p.data[:len(p.data)-1]), LastID: p.lastID}
			if e.Type == "" {
				e.Type = "message"
			}
			p.data, p.typ = p.data[:0], ""
			return e, true, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := string(line), ""
		if i := strings.IndexByte(field, ':'); i >= 0 {
			field, value = field[:i], strings.TrimPrefix(field[i+1:], " ")
		}
		switch field {
		case "event":
			p.typ = value
		case "data":
			p.data = append(p.data, value...)
			p.data = append(p.data, '\n')
		case "id":
			if !strings.ContainsRune(value, 0) {
				p.idBuf = value
			}
		case "retry":
			if value != "" && strings.Trim(value, "0123456789") == "" {
				p.retry = true
			}
		}
	}
}

func TestWParser(t *testing.T) {
	in := "\uFEFFretry: 100\r\n: hi\r\rid: 1-1\ndata: a\r\ndata:b\n\nevent: x\rdata\r\n\r\nid: 2\x00\ndata: c\n\nid\n\ndata: d\n\ndata: pending"
	p := newWParser(strings.NewReader(in), "")
	var got []wEvent
	for {
		e, ok, err := p.block()
		if err != nil {
			break
		}
		if ok {
			got = append(got, e)
		}
	}
	want := []wEvent{
		{"message", "a\nb", "1-1"},
		{"x", "", "1-1"}, // "data" with no colon: an empty line of data
		{"message", "c", "1-1"},
		{"message", "d", ""},
	}
	// "data" alone appends an empty line, so the buffer is "\n": not empty, dispatched.
	if !slices.Equal(got, want) || !p.retry {
		t.Fatalf("got %q (retry %v), want %q", got, p.retry, want)
	}
}

// ---------------------------------------------------------------------------
// A reconnecting client

// recvItem is one event a client received, sse-gap events included.
type recvItem struct {
	at     time.Time
	conn   int // which connection of the client
	typ    string
	data   string
	lastID string
}

// wClient is one EventSource-like client of a set of topics: on any end of
// its stream it connects again (to the address pick returns then) with its
// last event ID as Last-Event-ID. Options make it slow: a small kernel
// receive buffer set before connecting, and a read rate in bytes per second.
type wClient struct {
	name   string
	topics []string
	start  string // initial position; "" is live
	pick   func() string
	rcvBuf int
	rate   int // bytes/s; 0 is unlimited

	fast atomic.Bool // the rate no longer applies (see unthrottle)

	mu        sync.Mutex
	items     []recvItem
	lastID    string
	firstOpen time.Time // when the first stream's opening was read
	opens     int
	fails     []string
	cur       net.Conn

	cancel context.CancelFunc
	done   chan struct{}
}

// startWClient starts a client and waits (up to 30s) for its first stream
// to open. It is halted at cleanup.
func startWClient(t testing.TB, c *wClient) *wClient {
	t.Helper()
	c.lastID = c.start
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go c.run(ctx)
	t.Cleanup(c.halt)
	if !pollUntil(30*time.Second, 5*time.Millisecond, nil, func() bool { return c.opened() > 0 }) {
		t.Fatalf("client %s: no stream opened in 30s: %q", c.name, c.failures())
	}
	return c
}

func (c *wClient) halt() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
}

func (c *wClient) opened() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens
}

func (c *wClient) failures() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.fails)
}

func (c *wClient) snapshot() []recvItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.items)
}

// breakConn closes the current connection, as a network failure would.
func (c *wClient) breakConn() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil {
		c.cur.Close()
	}
}

func (c *wClient) fail(msg string) {
	c.mu.Lock()
	if len(c.fails) < 50 {
		c.fails = append(c.fails, time.Now().Format("15:04:05.000")+" "+msg)
	}
	c.mu.Unlock()
}

func (c *wClient) path() string {
	q := url.Values{"topic": c.topics}
	return "/events?" + q.Encode()
}

func (c *wClient) run(ctx context.Context) {
	defer close(c.done)
	for ctx.Err() == nil {
		err := c.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		c.fail(err.Error())
		pause(ctx, time.Duration(10+rand.IntN(30))*time.Millisecond)
	}
}

// stream runs one connection until it ends.
func (c *wClient) stream(ctx context.Context) error {
	addr := c.pick()
	d := net.Dialer{Timeout: 5 * time.Second}
	if c.rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, c.rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c.mu.Lock()
	c.cur = conn
	last := c.lastID
	c.mu.Unlock()
	req := "GET " + c.path() + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
	if last != "" {
		req += "Last-Event-ID: " + last + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		return err
	}
	var r io.Reader = conn
	if c.rate > 0 {
		r = &slowReader{r: conn, rate: c.rate, fast: &c.fast}
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(r, 4096), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: status %d: %s", addr, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	p := newWParser(resp.Body, last)
	c.mu.Lock()
	c.opens++
	connNo := c.opens
	c.mu.Unlock()
	for first := true; ; first = false {
		e, dispatched, err := p.block()
		if err != nil {
			return fmt.Errorf("%s: stream %d: %w", addr, connNo, err)
		}
		now := time.Now()
		c.mu.Lock()
		if first && c.firstOpen.IsZero() {
			c.firstOpen = now
		}
		c.lastID = p.lastID
		if dispatched {
			c.items = append(c.items, recvItem{at: now, conn: connNo, typ: e.Type, data: e.Data, lastID: e.LastID})
		}
		c.mu.Unlock()
	}
}

// unthrottle lifts the client's read rate, so that it catches up.
func (c *wClient) unthrottle() { c.fast.Store(true) }

// slowReader reads at most 512 bytes at a time and rate bytes per second,
// until fast is set.
type slowReader struct {
	r    io.Reader
	rate int
	fast *atomic.Bool
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.fast.Load() {
		return s.r.Read(p)
	}
	if len(p) > 512 {
		p = p[:512]
	}
	n, err := s.r.Read(p)
	time.Sleep(time.Duration(n) * time.Second / time.Duration(s.rate))
	return n, err
}

// ---------------------------------------------------------------------------
// The history of the streams

// hEntry is one entry as it was in one epoch of a topic's stream.
type hEntry struct {
	id      pubsub.ID
	payload string
	sentAt  time.Time // before the command that added it was sent
	// firstSent is sentAt of the first epoch that held this very entry (ID
	// and payload): a RESTOREd entry was published long before the RESTORE.
	// A client that started live after it had passed it and is not owed it
	// when the same entry comes back.
	firstSent time.Time
	// delAt is the earliest time the entry may have left the stream (a trim,
	// XDEL, DEL, data loss); zero while it surely is there.
	delAt time.Time
	// xdel: it left by XDEL. hiddenAt: when an XDEL of a higher ID made
	// that removal untraceable (Redis keeps only the highest removed ID).
	xdel     bool
	hiddenAt time.Time
}

// hEpoch is one history of a stream: from its creation (or a restore) to
// its deletion (DEL, data loss, a failover that replaces it). Within one
// epoch IDs only grow, so an entry with a lower ID was added earlier.
type hEpoch struct {
	n       int
	start   time.Time
	entries []*hEntry // in ID order
	byKey   map[string]*hEntry
	// maxAge, when positive, is a trimmer's age limit: an entry may leave
	// once its ID time is older than that.
	maxAge time.Duration
}

func entryKey(id pubsub.ID, payload string) string { return id.String() + " " + payload }

// history is the ground truth of every topic.
type history struct {
	mu     sync.Mutex
	maxAge time.Duration
	topics map[string][]*hEpoch
	seq    map[string]int // payload numbers handed out per topic
	pad    int            // payloads are padded to this size
}

func newHistory(maxAge time.Duration) *history {
	return &history{maxAge: maxAge, topics: make(map[string][]*hEpoch), seq: make(map[string]int)}
}

// nextPayload returns a payload of topic never used before, padded to
// h.pad bytes or more.
func (h *history) nextPayload(topic string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq[topic]++
	p := payload(topic, h.seq[topic])
	if n := h.pad - len(p); n > 0 {
		p += " " + strings.Repeat("x", n)
	}
	return p
}

// xadds adds one entry per element of ids ("*" or an explicit ID) to key,
// the stream of topic, in one pipeline, with MAXLEN ~ maxLen when maxLen >
// 0, and records those Redis accepted. It returns the IDs added and the
// first error (an explicit ID not above the stream's last is refused).
func (h *history) xadds(ctx context.Context, rc *redis.Client, key, topic string, ids []string, maxLen int) ([]pubsub.ID, error) {
	pipe := rc.Pipeline()
	pays := make([]string, len(ids))
	cmds := make([]*redis.Cmd, len(ids))
	for i, id := range ids {
		pays[i] = h.nextPayload(topic)
		args := []any{"XADD", key}
		if maxLen > 0 {
			args = append(args, "MAXLEN", "~", maxLen)
		}
		cmds[i] = pipe.Do(ctx, append(args, id, "data", pays[i])...)
	}
	sent := time.Now()
	_, _ = pipe.Exec(ctx)
	var added []pubsub.ID
	var first error
	for i, cmd := range cmds {
		s, err := cmd.Text()
		if err == nil {
			var id pubsub.ID
			if id, err = pubsub.ParseID(s); err == nil {
				h.add(topic, id, pays[i], sent)
				added = append(added, id)
				continue
			}
		}
		if first == nil {
			first = fmt.Errorf("XADD %s %s: %w", key, ids[i], err)
		}
	}
	if maxLen > 0 {
		h.keepNewest(topic, sent, maxLen)
	}
	return added, first
}

// restoreFrom starts a new epoch of topic at at holding what key now holds
// (after a RESTORE or a restart that reloaded a snapshot).
func (h *history) restoreFrom(ctx context.Context, rc *redis.Client, key, topic string, at time.Time) error {
	h.newEpoch(topic, at)
	start := "-"
	for {
		msgs, err := rc.XRangeN(ctx, key, start, "+", 1000).Result()
		if err != nil {
			return fmt.Errorf("XRANGE %s: %w", key, err)
		}
		for _, m := range msgs {
			id, err := pubsub.ParseID(m.ID)
			if err != nil {
				return err
			}
			d, _ := m.Values["data"].(string)
			h.add(topic, id, d, at)
			start = id.Next().String()
		}
		if len(msgs) < 1000 {
			return nil
		}
	}
}

// current returns the topic's current epoch, creating the first.
func (h *history) currentLocked(topic string) *hEpoch {
	eps := h.topics[topic]
	if len(eps) == 0 {
		ep := &hEpoch{start: time.Time{}, byKey: make(map[string]*hEntry), maxAge: h.maxAge}
		h.topics[topic] = []*hEpoch{ep}
		return ep
	}
	return eps[len(eps)-1]
}

// add records an entry added to the topic's current epoch.
func (h *history) add(topic string, id pubsub.ID, payload string, sentAt time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ep := h.currentLocked(topic)
	key := entryKey(id, payload)
	e := &hEntry{id: id, payload: payload, sentAt: sentAt, firstSent: sentAt}
	for _, old := range h.topics[topic] {
		if o := old.byKey[key]; o != nil && o.firstSent.Before(e.firstSent) {
			e.firstSent = o.firstSent
		}
	}
	ep.entries = append(ep.entries, e)
	ep.byKey[key] = e
}

// remove marks the current epoch's entries for which del is true (and not
// yet marked) as gone from at.
func (h *history) remove(topic string, at time.Time, del func(i int, e *hEntry) bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	ep := h.currentLocked(topic)
	n := 0
	for i, e := range ep.entries {
		if e.delAt.IsZero() && del(i, e) {
			e.delAt = at
			n++
		}
	}
	return n
}

// keepNewest marks all but the newest n present entries as possibly gone
// from at: what XADD/XTRIM MAXLEN (exact or ~) may remove.
func (h *history) keepNewest(topic string, at time.Time, n int) {
	h.mu.Lock()
	live := 0
	for _, e := range h.currentLocked(topic).entries {
		if e.delAt.IsZero() {
			live++
		}
	}
	h.mu.Unlock()
	cut := live - n
	h.remove(topic, at, func(int, *hEntry) bool { cut--; return cut >= 0 })
}

// newEpoch ends the topic's current history at at (every entry gone) and
// starts an empty one.
func (h *history) newEpoch(topic string, at time.Time) {
	h.remove(topic, at, func(int, *hEntry) bool { return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	eps := h.topics[topic]
	h.topics[topic] = append(eps, &hEpoch{n: len(eps), start: at, byKey: make(map[string]*hEntry), maxAge: h.maxAge})
}

// xdel records the XDEL of e at at: e is gone, and earlier XDELs below
// it leave no trace from now on.
func (h *history) xdel(topic string, e *hEntry, at time.Time) {
	h.remove(topic, at, func(_ int, x *hEntry) bool { return x == e })
	h.mu.Lock()
	defer h.mu.Unlock()
	e.xdel = true
	for _, x := range h.currentLocked(topic).entries {
		if x.xdel && x.id.Less(e.id) && x.hiddenAt.IsZero() {
			x.hiddenAt = at
		}
	}
}

// present returns the current epoch's entries not marked gone.
func (h *history) present(topic string) []*hEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*hEntry
	for _, e := range h.currentLocked(topic).entries {
		if e.delAt.IsZero() {
			out = append(out, e)
		}
	}
	return out
}

// maxRemoved returns the highest ID marked gone in the current epoch.
func (h *history) maxRemoved(topic string) pubsub.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	var max pubsub.ID
	for _, e := range h.currentLocked(topic).entries {
		if !e.delAt.IsZero() && max.Less(e.id) {
			max = e.id
		}
	}
	return max
}

// lastID returns the ID of the newest entry ever added to the current epoch.
func (h *history) lastID(topic string) pubsub.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	ep := h.currentLocked(topic)
	if len(ep.entries) == 0 {
		return pubsub.ID{}
	}
	return ep.entries[len(ep.entries)-1].id
}

// gone is when e may have left the stream at the earliest (zero: never).
func (ep *hEpoch) gone(e *hEntry) time.Time {
	d := e.delAt
	if ep.maxAge > 0 {
		aged := time.UnixMilli(int64(e.id.Ms)).Add(ep.maxAge)
		if aged.Before(e.sentAt) {
			aged = e.sentAt
		}
		if d.IsZero() || aged.Before(d) {
			d = aged
		}
	}
	return d
}

// ---------------------------------------------------------------------------
// The checker

// gapMsg is the JSON of an sse-gap event.
type gapMsg struct {
	Topic     string `json:"topic"`
	Requested string `json:"requested"`
	Oldest    string `json:"oldest"`
	Reset     bool   `json:"reset"`
}

// topicOf returns the topic a payload was published to: payloads are
// "<topic>|<n>" (topics cannot contain '|').
func topicOf(payload string) string {
	i := strings.LastIndexByte(payload, '|')
	if i < 0 {
		return ""
	}
	return payload[:i]
}

// checkClient checks what c received against h and returns the violations
// (at most a few per topic). The rule, per topic of the client, over the
// client's whole life (all its connections):
//
//   - Every event is an entry that was published: its ID and payload are
//     those of an entry of some epoch of the topic's history. Its epoch is
//     the newest epoch holding it that began before it was received.
//   - IDs strictly increase between two sse-gap events of the topic, and no
//     entry comes twice between two reset gaps ("reset":true). After a gap
//     without reset, IDs stay above the gap's "requested"; only a reset gap
//     lets them restart lower and entries come again.
//   - Owed entries. Let b be an event received and A the client's previous
//     point for the topic: the previous event a, else the last sse-gap
//     (position: its "requested"; after a reset gap, none: everything the
//     stream holds follows), else the start (position: the
//     initial Last-Event-ID; for a live start, no position but only entries
//     first published after the first stream opened: an entry RESTOREd
//     as it was is not new). An entry e of b's epoch is owed
//     before b when its ID is between A's position and b's ID, it was not
//     already received (since the last reset gap), it was not removed within
//     removalGrace of being added, and, when A is a gap or a start from
//     position 0, it was not removed before A (the gap announced it; "0"
//     asks for what the window holds). When a is not part of b's epoch (the
//     history moved under the client) A's position is no bound: every entry
//     of b's epoch below b is owed, except those that a's epoch held below
//     a (the client had them or had passed them before the history moved).
//     An event received within removalGrace after its epoch began may
//     have been read just before, from an older epoch holding the same
//     entry (the same moment as removalGrace's): it is checked against
//     that epoch too, and passes if either owes nothing.
//     An entry removed by XDEL is not owed once an XDEL of a higher ID
//     has come before b: Redis keeps only the highest removed ID, so the
//     first removal left no trace a reader can see (a documented limit of
//     the gap rule).
//     Receiving b while an owed entry was never received, with no sse-gap
//     in between, is a violation: a silent skip.
//
// Why removal time does not excuse an entry (beyond removalGrace): Redis
// records the highest ID it ever removed (max-deleted-entry-id, kept by
// trims and XDEL), and a page read with it tells the reader whether
// anything above its position left. So a node can always tell "e left
// before I read it" from "e never existed": e was added after a (its ID is
// higher), so whoever read a before e left and finds e gone must announce
// it. The one exception is a live XREAD, which reports no removal: an entry
// removed a moment after being added may be missed by the live path, and
// removalGrace (1s) is that moment. The model schedules removals that hit
// young entries rarely for that reason.
func checkClient(h *history, c *wClient) []string {
	items := c.snapshot()
	c.mu.Lock()
	firstOpen := c.firstOpen
	c.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for ti, topic := range c.topics {
		var starts []string
		if c.start != "" {
			starts = strings.Split(c.start, ",")
		}
		out = append(out, checkTopic(h, c, items, ti, topic, starts, firstOpen)...)
	}
	return out
}

// removalGrace: an entry removed less than this after it was added is not
// owed (see checkClient).
const removalGrace = time.Second

func checkTopic(h *history, c *wClient, items []recvItem, ti int, topic string, starts []string, firstOpen time.Time) []string {
	var out []string
	bad := func(format string, args ...any) {
		if len(out) < 4 {
			out = append(out, fmt.Sprintf("client %s topic %s: ", c.name, topic)+fmt.Sprintf(format, args...))
		}
	}
	type point struct {
		id        pubsub.ID
		key       string
		ep        *hEpoch // a real event's epoch
		inclusive bool    // the bound includes id (a gap's oldest)
		noBound   bool    // a live start: no position, entries sent after ta
		at        time.Time
		set       bool // a real event
		gap       bool // an sse-gap (or a start from 0): what had left by then is accounted for
	}
	prev := point{at: firstOpen, noBound: true}
	if ti < len(starts) && starts[ti] != "" {
		if id, err := pubsub.ParseID(starts[ti]); err == nil {
			// "0" asks for whatever the window holds: what left before
			// the stream opened is no gap.
			prev = point{id: id, at: firstOpen, gap: id.IsZero()}
		}
	}
	seen := map[string]bool{}
	var floor pubsub.ID // after a non-reset gap: IDs stay above requested
	eps := h.topics[topic]
	for _, it := range items {
		if it.typ == "sse-gap" {
			var g gapMsg
			if err := json.Unmarshal([]byte(it.data), &g); err != nil {
				bad("sse-gap data %q: %v", it.data, err)
				continue
			}
			if g.Topic != topic {
				continue
			}
			_, err1 := pubsub.ParseID(g.Oldest)
			req, err2 := pubsub.ParseID(g.Requested)
			if err1 != nil || err2 != nil {
				bad("sse-gap data %q: bad IDs", it.data)
			}
			floor = pubsub.ID{}
			if g.Reset {
				seen = map[string]bool{} // the history restarts: all of it follows again
			} else {
				floor = req
			}
			// After a gap the node goes on after the requested position;
			// after a reset, with everything the stream holds.
			prev = point{id: req, at: it.at, gap: true}
			if g.Reset {
				prev = point{inclusive: true, at: it.at, gap: true}
			}
			continue
		}
		if topicOf(it.data) != topic {
			continue
		}
		idStr := it.lastID
		if len(c.topics) > 1 {
			parts := strings.Split(it.lastID, ",")
			if len(parts) != len(c.topics) {
				bad("event %q: id %q does not have %d positions", short(it.data), it.lastID, len(c.topics))
				continue
			}
			idStr = parts[ti]
		}
		id, err := pubsub.ParseID(idStr)
		if err != nil {
			bad("event %q: id %q: %v", short(it.data), it.lastID, err)
			continue
		}
		key := entryKey(id, it.data)
		var ep *hEpoch
		for _, e := range eps {
			if e.byKey[key] != nil && (ep == nil || !e.start.After(it.at)) {
				ep = e
			}
		}
		if ep == nil {
			bad("received %s %q, never published", id, short(it.data))
			continue
		}
		if seen[key] {
			bad("received %s %q twice with no reset gap in between", id, short(it.data))
		}
		if prev.set && !prev.id.Less(id) {
			bad("received %s after %s with no sse-gap in between: out of order", id, prev.id)
		} else if !floor.IsZero() && !floor.Less(id) {
			bad("received %s after an sse-gap (no reset) that requested %s: IDs went back", id, floor)
			floor = pubsub.ID{} // once per gap
		}
		owed := func(ep *hEpoch) []*hEntry {
			bounded := !prev.noBound && (!prev.set || ep.byKey[prev.key] != nil)
			var missing []*hEntry
			for _, e := range ep.entries {
				if !e.id.Less(id) {
					break
				}
				if bounded && (e.id.Less(prev.id) || (e.id == prev.id && !prev.inclusive)) {
					continue
				}
				if prev.noBound && !e.firstSent.After(prev.at) {
					continue
				}
				if g := ep.gone(e); !g.IsZero() && (g.Sub(e.sentAt) < removalGrace || (prev.gap && !g.After(prev.at))) {
					continue
				}
				if !e.hiddenAt.IsZero() && !e.hiddenAt.After(it.at) {
					continue // its XDEL left no trace by then (see checkClient)
				}
				if seen[entryKey(e.id, e.payload)] {
					continue
				}
				if !bounded && prev.set && !prev.id.Less(e.id) && prev.ep.byKey[entryKey(e.id, e.payload)] != nil {
					continue // passed in a's history, before a
				}
				missing = append(missing, e)
			}
			return missing
		}
		missing := owed(ep)
		if len(missing) > 0 && it.at.Sub(ep.start) < removalGrace {
			// Received just after the history moved (a RESTORE that kept
			// it): it may have been read just before, from the older
			// epoch that holds it too (see checkClient).
			for _, old := range eps {
				if old != ep && old.byKey[key] != nil && old.start.Before(ep.start) && len(owed(old)) == 0 {
					ep, missing = old, nil
					break
				}
			}
		}
		if len(missing) > 0 {
			bad("received %s (epoch %d) at %s after %s (received %s) with no sse-gap, but %d entries held by the stream in between were never received, first %s %q (sent %s, gone %s)",
				id, ep.n, it.at.Format("15:04:05.000"), prevDesc(prev.id, prev.set, prev.noBound), prev.at.Format("15:04:05.000"),
				len(missing), missing[0].id, short(missing[0].payload), missing[0].sentAt.Format("15:04:05.000"), fmtTime(ep.gone(missing[0])))
		}
		seen[key] = true
		prev = point{id: id, key: key, ep: ep, at: it.at, set: true}
	}
	return out
}

func prevDesc(id pubsub.ID, set, noBound bool) string {
	switch {
	case noBound:
		return "a live start"
	case set:
		return id.String()
	}
	return "position " + id.String()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format("15:04:05.000")
}

// lastPayload returns the payload of the last event of topic c received.
func (c *wClient) lastPayload(topic string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.items) - 1; i >= 0; i-- {
		if c.items[i].typ != "sse-gap" && topicOf(c.items[i].data) == topic {
			return c.items[i].data
		}
	}
	return ""
}

// waitPayload waits until c's last event of topic carries payload.
func (c *wClient) waitPayload(d time.Duration, topic, payload string) bool {
	return pollUntil(d, 10*time.Millisecond, nil, func() bool { return c.lastPayload(topic) == payload })
}

// describe summarises what c received, for failure messages.
func (c *wClient) describe() string {
	items := c.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "client %s %v start %q: %d events, %d streams", c.name, c.topics, c.start, len(items), c.opened())
	gaps := 0
	for _, it := range items {
		if it.typ == "sse-gap" && gaps < 5 {
			gaps++
			fmt.Fprintf(&b, "; gap at #%d %s", gaps, it.data)
		}
	}
	if n := len(items); n > 0 {
		fmt.Fprintf(&b, "; last %s %q", items[n-1].lastID, short(items[n-1].data))
	}
	if f := c.failures(); len(f) > 0 {
		fmt.Fprintf(&b, "; stream ends: %d, last %q", len(f), f[len(f)-1])
	}
	return b.String()
}

// payload makes a payload for topic numbered n.
func payload(topic string, n int) string { return topic + "|" + strconv.Itoa(n) }

// pickAddr picks the same address for every connection.
func pickAddr(addr string) func() string { return func() string { return addr } }

// short cuts a payload's padding for messages.
func short(p string) string {
	if len(p) > 40 {
		return p[:40] + "..."
	}
	return p
}
