package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// readChunk reads one HTTP/1.1 chunk from a raw response body.
func readChunk(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("chunk size line: %v", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 16, 64)
	if err != nil {
		t.Fatalf("chunk size %q: %v", line, err)
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(br, buf); err != nil {
		t.Fatalf("chunk of %d bytes: %v", n, err)
	}
	if string(buf[n:]) != "\r\n" {
		t.Fatalf("chunk not terminated by CRLF: %q", buf[n:])
	}
	return string(buf[:n])
}

// Read from a raw TCP socket, an HTTP/1.1 stream is chunked, and each
// flushed batch arrives at once as whole chunks: no event is split across
// chunks and none is held back.
func TestChunkedWire(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{Heartbeat: time.Hour}})
	conn, br, h := rawStream(t, strings.TrimPrefix(tn.srv.URL, "http://"), "/events?topic=w")
	if te := h.Get("Transfer-Encoding"); te != "" {
		t.Fatalf("Transfer-Encoding left in parsed header: %q", te)
	}
	// http.ReadResponse consumed the header; re-dial raw to see the
	// transfer coding itself, not the parsed view.
	conn.Close()
	_ = br

	c := rawHTTP(t, tn.srv.URL, "/events?topic=w")
	if !strings.Contains(strings.ToLower(c.header), "transfer-encoding: chunked") {
		t.Fatalf("response header lacks chunked coding:\n%s", c.header)
	}
	if got := readChunk(t, c.br); !strings.HasPrefix(got, "retry: ") || !strings.HasSuffix(got, "\n\n") {
		t.Fatalf("opening chunk = %q", got)
	}
	// One event: exactly one whole frame arrives, without waiting for more.
	id := tn.publish(t, "w", "", "one")
	if got, want := readChunk(t, c.br), "id: "+id.String()+"\ndata: one\n\n"; got != want {
		t.Fatalf("chunk = %q, want %q", got, want)
	}
	// A burst: chunks hold whole events only, and all of them arrive.
	const burst = 200
	var want strings.Builder
	for i := range burst {
		data := fmt.Sprintf("%d %s", i, strings.Repeat("y", 100))
		id := tn.publish(t, "w", "", data)
		fmt.Fprintf(&want, "id: %s\ndata: %s\n\n", id, data)
	}
	var got strings.Builder
	for got.Len() < want.Len() {
		ch := readChunk(t, c.br)
		if !strings.HasPrefix(ch, "id: ") || !strings.HasSuffix(ch, "\n\n") {
			t.Fatalf("chunk splits an event: starts %.20q ends %q", ch, ch[max(0, len(ch)-10):])
		}
		got.WriteString(ch)
	}
	if got.String() != want.String() {
		t.Fatal("burst arrived altered")
	}
}

type rawConn struct {
	header string
	br     *bufio.Reader
}

// rawHTTP sends a GET and reads the response header as text, leaving the
// body's transfer coding to the caller.
func rawHTTP(t *testing.T, base, path string) rawConn {
	t.Helper()
	conn, _ := rawDial(t, strings.TrimPrefix(base, "http://"))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	br := bufio.NewReader(conn)
	var h strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read header: %v", err)
		}
		if line == "\r\n" {
			break
		}
		h.WriteString(line)
	}
	if !strings.HasPrefix(h.String(), "HTTP/1.1 200") {
		t.Fatalf("response: %s", h.String())
	}
	return rawConn{header: h.String(), br: br}
}

// SIGTERM's drain: readiness fails at once, new streams get 503, each open
// stream gets a retry: and is closed.
func TestDrain(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{Retry: time.Second, Heartbeat: time.Hour}})
	admin := httptest.NewServer(tn.AdminHandler(tn.reg))
	defer admin.Close()
	if code, _ := get(t, admin.URL+"/readyz"); code != 200 {
		t.Fatalf("readyz before drain: %d", code)
	}
	var streams []*sseClient
	for range 20 {
		streams = append(streams, dial(t, tn.srv.URL+"/events?topic=d", ""))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tn.Drain(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if code, body := get(t, admin.URL+"/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("readyz while draining: %d %q", code, body)
	}
	if code, _ := get(t, admin.URL+"/healthz"); code != 200 {
		t.Fatalf("healthz while draining: %d", code)
	}
	for i, s := range streams {
		rest, err := io.ReadAll(s.r)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		// After the opening: a jittered retry between 1s and 2s, then EOF.
		lines := strings.Split(string(rest), "\n")
		var retry string
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "retry: "); ok {
				retry = v
			}
		}
		ms, err := strconv.Atoi(retry)
		if err != nil || ms < 1000 || ms > 2001 {
			t.Fatalf("stream %d: drain retry %q in %q", i, retry, rest)
		}
	}
	c, code, _ := tryDial(t, tn.srv.URL+"/events?topic=d", "")
	if c != nil || code != 503 {
		t.Fatalf("new stream while draining: %d", code)
	}
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminPublish(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	admin := httptest.NewServer(tn.AdminHandler(tn.reg))
	defer admin.Close()
	s := dial(t, tn.srv.URL+"/events?topic=pub", "")

	resp, err := http.PostForm(admin.URL+"/publish", url.Values{"topic": {"pub"}, "event": {"greet"}, "data": {"hello\nform"}})
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 || out.ID == "" {
		t.Fatalf("form publish: %d %+v", resp.StatusCode, out)
	}
	if e := s.next(t); e.ID != out.ID || e.Event != "greet" || e.Data != "hello\nform" {
		t.Fatalf("got %+v", e)
	}
	resp, err = http.Post(admin.URL+"/publish", "application/json", strings.NewReader(`{"topic":"pub","data":{"n":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if e := s.next(t); e.Data != `{"n":1}` || e.Event != "" {
		t.Fatalf("got %+v", e)
	}

	bad := []struct {
		name, ct, body string
		code           int
	}{
		{"bad topic", "application/json", `{"topic":"a b","data":"x"}`, 400},
		{"no topic", "application/x-www-form-urlencoded", `data=x`, 400},
		{"event with newline", "application/json", `{"topic":"t","event":"a\nb","data":"x"}`, 400},
		{"reserved event", "application/json", `{"topic":"t","event":"sse-gap","data":"x"}`, 400},
		{"bad json", "application/json", `{"topic":`, 400},
		{"too big", "application/json", `{"topic":"t","data":"` + strings.Repeat("x", MaxPublishBytes) + `"}`, 413},
	}
	for _, tt := range bad {
		resp, err := http.Post(admin.URL+"/publish", tt.ct, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Fatalf("%s: %d %q, want %d", tt.name, resp.StatusCode, b, tt.code)
		}
	}
	if code, body := get(t, admin.URL+"/metrics"); code != 200 ||
		!strings.Contains(body, `sse_flush_duration_seconds_bucket{le="0.0001"}`) ||
		!strings.Contains(body, `sse_flush_duration_seconds_bucket{le="0.0512"}`) ||
		!strings.Contains(body, "sse_connections 1") {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
}

// HTTP/1.1 streams are hijacked by default; NoHijack (and HTTP/2) keep
// them on net/http.
func TestLeanPathIsDefaultOnHTTP11(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	dial(t, tn.srv.URL+"/events?topic=lean", "")
	dial(t, tn.srv.URL+"/events?topic=lean", "")
	hijacked := func() int {
		if tn.lean == nil {
			return 0
		}
		tn.lean.mu.Lock()
		defer tn.lean.mu.Unlock()
		return len(tn.lean.conns)
	}
	want := 2
	if netHTTPPath {
		want = 0
	}
	eventually(t, 5*time.Second, "streams on the expected path", func() bool { return hijacked() == want && tn.Connections() == 2 })
}
