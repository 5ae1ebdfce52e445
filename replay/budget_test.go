package replay

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
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

func (c copyingSource) Page(ctx context.Context, topic string, after pubsub.ID, count, maxBytes int) (pubsub.Page, error) {
	p, err := c.fakeSource.Page(ctx, topic, after, count, maxBytes)
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
// the page budgets, not by clients times stream size. Whether the node
// watches the topic (its ring knows the entries' size) or not (the source
// cuts the first page by bytes).
func TestConcurrentBigReplaysHeap(t *testing.T) {
	for _, watched := range []bool{true, false} {
		t.Run(fmt.Sprint("watched=", watched), func(t *testing.T) { bigReplaysHeap(t, watched) })
	}
}

func bigReplaysHeap(t *testing.T, watched bool) {
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
	if watched {
		acquire(t, w, "big")
	}

	// A low GC target keeps garbage out of the peak: what is measured is
	// what the replays hold, not the collector's pacing.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
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
	t.Logf("heap growth peak %d MiB over %d MiB base (%d clients, %d x %d KiB, ring 16), %d source reads", growth>>20, base>>20, clients, n, size>>10, src.ranges.Load())
	if growth > 256<<20 {
		t.Errorf("heap grew by %d MiB, want at most 256 MiB", growth>>20)
	}
}

// bigEvent pads entries: Entry.Size counts the event type, and collect
// checks only the data.
var bigEvent = strings.Repeat("e", 1000)

// bigSize is the Size of an entry of addBig.
var bigSize = (&pubsub.Entry{Data: []byte("10"), Event: bigEvent}).Size()

// addBig appends to src entries ms-0 for ms in [from, to] of bigSize bytes
// (for ms of two digits) and returns them.
func addBig(src *fakeSource, topic string, from, to uint64) []pubsub.Entry {
	es := src.add(topic, from, to)
	src.mu.Lock()
	defer src.mu.Unlock()
	held := src.streams[topic].entries
	for i := range es {
		es[i].Event = bigEvent
		held[len(held)-len(es)+i].Event = bigEvent
	}
	return es
}

// ringIDs returns the ms of the entries topic's ring holds.
func ringIDs(w *Window, topic string) []uint64 {
	var ids []uint64
	w.withRing(topic, func(st *topicState) {
		for i := range st.ring.n {
			ids = append(ids, st.ring.at(i).ID.Ms)
		}
	})
	return ids
}

// TestRingBudgetEvictsColdestFirst: once the rings exceed RingBytes, the
// oldest entries of the topic least recently appended to or read from
// leave first, down to 7/8 of the budget; the byte count is exact; and a
// resume below the raised floor is served whole from the source, with no
// gap (a raised floor is not a loss).
func TestRingBudgetEvictsColdestFirst(t *testing.T) {
	for _, tt := range []struct {
		name string
		read string // topic replayed from its ring before the overflow ("": none)
		want map[string][]uint64
	}{
		// a, b, c appended in that order: a is the coldest.
		{"append order", "", map[string][]uint64{"a": {13}, "b": seq(20, 23), "c": seq(30, 33)}},
		// Reading a's ring makes it warmer than b.
		{"read warms", "a", map[string][]uint64{"a": seq(10, 13), "b": {23}, "c": seq(30, 33)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			// 10 entries fit; the 11th sweeps down to 7/8: 3 leave.
			w := newWindow(t, src, Config{RingBytes: int64(10 * bigSize)})
			firsts := map[string]uint64{"a": 10, "b": 20, "c": 30}
			for _, topic := range []string{"a", "b", "c"} {
				addBig(src, topic, firsts[topic], firsts[topic]) // the ring loads it
				acquire(t, w, topic)
			}
			w.Append("a", addBig(src, "a", 11, 13))
			w.Append("b", addBig(src, "b", 21, 23))
			if tt.read != "" {
				collect(t, w, tt.read, id(firsts[tt.read]))
			}
			w.Append("c", addBig(src, "c", 31, 32)) // the 11th: a sweep
			w.Append("c", addBig(src, "c", 33, 33)) // 9 entries: no sweep
			for topic, want := range tt.want {
				if got := ringIDs(w, topic); !slices.Equal(got, want) {
					t.Errorf("ring %s holds %v, want %v", topic, got, want)
				}
			}
			st := w.Stats()
			if st.RingBytes != int64(9*bigSize) || st.RingBudget != int64(10*bigSize) || st.Evicted["budget"] != 3 {
				t.Errorf("stats %+v, want %d ring bytes of %d, 3 evicted by budget", st, 9*bigSize, 10*bigSize)
			}
			// Every topic resumes exactly from its first entry: from the
			// source below the raised floor, with no gap.
			for topic, first := range firsts {
				got, gaps, res := collect(t, w, topic, id(first))
				if want := seq(first+1, first+3); !slices.Equal(got, want) || len(gaps) != 0 {
					t.Errorf("resume %s after %d: %v, gaps %v; want %v and none", topic, first, got, gaps, want)
				}
				wantFrom := FromRing
				if len(tt.want[topic]) < 4 {
					wantFrom = FromRedis
				}
				if res.From != wantFrom {
					t.Errorf("resume %s served from %s, want %s", topic, res.From, wantFrom)
				}
			}
		})
	}
}

// TestRingBudgetEntryLargerThanBudget: an entry larger than RingBytes
// leaves the ring as it arrives; positions at it are still the ring's
// (nothing after it), those before it read it from the source.
func TestRingBudgetEntryLargerThanBudget(t *testing.T) {
	src := newFake()
	src.add("t", 1, 1)
	w := newWindow(t, src, Config{RingBytes: int64(bigSize / 2)})
	acquire(t, w, "t")
	w.Append("t", addBig(src, "t", 10, 10))
	if ids := ringIDs(w, "t"); len(ids) != 0 {
		t.Fatalf("ring holds %v, want nothing", ids)
	}
	if got, gaps, res := collect(t, w, "t", id(1)); !slices.Equal(got, []uint64{10}) || len(gaps) != 0 || res.From != FromRedis {
		t.Fatalf("resume after 1: %v, gaps %v, from %s; want [10] from the source, no gap", got, gaps, res.From)
	}
	if got, gaps, res := collect(t, w, "t", id(10)); len(got) != 0 || len(gaps) != 0 || res.From != FromRing {
		t.Fatalf("resume after 10: %v, gaps %v, from %s; want nothing from the ring", got, gaps, res.From)
	}
	// Entry 1 was coldest, then entry 10 itself.
	if st := w.Stats(); st.RingBytes != 0 || st.Evicted["budget"] != 2 {
		t.Fatalf("stats %+v, want 0 bytes, 2 evicted by budget", st)
	}
}

// TestPagesBoundedByBytes: ring pages stop at the entry that reaches
// PageBytes, and source reads ask for as many entries as PageBytes holds
// by the ring's mean entry size; an entry larger than PageBytes is a page
// alone.
func TestPagesBoundedByBytes(t *testing.T) {
	for _, tt := range []struct {
		name      string
		pageBytes int
		ring      int // entries per ring page: up to the one reaching the bound
		source    int // entries per source page: those that fit
	}{
		{"three fit", 3 * bigSize, 3, 3},
		{"two and a half", 5 * bigSize / 2, 3, 2},
		{"larger than the bound", bigSize / 2, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			addBig(src, "t", 10, 10)
			w := newWindow(t, src, Config{RingSize: 8, PageBytes: tt.pageBytes})
			acquire(t, w, "t")
			w.Append("t", addBig(src, "t", 11, 29))
			// Ring pages.
			w.withRing("t", func(st *topicState) { st.checkedAt = w.now() })
			page, covered, _, mean := w.ringPage("t", id(22), nil, false)
			if !covered || len(page) != tt.ring || mean != bigSize {
				t.Errorf("ring page: covered %v, %d entries, mean %d; want %d entries, mean %d", covered, len(page), mean, tt.ring, bigSize)
			}
			// Source pages, below the ring's floor.
			got, gaps, _ := collect(t, w, "t", id(10))
			if !slices.Equal(got, seq(11, 29)) || len(gaps) != 0 {
				t.Errorf("resume after 10: %v, gaps %v", got, gaps)
			}
			if c := src.maxCount.Load(); c != int64(tt.source) {
				t.Errorf("source pages asked for up to %d entries, want %d", c, tt.source)
			}
		})
	}
}

// TestRingBytesFollowTopics: the rings' byte count goes back to zero when
// topics are reset and released.
func TestRingBytesFollowTopics(t *testing.T) {
	src := newFake()
	w := newWindow(t, src, Config{})
	for _, topic := range []string{"a", "b"} {
		addBig(src, topic, 10, 19)
		if err := w.Acquire(t0ctx, topic); err != nil {
			t.Fatal(err)
		}
		w.Append(topic, addBig(src, topic, 20, 29))
	}
	if got := w.Stats().RingBytes; got != int64(40*bigSize) {
		t.Fatalf("%d ring bytes, want %d", got, 40*bigSize)
	}
	w.Reset("a")
	if got := w.Stats().RingBytes; got != int64(20*bigSize) {
		t.Fatalf("after a reset: %d ring bytes, want %d", got, 20*bigSize)
	}
	w.Release("a")
	w.Release("b")
	if got := w.Stats().RingBytes; got != 0 {
		t.Fatalf("after releasing every topic: %d ring bytes, want 0", got)
	}
}

// TestRingBudgetConcurrentTopics: appends, resumes, acquires and releases
// of many topics at once, with a budget that keeps sweeping across them
// (run it with -race): every resume from 0-0 gets every entry up to the
// newest the window had seen when it started, in order, with no gap, and
// the budget holds.
func TestRingBudgetConcurrentTopics(t *testing.T) {
	const (
		topics  = 8
		entries = 200
	)
	src := newFake()
	w := newWindow(t, src, Config{RingSize: 64, RingBytes: int64(40 * bigSize), PageSize: 16})
	var wg sync.WaitGroup
	for k := range topics {
		topic := fmt.Sprint("t", k)
		addBig(src, topic, 10, 10)
		acquire(t, w, topic)
		wg.Go(func() { // the broker's reader for topic
			for ms := uint64(11); ms < 11+entries; ms++ {
				w.Append(topic, addBig(src, topic, ms, ms))
			}
		})
		wg.Go(func() { // clients resuming, and a second subscriber coming and going
			for range 20 {
				// The window has seen up to last; what the reader has not
				// delivered yet comes live.
				last, _ := w.Last(topic)
				got, gaps, _ := collect(t, w, topic, pubsub.ID{})
				if len(gaps) != 0 || len(got) == 0 || got[len(got)-1] < last.Ms || !slices.Equal(got, seq(10, got[len(got)-1])) {
					t.Errorf("%s: resume from 0-0 got %v, gaps %v; want 10 to at least %d", topic, got, gaps, last.Ms)
					return
				}
				if err := w.Acquire(t0ctx, topic); err != nil {
					t.Error(err)
					return
				}
				w.Release(topic)
			}
		})
	}
	wg.Wait()
	if st := w.Stats(); st.RingBytes > st.RingBudget || st.Evicted["budget"] == 0 {
		t.Fatalf("stats %+v: want the budget held, with evictions", st)
	}
}

// TestRingLoadsHeldToBudget: ring loads hold their bytes against RingBytes
// before they read, so that the tails of loads in flight and the rings
// together never pass it (a load takes what is left, nothing when nothing
// is), at most PageBytes each; a topic loaded without its history still
// resumes whole, from the source.
func TestRingLoadsHeldToBudget(t *testing.T) {
	const topics = 4
	src := newFake()
	for i := range topics {
		addBig(src, fmt.Sprint("t", i), 10, 17) // 8 entries each
	}
	// Every load waits inside Watch until all have entered: all tails are
	// in flight at once.
	var entered sync.WaitGroup
	entered.Add(topics)
	src.onWatch = func(ctx context.Context, topic string) {
		entered.Done()
		entered.Wait()
	}
	budget := int64(10 * bigSize)
	w := newWindow(t, src, Config{RingBytes: budget, PageBytes: 6 * bigSize})
	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() { acquire(t, w, fmt.Sprint("t", i)) })
	}
	wg.Wait()
	if got := src.tailBytes.Load(); got > budget {
		t.Errorf("loads in flight at once read tails of %d bytes, budget %d", got, budget)
	}
	loaded := 0
	for i := range topics {
		n := len(ringIDs(w, fmt.Sprint("t", i)))
		if n > 6 {
			t.Errorf("t%d loaded %d entries, PageBytes holds 6", i, n)
		}
		loaded += n
	}
	// 6 + 4: the first loads take PageBytes, then what is left.
	if st := w.Stats(); loaded != 10 || st.RingBytes != int64(loaded*bigSize) || st.Evicted["budget"] != 0 {
		t.Errorf("%d entries loaded, stats %+v: want 10 loaded, none evicted", loaded, st)
	}
	for i := range topics {
		ids, gaps, _ := collect(t, w, fmt.Sprint("t", i), pubsub.ID{})
		if !slices.Equal(ids, seq(10, 17)) || len(gaps) != 0 {
			t.Errorf("t%d resumed from 0: %v, gaps %v; want 10..17", i, ids, gaps)
		}
	}
}

// TestRingBufferShrinksAfterEviction: a ring the budget emptied gives its
// buffer back (the budget counts held entries, not slots).
func TestRingBufferShrinksAfterEviction(t *testing.T) {
	src := newFake()
	w := newWindow(t, src, Config{RingSize: 64, RingBytes: int64(40 * bigSize)})
	acquire(t, w, "cold")
	acquire(t, w, "hot")
	w.Append("cold", addBig(src, "cold", 10, 49)) // 40 entries: 64 slots
	w.Append("hot", addBig(src, "hot", 10, 49))   // over budget: cold leaves
	w.withRing("cold", func(st *topicState) {
		if st.ring.n != 0 || len(st.ring.buf) != 0 {
			t.Errorf("cold ring holds %d entries in %d slots, want none", st.ring.n, len(st.ring.buf))
		}
	})
	w.withRing("hot", func(st *topicState) {
		if len(st.ring.buf) > max(2*st.ring.n, minRingAlloc) || len(st.ring.buf) < st.ring.n {
			t.Errorf("hot ring holds %d entries in %d slots", st.ring.n, len(st.ring.buf))
		}
	})
}
