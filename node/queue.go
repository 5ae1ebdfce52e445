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

// queue is a stream's bounded frame queue. The hub pushes without blocking;
// the stream's writer takes everything at once. notify (stream.wake) tells
// the writer there is work.
//
// The ring starts small and grows to the bound, so an idle client holds a
// few pointers, not the whole bound.
type queue struct {
	mu       sync.Mutex
	frames   []*frame // ring buffer; grows up to max
	head     int      // index of the oldest frame
	n        int      // frames held
	bytes    int      // bytes held
	max      int      // immutable: frame bound
	maxBytes int      // immutable: byte bound
	closed   bool
	drop     bool     // immutable: policy drop instead of disconnect
	why      overflow // why the queue was closed by overflow, if it was
	notify   func()   // immutable; called without mu held
}

func newQueue(frames, maxBytes int, drop bool, notify func()) *queue {
	return &queue{max: frames, maxBytes: maxBytes, drop: drop, notify: notify}
}

// pushAll offers frames to the queue in order under one lock, and wakes
// the writer once: frames the broker read together reach the writer
// together, so it writes them in one chunk rather than the first alone.
// On accepted the queue owns one reference to the frame that the caller
// had already taken (the hub retains once per subscriber up front); for
// every frame not taken, refused is called, with q.mu held (it must not
// touch the queue), and the caller keeps that reference. With the
// disconnect policy an overflow closes the queue (the writer then ends the
// stream) and the frames after it are refused as queueClosed; with drop,
// only the frame that does not fit is refused. It returns how many frames
// the queue took.
func (q *queue) pushAll(frames []*frame, refused func(*frame, overflow)) (took int) {
	q.mu.Lock()
	wake := false
	for _, f := range frames {
		if q.closed {
			refused(f, queueClosed)
			continue
		}
		o := accepted
		switch {
		case q.n == q.max:
			o = fullFrames
		case q.bytes+f.Len() > q.maxBytes && q.n > 0:
			// A single frame larger than the byte bound still goes
			// through when the queue is empty, or it could never be
			// delivered.
			o = fullBytes
		}
		if o != accepted {
			if !q.drop {
				q.closed = true
				q.why = o
				q.releaseLocked()
				wake = true
			}
			refused(f, o)
			continue
		}
		if q.n == len(q.frames) {
			q.growLocked()
		}
		q.frames[(q.head+q.n)%len(q.frames)] = f
		q.n++
		q.bytes += f.Len()
		took++
		wake = true
	}
	q.mu.Unlock()
	if wake {
		q.notify()
	}
	return took
}

func (q *queue) growLocked() {
	size := min(max(2*len(q.frames), 4), q.max)
	frames := make([]*frame, size)
	for i := range q.n {
		frames[i] = q.frames[(q.head+i)%len(q.frames)]
	}
	q.frames, q.head = frames, 0
}

// take moves every queued frame into dst, oldest first. closed reports that
// the queue was closed by overflow; the reason is then in why.
func (q *queue) take(dst []*frame) (out []*frame, closed bool, why overflow) {
	q.mu.Lock()
	for q.n > 0 {
		dst = append(dst, q.frames[q.head])
		q.frames[q.head] = nil
		q.head = (q.head + 1) % len(q.frames)
		q.n--
	}
	q.bytes = 0
	// Closed by overflow only: a queue closed because its stream ended
	// (close) is not the client's slowness.
	closed, why = q.why != accepted, q.why
	q.mu.Unlock()
	return dst, closed, why
}

// pending reports whether frames wait, or the queue was closed by overflow:
// either way the writer has something to do.
func (q *queue) pending() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n > 0 || q.why != accepted
}

// overflowed reports whether the queue was closed by overflow.
func (q *queue) overflowed() bool {
	_, ok := q.overflow()
	return ok
}

// overflow returns why the queue was closed by overflow, if it was.
func (q *queue) overflow() (overflow, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.why, q.why != accepted
}

// close refuses further frames and releases the ones held.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.releaseLocked()
	q.frames = nil
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
