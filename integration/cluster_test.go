package integration

// Issue 3 acceptance: several nodes in one process over one real Redis.
// Each test has its own key prefix; the helpers are in clusterutil_test.go.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/node"
	"github.com/ssecluster/ssecluster/pubsub"
)

// catchUp bounds every wait for a client to have everything. Generous:
// tests are not gated on speed, and -race on two cores is slow.
const catchUp = 60 * time.Second

// startNodes starts n nodes named A, B, C... on srv with prefix. Node C
// keeps its streams on the net/http path (NoHijack), the others hijack
// them (the default), so that every test of three nodes covers both.
func startNodes(t testing.TB, srv *redistest.Server, prefix string, n int, edit func(i int, c *nodeConfig)) []*clusterNode {
	t.Helper()
	nodes := make([]*clusterNode, n)
	for i := range nodes {
		nodes[i] = startNode(t, srv, prefix, string(rune('A'+i)), func(c *nodeConfig) {
			c.Node.NoHijack = i == 2
			if edit != nil {
				edit(i, c)
			}
		})
	}
	return nodes
}

// xaddPipelined adds n entries "data <i>" to key with raw XADDs, pipelined
// in batches, and returns their IDs.
func xaddPipelined(t testing.TB, srv *redistest.Server, key string, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for start := 0; start < n; start += 1000 {
		pipe := srv.Client(t).Pipeline()
		for i := start; i < min(n, start+1000); i++ {
			pipe.Do(ctxT(t), "XADD", key, "*", "data", strconv.Itoa(i))
		}
		cmds, err := pipe.Exec(ctxT(t))
		if err != nil {
			t.Fatalf("pipelined XADD: %v", err)
		}
		for _, c := range cmds {
			id, err := c.(*redis.Cmd).Text()
			if err != nil {
				t.Fatalf("pipelined XADD: %v", err)
			}
			ids = append(ids, id)
		}
	}
	return ids
}

// xaddMulti adds n entries "data <i>" to key with raw XADDs in one
// MULTI/EXEC, so they all appear at once, and returns their IDs.
func xaddMulti(t testing.TB, srv *redistest.Server, key string, n int) []string {
	t.Helper()
	ctx := ctxT(t)
	cmds, err := srv.Client(t).TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			p.Do(ctx, "XADD", key, "*", "data", strconv.Itoa(i))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("XADD in MULTI: %v", err)
	}
	ids := make([]string, 0, n)
	for _, c := range cmds {
		id, err := c.(*redis.Cmd).Text()
		if err != nil {
			t.Fatalf("XADD in MULTI: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// checkFromFirst checks that a client's IDs are exactly the stream's
// entries from its first received one: no gap, no duplicate, in order.
func checkFromFirst(t testing.TB, name string, got []string, stream []string) {
	t.Helper()
	if len(got) == 0 {
		t.Errorf("%s: received nothing", name)
		return
	}
	i := slices.Index(stream, got[0])
	if i < 0 {
		t.Errorf("%s: first id %s is not in the stream", name, got[0])
		return
	}
	if err := checkSequence(got, stream[i:]); err != nil {
		t.Errorf("%s: %v", name, err)
	}
}

// TestClusterRawXADD: three nodes, one Redis; a client on each node gets
// every entry added with a raw XADD (go-redis Do), in order, once, with
// its data and event type.
func TestClusterRawXADD(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 3, nil)
	const topic = "raw"
	key := prefix + topic
	var clients []*sseClient
	for _, n := range nodes {
		clients = append(clients, startClient(t, always(n.addr), clientOpts{keep: true}, topic))
	}

	ctx := ctxT(t)
	const entries = 300
	for i := range entries {
		args := []any{"XADD", key, "*", "data", "n" + strconv.Itoa(i)}
		switch {
		case i%10 == 0:
			args = []any{"XADD", key, "*", "data", "line 1\nline 2\r\nline 3"}
		case i%7 == 0:
			args = []any{"XADD", key, "*", "data", ""}
		case i%3 == 0:
			args = append(args, "event", "tick")
		}
		if err := srv.Client(t).Do(ctx, args...).Err(); err != nil {
			t.Fatalf("XADD %d: %v", i, err)
		}
	}
	want := xrangeEntries(t, srv, key, "-")
	if len(want) != entries {
		t.Fatalf("stream holds %d entries, want %d", len(want), entries)
	}
	for i := range want {
		// What EventSource gives: every line break becomes "\n".
		want[i].Data = normalizeNewlines(want[i].Data)
	}
	last := want[len(want)-1].ID
	for i, c := range clients {
		c.waitLast(t, last, catchUp)
		_, got, gaps := c.snapshot()
		if len(gaps) > 0 {
			t.Errorf("node %s: gap events %v", nodes[i].name, gaps)
		}
		if !slices.Equal(got, want) {
			t.Errorf("node %s: %v", nodes[i].name, checkSequence(eventIDs(got), eventIDs(want)))
			for j := range min(len(got), len(want)) {
				if got[j] != want[j] {
					t.Errorf("node %s: event %d = %+v, want %+v", nodes[i].name, j, got[j], want[j])
					break
				}
			}
		}
		if n := c.connections(); n != 1 {
			t.Errorf("node %s: client connected %d times: %q", nodes[i].name, n, c.failures())
		}
	}
}

// normalizeNewlines turns "\r\n" and "\r" into "\n", as an SSE parser
// does with a payload split into data: lines.
func normalizeNewlines(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "\n")
}

// TestClusterResumeAcrossNodes: a client reads 100 events on node A and
// leaves; 500 more are published; it resumes with its Last-Event-ID on
// node B (not watching the topic, ring too small: paged from Redis) and,
// as a second client, on node C (watching: from its ring), and gets
// exactly those 500, then live events.
func TestClusterResumeAcrossNodes(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 3, func(i int, c *nodeConfig) {
		if i == 1 {
			c.Node.Window.RingSize = 64
		}
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	const topic = "resume"
	key := prefix + topic

	first := startClient(t, always(a.addr), clientOpts{}, topic)
	startClient(t, always(c.addr), clientOpts{}, topic) // keeps C's ring warm
	ids := xaddPipelined(t, srv, key, 100)
	first.waitLast(t, ids[99], catchUp)
	first.halt()
	got, _, _ := first.snapshot()
	if err := checkSequence(got, ids); err != nil {
		t.Fatalf("on A: %v", err)
	}
	lastID := first.last()

	more := xaddPipelined(t, srv, key, 500)
	onB := startClient(t, always(b.addr), clientOpts{lastID: lastID}, topic)
	onC := startClient(t, always(c.addr), clientOpts{lastID: lastID}, topic)
	for _, x := range []struct {
		name string
		c    *sseClient
	}{{"B", onB}, {"C", onC}} {
		x.c.waitLast(t, more[499], catchUp)
		got, _, gaps := x.c.snapshot()
		if err := checkSequence(got, more); err != nil || len(gaps) > 0 {
			t.Errorf("resume on %s: %v, gaps %v", x.name, err, gaps)
		}
	}

	live := xaddPipelined(t, srv, key, 10)
	for _, x := range []struct {
		name string
		c    *sseClient
	}{{"B", onB}, {"C", onC}} {
		x.c.waitLast(t, live[9], catchUp)
		got, _, _ := x.c.snapshot()
		if err := checkSequence(got, append(slices.Clone(more), live...)); err != nil {
			t.Errorf("live after resume on %s: %v", x.name, err)
		}
		if n := x.c.connections(); n != 1 {
			t.Errorf("%s: %d connections: %q", x.name, n, x.c.failures())
		}
	}
	if v := b.metric(t, "sse_replay_requests_total", "source", "redis"); v < 1 {
		t.Errorf("node B: replay requests from redis = %v, want >= 1", v)
	}
	if v := c.metric(t, "sse_replay_requests_total", "source", "ring"); v < 1 {
		t.Errorf("node C: replay requests from ring = %v, want >= 1", v)
	}
}

// TestClusterNodeKilled: 30 clients over 3 nodes while ~1,000 events/s are
// published; node A is killed midway (listener and connections reset,
// broker closed without a drain); its clients resume on B and C. Every
// client's sequence equals XRANGE from its first ID.
func TestClusterNodeKilled(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	const topic = "kill"
	key := prefix + topic

	const perNode = 10
	var clients []*sseClient
	var names []string
	for i := range 3 * perNode {
		n := nodes[i%3]
		pick := always(n.addr)
		if n == a {
			// Where a load balancer would send it after A dies.
			if i%2 == 0 {
				pick = firstThen(a.addr, b.addr, c.addr)
			} else {
				pick = firstThen(a.addr, c.addr, b.addr)
			}
		}
		clients = append(clients, startClient(t, pick, clientOpts{}, topic))
		names = append(names, fmt.Sprintf("client %d (node %s)", i, n.name))
	}

	// 10 entries every 10ms: ~1,000/s, at most 5,000 entries or 8s.
	const total = 5000
	pub := startRawPublisher(t, srv, key, 10*time.Millisecond, 10, total, 8*time.Second)
	start := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for pub.sent.Load() < total/2 {
		if time.Now().After(deadline) {
			t.Fatalf("publisher: %d sent in 30s", pub.sent.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	killedAt := time.Since(start)
	a.kill(t)
	pub.wait(t, 30*time.Second)
	elapsed := time.Since(start)
	if pub.errs.Load() > 0 {
		t.Errorf("publisher: %d failed XADDs", pub.errs.Load())
	}

	stream := eventIDs(xrangeEntries(t, srv, key, "-"))
	if len(stream) != int(pub.sent.Load()) {
		t.Fatalf("stream holds %d entries, publisher sent %d", len(stream), pub.sent.Load())
	}
	last := stream[len(stream)-1]
	reconnects := 0
	for i, cl := range clients {
		cl.waitLast(t, last, catchUp)
		got, _, gaps := cl.snapshot()
		if len(gaps) > 0 {
			t.Errorf("%s: gaps %v", names[i], gaps)
		}
		checkFromFirst(t, names[i], got, stream)
		if nodes[i%3] == a {
			if cl.connections() < 2 {
				t.Errorf("%s: did not reconnect after the kill", names[i])
			}
			reconnects += cl.connections() - 1
		} else if n := cl.connections(); n != 1 {
			// Not an error by the contract (resume is exact), but worth a look.
			t.Logf("%s: %d connections: %q", names[i], n, cl.failures())
		}
	}
	t.Logf("published %d entries in %v (%.0f/s), node A killed at %v; A's %d clients reconnected %d times",
		len(stream), elapsed.Round(time.Millisecond), float64(len(stream))/elapsed.Seconds(),
		killedAt.Round(time.Millisecond), perNode, reconnects)
}

// TestClusterKilledBeforeFirstEvent: a client connects live (no
// Last-Event-ID) to node A, which is killed before any event reaches it;
// events are published; the client reconnects to node B as EventSource
// does. It must still get the events published after it first connected:
// they are in the window. EventSource sends Last-Event-ID only once it has
// seen an id: field, so the node must give the client its position when
// the stream opens.
func TestClusterKilledBeforeFirstEvent(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 2, nil)
	a, b := nodes[0], nodes[1]
	const topic = "first"
	key := prefix + topic
	before := xaddPipelined(t, srv, key, 3) // the stream exists: history the client did not ask for
	published := make(chan struct{})
	pick := func(attempt int) string {
		if attempt == 0 {
			return a.addr
		}
		<-published // reconnect only once the events are in Redis
		return b.addr
	}
	c := startClient(t, pick, clientOpts{}, topic)
	a.kill(t)
	want := xaddPipelined(t, srv, key, 5)
	close(published)
	c.waitConnected(t, 2, catchUp)
	if !c.waitFor(10*time.Second, func() bool { return c.last() == want[4] }) {
		got, _, _ := c.snapshot()
		t.Fatalf("after reconnecting, the client has %v (last id %q), want %v: the events published between its first "+
			"connection and its reconnect are lost, as it had no Last-Event-ID to send (history before it connected: %v)",
			got, c.last(), want, before)
	}
	got, _, _ := c.snapshot()
	if err := checkSequence(got, want); err != nil {
		t.Error(err)
	}
}

// waitReadyz polls every node's /readyz until it answers code or d passes.
func waitReadyz(t testing.TB, nodes []*clusterNode, code int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, n := range nodes {
		for {
			got := n.readyz()
			if got == code {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s: /readyz %d after %v, want %d", n.name, got, d, code)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestClusterRedisRestartAndStall: Redis (AOF on) is stopped and started,
// then stalled with DEBUG SLEEP 3, under a steady publisher. /readyz is 503
// on every node during each outage and 200 after, without restarting a
// node, and every client (resuming with Last-Event-ID when a node ends its
// stream) has exactly what the stream holds from its first ID.
func TestClusterRedisRestartAndStall(t *testing.T) {
	srv := redistest.Start(t, redistest.WithContainer(), redistest.WithAOF())
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 3, nil)
	const topic = "outage"
	key := prefix + topic
	var clients []*sseClient
	for i := range 9 {
		own := nodes[i%3]
		var rest []string
		for j := 1; j < 3; j++ {
			rest = append(rest, nodes[(i+j)%3].addr)
		}
		// EventSource reconnects to the same URL; behind a load balancer
		// that can be any node, so this one tries its own node first.
		pick := firstThen(own.addr, append([]string{own.addr}, rest...)...)
		clients = append(clients, startClient(t, pick, clientOpts{}, topic))
	}
	waitReadyz(t, nodes, 200, 10*time.Second)

	// ~200 entries/s for at most 60s; stopped below once both outages are over.
	pub := startRawPublisher(t, srv, key, 5*time.Millisecond, 1, 12000, 60*time.Second)
	waitSent := func(n int64, d time.Duration) {
		t.Helper()
		want := pub.sent.Load() + n
		deadline := time.Now().Add(d)
		for pub.sent.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("publisher: %d sent, want %d within %v (%d errors)", pub.sent.Load(), want, d, pub.errs.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitSent(50, 20*time.Second)

	// Restart.
	srv.Stop(t)
	waitReadyz(t, nodes, 503, 10*time.Second)
	srv.Start(t)
	restarted := time.Now()
	waitReadyz(t, nodes, 200, 30*time.Second)
	t.Logf("restart: every node ready %v after Redis answered PING", time.Since(restarted).Round(time.Millisecond))
	waitSent(50, 30*time.Second)

	// Stall: every node must report 503 while Redis sleeps.
	slept := make(chan error, 1)
	go func() {
		_, err := srv.Do(t, "DEBUG", "SLEEP", "3")
		slept <- err
	}()
	var wg sync.WaitGroup
	var saw503 [3]atomic.Bool
	stallOver := make(chan struct{})
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !saw503[i].Load() {
				select {
				case <-stallOver:
					return
				default:
				}
				if n.readyz() == 503 {
					saw503[i].Store(true)
				}
			}
		}()
	}
	err := <-slept
	close(stallOver)
	wg.Wait()
	if err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	for i, n := range nodes {
		if !saw503[i].Load() {
			t.Errorf("node %s: /readyz never failed during DEBUG SLEEP 3", n.name)
		}
	}
	waitReadyz(t, nodes, 200, 10*time.Second)
	waitSent(50, 20*time.Second)
	pub.halt()

	stream := eventIDs(xrangeEntries(t, srv, key, "-"))
	last := stream[len(stream)-1]
	for i, c := range clients {
		c.waitLast(t, last, catchUp)
		got, _, gaps := c.snapshot()
		if len(gaps) > 0 {
			t.Errorf("client %d: gaps %v", i, gaps)
		}
		checkFromFirst(t, fmt.Sprintf("client %d", i), got, stream)
		if n := c.connections(); n > 1 {
			t.Logf("client %d: %d connections: %q", i, n, c.failures())
		}
	}
	var readErrs float64
	for _, n := range nodes {
		readErrs += n.metric(t, "sse_broker_errors_total")
	}
	if readErrs == 0 {
		t.Error("no broker read error counted across a Redis restart")
	}
	t.Logf("published %d entries (%d failed attempts), broker read errors %v", len(stream), pub.errs.Load(), readErrs)
}

// TestClusterReconnectStorm: 2,000 clients of one topic resume at once from
// the same ID on a node that has not been watching the topic, so its ring
// (64 entries) does not cover the position and the replay is paged from
// Redis. All get exactly the expected events, and Redis counts far fewer
// XRANGE (+ XREVRANGE) calls than there are clients.
func TestClusterReconnectStorm(t *testing.T) {
	// A Redis of its own: the command counts must be this test's alone.
	srv := redistest.Start(t, redistest.WithContainer())
	prefix := redistest.Prefix(t)
	n := startNode(t, srv, prefix, "S", func(c *nodeConfig) { c.Node.Window.RingSize = 64 })
	const topic = "storm"
	key := prefix + topic
	ids := xaddPipelined(t, srv, key, 600)
	from := 49
	want := ids[from+1:]

	const clients = 2000
	// Dial every connection first, then send every request at once.
	gate := make(chan struct{})
	conns := make([]net.Conn, clients)
	var dialWG sync.WaitGroup
	var dialErr atomic.Value
	sem := make(chan struct{}, 64)
	for i := range conns {
		dialWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer dialWG.Done()
			defer func() { <-sem }()
			c, err := dialTCP(context.Background(), n.addr)
			if err != nil {
				dialErr.Store(err)
				return
			}
			conns[i] = c
		}()
	}
	dialWG.Wait()
	if err := dialErr.Load(); err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		t.Fatalf("dial: %v", err)
	}

	var mismatches atomic.Int64
	var firstMismatch atomic.Value
	cs := make([]*sseClient, clients)
	for i := range cs {
		next := 0
		cs[i] = newClient(always(n.addr), clientOpts{
			lastID:  ids[from],
			discard: true,
			conn:    conns[i],
			gate:    gate,
			onEvent: func(e event) {
				if next >= len(want) || e.ID != want[next] {
					if mismatches.Add(1) == 1 {
						firstMismatch.Store(fmt.Sprintf("client %d: event %d id %s (%s)", i, next, e.ID, e.Event))
					}
				}
				next++
			},
		}, topic)
		cs[i].start()
		t.Cleanup(cs[i].halt)
	}

	before := commandStats(t, srv)
	start := time.Now()
	close(gate)
	deadline := time.Now().Add(2 * catchUp)
	// How spread out the arrivals were: the node shares a read only among
	// the replays that need it while it is in flight.
	for i, c := range cs {
		if !c.waitFor(time.Until(deadline), func() bool { return c.connections() >= 1 }) {
			t.Fatalf("client %d: not connected after %v; failures %q", i, time.Since(start), c.failures())
		}
	}
	opened := time.Since(start)
	for i, c := range cs {
		if !c.waitFor(time.Until(deadline), func() bool { return c.count() >= len(want) }) {
			t.Fatalf("client %d: %d of %d events after %v; failures %q", i, c.count(), len(want), time.Since(start), c.failures())
		}
	}
	took := time.Since(start)
	// Late duplicates would show as a count above len(want).
	time.Sleep(100 * time.Millisecond)
	after := commandStats(t, srv)
	for _, c := range cs {
		c.halt()
	}

	if m := mismatches.Load(); m > 0 {
		t.Errorf("%d events out of sequence; first: %v", m, firstMismatch.Load())
	}
	reconnected := 0
	for i, c := range cs {
		if c.count() != len(want) {
			t.Errorf("client %d: %d events, want %d", i, c.count(), len(want))
		}
		if c.connections() != 1 {
			if reconnected++; reconnected <= 5 {
				t.Logf("client %d reconnected: %q", i, c.failures())
			}
		}
		if _, _, gaps := c.snapshot(); len(gaps) > 0 {
			t.Errorf("client %d: gaps %v", i, gaps)
		}
	}
	delta, _ := statsDelta(before, after)
	reads := delta["xrange"] + delta["xrevrange"]
	t.Logf("storm: %d clients x %d events (%d pages of 256 from Redis, then the ring); every stream open after %v, all complete after %v; %d reconnected; Redis calls: xrange %d, xrevrange %d, xinfo %d, type %d, multi %d, total %v",
		clients, len(want), (len(want)-64+255)/256, opened.Round(time.Millisecond), took.Round(time.Millisecond), reconnected, delta["xrange"], delta["xrevrange"], delta["xinfo|stream"], delta["type"], delta["multi"], delta)
	if reconnected > 0 {
		t.Logf("node S: %q", n.metricLines("sse_disconnects_total", "sse_slow_client_disconnects_total", "sse_replay_requests_total"))
	}
	// Pages behind the ring are shared (concurrent reads merged, full
	// pages kept a few seconds): a handful of reads per page, not per client.
	if reads > 10 {
		t.Errorf("storm cost %d XRANGE+XREVRANGE calls for %d clients, want at most 10", reads, clients)
	}
}

// slowRange is a replay source whose Page calls after the first wait
// delay: Redis answering slowly while a replay is under way.
type slowRange struct {
	node.Broker
	delay time.Duration
	calls atomic.Int64
}

func (s *slowRange) Page(ctx context.Context, topic string, after pubsub.ID, count, maxBytes int) (pubsub.Page, error) {
	if s.calls.Add(1) > 1 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return pubsub.Page{}, ctx.Err()
		}
	}
	return s.Broker.Page(ctx, topic, after, count, maxBytes)
}

// TestClusterSlowReplaySourceKeepsStream: while a client resumes from
// Redis, a page read takes longer than the node's write timeout. The
// client reads promptly all along, so its stream must stay open: the
// write timeout bounds writes to a client, not the node's own reads
// (DESIGN: a per-write deadline, never one that cuts healthy streams).
func TestClusterSlowReplaySourceKeepsStream(t *testing.T) {
	srv := redistest.Start(t)
	for _, path := range []struct {
		name     string
		noHijack bool
	}{{"hijacked", false}, {"net-http", true}} {
		t.Run(path.name, func(t *testing.T) {
			prefix := redistest.Prefix(t)
			slow := &slowRange{delay: 1500 * time.Millisecond}
			n := startNode(t, srv, prefix, "A", func(c *nodeConfig) {
				c.Node.NoHijack = path.noHijack
				c.Node.WriteTimeout = time.Second
				c.Node.Window.RingSize = 16
				c.Broker = func(b *pubsub.Redis) node.Broker { slow.Broker = b; return slow }
			})
			const topic = "slowreplay"
			ids := xaddPipelined(t, srv, prefix+topic, 600)
			c := startClient(t, always(n.addr), clientOpts{lastID: ids[0]}, topic)
			c.waitLast(t, ids[599], catchUp)
			got, _, _ := c.snapshot()
			if err := checkSequence(got, ids[1:]); err != nil {
				t.Error(err)
			}
			if k := c.connections(); k != 1 {
				t.Errorf("the stream was cut during a slow replay and the client reconnected (%d connections: %q); node counted %q",
					k, c.failures(), n.metricLines("sse_disconnects_total", "sse_slow_client_disconnects_total"))
			}
			if slow.calls.Load() < 2 {
				t.Errorf("%d Range calls: the replay did not page through the slow source", slow.calls.Load())
			}
		})
	}
}

// TestClusterBadEntries: entries without data, binary data, a 1 MiB value,
// invalid UTF-8, a forged event type, and keys of the wrong type: each is
// handled (delivered as documented, or skipped with a log line and
// sse_broker_bad_entries_total), the node does not crash, and another topic
// on the same node keeps flowing.
func TestClusterBadEntries(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	// Block 1s: a reader blocked only on the topic whose key turns into a
	// string meets the WRONGTYPE within a second.
	n := startNode(t, srv, prefix, "A", func(c *nodeConfig) { c.Redis.Block = time.Second })
	ctx := ctxT(t)
	xaddTo := func(topic string, fields ...any) string {
		t.Helper()
		id, err := srv.Client(t).Do(ctx, append([]any{"XADD", prefix + topic, "*"}, fields...)...).Text()
		if err != nil {
			t.Fatalf("XADD %s: %v", topic, err)
		}
		return id
	}
	topics := []string{"good", "nodata", "bin", "big", "utf8", "forged", "wrong"}
	clients := make(map[string]*sseClient)
	for _, tp := range topics {
		clients[tp] = startClient(t, always(n.addr), clientOpts{keep: true}, tp)
	}
	var goodIDs []string
	good := func() { goodIDs = append(goodIDs, xaddTo("good", "data", "g"+strconv.Itoa(len(goodIDs)))) }
	expect := func(topic string, want ...event) {
		t.Helper()
		c := clients[topic]
		c.waitLast(t, want[len(want)-1].ID, catchUp)
		_, got, gaps := c.snapshot()
		if len(gaps) > 0 {
			t.Errorf("%s: gaps %v", topic, gaps)
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d events, want %d: %v", topic, len(got), len(want), eventIDs(got))
			return
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: event %d = {%s %q %d bytes %.40q}, want {%s %q %d bytes %.40q}", topic, i,
					got[i].ID, got[i].Event, len(got[i].Data), got[i].Data, want[i].ID, want[i].Event, len(want[i].Data), want[i].Data)
			}
		}
	}
	good()

	// No data field: delivered as a JSON object of all the fields; invalid
	// UTF-8 in a value becomes U+FFFD so the JSON stays valid.
	id := xaddTo("nodata", "user", "ann", "msg", "hi\xff", "event", "joined")
	good()
	id2 := xaddTo("nodata", "data", "after")
	expect("nodata", event{id, "joined", `{"event":"joined","msg":"hi\ufffd","user":"ann"}`}, event{id2, "", "after"})
	_, got, _ := clients["nodata"].snapshot()
	var obj map[string]string
	if err := json.Unmarshal([]byte(got[0].Data), &obj); err != nil || obj["msg"] != "hi\uFFFD" || obj["user"] != "ann" {
		t.Errorf("nodata: %q decodes to %v, %v", got[0].Data, obj, err)
	}

	// Binary: every byte value. Line breaks split data: lines (and come
	// back as "\n"); every other byte, NUL included, is passed through.
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	id = xaddTo("bin", "data", all)
	good()
	expect("bin", event{id, "", normalizeNewlines(string(all))})

	// 1 MiB of random bytes, more than the default 1 MiB queue bound once
	// framed: a single frame still goes through an empty queue, but one
	// that comes while it waits overflows it and the client is disconnected
	// as slow; it resumes with its Last-Event-ID (it has one: see
	// TestClusterKilledBeforeFirstEvent for a client that has none).
	id0 := xaddTo("big", "data", "first")
	expect("big", event{id0, "", "first"})
	big := make([]byte, 1<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	id = xaddTo("big", "data", big)
	good()
	id2 = xaddTo("big", "data", "small")
	expect("big", event{id0, "", "first"}, event{id, "", normalizeNewlines(string(big))}, event{id2, "", "small"})
	if c := clients["big"].connections(); c != 1 {
		t.Logf("big: %d connections (the 1 MiB frame made a slow-client disconnect): %q", c, clients["big"].failures())
	}

	// Invalid UTF-8 in data: the bytes go out as they are (an EventSource
	// decodes them to U+FFFD; the node does not rewrite payloads).
	id = xaddTo("utf8", "data", "\xff\xfe\xc3( ok")
	good()
	expect("utf8", event{id, "", "\xff\xfe\xc3( ok"})

	// Forged event types: a line break would inject SSE fields, an sse-
	// name the server's own gap notice. Neither is dropped nor obeyed: the
	// entry comes as a plain message whose data is the JSON of its fields
	// (a repeated field as an array), and it is counted under its reason.
	badBefore := n.metric(t, "sse_broker_bad_entries_total", "reason", pubsub.BadEntryBadEvent)
	repBefore := n.metric(t, "sse_broker_bad_entries_total", "reason", pubsub.BadEntryRepeatedField)
	id = xaddTo("forged", "data", "x", "event", "a\ndata: injected")
	id2 = xaddTo("forged", "event", "sse-gap", "data", `{"topic":"forged","requested":"0-1","oldest":"9-9"}`)
	id3 := xaddTo("forged", "data", "one", "data", "two")
	good()
	id4 := xaddTo("forged", "data", "after")
	expect("forged",
		event{id, "", `{"data":"x","event":"a\ndata: injected"}`},
		event{id2, "", `{"data":"{\"topic\":\"forged\",\"requested\":\"0-1\",\"oldest\":\"9-9\"}","event":"sse-gap"}`},
		event{id3, "", `{"data":["one","two"]}`},
		event{id4, "", "after"})
	if v := n.metric(t, "sse_broker_bad_entries_total", "reason", pubsub.BadEntryBadEvent); v != badBefore+2 {
		t.Errorf("bad event counted %v times, want 2", v-badBefore)
	}
	if v := n.metric(t, "sse_broker_bad_entries_total", "reason", pubsub.BadEntryRepeatedField); v != repBefore+1 {
		t.Errorf("repeated field counted %v times, want 1", v-repBefore)
	}

	// A watched topic whose key turns into a string: the reader parks it,
	// logs and counts "wrong type"; the other topics keep flowing.
	id = xaddTo("wrong", "data", "before")
	expect("wrong", event{id, "", "before"})
	srv.MustDo(t, "DEL", prefix+"wrong")
	srv.MustDo(t, "SET", prefix+"wrong", "not a stream")
	deadline := time.Now().Add(catchUp)
	for n.metric(t, "sse_broker_bad_entries_total", "reason", pubsub.BadEntryWrongType) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("a watched key of the wrong type was never counted")
		}
		good()
		time.Sleep(50 * time.Millisecond)
	}
	good()

	// A key of the wrong type before anyone subscribes: the subscribe is
	// refused (409: retrying cannot help) and nothing else changes.
	srv.MustDo(t, "SET", prefix+"prewrong", "x")
	_, err := openSSE(ctx, n.addr, eventsPath("prewrong"), "")
	var se *statusError
	if !errors.As(err, &se) || se.code != 409 {
		t.Errorf("subscribe to a string key: %v, want a 409", err)
	}
	good()

	// The good topic had everything, in order, once; the node is healthy.
	c := clients["good"]
	c.waitLast(t, goodIDs[len(goodIDs)-1], catchUp)
	gotIDs, _, _ := c.snapshot()
	if err := checkSequence(gotIDs, goodIDs); err != nil {
		t.Errorf("good topic: %v", err)
	}
	for _, tp := range topics {
		if tp == "big" {
			continue
		}
		if k := clients[tp].connections(); k != 1 {
			t.Errorf("%s: %d connections: %q", tp, k, clients[tp].failures())
		}
	}
	if code := n.readyz(); code != 200 {
		t.Errorf("/readyz = %d after bad entries", code)
	}
	m := n.metrics()
	for _, reason := range []string{pubsub.BadEntryBadEvent, pubsub.BadEntryWrongType} {
		if !strings.Contains(m, `sse_broker_bad_entries_total{reason="`+reason+`"}`) {
			t.Errorf("/metrics has no sse_broker_bad_entries_total for %q", reason)
		}
	}
}

// TestReportLatency reports, and does not assert, the cluster's figures:
// XADD-to-client latency with 1,000 clients over three nodes at 100
// events/s for 5s; entries per second one node reads from Redis (a burst
// of 50,000 pipelined XADDs, live; and the same 50,000 replayed from
// Redis to a new client); Redis commands per delivered event.
func TestReportLatency(t *testing.T) {
	srv := redistest.Start(t, redistest.WithContainer())
	prefix := redistest.Prefix(t)
	nodes := startNodes(t, srv, prefix, 3, nil)
	const topic = "latency"
	key := prefix + topic

	const clients, events = 1000, 500
	lat := make([][]time.Duration, clients)
	cs := make([]*sseClient, clients)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	var failed atomic.Value
	for i := range cs {
		lat[i] = make([]time.Duration, 0, events)
		cs[i] = newClient(always(nodes[i%3].addr), clientOpts{discard: true, onEvent: func(e event) {
			_, ts, ok := strings.Cut(e.Data, " ")
			ns, err := strconv.ParseInt(ts, 10, 64)
			if ok && err == nil {
				lat[i] = append(lat[i], time.Since(time.Unix(0, ns)))
			}
		}}, topic)
		cs[i].start()
		t.Cleanup(cs[i].halt)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if !cs[i].waitFor(30*time.Second, func() bool { return cs[i].connections() >= 1 }) {
				failed.Store(fmt.Sprintf("client %d: not connected: %q", i, cs[i].failures()))
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		t.Fatal(f)
	}

	before := commandStats(t, srv)
	pub := startRawPublisher(t, srv, key, 10*time.Millisecond, 1, events, 10*time.Second)
	pub.wait(t, 30*time.Second)
	complete := 0
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range cs {
		if c.waitFor(time.Until(deadline), func() bool { return c.count() >= int(pub.sent.Load()) }) {
			complete++
		}
	}
	after := commandStats(t, srv)
	for _, c := range cs {
		c.halt()
	}
	var all []time.Duration
	var deliveries, reconnects int
	for i, c := range cs {
		all = append(all, lat[i]...)
		deliveries += c.count()
		reconnects += c.connections() - 1
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	q := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))]
	}
	// A report, but also a check: every client got every event.
	if complete != clients {
		t.Errorf("latency run: %d of %d clients got all %d events", complete, clients, pub.sent.Load())
	}
	delta, total := statsDelta(before, after)
	t.Logf("latency: %d clients over 3 nodes, %d events at ~100/s: %d deliveries (%d clients complete, %d reconnects); XADD-to-client p50 %v p99 %v max %v",
		clients, pub.sent.Load(), deliveries, complete, reconnects, q(0.50).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), q(1).Round(10*time.Microsecond))
	if deliveries > 0 {
		nodeCmds := total - delta["xadd"] - delta["info"]
		t.Logf("redis commands: %d in all (%d XADD), %.4f per delivered event, %.4f per delivered event without XADD and INFO; by command %v",
			total, delta["xadd"], float64(total)/float64(deliveries), float64(nodeCmds)/float64(deliveries), delta)
	}

	// Read throughput, live: one client on node A; 50,000 XADDs pipelined
	// (the node reads while they arrive, so this is bounded by the
	// publisher), then 50,000 in one MULTI (all there at once: the time
	// after EXEC is the node's read alone).
	const burst = 50000
	a, b := nodes[0], nodes[1]
	var ids []string
	for _, tx := range []bool{false, true} {
		burstTopic := "burst"
		if tx {
			burstTopic = "burst-multi"
		}
		burstKey := prefix + burstTopic
		cl := startClient(t, always(a.addr), clientOpts{discard: true}, burstTopic)
		eventsBefore := a.metric(t, "sse_broker_events_total")
		start := time.Now()
		if tx {
			ids = xaddMulti(t, srv, burstKey, burst)
		} else {
			ids = xaddPipelined(t, srv, burstKey, burst)
		}
		xadded := time.Since(start)
		deadline = time.Now().Add(catchUp)
		for a.metric(t, "sse_broker_events_total")-eventsBefore < burst && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		nodeHad := time.Since(start)
		clientHad := time.Duration(0)
		if cl.waitFor(time.Until(deadline), func() bool { return cl.last() == ids[burst-1] }) {
			clientHad = time.Since(start)
		}
		if clientHad == 0 {
			t.Errorf("burst: the client did not get all %d entries within %v", burst, catchUp)
		}
		if tx {
			t.Logf("burst in one MULTI: %d XADDs took %v; node A had read them all %v after EXEC returned (%.0f entries/s read); the client had all %v after the first XADD (%d connections)",
				burst, xadded.Round(time.Millisecond), (nodeHad - xadded).Round(time.Millisecond), burst/(nodeHad-xadded).Seconds(),
				clientHad.Round(time.Millisecond), cl.connections())
		} else {
			t.Logf("burst pipelined: %d XADDs took %v; node A had read them all %v after the first XADD (%.0f entries/s, bounded by the publisher); the client had all after %v (%d connections)",
				burst, xadded.Round(time.Millisecond), nodeHad.Round(time.Millisecond), burst/nodeHad.Seconds(),
				clientHad.Round(time.Millisecond), cl.connections())
		}
		cl.halt()
	}

	// Read throughput, replay: a new client on node B (not watching) from 0-0.
	start := time.Now()
	rc := startClient(t, always(b.addr), clientOpts{discard: true, lastID: "0-0"}, "burst-multi")
	if rc.waitFor(catchUp, func() bool { return rc.last() == ids[burst-1] }) {
		took := time.Since(start)
		t.Logf("replay: %d entries from Redis to a new client on node B in %v (%.0f entries/s, %d connections)",
			rc.count(), took.Round(time.Millisecond), float64(rc.count())/took.Seconds(), rc.connections())
	} else {
		t.Errorf("replay: %d of %d entries after %v", rc.count(), burst, catchUp)
	}
	rc.halt()
}
