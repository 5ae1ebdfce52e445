package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestPlanExcess(t *testing.T) {
	ready := func(id string, streams int) pubsub.Member {
		return pubsub.Member{ID: id, Streams: streams, Ready: true}
	}
	tests := []struct {
		name      string
		view      []pubsub.Member
		p         plan
		want      int
		wantShare float64
	}{
		{"a new node: shed down to the share", []pubsub.Member{ready("a", 1000), ready("b", 1000), ready("c", 1000), ready("d", 0)},
			plan{self: "a", mine: 1000}, 250, 750},
		{"balanced", []pubsub.Member{ready("a", 750), ready("b", 750), ready("c", 750), ready("d", 750)},
			plan{self: "a", mine: 750}, 0, 750},
		{"within tolerance, nobody far under", []pubsub.Member{ready("a", 800), ready("b", 700)},
			plan{self: "a", mine: 800}, 0, 750},
		{"within tolerance but a node far under", []pubsub.Member{ready("a", 820), ready("b", 820), ready("c", 820), ready("d", 540)},
			plan{self: "a", mine: 820}, 70, 750},
		{"the live count is used for this node", []pubsub.Member{ready("a", 1000), ready("b", 0)},
			plan{self: "a", mine: 600}, 300, 300},
		{"what is moving fills the deficit first", []pubsub.Member{ready("a", 1000), ready("b", 1000), ready("c", 1000), ready("d", 0)},
			plan{self: "a", mine: 900, moving: 100}, 150, 750},
		{"each node sheds its own excess", []pubsub.Member{ready("a", 1000), ready("b", 1000), ready("c", 1000), {ID: "d", Streams: 700, Moving: 0, Ready: true}},
			plan{self: "a", mine: 1000}, 75, 925},
		{"another node draining", []pubsub.Member{ready("a", 1000), {ID: "b", Streams: 0, Ready: true, Draining: true}},
			plan{self: "a", mine: 1000}, 0, 500},
		{"another node not ready", []pubsub.Member{ready("a", 1000), {ID: "b"}},
			plan{self: "a", mine: 1000}, 0, 500},
		{"stale view", []pubsub.Member{ready("a", 1000), ready("b", 0)},
			plan{self: "a", mine: 1000, stale: true}, 0, 500},
		{"this node not in the view", []pubsub.Member{ready("b", 0), ready("c", 1000)},
			plan{self: "a", mine: 1000}, 0, 0},
		{"below its share", []pubsub.Member{ready("a", 100), ready("b", 1000)},
			plan{self: "a", mine: 100}, 0, 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.tolerance = DefaultRebalanceTolerance
			got, share := tt.p.excess(tt.view)
			if got != tt.want || share != tt.wantShare {
				t.Errorf("excess = %d, share %v; want %d, share %v", got, share, tt.want, tt.wantShare)
			}
		})
	}
}

// fakeMembership is a view set by the test, fresh unless the test sets
// when it was read (at).
type fakeMembership struct {
	mu   sync.Mutex
	view []pubsub.Member
	at   time.Time
}

func (f *fakeMembership) ID() string             { return "self" }
func (f *fakeMembership) Refresh() time.Duration { return 100 * time.Millisecond }
func (f *fakeMembership) TTL() time.Duration     { return 300 * time.Millisecond }

func (f *fakeMembership) View() ([]pubsub.Member, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.at.IsZero() {
		return f.view, f.at, nil
	}
	return f.view, time.Now(), nil
}

func (f *fakeMembership) List(context.Context) ([]pubsub.Member, error) {
	v, _, err := f.View()
	return v, err
}

func (f *fakeMembership) set(view ...pubsub.Member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.view = view
}

func startCluster(t *testing.T, tn *testNode, cfg ClusterConfig, m Membership) *Cluster {
	t.Helper()
	c, err := NewCluster(tn.Node, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// shedResult is what a client saw of its stream's end.
type shedResult struct {
	retries []string // the values of its retry: lines, in order
	err     error
}

// openStreams opens k streams and returns a channel that receives how
// each of them ended.
func openStreams(t *testing.T, tn *testNode, k int) chan shedResult {
	t.Helper()
	out := make(chan shedResult, k)
	for range k {
		c := dial(t, tn.srv.URL+"/events?topic=t", "")
		go func() {
			var r shedResult
			for {
				line, err := c.r.ReadString('\n')
				if err != nil {
					r.err = err
					out <- r
					return
				}
				if v, ok := strings.CutPrefix(line, "retry: "); ok {
					r.retries = append(r.retries, strings.TrimSpace(v))
				}
			}
		}()
	}
	eventually(t, 5*time.Second, "streams open", func() bool { return tn.Connections() == k })
	return out
}

// Streams are shed on every driver: this test runs on the hijacked path and,
// in the SSE_TEST_NETHTTP pass, on the net/http one (as HTTP/2 and TLS).
func TestClusterShedsExcess(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{Retry: 500 * time.Millisecond}})
	ends := openStreams(t, tn, 10)
	// One event, so that every stream has had its jittered retry: (it
	// rides a stream's first event).
	tn.publish(t, "t", "", "x")
	m := &fakeMembership{}
	m.set(pubsub.Member{ID: "self", Streams: 10, Ready: true}, pubsub.Member{ID: "other", Ready: true})
	c := startCluster(t, tn, ClusterConfig{RebalanceRate: 100}, m)

	eventually(t, 5*time.Second, "5 streams shed", func() bool { return tn.Connections() == 5 })
	// The other node has not reported them yet: the 5 moving streams
	// still count in the share (for 2 × Retry + a refresh + 1s).
	time.Sleep(time.Second)
	if got := tn.Connections(); got != 5 {
		t.Fatalf("%d streams open while 5 are moving, want 5 (never below the share)", got)
	}
	// The shed streams reconnected to the other node.
	m.set(pubsub.Member{ID: "self", Streams: 5, Ready: true}, pubsub.Member{ID: "other", Streams: 5, Ready: true})
	time.Sleep(1500 * time.Millisecond)
	if got := tn.Connections(); got != 5 {
		t.Fatalf("%d streams open, want 5 (never below the share)", got)
	}
	if got := testutil.ToFloat64(c.shed.WithLabelValues(reasonRebalance)); got != 5 {
		t.Errorf("sse_rebalance_shed_total{reason=rebalance} = %v, want 5", got)
	}
	for range 5 {
		select {
		case r := <-ends:
			// The jittered retry: that came with the first event, then a
			// cut chunked body: every client library reconnects.
			if len(r.retries) != 1 {
				t.Fatalf("shed stream's retry: lines %q, want the one sent with its first event", r.retries)
			}
			ms, err := strconv.Atoi(r.retries[0])
			if err != nil || ms < 500 || ms > 1000 {
				t.Errorf("shed stream's retry: %q, want a value in [500, 1000]", r.retries[0])
			}
			if !errors.Is(r.err, io.ErrUnexpectedEOF) {
				t.Errorf("shed stream ended with %v, want an unexpected EOF (no terminating chunk)", r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("fewer than 5 clients saw their stream end")
		}
	}
}

// TestClusterWaitsForFreshCounts: streams that reach every node at once
// (a load test, clients back after a deploy) make this node's live count
// look like an excess against the others' older ones. It sheds nothing
// until a view read a refresh after the excess began, and nothing at all
// when that view shows the others got their share too.
func TestClusterWaitsForFreshCounts(t *testing.T) {
	m := &fakeMembership{at: time.Now()} // read before the streams came
	m.set(pubsub.Member{ID: "self", Ready: true}, pubsub.Member{ID: "other", Ready: true})
	tn := newTestNode(t, testOpts{})
	openStreams(t, tn, 10)
	tn.publish(t, "t", "", "x") // every stream holds a position: sheddable
	c := startCluster(t, tn, ClusterConfig{RebalanceRate: 1000}, m)
	time.Sleep(time.Second)
	if got := tn.Connections(); got != 10 {
		t.Fatalf("%d streams open after a second of a view older than them, want 10", got)
	}
	m.mu.Lock()
	m.at = time.Time{} // fresh from now on: the other node has its 10 too
	m.view = []pubsub.Member{{ID: "self", Streams: 10, Ready: true}, {ID: "other", Streams: 10, Ready: true}}
	m.mu.Unlock()
	time.Sleep(time.Second)
	if got := testutil.ToFloat64(c.shed.WithLabelValues(reasonRebalance)); got != 0 {
		t.Fatalf("shed %v streams of a balanced cluster, want 0", got)
	}
}

// TestClusterShedsOnlyPositioned: a stream that has not been sent anything
// yet holds no position, so closing it would lose what is published before
// it reconnects; the cluster waits until it has one.
func TestClusterShedsOnlyPositioned(t *testing.T) {
	tn := newTestNode(t, testOpts{hijack: true})
	openStreams(t, tn, 10)
	m := &fakeMembership{}
	m.set(pubsub.Member{ID: "self", Streams: 10, Ready: true}, pubsub.Member{ID: "other", Ready: true})
	c := startCluster(t, tn, ClusterConfig{RebalanceRate: 100}, m)
	eventually(t, 5*time.Second, "sse_cluster_share set", func() bool { return testutil.ToFloat64(c.share) == 2 })
	time.Sleep(time.Second)
	if got := tn.Connections(); got != 10 {
		t.Fatalf("%d streams open before any event, want 10 (none positioned)", got)
	}
	tn.publish(t, "t", "", "x")
	eventually(t, 5*time.Second, "5 streams shed once positioned", func() bool { return tn.Connections() == 5 })
}

func TestClusterNoRebalance(t *testing.T) {
	tn := newTestNode(t, testOpts{hijack: true})
	openStreams(t, tn, 10)
	m := &fakeMembership{}
	m.set(pubsub.Member{ID: "self", Streams: 10, Ready: true}, pubsub.Member{ID: "other", Ready: true})
	c := startCluster(t, tn, ClusterConfig{NoRebalance: true, RebalanceRate: 100}, m)
	// The share is computed (the gauge moves), but nothing is shed.
	eventually(t, 5*time.Second, "sse_cluster_share set", func() bool { return testutil.ToFloat64(c.share) == 2 })
	time.Sleep(time.Second)
	if got := tn.Connections(); got != 10 {
		t.Errorf("%d streams open with rebalancing off, want 10", got)
	}
	if got := testutil.ToFloat64(c.shed.WithLabelValues(reasonRebalance)); got != 0 {
		t.Errorf("sse_rebalance_shed_total{reason=rebalance} = %v, want 0", got)
	}
}

func TestClusterMaxStreamAge(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	began := time.Now()
	ends := openStreams(t, tn, 3)
	// Streams are closed only once positioned (sent an event): one that
	// came back without a position would miss what is published meanwhile.
	tn.publish(t, "t", "", "x")
	m := &fakeMembership{}
	m.set(pubsub.Member{ID: "self", Streams: 3, Ready: true})
	c := startCluster(t, tn, ClusterConfig{MaxStreamAge: 3 * time.Second}, m)
	for i := range 3 {
		select {
		case r := <-ends:
			// The limit is 3s ± 10% from when the node first saw the stream.
			if age := time.Since(began); age < 2700*time.Millisecond {
				t.Errorf("stream %d closed after %v, before its maximum age", i, age)
			}
			if !errors.Is(r.err, io.ErrUnexpectedEOF) || len(r.retries) != 1 {
				t.Errorf("stream %d ended with %v, retry: lines %q; want the first event's retry: and a cut body", i, r.err, r.retries)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("stream %d still open 15s after a maximum age of 3s", i)
		}
	}
	// The loop counts its sheds after it has closed them: a client may
	// see its end first.
	eventually(t, 5*time.Second, "sse_rebalance_shed_total{reason=max_age} = 3", func() bool {
		return testutil.ToFloat64(c.shed.WithLabelValues(reasonMaxAge)) == 3
	})
}

func TestServeCluster(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	admin := httptest.NewServer(tn.AdminHandler(tn.reg))
	defer admin.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/cluster"); code != http.StatusNotFound {
		t.Errorf("GET /cluster without a cluster: %d, want 404", code)
	}

	c, err := NewCluster(tn.Node, ClusterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	members, err := pubsub.NewLocalMembers(pubsub.MembersConfig{ID: "n1", Addr: "127.0.0.1:1", Version: "v1", Refresh: 20 * time.Millisecond, Status: c.Status})
	if err != nil {
		t.Fatal(err)
	}
	defer members.Close()
	if err := members.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(members); err != nil {
		t.Fatal(err)
	}
	dial(t, tn.srv.URL+"/events?topic=a", "")

	var v clusterView
	eventually(t, 5*time.Second, "GET /cluster to list n1 with its stream", func() bool {
		code, body := get("/cluster")
		if code != http.StatusOK {
			t.Fatalf("GET /cluster: %d %s", code, body)
		}
		v = clusterView{}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatalf("GET /cluster: %v: %s", err, body)
		}
		return len(v.Members) == 1 && v.Members[0].Streams == 1
	})
	mb := v.Members[0]
	if v.Self != "n1" || mb.ID != "n1" || mb.Addr != "127.0.0.1:1" || mb.Version != "v1" || mb.Topics != 1 || !mb.Ready || mb.Draining || v.Streams != 1 || v.Share != 1 {
		t.Errorf("GET /cluster = %+v", v)
	}
	if code, body := get("/cluster/ui"); code != http.StatusOK || !strings.Contains(body, `fetch("/cluster"`) {
		t.Errorf("GET /cluster/ui: %d, want the page that reads /cluster", code)
	}
}
