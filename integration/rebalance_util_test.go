package integration

// Helpers for the rebalancing and membership tests: cmd/ssenode built once
// and run as processes, a host HAProxy in front of them from
// deploy/haproxy.cfg, and reads of the nodes' /metrics and /cluster.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

var ssenodeBuild struct {
	once sync.Once
	path string
	err  error
}

// ssenodeBinary builds cmd/ssenode once per test binary run, next to the
// sseload binary.
func ssenodeBinary(t testing.TB) string {
	t.Helper()
	sseload := chaosSseload(t)
	ssenodeBuild.once.Do(func() {
		bin := filepath.Join(filepath.Dir(sseload), "ssenode")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/ssenode")
		cmd.Dir = ".." // the module's root: tests run in integration/
		if out, err := cmd.CombinedOutput(); err != nil {
			ssenodeBuild.err = fmt.Errorf("go build ./cmd/ssenode: %w\n%s", err, out)
			return
		}
		ssenodeBuild.path = bin
	})
	if ssenodeBuild.err != nil {
		t.Fatal(ssenodeBuild.err)
	}
	return ssenodeBuild.path
}

// procNode is one ssenode process. Its ports and ID survive a restart.
type procNode struct {
	id         string
	pub, admin int
	env        []string
	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{}
	out        bytes.Buffer // the process's log, guarded by mu
}

// startProcNode runs ssenode with Redis at redisURL and the keys under
// prefix, plus env; it returns once /readyz answers 200. The process is
// stopped (SIGTERM, then SIGKILL) at cleanup.
func startProcNode(t *testing.T, redisURL, prefix, id string, env ...string) *procNode {
	t.Helper()
	p := newProcNode(t, redisURL, prefix, id, env...)
	p.start(t)
	return p
}

// newProcNode is startProcNode without the start: its ports are chosen,
// so a load balancer can name it before it runs.
func newProcNode(t *testing.T, redisURL, prefix, id string, env ...string) *procNode {
	t.Helper()
	ports := e2eFreePorts(t, 2)
	p := &procNode{id: id, pub: ports[0], admin: ports[1]}
	p.env = append([]string{
		"SSE_LISTEN=127.0.0.1:" + strconv.Itoa(p.pub),
		"SSE_ADMIN_LISTEN=127.0.0.1:" + strconv.Itoa(p.admin),
		"SSE_REDIS_URL=" + redisURL,
		"SSE_STREAM_PREFIX=" + prefix,
		"SSE_NODE_ID=" + id,
		"SSE_CLUSTER_REFRESH=500ms",
		"SSE_CLUSTER_TTL=2s",
		"SSE_LOG_LEVEL=warn",
		"SSE_SHUTDOWN_TIMEOUT=5s",
	}, env...)
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *procNode) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(ssenodeBinary(t))
	cmd.Env = append(os.Environ(), p.env...)
	p.mu.Lock()
	cmd.Stdout, cmd.Stderr = &lockedBuffer{mu: &p.mu, b: &p.out}, &lockedBuffer{mu: &p.mu, b: &p.out}
	p.mu.Unlock()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.id, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for p.readyz() != http.StatusOK {
		select {
		case <-done:
			t.Fatalf("%s exited at start:\n%s", p.id, p.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 20s:\n%s", p.id, p.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (p *procNode) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// signal sends sig and waits (at most d) for the process to exit.
func (p *procNode) signal(sig syscall.Signal, d time.Duration) bool {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// kill is SIGKILL: no drain, no deregistration.
func (p *procNode) kill(t *testing.T) {
	t.Helper()
	if !p.signal(syscall.SIGKILL, 10*time.Second) {
		t.Fatalf("%s did not die on SIGKILL", p.id)
	}
}

func (p *procNode) stop(t *testing.T) {
	if !p.signal(syscall.SIGTERM, 15*time.Second) {
		t.Errorf("%s still running 15s after SIGTERM; killing it", p.id)
		p.signal(syscall.SIGKILL, 10*time.Second)
	}
}

func (p *procNode) adminURL() string { return "http://127.0.0.1:" + strconv.Itoa(p.admin) }
func (p *procNode) addr() string     { return "127.0.0.1:" + strconv.Itoa(p.pub) }

func (p *procNode) readyz() int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(p.adminURL() + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metric reads one series of the node's /metrics, e.g.
// `sse_rebalance_shed_total{reason="rebalance"}`; -1 when the node does not
// answer or has no such series.
func (p *procNode) metric(series string) float64 {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(p.adminURL() + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}

func (p *procNode) streams() int { return int(p.metric("sse_connections")) }

// procClusterView is the part of GET /cluster the tests read.
type procClusterView struct {
	Self    string          `json:"self"`
	Members []pubsub.Member `json:"members"`
}

func (p *procNode) cluster() (procClusterView, error) {
	var v procClusterView
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(p.adminURL() + "/cluster")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /cluster: %s", resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

func (v procClusterView) has(id string) bool {
	for _, m := range v.Members {
		if m.ID == id {
			return true
		}
	}
	return false
}

// hostHAProxy is deploy/haproxy.cfg run as a host process, its backends
// rewritten to local node processes.
type hostHAProxy struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	out  bytes.Buffer
}

var (
	haproxyServerLine = regexp.MustCompile(`(?m)^\s*server node\d .*\n`)
	haproxyResolvers  = regexp.MustCompile(`(?ms)^resolvers docker\n.*?\n\n`)
)

// startHostHAProxy runs HAProxy with deploy/haproxy.cfg in front of nodes,
// with balance set to the given algorithm ("" keeps the shipped one). A
// node that is not running yet is marked down by the health checks and
// taken in when it comes up.
func startHostHAProxy(t *testing.T, balance string, nodes ...*procNode) *hostHAProxy {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatalf("haproxy is not installed (apt-get install haproxy): %v", err)
	}
	cfg, err := os.ReadFile("../deploy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	ports := e2eFreePorts(t, 2)
	s := string(cfg)
	s = haproxyResolvers.ReplaceAllString(s, "")
	s = strings.ReplaceAll(s, " resolvers docker init-addr last,libc,none", "")
	s = strings.Replace(s, "bind :8080", "bind 127.0.0.1:"+strconv.Itoa(ports[0]), 1)
	s = strings.Replace(s, "bind :8404", "bind 127.0.0.1:"+strconv.Itoa(ports[1]), 1)
	s = strings.Replace(s, "log stdout format raw local0 info", "log stdout format raw local0 warning", 1)
	if balance != "" {
		s = regexp.MustCompile(`balance \w+`).ReplaceAllString(s, "balance "+balance)
	}
	var servers strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&servers, "    server %s %s port %d\n", n.id, n.addr(), n.admin)
	}
	first := true
	s = haproxyServerLine.ReplaceAllStringFunc(s, func(string) string {
		if first {
			first = false
			return servers.String()
		}
		return ""
	})
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, s)
	}
	h := &hostHAProxy{addr: "127.0.0.1:" + strconv.Itoa(ports[0]), done: make(chan struct{})}
	h.cmd = exec.Command("haproxy", "-db", "-f", path)
	h.cmd.Stdout, h.cmd.Stderr = &h.out, &h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		<-h.done
	})
	waitListening(t, h.addr)
	return h
}

var nginxServerLine = regexp.MustCompile(`(?m)^\s*server node\d:8080 .*\n`)

// startHostNginx runs nginx with deploy/nginx.conf in front of nodes, with
// least_conn (and a shared zone, so that the workers count connections
// together), and returns its address. pending is a node that does not run
// yet: it gets max_fails=0, as if a reload added it when it started.
// (nginx marks a node that refused a connection failed for fail_timeout,
// then lets one request through, and counts the node healthy again only
// when a request to it completes: an SSE stream does not, so a node once
// refused would get one stream per fail_timeout.)
func startHostNginx(t *testing.T, nodes []*procNode, pending *procNode) string {
	t.Helper()
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatalf("nginx is not installed (apt-get install nginx): %v", err)
	}
	cfg, err := os.ReadFile("../deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := e2eFreePorts(t, 1)[0]
	s := string(cfg)
	s = strings.Replace(s, "listen 80;", "listen 127.0.0.1:"+strconv.Itoa(port)+";", 1)
	s = strings.Replace(s, "pid /run/nginx.pid;", "pid "+filepath.Join(dir, "nginx.pid")+";", 1)
	servers := "        least_conn;\n        zone sse_nodes 256k;\n"
	for _, n := range nodes {
		servers += fmt.Sprintf("        server %s max_fails=1 fail_timeout=5s;\n", n.addr())
	}
	servers += fmt.Sprintf("        server %s max_fails=0;\n", pending.addr())
	first := true
	s = nginxServerLine.ReplaceAllStringFunc(s, func(string) string {
		if first {
			first = false
			return servers
		}
		return ""
	})
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", dir, "-c", path, "-e", "stderr", "-g", "daemon off;"}
	if out, err := exec.Command("nginx", append([]string{"-t"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, s)
	}
	cmd := exec.Command("nginx", args...)
	var out lockedBuffer
	out.mu, out.b = new(sync.Mutex), new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if t.Failed() {
			out.mu.Lock()
			t.Logf("nginx log:\n%s", out.b.String())
			out.mu.Unlock()
		}
		_ = cmd.Process.Signal(syscall.SIGTERM) // fast shutdown; workers follow the master
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitListening(t, addr)
	return addr
}

// waitListening waits until addr accepts TCP connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialTCP(context.Background(), addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
