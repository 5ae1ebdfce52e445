package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The lean path (DESIGN "Lean connections"). Once its headers are out, an
// HTTP/1.1 stream is taken over from net/http: its request goroutine and
// net/http's buffers go away, and the node writes the chunked body itself.
//
//   - An idle stream holds no goroutine: a few hundred bytes of state and
//     its socket.
//   - When frames arrive, the queue schedules the stream on one of the pool
//     writers' ready queues. A writer runs the stream's step (step.go), the
//     same decision the net/http driver makes, and writes what it gathered
//     as one chunk in one vectored write of the shared frames, with a short
//     deadline. A write cut short (the client's socket buffer is full) is
//     finished by a goroutine of its own within SSE_WRITE_TIMEOUT, so a
//     slow client never holds a pool writer.
//   - One goroutine sends heartbeats to streams idle for SSE_HEARTBEAT.
//   - A client that leaves is seen at once by the close watcher (epoll on
//     Linux, a small reader goroutine per stream elsewhere), or by the next
//     write.
//
// Goroutines and their owner, lean: the pool writers, the heartbeat
// sweeper, the close watcher's, each slow write's finisher, and the request
// goroutine of a stream still writing its opening and replay (enter/leave).
// close stops them all and waits for each.
//
// Writes to one stream are serialized by sched: whoever sets it (the
// request goroutine while it replays, a pool writer, a slow write's
// finisher) is the only one writing until it clears it.
//
// Locks, in order: a hub shard's (fan-out notifies under it), lean.mu
// (the registries), a readyQueue's mu. A client queue's mu is never held
// while another lock is taken.

// poolWriteTimeout bounds a pool writer's write; past it the rest of the
// chunk goes to a goroutine of its own.
const poolWriteTimeout = 10 * time.Millisecond

// leanConn is a hijacked HTTP/1.1 stream.
type leanConn struct {
	n    *Node
	c    *client
	conn net.Conn // set once by hijack (under lean.mu, which close reads it under)

	sched     atomic.Bool  // someone owns writing; see above
	done      atomic.Bool  // closed
	hbDue     atomic.Bool  // a heartbeat is due
	lastWrite atomic.Int64 // unix nanoseconds of the last write

	slot  int         // index in lean.conns; guarded by lean.mu
	queue *readyQueue // the writers' queue it waits in when scheduled; immutable
	token uint64      // close-watch registration; guarded by the watcher

	header http.Header // response header, until open writes it
}

// lean owns the lean path's goroutines and the streams handed to them.
//
// Lock order: lean.mu, then a readyQueue's mu. A wake-up (schedule) takes
// only its stream's readyQueue lock, never lean.mu, so fan-out under a hub
// shard lock never waits for a node-wide mutex.
type lean struct {
	n *Node

	mu      sync.Mutex
	conns   []*leanConn            // every stream handed over, for heartbeats and drain
	opening map[*leanConn]struct{} // streams whose request goroutine writes the opening and replay
	stopped bool

	// queues are the writers' ready lists, one per writer; streams are
	// spread over them, and a writer with nothing to do takes from the
	// others before it sleeps.
	queues []readyQueue
	next   atomic.Uint32 // round robin over queues for new streams

	watch closeWatcher
	stop  chan struct{} // closed by close
	wg    sync.WaitGroup
}

// readyQueue is one writer's list of streams waiting to be written, FIFO.
type readyQueue struct {
	mu      sync.Mutex
	cond    sync.Cond
	ready   ring[*leanConn]
	stopped bool
}

// push schedules lc; it reports false once the pool is stopped.
func (q *readyQueue) push(lc *leanConn) bool {
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		return false
	}
	q.ready.push(lc)
	q.mu.Unlock()
	q.cond.Signal()
	return true
}

// pop takes the oldest stream, or nil; it waits for one when wait is set,
// and returns nil once the pool is stopped.
func (q *readyQueue) pop(wait bool) *leanConn {
	q.mu.Lock()
	defer q.mu.Unlock()
	for wait && q.ready.len() == 0 && !q.stopped {
		q.cond.Wait()
	}
	if q.stopped || q.ready.len() == 0 {
		return nil
	}
	return q.ready.pop()
}

func (q *readyQueue) stop() {
	q.mu.Lock()
	q.stopped = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// closeWatcher tells the node at once when a client goes away.
type closeWatcher interface {
	add(lc *leanConn) error
	remove(lc *leanConn)
	close()
}

func newLean(n *Node) (*lean, error) {
	workers := max(4, 2*runtime.GOMAXPROCS(0))
	l := &lean{n: n, stop: make(chan struct{}), queues: make([]readyQueue, workers), opening: make(map[*leanConn]struct{})}
	for i := range l.queues {
		l.queues[i].cond.L = &l.queues[i].mu
	}
	w, err := newCloseWatcher(l)
	if err != nil {
		return nil, fmt.Errorf("node: close watcher: %w", err)
	}
	l.watch = w
	l.wg.Add(workers + 1)
	for i := range workers {
		go l.worker(i)
	}
	go l.heartbeats()
	return l, nil
}

// close stops every goroutine of the lean path and closes the streams still
// open. It waits for all of them.
func (l *lean) close() {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return
	}
	l.stopped = true
	close(l.stop)
	// A request goroutine still opening its stream (replay) fails its
	// next write and ends the stream itself; the wait below includes it.
	for lc := range l.opening {
		if lc.conn != nil {
			lc.conn.Close()
		}
	}
	l.mu.Unlock()
	for i := range l.queues {
		l.queues[i].stop()
	}
	l.watch.close()
	l.mu.Lock()
	open := append([]*leanConn(nil), l.conns...)
	l.mu.Unlock()
	for _, lc := range open {
		lc.close(reasonDrain)
	}
	l.wg.Wait()
}

// hijack takes the connection over. It returns nil, with nothing written,
// when the ResponseWriter cannot be hijacked; the caller then stays on the
// net/http path.
func (n *Node) hijack(w http.ResponseWriter, c *client, drop bool) *leanConn {
	if n.lean == nil {
		return nil
	}
	lc := &leanConn{n: n, c: c, queue: n.lean.queueFor()}
	if !n.lean.enter(lc) {
		return nil
	}
	header := w.Header().Clone()
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		n.lean.leave(lc)
		return nil
	}
	// The bufio.ReadWriter is dropped: a client of an event stream sends
	// nothing after its request, and keeping net/http's buffers is what
	// this path avoids.
	if tc, ok := conn.(*net.TCPConn); ok && n.cfg.SocketSendBuffer > 0 {
		_ = tc.SetWriteBuffer(n.cfg.SocketSendBuffer)
	}
	n.lean.setConn(lc, conn)
	lc.sched.Store(true) // the request goroutine writes until open hands over
	c.q = newQueue(n.cfg.ClientBuffer, n.cfg.ClientBufferBytes, drop, lc.schedule)
	lc.header = header
	return lc
}

// open runs on the request goroutine: response header, opening, replay,
// then hand over to the pool. The request goroutine returns right after.
func (lc *leanConn) open(r *http.Request) {
	n := lc.n
	defer n.lean.leave(lc)
	s := &connSink{conn: lc.conn, header: appendResponseHeader(nil, lc.header)}
	lc.header = nil
	// The request's context ends when the handler returns, and net/http no
	// longer watches a hijacked connection: replay runs under the node's.
	if reason := n.start(n.ctx, s, new(wire), lc.c); reason != "" {
		lc.close(reason)
		return
	}
	lc.lastWrite.Store(time.Now().UnixNano())
	if err := n.lean.add(lc); err != nil {
		lc.close(reasonWriteError)
		return
	}
	lc.release() // frames, a heartbeat or a drain may have come meanwhile
}

func appendResponseHeader(b []byte, h http.Header) []byte {
	b = append(b, "HTTP/1.1 200 OK\r\n"...)
	for k, vs := range h {
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	return append(b, "\r\nTransfer-Encoding: chunked\r\n\r\n"...)
}

// schedule puts the stream on the pool's ready list unless someone already
// owns its writing. It is the queue's notify, called by fan-out.
func (lc *leanConn) schedule() {
	if lc.done.Load() {
		return
	}
	if !lc.sched.CompareAndSwap(false, true) {
		// Its writer is busy, maybe stuck on a client that stopped
		// reading. If the queue has just overflowed, cut the stuck write
		// now rather than at its deadline: the client is too slow.
		if lc.c.q.overflowed() {
			_ = lc.conn.SetWriteDeadline(time.Now())
		}
		return
	}
	lc.queue.push(lc)
}

// queueFor picks the ready queue of a new stream.
func (l *lean) queueFor() *readyQueue {
	return &l.queues[l.next.Add(1)%uint32(len(l.queues))]
}

// release gives up writing, then takes it back if work arrived meanwhile,
// so that no notify is lost between the two.
func (lc *leanConn) release() {
	lc.sched.Store(false)
	if lc.c.q.pending() || lc.hbDue.Load() || lc.n.draining.Load() || lc.c.end.Load() != nil {
		lc.schedule()
	}
}

// enter registers the request goroutine of a stream about to be taken
// over: close closes its connection and waits for it. It reports false
// once the lean path is closed.
func (l *lean) enter(lc *leanConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.opening[lc] = struct{}{}
	l.wg.Add(1)
	return true
}

// setConn gives an entered stream its connection, closed at once if the
// lean path closed meanwhile (close could not see it).
func (l *lean) setConn(lc *leanConn, conn net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lc.conn = conn
	if l.stopped {
		conn.Close()
	}
}

// leave marks the end of the request goroutine that entered with lc.
func (l *lean) leave(lc *leanConn) {
	l.mu.Lock()
	delete(l.opening, lc)
	l.mu.Unlock()
	l.wg.Done()
}

// add registers a stream handed over to the pool.
func (l *lean) add(lc *leanConn) error {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return errors.New("node: closed")
	}
	lc.slot = len(l.conns)
	l.conns = append(l.conns, lc)
	l.mu.Unlock()
	if err := l.watch.add(lc); err != nil {
		return err
	}
	return nil
}

func (l *lean) remove(lc *leanConn) {
	l.mu.Lock()
	if i := lc.slot; i >= 0 && i < len(l.conns) && l.conns[i] == lc {
		last := len(l.conns) - 1
		l.conns[i] = l.conns[last]
		l.conns[i].slot = i
		l.conns[last] = nil
		l.conns = l.conns[:last]
		if cap(l.conns) > 1024 && len(l.conns) < cap(l.conns)/4 {
			l.conns = append([]*leanConn(nil), l.conns...)
		}
	}
	lc.slot = -1
	l.mu.Unlock()
}

// drain asks every stream's writer to close its stream.
func (l *lean) drain() {
	l.mu.Lock()
	open := append([]*leanConn(nil), l.conns...)
	l.mu.Unlock()
	for _, lc := range open {
		lc.schedule()
	}
}

// close ends the stream once: stop watching, close the socket, release
// what it held.
func (lc *leanConn) close(reason string) {
	if !lc.done.CompareAndSwap(false, true) {
		return
	}
	if l := lc.n.lean; l != nil {
		l.watch.remove(lc)
		l.remove(lc)
	}
	lc.conn.Close()
	lc.n.finish(lc.c, reason)
}

// worker is pool writer i: it serves its own ready queue, and takes from
// the others before it sleeps, so that no stream waits behind a busy
// writer while another is idle.
func (l *lean) worker(i int) {
	defer l.wg.Done()
	w := &leanWriter{l: l}
	own := &l.queues[i]
	for {
		lc := own.pop(false)
		for k := 1; lc == nil && k < len(l.queues); k++ {
			lc = l.queues[(i+k)%len(l.queues)].pop(false)
		}
		if lc == nil {
			if lc = own.pop(true); lc == nil {
				return // stopped
			}
		}
		w.serve(lc)
	}
}

// leanWriter is one pool writer's reusable state.
type leanWriter struct {
	l     *lean
	batch []*frame
	out   *wire
}

// serve writes what one stream has ready, as one chunk in one vectored
// write, then gives the stream up (it is scheduled again if more arrived).
func (w *leanWriter) serve(lc *leanConn) {
	n := lc.n
	if lc.done.Load() {
		return
	}
	if w.out == nil {
		w.out = new(wire)
	}
	out := w.out
	var reason string
	reason, w.batch = n.step(lc.c, out, w.batch, lc.hbDue.Swap(false))
	if cap(w.batch) > 1024 {
		w.batch = nil
	}
	if reason != "" {
		out.reset()
		lc.close(reason)
		return
	}
	if out.size == 0 {
		lc.release()
		return
	}
	start := time.Now()
	vec := out.chunk()
	_ = lc.conn.SetWriteDeadline(start.Add(min(poolWriteTimeout, n.cfg.WriteTimeout)))
	_, err := vec.WriteTo(lc.conn)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && len(*vec) > 0 && n.cfg.WriteTimeout > poolWriteTimeout {
		// The client's socket buffer is full: finish on a goroutine of
		// the stream's own, so the pool moves on. It still owns sched,
		// and takes the wire (the frames stay referenced, not copied).
		w.out = nil
		w.l.wg.Add(1)
		go w.l.finishWrite(lc, out, vec, start)
		return
	}
	lc.finished(out, start, err)
}

// finished records the end of a write of out, which started at start, and
// closes the stream if it failed, or gives up writing if not.
func (lc *leanConn) finished(out *wire, start time.Time, err error) {
	sent := out.events
	out.reset()
	if err != nil {
		if why, ok := lc.c.q.overflow(); ok {
			// The write was cut because the queue overflowed.
			lc.n.m.slowDisconnects.WithLabelValues(why.reason()).Inc()
			lc.close(reasonSlowClient)
			return
		}
		lc.close(lc.n.writeFailed(err))
		return
	}
	lc.lastWrite.Store(time.Now().UnixNano())
	lc.n.wrote(start, sent)
	lc.release()
}

// finishWrite writes the rest of a chunk for a slow client, within the
// write timeout counted from the first attempt.
func (l *lean) finishWrite(lc *leanConn, out *wire, rest *net.Buffers, start time.Time) {
	defer l.wg.Done()
	_ = lc.conn.SetWriteDeadline(start.Add(lc.n.cfg.WriteTimeout))
	// An overflow that cut the pool writer's write must not wait out the
	// deadline just set; one after this check cuts this write (schedule).
	var err error
	if _, ok := lc.c.q.overflow(); ok {
		err = errOverflow
	} else {
		_, err = rest.WriteTo(lc.conn)
	}
	lc.finished(out, start, err)
}

// errOverflow stands for a write not attempted because the queue overflowed.
var errOverflow = errors.New("node: queue overflowed")

// heartbeats marks streams idle for SSE_HEARTBEAT and schedules them.
func (l *lean) heartbeats() {
	defer l.wg.Done()
	every := min(max(l.n.cfg.Heartbeat/4, 5*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case now := <-t.C:
			idle := now.Add(-l.n.cfg.Heartbeat).UnixNano()
			l.mu.Lock()
			for _, lc := range l.conns {
				if lc.lastWrite.Load() > idle || lc.hbDue.Load() {
					continue
				}
				lc.hbDue.Store(true)
				if lc.sched.CompareAndSwap(false, true) {
					lc.queue.push(lc)
				}
			}
			l.mu.Unlock()
		}
	}
}

// ring is a growable FIFO that reuses its storage.
type ring[T any] struct {
	buf        []T
	head, size int
}

func (r *ring[T]) len() int { return r.size }

func (r *ring[T]) push(v T) {
	if r.size == len(r.buf) {
		buf := make([]T, max(16, 2*len(r.buf)))
		for i := range r.size {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = v
	r.size++
}

func (r *ring[T]) pop() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return v
}
