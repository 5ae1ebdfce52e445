package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssecluster/ssecluster/pubsub"
)

// TestBrokerResetEndsTopicStreams: the broker's reset signal (the Handler
// called with no entries) ends every local stream of the topic, whatever
// its other topics, as a slow client is ended, so that clients resume with
// their Last-Event-ID; streams of other topics go on.
func TestBrokerResetEndsTopicStreams(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	one := dial(t, tn.srv.URL+"/events?topic=t", "")
	both := dial(t, tn.srv.URL+"/events?topic=t&topic=u", "")
	other := dial(t, tn.srv.URL+"/events?topic=u", "")
	eventually(t, 10*time.Second, "three streams", func() bool { return tn.Connections() == 3 })
	id1 := tn.publish(t, "t", "", "one")
	if e := one.next(t); e.ID != id1.String() {
		t.Fatalf("live event %+v, want id %s", e, id1)
	}
	both.next(t)

	tn.deliver("t", nil)
	for name, c := range map[string]*sseClient{"topic t": one, "topics t and u": both} {
		if err := endsWithin(c, 10*time.Second); err != nil {
			t.Errorf("stream of %s after reset: %v", name, err)
		}
	}
	id2 := tn.publish(t, "u", "", "two")
	if e := other.next(t); e.ID != id2.String() {
		t.Fatalf("stream of topic u after reset of t: %+v, want id %s", e, id2)
	}
	if got := testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues(reasonStreamReset)); got != 2 {
		t.Errorf("slow disconnects by %s = %v, want 2", reasonStreamReset, got)
	}

	// The client resumes where it was and loses nothing.
	again := dial(t, tn.srv.URL+"/events?topic=t", id1.String())
	id3 := tn.publish(t, "t", "", "three")
	if e := again.next(t); e.ID != id3.String() {
		t.Fatalf("resumed stream: %+v, want id %s", e, id3)
	}
}

// endsWithin reads c until its stream ends, or fails after d (closing c so
// that the read returns).
func endsWithin(c *sseClient, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := c.nextErr(); err != nil {
				done <- nil
				return
			}
		}
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		c.close()
		<-done
		return errNotEnded
	}
}

var errNotEnded = errors.New("the stream did not end")

// TestEmptyTopicPositionIsStrict: a position 0-0, which the node hands out
// for a topic that was empty when the stream opened, is before the stream's
// first entry: entries published and trimmed while the client was away are
// announced as a gap, not skipped in silence. A lone Last-Event-ID: 0 asks
// for whatever the window holds, and gets it with no gap.
func TestEmptyTopicPositionIsStrict(t *testing.T) {
	tn := newTestNode(t, testOpts{mem: pubsub.MemoryConfig{MaxLen: 5}})
	base := tn.srv.URL + "/events?topic=ga&topic=gb"
	c := dial(t, base, "")
	a1 := tn.publish(t, "ga", "", "a1")
	e := c.next(t)
	if want := a1.String() + ",0-0"; e.ID != want {
		t.Fatalf("first event id %q, want %q", e.ID, want)
	}
	c.close()
	eventually(t, 5*time.Second, "stream closed", func() bool { return tn.Connections() == 0 })
	var b []pubsub.ID
	for i := range 10 {
		b = append(b, tn.publish(t, "gb", "", fmt.Sprintf("b%d", i+1)))
	}

	c = dial(t, base, e.ID)
	g := c.next(t)
	if g.Event != "sse-gap" || !strings.Contains(g.Data, `"topic":"gb"`) || !strings.Contains(g.Data, `"oldest":"`+b[5].String()+`"`) {
		t.Fatalf("resume from %s: got %+v, want an sse-gap for gb with oldest %s", e.ID, g, b[5])
	}
	for i := 5; i < 10; i++ {
		if got := c.next(t); got.Data != fmt.Sprintf("b%d", i+1) {
			t.Fatalf("resume from %s: got %+v, want b%d", e.ID, got, i+1)
		}
	}
	c.close()

	for _, tt := range []struct{ url, lastID string }{
		{tn.srv.URL + "/events?topic=gb", "0"},
		{base, "0"},
		{base, "0,0"},
		{base, a1.String() + ",0"},
	} {
		c = dial(t, tt.url, tt.lastID)
		if tt.url == base && tt.lastID != a1.String()+",0" {
			if got := c.next(t); got.Data != "a1" {
				t.Fatalf("Last-Event-ID %s: got %+v, want a1", tt.lastID, got)
			}
		}
		for i := 5; i < 10; i++ {
			if got := c.next(t); got.Event != "" || got.Data != fmt.Sprintf("b%d", i+1) {
				t.Fatalf("Last-Event-ID %s: got %+v, want b%d and no gap", tt.lastID, got, i+1)
			}
		}
		c.close()
	}
}

// TestEmbeddedBudgetDropsTopic: a topic whose entries the embedded
// broker's byte budget trimmed, and which no stream watched, is dropped
// like a deleted Redis stream; a client resuming from a position in it
// gets a gap with "reset":true (nothing it held is there any more), then
// the topic's next event.
func TestEmbeddedBudgetDropsTopic(t *testing.T) {
	tn := newTestNode(t, testOpts{mem: pubsub.MemoryConfig{MaxBytes: 64 << 10}})
	old := tn.publish(t, "gone", "", "old")
	for i := range 1000 {
		tn.publish(t, fmt.Sprintf("flood%d", i), "", "x")
	}
	if info, err := tn.broker.Info(context.Background(), "gone"); err != nil || info.Exists {
		t.Fatalf("gone: Info %+v, %v; want dropped by the budget", info, err)
	}
	c := dial(t, tn.srv.URL+"/events?topic=gone", old.String())
	e := c.next(t)
	if e.Event != "sse-gap" || !strings.Contains(e.Data, `"requested":"`+old.String()+`"`) || !strings.Contains(e.Data, `"reset":true`) {
		t.Fatalf("first event %+v, want an sse-gap from %s with reset", e, old)
	}
	live := tn.publish(t, "gone", "", "new")
	if e := c.next(t); e.ID != live.String() || e.Data != "new" {
		t.Fatalf("next event %+v, want %s", e, live)
	}
}

// TestResetCountsEndedStreams: a stream a broker reset tells to close is
// counted as a stream_reset slow disconnect only if it ends for that
// reason, as sse_disconnects_total counts it: here its client leaves
// before its writer acts on the reset, so neither counts it. (The reset
// used to count it when it decided, and the two counters drifted apart.)
func TestResetCountsEndedStreams(t *testing.T) {
	n := newBareNode(t, Config{})
	s := &stream{topics: []string{"t"}, slots: make([]int, 1), pos: make([]pubsub.ID, 1), q: newQueue(4, 1<<20, false, func() {})}
	s.admitted.n = n
	n.hub.subscribe(s)
	n.reset("t")
	if got := s.ending(); got != reasonStreamReset {
		t.Fatalf("after the reset the stream is ending with %q, want %q", got, reasonStreamReset)
	}
	n.finish(s, reasonClientGone) // its client left first
	slow := testutil.ToFloat64(n.m.slowDisconnects.WithLabelValues(reasonStreamReset))
	all := testutil.ToFloat64(n.m.disconnects.WithLabelValues(reasonStreamReset))
	if slow != 0 || all != 0 {
		t.Fatalf("stream_reset counted %v as slow disconnects and %v as disconnects, want 0 and 0", slow, all)
	}
}
