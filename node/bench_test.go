package node

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// BenchmarkFanout measures one published event: encode once, append to the
// ring, hand to every subscriber's queue, and each writer taking its batch
// and releasing the frame (the socket write itself is left out). allocs/op
// must not grow with the number of subscribers.
func BenchmarkFanout(b *testing.B) {
	for _, subs := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			n := newBareNode(b, Config{})
			if err := n.window.Acquire(b.Context(), "bench"); err != nil {
				b.Fatal(err)
			}
			defer n.window.Release("bench")
			clients := make([]*stream, subs)
			for i := range clients {
				clients[i] = &stream{
					topics: []string{"bench"},
					slots:  make([]int, 1),
					pos:    make([]pubsub.ID, 1),
					q:      newQueue(64, 1<<20, false, func() {}),
				}
				n.hub.subscribe(clients[i])
			}
			entries := []pubsub.Entry{{Data: bytes.Repeat([]byte("x"), 100)}}
			batch := make([]*frame, 0, 64)
			// publish delivers one event and lets every writer take and
			// release it, as the writers do after the socket write.
			publish := func(id pubsub.ID) {
				entries[0].ID = id
				n.deliver("bench", entries)
				for _, c := range clients {
					batch, _, _ = c.q.take(batch[:0])
					for j, f := range batch {
						f.Release()
						batch[j] = nil
					}
				}
			}
			// One event before timing: each queue allocates its ring on
			// its first frame, once per client, not per event.
			publish(pubsub.ID{Ms: 1})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				publish(pubsub.ID{Ms: 1, Seq: uint64(i + 1)})
			}
			b.StopTimer()
			for _, c := range clients {
				n.hub.unsubscribe(c)
				c.q.close()
			}
		})
	}
}

// BenchmarkFanoutWake is BenchmarkFanout through the hijacked path's
// wake-ups: each subscriber's queue schedules its stream on the writer
// pool, whose writers gather the frame and write it to a connection that
// discards it. An op ends when every subscriber's chunk is written.
func BenchmarkFanoutWake(b *testing.B) {
	for _, subs := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			n := newBareNode(b, Config{Heartbeat: time.Hour})
			if err := n.Start(); err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			if err := n.window.Acquire(b.Context(), "bench"); err != nil {
				b.Fatal(err)
			}
			defer n.window.Release("bench")
			conn := &countConn{}
			streams := make([]*stream, subs)
			for i := range streams {
				s := &stream{
					topics: []string{"bench"},
					slots:  make([]int, 1),
					pos:    make([]pubsub.ID, 1),
				}
				s.q = newQueue(64, 1<<20, false, s.wake)
				n.pool.attach(s, conn)
				streams[i] = s
				n.hub.subscribe(s)
			}
			entries := []pubsub.Entry{{Data: bytes.Repeat([]byte("x"), 100)}}
			publish := func(i int) {
				entries[0].ID = pubsub.ID{Ms: 1, Seq: uint64(i)}
				n.deliver("bench", entries)
				for conn.chunks.Load() < int64(subs*i) {
					runtime.Gosched()
				}
			}
			publish(1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 2; b.Loop(); i++ {
				publish(i)
			}
			b.StopTimer()
			for _, s := range streams {
				n.hub.unsubscribe(s)
				n.streams.remove(s)
				s.q.close()
			}
		})
	}
}

// countConn is a connection that discards what is written to it and counts
// the chunks (their trailing CRLF piece).
type countConn struct {
	net.Conn
	chunks atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	if len(p) == len(crlf) && &p[0] == &crlf[0] {
		c.chunks.Add(1)
	}
	return len(p), nil
}
func (c *countConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkWriteBatch measures a writer's step turning a batch of queued
// frames into one write.
func BenchmarkWriteBatch(b *testing.B) {
	var sink discardSink
	n := &Node{cfg: Config{WriteTimeout: 1}, m: newMetrics(nil)}
	c := &stream{topics: []string{"t"}, pos: make([]pubsub.ID, 1)}
	frames := make([]*frame, 16)
	for i := range frames {
		frames[i] = encodeOne("t", &pubsub.Entry{ID: pubsub.ID{Ms: 1, Seq: uint64(i)}, Data: bytes.Repeat([]byte("x"), 100)})
	}
	c.q = newQueue(64, 1<<20, false, func() {})
	var batch []*frame
	w := new(wire)
	b.ReportAllocs()
	for b.Loop() {
		c.pos[0] = pubsub.ID{}
		for _, f := range frames {
			f.retain(1) // the queue's reference, which the write takes over
			c.q.push(f)
		}
		var reason string
		if reason, batch = n.step(c, w, batch, false); reason != "" {
			b.Fatal(reason)
		}
		if err := n.send(c, &sink, w); err != nil {
			b.Fatal(err)
		}
	}
}

// discardSink counts what is written; it keeps the bytes only when asked to.
type discardSink struct {
	n    int
	buf  []byte
	keep bool
}

func (d *discardSink) send(w *wire) error {
	for _, p := range w.pieces() {
		d.n += len(p)
		if d.keep {
			d.buf = append(d.buf, p...)
		}
	}
	return nil
}
func (d *discardSink) SetWriteDeadline(_ time.Time) error { return nil }
