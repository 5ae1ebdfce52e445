package replay

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// ringState returns the ms of the ring's entries and its floor.
func ringState(t testing.TB, w *Window, topic string) (ms []uint64, floor pubsub.ID) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.topics[topic]
	if st == nil {
		t.Fatalf("topic %q not in the window", topic)
	}
	for i := 0; i < st.ring.n; i++ {
		ms = append(ms, st.ring.at(i).ID.Ms)
	}
	return ms, st.ring.floor
}

func TestRingPushWrapGrow(t *testing.T) {
	r := ring{max: 40}
	for ms := uint64(1); ms <= 100; ms++ {
		e := entry(ms)
		r.push(&e)
		if r.n != min(int(ms), 40) {
			t.Fatalf("after %d pushes n = %d", ms, r.n)
		}
		if len(r.buf) > r.max {
			t.Fatalf("buffer grew to %d past max %d", len(r.buf), r.max)
		}
		for i := 0; i < r.n; i++ {
			if want := ms - uint64(r.n) + 1 + uint64(i); r.at(i).ID.Ms != want {
				t.Fatalf("after %d pushes at(%d) = %d, want %d", ms, i, r.at(i).ID.Ms, want)
			}
		}
	}
	if r.floor != id(60) {
		t.Errorf("floor = %s, want 60-0 (newest evicted)", r.floor)
	}
	if got := r.after(id(70)); got != 10 {
		t.Errorf("after(70) = %d, want 10", got)
	}
	if got := r.after(id(1)); got != 0 {
		t.Errorf("after(1) = %d, want 0", got)
	}
	if got := r.after(id(100)); got != r.n {
		t.Errorf("after(100) = %d, want %d", got, r.n)
	}
}

func TestRingLoadFloor(t *testing.T) {
	tests := []struct {
		name      string
		stream    uint64 // entries 1..stream in the source; 0 for none
		ringSize  int
		wantRing  []uint64
		wantFloor pubsub.ID
	}{
		{name: "empty stream", stream: 0, ringSize: 4, wantRing: nil, wantFloor: pubsub.ID{}},
		{name: "short stream", stream: 3, ringSize: 4, wantRing: seq(1, 3), wantFloor: id(1)},
		{name: "full tail", stream: 10, ringSize: 4, wantRing: seq(7, 10), wantFloor: id(7)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			if tt.stream > 0 {
				src.add("t", 1, tt.stream)
			}
			w := newWindow(t, src, Config{RingSize: tt.ringSize})
			acquire(t, w, "t")
			ms, floor := ringState(t, w, "t")
			if !slices.Equal(ms, tt.wantRing) || floor != tt.wantFloor {
				t.Fatalf("ring %v floor %s, want %v floor %s", ms, floor, tt.wantRing, tt.wantFloor)
			}
			if last, ok := w.Last("t"); !ok || last != id(tt.stream) {
				t.Errorf("Last = %s %v, want %s", last, ok, id(tt.stream))
			}
		})
	}
}

func TestRingLoadEmptyTailWithLast(t *testing.T) {
	// A stream trimmed to nothing still has a Last: floor is Tail.Last, so
	// positions at or after it are covered and older ones are not.
	src := newFake()
	src.add("t", 1, 5)
	src.trim("t", id(5))
	w := newWindow(t, src, Config{RingSize: 4})
	acquire(t, w, "t")
	if ms, floor := ringState(t, w, "t"); len(ms) != 0 || floor != id(5) {
		t.Fatalf("ring %v floor %s, want empty, floor 5-0", ms, floor)
	}
	w.Append("t", src.add("t", 6, 7))
	got, gaps, res := collect(t, w, "t", id(5))
	if !slices.Equal(got, seq(6, 7)) || len(gaps) != 0 || res.From != FromRing {
		t.Fatalf("replay after 5 = %v gaps %v from %s", got, gaps, res.From)
	}
}

func TestRingCapacityEviction(t *testing.T) {
	src := newFake()
	src.add("t", 1, 4)
	w := newWindow(t, src, Config{RingSize: 4})
	acquire(t, w, "t")
	w.Append("t", src.add("t", 5, 6))
	ms, floor := ringState(t, w, "t")
	if !slices.Equal(ms, seq(3, 6)) || floor != id(2) {
		t.Fatalf("ring %v floor %s, want [3..6] floor 2-0", ms, floor)
	}
	// Covered: floor and above, up to the newest.
	for _, after := range []uint64{2, 3, 6} {
		if _, _, res := collect(t, w, "t", id(after)); res.From != FromRing {
			t.Errorf("after %d served from %s, want ring", after, res.From)
		}
	}
	// Below floor: the source.
	if _, _, res := collect(t, w, "t", id(1)); res.From != FromRedis {
		t.Errorf("after 1 served from %s, want redis", res.From)
	}
}

func TestRingAgeEviction(t *testing.T) {
	now := time.UnixMilli(1000)
	clock := func() time.Time { return now }
	src := newFake()
	src.add("t", 1, 10) // entry ms == its time in Unix ms
	w := newWindow(t, src, Config{RingSize: 100, MaxAge: 995 * time.Millisecond, Now: clock})
	acquire(t, w, "t") // cutoff 5: entries 1..4 evicted at load
	if ms, floor := ringState(t, w, "t"); !slices.Equal(ms, seq(5, 10)) || floor != id(4) {
		t.Fatalf("after load ring %v floor %s, want [5..10] floor 4-0", ms, floor)
	}
	now = time.UnixMilli(1008) // cutoff 13: everything is too old
	w.Append("t", src.add("t", 11, 13))
	if ms, floor := ringState(t, w, "t"); !slices.Equal(ms, []uint64{13}) || floor != id(12) {
		t.Fatalf("after append ring %v floor %s, want [13] floor 12-0", ms, floor)
	}
	now = time.UnixMilli(1100) // a Replay evicts too, even with no Append
	got, gaps, res := collect(t, w, "t", id(12))
	if ms, floor := ringState(t, w, "t"); len(ms) != 0 || floor != id(13) {
		t.Fatalf("after replay ring %v floor %s, want empty floor 13-0", ms, floor)
	}
	// 12 is below the new floor: served by the source, which still has 13.
	if !slices.Equal(got, []uint64{13}) || len(gaps) != 0 || res.From != FromRedis {
		t.Fatalf("replay after 12 = %v gaps %v from %s", got, gaps, res.From)
	}
	if last, _ := w.Last("t"); last != id(13) {
		t.Errorf("Last = %s after eviction, want 13-0", last)
	}
}

func TestRingAppendDuringLoad(t *testing.T) {
	tests := []struct {
		name      string
		ringSize  int
		stream    uint64   // entries 1..stream exist when the tail is read
		during    []uint64 // delivered while Watch is in flight
		late      []uint64 // delivered before the tail is read (late deliveries of an earlier watch)
		wantRing  []uint64
		wantFloor pubsub.ID
		wantLast  pubsub.ID
	}{
		{name: "all fit", ringSize: 10, stream: 5, during: seq(6, 8),
			wantRing: seq(1, 8), wantFloor: id(1), wantLast: id(8)},
		{name: "tail trimmed", ringSize: 5, stream: 5, during: seq(6, 8),
			wantRing: seq(4, 8), wantFloor: id(3), wantLast: id(8)},
		{name: "deliveries overflow", ringSize: 3, stream: 5, during: seq(6, 10),
			wantRing: seq(8, 10), wantFloor: id(7), wantLast: id(10)},
		{name: "exactly full of deliveries", ringSize: 3, stream: 5, during: seq(6, 8),
			wantRing: seq(6, 8), wantFloor: id(5), wantLast: id(8)},
		{name: "empty stream", ringSize: 4, stream: 0, during: seq(1, 2),
			wantRing: seq(1, 2), wantFloor: pubsub.ID{}, wantLast: id(2)},
		{name: "late deliveries dropped", ringSize: 10, stream: 5, late: []uint64{3, 4}, during: seq(6, 7),
			wantRing: seq(1, 7), wantFloor: id(1), wantLast: id(7)},
		{name: "late deliveries overflow", ringSize: 3, stream: 5, late: []uint64{2, 3, 4, 5}, during: seq(6, 7),
			wantRing: seq(5, 7), wantFloor: id(4), wantLast: id(7)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			if tt.stream > 0 {
				src.add("t", 1, tt.stream)
			}
			var w *Window
			var lastDuringLoad bool
			src.onWatch = func(_ context.Context, topic string) {
				for _, ms := range tt.late {
					w.Append(topic, []pubsub.Entry{entry(ms)})
				}
			}
			src.afterTail = func(topic string) {
				for _, ms := range tt.during {
					w.Append(topic, src.add(topic, ms, ms))
				}
				_, lastDuringLoad = w.Last(topic)
			}
			w = newWindow(t, src, Config{RingSize: tt.ringSize})
			acquire(t, w, "t")
			if lastDuringLoad {
				t.Error("Last reported ok while loading")
			}
			ms, floor := ringState(t, w, "t")
			if !slices.Equal(ms, tt.wantRing) || floor != tt.wantFloor {
				t.Fatalf("ring %v floor %s, want %v floor %s", ms, floor, tt.wantRing, tt.wantFloor)
			}
			if last, ok := w.Last("t"); !ok || last != tt.wantLast {
				t.Errorf("Last = %s %v, want %s", last, ok, tt.wantLast)
			}
			// Whatever the ring holds, a replay from 0 is exact.
			if got, _, _ := collect(t, w, "t", pubsub.ID{}); !slices.Equal(got, seq(1, tt.wantLast.Ms)) {
				t.Errorf("replay from 0 = %v, want 1..%d", got, tt.wantLast.Ms)
			}
		})
	}
}

func TestAppendIgnoresInactiveAndOld(t *testing.T) {
	src := newFake()
	src.add("t", 1, 3)
	w := newWindow(t, src, Config{RingSize: 8})
	w.Append("t", entries(4, 5)) // not active: ignored
	if _, ok := w.Last("t"); ok {
		t.Fatal("Last ok for a topic never acquired")
	}
	acquire(t, w, "t")
	w.Append("t", entries(2, 3)) // not newer than Tail.Last: ignored
	w.Append("t", []pubsub.Entry{entry(4), entry(4), entry(3), entry(5)})
	if ms, _ := ringState(t, w, "t"); !slices.Equal(ms, seq(1, 5)) {
		t.Fatalf("ring %v, want 1..5", ms)
	}
}

func TestAppendDoesNotAllocate(t *testing.T) {
	src := newFake()
	src.add("t", 1, 64)
	w := newWindow(t, src, Config{RingSize: 64, MaxAge: time.Hour, Now: func() time.Time { return time.UnixMilli(0) }})
	acquire(t, w, "t")
	batch := []pubsub.Entry{entry(0), entry(0)}
	next := uint64(65)
	allocs := testing.AllocsPerRun(1000, func() {
		batch[0].ID, batch[1].ID = id(next), id(next+1)
		next += 2
		w.Append("t", batch)
	})
	if allocs != 0 {
		t.Errorf("Append into a full ring allocates %.1f times per call", allocs)
	}
}
