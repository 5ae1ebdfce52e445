package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sse "github.com/tmaxmax/go-sse"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

func TestEveryEventReachesEverySubscriberOnceInOrder(t *testing.T) {
	// The queue holds the whole burst: this test is about order and
	// exactly-once, the slow-client tests about overflow.
	tn := newTestNode(t, testOpts{cfg: Config{ClientBuffer: 1024}})
	const perTopic = 200
	subs := map[string][]*sseClient{}
	for topic, n := range map[string]int{"a": 20, "b": 5} {
		for range n {
			subs[topic] = append(subs[topic], dial(t, tn.srv.URL+"/events?topic="+topic, ""))
		}
	}
	want := map[string][]string{}
	for i := range perTopic {
		for _, topic := range []string{"a", "b"} {
			data := fmt.Sprintf("%s-%d", topic, i)
			id := tn.publish(t, topic, "", data)
			want[topic] = append(want[topic], id.String()+" "+data)
		}
	}
	for topic, clients := range subs {
		for ci, c := range clients {
			for i, w := range want[topic] {
				e := c.next(t)
				if got := e.ID + " " + e.Data; got != w {
					t.Fatalf("topic %s client %d event %d: got %q, want %q", topic, ci, i, got, w)
				}
			}
		}
	}
}

// Payloads go through a maintained SSE client library, not only our parser.
// SSE carries lines, and its parser joins them with "\n": LF payloads arrive
// byte-identical, and CRLF or CR line breaks arrive as LF, which is all the
// protocol can represent (documented in the README).
func TestPayloadsThroughGoSSE(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	payloads := []struct{ event, data string }{
		{"", "plain"},
		{"multi", "line one\nline two\nline three"},
		{"", "crlf one\r\ncrlf two"},
		{"", "cr one\rcr two"},
		{"", "mixed\r\n\rend\n"},
		{"", ""},
		{"", " leading space and trailing space "},
		{"", "data: looks like a field\nid: 99-9\n\nevent: x"},
		{"utf8", "héllo, 世界 ✓"},
		{"", strings.Repeat("big ", 5000)},
	}
	resp := getWith(t, tn.srv.URL+"/events?topic=p", nil)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	for _, h := range []string{"Cache-Control: no-cache", "X-Accel-Buffering: no"} {
		k, v, _ := strings.Cut(h, ": ")
		if got := resp.Header.Get(k); got != v {
			t.Fatalf("%s = %q, want %q", k, got, v)
		}
	}
	var ids []string
	for _, p := range payloads {
		ids = append(ids, tn.publish(t, "p", p.event, p.data).String())
	}
	i := 0
	// Every event this library yields is one that was published: the
	// opening, the retry: line and heartbeats yield none.
	for ev, err := range sse.Read(resp.Body, &sse.ReadConfig{MaxEventSize: 1 << 20}) {
		if err != nil {
			t.Fatalf("go-sse read: %v", err)
		}
		p := payloads[i]
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(p.data)
		if ev.Data != want || ev.Type != p.event || ev.LastEventID != ids[i] {
			t.Fatalf("event %d: got (%q, %q, %q), want (%q, %q, %q)", i, ev.LastEventID, ev.Type, truncate(ev.Data, 80), ids[i], p.event, truncate(want, 80))
		}
		if i++; i == len(payloads) {
			break
		}
	}
	if i != len(payloads) {
		t.Fatalf("got %d events, want %d", i, len(payloads))
	}
}

func TestResume(t *testing.T) {
	tn := newTestNode(t, testOpts{mem: pubsub.MemoryConfig{MaxLen: 20}, window: replay.Config{RingSize: 8, PageSize: 3}})
	// Each case has its own topic of 30 entries: the broker keeps 10..29,
	// and the ring, loaded by the first subscriber, 22..29.
	const at = -1
	tests := []struct {
		name   string
		header int // index of the Last-Event-ID entry; at: none; -2: "0"
		query  int
		gap    bool
		first  int // index of the first event expected
	}{
		{name: "from ring", header: 25, query: at, first: 26},
		{name: "from broker pages", header: 12, query: at, first: 13},
		{name: "oldest kept", header: 10, query: at, first: 11},
		{name: "query parameter", header: at, query: 27, first: 28},
		{name: "header wins over query", header: 28, query: 11, first: 29},
		{name: "zero replays the window", header: -2, query: at, first: 10},
		{name: "older than the window", header: 3, query: at, gap: true, first: 10},
		{name: "at the end", header: 29, query: at, first: 30},
		{name: "no position is live", header: at, query: at, first: 30},
		// A position this stream never had (it was lost and recreated, or
		// the ID is bogus): told, then everything the window holds.
		{name: "future position", header: -3, query: at, gap: true, first: 10},
	}
	for ti, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic := fmt.Sprintf("r%d", ti)
			var ids []pubsub.ID
			for i := range 30 {
				ids = append(ids, tn.publish(t, topic, "", strconv.Itoa(i)))
			}
			pos := func(i int) string {
				switch i {
				case at:
					return ""
				case -2:
					return "0"
				case -3:
					return "99999999999999-0"
				}
				return ids[i].String()
			}
			u := tn.srv.URL + "/events?topic=" + topic
			if tt.query != at {
				u += "&lastEventId=" + url.QueryEscape(pos(tt.query))
			}
			c := dial(t, u, pos(tt.header))
			if tt.gap {
				e := c.next(t)
				if e.Event != "sse-gap" || e.ID != "" {
					t.Fatalf("first event = %+v, want sse-gap without id", e)
				}
				var g struct{ Topic, Requested, Oldest string }
				if err := json.Unmarshal([]byte(e.Data), &g); err != nil {
					t.Fatalf("gap data %q: %v", e.Data, err)
				}
				if g.Topic != topic || g.Requested != pos(tt.header) || g.Oldest != ids[10].String() {
					t.Fatalf("gap = %+v, want topic %s, requested %s, oldest %s", g, topic, pos(tt.header), ids[10])
				}
			}
			for i := tt.first; i < 30; i++ {
				if e := c.next(t); e.ID != ids[i].String() || e.Data != strconv.Itoa(i) {
					t.Fatalf("replayed %+v, want id %s data %d", e, ids[i], i)
				}
			}
			// Then live, with nothing replayed twice.
			id := tn.publish(t, topic, "", "live")
			if e := c.next(t); e.ID != id.String() || e.Data != "live" {
				t.Fatalf("after replay got %+v, want live %s", e, id)
			}
		})
	}
}

// A client of several topics gets composite ids and resumes each topic
// from its own position.
func TestResumeSeveralTopics(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	a1 := tn.publish(t, "ma", "", "a1")
	b1 := tn.publish(t, "mb", "", "b1")
	c := dial(t, tn.srv.URL+"/events?topic=ma&topic=mb", "0")
	if e := c.next(t); e.ID != a1.String()+",0-0" || e.Data != "a1" {
		t.Fatalf("got %+v", e)
	}
	if e := c.next(t); e.ID != a1.String()+","+b1.String() || e.Data != "b1" {
		t.Fatalf("got %+v", e)
	}
	c.close()
	a2 := tn.publish(t, "ma", "", "a2")
	b2 := tn.publish(t, "mb", "", "b2")
	c = dial(t, tn.srv.URL+"/events?topic=ma&topic=mb", a1.String()+","+b1.String())
	if e := c.next(t); e.ID != a2.String()+","+b1.String() || e.Data != "a2" {
		t.Fatalf("got %+v", e)
	}
	if e := c.next(t); e.ID != a2.String()+","+b2.String() || e.Data != "b2" {
		t.Fatalf("got %+v", e)
	}
	b3 := tn.publish(t, "mb", "", "b3")
	if e := c.next(t); e.ID != a2.String()+","+b3.String() || e.Data != "b3" {
		t.Fatalf("got %+v", e)
	}
}

func TestBadRequests(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{MaxTopics: 3}})
	tests := []struct {
		name, query, lastID string
		code                int
		body                string
	}{
		{"no topic", "", "", 400, "missing topic"},
		{"empty topic", "topic=", "", 400, "bad topic"},
		{"space in topic", "topic=a+b", "", 400, "bad topic"},
		{"newline in topic", "topic=a%0Ab", "", 400, "bad topic"},
		{"long topic", "topic=" + strings.Repeat("x", 201), "", 400, "bad topic"},
		{"too many topics", "topic=a&topic=b&topic=c&topic=d", "", 400, "too many topics"},
		{"duplicate topic", "topic=a&topic=a", "", 400, "given twice"},
		{"malformed id", "topic=a", "abc", 400, "Last-Event-ID"},
		{"negative id", "topic=a", "-1", 400, "Last-Event-ID"},
		{"id with spaces", "topic=a", "1 -2", 400, "Last-Event-ID"},
		{"wrong id count", "topic=a&topic=b", "1-1", 400, "Last-Event-ID"},
		{"malformed query id", "topic=a&lastEventId=x", "", 400, "Last-Event-ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, code, body := tryDial(t, tn.srv.URL+"/events?"+tt.query, tt.lastID)
			if c != nil {
				t.Fatalf("stream opened, want %d", tt.code)
			}
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tt.code, tt.body)
			}
		})
	}
	resp, err := http.Post(tn.srv.URL+"/events?topic=a", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /events: %d, want 405", resp.StatusCode)
	}
}

// The wire between events: the opening and every heartbeat are blank
// lines, and the jittered retry: rides the first event. With
// AnnouncePosition, a client without a position gets an id-only block.
func TestOpeningRetryAndHeartbeats(t *testing.T) {
	tests := []struct {
		name       string
		announce   bool
		browsers   bool   // AnnounceToBrowsers
		secFetch   string // the request's Sec-Fetch-Mode
		lastID     string
		idle, next []string // non-blank lines before the publish, and up to its event's id
	}{
		{name: "first connect", next: []string{"retry: R", "id: ID"}},
		{name: "resume", lastID: "0-0", next: []string{"retry: R", "id: ID"}},
		{name: "announce", announce: true, idle: []string{"retry: R", "id: 0-0"}, next: []string{"id: ID"}},
		{name: "announce, resume", announce: true, lastID: "0-0", next: []string{"retry: R", "id: ID"}},
		{name: "browsers, a browser", browsers: true, secFetch: "cors", idle: []string{"retry: R", "id: 0-0"}, next: []string{"id: ID"}},
		{name: "browsers, a library", browsers: true, next: []string{"retry: R", "id: ID"}},
		{name: "browsers, a browser resuming", browsers: true, secFetch: "cors", lastID: "0-0", next: []string{"retry: R", "id: ID"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTestNode(t, testOpts{cfg: Config{Heartbeat: 20 * time.Millisecond, Retry: 1500 * time.Millisecond, AnnouncePosition: tt.announce, AnnounceToBrowsers: tt.browsers}})
			var hdr http.Header
			if tt.secFetch != "" {
				hdr = http.Header{"Sec-Fetch-Mode": {tt.secFetch}}
			}
			c, status, body := tryDialHeader(t, tn.srv.URL+"/events?topic=h", tt.lastID, hdr)
			if c == nil {
				t.Fatalf("status %d: %s", status, body)
			}
			var id string
			// read collects the non-blank lines until stop says so.
			read := func(stop func(line string, blanks int) bool) []string {
				var got []string
				for blanks := 0; ; {
					l, err := c.r.ReadString('\n')
					if err != nil {
						t.Fatal(err)
					}
					l = strings.TrimSuffix(l, "\n")
					if l == "" {
						blanks++
					} else if v, ok := strings.CutPrefix(l, "retry: "); ok {
						if ms, err := strconv.Atoi(v); err != nil || ms < 1500 || ms > 3000 {
							t.Fatalf("retry: %q, want 1500 to 3000 ms", v)
						}
						got = append(got, "retry: R")
					} else if id != "" && l == "id: "+id {
						got = append(got, "id: ID")
					} else {
						got = append(got, l)
					}
					if stop(l, blanks) {
						return got
					}
				}
			}
			// The opening and two heartbeats at least.
			idle := read(func(_ string, blanks int) bool { return blanks == 6 })
			id = tn.publish(t, "h", "", "x").String()
			next := read(func(l string, _ int) bool { return l == "id: "+id })
			if !slices.Equal(idle, tt.idle) || !slices.Equal(next, tt.next) {
				t.Fatalf("lines before the event %q then %q, want %q then %q", idle, next, tt.idle, tt.next)
			}
		})
	}
}

func TestMaxConnections(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{MaxConnections: 2, Retry: 3 * time.Second}})
	dial(t, tn.srv.URL+"/events?topic=m", "")
	dial(t, tn.srv.URL+"/events?topic=m", "")
	resp := getWith(t, tn.srv.URL+"/events?topic=m", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("third stream: %d Retry-After %q, want 503 and 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
