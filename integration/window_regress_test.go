package integration

// The four ways the window's promise broke at a5870fe (issue 10), each
// reproduced against real Redis with the strict parser and the history
// checker of model_util_test.go.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
)

// regressEnv is one Redis, one key prefix and the history of its streams.
type regressEnv struct {
	srv    *redistest.Server
	prefix string
	h      *history
}

func newRegressEnv(t *testing.T) *regressEnv {
	t.Helper()
	srv := redistest.Start(t)
	return &regressEnv{srv: srv, prefix: redistest.Prefix(t), h: newHistory(0)}
}

func (e *regressEnv) key(topic string) string { return e.prefix + topic }

// add XADDs one entry per id to topic and fails the test on any error.
func (e *regressEnv) add(t *testing.T, topic string, maxLen int, ids ...string) []pubsub.ID {
	t.Helper()
	added, err := e.h.xadds(ctxT(t), e.srv.Client(t), e.key(topic), topic, ids, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	return added
}

// stars is n "*" IDs.
func stars(n int) []string { return slices.Repeat([]string{"*"}, n) }

// check fails the test with every violation of the clients.
func (e *regressEnv) check(t *testing.T, clients ...*wClient) {
	t.Helper()
	for _, c := range clients {
		for _, v := range checkClient(e.h, c) {
			t.Errorf("%s\n\t%s", v, c.describe())
		}
	}
}

// waitLastEntry waits until every client has received the stream's newest
// entry (the history's), and fails the test for those that do not.
func (e *regressEnv) waitLastEntry(t *testing.T, topic string, d time.Duration, clients ...*wClient) {
	t.Helper()
	p := e.h.present(topic)
	want := p[len(p)-1]
	for _, c := range clients {
		if !c.waitPayload(d, topic, want.payload) {
			t.Errorf("after %v, client %s has not received the stream's last entry %s %q\n\t%s", d, c.name, want.id, want.payload, c.describe())
		}
	}
}

// gapsOf counts the sse-gap events c received.
func gapsOf(c *wClient) int {
	n := 0
	for _, it := range c.snapshot() {
		if it.typ == "sse-gap" {
			n++
		}
	}
	return n
}

// TestWindowSlowResumeOvertakenByTrim: a client resumes from 0 on a long
// stream and reads slowly through a small receive buffer while a publisher
// adds with MAXLEN ~ 1000, trimming away entries the replay has not reached
// yet. It must receive an sse-gap before the jump, not skip silently (the
// gap check used to run only before the first page).
func TestWindowSlowResumeOvertakenByTrim(t *testing.T) {
	e := newRegressEnv(t)
	const topic, long = "slow", 20000
	for i := 0; i < long; i += 1000 {
		e.add(t, topic, 0, stars(1000)...)
	}
	// What the node may hold ahead of the client is bounded (its queue, the
	// kernel buffers at both ends) and far below the stream's length.
	a := startNode(t, e.srv, e.prefix, "a", func(c *nodeConfig) {
		c.Node.SocketSendBuffer = 16 << 10
		c.Node.ClientBufferBytes = 64 << 10
	})
	c := startWClient(t, &wClient{name: "slow", topics: []string{topic}, start: "0", pick: pickAddr(a.addr), rcvBuf: 8 << 10, rate: 200 << 10})
	if !pollUntil(30*time.Second, 10*time.Millisecond, nil, func() bool { return len(c.snapshot()) >= 500 }) {
		t.Fatalf("the slow client got %d events in 30s\n\t%s", len(c.snapshot()), c.describe())
	}
	// The publisher trims the stream to about its newest 1000 entries: the
	// replay, a few hundred entries in, loses some 19,000 it has not read.
	// (Entries removed younger than removalGrace are not owed.)
	time.Sleep(removalGrace)
	for range 3 {
		e.add(t, topic, 1000, stars(500)...)
	}
	e.waitLastEntry(t, topic, 60*time.Second, c)
	e.check(t, c)
	if n := len(c.snapshot()); n >= long {
		t.Errorf("test setup: the client received %d events; the trim did not overtake the replay", n)
	}
	if gapsOf(c) == 0 {
		t.Errorf("no sse-gap received although the trim overtook the replay\n\t%s", c.describe())
	}
}

// TestWindowDelRecreateActiveTopic: the stream of a topic that is active on
// the node is deleted and recreated with lower IDs (an explicit 5-1, then
// "*"). Live clients and a client reconnecting with the old ID must get an
// sse-gap, then the new entries.
func TestWindowDelRecreateActiveTopic(t *testing.T) {
	e := newRegressEnv(t)
	const topic = "recreate"
	e.add(t, topic, 0, "9000000000000-1", "9000000000000-2", "9000000000000-3")
	a := startNode(t, e.srv, e.prefix, "a", nil)
	live := startWClient(t, &wClient{name: "live", topics: []string{topic}, pick: pickAddr(a.addr)})
	replayed := startWClient(t, &wClient{name: "from0", topics: []string{topic}, start: "0", pick: pickAddr(a.addr)})
	e.add(t, topic, 0, "9000000000000-4")
	e.waitLastEntry(t, topic, 20*time.Second, live, replayed)

	at := time.Now()
	e.srv.MustDo(t, "DEL", e.key(topic))
	e.h.newEpoch(topic, at)
	e.add(t, topic, 0, "5-1", "*")
	old := startWClient(t, &wClient{name: "reconnect-old-id", topics: []string{topic}, start: "9000000000000-4", pick: pickAddr(a.addr)})
	e.add(t, topic, 0, "*")

	e.waitLastEntry(t, topic, 20*time.Second, live, replayed, old)
	e.check(t, live, replayed, old)
	for _, c := range []*wClient{live, replayed, old} {
		if gapsOf(c) == 0 {
			t.Errorf("client %s: no sse-gap although the stream it read was deleted and recreated lower\n\t%s", c.name, c.describe())
		}
	}
}

// TestWindowXDelSameAnswerEveryNode: an entry is XDEL'd; a node where the
// topic is active (its ring held the entry) and a node where it is not must
// answer the same position with the same events.
func TestWindowXDelSameAnswerEveryNode(t *testing.T) {
	e := newRegressEnv(t)
	const topic = "xdel"
	ids := e.add(t, topic, 0, stars(10)...)
	a := startNode(t, e.srv, e.prefix, "a", nil)
	b := startNode(t, e.srv, e.prefix, "b", nil)
	holder := startWClient(t, &wClient{name: "holder", topics: []string{topic}, start: "0", pick: pickAddr(a.addr)})
	e.waitLastEntry(t, topic, 20*time.Second, holder)

	at := time.Now()
	e.srv.MustDo(t, "XDEL", e.key(topic), ids[5].String())
	e.h.remove(topic, at, func(_ int, x *hEntry) bool { return x.id == ids[5] })

	answers := make([]string, 2)
	for i, n := range []*clusterNode{a, b} {
		c := startWClient(t, &wClient{name: "resume-" + n.name, topics: []string{topic}, start: ids[2].String(), pick: pickAddr(n.addr)})
		e.waitLastEntry(t, topic, 20*time.Second, c)
		c.halt()
		e.check(t, c)
		var sb strings.Builder
		for _, it := range c.snapshot() {
			fmt.Fprintf(&sb, "%s %s %s\n", it.typ, it.lastID, it.data)
		}
		answers[i] = sb.String()
	}
	if answers[0] != answers[1] {
		t.Errorf("resume from %s after XDEL %s: node with the topic active answered\n%s\nnode without it answered\n%s", ids[2], ids[5], answers[0], answers[1])
	}
}

// TestWindowFailoverHistoryMovesBack simulates an asynchronous-replication
// failover that lost entries: the stream is DUMPed at T, publishing goes on
// (clients receive those entries), then the stream is replaced by the dump
// (the promoted replica's copy), which takes writes with IDs between T and
// what the clients saw, then more with "*". Clients that saw entries now
// gone must get an sse-gap before anything lower than what they saw, and
// then everything the new history holds.
func TestWindowFailoverHistoryMovesBack(t *testing.T) {
	e := newRegressEnv(t)
	const topic = "failover"
	before := e.add(t, topic, 0, stars(5)...)
	a := startNode(t, e.srv, e.prefix, "a", nil)
	b := startNode(t, e.srv, e.prefix, "b", nil)
	live := startWClient(t, &wClient{name: "live-a", topics: []string{topic}, start: "0", pick: pickAddr(a.addr)})
	e.waitLastEntry(t, topic, 20*time.Second, live)

	dump := e.srv.MustDo(t, "DUMP", e.key(topic))
	t0 := before[len(before)-1]
	time.Sleep(5 * time.Millisecond) // the lost entries' IDs are above t0's millisecond + 1
	lost := e.add(t, topic, 0, stars(5)...)
	e.waitLastEntry(t, topic, 20*time.Second, live)

	at := time.Now()
	e.srv.MustDo(t, "DEL", e.key(topic))
	e.srv.MustDo(t, "RESTORE", e.key(topic), 0, dump)
	if err := e.h.restoreFrom(ctxT(t), e.srv.Client(t), e.key(topic), topic, at); err != nil {
		t.Fatal(err)
	}
	// Writes the new master took: above T, below the lost entries.
	moved := e.add(t, topic, 0, fmt.Sprintf("%d-1", t0.Ms+1), fmt.Sprintf("%d-2", t0.Ms+1))
	if !moved[1].Less(lost[0]) {
		t.Fatalf("test setup: %s not below the lost %s", moved[1], lost[0])
	}
	resumed := startWClient(t, &wClient{name: "resume-b", topics: []string{topic}, start: lost[4].String(), pick: pickAddr(b.addr)})
	e.add(t, topic, 0, stars(3)...)

	e.waitLastEntry(t, topic, 20*time.Second, live, resumed)
	e.check(t, live, resumed)
	for _, c := range []*wClient{live, resumed} {
		if gapsOf(c) == 0 {
			t.Errorf("client %s: no sse-gap although entries it received (%s..%s) were lost\n\t%s", c.name, lost[0], lost[4], c.describe())
		}
	}
}
