package node

import "sync"

// overflow says why a queue refused a frame.
type overflow uint8

const (
	accepted overflow = iota
	fullFrames
	fullBytes
	queueClosed
)

func (o overflow) reason() string {
	switch o {
	case fullFrames:
		return "queue_frames"
	case fullBytes:
		return "queue_bytes"
	}
	return "closed"
}

// queue is a client's bounded frame queue. The hub pushes without blocking;
// the client's writer takes everything at once. A 1-slot signal channel
// wakes the writer, so a burst of pushes costs one wake-up.
//
// signal is never closed: pushers may still hold the queue after the client
// is gone. A closed queue refuses frames and releases what it held.
type queue struct {
	mu       sync.Mutex
	frames   []*Frame // ring buffer, len == capacity; immutable length
	head     int      // index of the oldest frame
	n        int      // frames held
	bytes    int      // bytes held
	maxBytes int      // immutable
	closed   bool
	dropOld  bool     // immutable: policy drop instead of disconnect
	why      overflow // why the queue was closed by overflow, if it was
	signal   chan struct{}
}

func newQueue(frames, maxBytes int, drop bool) *queue {
	return &queue{
		frames:   make([]*Frame, frames),
		maxBytes: maxBytes,
		dropOld:  drop,
		signal:   make(chan struct{}, 1),
	}
}

// push offers f to the queue. On accepted the queue owns one reference the
// caller had already taken (the hub retains once per subscriber up front). With the disconnect policy an overflow closes the queue
// (the writer then ends the stream); with drop, the new frame is refused.
func (q *queue) push(f *Frame) overflow {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return queueClosed
	}
	o := accepted
	switch {
	case q.n == len(q.frames):
		o = fullFrames
	case q.bytes+f.Len() > q.maxBytes && q.n > 0:
		// A single frame larger than the byte bound still goes through
		// when the queue is empty, or it could never be delivered.
		o = fullBytes
	}
	if o != accepted {
		if !q.dropOld {
			q.closed = true
			q.why = o
			q.releaseLocked()
		}
		q.mu.Unlock()
		if !q.dropOld {
			q.wake()
		}
		return o
	}
	q.frames[(q.head+q.n)%len(q.frames)] = f
	q.n++
	q.bytes += f.Len()
	q.mu.Unlock()
	q.wake()
	return accepted
}

func (q *queue) wake() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take moves every queued frame into dst, oldest first. closed reports that
// the queue was closed by overflow; the reason is then in why.
func (q *queue) take(dst []*Frame) (out []*Frame, closed bool, why overflow) {
	q.mu.Lock()
	for q.n > 0 {
		dst = append(dst, q.frames[q.head])
		q.frames[q.head] = nil
		q.head = (q.head + 1) % len(q.frames)
		q.n--
	}
	q.bytes = 0
	closed, why = q.closed, q.why
	q.mu.Unlock()
	return dst, closed, why
}

// depth is the number of frames waiting.
func (q *queue) depth() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// close refuses further frames and releases the ones held.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.releaseLocked()
	q.mu.Unlock()
}

func (q *queue) releaseLocked() {
	for q.n > 0 {
		q.frames[q.head].Release()
		q.frames[q.head] = nil
		q.head = (q.head + 1) % len(q.frames)
		q.n--
	}
	q.bytes = 0
}
