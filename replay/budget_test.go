package replay

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// copyingSource is a Source whose pages hold fresh copies of the entries'
// data, as pages decoded from Redis replies do: every read costs its bytes
// in heap.
type copyingSource struct{ *fakeSource }

func (c copyingSource) Page(ctx context.Context, topic string, after pubsub.ID, count int) (pubsub.Page, error) {
	p, err := c.fakeSource.Page(ctx, topic, after, count)
	for i := range p.Entries {
		p.Entries[i].Data = append([]byte(nil), p.Entries[i].Data...)
	}
	return p, err
}

// heapPeak samples the live heap until stop is closed and returns the
// largest value seen.
func heapPeak(stop <-chan struct{}) uint64 {
	var peak uint64
	var ms runtime.MemStats
	for {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
		select {
		case <-stop:
			return peak
		case <-time.After(time.Millisecond):
		}
	}
}

// TestConcurrentBigReplaysHeap is issue 11's resume storm on big entries:
// 20 clients resume from 0-0 on a stream of 100 entries of 1 MiB with a
// ring of 16; every client gets all 100 in order, and the heap grows by
// the page budgets, not by clients times stream size.
func TestConcurrentBigReplaysHeap(t *testing.T) {
	const (
		clients = 20
		n       = 100
		size    = 1 << 20
	)
	src := newFake()
	for ms := uint64(1); ms <= n; ms++ {
		src.add("big", ms, ms)
	}
	src.mu.Lock()
	for i := range src.streams["big"].entries {
		src.streams["big"].entries[i].Data = make([]byte, size)
	}
	src.mu.Unlock()
	w := newWindow(t, copyingSource{src}, Config{RingSize: 16})
	acquire(t, w, "big")

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	stop := make(chan struct{})
	peakc := make(chan uint64)
	go func() { peakc <- heapPeak(stop) }()

	// Client c starts once client c-1 has its first entry, and every
	// client holds its second until all have their first: each one's
	// reads are its own (no shared flight) and all are alive at once, as
	// slow clients of a reconnect storm.
	var wg sync.WaitGroup
	var bad atomic.Int64
	var started sync.WaitGroup
	started.Add(clients)
	prev := make(chan struct{})
	close(prev)
	for c := range clients {
		mine := make(chan struct{})
		wait := prev
		prev = mine
		wg.Go(func() {
			<-wait
			var got uint64
			_, err := w.Replay(context.Background(), "big", pubsub.ID{}, nil, func(e pubsub.Entry) error {
				if e.ID.Ms != got+1 || len(e.Data) != size {
					bad.Add(1)
				}
				got = e.ID.Ms
				switch got {
				case 1:
					close(mine)
					started.Done()
				case 2:
					started.Wait()
				}
				return nil
			})
			if err != nil || got != n {
				t.Errorf("client %d: got up to %d of %d: %v", c, got, n, err)
			}
		})
	}
	wg.Wait()
	close(stop)
	peak := <-peakc
	if bad.Load() > 0 {
		t.Errorf("%d entries out of order or cut", bad.Load())
	}
	growth := int64(peak) - int64(base)
	t.Logf("heap growth peak %d MiB over %d MiB base (%d clients, %d x %d KiB, ring 16)", growth>>20, base>>20, clients, n, size>>10)
	if growth > 256<<20 {
		t.Errorf("heap grew by %d MiB, want at most 256 MiB", growth>>20)
	}
}
