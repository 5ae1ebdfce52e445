package node

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
	"weak"

	"github.com/ssecluster/ssecluster/pubsub"
)

// frame is one or more consecutive events of a topic, encoded once as SSE
// bytes and shared by every local subscriber. It is reference counted: each
// queue that holds it owns one reference, and the last Release returns it
// to its pool.
//
// A broker read that brings several entries of a topic becomes one frame,
// so a burst costs each subscriber one queue slot and one write, not one
// per event. events records where each event and its body (everything
// after the id line) start, so that a client of several topics can write
// its own composite id line before each body, and a client that already has
// the first events (from replay) can skip them.
type frame struct {
	buf    []byte
	events []frameEvent
	topic  string
	// prev is the ID the broker delivered before the frame's first event,
	// which the frame continues from; zero when unknown (replay frames, the
	// first delivery after a reset).
	prev  pubsub.ID
	refs  atomic.Int32
	class int8 // pool size class; -1 when not pooled
}

// frameEvent locates one event inside a frame's buf.
type frameEvent struct {
	id          pubsub.ID
	start, body int // offsets of the id line and of the body
}

// Bytes is the whole frame, id lines included.
func (f *frame) Bytes() []byte { return f.buf }

// Body is the first event without its id line.
func (f *frame) Body() []byte { return f.buf[f.events[0].body:f.end(0)] }

// ID is the stream entry ID of the frame's last event.
func (f *frame) ID() pubsub.ID { return f.events[len(f.events)-1].id }

// Topic is the topic the frame was published on.
func (f *frame) Topic() string { return f.topic }

// Len is the frame's size in bytes, which counts against a client's queue.
func (f *frame) Len() int { return len(f.buf) }

// end is where event k ends.
func (f *frame) end(k int) int {
	if k+1 < len(f.events) {
		return f.events[k+1].start
	}
	return len(f.buf)
}

// after returns the index of the first event with an ID above pos, or
// len(f.events) when the client has them all. IDs increase within a frame.
func (f *frame) after(pos pubsub.ID) int {
	for k := range f.events {
		if pos.Less(f.events[k].id) {
			return k
		}
	}
	return len(f.events)
}

// retain adds n references.
func (f *frame) retain(n int32) { f.refs.Add(n) }

// Release drops one reference; the last one returns the buffer to the pool.
func (f *frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		putFrame(f)
	case n < 0:
		panic("node: frame released more often than retained")
	}
}

// Pooled frames come in size classes so that a 1 MiB event does not pin
// 1 MiB in every pooled slot. Frames larger than the largest class are
// allocated and left to the garbage collector.
var frameClasses = [...]int{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10}

var framePools [len(frameClasses)]sync.Pool

func classFor(n int) int {
	for i, c := range frameClasses {
		if n <= c {
			return i
		}
	}
	return -1
}

// newFrame returns a frame with one reference and room for n bytes.
func newFrame(n int) *frame {
	c := classFor(n)
	var f *frame
	if c >= 0 {
		if v := framePools[c].Get(); v != nil {
			f = v.(*frame)
		} else {
			f = &frame{buf: make([]byte, 0, frameClasses[c])}
		}
	} else {
		f = &frame{buf: make([]byte, 0, n)}
	}
	f.class = int8(c)
	f.refs.Store(1)
	return f
}

func putFrame(f *frame) {
	if f.class < 0 {
		// Not pooled: left whole for the garbage collector, and for
		// sharedFrames, which may still hand it out.
		return
	}
	f.topic = ""
	f.buf = f.buf[:0]
	f.events = f.events[:0]
	if f.class >= 0 && cap(f.buf) == frameClasses[f.class] {
		framePools[f.class].Put(f)
	}
}

// encodeOne encodes e as an SSE frame for topic into a pooled frame with
// one reference held by the caller.
func encodeOne(topic string, e *pubsub.Entry) *frame {
	return encodeFrame(topic, oneEntry(e), frameSize(e))
}

// sharedFrames lets every replay of one large entry write the same frame:
// a replay encodes what it sends, and without sharing, a 4 MiB entry of
// line breaks (28 MiB encoded) would cost 28 MiB per resuming client.
// Frames small enough for the pools are encoded per replay; they cost at
// most the replay's flush bytes each (see replayFlushBytes).
//
// An entry is known by its data's identity, not only by topic and ID: a
// reset stream may reuse an ID for other data, while replays of one ring
// entry or of one shared source page hold the same data slice. The map
// holds weak pointers, so a frame lives as long as a write holds it, and
// one replay encodes while the others of a reconnect storm wait for it.
type sharedFrames struct {
	mu sync.Mutex
	m  map[sharedKey]*sharedFrame
}

type sharedKey struct {
	topic string
	id    pubsub.ID
	data  weak.Pointer[byte]
	size  int
}

type sharedFrame struct {
	ready chan struct{} // closed once f is set
	f     weak.Pointer[frame]
}

// encode returns e's frame for topic, with one reference for the caller.
func (c *sharedFrames) encode(topic string, e *pubsub.Entry) *frame {
	size := frameSize(e)
	if classFor(size) >= 0 || len(e.Data) == 0 {
		return encodeFrame(topic, oneEntry(e), size)
	}
	k := sharedKey{topic, e.ID, weak.Make(&e.Data[0]), len(e.Data)}
	for {
		sf, mine := c.claim(k)
		if mine {
			f := encodeFrame(topic, oneEntry(e), size)
			sf.f = weak.Make(f)
			close(sf.ready)
			runtime.AddCleanup(f, c.forget, sharedEntry{k, sf})
			return f
		}
		<-sf.ready
		// Unpooled frames are never emptied (putFrame), so a frame whose
		// references all went is still whole while the collector has
		// not taken it.
		if f := sf.f.Value(); f != nil {
			f.retain(1)
			return f
		}
		c.forget(sharedEntry{k, sf})
	}
}

// claim returns k's entry, and whether the caller made it and must encode.
func (c *sharedFrames) claim(k sharedKey) (*sharedFrame, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sf := c.m[k]; sf != nil {
		return sf, false
	}
	if c.m == nil {
		c.m = make(map[sharedKey]*sharedFrame)
	}
	sf := &sharedFrame{ready: make(chan struct{})}
	c.m[k] = sf
	return sf, true
}

type sharedEntry struct {
	k  sharedKey
	sf *sharedFrame
}

// forget drops an entry whose frame is gone, unless k was claimed again.
func (c *sharedFrames) forget(e sharedEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[e.k] == e.sf {
		delete(c.m, e.k)
	}
}

// len is how many entries are shared.
func (c *sharedFrames) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// maxBatchBytes bounds a frame that holds several events, so that batch
// frames stay in pooled size classes and a client's byte bound sees them
// in reasonable steps.
const maxBatchBytes = 16 << 10

// encodeFrames encodes entries into as few frames as fit maxBatchBytes
// (one entry never splits), appending them to dst. Each frame holds one
// reference for the caller.
func encodeFrames(dst []*frame, topic string, prev pubsub.ID, entries []pubsub.Entry) []*frame {
	for len(entries) > 0 {
		n, size := 1, frameSize(&entries[0])
		for n < len(entries) {
			s := frameSize(&entries[n])
			if size+s > maxBatchBytes {
				break
			}
			size += s
			n++
		}
		f := encodeFrame(topic, entries[:n], size)
		f.prev, prev = prev, entries[n-1].ID
		dst = append(dst, f)
		entries = entries[n:]
	}
	return dst
}

func encodeFrame(topic string, entries []pubsub.Entry, size int) *frame {
	f := newFrame(size)
	for i := range entries {
		e := &entries[i]
		start := len(f.buf)
		var body int
		f.buf, body = appendEvent(f.buf, e.ID, e.Event, e.Data)
		f.events = append(f.events, frameEvent{id: e.ID, start: start, body: body})
	}
	f.topic, f.prev = topic, pubsub.ID{}
	return f
}

// oneEntry views a single entry as a slice without copying it.
func oneEntry(e *pubsub.Entry) []pubsub.Entry { return unsafe.Slice(e, 1) }

// frameSize is an upper bound of the encoded size, so the frame never grows.
func frameSize(e *pubsub.Entry) int {
	lines := 1
	for _, c := range e.Data {
		if c == '\n' || c == '\r' {
			lines++
		}
	}
	return len("id: 18446744073709551615-18446744073709551615\n") +
		len("event: \n") + len(e.Event) +
		lines*len("data: \n") + len(e.Data) + 1
}

// appendEvent appends one SSE event to b and returns it with the offset at
// which the body (everything after the id line) starts.
//
// Each of "\n", "\r\n" and "\r" in data starts a new data: line, which is how
// the SSE parser splits lines; the client rejoins them with "\n". A line
// break in event cannot be represented and is removed.
func appendEvent(b []byte, id pubsub.ID, event string, data []byte) ([]byte, int) {
	b = append(b, "id: "...)
	b = id.AppendTo(b)
	b = append(b, '\n')
	body := len(b)
	if event != "" {
		b = append(b, "event: "...)
		for i := 0; i < len(event); i++ {
			if c := event[i]; c != '\n' && c != '\r' {
				b = append(b, c)
			}
		}
		b = append(b, '\n')
	}
	b = appendData(b, data)
	return append(b, '\n'), body
}

// appendData appends data as data: lines.
func appendData(b, data []byte) []byte {
	start := 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		if c != '\n' && c != '\r' {
			continue
		}
		b = append(b, "data: "...)
		b = append(b, data[start:i]...)
		b = append(b, '\n')
		if c == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		start = i + 1
	}
	b = append(b, "data: "...)
	b = append(b, data[start:]...)
	return append(b, '\n')
}
