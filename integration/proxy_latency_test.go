package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/integration/redistest"
)

// Proxy latency: how long an event takes from XADD to a subscriber, straight
// from a node and through the shipped deploy/nginx.conf and
// deploy/haproxy.cfg, each run as a host process (apt's nginx and haproxy)
// on a copy of the file whose only edits are addresses.
const (
	latencyEvents  = 20
	latencySpacing = 100 * time.Millisecond
	// A functional bound, generous for a loaded 2-core machine: a proxy
	// that holds small writes (HAProxy without option http-no-delay keeps
	// each event ~200 ms in the kernel) fails it on every event.
	latencyBound = 150 * time.Millisecond
)

// TestProxyLatency publishes 20 events spaced 100 ms to two nodes on one
// Redis and measures XADD-to-client latency per route. It logs p50/p99 for
// each route (the figure to compare) and asserts that every event arrives,
// once and in order, with p99 under latencyBound.
func TestProxyLatency(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	nodes := []*clusterNode{
		startNode(t, srv, prefix, "n1", nil),
		startNode(t, srv, prefix, "n2", nil),
	}
	routes := []struct{ name, addr string }{
		{"direct", nodes[0].addr},
		{"nginx", startNginx(t, nodes)},
		{"haproxy", startHAProxy(t, nodes)},
	}
	for _, r := range routes {
		t.Run(r.name, func(t *testing.T) {
			lat := measureLatency(t, srv, prefix, "lat-"+r.name, r.addr)
			p50, p99 := percentile(lat, 50), percentile(lat, 99)
			t.Logf("proxy latency %s: events=%d spacing=%v p50=%.1fms p99=%.1fms max=%.1fms",
				r.name, len(lat), latencySpacing, ms(p50), ms(p99), ms(slices.Max(lat)))
			if p99 >= latencyBound {
				t.Errorf("%s: p99 XADD-to-client %v, want < %v (all: %v)", r.name, p99, latencyBound, lat)
			}
		})
	}
}

// measureLatency subscribes to topic through addr, publishes latencyEvents
// entries spaced latencySpacing with raw XADDs, and returns each one's
// XADD-to-client latency. It fails the test unless all arrive, in order.
func measureLatency(t *testing.T, srv *redistest.Server, prefix, topic, addr string) []time.Duration {
	key := prefix + topic
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := openSSE(ctx, addr, eventsPath(topic), "")
	if err != nil {
		t.Fatalf("subscribe through %s: %v", addr, err)
	}
	type arrival struct {
		data string
		at   time.Time
	}
	got := make(chan arrival, latencyEvents)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(got)
		for range latencyEvents {
			e, err := c.next()
			if err != nil {
				return // the test reports what is missing
			}
			got <- arrival{e.Data, time.Now()}
		}
	})
	defer wg.Wait()
	defer c.close()

	sent := make([]time.Time, latencyEvents)
	tick := time.NewTicker(latencySpacing)
	defer tick.Stop()
	for i := range sent {
		sent[i] = time.Now()
		srv.MustDo(t, "XADD", key, "*", "data", strconv.Itoa(i))
		<-tick.C
	}
	lat := make([]time.Duration, 0, latencyEvents)
	timeout := time.After(30 * time.Second)
	for len(lat) < latencyEvents {
		select {
		case a, ok := <-got:
			if !ok {
				t.Fatalf("stream through %s ended after %d of %d events", addr, len(lat), latencyEvents)
			}
			if a.data != strconv.Itoa(len(lat)) {
				t.Fatalf("event %d through %s: data %q, want %d", len(lat), addr, a.data, len(lat))
			}
			lat = append(lat, a.at.Sub(sent[len(lat)]))
		case <-timeout:
			t.Fatalf("%d of %d events arrived through %s within 30s", len(lat), latencyEvents, addr)
		}
	}
	return lat
}

// percentile returns the nearest-rank p-th percentile of d.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Sorted(slices.Values(d))
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// writeProxyConfig copies deploy/NAME into a temporary directory with
// each (pattern, replacement) applied; every pattern must match, so an edit
// of the shipped file that moves a line fails here instead of testing
// something else.
func writeProxyConfig(t *testing.T, name string, edits ...string) (dir, path string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for i := 0; i+1 < len(edits); i += 2 {
		re := regexp.MustCompile(edits[i])
		if !re.MatchString(conf) {
			t.Fatalf("deploy/%s: no line matches %q", name, edits[i])
		}
		conf = re.ReplaceAllString(conf, edits[i+1])
	}
	dir = t.TempDir()
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// startProxy runs the host binary name (from the Debian package pkg) in
// the foreground until the test ends (SIGTERM, then a kill after 10 s),
// logging its output, and waits until ready answers true.
func startProxy(t *testing.T, ready func() bool, pkg, name string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH: install it (apt-get install %s)", name, pkg)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !ready() {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("%s exited at start: %v", name, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30s", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startHAProxy runs deploy/haproxy.cfg in front of nodes and returns its
// SSE address. Edits: the listeners move to free loopback ports; node1..N
// become the nodes' addresses, each with its admin listener as the health
// check port (a server line's port overrides default-server's 9090), and
// server lines beyond len(nodes) go.
func startHAProxy(t *testing.T, nodes []*clusterNode) string {
	ports := e2eFreePorts(t, 2)
	sse, stats := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	edits := []string{
		`(?m)^(\s*)bind :8080$`, "${1}bind " + sse,
		`(?m)^(\s*)bind :8404$`, "${1}bind " + stats,
	}
	edits = append(edits, serverEdits(t, nodes, `(?m)^(\s*)server node%[1]d node%[1]d:8080$`, func(cn *clusterNode) string {
		admin := httptest.NewServer(cn.admin)
		t.Cleanup(admin.Close)
		return fmt.Sprintf("${1}server %s %s port %d", cn.name, cn.addr, admin.Listener.Addr().(*net.TCPAddr).Port)
	})...)
	_, path := writeProxyConfig(t, "haproxy.cfg", edits...)
	// Ready once the stats frontend's monitor-uri sees every node up.
	startProxy(t, func() bool { return haproxyNodesUp(stats) == len(nodes) }, "haproxy", "haproxy", "-W", "-db", "-f", path)
	return sse
}

// haproxyNodesUp counts the servers the stats page's CSV shows UP.
func haproxyNodesUp(stats string) int {
	resp, err := http.Get("http://" + stats + "/stats;csv")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	up := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 17 && f[0] == "sse_nodes" && f[1] != "BACKEND" && strings.HasPrefix(f[17], "UP") {
			up++
		}
	}
	return up
}

// startNginx runs deploy/nginx.conf in front of nodes and returns its
// address. Edits: `listen 80` moves to a free loopback port, the pid file
// to a temporary directory, node1..N:8080 become the nodes' addresses and
// upstream servers beyond len(nodes) go.
func startNginx(t *testing.T, nodes []*clusterNode) string {
	addr := fmt.Sprintf("127.0.0.1:%d", e2eFreePorts(t, 1)[0])
	dir := t.TempDir()
	edits := []string{
		`(?m)^(\s*)listen 80;$`, "${1}listen " + addr + ";",
		`(?m)^pid .*;$`, "pid " + filepath.Join(dir, "nginx.pid") + ";",
	}
	edits = append(edits, serverEdits(t, nodes, `(?m)^(\s*)server node%d:8080( .*)?;$`, func(cn *clusterNode) string {
		return "${1}server " + cn.addr + "${2};"
	})...)
	_, path := writeProxyConfig(t, "nginx.conf", edits...)
	startProxy(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "nginx-light", "nginx", "-e", "stderr", "-p", dir, "-c", path, "-g", "daemon off;")
	return addr
}

// serverEdits returns the (pattern, replacement) pairs that point the
// shipped config's node1..node3 at nodes and drop the servers left over.
// pattern names the node number as %[1]d.
func serverEdits(t *testing.T, nodes []*clusterNode, pattern string, server func(*clusterNode) string) []string {
	t.Helper()
	const shipped = 3 // node1..node3, as docker-compose.yml names them
	if len(nodes) > shipped {
		t.Fatalf("the shipped configs name %d nodes, not %d", shipped, len(nodes))
	}
	var edits []string
	for i := 1; i <= shipped; i++ {
		repl := ""
		if i <= len(nodes) {
			repl = server(nodes[i-1])
		}
		edits = append(edits, fmt.Sprintf(pattern, i), repl)
	}
	return edits
}
