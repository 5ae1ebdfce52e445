package node

import (
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// A stream is one open GET /events, whatever drives its writes. Two
// drivers run the same step (below) and write frames by reference:
//
//   - the writer pool (pool.go): a hijacked HTTP/1.1 connection, written
//     by whoever owns the stream (see owned);
//   - net/http (HTTP/2, TLS, HTTP/1.0, SSE_HIJACK=false): the request
//     goroutine is the writer from start to end, woken through signal.
//
// The driver is which of conn and signal is set; everything else (positions,
// queue, ownership, heartbeat, the end) is the stream's on both.
//
// Goroutines and their owners. A net/http stream's request goroutine
// belongs to net/http's server and ends when the stream ends. A pool
// stream's request goroutine writes the response header, the opening and
// the replay, then hands the stream to the pool and returns; the pool
// waits for it (enter/leave), as for its writers, its heartbeat sweeper,
// its close watcher's goroutines and each slow write's finisher:
// writerPool.close, called by Node.Close, stops them all and waits for
// each. The cluster loop belongs to Cluster, an expiry timer's callback
// only calls closeStream.
//
// Locks, in order (a lock may be taken while holding one listed above it,
// never one below it):
//
//  1. writerPool.mu (attaching a hijacked stream, closing the pool);
//  2. streamRegistry.mu (heartbeat sweep and drain wake streams under it),
//     or a hub shard's (fan-out pushes and wakes under it);
//  3. a readyQueue's mu (a wake-up), a queue's mu, the close watcher's mu:
//     each is held alone, and a queue calls its notify without its mu.
//
// So a wake-up takes one ready queue's mutex, besides the stream's own:
// node-wide only on machines small enough to share one queue (queueProcs).
type stream struct {
	// Set before the stream is registered, then immutable.
	topics   []string
	q        *queue
	announce bool // came without a position: send the starting one
	// whole marks the topics that asked for the whole window (a "0" in
	// Last-Event-ID): what their streams lost before the oldest entry held
	// is no gap. A position 0-0 (a topic that was empty) is before the
	// stream's first entry, and such a loss is. nil when none asked.
	whole []bool
	// conn is the hijacked connection of a pool stream, set (under
	// writerPool.mu) before it is registered; nil on net/http.
	conn net.Conn
	// raw is conn's descriptor for the pool writers' writes that never
	// wait (vecWriter); nil when conn has none.
	raw syscall.RawConn
	// ready is the pool writers' queue a pool stream waits in when
	// scheduled; nil on net/http.
	ready *readyQueue
	// signal wakes the request goroutine of a net/http stream; nil on
	// the pool.
	signal chan struct{}

	// The writer's alone: whoever owns writing.
	pos []pubsub.ID // last ID sent, per topic
	// restarted marks the topics a reset gap sent to position 0-0: the
	// client holds nothing of the new history, so a live frame that
	// continues from past 0-0 skipped entries of it. nil until a reset gap.
	restarted []bool
	scratch   []byte // composite id line for several topics
	// retry is this stream's jittered retry: line, sent with its first
	// event (see retryLine); nil once sent.
	retry []byte

	admitted admission // what admit took, given back by finish
	slots    []int     // places in the hub; guarded by the hub shard locks
	index    int       // place in Node.streams; guarded by its lock
	// expiry closes the stream when its token expires; nil without one.
	expiry *time.Timer
	// ageLimit is when SSE_MAX_STREAM_AGE ends the stream, zero until the
	// cluster loop first sees it; that loop's alone.
	ageLimit time.Time

	// end is why the stream must close (closeStream), nil while it may
	// run on.
	end atomic.Pointer[string]
	// positioned is set once the client holds a position it will resume
	// from: it came with one, or was sent an event, a gap or the position
	// announcement. Closing a stream that is not yet positioned would lose
	// what is published before it reconnects, so the cluster sheds only
	// positioned streams.
	positioned atomic.Bool

	// The pool's ownership and heartbeat. Writes to a pool stream are
	// serialized by owned: whoever sets it (the request goroutine while it
	// replays, a pool writer, a slow write's finisher) is the only one
	// writing until it clears it.
	owned     atomic.Bool
	done      atomic.Bool  // ended (writerPool.end)
	hbDue     atomic.Bool  // a heartbeat is due
	lastWrite atomic.Int64 // unix nanoseconds of the last write
	pooled    atomic.Bool  // handed over to the pool (set under writerPool.mu)
	token     uint64       // close-watch registration; guarded by the watcher
}

// wake tells the stream's writer there is work: the queue's notify. A
// burst of wake-ups costs one: a 1-slot channel on net/http, one
// scheduling on the pool.
func (s *stream) wake() {
	if s.ready != nil {
		s.schedule()
		return
	}
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// schedule puts a pool stream on its writers' ready queue unless someone
// already owns its writing.
func (s *stream) schedule() {
	if s.done.Load() {
		return
	}
	if !s.owned.CompareAndSwap(false, true) {
		// Its writer is busy, maybe stuck on a client that stopped
		// reading. If the queue has just overflowed, cut the stuck write
		// now rather than at its deadline: the client is too slow.
		if s.q.overflowed() {
			_ = s.conn.SetWriteDeadline(time.Now())
		}
		return
	}
	s.ready.push(s)
}

// step is a stream writer's one decision, the same on both drivers: end
// the stream (drain, closeStream, a queue overflow), or gather into w what
// to write next: the queued frames, by reference, or a heartbeat when one
// is due and nothing else goes out. It returns why the stream must end, or
// ""; then w.size > 0 means there is a write to make. batch is scratch for
// the queue's frames, returned for reuse.
func (n *Node) step(s *stream, w *wire, batch []*frame, heartbeatDue bool) (string, []*frame) {
	// Take first, then look for an end: a stream reset (Node.reset) closes
	// the topic's streams before the frames that follow it are fanned out,
	// and those frames continue from an unknown position (prev 0-0), so
	// only the end tells a writer not to send them. Checked after the take,
	// an end set before any frame taken here is seen.
	batch, closed, why := s.q.take(batch[:0])
	// A server-side end aborts the connection (see closeStream), so every
	// client library reconnects.
	reason := s.ending()
	if n.draining.Load() {
		reason = reasonDrain
	}
	if reason != "" {
		for _, f := range batch {
			f.Release()
		}
		clear(batch)
		return reason, batch
	}
	if closed {
		n.m.slowDisconnects.WithLabelValues(why.reason()).Inc()
		return reasonSlowClient, batch
	}
	if len(batch) > 0 {
		n.m.queueDepth.Observe(float64(len(batch)))
		for j, f := range batch {
			if s.behind(f) {
				for _, g := range batch[j:] {
					g.Release()
				}
				clear(batch)
				w.reset()
				return reasonStreamReset, batch
			}
			if k := s.gather(w, f); k > 0 && w.live == 0 {
				w.live = f.events[len(f.events)-k].id.Ms
			}
		}
		clear(batch)
	}
	if w.events == 0 {
		w.reset() // frames whose events the client had from replay
		if heartbeatDue {
			w.ref(heartbeat)
		}
	}
	return "", batch
}

// wrote records a write of sent events that began at start and ended at
// now; live is the ID time of the oldest live event in it (wire.live).
func (n *Node) wrote(start, now time.Time, sent int, live uint64) {
	if sent > 0 {
		n.m.flush.Observe(now.Sub(start).Seconds())
		n.m.delivered.Add(float64(sent))
		if live != 0 {
			n.m.deliveryLag.Observe(now.Sub(time.UnixMilli(int64(live))).Seconds())
		}
	}
}

// closeStream ends s so that every client library reconnects (and resumes
// with its Last-Event-ID): the connection is aborted, never ended cleanly,
// and nothing follows the last complete event, so no library dispatches a
// phantom event. Reconnects are spread over time by the jittered retry:
// each stream received with its first event (retryLine). It returns at
// once; the stream's writer closes it. Only the first reason given counts:
// closeStream reports whether it was this one.
func (n *Node) closeStream(s *stream, reason string) bool {
	if s.end.CompareAndSwap(nil, &reason) {
		s.q.notify()
		return true
	}
	return false
}

// ending returns why s must close, or "".
func (s *stream) ending() string {
	if r := s.end.Load(); r != nil {
		return *r
	}
	return ""
}

func (s *stream) topicIndex(t string) int {
	for i, x := range s.topics {
		if x == t {
			return i
		}
	}
	return -1
}

// topicOf is the index of f's topic among the stream's, or -1.
func (s *stream) topicOf(f *frame) int {
	if len(s.topics) == 1 {
		return 0
	}
	return s.topicIndex(f.topic)
}

// appendRetry appends the stream's retry: line if it has not been sent,
// ahead of the first event.
func (s *stream) appendRetry(b []byte) []byte {
	return append(b, s.takeRetry()...)
}

// takeRetry returns the stream's retry: line the first time it is called,
// nil after. Whatever follows it is an event, a gap or the announcement,
// so the client now holds a position.
func (s *stream) takeRetry() []byte {
	r := s.retry
	if r != nil {
		s.retry = nil
		s.positioned.Store(true)
	}
	return r
}

// behind reports that live frame f continues from a position above the
// stream's position in its topic, with events the client lacks: entries
// between the two may exist that neither the replay nor the live path
// gave it (the broker's reader went on in a history the replay did not
// see, e.g. a stream deleted and restored while the client resumed). The
// stream must then end, so that the client resumes from its position and
// the replay applies the gap rule there. A position of 0-0 takes any frame
// when the client came without one, not when a reset gap restarted its
// history: then a frame that continues from past 0-0 follows entries the
// client never had (e.g. a stream deleted, told as a reset, then restored).
func (s *stream) behind(f *frame) bool {
	i := s.topicOf(f)
	if i < 0 || !s.pos[i].Less(f.prev) {
		return false
	}
	if s.pos[i].IsZero() && (s.restarted == nil || !s.restarted[i]) {
		return false
	}
	return f.after(s.pos[i]) < len(f.events)
}

// restart sets topic i's position to 0-0 after a reset gap: what follows
// is new to the client whatever its ID, and must start the new history.
func (s *stream) restart(i int) {
	s.pos[i] = pubsub.ID{}
	if s.restarted == nil {
		s.restarted = make([]bool, len(s.topics))
	}
	s.restarted[i] = true
}

// gather adds to w the events of f that the client has not had yet
// (replay may have sent the first ones), as the client must see them: with
// a composite id line before each body when it follows several topics.
// The frame's bytes go by reference; w takes over the caller's reference
// to f. It advances the stream's position and returns how many events it
// added.
func (s *stream) gather(w *wire, f *frame) int {
	w.hold(f)
	i := s.topicOf(f)
	if i < 0 {
		return 0
	}
	k := f.after(s.pos[i])
	if k == len(f.events) {
		return 0
	}
	if r := s.takeRetry(); r != nil {
		w.add(r)
	}
	sent := len(f.events) - k
	w.events += sent
	if len(s.topics) == 1 {
		s.pos[0] = f.ID()
		w.ref(f.buf[f.events[k].start:])
		return sent
	}
	for j := k; j < len(f.events); j++ {
		s.pos[i] = f.events[j].id
		// Only the id line is the client's own.
		s.scratch = append(s.scratch[:0], "id: "...)
		s.scratch = replay.AppendLastEventID(s.scratch, s.pos)
		s.scratch = append(s.scratch, '\n')
		w.add(s.scratch)
		w.ref(f.buf[f.events[j].body:f.end(j)])
	}
	return sent
}

// opening and heartbeat are blank lines, the only bytes between events
// that no client library dispatches as an event, even when a connection
// breaks right after them (a comment would do for browsers, not for
// r3labs/sse once it knows an event ID).
var (
	opening   = []byte("\n\n")
	heartbeat = []byte("\n\n")
)

// admission is what an admitted stream holds: a place in the connection
// count, in its address's count (MaxConnectionsPerIP), and its topics in
// the window. release gives back exactly what was taken, once.
type admission struct {
	n       *Node
	counted bool       // a place in n.conns
	ip      netip.Addr // held in the per-IP count when ipHeld
	ipHeld  bool
	topics  []string // acquired in the window
}

// release gives back what the admission holds; a second call does nothing.
func (a *admission) release() {
	for _, t := range a.topics {
		a.n.window.Release(t)
	}
	if a.ipHeld {
		a.n.perIP.release(a.ip)
	}
	if a.counted {
		a.n.conns.Add(-1)
	}
	*a = admission{n: a.n}
}
