package integration

// Helpers for the client conformance suite (conformance_test.go): two
// in-process nodes on fixed loopback ports, so that a node killed or
// drained and started again is the same backend to the proxies; the
// repository's deploy/haproxy.cfg and deploy/nginx.conf run as host
// processes in front of them, with only their addresses rewritten; and the
// four client libraries, each recording what it dispatched.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	ld "github.com/launchdarkly/eventsource"
	r3 "github.com/r3labs/sse/v2"
	sse "github.com/tmaxmax/go-sse"
	"gopkg.in/cenkalti/backoff.v1"

	"github.com/ssecluster/ssecluster/integration/redistest"
)

// confSlot is one node position: a fixed public address and an admin
// address answering /readyz for the proxies' health checks, served by
// whichever node currently runs there (503 while none does).
type confSlot struct {
	name, addr, admin string
	node              atomic.Pointer[clusterNode]
}

type confCluster struct {
	t      *testing.T
	srv    *redistest.Server
	prefix string
	edit   func(*nodeConfig)
	slots  []*confSlot
}

func startConfCluster(t *testing.T, srv *redistest.Server, prefix string, edit func(*nodeConfig)) *confCluster {
	t.Helper()
	cl := &confCluster{t: t, srv: srv, prefix: prefix, edit: edit}
	ports := e2eFreePorts(t, 4)
	for i := range 2 {
		s := &confSlot{
			name:  fmt.Sprintf("node%d", i+1),
			addr:  fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			admin: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
		}
		ln, err := net.Listen("tcp", s.admin)
		if err != nil {
			t.Fatal(err)
		}
		adm := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cn := s.node.Load()
			if cn == nil || cn.down.Load() {
				http.Error(w, "node down", http.StatusServiceUnavailable)
				return
			}
			cn.admin.ServeHTTP(w, r)
		})}
		confServe(t, adm, ln)
		cl.slots = append(cl.slots, s)
		cl.start(i)
	}
	return cl
}

// confServe serves srv on ln until the test's cleanup closes it and waits
// for Serve to return.
func confServe(t *testing.T, srv *http.Server, ln net.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
}

// start runs a new node in slot i.
func (cl *confCluster) start(i int) {
	s := cl.slots[i]
	cn := startNode(cl.t, cl.srv, cl.prefix, s.name, func(c *nodeConfig) {
		if cl.edit != nil {
			cl.edit(c)
		}
		c.Listen = s.addr
	})
	s.node.Store(cn)
}

// connections is the number of streams open on the running nodes.
func (cl *confCluster) connections() int {
	n := 0
	for _, s := range cl.slots {
		if cn := s.node.Load(); cn != nil && !cn.down.Load() {
			n += cn.n.Connections()
		}
	}
	return n
}

// confProxy is a load balancer run as a host process from a shipped config.
type confProxy struct {
	name string
	url  string // http://127.0.0.1:port
	cmd  *exec.Cmd
	out  *confLog
}

// confLog collects a process's output for the test's failure message.
type confLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *confLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *confLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

var (
	confBindRE    = regexp.MustCompile(`^(\s*)bind\s+\S*:\d+(.*)$`)
	confServerRE  = regexp.MustCompile(`^(\s*)server\s+\S+\s+\S+:8080\b(.*)$`)
	confPortRE    = regexp.MustCompile(`\s+port\s+\d+`)
	confResolveRE = regexp.MustCompile(`\s+resolvers\s+\S+`)
	confListenRE  = regexp.MustCompile(`^(\s*)listen\s+\d+\s*;`)
	confUpRE      = regexp.MustCompile(`^(\s*)server\s+\S+:8080\b(.*);`)
	confPidRE     = regexp.MustCompile(`^\s*pid\s+\S+;`)
)

// rewriteHAProxy points deploy/haproxy.cfg at cl's nodes: the first bind
// takes port, others free ports; the server lines (beyond the nodes
// running: dropped) target the slots, with their admin ports for checks;
// no Docker resolver.
func rewriteHAProxy(t *testing.T, cfg string, cl *confCluster, port int) string {
	var out []string
	binds, servers := 0, 0
	spare := e2eFreePorts(t, 4)
	for _, l := range strings.Split(cfg, "\n") {
		switch {
		case confBindRE.MatchString(l):
			p := port
			if binds > 0 {
				p = spare[binds%len(spare)]
			}
			binds++
			l = confBindRE.ReplaceAllString(l, fmt.Sprintf("${1}bind 127.0.0.1:%d${2}", p))
		case strings.HasPrefix(strings.TrimSpace(l), "default-server"):
			l = confResolveRE.ReplaceAllString(confPortRE.ReplaceAllString(l, ""), "")
		case confServerRE.MatchString(l):
			if servers >= len(cl.slots) {
				continue
			}
			s := cl.slots[servers]
			servers++
			_, aport, _ := net.SplitHostPort(s.admin)
			rest := confResolveRE.ReplaceAllString(confPortRE.ReplaceAllString(confServerRE.FindStringSubmatch(l)[2], ""), "")
			l = fmt.Sprintf("    server %s %s port %s%s", s.name, s.addr, aport, rest)
		}
		out = append(out, l)
	}
	if binds == 0 || servers != len(cl.slots) {
		t.Fatalf("deploy/haproxy.cfg: found %d binds and %d node servers; the rewrite needs a bind and %d servers", binds, servers, len(cl.slots))
	}
	return strings.Join(out, "\n")
}

// rewriteNginx points deploy/nginx.conf at cl's nodes: listen on port,
// the upstream servers target the slots, the pid file in dir.
func rewriteNginx(t *testing.T, cfg string, cl *confCluster, port int, dir string) string {
	var out []string
	listens, servers := 0, 0
	for _, l := range strings.Split(cfg, "\n") {
		switch {
		case confListenRE.MatchString(l):
			listens++
			l = confListenRE.ReplaceAllString(l, fmt.Sprintf("${1}listen 127.0.0.1:%d;", port))
		case confPidRE.MatchString(l):
			l = "pid " + filepath.Join(dir, "nginx.pid") + ";"
		case confUpRE.MatchString(l):
			if servers >= len(cl.slots) {
				continue
			}
			l = confUpRE.ReplaceAllString(l, fmt.Sprintf("${1}server %s${2};", cl.slots[servers].addr))
			servers++
		}
		out = append(out, l)
	}
	if listens == 0 || servers != len(cl.slots) {
		t.Fatalf("deploy/nginx.conf: found %d listens and %d node servers; the rewrite needs a listen and %d servers", listens, servers, len(cl.slots))
	}
	return strings.Join(out, "\n")
}

// startConfProxy writes the rewritten config, checks it with the proxy's
// own -c/-t, starts the proxy in the foreground and waits until a request
// through it reaches a node. Cleanup stops it (SIGTERM, then SIGKILL).
func startConfProxy(t *testing.T, name string, cl *confCluster) *confProxy {
	t.Helper()
	dir := t.TempDir()
	port := e2eFreePorts(t, 1)[0]
	var file string
	var check, run []string
	switch name {
	case "haproxy":
		src, err := os.ReadFile("../deploy/haproxy.cfg")
		if err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(file, []byte(rewriteHAProxy(t, string(src), cl, port)), 0o644); err != nil {
			t.Fatal(err)
		}
		check = []string{"haproxy", "-c", "-f", file}
		run = []string{"haproxy", "-db", "-f", file}
	case "nginx":
		src, err := os.ReadFile("../deploy/nginx.conf")
		if err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(file, []byte(rewriteNginx(t, string(src), cl, port, dir)), 0o644); err != nil {
			t.Fatal(err)
		}
		check = []string{"nginx", "-t", "-p", dir, "-c", file}
		run = []string{"nginx", "-p", dir, "-c", file, "-g", "daemon off;"}
	default:
		t.Fatalf("proxy %q", name)
	}
	if _, err := exec.LookPath(check[0]); err != nil {
		t.Fatalf("the conformance suite runs the shipped %s config: install Debian's %s package (apt-get install haproxy nginx): %v", name, name, err)
	}
	if out, err := exec.Command(check[0], check[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s rejects the rewritten %s: %v\n%s", name, file, err, out)
	}
	p := &confProxy{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), out: &confLog{}}
	p.cmd = exec.Command(run[0], run[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// nginx's master stops its workers on SIGTERM; SIGKILL would
		// orphan them.
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.url + "/conformance-probe")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound { // the node's mux answered
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s: no node reached through it after 30s (last: %v)\n%s", name, p.url, err, p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// confEvent is one event as a client library dispatched it.
type confEvent struct {
	ID, Type, Data string
}

// confSub is one subscription of one client library through one proxy,
// and what it received.
type confSub struct {
	lib, proxy, kind string
	url              string

	mu       sync.Mutex
	got      []confEvent
	connects []time.Time // each request the library made (Go libraries)
	retry    string      // the retry: as the library reported it, "" if not
	ended    string      // set when the library gave up for good
	endedAt  time.Time
}

func (s *confSub) add(e confEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, e)
}

func (s *confSub) connected() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connects = append(s.connects, time.Now())
}

func (s *confSub) setRetry(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retry == "" {
		s.retry = v
	}
}

func (s *confSub) setEnded(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended, s.endedAt = v, time.Now()
}

func (s *confSub) snapshot() (got []confEvent, connects []time.Time, retry, ended string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]confEvent(nil), s.got...), append([]time.Time(nil), s.connects...), s.retry, s.ended
}

// confCounting counts a library's requests: each is a (re)connect.
type confCounting struct {
	sub *confSub
	rt  http.RoundTripper
}

func (c confCounting) RoundTrip(r *http.Request) (*http.Response, error) {
	c.sub.connected()
	return c.rt.RoundTrip(r)
}

// confRunGoLibrary runs s with one of the Go libraries until ctx ends,
// with the library's defaults except the HTTP client (which counts
// connects) and, for r3labs, a backoff that stops with ctx.
func confRunGoLibrary(ctx context.Context, s *confSub) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: confCounting{sub: s, rt: tr}}
	switch s.lib {
	case "tmaxmax/go-sse":
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
		c := &sse.Client{HTTPClient: hc, OnRetry: func(_ error, d time.Duration) {
			s.setRetry(fmt.Sprintf("next retry %d ms", d.Milliseconds()))
		}}
		conn := c.NewConnection(req)
		conn.SubscribeToAll(func(e sse.Event) { s.add(confEvent{ID: e.LastEventID, Type: e.Type, Data: e.Data}) })
		if err := conn.Connect(); err != nil && ctx.Err() == nil {
			s.setEnded(err.Error())
		}
	case "launchdarkly/eventsource":
		req, _ := http.NewRequest(http.MethodGet, s.url, nil)
		st, err := ld.SubscribeWithRequestAndOptions(req, ld.StreamOptionHTTPClient(hc),
			ld.StreamOptionErrorHandler(func(error) ld.StreamErrorHandlerResult { return ld.StreamErrorHandlerResult{} }))
		if err != nil {
			s.setEnded(err.Error())
			return
		}
		go func() {
			<-ctx.Done()
			st.Close()
		}()
		for e := range st.Events {
			if r, ok := e.(interface{ Retry() int64 }); ok && r.Retry() > 0 {
				s.setRetry(fmt.Sprintf("retry %d ms", r.Retry()))
			}
			s.add(confEvent{ID: e.Id(), Type: e.Event(), Data: e.Data()})
		}
	case "r3labs/sse/v2":
		c := r3.NewClient(s.url)
		c.Connection = hc
		c.ReconnectStrategy = backoff.WithContext(backoff.NewExponentialBackOff(), ctx)
		err := c.SubscribeRawWithContext(ctx, func(e *r3.Event) {
			if len(e.Retry) > 0 {
				s.setRetry(fmt.Sprintf("retry %s ms", e.Retry))
			}
			s.add(confEvent{ID: string(e.ID), Type: string(e.Event), Data: string(e.Data)})
		})
		if ctx.Err() == nil {
			s.setEnded(fmt.Sprintf("Subscribe returned %v", err))
		}
	}
}

// confPage is the page the browser's EventSources live in; sub opens one
// (with listeners for the named event types besides message), state
// returns what each received.
const confPage = `<!doctype html><title>conformance</title><script>
window.subs = {}; window.sources = {};
window.sub = function (name, url, types) {
  const s = {events: [], opens: [], errors: []};
  window.subs[name] = s;
  const es = new EventSource(url);
  window.sources[name] = es;
  const rec = e => s.events.push({ID: e.lastEventId, Type: e.type === "message" ? "" : e.type, Data: e.data});
  es.onmessage = rec;
  for (const t of types) es.addEventListener(t, rec);
  es.onopen = () => s.opens.push(Date.now());
  es.onerror = () => s.errors.push(Date.now());
  return true;
};
window.state = function () {
  const out = {};
  for (const [k, v] of Object.entries(window.subs)) out[k] = {events: v.events, opens: v.opens, errors: v.errors, readyState: window.sources[k].readyState};
  return out;
};
</script>`

// confPageState is one EventSource's view, as window.state returns it.
type confPageState struct {
	Events     []confEvent
	Opens      []int64 // ms since the epoch
	Errors     []int64
	ReadyState int
}

// confBrowser is Chromium with the conformance page open.
type confBrowser struct {
	b *e2eBrowser
}

func startConfBrowser(t *testing.T) *confBrowser {
	t.Helper()
	page := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(confPage))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	confServe(t, page, ln)
	b := e2eStartBrowser(t)
	if err := b.navigate(60*time.Second, "http://"+ln.Addr().String()+"/"); err != nil {
		t.Fatalf("open the conformance page: %v", err)
	}
	return &confBrowser{b: b}
}

func confEval[T any](cb *confBrowser, js string) (T, error) {
	ctx, cancel := context.WithTimeout(cb.b.ctx, 20*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](js))
}

func (cb *confBrowser) open(name, url string, types []string) error {
	_, err := confEval[bool](cb, fmt.Sprintf("window.sub(%q, %q, [%s])", name, url, confQuoted(types)))
	return err
}

func (cb *confBrowser) state() (map[string]confPageState, error) {
	return confEval[map[string]confPageState](cb, "window.state()")
}

func confQuoted(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ",")
}
