package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// fakeSSE is a small in-process SSE server with the node's contract:
// GET /events?topic=..., Last-Event-ID resume (composite for several
// topics), retry: and a comment first, and POST /publish returning the
// entry ID. Knobs inject the faults the checker must catch.
type fakeSSE struct {
	cutAfter    int   // close each stream after this many events (0: never)
	dropSeq     int64 // payload seq never sent to anyone (-1: none)
	dupSeq      int64 // payload seq sent twice (-1: none)
	corruptSeq  int64 // payload seq sent with its last pad byte changed (-1: none)
	cutInSeq    int64 // payload seq cut in the middle on first streams, not on resumes (-1: none)
	gapOnResume int   // on a resume, send sse-gap and skip this many entries of the first topic
	status      int   // answer subscribes with this status (0: 200)
	retryMs     int   // retry: sent to clients
	streamsOpen atomic.Int64
	resumes     atomic.Int64

	mu      sync.Mutex
	streams map[string][]fakeEntry
	subs    map[*fakeSub]bool
	n       uint64
}

type fakeEntry struct {
	id   pubsub.ID
	seq  int64
	data []byte
}

type fakeSub struct {
	topics []string
	ch     chan fakeMsg
}

type fakeMsg struct {
	topic int
	e     fakeEntry
}

func newFakeSSE() *fakeSSE {
	return &fakeSSE{dropSeq: -1, dupSeq: -1, corruptSeq: -1, cutInSeq: -1, retryMs: 10, streams: map[string][]fakeEntry{}, subs: map[*fakeSub]bool{}}
}

func (f *fakeSSE) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/events":
		f.serveEvents(w, r)
	case "/publish":
		f.servePublish(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeSSE) servePublish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Topic string          `json:"topic"`
		Data  json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p, _ := scanPayload(req.Data)
	f.mu.Lock()
	f.n++
	e := fakeEntry{id: pubsub.ID{Ms: 1700000000000, Seq: f.n}, seq: p.seq, data: req.Data}
	f.streams[req.Topic] = append(f.streams[req.Topic], e)
	for s := range f.subs {
		for i, t := range s.topics {
			if t == req.Topic {
				select {
				case s.ch <- fakeMsg{topic: i, e: e}:
				default:
					panic("fakeSSE: subscriber queue full")
				}
			}
		}
	}
	f.mu.Unlock()
	fmt.Fprintf(w, "{\"id\":%q}\n", e.id)
}

func (f *fakeSSE) serveEvents(w http.ResponseWriter, r *http.Request) {
	if f.status != 0 {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "no", f.status)
		return
	}
	topics := r.URL.Query()["topic"]
	pos := make([]pubsub.ID, len(topics))
	resume := false
	if h := r.Header.Get("Last-Event-ID"); h != "" {
		resume = true
		parts := strings.Split(h, ",")
		if len(parts) != len(topics) {
			http.Error(w, "bad Last-Event-ID", http.StatusBadRequest)
			return
		}
		for i, p := range parts {
			id, err := pubsub.ParseID(p)
			if err != nil {
				http.Error(w, "bad Last-Event-ID", http.StatusBadRequest)
				return
			}
			pos[i] = id
		}
		f.resumes.Add(1)
	}
	sub := &fakeSub{topics: topics, ch: make(chan fakeMsg, 1<<14)}
	var backlog []fakeMsg
	f.mu.Lock()
	for i, t := range topics {
		s := f.streams[t]
		if !resume {
			if len(s) > 0 {
				pos[i] = s[len(s)-1].id
			}
			continue
		}
		for _, e := range s {
			if pos[i].Less(e.id) {
				backlog = append(backlog, fakeMsg{topic: i, e: e})
			}
		}
	}
	f.subs[sub] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, sub)
		f.mu.Unlock()
	}()
	f.streamsOpen.Add(1)
	defer f.streamsOpen.Add(-1)

	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	fmt.Fprintf(w, "retry: %d\n: ok\n\n", f.retryMs)
	_ = rc.Flush()

	skip := 0
	if resume && f.gapOnResume > 0 {
		fmt.Fprintf(w, "event: sse-gap\ndata: {\"topic\":%q,\"requested\":%q,\"oldest\":\"0-1\"}\n\n", topics[0], pos[0])
		skip = f.gapOnResume
	}
	sent := 0
	write := func(m fakeMsg) bool {
		pos[m.topic] = m.e.id
		if m.topic == 0 && skip > 0 {
			skip-- // lost in the gap
			return true
		}
		if m.e.seq == f.dropSeq {
			return true
		}
		var b bytes.Buffer
		ids := make([]string, len(pos))
		for i, id := range pos {
			ids[i] = id.String()
		}
		fmt.Fprintf(&b, "id: %s\ndata: %s\n\n", strings.Join(ids, ","), m.e.data)
		if m.e.seq == f.corruptSeq {
			b.Bytes()[b.Len()-5] = 'y' // the payload's last pad byte, before "}\n\n
		}
		if m.e.seq == f.cutInSeq && !resume {
			_, _ = w.Write(b.Bytes()[:b.Len()/2])
			_ = rc.Flush()
			panic(http.ErrAbortHandler)
		}
		if m.e.seq == f.dupSeq {
			b.Write(b.Bytes())
		}
		if _, err := w.Write(b.Bytes()); err != nil || rc.Flush() != nil {
			return false
		}
		sent++
		return f.cutAfter == 0 || sent < f.cutAfter
	}
	for _, m := range backlog {
		if !write(m) {
			return
		}
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case m := <-sub.ch:
			if resume && !pos[m.topic].Less(m.e.id) {
				continue // already sent from the backlog
			}
			if !write(m) {
				if sent%2 == 0 {
					panic(http.ErrAbortHandler) // cut without the last chunk
				}
				return // a clean end of the chunked body
			}
		}
	}
}

// testConfig is a small, fast run against srv.
func testConfig(srv *httptest.Server) *Config {
	return &Config{
		URLs: []string{srv.URL}, Clients: 6, Topics: []string{"a"}, TopicsPerConn: 1,
		Duration: 300 * time.Millisecond, Rate: 100, Size: 80, Prefix: "sse:", PublishURL: srv.URL,
		ConnectWait: 5 * time.Second, Drain: 5 * time.Second, BufSize: 4096, SlowRcvBuf: 4096,
		ChurnHold: 100 * time.Millisecond, StormTimeout: 10 * time.Second,
	}
}

func TestEndToEnd(t *testing.T) {
	tests := []struct {
		name  string
		fake  func(*fakeSSE)
		cfg   func(*Config)
		check func(t *testing.T, rep *Report, f *fakeSSE)
	}{
		{
			name: "clean, several topics, reconnects",
			fake: func(f *fakeSSE) { f.cutAfter = 15 },
			cfg: func(c *Config) {
				c.Clients, c.Topics, c.TopicsPerConn, c.Rate = 8, []string{"a", "b", "c"}, 2, 150
			},
			check: func(t *testing.T, rep *Report, f *fakeSSE) {
				passed(t, rep)
				// Each client has two of the three topics, from the start.
				if want := rep.Published.Events * 2 / 3 * 8; rep.Deliveries < want-8*2 || rep.Deliveries > want+8*2 {
					t.Errorf("deliveries = %d, want about %d", rep.Deliveries, want)
				}
				if rep.Connections.Reconnects == 0 || f.resumes.Load() == 0 {
					t.Errorf("reconnects = %d, resumes = %d; want some", rep.Connections.Reconnects, f.resumes.Load())
				}
				if rep.Resume.Count == 0 {
					t.Error("no resume time recorded")
				}
				if rep.Check.Unverified != 0 {
					t.Errorf("unverified = %d", rep.Check.Unverified)
				}
			},
		},
		{
			name: "a dropped event is lost for every client",
			fake: func(f *fakeSSE) { f.dropSeq = 3 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				if rep.Check.Lost != 6 || rep.Check.Duplicated != 0 || rep.Check.Passed {
					t.Errorf("check = %+v, want lost 6 and a failure", rep.Check)
				}
			},
		},
		{
			name: "a duplicated event",
			fake: func(f *fakeSSE) { f.dupSeq = 4 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				if rep.Check.Duplicated != 6 || rep.Check.Lost != 0 || rep.Check.Passed {
					t.Errorf("check = %+v, want duplicated 6 and a failure", rep.Check)
				}
			},
		},
		{
			name: "a gap on resume is a reported loss",
			fake: func(f *fakeSSE) { f.cutAfter, f.gapOnResume = 10, 2 },
			cfg:  func(c *Config) { c.Clients = 3 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				ch := rep.Check
				// Two skipped per gap, but the last gap may come too late for two.
				if ch.Gaps == 0 || ch.GapLost < ch.Gaps || ch.GapLost > 2*ch.Gaps || ch.Lost != 0 || ch.Passed {
					t.Errorf("check = %+v, want gaps, up to 2 gap losses each, none silent, a failure", ch)
				}
			},
		},
		{
			name: "gaps allowed",
			fake: func(f *fakeSSE) { f.cutAfter, f.gapOnResume = 10, 1 },
			cfg:  func(c *Config) { c.Clients, c.AllowGaps = 2, true },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				if rep.Check.Gaps == 0 {
					t.Error("no gaps")
				}
				passed(t, rep)
			},
		},
		{
			name: "slow clients are held and not checked",
			cfg:  func(c *Config) { c.SlowFrac = 0.5 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				passed(t, rep)
				if rep.Connections.SlowClients != 3 || rep.Connections.OpenAtEnd != 6 {
					t.Errorf("connections = %+v, want 3 slow, 6 open", rep.Connections)
				}
				if want := rep.Published.Events * 3; rep.Deliveries != want {
					t.Errorf("deliveries = %d, want %d (fast clients only)", rep.Deliveries, want)
				}
			},
		},
		{
			name: "reconnect storm",
			cfg:  func(c *Config) { c.Duration, c.StormEvents = 100*time.Millisecond, 20 },
			check: func(t *testing.T, rep *Report, f *fakeSSE) {
				passed(t, rep)
				st := rep.Storm
				if st == nil || !st.Complete || st.CaughtUp != 6 || st.Reconnected < 6 || st.OfflineConns != 0 {
					t.Errorf("storm = %+v", st)
				}
				if f.resumes.Load() < 6 {
					t.Errorf("resumes = %d, want every client to resume with Last-Event-ID", f.resumes.Load())
				}
			},
		},
		{
			name: "churn",
			cfg:  func(c *Config) { c.Churn, c.Clients = 3, 4 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				passed(t, rep)
				if len(rep.Churn) != 3 || rep.Connections.Clients != 12 || rep.Connections.Opened != 12 {
					t.Errorf("churn rounds %d, connections %+v", len(rep.Churn), rep.Connections)
				}
				for _, r := range rep.Churn {
					if r.Connected.ConnsOpen != 4 || r.Closed.ConnsOpen != 0 {
						t.Errorf("round %d: open %d after connect, %d after close", r.Round, r.Connected.ConnsOpen, r.Closed.ConnsOpen)
					}
				}
				if rep.Deliveries == 0 {
					t.Error("no deliveries during churn")
				}
			},
		},
		{
			name: "idle",
			cfg:  func(c *Config) { c.Idle, c.PublishURL, c.Clients = true, "", 10 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				passed(t, rep)
				if rep.Connections.OpenAtEnd != 10 || rep.PerConn == nil || rep.PerConn.Conns != 10 {
					t.Errorf("connections %+v, per conn %+v", rep.Connections, rep.PerConn)
				}
			},
		},
		{
			name: "400 makes clients give up",
			fake: func(f *fakeSSE) { f.status = http.StatusBadRequest },
			cfg:  func(c *Config) { c.Idle, c.PublishURL, c.Clients, c.Duration = true, "", 3, 0 },
			check: func(t *testing.T, rep *Report, _ *fakeSSE) {
				c := rep.Connections
				if c.GaveUp != 3 || c.NeverConnected != 3 || c.FailedStatus != 3 || rep.Check.Passed {
					t.Errorf("connections = %+v, check %+v", c, rep.Check)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, f := runAgainstFake(t, tt.fake, tt.cfg)
			tt.check(t, rep, f)
		})
	}
}

// runAgainstFake runs sseload against a fresh fake server set up by fake
// (nil: as it is), with testConfig changed by cfg (nil: as it is). The
// report is logged if the test fails.
func runAgainstFake(t *testing.T, fake func(*fakeSSE), cfg func(*Config)) (*Report, *fakeSSE) {
	t.Helper()
	f := newFakeSSE()
	if fake != nil {
		fake(f)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c := testConfig(srv)
	if cfg != nil {
		cfg(c)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	rep, err := run(context.Background(), c, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := json.MarshalIndent(rep, "", " ")
			t.Logf("report: %s\nstderr: %s", b, stderr.String())
		}
	})
	return rep, f
}

func passed(t *testing.T, rep *Report) {
	t.Helper()
	if !rep.Check.Passed {
		t.Errorf("check failed: %v", rep.Check.Failures)
	}
}

func TestMainRun(t *testing.T) {
	f := newFakeSSE()
	srv := httptest.NewServer(f)
	defer srv.Close()
	args := []string{"-url", srv.URL, "-publish-url", srv.URL, "-n", "3", "-rate", "100", "-duration", "200ms",
		"-ramp", "0", "-progress=false", "-check"}

	var out, errOut bytes.Buffer
	if code := mainRun(args, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	var rep map[string]any
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out.String())
	}
	for _, k := range []string{"config", "connections", "published", "deliveries", "check", "latency", "loadgen", "duration_s"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("report has no %q", k)
		}
	}
	if d := rep["config"].(map[string]any)["duration"]; d != "200ms" {
		t.Errorf("config duration = %v, want 200ms", d)
	}

	f2 := newFakeSSE()
	f2.dropSeq = 2
	srv2 := httptest.NewServer(f2)
	defer srv2.Close()
	args[1], args[3] = srv2.URL, srv2.URL
	out.Reset()
	if code := mainRun(args, &out, &errOut); code != exitCheckFailed {
		t.Errorf("with a dropped event: exit %d, want %d", code, exitCheckFailed)
	}
	if code := mainRun([]string{"-n", "0", "-idle"}, &out, &errOut); code != exitUsage {
		t.Errorf("with -n 0: exit %d, want %d", code, exitUsage)
	}
	if code := mainRun([]string{"-h"}, &out, &errOut); code != exitOK {
		t.Errorf("-h: exit %d, want 0", code)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		args []string
		want string // substring of the error; "" for none
	}{
		{[]string{"-idle"}, ""},
		{[]string{"-redis", "redis://127.0.0.1:6379"}, ""},
		{[]string{}, "need -redis or -publish-url"},
		{[]string{"-idle", "-url", "https://x"}, "need http://host:port"},
		{[]string{"-idle", "-topics", "a b"}, "-topics"},
		{[]string{"-idle", "-topics", "a,b", "-topics-per-conn", "3"}, "-topics-per-conn"},
		{[]string{"-idle", "-src", "localhost"}, "-src"},
		{[]string{"-idle", "-slow-frac", "1"}, "-slow-frac"},
		{[]string{"-redis", "redis://x", "-publish-url", "http://y"}, "choose one"},
		{[]string{"-redis", "redis://x", "-storm-events", "5", "-churn", "2"}, "choose one"},
		{[]string{"-idle", "-event", "sse-x"}, "-event"},
		{[]string{"-idle", "-node-pid", "abc"}, "-node-pid"},
		{[]string{"-idle", "extra"}, "unexpected arguments"},
		{[]string{"-redis", "redis://x", "-size", "52428800", "-count", "1", "-verify"}, ""},
		{[]string{"-redis", "redis://x", "-size", "67108865"}, "-size"},
		{[]string{"-redis", "redis://x", "-preload", "100", "-from-start", "-duration", "0s"}, ""},
		{[]string{"-idle", "-verify"}, "not with -idle"},
		{[]string{"-redis", "redis://x", "-from-start", "-churn", "2"}, "not with -churn"},
		{[]string{"-redis", "redis://x", "-from-start", "-storm-events", "5"}, "choose one"},
		{[]string{"-idle", "-topics", "a,b", "-topics-n", "3"}, "-topics-n"},
		{[]string{"-idle", "-node-rss-max-mib", "-1"}, "-node-rss-max-mib"},
	}
	for _, tt := range tests {
		_, err := parseFlags(tt.args, new(bytes.Buffer))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v", tt.args, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: error %v, want one with %q", tt.args, err, tt.want)
		}
	}
	cfg, err := parseFlags([]string{"-idle", "-topics", "m3", "-topics-n", "3"}, new(bytes.Buffer))
	if err != nil || strings.Join(cfg.Topics, ",") != "m3-0,m3-1,m3-2" {
		t.Errorf("-topics-n 3: topics %v, %v", cfg.Topics, err)
	}
	tg, err := parseTarget("http://127.0.0.1:8080")
	if err != nil || tg.path != "/events" || tg.addr != "127.0.0.1:8080" {
		t.Errorf("parseTarget = %+v, %v", tg, err)
	}
	tg, _ = parseTarget("http://lb/sse/events")
	if tg.path != "/sse/events" || tg.addr != "lb:80" || tg.host != "lb" {
		t.Errorf("parseTarget with path = %+v", tg)
	}
}
