package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// TestE2EBrowserFailover runs the whole product as a user would: the image
// from `make image`, docker-compose.yml from `make up` (Redis, node1..3,
// HAProxy) under its own project name and host ports, a real headless
// Chromium whose EventSource goes through HAProxy, and events published
// with redis-cli inside the redis container. The node serving the browser
// is killed (docker kill), then the next one is stopped gracefully (docker
// stop: SIGTERM, the node drains). Each time the browser's own EventSource
// reconnects through the load balancer with its own Last-Event-ID, and the
// page must end with every event of the stream exactly once, in order.
//
// Needs Docker with redis:7 and haproxy:2.6 (integration/seed-images.sh)
// and Debian's chromium package; it fails, never skips, without them.
func TestE2EBrowserFailover(t *testing.T) {
	if _, err := os.Stat(e2eChromiumPath); err != nil {
		t.Fatalf("the end-to-end test drives a real browser: install Debian's chromium package (apt-get install chromium): %v", err)
	}
	// The whole test, cleanup included, stays under four minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	if out, err := e2eRunCmd(ctx, 20*time.Second, nil, "docker", "version", "--format", "{{.Server.Version}}"); err != nil {
		t.Fatalf("the end-to-end test needs a Docker engine: %v\n%s", err, out)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ports := e2eFreePorts(t, 4)
	c := &e2eComposeCluster{
		root: root,
		// Unique, so two runs on one engine (or a developer's `make up`)
		// never share containers, networks or volumes.
		project: "sseclustere2e" + e2eRandomSuffix(),
		lbPort:  ports[0], statsPort: ports[1], adminPort: ports[2], nginxPort: ports[3],
	}

	// The image under test is the current source, built as users build it.
	began := time.Now()
	if out, err := c.make(ctx, 100*time.Second, "image"); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	size, err := e2eRunCmd(ctx, 10*time.Second, nil, "docker", "image", "inspect", "-f", "{{.Size}}", "ssecluster/ssenode:dev")
	if err != nil {
		t.Fatalf("inspect the image: %v\n%s", err, size)
	}
	imgBytes, _ := strconv.ParseInt(strings.TrimSpace(size), 10, 64)
	t.Logf("make image: %v; ssecluster/ssenode:dev is %.1f MB (%d bytes)", time.Since(began).Round(time.Millisecond), float64(imgBytes)/1e6, imgBytes)

	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if t.Failed() {
			t.Logf("cluster containers and logs:\n%s", c.logs(dctx))
		}
		if out, err := c.make(dctx, 60*time.Second, "down"); err != nil {
			t.Errorf("make down (project %s): %v\n%s", c.project, err, out)
		}
	})

	upAt := time.Now()
	if out, err := c.make(ctx, 90*time.Second, "up"); err != nil {
		t.Fatalf("make up: %v\n%s\n(images redis:7 and haproxy:2.6 come from integration/seed-images.sh)", err, out)
	}
	firstReady := time.Since(upAt)
	if _, err := c.waitServers(ctx, 30*time.Second, func(ss []e2eServerStat) bool {
		up := 0
		for _, s := range ss {
			if s.up() {
				up++
			}
		}
		return up == 3
	}); err != nil {
		t.Fatalf("waiting for HAProxy to see node1..3 ready: %v", err)
	}
	t.Logf("make up: ready (HAProxy /healthz) after %v, all three nodes ready after %v",
		firstReady.Round(time.Millisecond), time.Since(upAt).Round(time.Millisecond))

	redis, err := c.container(ctx, "redis")
	if err != nil {
		t.Fatal(err)
	}
	topic := "e2e-" + e2eRandomSuffix()
	pub := e2eStartPublisher(ctx, t, redis, topic)
	// One event before the browser connects: the page's first connect asks
	// for the whole window (lastEventId=0), so it must receive it too.
	if _, err := pub.publish(); err != nil {
		t.Fatal(err)
	}

	page := e2eStartPageServer(t, c.lbPort, topic)
	br := e2eStartBrowser(t)
	t.Cleanup(func() {
		// Runs before the browser closes.
		if !t.Failed() {
			return
		}
		if st, err := br.state(); err == nil {
			t.Logf("page: %d events, opens at %v, errors %v, gaps %v, readyState %d", len(st.Received), st.Opens, st.Errors, st.Gaps, st.ReadyState)
		}
		t.Logf("proxy errors: %v\nproxy log:\n%s", page.errs(), page.log())
	})
	if err := br.navigate(30*time.Second, page.srv.URL+"/"); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	if _, err := br.waitState(30*time.Second, func(st e2ePageState) bool {
		return len(st.Opens) >= 1 && len(st.Received) >= 1
	}); err != nil {
		t.Fatalf("the browser's first stream: %v", err)
	}

	f := &e2eFailoverRun{t: t, ctx: ctx, c: c, br: br, pub: pub, redis: redis, topic: topic}
	killed := f.run("kill", func(ctx context.Context, container string) error {
		out, err := e2eRunCmd(ctx, 30*time.Second, nil, "docker", "kill", container)
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	stopped := f.run("stop", func(ctx context.Context, container string) error {
		// SIGTERM; the node drains and exits within SSE_SHUTDOWN_TIMEOUT
		// (10s), well before docker's 15s.
		out, err := e2eRunCmd(ctx, 30*time.Second, nil, "docker", "stop", "-t", "15", container)
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		code, err := e2eRunCmd(ctx, 10*time.Second, nil, "docker", "inspect", "-f", "{{.State.ExitCode}}", container)
		if err != nil {
			return fmt.Errorf("%w: %s", err, code)
		}
		if strings.TrimSpace(code) != "0" {
			return fmt.Errorf("the drained node exited with %s, want 0 (a clean drain)", strings.TrimSpace(code))
		}
		return nil
	})
	if killed == stopped {
		t.Errorf("the browser was served by %s again after it was killed", killed)
	}
	if errs := page.errs(); len(errs) > 0 {
		t.Errorf("the test's proxy failed requests (the browser saw a 502): %v", errs)
	}
	t.Logf("whole test before teardown: %v", time.Since(began).Round(time.Millisecond))
}

// e2eFailoverRun takes the node serving the browser away while events keep
// being published, and checks what the page ends with.
type e2eFailoverRun struct {
	t     *testing.T
	ctx   context.Context
	c     *e2eComposeCluster
	br    *e2eBrowser
	pub   *e2ePublisher
	redis string
	topic string
}

// run does one failover named how with act applied to the serving node's
// container, and returns that node's name.
func (f *e2eFailoverRun) run(how string, act func(ctx context.Context, container string) error) string {
	t := f.t
	t.Helper()
	node, err := f.c.servingNode(f.ctx, 15*time.Second)
	if err != nil {
		t.Fatalf("%s: which node serves the browser: %v", how, err)
	}
	id, err := f.c.container(f.ctx, node)
	if err != nil {
		t.Fatalf("%s: %v", how, err)
	}
	before, err := f.br.state()
	if err != nil {
		t.Fatalf("%s: page state: %v", how, err)
	}

	// 20 events a second, before, during and after the failover.
	f.pub.startLoop(50*time.Millisecond, 2000)
	defer func() {
		if err := f.pub.stopLoop(); err != nil {
			t.Errorf("%s: publisher: %v", how, err)
		}
	}()
	if _, err := f.br.waitState(15*time.Second, func(st e2ePageState) bool {
		return len(st.Received) >= len(before.Received)+10
	}); err != nil {
		t.Fatalf("%s: live events before the failover: %v", how, err)
	}

	actAt := time.Now()
	if err := act(f.ctx, id); err != nil {
		t.Fatalf("%s %s: %v", how, node, err)
	}
	actTook := time.Since(actAt)
	st, err := f.br.waitState(30*time.Second, func(st e2ePageState) bool { return len(st.Opens) > len(before.Opens) })
	if err != nil {
		t.Fatalf("%s %s: the browser did not reconnect: %v", how, node, err)
	}
	reopened := time.UnixMilli(st.Opens[len(before.Opens)]).Sub(actAt)

	// Keep publishing for another second of live delivery on the new node.
	target := f.pub.published() + 20
	if _, err := f.br.waitState(20*time.Second, func(st e2ePageState) bool { return len(st.Received) >= target }); err != nil {
		t.Fatalf("%s %s: live events after the reconnect: %v", how, node, err)
	}
	if err := f.pub.stopLoop(); err != nil {
		t.Fatalf("%s: publisher: %v", how, err)
	}
	want, err := e2eXrange(f.ctx, f.redis, f.topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != f.pub.published() {
		t.Errorf("%s: XRANGE has %d entries, redis-cli published %d", how, len(want), f.pub.published())
	}
	st, err = f.br.waitState(20*time.Second, func(st e2ePageState) bool { return len(st.Received) >= len(want) })
	if err != nil {
		t.Errorf("%s: waiting for the page to catch up: %v", how, err)
	}
	// What the reconnect carried: the first event on the new stream, and
	// the events published while the browser had no stream (between its
	// error and its next open), which only the resume can have delivered.
	reopenAt := st.Opens[len(before.Opens)]
	var firstAfter time.Duration
	for _, r := range st.Received {
		if r.T >= reopenAt {
			firstAfter = time.UnixMilli(r.T).Sub(actAt)
			break
		}
	}
	gapFrom := actAt.UnixMilli()
	if len(st.Errors) > len(before.Errors) {
		gapFrom = st.Errors[len(before.Errors)].T
	}
	missed := 0
	for _, e := range want {
		if id, err := pubsub.ParseID(e.ID); err == nil && int64(id.Ms) >= gapFrom && int64(id.Ms) < reopenAt {
			missed++
		}
	}
	now, err := f.c.servingNode(f.ctx, 15*time.Second)
	if err != nil {
		t.Errorf("%s: which node serves the browser now: %v", how, err)
	}
	d := e2eCompareDelivery(want, st)
	t.Logf("%s %s: docker %s took %v; browser reconnected (onopen) %v after it, first event on the new stream %v after it, now on %s; "+
		"%d events published while the browser had no stream; %d EventSource errors so far; %s",
		how, node, how, actTook.Round(time.Millisecond), reopened.Round(time.Millisecond), firstAfter.Round(time.Millisecond),
		now, missed, len(st.Errors), d)
	if !d.exact() {
		t.Errorf("%s %s: the page does not hold every event exactly once in order: %s; %s", how, node, d, d.First)
	}
	if missed == 0 {
		t.Errorf("%s %s: no event was published while the browser was reconnecting, so its resume was not exercised", how, node)
	}
	if len(st.Gaps) > 0 {
		t.Errorf("%s %s: unexpected sse-gap events: %v", how, node, st.Gaps)
	}
	if now == node {
		t.Errorf("%s %s: the browser is still served by %s", how, node, node)
	}
	return node
}
