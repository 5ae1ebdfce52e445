package integration

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/integration/redistest"
)

// TestConformance: client libraries nobody here wrote, each through the
// shipped HAProxy and nginx configs in front of two nodes on one Redis,
// get exactly the events that were published (in order, none twice, none
// the publisher did not send) across live delivery, multi-line data,
// event types, retry:, SIGKILL of each node, a drain of each node,
// sse-gap and a multi-topic stream, with a short SSE_HEARTBEAT so idle
// periods carry heartbeats. SSE_CONFORMANCE_WRITE=1 writes the results
// table to docs/clients.md.
func TestConformance(t *testing.T) {
	const (
		// Long enough to tell a library that applies retry: (even with
		// its own +-50% jitter, as go-sse does) from one that reconnects
		// on its own schedule (a few hundred ms).
		retry     = 2 * time.Second
		heartbeat = 100 * time.Millisecond
		catchUp   = 30 * time.Second
	)
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	cl := startConfCluster(t, srv, prefix, func(c *nodeConfig) {
		c.Node.Retry = retry
		c.Node.Heartbeat = heartbeat
		c.Node.CORSOrigins = []string{"*"} // the browser's page is served from another origin
		c.Node.AnnouncePosition = false    // the default: what a library user gets
	})
	proxies := []*confProxy{startConfProxy(t, "haproxy", cl), startConfProxy(t, "nginx", cl)}
	browser := startConfBrowser(t)
	pub := &confPublisher{t: t, srv: srv, prefix: prefix}

	// sse-gap: the subscription asks for a position whose successors were
	// trimmed away.
	for i := range 5 {
		pub.publish(confTopicG, "gap", i, "", fmt.Sprintf(`{"gap":%d}`, i))
	}
	srv.MustDo(t, "XTRIM", prefix+confTopicG, "MAXLEN", strconv.Itoa(confGapKept))
	gapFrom := pub.events[0].id
	// The other streams start after an event of their own topics: a stream
	// opened without a position starts wherever the node is when it
	// registers it, which the test cannot see from outside.
	pub.publish(confTopicT, "setup", 0, "", "setup t")
	pub.publish(confTopicU, "setup", 0, "", "setup u")
	fromT, fromU := pub.events[len(pub.events)-2].id, pub.events[len(pub.events)-1].id

	kinds := []struct{ kind, query string }{
		{"single", "topic=" + confTopicT + "&lastEventId=" + fromT},
		{"multi", "topic=" + confTopicT + "&topic=" + confTopicU + "&lastEventId=" + fromT + "," + fromU},
		{"gap", "topic=" + confTopicG + "&lastEventId=" + gapFrom},
	}
	var subs []*confSub
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for _, lib := range confLibs {
		for _, p := range proxies {
			for _, k := range kinds {
				s := &confSub{lib: lib, proxy: p.name, kind: k.kind, url: p.url + "/events?" + k.query}
				subs = append(subs, s)
				if lib == confChromium {
					if err := browser.open(s.key(), s.url, []string{confEventType, "sse-gap"}); err != nil {
						t.Fatalf("open an EventSource: %v", err)
					}
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					confRunGoLibrary(ctx, s)
				}()
			}
		}
	}
	syncBrowser := func() {
		st, err := browser.state()
		if err != nil {
			t.Logf("browser state: %v", err)
			return
		}
		for _, s := range subs {
			if v, ok := st[s.key()]; ok {
				s.fromPage(v)
			}
		}
	}
	// settle polls (syncing the browser's view first) until cond holds or
	// catchUp passes; then it logs what cond last said, and the checks
	// below tell what went wrong.
	settle := func(what string, cond func() (bool, string)) {
		var status string
		if !pollUntil(catchUp, 50*time.Millisecond, nil, func() bool {
			syncBrowser()
			var ok bool
			ok, status = cond()
			return ok
		}) {
			t.Logf("%s: after %v, %s", what, catchUp, status)
		}
	}
	// allConnected waits until every subscription that has not given up
	// holds a stream.
	allConnected := func(what string) {
		settle(what, func() (bool, string) {
			want := 0
			for _, s := range subs {
				if _, _, _, ended := s.snapshot(); ended == "" {
					want++
				}
			}
			got := cl.connections()
			return got == want, fmt.Sprintf("%d streams open, want %d", got, want)
		})
	}
	// caughtUp waits until every subscription has as many events as it
	// should (the checks below say whether they are the right ones).
	caughtUp := func(what string) {
		settle(what, func() (bool, string) {
			behind := 0
			for _, s := range subs {
				got, _, _, _ := s.snapshot()
				if len(got) < len(pub.want(s.kind)) {
					behind++
				}
			}
			return behind == 0, fmt.Sprintf("%d subscriptions still behind", behind)
		})
	}
	idle := func() { time.Sleep(5 * heartbeat) } // heartbeats only

	allConnected("start")
	pub.batch("live")
	caughtUp("live")
	idle()
	var windows []confWindow
	for _, how := range []string{"kill", "drain"} {
		for i := range cl.slots {
			w := confWindow{how: how, from: time.Now()}
			switch how {
			case "kill":
				cl.slots[i].node.Load().kill(t)
			case "drain":
				cl.slots[i].node.Load().stop(t)
			}
			pub.batch(how) // while the node is away
			cl.start(i)
			allConnected(fmt.Sprintf("%s %s", how, cl.slots[i].name))
			pub.batch(how)
			caughtUp(fmt.Sprintf("%s %s", how, cl.slots[i].name))
			w.to = time.Now()
			windows = append(windows, w)
			idle()
		}
	}
	pub.batch("final")
	caughtUp("final")
	idle()
	syncBrowser()

	rows := confEvaluate(subs, pub, windows, retry)
	table := confTable(rows)
	t.Logf("results:\n%s", table)
	for _, r := range rows {
		for _, c := range r.cells {
			if !c.ok {
				t.Errorf("%s via %s: %s: %s", r.lib, r.proxy, c.col, c.text)
			}
		}
	}
	if t.Failed() {
		for _, p := range proxies {
			t.Logf("%s output:\n%s", p.name, confTail(p.out.String(), 4000))
		}
	}
	if os.Getenv("SSE_CONFORMANCE_WRITE") == "1" {
		if err := os.WriteFile("../docs/clients.md", []byte(confDoc(table, retry, heartbeat)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	confTopicT    = "conf.t"
	confTopicU    = "conf.u"
	confTopicG    = "conf.g"
	confEventType = "greet"
	confChromium  = "Chromium EventSource"
	confGapKept   = 3 // entries of the gap topic left by the trim
)

var confLibs = []string{confChromium, "tmaxmax/go-sse", "launchdarkly/eventsource", "r3labs/sse/v2"}

func (s *confSub) key() string { return s.lib + "|" + s.proxy + "|" + s.kind }

// fromPage takes a browser EventSource's state.
func (s *confSub) fromPage(v confPageState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = v.Events
	s.connects = s.connects[:0]
	for _, ms := range v.Opens {
		s.connects = append(s.connects, time.UnixMilli(ms))
	}
	if v.ReadyState == 2 && s.ended == "" {
		s.ended, s.endedAt = "EventSource closed (readyState 2)", time.Now()
	}
}

// confPublished is one event as published.
type confPublished struct {
	topic, phase, id string
	ev               confEvent // as a client must dispatch it (ID of a single-topic stream)
}

type confPublisher struct {
	t      *testing.T
	srv    *redistest.Server
	prefix string
	events []confPublished
	n      int
}

func (p *confPublisher) publish(topic, phase string, n int, event, data string) {
	fields := []any{"data", data}
	if event != "" {
		fields = append(fields, "event", event)
	}
	id := xadd(p.t, p.srv, p.prefix+topic, fields...)
	// The client sees every line break as "\n".
	want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(data)
	p.events = append(p.events, confPublished{topic: topic, phase: phase, id: id.String(), ev: confEvent{ID: id.String(), Type: event, Data: want}})
}

// batch publishes on T a plain event, a multi-line one and a typed one,
// and a plain one on U.
func (p *confPublisher) batch(phase string) {
	p.n++
	p.publish(confTopicT, phase, p.n, "", fmt.Sprintf(`{"phase":%q,"n":%d}`, phase, p.n))
	p.publish(confTopicT, phase, p.n, "", fmt.Sprintf("multi-line %d: one\ntwo\r\nthree\rfour", p.n))
	p.publish(confTopicT, phase, p.n, confEventType, fmt.Sprintf(`{"greet":%d}`, p.n))
	p.publish(confTopicU, phase, p.n, "", fmt.Sprintf(`{"u":%d}`, p.n))
}

// want is what a subscription of kind must receive, in order.
func (p *confPublisher) want(kind string) []confPublished {
	var out []confPublished
	if kind == "gap" {
		// The gap, then what survived the trim.
		var g []confPublished
		for _, e := range p.events {
			if e.topic == confTopicG {
				g = append(g, e)
			}
		}
		out = append(out, confPublished{topic: confTopicG, phase: "gap", ev: confEvent{Type: "sse-gap"}})
		return append(out, g[len(g)-confGapKept:]...)
	}
	for _, e := range p.events {
		if e.phase != "setup" && (e.topic == confTopicT || (kind == "multi" && e.topic == confTopicU)) {
			out = append(out, e)
		}
	}
	return out
}

// confWindow is a disruption (a node killed or drained) and the time until
// every client had caught up after it.
type confWindow struct {
	how      string
	from, to time.Time
}

// confCheck compares what a subscription received with what it should
// have: lost, duplicated, out of order, and extra (an event nobody
// published: a phantom). An event is known by its type and data (unique
// per published event), and on a single-topic stream by its ID too.
type confCheck struct {
	lost, dup, order, extra int
	missing                 map[string]bool // phases with an event lost
	first                   string          // the first difference
}

func (c confCheck) clean() bool { return c.lost+c.dup+c.order+c.extra == 0 }

func (c confCheck) String() string {
	if c.clean() {
		return "exact"
	}
	return fmt.Sprintf("lost %d, duplicated %d, out of order %d, extra %d (first: %s)", c.lost, c.dup, c.order, c.extra, c.first)
}

func confCompare(kind string, want []confPublished, got []confEvent) confCheck {
	c := confCheck{missing: make(map[string]bool)}
	note := func(s string) {
		if c.first == "" {
			c.first = s
		}
	}
	index := make(map[confEvent]int, len(want))
	key := func(e confEvent) confEvent {
		if kind != "single" || e.Type == "sse-gap" {
			e.ID = ""
		}
		if e.Type == "sse-gap" {
			e.Data = "" // its JSON names positions the test does not compute
		}
		return e
	}
	for i, w := range want {
		index[key(w.ev)] = i
	}
	seen := make([]bool, len(want))
	last := make(map[string]int) // per topic
	for _, g := range got {
		i, ok := index[key(g)]
		switch {
		case !ok:
			c.extra++
			note(fmt.Sprintf("extra event %+v", g))
		case seen[i]:
			c.dup++
			note(fmt.Sprintf("duplicate %+v", g))
		default:
			seen[i] = true
			if j, ok := last[want[i].topic]; ok && j > i {
				c.order++
				note(fmt.Sprintf("out of order %+v", g))
			}
			last[want[i].topic] = i
		}
	}
	for i, ok := range seen {
		if !ok {
			c.lost++
			c.missing[want[i].phase] = true
			note(fmt.Sprintf("lost %+v (%s)", want[i].ev, want[i].phase))
		}
	}
	return c
}

// confCell is one result: shown as text, failing the test unless ok.
type confCell struct {
	col  string
	ok   bool
	text string
}

type confRow struct {
	lib, proxy string
	cells      []confCell
}

var confColumns = []string{"live", "multi-line data", "event types", "retry:", "resume after SIGKILL", "resume after drain", "sse-gap", "multi-topic", "no phantom event"}

func confEvaluate(subs []*confSub, pub *confPublisher, windows []confWindow, retry time.Duration) []confRow {
	var rows []confRow
	for _, lib := range confLibs {
		for _, proxy := range []string{"haproxy", "nginx"} {
			byKind := make(map[string]*confSub)
			for _, s := range subs {
				if s.lib == lib && s.proxy == proxy {
					byKind[s.kind] = s
				}
			}
			checks := make(map[string]confCheck)
			for kind, s := range byKind {
				got, _, _, _ := s.snapshot()
				checks[kind] = confCompare(kind, pub.want(kind), got)
			}
			single, multi, gap := checks["single"], checks["multi"], checks["gap"]
			cell := func(col string, ok bool, bad string) confCell {
				if ok {
					return confCell{col: col, ok: true, text: "✓"}
				}
				return confCell{col: col, text: "✗ " + bad}
			}
			row := confRow{lib: lib, proxy: proxy}
			// The typed and multi-line events are in every phase: a
			// phase with one lost shows in the columns below.
			row.cells = append(row.cells,
				cell("live", !single.missing["live"], single.String()),
				confDataCell(byKind["single"], pub, "multi-line data", func(e confPublished) bool { return strings.Contains(e.ev.Data, "\n") }),
				confDataCell(byKind["single"], pub, "event types", func(e confPublished) bool { return e.ev.Type != "" }),
				confRetryCell(byKind["single"], windows, retry),
				confResumeCell(byKind, checks, windows, "kill", "resume after SIGKILL"),
				confResumeCell(byKind, checks, windows, "drain", "resume after drain"),
				cell("sse-gap", gap.clean(), gap.String()),
				cell("multi-topic", multi.clean(), multi.String()),
				cell("no phantom event", single.extra+multi.extra+gap.extra == 0,
					fmt.Sprintf("%d extra events (first: %s)", single.extra+multi.extra+gap.extra, firstNonEmpty(single.first, multi.first, gap.first))),
			)
			rows = append(rows, row)
		}
	}
	return rows
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// confDataCell checks that every published event that match selects
// arrived exactly as published on the single-topic stream.
func confDataCell(s *confSub, pub *confPublisher, col string, match func(confPublished) bool) confCell {
	got, _, _, _ := s.snapshot()
	have := make(map[confEvent]bool, len(got))
	for _, g := range got {
		have[g] = true
	}
	n, bad := 0, 0
	for _, e := range pub.want("single") {
		if match(e) {
			n++
			if !have[e.ev] {
				bad++
			}
		}
	}
	if bad > 0 {
		return confCell{col: col, text: fmt.Sprintf("✗ %d of %d not as published", bad, n)}
	}
	return confCell{col: col, ok: true, text: fmt.Sprintf("✓ (%d events)", n)}
}

// confRetryCell reports the retry: a library saw, and whether it waited
// that long before reconnecting after a drain. Libraries that do not use
// retry: are reported, not failed: the server cannot change that.
func confRetryCell(s *confSub, windows []confWindow, retry time.Duration) confCell {
	const col = "retry:"
	_, connects, seen, _ := s.snapshot()
	// The shortest wait between a drain and the next connect.
	var wait time.Duration = -1
	for _, w := range windows {
		if w.how != "drain" {
			continue
		}
		for _, c := range connects {
			if c.After(w.from) && c.Before(w.to) {
				if d := c.Sub(w.from); wait < 0 || d < wait {
					wait = d
				}
				break
			}
		}
	}
	waited := "no reconnect seen"
	if wait >= 0 {
		waited = fmt.Sprintf("reconnected after >= %d ms", wait.Milliseconds())
	}
	switch s.lib {
	case confChromium:
		// Not visible to the page: the wait shows it.
		return confCell{col: col, ok: wait >= retry*9/10, text: fmt.Sprintf("%s (%s)", confMark(wait >= retry*9/10), waited)}
	case "tmaxmax/go-sse":
		// go-sse waits the server's value with its own +-50% jitter.
		ms, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(seen, "next retry "), " ms"))
		ok := time.Duration(ms)*time.Millisecond >= retry/2
		return confCell{col: col, ok: ok, text: fmt.Sprintf("%s applied (%s: the stream's value with the library's +-50%% jitter)", confMark(ok), seen)}
	default:
		ms, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(seen, "retry "), " ms"))
		ok := time.Duration(ms)*time.Millisecond >= retry && time.Duration(ms)*time.Millisecond < 2*retry
		text := fmt.Sprintf("%s parsed (%s; %s)", confMark(ok), seen, waited)
		if s.lib == "r3labs/sse/v2" {
			text += ", not used: the library reconnects on its own backoff"
		}
		return confCell{col: col, ok: ok, text: text}
	}
}

func confMark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// confResumeCell: after each disruption of kind how, the library
// reconnected at least once and nothing published meanwhile was lost,
// duplicated or reordered on its streams.
func confResumeCell(byKind map[string]*confSub, checks map[string]confCheck, windows []confWindow, how, col string) confCell {
	reconnects := 0
	var ended []string // libraries that gave up for good after such a disruption
	for kind, s := range byKind {
		_, connects, _, end := s.snapshot()
		s.mu.Lock()
		at := s.endedAt
		s.mu.Unlock()
		for _, w := range windows {
			if w.how != how {
				continue
			}
			for _, c := range connects {
				if c.After(w.from) && c.Before(w.to) {
					reconnects++
				}
			}
			if end != "" && !at.Before(w.from) && (at.Before(w.to) || at.Equal(w.to)) {
				ended = append(ended, kind+": "+end)
			}
		}
	}
	slices.Sort(ended)
	for kind, c := range checks {
		if kind != "gap" && (c.missing[how] || c.dup+c.order > 0) {
			return confCell{col: col, text: fmt.Sprintf("✗ %s stream: %s", kind, c)}
		}
	}
	if len(ended) > 0 {
		return confCell{col: col, text: "✗ gave up: " + strings.Join(ended, "; ")}
	}
	if reconnects == 0 {
		return confCell{col: col, text: "✗ never reconnected"}
	}
	return confCell{col: col, ok: true, text: fmt.Sprintf("✓ (%d reconnects)", reconnects)}
}

func confTable(rows []confRow) string {
	var b strings.Builder
	b.WriteString("| client | proxy | " + strings.Join(confColumns, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat(" --- |", len(confColumns)+2) + "\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |", r.lib, r.proxy)
		for _, c := range r.cells {
			fmt.Fprintf(&b, " %s |", strings.ReplaceAll(c.text, "|", "\\|"))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func confTail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// confDoc is docs/clients.md: how the table was made, then the table.
func confDoc(table string, retry, heartbeat time.Duration) string {
	versions := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			versions[d.Path] = d.Version
		}
	}
	var libs []string
	for _, p := range []string{"github.com/tmaxmax/go-sse", "github.com/launchdarkly/eventsource", "github.com/r3labs/sse/v2", "github.com/chromedp/chromedp"} {
		libs = append(libs, fmt.Sprintf("`%s` %s", p, versions[p]))
	}
	slices.Sort(libs)
	return fmt.Sprintf(`# Client libraries

This table is written by the conformance suite,
[integration/conformance_test.go](../integration/conformance_test.go), run with
`+"`SSE_CONFORMANCE_WRITE=1 go test -run TestConformance ./integration/`"+`; do not edit
it by hand.

Each client subscribes through the repository's own
[deploy/haproxy.cfg](../deploy/haproxy.cfg) and [deploy/nginx.conf](../deploy/nginx.conf)
(run as host processes, only their addresses rewritten) to two nodes on one
Redis: one single-topic stream, one two-topic stream, and one stream that
resumes from a position whose successors were trimmed (`+"`sse-gap`"+`). The
publisher sends, in each phase, a plain event, a multi-line one (`+"`\\n`"+`,
`+"`\\r\\n`"+` and `+"`\\r`"+` breaks), a typed one and one on the second topic.
The phases: live; each node killed (as SIGKILL would: every connection
reset); each node drained (SIGTERM's drain), each time with events published
while the node is away; idle periods carry heartbeats (`+"`SSE_HEARTBEAT=%v`"+`,
`+"`SSE_RETRY=%v`"+`). Every stream is checked against what was published:
exactly those events, in order, none twice, none that was not published
("phantom": an empty event made of bytes that are not an event, such as a
heartbeat or a `+"`retry:`"+` line in a block of its own).

Libraries: %s; Chromium from Debian's package.
Each Go library runs with its defaults (only its HTTP client counts
reconnects).

%s
What each column checks:

- **live**: the events of the first phase, on the single-topic stream.
- **multi-line data**, **event types**: every such event, in every phase,
  arrived with exactly its data and type.
- **retry:**: the value the library reported (go-sse: its next reconnect
  delay; launchdarkly, r3labs: the field on the first event), and the
  shortest wait before a reconnect after a drain. Each stream gets its own
  value in [SSE_RETRY, 2*SSE_RETRY) with its first event, so that streams
  closed together come back spread over time.
- **resume after SIGKILL / drain**: the library reconnected, and nothing
  published while its node was away was lost, duplicated or reordered.
- **sse-gap**: the gap event first, then exactly what the window still held.
- **multi-topic**: the two-topic stream, each topic in order.
- **no phantom event**: no event on any of the three streams that was not
  published.

Before the node aborted server-side closes and kept every non-event byte a
blank line (commit a5870fe: a `+"`retry:`"+` + `+"`: ok`"+` opening block, an
id-only block on a first connect, `+"`:`"+` heartbeats, a drain that ended the
body cleanly after a `+"`retry:`"+` block), the same suite found, through both
proxies: Chromium exact everywhere; go-sse 14 and launchdarkly 13 phantom
events (empty events made of the opening, position and drain blocks); r3labs/sse 202
(HAProxy) and 248 (nginx) phantom events (every heartbeat once it knew an
ID) and, at the first drain, all three of its subscriptions ended for good
("Subscribe returned <nil>": it takes a clean end of the body as the end of
the subscription), losing every event published after it.
`, heartbeat, retry, strings.Join(libs, ", "), table)
}
