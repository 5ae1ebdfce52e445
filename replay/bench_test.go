package replay

import (
	"context"
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
