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
	"syscall"
	"time"
)

// The writer pool (DESIGN "Lean connections"). Once its headers are out,
// an HTTP/1.1 stream is taken over from net/http: its request goroutine
// and net/http's buffers go away, and the node writes the chunked body
// itself.
//
//   - An idle stream holds no goroutine: a few hundred bytes of state and
//     its socket.
//   - When frames arrive, the queue wakes the stream (stream.schedule),
//     which puts it on one of the pool writers' ready queues. A writer runs
//     the stream's step (stream.go), the same decision the net/http driver
//     makes, and writes what it gathered as one chunk in one vectored write
//     of the shared frames that never waits (writev on the raw socket on
//     Linux, so no deadline is armed per write; elsewhere a net.Conn write
//     with a short deadline). A write cut short (the client's socket
//     buffer is full) is finished by a goroutine of its own within
//     SSE_WRITE_TIMEOUT, so a slow client never holds a pool writer.
//   - One goroutine sends heartbeats to streams idle for SSE_HEARTBEAT.
//   - A client that leaves is seen at once by the close watcher (epoll on
//     Linux, a small reader goroutine per stream elsewhere), or by the next
//     write.
//
// The goroutines, their owner and the lock order are in stream.go.

// poolWriteTimeout bounds a pool writer's write where there is no raw
// socket to write without waiting; past it the rest of the chunk goes to a
// goroutine of its own.
const poolWriteTimeout = 10 * time.Millisecond

// writerPool owns the hijacked streams' goroutines. The streams themselves
// are in the node's registry (Node.streams); the pool's are those with a
// connection.
type writerPool struct {
	n *Node

	mu      sync.Mutex // orders attach and add against close
	stopped bool

	// queues are the writers' ready lists, each shared by the writers of
	// queueProcs Ps (so one on a small machine); streams are spread over
	// them, and a writer with nothing to do takes from the others before
	// it sleeps.
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
	ready   ring[*stream]
	stopped bool
}

// push schedules s; it reports false once the pool is stopped.
func (q *readyQueue) push(s *stream) bool {
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		return false
	}
	q.ready.push(s)
	q.mu.Unlock()
	q.cond.Signal()
	return true
}

// pop takes the oldest stream, or nil; it waits for one when wait is set,
// and returns nil once the pool is stopped.
func (q *readyQueue) pop(wait bool) *stream {
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

// closeWatcher tells the pool at once when a client goes away.
type closeWatcher interface {
	add(s *stream) error
	remove(s *stream)
	close()
}

func newWriterPool(n *Node) (*writerPool, error) {
	workers := max(4, 2*runtime.GOMAXPROCS(0))
	queues := max(1, runtime.GOMAXPROCS(0)/queueProcs)
	p := &writerPool{n: n, stop: make(chan struct{}), queues: make([]readyQueue, queues)}
	for i := range p.queues {
		p.queues[i].cond.L = &p.queues[i].mu
	}
	w, err := newCloseWatcher(p)
	if err != nil {
		return nil, fmt.Errorf("node: close watcher: %w", err)
	}
	p.watch = w
	p.wg.Add(workers + 1)
	for i := range workers {
		go p.worker(i)
	}
	go p.heartbeats()
	return p, nil
}

// close stops every goroutine of the pool and closes its streams still
// open. It waits for all of them. Node.Close calls it once.
func (p *writerPool) close() {
	var pooled []*stream
	p.mu.Lock()
	p.stopped = true
	close(p.stop)
	p.n.streams.each(func(s *stream) {
		switch {
		case s.pooled.Load():
			pooled = append(pooled, s)
		case s.conn != nil:
			// Its request goroutine, still writing the opening or the
			// replay, fails its next write and ends the stream itself;
			// the wait below includes it.
			s.conn.Close()
		}
	})
	p.mu.Unlock()
	for i := range p.queues {
		p.queues[i].stop()
	}
	p.watch.close()
	for _, s := range pooled {
		p.end(s, reasonDrain)
	}
	p.wg.Wait()
}

// hijack takes s's connection over, registers s and returns the response
// header to write. It reports false, with nothing written, when the pool
// is closed or the ResponseWriter cannot be hijacked; the caller then
// keeps s on net/http. On true, the caller must call open.
func (p *writerPool) hijack(w http.ResponseWriter, s *stream) (http.Header, bool) {
	if !p.enter() {
		return nil, false
	}
	header := w.Header().Clone()
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.wg.Done()
		return nil, false
	}
	// The bufio.ReadWriter is dropped: a client of an event stream sends
	// nothing after its request, and keeping net/http's buffers is what
	// this path avoids.
	if tc, ok := conn.(*net.TCPConn); ok && p.n.cfg.SocketSendBuffer > 0 {
		_ = tc.SetWriteBuffer(p.n.cfg.SocketSendBuffer)
	}
	s.owned.Store(true) // the request goroutine writes until open hands over
	p.attach(s, conn)
	return header, true
}

// enter counts the request goroutine of a stream about to be taken over,
// which close waits for. It reports false once the pool is closed.
func (p *writerPool) enter() bool {
	return p.unlessClosed(func() { p.wg.Add(1) })
}

// unlessClosed runs f under p.mu unless the pool is closed, and reports
// whether it ran: close sees all that f did, or f never runs.
func (p *writerPool) unlessClosed(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	f()
	return true
}

// attach gives s its connection and registers it, under p.mu: close either
// finds s in the registry and closes its connection, or has closed the
// pool before, and the connection is closed here.
func (p *writerPool) attach(s *stream, conn net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.conn, s.ready = conn, &p.queues[p.next.Add(1)%uint32(len(p.queues))]
	if sc, ok := conn.(syscall.Conn); ok {
		s.raw, _ = sc.SyscallConn()
	}
	p.n.streams.add(s)
	if p.stopped {
		conn.Close()
	}
}

// open runs on the request goroutine of a hijacked stream: response
// header, opening, replay, then hand over to the writers. The request
// goroutine returns right after.
func (p *writerPool) open(s *stream, header http.Header) {
	defer p.wg.Done()
	to := &connSink{conn: s.conn, header: appendResponseHeader(nil, header)}
	// The request's context ends when the handler returns, and net/http no
	// longer watches a hijacked connection: replay runs under the node's.
	if reason := p.n.start(p.n.ctx, to, new(wire), s); reason != "" {
		p.end(s, reason)
		return
	}
	// The pool's writes set no deadline (they never wait): the replay's
	// must not outlive it.
	_ = s.conn.SetWriteDeadline(time.Time{})
	s.lastWrite.Store(time.Now().UnixNano())
	if err := p.add(s); err != nil {
		p.end(s, reasonWriteError)
		return
	}
	p.release(s) // frames, a heartbeat or a drain may have come meanwhile
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

// add hands a stream over to the writers.
func (p *writerPool) add(s *stream) error {
	if !p.unlessClosed(func() { s.pooled.Store(true) }) {
		return ErrClosed
	}
	return p.watch.add(s)
}

// release gives up writing s, then takes it back if work arrived
// meanwhile, so that no wake-up is lost between the two.
func (p *writerPool) release(s *stream) {
	s.owned.Store(false)
	if s.q.pending() || s.hbDue.Load() || p.n.draining.Load() || s.end.Load() != nil {
		s.schedule()
	}
}

// end ends a pool stream once: stop watching, close the socket, release
// what it held.
func (p *writerPool) end(s *stream, reason string) {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	p.watch.remove(s)
	s.conn.Close()
	p.n.finish(s, reason)
}

// queueProcs is how many Ps' writers share one ready queue. A queue per
// writer spreads its mutex, but streams then wait behind writers that are
// not running while the others serve later arrivals: with 2 Ps, one queue
// shared by all writers (FIFO over the whole fan-out) gave S2 a p99 of 193
// and 197 ms where a queue per writer gave 222 and 231 ms, for the same CPU.
const queueProcs = 4

// worker is pool writer i: it serves its own ready queue (shared with the
// other writers of that queue), and takes from the others before it
// sleeps, so that no stream waits behind busy writers while another is
// idle.
func (p *writerPool) worker(i int) {
	defer p.wg.Done()
	w := &poolWriter{p: p}
	own := &p.queues[i%len(p.queues)]
	for {
		s := own.pop(false)
		for k := 1; s == nil && k < len(p.queues); k++ {
			s = p.queues[(i+k)%len(p.queues)].pop(false)
		}
		if s == nil {
			if s = own.pop(true); s == nil {
				return // stopped
			}
		}
		w.serve(s)
	}
}

// poolWriter is one pool writer's reusable state.
type poolWriter struct {
	p     *writerPool
	batch []*frame
	out   *wire
	vw    vecWriter
}

// serve writes what one stream has ready, as one chunk in one vectored
// write, then gives the stream up (it is scheduled again if more arrived).
func (w *poolWriter) serve(s *stream) {
	p, n := w.p, w.p.n
	if s.done.Load() {
		return
	}
	if w.out == nil {
		w.out = new(wire)
	}
	out := w.out
	var reason string
	reason, w.batch = n.step(s, out, w.batch, s.hbDue.Swap(false))
	if cap(w.batch) > 1024 {
		w.batch = nil
	}
	if reason != "" {
		out.reset()
		p.end(s, reason)
		return
	}
	if out.size == 0 {
		p.release(s)
		return
	}
	start := time.Now()
	vec := out.chunk()
	raw, err := w.vw.writeNow(s.raw, vec)
	if !raw {
		// No raw descriptor: a net.Conn write, bounded by a short deadline.
		_ = s.conn.SetWriteDeadline(start.Add(min(poolWriteTimeout, n.cfg.WriteTimeout)))
		if _, err = vec.WriteTo(s.conn); errors.Is(err, os.ErrDeadlineExceeded) && n.cfg.WriteTimeout > poolWriteTimeout {
			err = nil // the rest is finished below
		}
	}
	if err == nil && len(*vec) > 0 {
		// The client's socket buffer is full: finish on a goroutine of
		// the stream's own, so the pool moves on. It still owns the
		// stream, and takes the wire (the frames stay referenced, not
		// copied).
		w.out = nil
		p.wg.Add(1)
		go p.finishWrite(s, out, vec, start)
		return
	}
	p.finished(s, out, start, err)
}

// finished records the end of a write of out to s, which started at
// start, and ends the stream if it failed, or gives up writing if not.
func (p *writerPool) finished(s *stream, out *wire, start time.Time, err error) {
	sent, live := out.events, out.live
	out.reset()
	if err != nil {
		p.end(s, p.n.writeFailed(s, err))
		return
	}
	now := time.Now() // one clock read for both
	s.lastWrite.Store(now.UnixNano())
	p.n.wrote(start, now, sent, live)
	p.release(s)
}

// finishWrite writes the rest of a chunk for a slow client, within the
// write timeout counted from the first attempt.
func (p *writerPool) finishWrite(s *stream, out *wire, rest *net.Buffers, start time.Time) {
	defer p.wg.Done()
	err := armWrite(s, s.conn, start.Add(p.n.cfg.WriteTimeout))
	if err == nil {
		_, err = rest.WriteTo(s.conn)
	}
	if err == nil {
		// Pool writes set no deadline: this one must not outlive the write.
		_ = s.conn.SetWriteDeadline(time.Time{})
	}
	p.finished(s, out, start, err)
}

// errOverflow stands for a write not attempted because the queue overflowed.
var errOverflow = errors.New("node: queue overflowed")

// armWrite sets the deadline of the writes to s that follow, unless s's
// queue has overflowed (errOverflow). A pool stream's overflow cuts a stuck
// write by moving its deadline to now (schedule); a deadline set after
// that cut, for the next write of a replay or of a slow write's finisher,
// would undo it, so the check follows the set.
func armWrite(s *stream, to interface{ SetWriteDeadline(time.Time) error }, deadline time.Time) error {
	if err := to.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if s.q.overflowed() {
		return errOverflow
	}
	return nil
}

// heartbeats marks the pool's streams idle for SSE_HEARTBEAT and
// schedules them.
func (p *writerPool) heartbeats() {
	defer p.wg.Done()
	every := min(max(p.n.cfg.Heartbeat/4, 5*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			idle := now.Add(-p.n.cfg.Heartbeat).UnixNano()
			p.n.streams.each(func(s *stream) {
				if !s.pooled.Load() || s.lastWrite.Load() > idle || s.hbDue.Load() {
					return
				}
				s.hbDue.Store(true)
				s.schedule()
			})
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
