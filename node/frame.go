package node

import (
	"sync"
	"sync/atomic"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Frame is one event encoded once as SSE bytes and shared by every local
// subscriber of its topic. It is reference counted: each queue that holds
// it owns one reference, and the last Release returns it to its pool.
//
// buf holds "id: <id>\n" followed by the body (event and data lines and the
// blank line); body is where the body starts, so a client of several topics
// can write its own composite id line and then the shared body.
type Frame struct {
	buf   []byte
	body  int
	id    pubsub.ID
	topic string
	refs  atomic.Int32
	class int8 // pool size class; -1 when not pooled
}

// Bytes is the whole frame, id line included.
func (f *Frame) Bytes() []byte { return f.buf }

// Body is the frame without its id line.
func (f *Frame) Body() []byte { return f.buf[f.body:] }

// ID is the stream entry ID the frame carries.
func (f *Frame) ID() pubsub.ID { return f.id }

// Topic is the topic the frame was published on.
func (f *Frame) Topic() string { return f.topic }

// Len is the frame's size in bytes, which counts against a client's queue.
func (f *Frame) Len() int { return len(f.buf) }

// retain adds n references.
func (f *Frame) retain(n int32) { f.refs.Add(n) }

// Release drops one reference; the last one returns the buffer to the pool.
func (f *Frame) Release() {
	switch n := f.refs.Add(-1); {
	case n == 0:
		putFrame(f)
	case n < 0:
		panic("node: Frame released more often than retained")
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
func newFrame(n int) *Frame {
	c := classFor(n)
	var f *Frame
	if c >= 0 {
		if v := framePools[c].Get(); v != nil {
			f = v.(*Frame)
		} else {
			f = &Frame{buf: make([]byte, 0, frameClasses[c])}
		}
	} else {
		f = &Frame{buf: make([]byte, 0, n)}
	}
	f.class = int8(c)
	f.refs.Store(1)
	return f
}

func putFrame(f *Frame) {
	f.topic = ""
	f.buf = f.buf[:0]
	if f.class >= 0 && cap(f.buf) == frameClasses[f.class] {
		framePools[f.class].Put(f)
	}
}

// EncodeFrame encodes e as an SSE frame for topic into a pooled frame with
// one reference held by the caller.
func EncodeFrame(topic string, e *pubsub.Entry) *Frame {
	f := newFrame(frameSize(e))
	f.buf, f.body = appendEvent(f.buf, e.ID, e.Event, e.Data)
	f.id = e.ID
	f.topic = topic
	return f
}

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
