package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// netHTTPPath runs the package's tests with every HTTP/1.1 stream on the
// net/http path instead of the hijacked one (make test runs both).
var netHTTPPath = os.Getenv("SSE_TEST_NETHTTP") == "1"

// testNode is a node over an in-memory broker behind an httptest server.
type testNode struct {
	*Node
	broker *pubsub.Memory
	srv    *httptest.Server
	reg    *prometheus.Registry
}

type testOpts struct {
	cfg    Config
	hijack bool // hijack HTTP/1.1 streams even in the SSE_TEST_NETHTTP pass
	mem    pubsub.MemoryConfig
	window replay.Config
}

func newTestNode(t testing.TB, o testOpts) *testNode {
	t.Helper()
	b, err := pubsub.NewMemory(o.mem)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	o.cfg.Registerer = reg
	o.cfg.NoHijack = o.cfg.NoHijack || (netHTTPPath && !o.hijack)
	o.cfg.Window = o.window
	n, err := New(o.cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	tn := &testNode{Node: n, broker: b, srv: srv, reg: reg}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.Drain(ctx); err != nil {
			t.Errorf("drain: %v", err)
		}
		srv.CloseClientConnections()
		srv.Close()
		n.Close()
		b.Close()
	})
	return tn
}

func (tn *testNode) publish(t testing.TB, topic, event, data string) pubsub.ID {
	t.Helper()
	id, err := tn.broker.Publish(context.Background(), topic, event, []byte(data))
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return id
}

// event is one parsed SSE event as a browser would see it.
type event struct {
	ID, Event, Data string
}

// sseClient reads one stream with a small parser, line by line, enough to
// check ids and comments; the go-sse library checks payloads separately.
type sseClient struct {
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
	retry  string
	lastID string // from an id-only block
}

func dial(t testing.TB, url string, lastID string) *sseClient {
	t.Helper()
	c, status, body := tryDial(t, url, lastID)
	if c == nil {
		t.Fatalf("GET %s: status %d: %s", url, status, body)
	}
	return c
}

func tryDial(t testing.TB, url string, lastID string) (*sseClient, int, string) {
	t.Helper()
	return tryDialHeader(t, url, lastID, nil)
}

// tryDialHeader is tryDial with extra request headers.
func tryDialHeader(t testing.TB, url string, lastID string, hdr http.Header) (*sseClient, int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode, string(b)
	}
	c := &sseClient{resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(c.close)
	return c, resp.StatusCode, ""
}

func (c *sseClient) close() {
	c.cancel()
	c.resp.Body.Close()
}

// next returns the next event, skipping comments and retry lines.
func (c *sseClient) next(t testing.TB) event {
	t.Helper()
	e, err := c.nextErr()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// nextErr is next for goroutines other than the test's.
func (c *sseClient) nextErr() (event, error) {
	var e event
	var data []string
	seen := false
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return e, fmt.Errorf("read stream: %w (partial event %+v)", err, e)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			// As the SSE spec says: no data, no event (an id-only block
			// only sets the last event ID).
			if seen && data != nil {
				e.Data = strings.Join(data, "\n")
				return e, nil
			}
			if e.ID != "" {
				c.lastID = e.ID
			}
			e, seen = event{}, false
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "":
		case "retry":
			c.retry = v
		case "id":
			e.ID, seen = v, true
		case "event":
			e.Event, seen = v, true
		case "data":
			data, seen = append(data, v), true
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// subscribers returns the streams registered for topic.
func (tn *testNode) subscribers(topic string) []*stream {
	return tn.hub.subscribers(nil, topic)
}

// push offers f to the queue alone (pushAll of one frame) and returns its
// outcome.
func (q *queue) push(f *frame) overflow {
	o := accepted
	q.pushAll([]*frame{f}, func(_ *frame, why overflow) { o = why })
	return o
}
