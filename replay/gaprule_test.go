package replay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// events replays topic after pos and returns what a client would see: "gap
// R..O" (requested..oldest, "!" when reset) and entry IDs' ms, in order.
func events(t *testing.T, w *Window, topic string, pos pubsub.ID) ([]string, Result) {
	t.Helper()
	var got []string
	res, err := w.Replay(context.Background(), topic, pos,
		func(g Gap) error {
			s := fmt.Sprintf("gap %s..%s", g.Requested, g.Oldest)
			if g.Reset {
				s += "!"
			}
			got = append(got, s)
			return nil
		},
		func(e pubsub.Entry) error { got = append(got, fmt.Sprint(e.ID.Ms)); return nil })
	if err != nil {
		t.Fatalf("Replay(%s, %s): %v", topic, pos, err)
	}
	return got, res
}

// strs is seq as strings, after a prefix of other events.
func strs(prefix []string, from, to uint64) []string {
	out := slices.Clone(prefix)
	for _, ms := range seq(from, to) {
		out = append(out, fmt.Sprint(ms))
	}
	return out
}

// TestReplayTrimOvertakesSlowReplay: trimming that passes a replay between
// two source pages is a gap before the next entry (the bug: the check ran
// once, before the first page, and the replay jumped silently).
func TestReplayTrimOvertakesSlowReplay(t *testing.T) {
	tests := []struct {
		name string
		trim uint64 // trimmed up to this after the first page is read
		want []string
	}{
		// First page 11..20; then 1..60 go: 21..60 are lost.
		{"past the cursor", 60, strs(append(strs(nil, 11, 20), "gap 20-0..61-0"), 61, 100)},
		// Trimmed exactly to the cursor: nothing lost, no gap.
		{"to the cursor", 20, strs(nil, 11, 100)},
		// Trimmed below the cursor: nothing lost.
		{"below the cursor", 15, strs(nil, 11, 100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			src.add("t", 1, 100)
			pages := 0
			src.onRange = func(string, pubsub.ID) {
				if pages++; pages == 2 {
					src.trim("t", id(tt.trim))
				}
			}
			w := newWindow(t, src, Config{PageSize: 10})
			got, _ := events(t, w, "t", id(10))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestReplayDeletedEntries: an XDEL'd entry after the client's position is
// a gap before the next entry, at the start, in the middle or at the end of
// a page; an XDEL below the newest XDEL'd entry is what Redis cannot tell.
func TestReplayDeletedEntries(t *testing.T) {
	tests := []struct {
		name string
		del  []uint64
		pos  uint64
		want []string
	}{
		{"first after position", []uint64{11}, 10, strs([]string{"gap 10-0..1-0"}, 12, 30)},
		{"middle of a page", []uint64{15}, 10, strs(append(strs(nil, 11, 14), "gap 14-0..1-0"), 16, 30)},
		{"across pages", []uint64{21}, 10, strs(append(strs(nil, 11, 20), "gap 20-0..1-0"), 22, 30)},
		{"newest entry", []uint64{30}, 10, append(strs(nil, 11, 29), "gap 29-0..1-0")},
		{"below position", []uint64{5}, 10, strs(nil, 11, 30)},
		{"position itself", []uint64{10}, 10, strs(nil, 11, 30)},
		// Redis records only the newest deleted ID (25): 15 goes unseen.
		{"below a newer deletion", []uint64{15, 25}, 10,
			strs(append(strs(strs(nil, 11, 14), 16, 24), "gap 24-0..1-0"), 26, 30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			src.add("t", 1, 30)
			for _, ms := range tt.del {
				src.del("t", ms)
			}
			w := newWindow(t, src, Config{PageSize: 10})
			got, _ := events(t, w, "t", id(tt.pos))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestReplayEveryNodeAnswersAlike changes the stream under a node whose
// ring holds the topic and checks that it answers every position as a node
// without the topic does (issue cases 2 and 3), before any reset signal.
func TestReplayEveryNodeAnswersAlike(t *testing.T) {
	tests := []struct {
		name   string
		change func(src *fakeSource)
		pos    uint64
		want   []string
	}{
		{"deleted and recreated lower", func(src *fakeSource) { src.lose("t"); src.add("t", 5, 8) },
			9050, strs([]string{"gap 9050-0..5-0!"}, 5, 8)},
		{"deleted and recreated lower, position at the ring's newest", func(src *fakeSource) { src.lose("t"); src.add("t", 5, 8) },
			9100, strs([]string{"gap 9100-0..5-0!"}, 5, 8)},
		{"recreated higher", func(src *fakeSource) { src.lose("t"); src.add("t", 9500, 9502) },
			9050, strs([]string{"gap 9050-0..9500-0"}, 9500, 9502)},
		{"deleted", func(src *fakeSource) { src.lose("t") }, 9050, []string{"gap 9050-0..0-0!"}},
		{"entry of the ring deleted", func(src *fakeSource) { src.del("t", 9060) },
			9050, strs(append(strs(nil, 9051, 9059), "gap 9059-0..9001-0"), 9061, 9100)},
		{"trimmed into the ring", func(src *fakeSource) { src.trim("t", id(9070)) },
			9050, strs([]string{"gap 9050-0..9071-0"}, 9071, 9100)},
		{"trimmed into the ring, position above", func(src *fakeSource) { src.trim("t", id(9070)) },
			9080, strs(nil, 9081, 9100)},
		{"future position", func(*fakeSource) {}, 9999, strs([]string{"gap 9999-0..9001-0!"}, 9001, 9100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var answers [2][]string
			for i, ring := range []bool{false, true} {
				src := newFake()
				src.add("t", 9001, 9100)
				clock := time.Unix(1e6, 0)
				w := newWindow(t, src, Config{RingSize: 200, PageSize: 16, Now: func() time.Time { return clock }})
				if ring {
					acquire(t, w, "t")          // ring 9001..9100
					events(t, w, "t", id(9090)) // checked once before the change
					clock = clock.Add(infoReuse)
				}
				tt.change(src)
				answers[i], _ = events(t, w, "t", id(tt.pos))
			}
			if !slices.Equal(answers[0], tt.want) {
				t.Errorf("node without the topic: %v\nwant %v", answers[0], tt.want)
			}
			if !slices.Equal(answers[1], tt.want) {
				t.Errorf("node with the topic in its ring: %v\nwant %v", answers[1], tt.want)
			}
		})
	}
}

// TestWindowReset: the broker's reset signal empties the ring at once (no
// Info, no waiting for infoReuse), drops the topic's cached pages, and the
// ring takes the stream's new entries whatever their IDs.
func TestWindowReset(t *testing.T) {
	src := newFake()
	src.add("t", 9001, 9100)
	clock := time.Unix(1e6, 0) // still: the ring check would stand forever
	w := newWindow(t, src, Config{RingSize: 200, PageSize: 10, Now: func() time.Time { return clock }})
	acquire(t, w, "t")
	events(t, w, "t", id(0)) // caches full pages, checks the ring
	src.lose("t")
	src.add("t", 5, 8)
	w.Reset("t")
	if last, ok := w.Last("t"); !ok || !last.IsZero() {
		t.Fatalf("after Reset: Last = %v, %v; want 0-0, true", last, ok)
	}
	infos := src.infos.Load()
	got, res := events(t, w, "t", id(9050))
	if want := strs([]string{"gap 9050-0..5-0!"}, 5, 8); !slices.Equal(got, want) || res.From != FromRedis {
		t.Fatalf("after Reset: %v from %s, want %v from the source", got, res.From, want)
	}
	if src.infos.Load() != infos {
		t.Error("the reset ring was checked against the source: it should cover nothing")
	}
	got, _ = events(t, w, "t", id(0))
	if want := strs(nil, 5, 8); !slices.Equal(got, want) {
		t.Fatalf("after Reset from 0: %v, want %v (a page cached before the reset was served?)", got, want)
	}
	// Live entries of the new history, lower than anything seen before.
	w.Append("t", src.add("t", 9, 12))
	if last, _ := w.Last("t"); last != id(12) {
		t.Fatalf("Last after new entries = %v, want 12-0", last)
	}
	clock = clock.Add(infoReuse)
	ranges := src.ranges.Load()
	got, res = events(t, w, "t", id(9))
	if want := strs(nil, 10, 12); !slices.Equal(got, want) || res.From != FromRing || src.ranges.Load() != ranges {
		t.Fatalf("ring after Reset: %v from %s, want %v from the ring", got, res.From, want)
	}
	// Below the first entry the ring took, the source answers.
	got, res = events(t, w, "t", id(6))
	if want := strs(nil, 7, 12); !slices.Equal(got, want) || res.From != FromRedis {
		t.Fatalf("below the ring after Reset: %v from %s, want %v", got, res.From, want)
	}
	w.Reset("never acquired") // no-op
}

// TestWindowResetDuringLoad: a reset that arrives while the topic's tail is
// being read leaves a ring that covers nothing, since the tail may be the
// old history's.
func TestWindowResetDuringLoad(t *testing.T) {
	src := newFake()
	src.add("t", 9001, 9100)
	w := newWindow(t, src, Config{RingSize: 200})
	src.afterTail = func(topic string) {
		src.lose(topic)
		src.add(topic, 5, 8)
		w.Reset(topic)
	}
	acquire(t, w, "t")
	got, res := events(t, w, "t", id(9050))
	if want := strs([]string{"gap 9050-0..5-0!"}, 5, 8); !slices.Equal(got, want) || res.From != FromRedis {
		t.Fatalf("%v from %s, want %v from the source", got, res.From, want)
	}
}

// TestRingCheckShared: replays arriving one after another within infoReuse
// share one Info; after it, the next replay reads again.
func TestRingCheckShared(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	clock := time.Unix(1e6, 0)
	w := newWindow(t, src, Config{RingSize: 200, Now: func() time.Time { return clock }})
	acquire(t, w, "t")
	for range 50 {
		events(t, w, "t", id(50))
		clock = clock.Add(infoReuse / 100)
	}
	if n := src.infos.Load(); n != 1 {
		t.Fatalf("50 replays within infoReuse: %d Info calls, want 1", n)
	}
	clock = clock.Add(infoReuse)
	events(t, w, "t", id(50))
	if n := src.infos.Load(); n != 2 {
		t.Fatalf("after infoReuse: %d Info calls, want 2", n)
	}
}

// TestReplayRecreatedHigherUnderLiveRing: a topic watched from before its
// stream existed (ring floor 0-0) fills its ring live; the stream is then
// deleted and recreated with higher IDs, nothing removed in its new
// history. The ring's entries are above MaxDeleted and below First: the
// ring must not serve them.
func TestReplayRecreatedHigherUnderLiveRing(t *testing.T) {
	src := newFake()
	clock := time.Unix(1e6, 0)
	w := newWindow(t, src, Config{RingSize: 200, Now: func() time.Time { return clock }})
	acquire(t, w, "t") // missing stream: empty ring, floor 0-0
	w.Append("t", src.add("t", 1, 100))
	src.lose("t")
	src.add("t", 200, 210)
	got, _ := events(t, w, "t", id(50))
	if want := strs([]string{"gap 50-0..200-0"}, 200, 210); !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// TestReplayLostUnderLiveReader: a resume that finds the stream gone, or
// its last ID below what the live path delivered, while the broker has not
// signalled a reset (it checks history about once a second), asks the
// broker to check now and empties the ring; a resume that merely asks for
// a future position does neither.
func TestReplayLostUnderLiveReader(t *testing.T) {
	tests := []struct {
		name    string
		change  func(src *fakeSource)
		pos     uint64
		want    []string
		recheck bool
	}{
		{"deleted, resume inside the ring", func(src *fakeSource) { src.lose("t") }, 50, []string{"gap 50-0..0-0!"}, true},
		{"deleted, resume below the ring", func(src *fakeSource) { src.lose("t") }, 5, []string{"gap 5-0..0-0!"}, true},
		{"moved back", func(src *fakeSource) { src.lose("t"); src.add("t", 1, 30) }, 50, strs([]string{"gap 50-0..1-0!"}, 1, 30), true},
		{"no change, a future position", func(*fakeSource) {}, 500, strs([]string{"gap 500-0..1-0!"}, 1, 100), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFake()
			src.add("t", 1, 100)
			w := newWindow(t, src, Config{RingSize: 64})
			acquire(t, w, "t") // ring holds 37..100
			tt.change(src)
			got, _ := events(t, w, "t", id(tt.pos))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v\nwant %v", got, tt.want)
			}
			_, rechecked := src.rechecked.Load("t")
			if rechecked != tt.recheck {
				t.Fatalf("Recheck called: %v, want %v", rechecked, tt.recheck)
			}
			if last, _ := w.Last("t"); tt.recheck && !last.IsZero() {
				t.Fatalf("ring's last ID %s after the stream lost it, want it emptied", last)
			}
		})
	}
}

// TestReplayRecreatedHigherAtRingFloor: a ring loaded from an emptied
// stream covers only its floor (the stream's last ID); once the stream is
// recreated with higher IDs, that position was never an entry of the new
// history: a gap, as a node without the ring answers.
func TestReplayRecreatedHigherAtRingFloor(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	src.trim("t", id(100))
	w := newWindow(t, src, Config{RingSize: 200})
	acquire(t, w, "t") // empty ring, floor 100-0
	src.lose("t")
	src.add("t", 200, 210)
	got, _ := events(t, w, "t", id(100))
	if want := strs([]string{"gap 100-0..200-0"}, 200, 210); !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// TestRingCheckStalledSource: a source that does not answer the ring check
// (Redis stalled) does not hold a resume the ring can serve beyond
// checkWait.
func TestRingCheckStalledSource(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	w := newWindow(t, src, Config{RingSize: 200})
	acquire(t, w, "t")
	src.infoStall = make(chan struct{})
	defer close(src.infoStall)
	done := make(chan []string, 1)
	go func() {
		var got []string
		_, err := w.Replay(context.Background(), "t", id(90), nil,
			func(e pubsub.Entry) error { got = append(got, fmt.Sprint(e.ID.Ms)); return nil })
		if err != nil {
			got = append(got, err.Error())
		}
		done <- got
	}()
	select {
	case got := <-done:
		if want := strs(nil, 91, 100); !slices.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	case <-time.After(checkWait + 10*time.Second):
		t.Fatal("the replay waits for a stalled ring check")
	}
}

// TestAppendReturnsLivePosition: Append tells what the broker delivered
// before its entries (the Tail's Last at first), which a ring emptied on
// a read's evidence does not change (the reader still reads from there)
// and the broker's reset clears.
func TestAppendReturnsLivePosition(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	w := newWindow(t, src, Config{RingSize: 64})
	acquire(t, w, "t")
	if prev := w.Append("t", src.add("t", 101, 101)); prev != id(100) {
		t.Fatalf("first Append: prev %s, want the tail's last 100-0", prev)
	}
	if prev := w.Append("t", src.add("t", 102, 103)); prev != id(101) {
		t.Fatalf("second Append: prev %s, want 101-0", prev)
	}
	// A resume finds the stream gone: the ring is emptied, the live
	// position stays.
	src.lose("t")
	events(t, w, "t", id(50))
	if prev := w.Append("t", []pubsub.Entry{entry(104)}); prev != id(103) {
		t.Fatalf("Append after the ring was emptied: prev %s, want 103-0", prev)
	}
	w.Reset("t")
	if prev := w.Append("t", []pubsub.Entry{entry(1)}); !prev.IsZero() {
		t.Fatalf("Append after Reset: prev %s, want zero (unknown)", prev)
	}
}

// TestReplayPageRacesLiveReader: the live path delivers newer entries while
// a resume's page is read from the source. The page's state predates them,
// so it must not look like a stream that lost them: the ring stays, and no
// history check is asked for (a false one emptied the ring in every
// reconnect storm with live traffic, sending the rest of the storm to the
// source).
func TestReplayPageRacesLiveReader(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	w := newWindow(t, src, Config{RingSize: 64})
	acquire(t, w, "t") // ring holds 37..100
	var once sync.Once
	src.onRange = func(string, pubsub.ID) {
		// After the read's snapshot (simulated: the source never
		// holds them), before its state is taken.
		once.Do(func() {
			for ms := uint64(101); ms <= 110; ms++ {
				w.Append("t", []pubsub.Entry{entry(ms)})
			}
		})
	}
	got, _ := events(t, w, "t", id(5)) // below the ring: read from the source
	if want := strs(nil, 6, 100); !slices.Equal(got[:len(want)], want) {
		t.Fatalf("got %v\nwant %v first", got, want)
	}
	if _, rechecked := src.rechecked.Load("t"); rechecked {
		t.Fatal("Recheck called for a page that only predates live entries")
	}
	if last, _ := w.Last("t"); last != id(110) {
		t.Fatalf("ring's last ID %s, want 110-0: the ring was emptied", last)
	}
}

// TestRingCheckRenewedWithoutWaiting: past infoReuse one Replay renews a
// ring check and the others serve from the ring without waiting for the
// source; past staleServe everyone waits for a new check.
func TestRingCheckRenewedWithoutWaiting(t *testing.T) {
	src := newFake()
	src.add("t", 1, 100)
	var mu sync.Mutex
	clock := time.Unix(1e6, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	w := newWindow(t, src, Config{RingSize: 200, Now: now})
	acquire(t, w, "t")
	events(t, w, "t", id(50)) // the first check
	if n := src.infos.Load(); n != 1 {
		t.Fatalf("first replay: %d Info calls, want 1", n)
	}
	advance(infoReuse + (staleServe-infoReuse)/2)
	stall := make(chan struct{})
	entered := make(chan struct{}, 1)
	src.onInfo = func(string) {
		entered <- struct{}{}
		<-stall
	}
	renewed := make(chan error, 1)
	go func() {
		_, err := w.Replay(context.Background(), "t", id(90), nil, func(pubsub.Entry) error { return nil })
		renewed <- err
	}()
	select {
	case <-entered: // the renewing Replay waits in Info
	case <-time.After(10 * time.Second):
		t.Fatal("no Replay renewed a check past infoReuse")
	}
	// Others serve at once while the renewal is in flight.
	got, _ := events(t, w, "t", id(95))
	if want := strs(nil, 96, 100); !slices.Equal(got, want) {
		t.Fatalf("replay during the renewal: got %v, want %v", got, want)
	}
	close(stall)
	if err := <-renewed; err != nil {
		t.Fatal(err)
	}
	if n := src.infos.Load(); n != 2 {
		t.Fatalf("%d Info calls, want 2 (one renewal)", n)
	}
	src.onInfo = nil
	advance(infoReuse * 3 / 4) // the renewed check stands
	events(t, w, "t", id(95))
	if n := src.infos.Load(); n != 2 {
		t.Fatalf("within infoReuse of the renewal: %d Info calls, want 2", n)
	}
	advance(staleServe) // past it: a check before serving
	events(t, w, "t", id(95))
	if n := src.infos.Load(); n != 3 {
		t.Fatalf("past staleServe: %d Info calls, want 3", n)
	}
}
