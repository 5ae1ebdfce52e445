package node

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// sink is where a client's bytes go: the net/http driver (HTTP/2, TLS,
// HTTP/1.0, SSE_HIJACK=false) wraps the ResponseWriter, the hijacked
// HTTP/1.1 driver writes chunks to the socket itself.
type sink interface {
	// send writes w's pieces in order and flushes them to the network.
	send(w *wire) error
	// SetWriteDeadline bounds the sends that follow.
	SetWriteDeadline(t time.Time) error
}

// wire is one write to a client, gathered by reference: the frames' shared
// bytes are never copied per client; the client's own few bytes (the chunk
// size line, its retry: line, composite id lines) are the only bytes of
// its own. The frames stay referenced until the write is done.
type wire struct {
	// bufs are the pieces in order. Slot 0 is kept for the chunk size
	// line, so a chunk needs no second slice.
	bufs   net.Buffers
	own    []byte   // backing of the client's own bytes; only appended to until reset
	frames []*frame // references held until reset
	size   int      // payload bytes gathered
	events int      // events gathered
	// live is the ID time (Unix ms) of the oldest live (fanned-out) event
	// gathered, zero when none: replayed events are old by design, not
	// late.
	live uint64
	head [chunkHead]byte
	// unsent is the chunk still to write; a vectored write consumes it.
	// A field, so that writing it allocates nothing.
	unsent net.Buffers
}

// chunkHead is room for a chunk's size line.
const chunkHead = 18

var crlf = []byte("\r\n")

// ref adds p to the write without copying it; p must stay unchanged until
// reset (frame bytes, or constants).
func (w *wire) ref(p []byte) {
	if len(w.bufs) == 0 {
		w.bufs = append(w.bufs, nil)
	}
	w.bufs = append(w.bufs, p)
	w.size += len(p)
}

// add copies p, a client's own bytes, into the write. Earlier pieces stay
// valid if own grows: they keep the old backing array.
func (w *wire) add(p []byte) {
	start := len(w.own)
	w.own = append(w.own, p...)
	w.ref(w.own[start:len(w.own):len(w.own)])
}

// hold keeps f referenced until the write is done; w owns the reference.
func (w *wire) hold(f *frame) { w.frames = append(w.frames, f) }

// pieces are the payload's pieces, without the chunk size line slot.
func (w *wire) pieces() net.Buffers {
	if len(w.bufs) == 0 {
		return nil
	}
	return w.bufs[1:]
}

// chunk frames the payload as one HTTP/1.1 chunk, ready for a vectored
// write, in w.unsent (which shares w's pieces). There must be a payload:
// an empty chunk would end the body. Call it once per write.
func (w *wire) chunk() *net.Buffers {
	h := strconv.AppendInt(w.head[:0], int64(w.size), 16)
	w.bufs[0] = append(h, '\r', '\n')
	w.bufs = append(w.bufs, crlf)
	w.unsent = w.bufs
	return &w.unsent
}

// reset releases the frames and empties w for the next write. A wire that
// grew for a burst gives its memory back.
func (w *wire) reset() {
	for i, f := range w.frames {
		f.Release()
		w.frames[i] = nil
	}
	clear(w.bufs)
	w.unsent = nil
	w.bufs, w.frames, w.own = w.bufs[:0], w.frames[:0], w.own[:0]
	w.size, w.events, w.live = 0, 0, 0
	if cap(w.bufs) > 1024 || cap(w.frames) > 1024 {
		w.bufs, w.frames = nil, nil
	}
	if cap(w.own) > 64<<10 {
		w.own = nil
	}
}

// httpSink is the net/http driver: HTTP/1.1 chunked or an HTTP/2 stream.
type httpSink struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newHTTPSink(w http.ResponseWriter) *httpSink {
	return &httpSink{w: w, rc: http.NewResponseController(w)}
}

// coalesceBytes is the largest piece the net/http driver copies to join
// its neighbours in one Write: small pieces make one HTTP/1.1 chunk of
// whole events; a larger piece is written by itself, which net/http sends
// without copying it into its buffer.
const coalesceBytes = 16 << 10

var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, coalesceBytes); return &b }}

func (s *httpSink) send(w *wire) error {
	bp := coalesceBufs.Get().(*[]byte)
	defer coalesceBufs.Put(bp)
	buf := (*bp)[:0]
	for _, p := range w.pieces() {
		if len(buf)+len(p) > coalesceBytes && len(buf) > 0 {
			if err := s.write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if len(p) >= coalesceBytes {
			if err := s.write(p); err != nil {
				return err
			}
			continue
		}
		buf = append(buf, p...)
	}
	if len(buf) > 0 {
		if _, err := s.w.Write(buf); err != nil {
			return err
		}
	}
	return s.rc.Flush()
}

// write sends p as its own write and flushes it, so the next write starts
// with net/http's buffer empty and is not split to fill it.
func (s *httpSink) write(p []byte) error {
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *httpSink) SetWriteDeadline(t time.Time) error { return s.rc.SetWriteDeadline(t) }

// connSink is the hijacked driver's sink for the request goroutine (the
// opening and the replay): each send is one chunk, in one vectored write,
// the response header going first.
type connSink struct {
	conn   net.Conn
	header []byte // response header, until the first send
}

func (s *connSink) send(w *wire) error {
	if s.header != nil {
		if _, err := s.conn.Write(s.header); err != nil {
			return err
		}
		s.header = nil
	}
	if w.size == 0 {
		return nil
	}
	_, err := w.chunk().WriteTo(s.conn)
	return err
}

func (s *connSink) SetWriteDeadline(t time.Time) error { return s.conn.SetWriteDeadline(t) }

// consume drops the first n bytes of *b, as a vectored write that wrote n
// bytes does.
func consume(b *net.Buffers, n int) {
	for len(*b) > 0 {
		if n < len((*b)[0]) {
			(*b)[0] = (*b)[0][n:]
			return
		}
		n -= len((*b)[0])
		(*b)[0] = nil
		*b = (*b)[1:]
	}
}
