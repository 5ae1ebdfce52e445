package integration

// Helpers for e2e_test.go: the compose cluster driven through make, docker
// and HAProxy's stats, a redis-cli publisher inside the redis container, the
// page the browser loads (with a same-origin proxy to the load balancer),
// the headless browser, and the exactly-once check.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ssecluster/ssecluster/pubsub"
)

// e2eChromiumPath is Debian's chromium package. The end-to-end test fails, not
// skips, without it: CI installs it.
const e2eChromiumPath = "/usr/bin/chromium"

// e2eRunCmd runs name with args and extra environment, bounded by timeout,
// and returns its combined output.
func e2eRunCmd(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	// A killed make must not leave docker-compose holding the output pipe.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// e2eFreePorts returns n distinct loopback TCP ports that were free a moment
// ago (the usual small race with other programs is accepted).
func e2eFreePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

func e2eRandomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// e2eComposeCluster is docker-compose.yml run under its own project name and
// host ports, through deploy/deploy.mk (which picks `docker compose` or
// docker-compose).
type e2eComposeCluster struct {
	root    string // repository root
	project string
	// Host ports of HAProxy's SSE frontend and stats, node1's admin
	// listener and the optional nginx.
	lbPort, statsPort, adminPort, nginxPort int
}

func (c *e2eComposeCluster) env() []string {
	return []string{
		"COMPOSE_PROJECT=" + c.project,
		"SSECLUSTER_BIND=127.0.0.1",
		"SSECLUSTER_LB_PORT=" + strconv.Itoa(c.lbPort),
		"SSECLUSTER_STATS_PORT=" + strconv.Itoa(c.statsPort),
		"SSECLUSTER_ADMIN_PORT=" + strconv.Itoa(c.adminPort),
		"SSECLUSTER_NGINX_PORT=" + strconv.Itoa(c.nginxPort),
		// deploy.mk's `up` waits on HAProxy's /healthz at SSE_LB_STATS_PORT
		// and prints SSE_LB_PORT: not the SSECLUSTER_ names compose reads.
		"SSE_LB_STATS_PORT=" + strconv.Itoa(c.statsPort),
		"SSE_LB_PORT=" + strconv.Itoa(c.lbPort),
		"UP_TIMEOUT=60",
	}
}

// make runs `make -C root target` with the cluster's environment.
func (c *e2eComposeCluster) make(ctx context.Context, timeout time.Duration, target string) (string, error) {
	return e2eRunCmd(ctx, timeout, c.env(), "make", "-C", c.root, "--no-print-directory", target)
}

// containers returns the IDs of the project's containers for service, or
// for every service when service is "". Compose labels work for both
// docker-compose v1 (project_service_1) and v2 (project-service-1) names.
func (c *e2eComposeCluster) containers(ctx context.Context, service string, all bool) ([]string, error) {
	args := []string{"ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=" + c.project}
	if all {
		args = append(args, "-a")
	}
	if service != "" {
		args = append(args, "--filter", "label=com.docker.compose.service="+service)
	}
	out, err := e2eRunCmd(ctx, 20*time.Second, nil, "docker", args...)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	return strings.Fields(out), nil
}

// container returns the one running container of service.
func (c *e2eComposeCluster) container(ctx context.Context, service string) (string, error) {
	ids, err := c.containers(ctx, service, false)
	if err != nil {
		return "", err
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("service %s of project %s: %d running containers, want 1", service, c.project, len(ids))
	}
	return ids[0], nil
}

// e2eStatsClient reads HAProxy's stats without keeping connections (and
// their goroutines, which goleak would see) open after the test.
var e2eStatsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// e2eServerStat is one backend server's row of HAProxy's stats CSV.
type e2eServerStat struct {
	Name   string // node1..node3
	Status string // UP, DOWN, "UP 1/2", MAINT...
	Cur    int    // current sessions: open streams through this server
}

// up reports whether HAProxy sends new streams to the server.
func (s e2eServerStat) up() bool { return strings.HasPrefix(s.Status, "UP") }

// servers reads the sse_nodes backend's servers from HAProxy's /stats;csv.
func (c *e2eComposeCluster) servers(ctx context.Context) ([]e2eServerStat, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := "http://127.0.0.1:" + strconv.Itoa(c.statsPort) + "/stats;csv"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e2eStatsClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("haproxy stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("haproxy stats %s: %s", u, resp.Status)
	}
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("haproxy stats csv: %w", err)
	}
	if len(rows) == 0 {
		return nil, errors.New("haproxy stats csv: empty")
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.TrimPrefix(name, "# ")] = i
	}
	px, sv, st, cur := col["pxname"], col["svname"], col["status"], col["scur"]
	var out []e2eServerStat
	for _, row := range rows[1:] {
		if len(row) <= max(px, sv, st, cur) || row[px] != "sse_nodes" || row[sv] == "BACKEND" {
			continue
		}
		n, err := strconv.Atoi(row[cur])
		if err != nil {
			return nil, fmt.Errorf("haproxy stats: scur %q of %s: %w", row[cur], row[sv], err)
		}
		out = append(out, e2eServerStat{Name: row[sv], Status: row[st], Cur: n})
	}
	if len(out) == 0 {
		return nil, errors.New("haproxy stats: no sse_nodes servers")
	}
	return out, nil
}

// waitServers polls HAProxy's stats until ok accepts them or timeout.
func (c *e2eComposeCluster) waitServers(ctx context.Context, timeout time.Duration, ok func([]e2eServerStat) bool) ([]e2eServerStat, error) {
	deadline := time.Now().Add(timeout)
	var last []e2eServerStat
	var lastErr error
	for {
		last, lastErr = c.servers(ctx)
		if lastErr == nil && ok(last) {
			return last, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return last, fmt.Errorf("haproxy servers after %v: %v (last error: %v)", timeout, last, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// servingNode waits until exactly one stream is open through HAProxy (the
// browser's: nothing else subscribes) and returns the server carrying it.
func (c *e2eComposeCluster) servingNode(ctx context.Context, timeout time.Duration) (string, error) {
	var name string
	_, err := c.waitServers(ctx, timeout, func(ss []e2eServerStat) bool {
		total := 0
		for _, s := range ss {
			total += s.Cur
			if s.Cur > 0 {
				name = s.Name
			}
		}
		return total == 1
	})
	return name, err
}

// logs returns the last lines of every container of the project.
func (c *e2eComposeCluster) logs(ctx context.Context) string {
	ids, err := c.containers(ctx, "", true)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, id := range ids {
		name, _ := e2eRunCmd(ctx, 10*time.Second, nil, "docker", "inspect", "-f", "{{.Name}} {{.State.Status}} exit={{.State.ExitCode}}", id)
		out, _ := e2eRunCmd(ctx, 10*time.Second, nil, "docker", "logs", "--tail", "30", id)
		fmt.Fprintf(&b, "=== %s%s\n", name, out)
	}
	return b.String()
}

// e2ePublisher XADDs to one topic through a single long-lived redis-cli inside
// the redis container: commands go in on stdin, one reply line (the new
// entry's ID) comes back per command. One process instead of a docker exec
// per event keeps the publish rate steady on a busy machine.
type e2ePublisher struct {
	topic string
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner

	mu   sync.Mutex // serialises commands; guards ids
	ids  []pubsub.ID
	next int // payload of the next event

	loopStop chan struct{} // nil when no loop runs
	loopDone chan error
}

func e2eStartPublisher(ctx context.Context, t *testing.T, container, topic string) *e2ePublisher {
	t.Helper()
	cmd := exec.CommandContext(ctx, "docker", "exec", "-i", container, "redis-cli")
	cmd.WaitDelay = 5 * time.Second
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-cli in %s: %v", container, err)
	}
	p := &e2ePublisher{topic: topic, cmd: cmd, in: in, out: bufio.NewScanner(out), next: 1}
	t.Cleanup(func() {
		p.stopLoop()
		p.in.Close()
		_ = p.cmd.Wait()
	})
	return p
}

// publish adds one event whose data is its sequence number.
func (p *e2ePublisher) publish() (pubsub.ID, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := fmt.Fprintf(p.in, "XADD sse:%s * data %d\n", p.topic, p.next); err != nil {
		return pubsub.ID{}, fmt.Errorf("redis-cli: write XADD: %w", err)
	}
	if !p.out.Scan() {
		return pubsub.ID{}, fmt.Errorf("redis-cli: no reply to XADD %d: %v", p.next, p.out.Err())
	}
	line := strings.TrimSpace(p.out.Text())
	id, err := pubsub.ParseID(line)
	if err != nil {
		return pubsub.ID{}, fmt.Errorf("redis-cli: XADD %d replied %q: %w", p.next, line, err)
	}
	p.next++
	p.ids = append(p.ids, id)
	return id, nil
}

// published returns how many events were added so far.
func (p *e2ePublisher) published() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ids)
}

// startLoop publishes one event every interval, at most limit events, until
// stopLoop.
func (p *e2ePublisher) startLoop(interval time.Duration, limit int) {
	p.loopStop = make(chan struct{})
	p.loopDone = make(chan error, 1)
	go func(stop <-chan struct{}, done chan<- error) {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for range limit {
			if _, err := p.publish(); err != nil {
				done <- err
				return
			}
			select {
			case <-stop:
				done <- nil
				return
			case <-tick.C:
			}
		}
		done <- fmt.Errorf("publisher: hit the limit of %d events", limit)
	}(p.loopStop, p.loopDone)
}

// stopLoop stops the loop, waits for it and returns its error.
func (p *e2ePublisher) stopLoop() error {
	if p.loopStop == nil {
		return nil
	}
	close(p.loopStop)
	err := <-p.loopDone
	p.loopStop, p.loopDone = nil, nil
	return err
}

// e2eStreamEntry is one entry of the topic's stream as XRANGE returns it.
type e2eStreamEntry struct {
	ID   string
	Data string
}

// e2eXrange reads the whole stream with redis-cli inside the redis container:
// the ground truth the page is compared with.
func e2eXrange(ctx context.Context, container, topic string) ([]e2eStreamEntry, error) {
	out, err := e2eRunCmd(ctx, 20*time.Second, nil, "docker", "exec", container, "redis-cli", "--json", "XRANGE", "sse:"+topic, "-", "+")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("XRANGE sse:%s: %w in %q", topic, err, out)
	}
	entries := make([]e2eStreamEntry, 0, len(rows))
	for _, row := range rows {
		var e e2eStreamEntry
		var fields []string
		if len(row) != 2 || json.Unmarshal(row[0], &e.ID) != nil || json.Unmarshal(row[1], &fields) != nil {
			return nil, fmt.Errorf("XRANGE sse:%s: odd row %s", topic, row)
		}
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "data" {
				e.Data = fields[i+1]
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// e2ePageState is how the page's script sees the stream; times are the
// browser's Date.now() in milliseconds (same host clock as the test).
type e2ePageState struct {
	Received []struct {
		ID   string `json:"id"`
		Data string `json:"data"`
		T    int64  `json:"t"`
	} `json:"received"`
	Opens  []int64 `json:"opens"`
	Errors []struct {
		T     int64 `json:"t"`
		State int   `json:"state"`
	} `json:"errors"`
	Gaps       []string `json:"gaps"`
	ReadyState int      `json:"readyState"` // 0 connecting, 1 open, 2 closed (given up)
}

// e2ePageHTML is the test page. Its EventSource asks for "/events" on the page's
// own origin: the node sends no Access-Control-Allow-Origin header, so a page
// on another origin could not read the load balancer's stream. The test's
// server proxies /events to HAProxy, which keeps the browser -> LB -> node
// path and the browser's own reconnects and Last-Event-ID headers intact.
var e2ePageHTML = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>ssecluster e2e</title></head>
<body>
<script>
window.received = [];
window.opens = [];
window.errors = [];
window.gaps = [];
// lastEventId=0 on the first connect: everything the window holds. The
// browser's reconnects send its own Last-Event-ID header, which wins.
const es = new EventSource("/events?topic=" + encodeURIComponent({{.Topic}}) + "&lastEventId=0");
es.onopen = () => window.opens.push(Date.now());
es.onerror = () => window.errors.push({t: Date.now(), state: es.readyState});
es.onmessage = (e) => window.received.push({id: e.lastEventId, data: e.data, t: Date.now()});
es.addEventListener("sse-gap", (e) => window.gaps.push(e.data));
window.sseState = () => ({received: window.received, opens: window.opens,
	errors: window.errors, gaps: window.gaps, readyState: es.readyState});
</script>
</body></html>
`))

// e2ePageServer serves the page at / and proxies /events to the load balancer.
type e2ePageServer struct {
	srv *httptest.Server

	mu        sync.Mutex
	proxyErrs []string // proxy failures (e.g. 502 to the browser)
	proxyLog  bytes.Buffer
}

func e2eStartPageServer(t *testing.T, lbPort int, topic string) *e2ePageServer {
	t.Helper()
	lb := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(lbPort)}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ResponseHeaderTimeout: 15 * time.Second,
	}
	ps := &e2ePageServer{}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(lb) },
		// -1: flush after every write, so each event reaches the browser at once.
		FlushInterval: -1,
		Transport:     tr,
		ErrorLog:      e2eNewLockedLogger(&ps.mu, &ps.proxyLog),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			ps.mu.Lock()
			ps.proxyErrs = append(ps.proxyErrs, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), r.URL, err))
			ps.mu.Unlock()
			http.Error(w, "proxy: "+err.Error(), http.StatusBadGateway)
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = e2ePageHTML.Execute(w, struct{ Topic string }{topic})
	})
	mux.Handle("/events", proxy)
	ps.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		// Streams never end by themselves: cut them, or Close waits forever.
		ps.srv.CloseClientConnections()
		ps.srv.Close()
		tr.CloseIdleConnections()
	})
	return ps
}

func (ps *e2ePageServer) errs() []string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]string(nil), ps.proxyErrs...)
}

// log returns what the proxy logged (body copy errors when a stream is cut).
func (ps *e2ePageServer) log() string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.proxyLog.String()
}

type e2eLockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l e2eLockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func e2eNewLockedLogger(mu *sync.Mutex, w io.Writer) *log.Logger {
	return log.New(e2eLockedWriter{mu, w}, "proxy: ", log.Lmicroseconds)
}

// e2eBrowser is one headless chromium tab.
type e2eBrowser struct {
	ctx context.Context // the tab's
}

// e2eStartBrowser launches chromium headless. Cleanup closes it and waits for
// the process to exit.
func e2eStartBrowser(t *testing.T) *e2eBrowser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(e2eChromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // the test runs as root
		chromedp.DisableGPU,
		chromedp.WSURLReadTimeout(60*time.Second),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for the browser process and removes its profile
	})
	// The first Run starts the browser; its context must carry no timeout
	// (that would stop the browser): WSURLReadTimeout bounds the start.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium (%s): %v", e2eChromiumPath, err)
	}
	return &e2eBrowser{ctx: ctx}
}

func (b *e2eBrowser) navigate(timeout time.Duration, u string) error {
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	return chromedp.Do(ctx, chromedp.Navigate(u))
}

// state reads the page's view of the stream.
func (b *e2eBrowser) state() (e2ePageState, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[e2ePageState](`window.sseState()`))
}

// waitState polls the page until ok accepts its state or timeout.
func (b *e2eBrowser) waitState(timeout time.Duration, ok func(e2ePageState) bool) (e2ePageState, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := b.state()
		if err == nil && ok(st) {
			return st, nil
		}
		if err == nil && st.ReadyState == 2 {
			return st, errors.New("the page's EventSource is closed: the browser gave up reconnecting (a non-200 answer or a network error on connect)")
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("page state not reached after %v: %d events, %d opens, %d errors, readyState %d",
					timeout, len(st.Received), len(st.Opens), len(st.Errors), st.ReadyState)
			}
			return st, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// e2eDelivery compares what the page received with the stream.
type e2eDelivery struct {
	Published, Received, Lost, Duplicated, OutOfOrder, WrongData int
	First                                                        string // first difference, "" when exact
}

func (d e2eDelivery) exact() bool { return d.First == "" }

func (d e2eDelivery) String() string {
	return fmt.Sprintf("published %d, received %d, lost %d, duplicated %d, out of order %d, wrong data %d",
		d.Published, d.Received, d.Lost, d.Duplicated, d.OutOfOrder, d.WrongData)
}

// e2eCompareDelivery checks that st holds every entry of want exactly once, in
// order, with its data.
func e2eCompareDelivery(want []e2eStreamEntry, st e2ePageState) e2eDelivery {
	d := e2eDelivery{Published: len(want), Received: len(st.Received)}
	wantData := make(map[string]string, len(want))
	for _, e := range want {
		wantData[e.ID] = e.Data
	}
	seen := make(map[string]int, len(st.Received))
	var prev pubsub.ID
	for i, r := range st.Received {
		seen[r.ID]++
		if seen[r.ID] > 1 {
			d.Duplicated++
			continue
		}
		data, ok := wantData[r.ID]
		if !ok || data != r.Data {
			d.WrongData++
		}
		id, err := pubsub.ParseID(r.ID)
		if err != nil || (i > 0 && !prev.Less(id)) {
			d.OutOfOrder++
		}
		if err == nil {
			prev = id
		}
	}
	for _, e := range want {
		if seen[e.ID] == 0 {
			d.Lost++
		}
	}
	for i := range max(len(want), len(st.Received)) {
		switch {
		case i >= len(want):
			d.First = fmt.Sprintf("event %d: unexpected %s=%q", i, st.Received[i].ID, st.Received[i].Data)
		case i >= len(st.Received):
			d.First = fmt.Sprintf("event %d: missing %s=%q", i, want[i].ID, want[i].Data)
		case st.Received[i].ID != want[i].ID || st.Received[i].Data != want[i].Data:
			d.First = fmt.Sprintf("event %d: got %s=%q, want %s=%q", i, st.Received[i].ID, st.Received[i].Data, want[i].ID, want[i].Data)
		default:
			continue
		}
		break
	}
	return d
}
