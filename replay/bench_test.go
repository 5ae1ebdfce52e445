package replay

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

// BenchmarkAppend is the broker reader's cost per batch of 8 entries into a
// full ring.
func BenchmarkAppend(b *testing.B) {
	src := newFake()
	src.add("t", 1, 1024)
	w := newWindow(b, src, Config{RingSize: 1024})
	acquire(b, w, "t")
	batch := entries(0, 7)
	next := uint64(1025)
	b.ReportAllocs()
	for b.Loop() {
		for i := range batch {
			batch[i].ID = id(next)
			next++
		}
		w.Append("t", batch)
	}
}

// BenchmarkReplayRing replays 100 entries from a full ring.
func BenchmarkReplayRing(b *testing.B) {
	src := newFake()
	src.add("t", 1, 1024)
	w := newWindow(b, src, Config{RingSize: 1024})
	acquire(b, w, "t")
	emit := func(pubsub.Entry) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Replay(context.Background(), "t", id(924), nil, emit); err != nil {
			b.Fatal(err)
		}
	}
}

// benchTopics is the number of topics of the parallel benchmarks: enough
// that a lock per topic is rarely contended, as on a node with many topics.
const benchTopics = 64

// parallelWindow returns a window with benchTopics active topics of 1024
// entries each, and their names.
func parallelWindow(b *testing.B) (*Window, []string) {
	src := newFake()
	w := newWindow(b, src, Config{RingSize: 1024})
	topics := make([]string, benchTopics)
	for i := range topics {
		topics[i] = fmt.Sprint("t", i)
		src.add(topics[i], 1, 1024)
		acquire(b, w, topics[i])
	}
	return w, topics
}

// BenchmarkAppendParallel appends batches of 8 entries to many topics from
// parallel goroutines, each goroutine on its own topics, as the broker's
// reader goroutines do.
func BenchmarkAppendParallel(b *testing.B) {
	w, topics := parallelWindow(b)
	var worker atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// Topic k is only appended to by worker k mod workers, so IDs stay
		// increasing per topic.
		me := int(worker.Add(1)) - 1
		next := make(map[string]uint64)
		batch := entries(0, 7)
		i := me
		for pb.Next() {
			topic := topics[i%len(topics)]
			i += 7919 // a prime: workers walk different topics
			if next[topic] == 0 {
				next[topic] = 1<<32 + uint64(me)<<24
			}
			for j := range batch {
				batch[j].ID = id(next[topic])
				next[topic]++
			}
			w.Append(topic, batch)
		}
	})
}

// BenchmarkReplayRingParallel replays 100 entries from the full rings of
// many topics from parallel goroutines, as a reconnect storm does.
func BenchmarkReplayRingParallel(b *testing.B) {
	w, topics := parallelWindow(b)
	emit := func(pubsub.Entry) error { return nil }
	var worker atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(worker.Add(1))
		for pb.Next() {
			i++
			if _, err := w.Replay(context.Background(), topics[i%len(topics)], id(924), nil, emit); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
