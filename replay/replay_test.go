package replay

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestReplayFromRing(t *testing.T) {
	src := newFake()
	src.add("t", 1, 50)
	now := time.Unix(1e6, 0) // still: one ring check serves every replay
	w := newWindow(t, src, Config{RingSize: 100, PageSize: 7, Now: func() time.Time { return now }})
	acquire(t, w, "t")
	w.Append("t", src.add("t", 51, 60))
	tests := []struct {
		after uint64
		want  []uint64
	}{
		{1, seq(2, 60)},
		{30, seq(31, 60)},
		{59, []uint64{60}},
		{60, nil},
	}
	for _, tt := range tests {
		got, gaps, res := collect(t, w, "t", id(tt.after))
		if !slices.Equal(got, tt.want) || len(gaps) != 0 || res.Gap != nil {
			t.Errorf("after %d: got %v gaps %v, want %v", tt.after, got, gaps, tt.want)
		}
		wantLast := id(tt.after)
		if len(tt.want) > 0 {
			wantLast = id(tt.want[len(tt.want)-1])
		}
		if res.From != FromRing || res.Count != len(tt.want) || res.Last != wantLast {
			t.Errorf("after %d: result %+v", tt.after, res)
		}
	}
	// The ring is checked against the stream once; the check stands for
	// the replays that follow within infoReuse (the clock does not move).
	if r, i := src.ranges.Load(), src.infos.Load(); r != 0 || i != 1 {
		t.Errorf("ring replays made %d Page and %d Info calls, want 0 and 1", r, i)
	}
}

func TestReplayFromSourceInPages(t *testing.T) {
	src := newFake()
	src.add("t", 1, 10000)
	w := newWindow(t, src, Config{PageSize: 100})
	for _, after := range []uint64{0, 1, 4321} {
		src.ranges.Store(0)
		got, gaps, res := collect(t, w, "t", id(after))
		if !slices.Equal(got, seq(after+1, 10000)) {
			t.Fatalf("after %d: %d entries, not the exact sequence %d..10000", after, len(got), after+1)
		}
		if len(gaps) != 0 || res.From != FromRedis || res.Count != len(got) || res.Last != id(10000) {
			t.Errorf("after %d: gaps %v result %+v", after, gaps, res)
		}
		// Full pages, then one that comes back short (here empty).
		if want := int64((10000-after)/100 + 1); src.ranges.Load() != want {
			t.Errorf("after %d: %d Range calls, want %d", after, src.ranges.Load(), want)
		}
	}
	if m := src.maxCount.Load(); m != 100 {
		t.Errorf("largest Range count %d, want PageSize 100", m)
	}
}

func TestReplayHandsOverToRing(t *testing.T) {
	src := newFake()
	src.add("t", 1, 1000)
	w := newWindow(t, src, Config{RingSize: 100, PageSize: 30})
	acquire(t, w, "t") // ring 901..1000, floor 901
	// Live entries keep arriving while the client replays.
	var got []uint64
	next := uint64(1001)
	res, err := w.Replay(context.Background(), "t", id(0), nil, func(e pubsub.Entry) error {
		got = append(got, e.ID.Ms)
		if e.ID.Ms%10 == 0 && next <= 1100 {
			w.Append("t", src.add("t", next, next+4))
			next += 5
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, seq(1, next-1)) {
		t.Fatalf("replayed %d entries ending %v, want exactly 1..%d", len(got), got[max(0, len(got)-3):], next-1)
	}
	if res.From != FromRedis || res.Last != id(next-1) {
		t.Errorf("result %+v", res)
	}
	// The source served up to the ring's floor and no further.
	if n := src.ranges.Load(); n > 1000/30+1 {
		t.Errorf("%d Range calls: the ring was not used", n)
	}
}

func TestReplayRingEvictedUnderIt(t *testing.T) {
	src := newFake()
	src.add("t", 1, 20)
	w := newWindow(t, src, Config{RingSize: 20, PageSize: 5})
	acquire(t, w, "t") // ring 1..20, floor 1
	var got []uint64
	flooded := false
	_, err := w.Replay(context.Background(), "t", id(1), nil, func(e pubsub.Entry) error {
		got = append(got, e.ID.Ms)
		if !flooded { // after the first ring page, push the ring far past the cursor
			flooded = true
			w.Append("t", src.add("t", 21, 100))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, seq(2, 100)) {
		t.Fatalf("replayed %v, want 2..100 exactly", got)
	}
	if src.ranges.Load() == 0 {
		t.Error("the source was never read after the ring was evicted under the replay")
	}
}

func TestReplayGaps(t *testing.T) {
	type setup func(src *fakeSource)
	trimmedTo := func(upTo uint64) setup {
		return func(src *fakeSource) { src.add("t", 1, 100); src.trim("t", id(upTo)) }
	}
	tests := []struct {
		name     string
		setup    setup
		after    pubsub.ID
		wantGap  *Gap
		want     []uint64
		wantLast pubsub.ID
	}{
		{name: "intact", setup: trimmedTo(0), after: id(90), want: seq(91, 100), wantLast: id(100)},
		{name: "trimmed past position", setup: trimmedTo(50), after: id(10),
			wantGap: &Gap{Topic: "t", Requested: id(10), Oldest: id(51)}, want: seq(51, 100), wantLast: id(100)},
		{name: "trimmed exactly to position", setup: trimmedTo(50), after: id(50),
			want: seq(51, 100), wantLast: id(100)},
		// 50-1 was never an entry: entries up to 50-0 were removed, 51-0
		// is the first held.
		{name: "position never an entry, below first", setup: trimmedTo(50), after: pubsub.ID{Ms: 50, Seq: 1},
			wantGap: &Gap{Topic: "t", Requested: pubsub.ID{Ms: 50, Seq: 1}, Oldest: id(51)}, want: seq(51, 100), wantLast: id(100)},
		// 0-0 is before the stream's first entry: what was trimmed since
		// is a gap (the node hands 0-0 out for a topic that was empty).
		{name: "zero, trimmed since", setup: trimmedTo(50), after: pubsub.ID{},
			wantGap: &Gap{Topic: "t", Requested: pubsub.ID{}, Oldest: id(51)}, want: seq(51, 100), wantLast: id(100)},
		{name: "zero, nothing removed", setup: trimmedTo(0), after: pubsub.ID{},
			want: seq(1, 100), wantLast: id(100)},
		{name: "everything trimmed", setup: trimmedTo(100), after: id(10),
			wantGap: &Gap{Topic: "t", Requested: id(10), Oldest: pubsub.ID{}}, want: nil, wantLast: id(10)},
		{name: "lost stream", setup: func(src *fakeSource) {}, after: id(10),
			wantGap: &Gap{Topic: "t", Requested: id(10), Reset: true}, want: nil, wantLast: pubsub.ID{}},
		{name: "lost stream zero", setup: func(src *fakeSource) {}, after: pubsub.ID{},
			want: nil, wantLast: pubsub.ID{}},
		{name: "future position", setup: trimmedTo(0), after: id(500),
			wantGap: &Gap{Topic: "t", Requested: id(500), Oldest: id(1), Reset: true}, want: seq(1, 100), wantLast: id(100)},
		{name: "recreated stream", setup: func(src *fakeSource) { src.add("t", 1, 100); src.lose("t"); src.add("t", 7, 9) },
			after: id(100), wantGap: &Gap{Topic: "t", Requested: id(100), Oldest: id(7), Reset: true}, want: seq(7, 9), wantLast: id(9)},
		// After the reset the whole new history follows: its own
		// trimmed start is the reset's gap, not a second one.
		{name: "recreated stream, trimmed since", setup: func(src *fakeSource) { src.add("t", 1, 100); src.lose("t"); src.add("t", 7, 20); src.trim("t", id(9)) },
			after: id(100), wantGap: &Gap{Topic: "t", Requested: id(100), Oldest: id(10), Reset: true}, want: seq(10, 20), wantLast: id(20)},
		{name: "future position, empty stream", setup: func(src *fakeSource) { src.add("t", 1, 3); src.trim("t", id(3)) },
			after: id(500), wantGap: &Gap{Topic: "t", Requested: id(500), Reset: true}, want: nil, wantLast: pubsub.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			tt.setup(src)
			w := newWindow(t, src, Config{PageSize: 16})
			var events []string // gap first, then entries
			res, err := w.Replay(context.Background(), "t", tt.after,
				func(g Gap) error { events = append(events, "gap"); return nil },
				func(e pubsub.Entry) error { events = append(events, e.ID.String()); return nil })
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			if tt.wantGap != nil {
				want = append(want, "gap")
			}
			for _, ms := range tt.want {
				want = append(want, id(ms).String())
			}
			if !slices.Equal(events, want) {
				t.Errorf("events %v, want %v", events, want)
			}
			switch {
			case (res.Gap == nil) != (tt.wantGap == nil):
				t.Errorf("Result.Gap = %v, want %v", res.Gap, tt.wantGap)
			case res.Gap != nil && *res.Gap != *tt.wantGap:
				t.Errorf("Result.Gap = %+v, want %+v", *res.Gap, *tt.wantGap)
			}
			if res.Last != tt.wantLast || res.From != FromRedis || res.Count != len(tt.want) {
				t.Errorf("result %+v, want Last %s From redis Count %d", res, tt.wantLast, len(tt.want))
			}
			// Each page carries the stream's state: no Info call.
			if n := src.infos.Load(); n != 0 {
				t.Errorf("%d Info calls, want 0", n)
			}
		})
	}
}

// TestReplayRingAnswersLikeSource: a ring does not serve what the source
// no longer holds; positions at or below what was removed get the source's
// answer, gap included.
func TestReplayRingAnswersLikeSource(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	w := newWindow(t, src, Config{RingSize: 50})
	acquire(t, w, "t") // ring 51..100
	src.trim("t", id(80))
	got, gaps, res := collect(t, w, "t", id(60))
	wantGap := Gap{Topic: "t", Requested: id(60), Oldest: id(81)}
	if !slices.Equal(got, seq(81, 100)) || len(gaps) != 1 || gaps[0] != wantGap || res.From != FromRedis {
		t.Fatalf("trimmed into the ring: got %v gaps %v from %s; want 81..100 after %+v", got, gaps, res.From, wantGap)
	}
	// At or above what was removed, the ring serves.
	got, gaps, res = collect(t, w, "t", id(85))
	if !slices.Equal(got, seq(86, 100)) || len(gaps) != 0 || res.From != FromRing {
		t.Fatalf("above the trim: got %v gaps %v from %s", got, gaps, res.From)
	}
	// A position above everything the ring has seen is for the source.
	got, gaps, res = collect(t, w, "t", id(200))
	if !slices.Equal(got, seq(81, 100)) || len(gaps) != 1 || !gaps[0].Reset || res.From != FromRedis {
		t.Fatalf("future position: got %v gaps %v from %s", got, gaps, res.From)
	}
}

func TestReplayStopsOnErrors(t *testing.T) {
	errStop := errors.New("client gone")
	errSrc := errors.New("redis down")
	tests := []struct {
		name      string
		ring      bool
		after     uint64
		stopAt    uint64 // emit fails on this entry; 0 never
		gapErr    bool
		rangeErr  error
		infoErr   error
		wantErr   error
		wantCount int
	}{
		{name: "emit from ring", ring: true, after: 50, stopAt: 55, wantErr: errStop, wantCount: 4},
		{name: "emit from source", after: 5, stopAt: 30, wantErr: errStop, wantCount: 24},
		{name: "gap callback", after: 500, gapErr: true, wantErr: errStop},
		{name: "range error", after: 5, rangeErr: errSrc, wantErr: errSrc},
		// The ring check failing leaves the ring to serve.
		{name: "info error", ring: true, after: 50, infoErr: errSrc, stopAt: 71, wantErr: errStop, wantCount: 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			src.add("t", 1, 100)
			w := newWindow(t, src, Config{RingSize: 60, PageSize: 10})
			if tt.ring {
				acquire(t, w, "t")
			}
			src.rangeErr, src.infoErr = tt.rangeErr, tt.infoErr
			var emitted []uint64
			res, err := w.Replay(context.Background(), "t", id(tt.after),
				func(Gap) error {
					if tt.gapErr {
						return errStop
					}
					return nil
				},
				func(e pubsub.Entry) error {
					if e.ID.Ms == tt.stopAt {
						return errStop
					}
					emitted = append(emitted, e.ID.Ms)
					return nil
				})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == errStop && err != errStop {
				t.Errorf("callback error %v was wrapped", err)
			}
			if res.Count != tt.wantCount || len(emitted) != tt.wantCount {
				t.Errorf("count %d emitted %v, want %d", res.Count, emitted, tt.wantCount)
			}
			if tt.wantCount > 0 && res.Last != id(tt.stopAt-1) {
				t.Errorf("Last %s, want %s", res.Last, id(tt.stopAt-1))
			}
		})
	}
}

func TestReplayCanceled(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	w := newWindow(t, src, Config{PageSize: 10})
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := w.Replay(ctx, "t", pubsub.ID{}, nil, func(pubsub.Entry) error {
		if n++; n == 15 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n != 20 {
		t.Fatalf("err %v after %d entries, want Canceled after the page in hand (20)", err, n)
	}
}

// TestReplayStormSharesSourceCalls replays one topic from one position in
// 200 goroutines. The fake holds each source call until every other replay
// waits for that same call, so the sharing is checked exactly and does not
// depend on timing: one Page per page in all, and one Info for the ring
// check when the ring serves.
func TestReplayStormSharesSourceCalls(t *testing.T) {
	tests := []struct {
		name                  string
		ring                  bool
		pos                   uint64
		wantGaps              int
		want                  []uint64
		wantInfos, wantRanges int64
	}{
		// 480 entries: pages of 100 after 10, 120, 220, 320, 420 (the last short).
		{name: "source", pos: 10, wantGaps: 1, want: seq(21, 500), wantRanges: 5},
		{name: "ring", ring: true, pos: 300, want: seq(301, 500), wantInfos: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { replayStorm(t, tt.ring, tt.pos, tt.wantGaps, tt.want, tt.wantInfos, tt.wantRanges) })
	}
}

func replayStorm(t *testing.T, ring bool, pos uint64, wantGaps int, want []uint64, wantInfos, wantRanges int64) {
	const clients = 200
	src := newFake()
	src.add("t", 1, 500)
	src.trim("t", id(20)) // a gap for a client at 10
	w := newWindow(t, src, Config{PageSize: 100, RingSize: 1000})
	if ring {
		acquire(t, w, "t")
	}

	gate := make(chan struct{}) // one token per released call
	stop := make(chan struct{}) // closed when the test is over or gives up
	held := func(string) {
		select {
		case <-gate:
		case <-stop:
		}
	}
	src.onInfo = held
	src.onRange = func(string, pubsub.ID) { held("") }
	var driver sync.WaitGroup
	var gaveUp atomic.Bool
	driver.Add(1)
	go func() { // release each call once all other clients wait on it
		defer driver.Done()
		released := make(map[any]bool)
		deadline := time.Now().Add(30 * time.Second)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if time.Now().After(deadline) {
				gaveUp.Store(true)
				close(stop)
				return
			}
			c, waiting := heldCall(w)
			if c == nil || released[c] || waiting < clients-1 {
				time.Sleep(50 * time.Microsecond)
				continue
			}
			released[c] = true
			select {
			case gate <- struct{}{}:
			case <-stop:
				return
			}
		}
	}()

	var wg sync.WaitGroup
	results := make([][]uint64, clients)
	gaps := make([]int, clients)
	errs := make([]error, clients)
	start := make(chan struct{})
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = w.Replay(context.Background(), "t", id(pos),
				func(Gap) error { gaps[i]++; return nil },
				func(e pubsub.Entry) error { results[i] = append(results[i], e.ID.Ms); return nil })
		}()
	}
	close(start)
	wg.Wait()
	if !gaveUp.Load() {
		close(stop)
	}
	driver.Wait()
	if gaveUp.Load() {
		t.Fatal("timed out: the clients did not all join one source call")
	}

	for i := range clients {
		if errs[i] != nil || gaps[i] != wantGaps || !slices.Equal(results[i], want) {
			t.Fatalf("client %d: err %v gaps %d entries %d", i, errs[i], gaps[i], len(results[i]))
		}
	}
	// Pages carry the stream's state: no Info for them.
	if infos, ranges := src.infos.Load(), src.ranges.Load(); infos != wantInfos || ranges != wantRanges {
		t.Errorf("%d clients cost %d Info and %d Page calls, want %d and %d", clients, infos, ranges, wantInfos, wantRanges)
	}
}

// heldCall returns a source call in flight (Info or Range) and how many
// replays wait on it besides its leader; nil if none.
func heldCall(w *Window) (call any, waiting int) {
	w.infos.mu.Lock()
	for _, c := range w.infos.calls {
		call, waiting = c, c.waiters
	}
	w.infos.mu.Unlock()
	if call != nil {
		return call, waiting
	}
	w.ranges.mu.Lock()
	defer w.ranges.mu.Unlock()
	for _, c := range w.ranges.calls {
		return c, c.waiters
	}
	return nil, 0
}

func TestGapJSON(t *testing.T) {
	tests := []struct {
		gap  Gap
		want string
	}{
		{Gap{Topic: "news/eu@x:1", Requested: pubsub.ID{Ms: 1, Seq: 2}, Oldest: pubsub.ID{Ms: 3}},
			`{"topic":"news/eu@x:1","requested":"1-2","oldest":"3-0"}`},
		{Gap{Topic: "t"}, `{"topic":"t","requested":"0-0","oldest":"0-0"}`},
		{Gap{Topic: "t", Requested: pubsub.ID{Ms: 9}, Oldest: pubsub.ID{Ms: 5, Seq: 1}, Reset: true},
			`{"topic":"t","requested":"9-0","oldest":"5-1","reset":true}`},
		{Gap{Topic: "a\"b\\c\n<é>"}, `{"topic":"a\"b\\c\n\u003cé\u003e","requested":"0-0","oldest":"0-0"}`},
	}
	for _, tt := range tests {
		got, err := json.Marshal(tt.gap)
		if err != nil || string(got) != tt.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tt.gap, got, err, tt.want)
		}
		var back struct {
			Topic, Requested, Oldest string
			Reset                    bool
		}
		if err := json.Unmarshal(tt.gap.AppendJSON(nil), &back); err != nil || back.Topic != tt.gap.Topic ||
			back.Requested != tt.gap.Requested.String() || back.Oldest != tt.gap.Oldest.String() || back.Reset != tt.gap.Reset {
			t.Errorf("AppendJSON(%+v) decodes to %+v, %v", tt.gap, back, err)
		}
	}
}
