package integration

// Helpers for the chaos suite: the sseload checker built once and run as a
// subprocess, its JSON report, and an in-process TCP proxy that can cut a
// node off from Redis.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/integration/redistest"
)

// chaosBuild is the sseload binary, built once per test binary run.
var chaosBuild struct {
	once sync.Once
	path string
	err  error
}

// chaosSseload returns the path of an sseload binary built from this
// module's cmd/sseload. It is built once and left in a temporary directory
// (there is no hook after the last test that could remove it).
func chaosSseload(t testing.TB) string {
	t.Helper()
	chaosBuild.once.Do(func() {
		root := ".."
		if out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output(); err == nil {
			if d := strings.TrimSpace(string(out)); d != "" {
				root = d
			}
		}
		dir, err := os.MkdirTemp("", "ssechaos-")
		if err != nil {
			chaosBuild.err = err
			return
		}
		bin := filepath.Join(dir, "sseload")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/sseload")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			chaosBuild.err = fmt.Errorf("go build ./cmd/sseload in %s: %w\n%s", root, err, out)
			return
		}
		chaosBuild.path = bin
	})
	if chaosBuild.err != nil {
		t.Fatal(chaosBuild.err)
	}
	return chaosBuild.path
}

// chaosReport is the part of sseload's JSON report the suite reads.
type chaosReport struct {
	Connections struct {
		Clients        int   `json:"clients"`
		SlowClients    int   `json:"slow_clients"`
		NeverConnected int   `json:"clients_never_connected"`
		GaveUp         int   `json:"clients_gave_up"`
		Reconnects     int64 `json:"reconnects"`
		Disconnects    int64 `json:"disconnects"`
		OpenAtEnd      int64 `json:"open_at_end"`
	} `json:"connections"`
	Published struct {
		Events int64 `json:"events"`
		Errors int64 `json:"errors"`
	} `json:"published"`
	Deliveries int64 `json:"deliveries"`
	Check      struct {
		Lost       int64    `json:"lost"`
		Duplicated int64    `json:"duplicated"`
		OutOfOrder int64    `json:"out_of_order"`
		IDMismatch int64    `json:"id_mismatch"`
		Unverified int64    `json:"unverified"`
		Gaps       int64    `json:"gaps"`
		GapLost    int64    `json:"gap_lost"`
		Passed     bool     `json:"passed"`
		Failures   []string `json:"failures"`
	} `json:"check"`
	DrainComplete bool    `json:"drain_complete"`
	DrainSeconds  float64 `json:"drain_s"`
	Interrupted   bool    `json:"interrupted"`
	Resume        struct {
		Count int     `json:"count"`
		P50   float64 `json:"p50_ms"`
		Max   float64 `json:"max_ms"`
	} `json:"resume"`
}

// chaosLoadConfig is one sseload run: steady publishing with XADD to Redis
// into prefix, clients spread over the nodes' URLs.
type chaosLoadConfig struct {
	nodes    []*clusterNode
	redis    string // redis:// URL the publisher writes to
	prefix   string
	clients  int
	topics   []string
	rate     float64 // per topic
	duration time.Duration
	extra    []string // more flags
}

// chaosLoad is a running sseload.
type chaosLoad struct {
	cmd    *exec.Cmd
	out    string
	stderr bytes.Buffer
	done   chan struct{}
	err    error // cmd.Wait's, after done
}

// chaosStartLoad starts sseload with -check and a JSON report. The process
// is killed at cleanup if the test has not waited for it.
func chaosStartLoad(t testing.TB, c chaosLoadConfig) *chaosLoad {
	t.Helper()
	bin := chaosSseload(t)
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = "http://" + n.addr
	}
	l := &chaosLoad{out: filepath.Join(t.TempDir(), "report.json"), done: make(chan struct{})}
	args := []string{
		"-url", strings.Join(urls, ","),
		"-redis", c.redis,
		"-prefix", c.prefix,
		"-n", strconv.Itoa(c.clients),
		"-topics", strings.Join(c.topics, ","),
		"-rate", strconv.FormatFloat(c.rate, 'f', -1, 64),
		"-duration", c.duration.String(),
		"-ramp", "2000",
		"-size", "100",
		"-drain", "30s",
		"-connect-timeout", "15s",
		"-progress=false",
		"-check",
		"-out", l.out,
	}
	args = append(args, c.extra...)
	l.cmd = exec.Command(bin, args...)
	l.cmd.Stderr = &l.stderr
	l.cmd.Stdout = io.Discard
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start sseload: %v", err)
	}
	t.Logf("sseload %s", strings.Join(args, " "))
	go func() {
		l.err = l.cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() {
		select {
		case <-l.done:
		default:
			_ = l.cmd.Process.Kill()
			<-l.done
		}
	})
	return l
}

// running reports whether sseload has not exited yet.
func (l *chaosLoad) running() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// wait waits (at most d) for sseload to exit and returns its report and
// exit code (1: the check failed).
func (l *chaosLoad) wait(t testing.TB, d time.Duration) (chaosReport, int) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(d):
		_ = l.cmd.Process.Kill()
		<-l.done
		t.Fatalf("sseload still running after %v; stderr:\n%s", d, l.stderr.String())
	}
	code := 0
	if l.err != nil {
		var ee *exec.ExitError
		if !errors.As(l.err, &ee) {
			t.Fatalf("sseload: %v", l.err)
		}
		code = ee.ExitCode()
	}
	if code > 1 {
		t.Fatalf("sseload exit %d; stderr:\n%s", code, l.stderr.String())
	}
	b, err := os.ReadFile(l.out)
	if err != nil {
		t.Fatalf("sseload report: %v; stderr:\n%s", err, l.stderr.String())
	}
	var rep chaosReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("sseload report: %v", err)
	}
	return rep, code
}

// chaosCheck logs the run's counts and fails the test on any lost,
// duplicated, out-of-order or mismatched event, a gap, a client that never
// connected or an incomplete drain. pubErrorsOK accepts failed publishes
// (Redis was down or stalled: those events do not exist and are not
// expected); anything else that failed sseload's check fails the test.
func chaosCheck(t testing.TB, name string, rep chaosReport, code int, pubErrorsOK bool) {
	t.Helper()
	ch := rep.Check
	t.Logf("CHAOS %s: published=%d delivered=%d lost=%d duplicated=%d out_of_order=%d id_mismatch=%d gaps=%d publish_errors=%d clients=%d slow=%d reconnects=%d resume_p50=%.0fms resume_max=%.0fms",
		name, rep.Published.Events, rep.Deliveries, ch.Lost, ch.Duplicated, ch.OutOfOrder, ch.IDMismatch, ch.Gaps,
		rep.Published.Errors, rep.Connections.Clients, rep.Connections.SlowClients, rep.Connections.Reconnects, rep.Resume.P50, rep.Resume.Max)
	if ch.Lost != 0 || ch.Duplicated != 0 || ch.OutOfOrder != 0 || ch.IDMismatch != 0 || ch.Gaps != 0 {
		t.Errorf("%s: lost=%d duplicated=%d out_of_order=%d id_mismatch=%d gaps=%d (gap_lost=%d), want all 0",
			name, ch.Lost, ch.Duplicated, ch.OutOfOrder, ch.IDMismatch, ch.Gaps, ch.GapLost)
	}
	if rep.Published.Events == 0 || rep.Deliveries == 0 {
		t.Errorf("%s: published %d, delivered %d: nothing was exercised", name, rep.Published.Events, rep.Deliveries)
	}
	if !rep.DrainComplete {
		t.Errorf("%s: not every client caught up within the drain", name)
	}
	if rep.Connections.NeverConnected != 0 || rep.Interrupted {
		t.Errorf("%s: %d clients never connected, interrupted %v", name, rep.Connections.NeverConnected, rep.Interrupted)
	}
	if !pubErrorsOK && rep.Published.Errors != 0 {
		t.Errorf("%s: %d publish errors", name, rep.Published.Errors)
	}
	var other []string
	for _, f := range ch.Failures {
		if pubErrorsOK && strings.HasPrefix(f, "publish_errors=") {
			continue
		}
		other = append(other, f)
	}
	if len(other) > 0 {
		t.Errorf("%s: sseload check failed (exit %d): %q", name, code, other)
	} else if code != 0 && !pubErrorsOK {
		t.Errorf("%s: sseload exit %d with no failure listed", name, code)
	}
}

// chaosWaitPublished waits until the stream key holds at least n entries,
// that is until sseload is publishing.
func chaosWaitPublished(t testing.TB, srv *redistest.Server, key string, n int64, l *chaosLoad) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := srv.Do(t, "XLEN", key)
		if err == nil {
			if got, _ := v.(int64); got >= n {
				return
			}
		}
		if !l.running() {
			t.Fatalf("sseload exited before %s had %d entries; stderr:\n%s", key, n, l.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d entries after 30s (%v, %v)", key, n, v, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chaosWaitIdle waits until no node holds a stream.
func chaosWaitIdle(t testing.TB, nodes []*clusterNode, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, n := range nodes {
		for n.n.Connections() != 0 {
			if time.Now().After(deadline) {
				t.Errorf("node %s: %d streams still open %v after the clients left", n.name, n.n.Connections(), d)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// chaosProxy is a TCP proxy in front of Redis for one node's broker. It can
// partition: every open connection is reset and new ones are accepted and
// reset at once, until heal.
type chaosProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	parted bool
	closed bool

	wg sync.WaitGroup
}

// chaosStartProxy listens on loopback and forwards to target; it is closed
// at cleanup.
func chaosStartProxy(t testing.TB, target string) *chaosProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &chaosProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *chaosProxy) Addr() string { return p.ln.Addr().String() }

func (p *chaosProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.parted || p.closed
		p.mu.Unlock()
		if refuse {
			chaosReset(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve dials the target for c and copies both ways until either side
// ends, then closes both.
func (p *chaosProxy) serve(c net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: 5 * time.Second}
	up, err := d.Dial("tcp", p.target)
	if err != nil {
		chaosReset(c)
		return
	}
	p.mu.Lock()
	if p.parted || p.closed {
		p.mu.Unlock()
		chaosReset(c)
		chaosReset(up)
		return
	}
	p.conns[c] = struct{}{}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// partition resets every proxied connection and refuses new ones.
func (p *chaosProxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parted = true
	for c := range p.conns {
		chaosReset(c)
	}
}

// heal lets new connections through again.
func (p *chaosProxy) heal() {
	p.mu.Lock()
	p.parted = false
	p.mu.Unlock()
}

func (p *chaosProxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		chaosReset(c)
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

// chaosReset closes c with SO_LINGER 0, so the peer sees a reset.
func chaosReset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// chaosRSTClients opens SSE streams on the nodes' addresses in turn and
// resets each after a short hold (some before the response, some
// mid-stream), until ctx ends or max streams were tried. It returns the
// number of resets and how many of them came after the node had answered
// 200 (an open stream).
func chaosRSTClients(ctx context.Context, addrs []string, path string, max int) (n, open int) {
	buf := make([]byte, 4096)
	for i := 0; i < max && ctx.Err() == nil; i++ {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := d.DialContext(ctx, "tcp", addrs[i%len(addrs)])
		if err != nil {
			pause(ctx, 20*time.Millisecond)
			continue
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", path)
		if i%4 != 0 { // most wait for the stream to open and carry events
			_ = c.SetReadDeadline(time.Now().Add(time.Duration(50+(i*37)%250) * time.Millisecond))
			first := true
			for {
				k, err := c.Read(buf)
				if first && k > 0 {
					first = false
					if bytes.HasPrefix(buf[:k], []byte("HTTP/1.1 200 ")) {
						open++
					}
				}
				if err != nil {
					break
				}
			}
		}
		chaosReset(c)
		n++
	}
	return n, open
}
