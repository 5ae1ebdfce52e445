package node

import (
	"net/http"
	"time"
)

// sink is where a client's bytes go. The net/http path wraps the
// ResponseWriter; other paths (a hijacked connection) fit the same three
// methods, so the writer does not care which one a client uses.
type sink interface {
	// Write buffers p.
	Write(p []byte) (int, error)
	// Flush sends what is buffered to the network.
	Flush() error
	// SetWriteDeadline bounds the writes and flushes that follow.
	SetWriteDeadline(t time.Time) error
}

// httpSink is the net/http path: HTTP/1.1 chunked or an HTTP/2 stream.
type httpSink struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newHTTPSink(w http.ResponseWriter) *httpSink {
	return &httpSink{w: w, rc: http.NewResponseController(w)}
}

func (s *httpSink) Write(p []byte) (int, error)        { return s.w.Write(p) }
func (s *httpSink) Flush() error                       { return s.rc.Flush() }
func (s *httpSink) SetWriteDeadline(t time.Time) error { return s.rc.SetWriteDeadline(t) }
