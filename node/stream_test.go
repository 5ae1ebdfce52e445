package node

import (
	"bytes"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// The writer step, driven without HTTP: what it decides and what it
// gathers for the sink.
func TestStep(t *testing.T) {
	entry := func(seq uint64) *pubsub.Entry {
		return &pubsub.Entry{ID: pubsub.ID{Ms: 1, Seq: seq}, Data: []byte("d")}
	}
	tests := []struct {
		name      string
		queued    int       // frames pushed, IDs 1-1, 1-2, ...
		pos       pubsub.ID // the client's position
		prev      pubsub.ID // what the first frame continues from (zero: unknown)
		heartbeat bool      // a heartbeat is due
		setup     func(*Node, *stream)
		reason    string
		want      string
	}{
		{name: "frames", queued: 2, want: "id: 1-1\ndata: d\n\nid: 1-2\ndata: d\n\n"},
		{name: "frames, heartbeat due", queued: 1, heartbeat: true, want: "id: 1-1\ndata: d\n\n"},
		{name: "heartbeat", heartbeat: true, want: "\n\n"},
		{name: "nothing"},
		{name: "frames already had", queued: 2, pos: pubsub.ID{Ms: 1, Seq: 2}},
		{name: "frames already had, heartbeat due", queued: 1, pos: pubsub.ID{Ms: 1, Seq: 1}, heartbeat: true, want: "\n\n"},
		{name: "drain", queued: 1, setup: func(n *Node, _ *stream) { n.draining.Store(true) }, reason: reasonDrain},
		{name: "closed", queued: 1, setup: func(n *Node, c *stream) { n.closeStream(c, reasonMaxAge) }, reason: reasonMaxAge},
		{name: "overflow", queued: 3, reason: reasonSlowClient},
		{name: "frames continue from the position", queued: 2, pos: pubsub.ID{Ms: 1}, prev: pubsub.ID{Ms: 1}, want: "id: 1-1\ndata: d\n\nid: 1-2\ndata: d\n\n"},
		{name: "frames continue from past the position", queued: 2, pos: pubsub.ID{Seq: 5}, prev: pubsub.ID{Ms: 1}, reason: reasonStreamReset},
		{name: "frames continue from inside the position's frame", queued: 2, pos: pubsub.ID{Ms: 1, Seq: 1}, prev: pubsub.ID{Ms: 1}, want: "id: 1-2\ndata: d\n\n"},
		{name: "no position takes any frame", queued: 2, prev: pubsub.ID{Ms: 1}, want: "id: 1-1\ndata: d\n\nid: 1-2\ndata: d\n\n"},
		{name: "after a reset gap, frames that continue from the start", queued: 2, prev: pubsub.ID{Seq: 0}, setup: func(_ *Node, c *stream) { c.restart(0) }, want: "id: 1-1\ndata: d\n\nid: 1-2\ndata: d\n\n"},
		{name: "after a reset gap, frames that continue from past the start", queued: 2, prev: pubsub.ID{Ms: 1}, setup: func(_ *Node, c *stream) { c.restart(0) }, reason: reasonStreamReset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{m: newMetrics(nil)}
			c := &stream{topics: []string{"t"}, pos: []pubsub.ID{tt.pos}}
			c.q = newQueue(2, 1<<20, false, func() {})
			var frames []*frame
			prev := tt.prev
			for i := range tt.queued {
				f := encodeOne("t", entry(uint64(i+1)))
				if !prev.IsZero() {
					f.prev, prev = prev, f.ID()
				}
				f.retain(1) // the queue's, given back if it refuses (as fan-out does)
				if c.q.push(f) != accepted {
					f.Release()
				}
				frames = append(frames, f)
			}
			if tt.setup != nil {
				tt.setup(n, c)
			}
			var w wire
			reason, _ := n.step(c, &w, nil, tt.heartbeat)
			var s discardSink
			s.keep = true
			_ = s.send(&w)
			w.reset()
			if reason != tt.reason || string(s.buf) != tt.want {
				t.Fatalf("step: reason %q, wrote %q; want %q, %q", reason, s.buf, tt.reason, tt.want)
			}
			// Every reference the queue or the write took is given back.
			c.q.close()
			for i, f := range frames {
				if got := f.refs.Load(); got != 1 {
					t.Errorf("frame %d holds %d references after the step, want the caller's 1", i, got)
				}
				f.Release()
			}
		})
	}
}

// TestSendAfterOverflow: once a stream's queue has overflowed, a write
// that follows (the next page of a replay, a slow write's finisher) is not
// made, and ends the stream as the overflow: schedule cut the stuck write
// by moving its deadline to now, and the deadline a later write sets must
// not undo that cut for a whole write timeout.
func TestSendAfterOverflow(t *testing.T) {
	n := &Node{m: newMetrics(nil), cfg: Config{WriteTimeout: time.Minute}}
	c := &stream{topics: []string{"t"}, pos: make([]pubsub.ID, 1)}
	c.q = newQueue(1, 1<<20, false, func() {})
	for range 2 {
		f := encodeOne("t", &pubsub.Entry{ID: pubsub.ID{Ms: 1}, Data: []byte("d")})
		f.retain(1)
		if c.q.push(f) != accepted {
			f.Release()
		}
		f.Release()
	}
	w := new(wire)
	w.add([]byte("id: 0-1\ndata: replayed\n\n"))
	var sink discardSink
	err := n.send(c, &sink, w)
	if !errors.Is(err, errOverflow) || sink.n != 0 {
		t.Fatalf("send after an overflow: err %v, %d bytes written; want errOverflow and nothing", err, sink.n)
	}
	if got := n.writeFailed(c, err); got != reasonSlowClient {
		t.Fatalf("ended as %q, want %q", got, reasonSlowClient)
	}
	c.q.close()
}

// TestStepNeverSendsPastAReset: a stream reset closes the topic's streams
// (Node.reset), then the frames of the new history are fanned out; they
// continue from an unknown position, so a writer must never send one. The
// reset races the writer's step here, many times over.
func TestStepNeverSendsPastAReset(t *testing.T) {
	n := &Node{m: newMetrics(nil)}
	before := encodeOne("t", &pubsub.Entry{ID: pubsub.ID{Ms: 1, Seq: 1}, Data: []byte("before")})
	after := encodeOne("t", &pubsub.Entry{ID: pubsub.ID{Ms: 1, Seq: 3}, Data: []byte("after")})
	defer before.Release()
	defer after.Release()
	var w wire
	var batch []*frame
	sent := 0
	for i := range 10000 {
		c := &stream{topics: []string{"t"}, pos: make([]pubsub.ID, 1)}
		c.q = newQueue(8, 1<<20, false, func() {})
		before.retain(1)
		c.q.push(before)
		var started atomic.Bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			started.Store(true)
			for range i % 16 { // a different interleaving each time
				runtime.Gosched()
			}
			n.closeStream(c, reasonStreamReset)
			after.retain(1)
			if c.q.push(after) != accepted {
				after.Release()
			}
		}()
		for !started.Load() {
			runtime.Gosched()
		}
		var reason string
		reason, batch = n.step(c, &w, batch, false)
		<-done
		if reason == "" {
			if c.pos[0] == after.ID() {
				t.Fatalf("iteration %d: a frame fanned out after the reset was sent", i)
			}
			sent++
		}
		w.reset()
		c.q.close()
	}
	t.Logf("%d of 10000 steps ran before the reset", sent)
}

// TestFanoutWakesOncePerBatch: entries the broker delivers together, too
// large for one frame, reach each subscriber's queue together, with one
// wake-up, so its writer sends them in one chunk instead of the first
// frame alone (fan-out used to push frame by frame, waking every
// subscriber on the first).
func TestFanoutWakesOncePerBatch(t *testing.T) {
	n := newBareNode(t, Config{})
	if err := n.window.Acquire(t.Context(), "t"); err != nil {
		t.Fatal(err)
	}
	defer n.window.Release("t")
	wakes := make([]int, 3)
	var taken [][]*frame
	for i := range wakes {
		s := &stream{topics: []string{"t"}, slots: make([]int, 1), pos: make([]pubsub.ID, 1)}
		s.q = newQueue(64, 1<<20, false, func() {
			// What a writer woken now would find.
			wakes[i]++
			got, _, _ := s.q.take(nil)
			taken = append(taken, got)
		})
		n.hub.subscribe(s)
		defer n.hub.unsubscribe(s)
	}
	var entries []pubsub.Entry
	for seq := range uint64(3) {
		// 10 KiB each: a frame holds at most maxBatchBytes, so three.
		entries = append(entries, pubsub.Entry{ID: pubsub.ID{Ms: 1, Seq: seq + 1}, Data: bytes.Repeat([]byte("d"), 10<<10)})
	}
	n.deliver("t", entries)
	for i, w := range wakes {
		if w != 1 {
			t.Errorf("subscriber %d woken %d times, want once", i, w)
		}
	}
	for i, got := range taken {
		if len(got) != 3 {
			t.Errorf("wake-up %d found %d frames, want the batch of 3", i, len(got))
		}
		for _, f := range got {
			f.Release()
		}
	}
}

// TestRetryLineRange: every stream's retry: lies in [Retry, 2*Retry), in
// whole milliseconds. (It was drawn from [Retry, 2*Retry+1ms): one stream
// in 2,001 got exactly 2*Retry, which a conformance check caught.) With
// Retry 2 ms the old draw gave 4 ms a third of the time.
func TestRetryLineRange(t *testing.T) {
	n := &Node{cfg: Config{Retry: 2 * time.Millisecond}}
	for range 1000 {
		line := string(n.retryLine())
		ms, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(line, "retry: "), "\n"))
		if err != nil || ms < 2 || ms >= 4 {
			t.Fatalf("retry line %q, want retry: 2 or 3 (ms)", line)
		}
	}
}
