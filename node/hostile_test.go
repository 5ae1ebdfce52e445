package node

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// The hostile-input suite (issue 6): each input gets a clear 4xx or a
// documented behaviour, never a crash or a leak (goleak in TestMain; the
// node must hold no stream afterwards). Run with -v to see the answer each
// input got; SSE_TEST_NETHTTP=1 runs it on the net/http path.

// hardened serves h the way cmd/ssenode does: header bytes capped at 16 KiB
// and a header read deadline (shortened here), which httptest.NewServer
// lacks. It returns the listener's address.
func hardened(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 500 * time.Millisecond, MaxHeaderBytes: 16 << 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// answer is what a client got: a status and the first line of the body
// (for a stream, its first line).
type answer struct {
	status int
	line   string
}

func (a answer) String() string { return fmt.Sprintf("%d %q", a.status, a.line) }

// ask sends a GET and reads the answer, closing the stream if one opened.
func ask(t *testing.T, u string, hdr http.Header) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", truncate(u, 80), err)
	}
	defer resp.Body.Close()
	l, _ := bufio.NewReader(resp.Body).ReadString('\n')
	return answer{resp.StatusCode, strings.TrimRight(l, "\r\n")}
}

// raw writes b on a new connection and reads the status line and the first
// line of the body, whatever the framing (chunked or not).
func raw(t *testing.T, addr string, b string) answer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, b); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	status, err := r.ReadString('\n')
	if err != nil {
		return answer{0, "connection closed: " + err.Error()}
	}
	var a answer
	if _, err := fmt.Sscanf(status, "HTTP/1.%d %d", new(int), &a.status); err != nil {
		t.Fatalf("status line %q: %v", status, err)
	}
	for { // headers
		l, err := r.ReadString('\n')
		if err != nil || l == "\r\n" {
			break
		}
	}
	for {
		l, err := r.ReadString('\n')
		l = strings.TrimRight(l, "\r\n")
		if isChunkSize(l) && err == nil {
			continue
		}
		a.line = l
		return a
	}
}

func isChunkSize(l string) bool {
	if l == "" {
		return false
	}
	for _, c := range l {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

type hostileCase struct {
	name   string
	query  string      // after /events?
	header http.Header // extra request headers
	raw    string      // instead of an HTTP client: bytes on a new connection
	status int
	line   string // prefix of the body's first line
}

func TestHostileInput(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	addr := hardened(t, tn.Handler())
	base := "http://" + addr + "/events?"
	long := func(n int) string { return strings.Repeat("a", n) }
	many := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "&topic=t%d", i)
		}
		return b.String()[1:]
	}
	lid := func(v string) http.Header { return http.Header{"Last-Event-Id": {v}} }
	tests := []hostileCase{
		// Malformed requests over raw TCP.
		{name: "garbage request line", raw: "HELLO\r\n\r\n", status: 400, line: "400 Bad Request"},
		{name: "binary garbage", raw: "\x00\x01\x02\xff\r\n\r\n", status: 400, line: "400 Bad Request"},
		{name: "missing Host (HTTP/1.1)", raw: "GET /events?topic=a HTTP/1.1\r\n\r\n", status: 400, line: "400 Bad Request: missing required Host header"},
		{name: "HTTP/1.0 (served, not chunked)", raw: "GET /events?topic=a HTTP/1.0\r\n\r\n", status: 200, line: ""}, // the opening is a blank line
		{name: "HTTP/2.0 request line on HTTP/1 port", raw: "GET /events?topic=a HTTP/2.0\r\nHost: x\r\n\r\n", status: 505, line: "505 HTTP Version Not Supported: unsupported protocol version"},
		{name: "NUL in a header name", raw: "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX\x00: y\r\n\r\n", status: 400, line: "400 Bad Request"},
		{name: "control byte in Last-Event-ID", raw: "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\x01-0\r\n\r\n", status: 400, line: "400 Bad Request"},
		{name: "POST", raw: "POST /events?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", status: 405, line: "method not allowed: use GET"},
		{name: "request line over 16 KiB", raw: "GET /events?topic=" + long(20<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", status: 431, line: "431 Request Header Fields Too Large"},
		// Huge headers and queries.
		{name: "header over 16 KiB", query: "topic=a", header: http.Header{"X-Big": {long(20 << 10)}}, status: 431, line: "431 Request Header Fields Too Large"},
		{name: "10,000 topics (URL over the header limit)", query: many(10000), status: 431, line: "431 Request Header Fields Too Large"},
		{name: "1,000 topics (under the header limit)", query: many(1000), status: 400, line: "too many topics: 1000, at most 16"},
		{name: "17 topics", query: many(17), status: 400, line: "too many topics: 17, at most 16"},
		{name: "1,000 other parameters", query: "topic=a" + strings.Repeat("&x=1", 1000), status: 400, line: "too many query parameters: 1001, at most 32"},
		// Hostile topic names.
		{name: "no topic", query: "", status: 400, line: "missing topic parameter"},
		{name: "empty topic", query: "topic=", status: 400, line: `bad topic "": pubsub: bad topic: empty name`},
		{name: "NUL in topic", query: "topic=a%00b", status: 400, line: `bad topic "a\x00b"`},
		{name: "unicode topic", query: "topic=caf%C3%A9", status: 400, line: `bad topic "café": pubsub: bad topic: byte 'Ã' at offset 3`},
		{name: "%-encoded newline", query: "topic=a%0Ab", status: 400, line: `bad topic "a\nb"`},
		{name: "CRLF injection", query: "topic=a%0D%0AX-Evil:%201", status: 400, line: `bad topic "a\r\nX-Evil: 1"`},
		{name: "space", query: "topic=a+b", status: 400, line: `bad topic "a b"`},
		{name: "../ (a topic is a key, not a path: allowed)", query: "topic=../etc/passwd", status: 200, line: ""}, // the opening is a blank line
		{name: "200 bytes", query: "topic=" + long(200), status: 200, line: ""},                                    // the opening is a blank line
		{name: "201 bytes", query: "topic=" + long(201), status: 400, line: `bad topic "` + long(64) + `..."`},
		{name: "same topic twice", query: "topic=a&topic=a", status: 400, line: `bad topic "a": given twice`},
		{name: "bad %-escape", query: "topic=%zz", status: 400, line: `bad query: invalid URL escape "%zz"`},
		{name: "semicolon separator", query: "topic=a;topic=b", status: 400, line: "bad query: invalid semicolon separator in query"},
		// Last-Event-IDs.
		{name: "Last-Event-ID not an ID", query: "topic=a", header: lid("abc"), status: 400, line: `bad Last-Event-ID "abc"`},
		{name: "Last-Event-ID negative", query: "topic=a", header: lid("-1"), status: 400, line: `bad Last-Event-ID "-1"`},
		{name: "Last-Event-ID overflows uint64", query: "topic=a", header: lid("99999999999999999999999-0"), status: 400, line: `bad Last-Event-ID "99999999999999999999999-0"`},
		{name: "Last-Event-ID with three parts", query: "topic=a", header: lid("1-2-3"), status: 400, line: `bad Last-Event-ID "1-2-3"`},
		{name: "Last-Event-ID parts != topics", query: "topic=a&topic=b", header: lid("1-0,2-0,3-0"), status: 400, line: `bad Last-Event-ID "1-0,2-0,3-0"`},
		{name: "Last-Event-ID 4097 bytes", query: "topic=a", header: lid(strings.Repeat("1", 4097)), status: 400, line: "bad Last-Event-ID \"" + strings.Repeat("1", 64) + "...\": replay: bad Last-Event-ID: 4097 bytes, at most 4096"},
		{name: "lastEventId parameter 4097 bytes", query: "topic=a&lastEventId=" + strings.Repeat("1", 4097), status: 400, line: "bad Last-Event-ID"},
		{name: "Last-Event-ID max uint64 (future)", query: "topic=a", header: lid("18446744073709551615-18446744073709551615"), status: 200, line: ""}, // the opening is a blank line
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got answer
			if tt.raw != "" {
				got = raw(t, addr, tt.raw)
			} else {
				got = ask(t, base+tt.query, tt.header)
			}
			t.Logf("ANSWER | %s | %s", tt.name, got)
			if got.status != tt.status || !strings.HasPrefix(got.line, tt.line) {
				t.Fatalf("got %s, want %d %q...", got, tt.status, tt.line)
			}
		})
	}
	eventually(t, 5*time.Second, "no stream left open", func() bool { return tn.Connections() == 0 })
}

// 10,000 topics cost a scan of the query, not 10,000 allocations, when the
// header limit lets them through (httptest's 1 MiB).
func TestTenThousandTopics(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	q := make(url.Values)
	for i := range 10000 {
		q.Add("topic", fmt.Sprintf("t%d", i))
	}
	u := tn.srv.URL + "/events?" + q.Encode()
	got := ask(t, u, nil)
	t.Logf("ANSWER | 10,000 topics under a 1 MiB header limit | %s", got)
	if got.status != 400 || got.line != "too many topics: 10000, at most 16" {
		t.Fatalf("got %s", got)
	}
	r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/events", RawQuery: q.Encode()}, Header: http.Header{}}
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := tn.parseSubscribe(r); err == nil {
			t.Fatal("10,000 topics accepted")
		}
	})
	if allocs > 10 {
		t.Fatalf("%v allocations to refuse 10,000 topics", allocs)
	}
}

// A position past everything the stream has (another node's, or a stream
// that was lost and recreated) is a gap: sse-gap, then the whole window,
// then live (DESIGN "Gap"; replay's checkGap).
func TestFutureLastEventID(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	var ids []pubsub.ID
	for i := range 3 {
		ids = append(ids, tn.publish(t, "f", "", fmt.Sprint(i)))
	}
	future := pubsub.ID{Ms: ids[2].Ms + 1e9}
	c := dial(t, tn.srv.URL+"/events?topic=f", future.String())
	if e := c.next(t); e.Event != "sse-gap" || !strings.Contains(e.Data, `"requested":"`+future.String()+`"`) {
		t.Fatalf("first event %+v, want sse-gap for %s", e, future)
	}
	for i, id := range ids {
		if e := c.next(t); e.ID != id.String() || e.Data != fmt.Sprint(i) {
			t.Fatalf("event %d: %+v, want %s", i, e, id)
		}
	}
	live := tn.publish(t, "f", "", "live")
	if e := c.next(t); e.ID != live.String() {
		t.Fatalf("live event %+v, want %s", e, live)
	}
	t.Logf("ANSWER | future Last-Event-ID %s | 200, sse-gap {requested: %s, oldest: %s}, then the 3 events of the window, then live", future, future, ids[0])
}

// Slowloris: a client that sends its headers a byte at a time, or nothing
// at all, is cut by the server's ReadHeaderTimeout before it holds a
// stream.
func TestSlowloris(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	addr := hardened(t, tn.Handler())
	for _, tt := range []struct {
		name string
		req  string
	}{
		{"headers one byte per 100ms", "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("z", 60) + "\r\n\r\n"},
		{"connects and sends nothing", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			closed := make(chan []byte, 1)
			go func() {
				_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				b, _ := io.ReadAll(conn)
				closed <- b
			}()
			start := time.Now()
			sent := 0
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case b := <-closed:
					t.Logf("ANSWER | slowloris: %s | connection closed by the server after %v and %d of %d bytes, response %q",
						tt.name, time.Since(start).Round(100*time.Millisecond), sent, len(tt.req), b)
					if sent == len(tt.req) && len(tt.req) > 0 {
						t.Fatal("the whole request went through")
					}
					// net/http closes a silent connection without a word,
					// and answers 400 to one that sent part of a request.
					if len(b) != 0 && !strings.HasPrefix(string(b), "HTTP/1.1 400 Bad Request\r\n") {
						t.Fatalf("server answered %q", b)
					}
					if tn.Connections() != 0 {
						t.Fatal("a slow client holds a stream")
					}
					return
				case <-tick.C:
					if sent < len(tt.req) {
						if _, err := conn.Write([]byte{tt.req[sent]}); err != nil {
							continue // the server is gone: the reader sees it
						}
						sent++
					}
				}
			}
		})
	}
}

// Invalid JWTs get 401 (403 for a topic not granted), each with a plain
// message; none opens a stream.
func TestHostileJWTs(t *testing.T) {
	key := testRSAKey()
	a := newAuth(t, JWTConfig{PublicKeyPEM: publicPEM(t, &key.PublicKey)})
	tn := newTestNode(t, testOpts{cfg: Config{Auth: a}})
	addr := hardened(t, tn.Handler())
	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, key, c, "") }
	hour := time.Hour
	tests := []struct {
		name  string
		auth  string // Authorization header
		topic string
		want  int
		line  string
	}{
		{"no token", "", "a", 401, "unauthorized: a token is required"},
		{"garbage", "Bearer not.a.jwt", "a", 401, "unauthorized: invalid token: token is malformed"},
		{"empty bearer", "Bearer ", "a", 401, "unauthorized: a token is required"},
		{"Basic scheme", "Basic dTpw", "a", 401, `unauthorized: Authorization scheme "Basic": want Bearer`},
		{"alg none", "Bearer " + sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("a"), ""), "a", 401, "unauthorized: invalid token: token signature is invalid: signing method none is invalid"},
		{"expired", "Bearer " + rs(jwt.MapClaims{SubscribeClaim: []string{"a"}, "exp": time.Now().Add(-hour).Unix()}), "a", 401, "unauthorized: invalid token: token has invalid claims: token is expired"},
		{"not yet valid", "Bearer " + rs(jwt.MapClaims{SubscribeClaim: []string{"a"}, "nbf": time.Now().Add(hour).Unix()}), "a", 401, "unauthorized: invalid token: token has invalid claims: token is not valid yet"},
		{"wrong key", "Bearer " + sign(t, jwt.SigningMethodRS256, otherRSAKey(), claims("a"), ""), "a", 401, "unauthorized: invalid token: token signature is invalid"},
		{"HS256 where RS256 is expected (public key as secret)", "Bearer " + sign(t, jwt.SigningMethodHS256, publicPEM(t, &key.PublicKey), claims("a"), ""), "a", 401, "unauthorized: invalid token: token signature is invalid: signing method HS256 is invalid"},
		{"signature stripped", "Bearer " + strings.Join(strings.Split(rs(claims("a")), ".")[:2], ".") + ".", "a", 401, "unauthorized: invalid token: token signature is invalid"},
		{"claims swapped under a valid signature", "Bearer " + swapClaims(rs(claims("a")), `{"sse.subscribe":["*"]}`), "secret", 401, "unauthorized: invalid token: token signature is invalid"},
		{"9 KiB token", "Bearer " + strings.Repeat("a", 9<<10), "a", 401, "unauthorized: token of 9216 bytes: at most 8192"},
		{"wrong topic", "Bearer " + rs(claims("news.*")), "sport", 403, `forbidden: the token does not grant topic "sport"`},
		{"prefix is not a grant of its parent", "Bearer " + rs(claims("news.*")), "news", 403, `forbidden: the token does not grant topic "news"`},
		{"valid", "Bearer " + rs(claims("news.*")), "news.eu", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.auth != "" {
				h.Set("Authorization", tt.auth)
			}
			got := ask(t, "http://"+addr+"/events?topic="+tt.topic, h)
			t.Logf("ANSWER | JWT: %s | %s", tt.name, got)
			if got.status != tt.want || !strings.HasPrefix(got.line, tt.line) {
				t.Fatalf("got %s, want %d %q...", got, tt.want, tt.line)
			}
		})
	}
	eventually(t, 5*time.Second, "no stream left open", func() bool { return tn.Connections() == 0 })
}

// swapClaims replaces a token's payload, keeping its header and signature.
func swapClaims(tok, payload string) string {
	parts := strings.Split(tok, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(payload))
	return strings.Join(parts, ".")
}

// FuzzParseSubscribe feeds arbitrary queries and Last-Event-IDs to the
// request parser: it never panics, its errors are short, and what it
// accepts is a valid subscription.
func FuzzParseSubscribe(f *testing.F) {
	for _, s := range []struct{ q, lid string }{
		{"topic=a", ""},
		{"topic=a&topic=b", "1-0,2-0"},
		{"topic=a&lastEventId=5-1", ""},
		{"topic=a%00", "0"},
		{"topic=%zz;x", "-1"},
		{"topic=a&topic=a", "1,2"},
		{strings.Repeat("topic=x&", 40), ""},
		{"topic=" + strings.Repeat("a", 201), strings.Repeat("9", 5000)},
	} {
		f.Add(s.q, s.lid)
	}
	cfg := Config{}
	if err := cfg.setDefaults(); err != nil {
		f.Fatal(err)
	}
	n := &Node{cfg: cfg}
	f.Fuzz(func(t *testing.T, query, lastID string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/events", RawQuery: query}, Header: http.Header{}}
		if lastID != "" {
			r.Header.Set("Last-Event-ID", lastID)
		}
		req, err := n.parseSubscribe(r)
		if err != nil {
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if len(req.topics) < 1 || len(req.topics) > cfg.MaxTopics || len(req.pos) != len(req.topics) {
			t.Fatalf("%d topics, %d positions", len(req.topics), len(req.pos))
		}
		for i, tp := range req.topics {
			if err := pubsub.ValidateTopic(tp); err != nil {
				t.Fatalf("accepted topic %q: %v", tp, err)
			}
			for _, u := range req.topics[:i] {
				if u == tp {
					t.Fatalf("topic %q accepted twice", tp)
				}
			}
		}
		if req.resume {
			raw := lastID
			if raw == "" {
				raw = r.URL.Query().Get("lastEventId")
			}
			if _, _, err := replay.ParseLastEventID(raw, len(req.topics)); err != nil {
				t.Fatalf("resume from %q accepted: %v", raw, err)
			}
		} else if slicesAnyNonZero(req.pos) {
			t.Fatalf("no resume but positions %v", req.pos)
		}
	})
}

func slicesAnyNonZero(ids []pubsub.ID) bool {
	for _, id := range ids {
		if !id.IsZero() {
			return true
		}
	}
	return false
}
