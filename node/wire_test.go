package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
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
	if got := readChunk(t, c.br); got != "\n\n" {
		t.Fatalf("opening chunk = %q, want a blank line", got)
	}
	// One event: exactly one whole frame arrives, without waiting for
	// more, after the stream's retry: line.
	id := tn.publish(t, "w", "", "one")
	got1 := readChunk(t, c.br)
	if retry, ev, _ := strings.Cut(got1, "\n"); !strings.HasPrefix(retry, "retry: ") || ev != "id: "+id.String()+"\ndata: one\n\n" {
		t.Fatalf("chunk = %q, want the retry: line and the event", got1)
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
// stream is aborted (see TestServerCloseAborts).
func TestDrain(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{Retry: time.Second, Heartbeat: time.Hour}})
	admin := httptest.NewServer(tn.AdminHandler(tn.reg))
	defer admin.Close()
	if code, _ := get(t, admin.URL+"/readyz"); code != 200 {
		t.Fatalf("readyz before drain: %d", code)
	}
	s := dial(t, tn.srv.URL+"/events?topic=d", "")
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
	if _, err := io.ReadAll(s.r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("drained stream ended with %v, want an abort (unexpected EOF)", err)
	}
	c, code, _ := tryDial(t, tn.srv.URL+"/events?topic=d", "")
	if c != nil || code != 503 {
		t.Fatalf("new stream while draining: %d", code)
	}
}

// Every server-side end of a stream (drain, closeStream for rebalancing
// or token expiry) aborts it: HTTP/1.1 without the terminating chunk, so
// that a library that takes a clean end as "done" (r3labs/sse) reconnects,
// with nothing after the last event that a library could dispatch. Each
// stream had its jittered retry: with its first event, so the reconnects
// spread over [Retry, 2*Retry).
func TestServerCloseAborts(t *testing.T) {
	const streams = 20
	for _, how := range []string{"drain", "closeStream"} {
		t.Run(how, func(t *testing.T) {
			tn := newTestNode(t, testOpts{cfg: Config{Retry: time.Second, Heartbeat: 10 * time.Millisecond}})
			var cs []*sseClient
			for range streams {
				cs = append(cs, dial(t, tn.srv.URL+"/events?topic=d", ""))
			}
			eventually(t, 5*time.Second, "streams registered", func() bool { return len(tn.subscribers("d")) == streams })
			id := tn.publish(t, "d", "", "last")
			retries := make(map[string]bool)
			for i, c := range cs {
				// The event, with the retry: ahead of it.
				var retry string
				for {
					l, err := c.r.ReadString('\n')
					if err != nil {
						t.Fatalf("stream %d: %v", i, err)
					}
					if v, ok := strings.CutPrefix(l, "retry: "); ok {
						retry = strings.TrimSpace(v)
					}
					if l == "id: "+id.String()+"\n" {
						break
					}
				}
				if ms, err := strconv.Atoi(retry); err != nil || ms < 1000 || ms > 2001 {
					t.Fatalf("stream %d: retry %q, want 1000 to 2000 ms", i, retry)
				}
				retries[retry] = true
				if l, _ := c.r.ReadString('\n'); l != "data: last\n" {
					t.Fatalf("stream %d: %q after the id", i, l)
				}
			}
			if len(retries) < 2 {
				t.Fatalf("%d streams all got retry %v: not spread", streams, retries)
			}
			time.Sleep(50 * time.Millisecond) // a few heartbeats
			switch how {
			case "drain":
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := tn.Drain(ctx); err != nil {
					t.Fatal(err)
				}
			case "closeStream":
				for _, c := range tn.subscribers("d") {
					tn.closeStream(c, reasonTokenExpired)
				}
			}
			for i, c := range cs {
				rest, err := io.ReadAll(c.r)
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("stream %d ended with %v, want an abort (unexpected EOF)", i, err)
				}
				// The event's blank line, then heartbeats: blank lines only.
				if strings.Trim(string(rest), "\n") != "" {
					t.Fatalf("stream %d: %q after the last event", i, rest)
				}
			}
		})
	}
}

// On HTTP/2 a server-side end resets the stream (http.ErrAbortHandler)
// instead of ending it with END_STREAM.
func TestServerCloseResetsHTTP2(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	srv := httptest.NewUnstartedServer(tn.Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/events?topic=h2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("proto %s, want HTTP/2", resp.Proto)
	}
	eventually(t, 5*time.Second, "stream registered", func() bool { return len(tn.subscribers("h2")) == 1 })
	tn.closeStream(tn.subscribers("h2")[0], reasonTokenExpired)
	_, err = io.ReadAll(resp.Body)
	if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "stream error") {
		t.Fatalf("HTTP/2 stream ended with %v, want a stream reset", err)
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
	// An empty data field is an empty event; no data field is refused below.
	for _, body := range []struct{ ct, body string }{
		{"application/x-www-form-urlencoded", "topic=pub&data="},
		{"application/json", `{"topic":"pub","data":""}`},
	} {
		resp, err = http.Post(admin.URL+"/publish", body.ct, strings.NewReader(body.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d, want 200", body.body, resp.StatusCode)
		}
		if e := s.next(t); e.Data != "" || e.ID == "" {
			t.Fatalf("%s: got %+v, want an empty event", body.body, e)
		}
	}

	// A multipart form (curl -F) is a form too.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("topic", "pub")
	mw.WriteField("data", "multi\npart")
	mw.Close()
	resp, err = http.Post(admin.URL+"/publish", mw.FormDataContentType(), &mp)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("multipart publish: %d, want 200", resp.StatusCode)
	}
	if e := s.next(t); e.Data != "multi\npart" {
		t.Fatalf("multipart publish: got %+v", e)
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
		{"no data, form", "application/x-www-form-urlencoded", `topic=t&body=x`, 400},
		{"no data, JSON", "application/json", `{"topic":"t","body":"x"}`, 400},
		{"form without its content type", "", `topic=t&data=x`, 415},
		{"text body", "text/plain", `hello`, 415},
		{"too big", "application/json", `{"topic":"t","data":"` + strings.Repeat("x", MaxPublishBytes) + `"}`, 413},
		{"too big, form", "application/x-www-form-urlencoded", `topic=t&data=` + strings.Repeat("x", MaxPublishBytes), 413},
		{"bad escape, form", "application/x-www-form-urlencoded", `topic=t&data=ok&x=%zz`, 400},
		{"two JSON objects", "application/json", `{"topic":"t","data":"a"}{"topic":"t","data":"b"}`, 400},
		{"JSON then garbage", "application/json", `{"topic":"t","data":"a"} x`, 400},
		{"JSON then over 4 MiB of space", "application/json", `{"topic":"t","data":"a"}` + strings.Repeat(" ", MaxPublishBytes), 413},
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
func TestHijackIsDefaultOnHTTP11(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	dial(t, tn.srv.URL+"/events?topic=lean", "")
	dial(t, tn.srv.URL+"/events?topic=lean", "")
	hijacked := func() (k int) {
		tn.streams.each(func(s *stream) {
			if s.pooled.Load() {
				k++
			}
		})
		return k
	}
	want := 2
	if netHTTPPath {
		want = 0
	}
	eventually(t, 5*time.Second, "streams on the expected path", func() bool { return hijacked() == want && tn.Connections() == 2 })
}
