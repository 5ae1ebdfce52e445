package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"
)

// errBadChunk is returned when a chunked body does not follow RFC 9112.
var errBadChunk = errors.New("sseload: bad chunked encoding")

// errLongHeader is returned when a response header line does not fit the buffer.
var errLongHeader = errors.New("sseload: response header line too long")

// chunk decoder states.
const (
	csSize    = iota // reading the hex size (and any extension) up to LF
	csData           // copying chunk data
	csDataCR         // expecting the CRLF after chunk data
	csTrailer        // after the last chunk: trailer lines up to an empty one
	csDone           // body complete
)

// lineReader reads the lines of an HTTP/1.1 response, first the header
// lines in identity mode, then the body, optionally chunked, with one fixed
// buffer and no allocation per line: chunk framing is removed in place, so
// body bytes only ever move towards the start of the buffer.
//
// Lines end at LF; a CR before it is dropped (a lone CR is not a line end,
// which is all an SSE server that writes LF or CRLF needs). A line longer
// than the buffer is returned truncated to the buffer, and the rest of it
// is skipped: an SSE load test only needs the start of each data line.
type lineReader struct {
	rd  io.Reader
	buf []byte
	// Layout of buf: [pos, dec) decoded bytes not yet returned as lines;
	// [dec, end) raw bytes still to dechunk (only in chunked mode, and only
	// transiently: dechunk consumes every raw byte it is given).
	pos, dec, end int

	chunked  bool
	state    int
	left     int64 // chunk data bytes still to copy
	size     int64 // chunk size being parsed
	digits   int   // hex digits seen in the size
	inExt    bool  // inside a chunk extension (after ';')
	lineMark bool  // csTrailer: at the start of a trailer line

	skip bool // discarding the rest of an overlong line
	// sum, when set during a skip, is fed the skipped bytes; it is cleared
	// when the line ends (-verify hashes whole data lines).
	sum *lineSum
	err error

	// now is the time the last read returned data: the arrival time of
	// every event in that read, taken once per read instead of per event.
	now time.Time
	// beforeRead, when set, runs before each blocking read: the caller
	// publishes its per-batch counters there.
	beforeRead func()
}

func newLineReader(rd io.Reader, size int) *lineReader {
	return &lineReader{rd: rd, buf: make([]byte, size)}
}

// reset points the reader at a new connection, keeping its buffer.
func (r *lineReader) reset(rd io.Reader) {
	*r = lineReader{rd: rd, buf: r.buf, beforeRead: r.beforeRead}
}

// startChunked switches to chunked decoding for the bytes after the headers.
func (r *lineReader) startChunked() {
	r.chunked = true
	r.state = csSize
	r.dec = r.pos
	r.dechunk()
}

// readLine returns the next line without its terminator. The slice is
// valid until the next call. At the clean end of a body it returns io.EOF.
func (r *lineReader) readLine() ([]byte, error) {
	for {
		if i := bytes.IndexByte(r.buf[r.pos:r.dec], '\n'); i >= 0 {
			line := r.buf[r.pos : r.pos+i]
			r.pos += i + 1
			if r.skip {
				r.skip = false
				if r.sum != nil {
					r.sum.write(line)
					r.sum = nil // a CR still held back was the line ending's
				}
				continue
			}
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			return line, nil
		}
		if r.skip {
			if r.sum != nil {
				r.sum.write(r.buf[r.pos:r.dec])
			}
			r.pos = r.dec
		}
		if r.err != nil {
			return nil, r.err
		}
		if r.state == csDone {
			return nil, io.EOF
		}
		// Make room: move what is left to the front.
		if r.pos > 0 {
			n := copy(r.buf, r.buf[r.pos:r.end])
			r.dec -= r.pos
			r.end = n
			r.pos = 0
		}
		if r.dec == len(r.buf) {
			// A line longer than the buffer: hand out its start, skip the rest.
			line := r.buf[:r.dec]
			r.pos = r.dec
			r.skip = true
			return line, nil
		}
		r.fill()
	}
}

// fill reads once from the connection and decodes what arrived.
func (r *lineReader) fill() {
	if r.beforeRead != nil {
		r.beforeRead()
	}
	n, err := r.rd.Read(r.buf[r.end:])
	if n > 0 {
		r.now = time.Now()
		r.end += n
		if r.chunked {
			r.dechunk()
		} else {
			r.dec = r.end
		}
	}
	if err != nil && r.err == nil {
		if err == io.EOF && r.chunked && r.state != csDone {
			err = io.ErrUnexpectedEOF
		}
		r.err = err
	}
}

// dechunk consumes the raw bytes [dec, end), moving chunk data down to dec.
func (r *lineReader) dechunk() {
	raw := r.dec
	for raw < r.end && r.err == nil {
		switch r.state {
		case csSize:
			c := r.buf[raw]
			raw++
			switch {
			case c == '\n':
				if r.digits == 0 {
					r.err = fmt.Errorf("%w: empty chunk size", errBadChunk)
					break
				}
				if r.size == 0 {
					r.state, r.lineMark = csTrailer, true
				} else {
					r.state, r.left = csData, r.size
				}
				r.size, r.digits, r.inExt = 0, 0, false
			case r.inExt || c == '\r' || c == ' ' || c == '\t':
			case c == ';':
				r.inExt = true
			default:
				v, ok := hexVal(c)
				if !ok || r.digits >= 15 {
					r.err = fmt.Errorf("%w: size byte %q", errBadChunk, c)
					break
				}
				r.size = r.size<<4 | int64(v)
				r.digits++
			}
		case csData:
			n := min(int64(r.end-raw), r.left)
			copy(r.buf[r.dec:], r.buf[raw:raw+int(n)])
			r.dec += int(n)
			raw += int(n)
			r.left -= n
			if r.left == 0 {
				r.state = csDataCR
			}
		case csDataCR:
			c := r.buf[raw]
			raw++
			switch c {
			case '\r':
			case '\n':
				r.state = csSize
			default:
				r.err = fmt.Errorf("%w: %q after chunk data", errBadChunk, c)
			}
		case csTrailer:
			c := r.buf[raw]
			raw++
			switch {
			case c == '\n' && r.lineMark:
				r.state = csDone
			case c == '\n':
				r.lineMark = true
			case c != '\r':
				r.lineMark = false
			}
		case csDone:
			raw = r.end // bytes after the body: ignored
		}
	}
	// Raw bytes not consumed (after an error) are dropped.
	r.end = r.dec
}

func hexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
