package pubsub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// fakeClock is a settable clock for MemoryConfig.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(ms int64) *fakeClock { return &fakeClock{t: time.UnixMilli(ms)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(ms int64) {
	c.mu.Lock()
	c.t = time.UnixMilli(ms)
	c.mu.Unlock()
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is a Handler that keeps every batch and checks the delivery
// contract: ascending IDs, no repeats across batches, no concurrent calls.
type recorder struct {
	t        testing.TB
	inflight atomic.Int32

	mu    sync.Mutex
	got   map[string][]Entry
	calls int
}

func newRecorder(t testing.TB) *recorder { return &recorder{t: t, got: map[string][]Entry{}} }

func (r *recorder) handle(topic string, entries []Entry) {
	if n := r.inflight.Add(1); n != 1 {
		r.t.Errorf("handler called concurrently (%d in flight)", n)
	}
	defer r.inflight.Add(-1)
	if len(entries) == 0 {
		r.t.Errorf("handler called with no entries for %q", topic)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	prev := r.got[topic]
	for i, e := range entries {
		var last ID
		if i > 0 {
			last = entries[i-1].ID
		} else if len(prev) > 0 {
			last = prev[len(prev)-1].ID
		}
		if (i > 0 || len(prev) > 0) && !last.Less(e.ID) {
			r.t.Errorf("topic %q: delivered %v after %v", topic, e.ID, last)
		}
	}
	r.got[topic] = append(prev, entries...)
}

func (r *recorder) entries(topic string) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got[topic])
}

func (r *recorder) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[topic])
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func newTestMemory(t testing.TB, cfg MemoryConfig) *Memory {
	t.Helper()
	m, err := NewMemory(cfg)
	if err != nil {
		t.Fatalf("NewMemory(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustPublish(t testing.TB, m *Memory, topic, data string) ID {
	t.Helper()
	id, err := m.Publish(context.Background(), topic, "", []byte(data))
	if err != nil {
		t.Fatalf("Publish(%q): %v", topic, err)
	}
	return id
}

func ids(entries []Entry) []ID {
	out := make([]ID, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}

func TestNewMemoryConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  MemoryConfig
		ok   bool
	}{
		{"zero", MemoryConfig{}, true},
		{"set", MemoryConfig{MaxLen: 1, MaxAge: time.Millisecond}, true},
		{"negative MaxLen", MemoryConfig{MaxLen: -1}, false},
		{"negative MaxAge", MemoryConfig{MaxAge: -time.Second}, false},
		{"negative MaxBytes", MemoryConfig{MaxBytes: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMemory(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("NewMemory(%+v) error = %v, want ok=%v", tt.cfg, err, tt.ok)
			}
			if m != nil {
				m.Close()
			}
		})
	}
	m := newTestMemory(t, MemoryConfig{})
	if m.maxLen != defaultMemoryMaxLen || m.maxAge != 0 || m.maxBytes != defaultMemoryMaxBytes || m.now == nil {
		t.Fatalf("zero config: maxLen %d maxAge %v maxBytes %d, want %d, 0, %d", m.maxLen, m.maxAge, m.maxBytes, defaultMemoryMaxLen, defaultMemoryMaxBytes)
	}
}

func TestMemoryIDs(t *testing.T) {
	type step struct {
		clockMs int64
		want    ID
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"frozen clock", []step{{1000, ID{1000, 0}}, {1000, ID{1000, 1}}, {1000, ID{1000, 2}}}},
		{"clock forward", []step{{1000, ID{1000, 0}}, {1001, ID{1001, 0}}, {5000, ID{5000, 0}}}},
		{"clock backwards", []step{
			{1000, ID{1000, 0}}, {999, ID{1000, 1}}, {1, ID{1000, 2}}, {1000, ID{1000, 3}}, {1001, ID{1001, 0}},
		}},
		{"ms zero is never 0-0", []step{{0, ID{0, 1}}, {0, ID{0, 2}}, {1, ID{1, 0}}}},
		{"before the epoch counts as 0", []step{{-5000, ID{0, 1}}, {-1, ID{0, 2}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock(0)
			m := newTestMemory(t, MemoryConfig{Now: clock.Now})
			for i, s := range tt.steps {
				clock.Set(s.clockMs)
				if got := mustPublish(t, m, "t", ""); got != s.want {
					t.Fatalf("step %d at %dms: ID %v, want %v", i, s.clockMs, got, s.want)
				}
			}
		})
	}
}

func TestMemoryIDsPerTopic(t *testing.T) {
	clock := newFakeClock(1000)
	m := newTestMemory(t, MemoryConfig{Now: clock.Now})
	mustPublish(t, m, "a", "")
	mustPublish(t, m, "a", "")
	if got := mustPublish(t, m, "b", ""); got != (ID{1000, 0}) {
		t.Fatalf("first ID of another topic = %v, want 1000-0 (sequences are per stream)", got)
	}
}

func TestNextIDExhaustion(t *testing.T) {
	max := ^uint64(0)
	tests := []struct {
		last  ID
		nowMs uint64
		want  ID
		ok    bool
	}{
		{ID{5, max}, 5, ID{6, 0}, true}, // as Redis: seq overflow moves to the next ms
		{ID{5, max}, 3, ID{6, 0}, true},
		{ID{max, 7}, 3, ID{max, 8}, true},
		{MaxID, max, ID{}, false},
	}
	for _, tt := range tests {
		got, ok := nextID(tt.last, tt.nowMs)
		if got != tt.want || ok != tt.ok {
			t.Errorf("nextID(%v, %d) = %v, %v; want %v, %v", tt.last, tt.nowMs, got, ok, tt.want, tt.ok)
		}
	}
}

func TestMemoryMaxLen(t *testing.T) {
	clock := newFakeClock(1000)
	m := newTestMemory(t, MemoryConfig{MaxLen: 3, Now: clock.Now})
	ctx := context.Background()
	var all []ID
	for i := range 5 {
		all = append(all, mustPublish(t, m, "t", fmt.Sprint(i)))
	}
	info, err := m.Info(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	want := StreamInfo{Exists: true, Length: 3, First: all[2], Last: all[4], MaxDeleted: all[1]}
	if info != want {
		t.Fatalf("Info = %+v, want %+v", info, want)
	}
	got, err := m.Range(ctx, "t", ID{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(got), all[2:]) || string(got[0].Data) != "2" {
		t.Fatalf("Range = %v, want %v", ids(got), all[2:])
	}

	// Many more publishes: the log is reused in place and stays exact.
	for i := 5; i < 2000; i++ {
		all = append(all, mustPublish(t, m, "t", fmt.Sprint(i)))
		if i%97 == 0 {
			got, _ := m.Range(ctx, "t", ID{}, 100)
			if !slices.Equal(ids(got), all[len(all)-3:]) {
				t.Fatalf("after %d publishes Range = %v, want %v", i+1, ids(got), all[len(all)-3:])
			}
		}
	}
	info, _ = m.Info(ctx, "t")
	want = StreamInfo{Exists: true, Length: 3, First: all[len(all)-3], Last: all[len(all)-1], MaxDeleted: all[len(all)-4]}
	if info != want {
		t.Fatalf("Info = %+v, want %+v", info, want)
	}
	m.mu.RLock()
	s := m.topics["t"]
	m.mu.RUnlock()
	s.mu.Lock()
	held, capacity := len(s.log)-s.head, cap(s.log)
	s.mu.Unlock()
	if held != 3 || capacity > 64 {
		t.Fatalf("log holds %d entries in capacity %d; want 3 in a small array", held, capacity)
	}
}

func TestMemoryMaxAge(t *testing.T) {
	const t0 = 1_000_000
	clock := newFakeClock(t0)
	m := newTestMemory(t, MemoryConfig{MaxAge: 10 * time.Second, Now: clock.Now})
	ctx := context.Background()

	a := mustPublish(t, m, "t", "a") // t0
	clock.Set(t0 + 5000)
	b := mustPublish(t, m, "t", "b") // t0+5s
	clock.Set(t0 + 10000)
	c := mustPublish(t, m, "t", "c") // t0+10s: a is exactly MaxAge old and stays
	info, _ := m.Info(ctx, "t")
	if want := (StreamInfo{Exists: true, Length: 3, First: a, Last: c}); info != want {
		t.Fatalf("at the age boundary Info = %+v, want %+v", info, want)
	}

	clock.Set(t0 + 11000)
	d := mustPublish(t, m, "t", "d") // trims a on publish
	info, _ = m.Info(ctx, "t")
	if want := (StreamInfo{Exists: true, Length: 3, First: b, Last: d, MaxDeleted: a}); info != want {
		t.Fatalf("after publish Info = %+v, want %+v", info, want)
	}

	// No publish: reads trim lazily.
	clock.Set(t0 + 15001)
	got, _ := m.Range(ctx, "t", ID{}, 10)
	if !slices.Equal(ids(got), []ID{c, d}) {
		t.Fatalf("lazy Range = %v, want %v", ids(got), []ID{c, d})
	}
	clock.Set(t0 + 20001)
	tail, err := m.Watch(ctx, "t", 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tail.Last != d || !slices.Equal(ids(tail.Entries), []ID{d}) {
		t.Fatalf("lazy Watch tail = %+v, want last %v entries [%v]", tail, d, d)
	}
	clock.Set(t0 + 60000)
	info, _ = m.Info(ctx, "t")
	if want := (StreamInfo{Exists: true, Length: 0, Last: d, MaxDeleted: d}); info != want {
		t.Fatalf("all aged out: Info = %+v, want %+v", info, want)
	}
	got, err = m.Range(ctx, "t", ID{}, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("all aged out: Range = %v, %v; want empty", got, err)
	}
	// The next ID still follows the newest ever added.
	if e := mustPublish(t, m, "t", "e"); !d.Less(e) {
		t.Fatalf("ID after full trim %v is not after %v", e, d)
	}
}

func TestMemoryInfoMissing(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	ctx := context.Background()
	info, err := m.Info(ctx, "never")
	if err != nil || info != (StreamInfo{}) {
		t.Fatalf("Info(never) = %+v, %v; want zero, nil", info, err)
	}
	// Watching does not create the stream, as in Redis.
	if _, err := m.Watch(ctx, "never", 5, 0); err != nil {
		t.Fatal(err)
	}
	if info, _ := m.Info(ctx, "never"); info.Exists {
		t.Fatalf("watched, unpublished topic: Info = %+v, want Exists=false", info)
	}
	m.Unwatch("never")
	m.mu.RLock()
	n := len(m.topics)
	m.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d topics held after unwatching an unpublished topic, want 0", n)
	}
}

func TestMemoryRangePaging(t *testing.T) {
	clock := newFakeClock(1000)
	m := newTestMemory(t, MemoryConfig{Now: clock.Now})
	ctx := context.Background()
	var all []ID
	for i := range 10 {
		if i%4 == 0 {
			clock.Add(time.Millisecond)
		}
		all = append(all, mustPublish(t, m, "t", fmt.Sprint(i)))
	}

	var pages [][]ID
	var after ID
	for {
		page, err := m.Range(ctx, "t", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		pages = append(pages, ids(page))
		after = page[len(page)-1].ID
		if len(pages) > 10 {
			t.Fatal("paging does not end")
		}
	}
	want := [][]ID{all[0:3], all[3:6], all[6:9], all[9:10]}
	if !slices.EqualFunc(pages, want, slices.Equal) {
		t.Fatalf("pages = %v, want %v", pages, want)
	}

	tests := []struct {
		name  string
		after ID
		count int
		want  []ID
	}{
		{"after an entry", all[4], 2, all[5:7]},
		{"after an ID between entries", ID{all[4].Ms, all[4].Seq + 100}, 100, all[8:]}, // all[4] is 1002-0, all[8] 1003-0
		{"before everything", ID{}, 100, all},
		{"after the last", all[9], 5, nil},
		{"after MaxID", MaxID, 5, nil},
	}
	for _, tt := range tests {
		got, err := m.Range(ctx, "t", tt.after, tt.count)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(ids(got), tt.want) {
			t.Errorf("%s: Range(%v, %d) = %v, want %v", tt.name, tt.after, tt.count, ids(got), tt.want)
		}
	}

	if got, err := m.Range(ctx, "missing", ID{}, 5); err != nil || len(got) != 0 {
		t.Fatalf("Range(missing) = %v, %v; want empty", got, err)
	}
	for _, n := range []int{0, -1} {
		if _, err := m.Range(ctx, "t", ID{}, n); err == nil {
			t.Errorf("Range count %d: no error", n)
		}
	}

	// The result is a copy: changing it does not change the stream.
	got, _ := m.Range(ctx, "t", ID{}, 1)
	got[0].ID = MaxID
	if again, _ := m.Range(ctx, "t", ID{}, 1); again[0].ID != all[0] {
		t.Fatal("Range result aliases the stream")
	}
}

func TestMemoryPublishCopiesData(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	ctx := context.Background()
	buf := []byte("hello")
	if _, err := m.Publish(ctx, "t", "greet", buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX")
	got, _ := m.Range(ctx, "t", ID{}, 1)
	if string(got[0].Data) != "hello" || got[0].Event != "greet" {
		t.Fatalf("entry = %q event %q, want hello greet", got[0].Data, got[0].Event)
	}
}

func TestMemoryWatchTailAndLive(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	rec := newRecorder(t)
	ctx := context.Background()
	var before []ID
	for i := range 5 {
		before = append(before, mustPublish(t, m, "t", fmt.Sprint(i)))
	}
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		tail int
		want []ID
	}{{0, nil}, {3, before[2:]}, {100, before}} {
		tail, err := m.Watch(ctx, "t", tt.tail, 0)
		if err != nil {
			t.Fatal(err)
		}
		if tail.Last != before[4] || !slices.Equal(ids(tail.Entries), tt.want) {
			t.Fatalf("Watch tail %d = last %v entries %v; want %v, %v", tt.tail, tail.Last, ids(tail.Entries), before[4], tt.want)
		}
	}
	if _, err := m.Watch(ctx, "t", -1, 0); err == nil {
		t.Fatal("Watch with negative tail: no error")
	}

	var after []ID
	for i := range 3 {
		after = append(after, mustPublish(t, m, "t", fmt.Sprint(i)))
	}
	waitFor(t, "3 live entries", func() bool { return rec.count("t") >= 3 })
	if got := ids(rec.entries("t")); !slices.Equal(got, after) {
		t.Fatalf("delivered %v, want %v", got, after)
	}

	// The handler may keep and change its slice.
	got := rec.entries("t")
	got[0].ID = MaxID
	if r, _ := m.Range(ctx, "t", before[4], 1); r[0].ID != after[0] {
		t.Fatal("handler batch aliases the stream")
	}
}

func TestMemoryWatchAgainKeepsCursor(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	rec := newRecorder(t)
	ctx := context.Background()
	if _, err := m.Watch(ctx, "t", 0, 0); err != nil {
		t.Fatal(err)
	}
	a := mustPublish(t, m, "t", "a") // not delivered yet: no reader
	tail, err := m.Watch(ctx, "t", 1, 0)
	if err != nil || tail.Last != a || !slices.Equal(ids(tail.Entries), []ID{a}) {
		t.Fatalf("second Watch = %+v, %v; want fresh tail ending at %v", tail, err, a)
	}
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "entry published before Start", func() bool { return rec.count("t") == 1 })
	if got := ids(rec.entries("t")); !slices.Equal(got, []ID{a}) {
		t.Fatalf("delivered %v, want [%v]: a second Watch must not move the cursor", got, a)
	}
}

// TestMemoryConcurrent publishes from many goroutines while topics are being
// watched and checks every entry after Tail.Last is delivered once, in order.
func TestMemoryConcurrent(t *testing.T) {
	const (
		publishers = 8
		perPub     = 300
	)
	topics := []string{"a", "b", "c", "unwatched"}
	m := newTestMemory(t, MemoryConfig{})
	rec := newRecorder(t)
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// "a" is watched before anything is published; "b" and "c" while
	// publishers run.
	tails := map[string]Tail{}
	var tmu sync.Mutex
	watch := func(topic string) {
		tail, err := m.Watch(ctx, topic, 50, 0)
		if err != nil {
			t.Error(err)
		}
		tmu.Lock()
		tails[topic] = tail
		tmu.Unlock()
	}
	watch("a")

	var (
		wg         sync.WaitGroup
		pmu        sync.Mutex
		published  = map[string][]ID{}
		progress   atomic.Int64
		watchedAll atomic.Bool
	)
	for p := range publishers {
		wg.Go(func() {
			// At least perPub each, and keep going until every topic is
			// watched and 20 more are out, so b and c are watched mid-stream.
			// Bounded in any case.
			more := 0
			for i := range 20 * perPub {
				if watchedAll.Load() {
					more++
				}
				if i >= perPub && more > 20 {
					break
				}
				topic := topics[(p+i)%len(topics)]
				id, err := m.Publish(ctx, topic, "", []byte("x"))
				if err != nil {
					t.Error(err)
					return
				}
				pmu.Lock()
				published[topic] = append(published[topic], id)
				pmu.Unlock()
				progress.Add(1)
			}
		})
	}
	wg.Go(func() {
		// Not waitFor: t.Fatal must not be called from this goroutine.
		// Publishers always get this far (each publishes at least perPub).
		deadline := time.Now().Add(20 * time.Second)
		for progress.Load() < publishers*perPub/4 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		watch("b")
		for progress.Load() < publishers*perPub/2 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		watch("c")
		watchedAll.Store(true)
	})
	wg.Wait()

	for _, topic := range topics[:3] {
		all := published[topic]
		slices.SortFunc(all, ID.Compare)
		tail := tails[topic]
		// Everything after Tail.Last, nothing at or before it.
		i, _ := slices.BinarySearchFunc(all, tail.Last, ID.Compare)
		if tail.Last.IsZero() {
			i = 0
		} else {
			i++ // Last itself was published
		}
		want := all[i:]
		if topic != "a" && (len(want) == 0 || i == 0) {
			t.Errorf("topic %q was not watched mid-stream (%d before, %d after)", topic, i, len(want))
		}
		waitFor(t, "delivery of "+topic, func() bool { return rec.count(topic) >= len(want) })
		if got := ids(rec.entries(topic)); !slices.Equal(got, want) {
			t.Errorf("topic %q: delivered %d entries, want %d after %v (first got %v, want %v)",
				topic, len(got), len(want), tail.Last, firstID(got), firstID(want))
		}
		// The tail joins the live entries without a gap.
		if len(tail.Entries) > 0 {
			j := i - len(tail.Entries)
			if !slices.Equal(ids(tail.Entries), all[j:i]) {
				t.Errorf("topic %q: tail %v is not the %d entries before %v", topic, ids(tail.Entries), len(tail.Entries), tail.Last)
			}
		}
	}
	if n := rec.count("unwatched"); n != 0 {
		t.Errorf("%d entries delivered for an unwatched topic", n)
	}
}

func firstID(ids []ID) any {
	if len(ids) == 0 {
		return "none"
	}
	return ids[0]
}

func TestMemoryUnwatch(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	rec := newRecorder(t)
	ctx := context.Background()
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Watch(ctx, "t", 0, 0); err != nil {
		t.Fatal(err)
	}
	a := mustPublish(t, m, "t", "a")
	waitFor(t, "first entry", func() bool { return rec.count("t") == 1 })
	m.Unwatch("t")
	m.Unwatch("t")       // twice is fine
	m.Unwatch("missing") // so is a topic never seen
	mustPublish(t, m, "t", "b")
	c := mustPublish(t, m, "t", "c")

	// Barrier: another topic's entry is delivered after t's publishes.
	if _, err := m.Watch(ctx, "other", 0, 0); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, m, "other", "x")
	waitFor(t, "barrier entry", func() bool { return rec.count("other") == 1 })
	if got := ids(rec.entries("t")); !slices.Equal(got, []ID{a}) {
		t.Fatalf("after Unwatch delivered %v, want only [%v]", got, a)
	}

	// Watching again starts after the newest entry.
	tail, err := m.Watch(ctx, "t", 0, 0)
	if err != nil || tail.Last != c {
		t.Fatalf("re-Watch = %+v, %v; want Last %v", tail, err, c)
	}
	d := mustPublish(t, m, "t", "d")
	waitFor(t, "entry after re-watch", func() bool { return rec.count("t") == 2 })
	if got := ids(rec.entries("t")); !slices.Equal(got, []ID{a, d}) {
		t.Fatalf("delivered %v, want [%v %v]", got, a, d)
	}
}

// TestMemoryTrimmedBeforeDelivery: a burst on a tiny MaxLen while the
// handler is busy trims entries the reader had not delivered; publishers do
// not wait, and the reader sends a reset (no entries) before what remains,
// so that the node's clients are told of the gap.
func TestMemoryTrimmedBeforeDelivery(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{MaxLen: 2})
	ctx := context.Background()
	entered := make(chan struct{})
	release := make(chan struct{})
	var mu sync.Mutex
	var batches [][]ID
	first := true
	h := func(topic string, entries []Entry) {
		mu.Lock()
		batches = append(batches, ids(entries))
		wasFirst := first
		first = false
		mu.Unlock()
		if wasFirst {
			close(entered)
			<-release // a slow handler, only for this test
		}
	}
	if err := m.Start(h); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Watch(ctx, "t", 0, 0); err != nil {
		t.Fatal(err)
	}
	var all []ID
	all = append(all, mustPublish(t, m, "t", "0"))
	<-entered
	for i := 1; i <= 5; i++ {
		all = append(all, mustPublish(t, m, "t", fmt.Sprint(i)))
	}
	close(release)
	waitFor(t, "the rest", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(batches) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	want := [][]ID{all[:1], nil, all[4:]}
	if !slices.EqualFunc(batches, want, slices.Equal) {
		t.Fatalf("batches = %v, want %v", batches, want)
	}
	info, _ := m.Info(ctx, "t")
	if info.MaxDeleted != all[3] {
		t.Fatalf("MaxDeleted = %v, want %v (the gap the replay window reports)", info.MaxDeleted, all[3])
	}
}

func TestMemoryBadInput(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	ctx := context.Background()
	bad := "bad topic"
	if _, err := m.Publish(ctx, bad, "", nil); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Publish: %v, want ErrBadTopic", err)
	}
	for _, event := range []string{"a\nb", "sse-gap"} {
		if _, err := m.Publish(ctx, "t", event, nil); !errors.Is(err, ErrBadEvent) {
			t.Errorf("Publish event %q: %v, want ErrBadEvent", event, err)
		}
	}
	if _, err := m.Watch(ctx, bad, 0, 0); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Watch: %v, want ErrBadTopic", err)
	}
	if _, err := m.Range(ctx, bad, ID{}, 1); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Range: %v, want ErrBadTopic", err)
	}
	if _, err := m.Info(ctx, bad); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Info: %v, want ErrBadTopic", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Publish(cctx, "t", "", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with cancelled context: %v", err)
	}
	if err := m.Ping(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ping with cancelled context: %v", err)
	}
	if err := m.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}

	if err := m.Start(nil); err == nil {
		t.Error("Start(nil): no error")
	}
	if err := m.Start(func(string, []Entry) {}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(func(string, []Entry) {}); err == nil {
		t.Error("second Start: no error")
	}
}

func TestMemoryClose(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	rec := newRecorder(t)
	ctx := context.Background()
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Watch(ctx, "t", 0, 0); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, m, "t", "a")
	for i := range 3 {
		if err := m.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	// The reader has exited: goleak in TestMain checks it, and so does this.
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	<-done

	checks := map[string]error{}
	_, checks["Publish"] = m.Publish(ctx, "t", "", nil)
	_, checks["Watch"] = m.Watch(ctx, "t", 0, 0)
	_, checks["Range"] = m.Range(ctx, "t", ID{}, 1)
	_, checks["Info"] = m.Info(ctx, "t")
	checks["Ping"] = m.Ping(ctx)
	checks["Start"] = m.Start(rec.handle)
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	m.Unwatch("t") // no-op, no panic

	// Close without Start, and Start racing Close, leave no goroutine.
	m2 := newTestMemory(t, MemoryConfig{})
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		m3, _ := NewMemory(MemoryConfig{})
		var wg sync.WaitGroup
		wg.Go(func() { _ = m3.Start(func(string, []Entry) {}) })
		wg.Go(func() { _ = m3.Close() })
		wg.Wait()
		m3.Close()
	}
}

// TestMemoryCloseWaitsForHandler: Close returns only after a Handler call in
// progress has returned.
func TestMemoryCloseWaitsForHandler(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	entered := make(chan struct{})
	var returned atomic.Bool
	h := func(string, []Entry) {
		close(entered)
		time.Sleep(20 * time.Millisecond)
		returned.Store(true)
	}
	if err := m.Start(h); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Watch(context.Background(), "t", 0, 0); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, m, "t", "a")
	<-entered
	m.Close()
	if !returned.Load() {
		t.Fatal("Close returned while the handler was running")
	}
}

func TestMemoryPublishAllocs(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{MaxLen: 16})
	ctx := context.Background()
	data := []byte("payload")
	if _, err := m.Watch(ctx, "watched", 0, 0); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"plain", "watched"} {
		for range 64 { // reach the steady state of the log
			mustPublish(t, m, topic, "warm")
		}
		allocs := testing.AllocsPerRun(200, func() {
			if _, err := m.Publish(ctx, topic, "", data); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 1 {
			t.Errorf("Publish to %s topic: %v allocations, want at most 1 (the data copy)", topic, allocs)
		}
	}
}

func BenchmarkMemoryPublish(b *testing.B) {
	m := newTestMemory(b, MemoryConfig{MaxLen: 1000})
	ctx := context.Background()
	var delivered atomic.Int64
	if err := m.Start(func(_ string, es []Entry) { delivered.Add(int64(len(es))) }); err != nil {
		b.Fatal(err)
	}
	if _, err := m.Watch(ctx, "t", 0, 0); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 128)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Publish(ctx, "t", "", data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemoryPage: a page and the stream's state come from one instant, with
// the same meaning as Redis' page read.
func TestMemoryPage(t *testing.T) {
	clock := newFakeClock(1000)
	m := newTestMemory(t, MemoryConfig{MaxLen: 5, Now: clock.Now})
	ctx := context.Background()
	if p, err := m.Page(ctx, "t", ID{}, 10, 0); err != nil || p.Info.Exists || p.Read != 0 || len(p.Entries) != 0 {
		t.Fatalf("Page of a missing topic = %+v, %v; want empty, not existing", p, err)
	}
	var all []ID
	for i := range 8 {
		all = append(all, mustPublish(t, m, "t", fmt.Sprint(i)))
	}
	info := StreamInfo{Exists: true, Length: 5, First: all[3], Last: all[7], MaxDeleted: all[2]}
	size := (&Entry{ID: all[0], Data: []byte("0")}).Size() // every entry's
	tests := []struct {
		after    ID
		count    int
		maxBytes int
		want     []ID
		cut      bool
	}{
		{ID{}, 10, 0, all[3:], false},
		{ID{}, 2, 0, all[3:5], false},
		{all[4], 2, 0, all[5:7], false},
		{all[7], 2, 0, nil, false},
		{ID{}, 10, 2 * size, all[3:5], true},      // stops at the entry that reaches the bound
		{ID{}, 10, 2*size - 1, all[3:5], true},    // ... which is in the page
		{ID{}, 10, 1, all[3:4], true},             // an entry above the bound is a page alone
		{ID{}, 2, 2 * size, all[3:5], false},      // full by count
		{all[5], 10, 2 * size, all[6:8], false},   // the end of the stream
		{all[5], 10, 100 * size, all[6:8], false}, // the end, far from the bound
	}
	for _, tt := range tests {
		p, err := m.Page(ctx, "t", tt.after, tt.count, tt.maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		var last ID
		if len(tt.want) > 0 {
			last = tt.want[len(tt.want)-1]
		}
		if !slices.Equal(ids(p.Entries), tt.want) || p.Info != info || p.Read != len(tt.want) || p.Last != last || p.Cut != tt.cut {
			t.Errorf("Page(%v, %d, %d) = %v %+v read %d last %v cut %v; want %v %+v read %d last %v cut %v",
				tt.after, tt.count, tt.maxBytes, ids(p.Entries), p.Info, p.Read, p.Last, p.Cut, tt.want, info, len(tt.want), last, tt.cut)
		}
	}
	if _, err := m.Page(ctx, "t", ID{}, 0, 0); err == nil {
		t.Error("Page with count 0: no error")
	}
	if info2, err := m.Info(ctx, "t"); err != nil || info2 != info {
		t.Errorf("Info = %+v, %v; want the Page's %+v", info2, err, info)
	}
}

// heldSum recounts what m's topics hold, to check the running count.
func heldSum(m *Memory) int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var n int64
	for _, s := range m.topics {
		n += s.cost()
		s.mu.Lock()
		for i := s.head; i < len(s.log); i++ {
			n += int64(s.log[i].Size())
		}
		s.mu.Unlock()
	}
	return n
}

// TestMemoryMaxBytes: past MaxBytes, the oldest entries of all topics go
// first, down to seven eighths of the budget, whichever topic holds them;
// the topics' Info and Range say so; a topic left empty is dropped; an
// entry above the budget is refused.
func TestMemoryMaxBytes(t *testing.T) {
	const size = 100 // data bytes of each entry
	per := int64(size + EntryOverhead)
	clock := newFakeClock(1_000)
	m := newTestMemory(t, MemoryConfig{MaxBytes: 80 * per, Now: clock.Now})
	ctx := context.Background()
	data := make([]byte, size)
	topics := []string{"a", "b", "c"}
	var all []ID // every ID published, oldest first, with its topic
	var topicOf = map[ID]string{}
	// Topic z first: 79 entries, all of which the budget later trims.
	for i := 0; i < 79; i++ {
		clock.Add(time.Millisecond)
		all = append(all, mustPublish(t, m, "z", "old"))
	}
	// Uneven: topic a gets every second entry, b and c share the rest, so
	// the oldest entries are not one topic's.
	for i := 0; i < 200; i++ {
		clock.Add(time.Millisecond)
		tp := topics[0]
		if i%2 == 1 {
			tp = topics[1+(i/2)%2]
		}
		id, err := m.Publish(ctx, tp, "", data)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, id)
		topicOf[id] = tp
		if held := m.HeldBytes(); held > 80*per {
			t.Fatalf("after publish %d: %d bytes held, budget %d", i, held, 80*per)
		}
		if held, sum := m.HeldBytes(), heldSum(m); held != sum {
			t.Fatalf("after publish %d: count %d, entries held %d", i, held, sum)
		}
	}
	// The newest entries survive, in every topic: exactly a suffix of all.
	var kept []ID
	for _, tp := range topics {
		got, err := m.Range(ctx, tp, ID{}, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			kept = append(kept, e.ID)
		}
		info, err := m.Info(ctx, tp)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 && (info.First != got[0].ID || !info.MaxDeleted.Less(info.First)) {
			t.Errorf("%s: Info %+v, first held %v", tp, info, got[0].ID)
		}
	}
	slices.SortFunc(kept, func(a, b ID) int { return a.Compare(b) })
	// The three topics cost about 4.5 entries of the budget.
	if n := len(kept); n < 60 || n > 76 || !slices.Equal(kept, all[len(all)-n:]) {
		t.Fatalf("kept %d entries %v..., want the newest 60 to 76 of all topics", n, firstID(kept))
	}
	// Emptied and watched by no one, z is dropped, as a deleted stream.
	if info, _ := m.Info(ctx, "z"); info.Exists {
		t.Errorf("z: Info %+v, want dropped", info)
	}
	if _, err := m.Publish(ctx, "a", "", make([]byte, 80*per)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("publish above the budget: %v, want ErrTooLarge", err)
	}
}

// TestMemoryMaxBytesConcurrent: publishers on many topics at once, with
// MaxLen trims racing the budget's; once they stop, the count matches the
// entries held and is within the budget.
func TestMemoryMaxBytesConcurrent(t *testing.T) {
	const budget = 64 << 10
	m := newTestMemory(t, MemoryConfig{MaxBytes: budget, MaxLen: 50})
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				topic := fmt.Sprintf("t%d", (w*7+i)%23)
				if _, err := m.Publish(ctx, topic, "", make([]byte, (i*37)%900)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	m.trimBytes() // a publisher that found another trimming left it the work
	if held, sum := m.HeldBytes(), heldSum(m); held != sum || held > budget {
		t.Fatalf("count %d, entries held %d, budget %d", held, sum, budget)
	}
}

// TestMemoryMaxBytesTopics: a flood of topics of one entry each stays
// within the budget (a topic counts besides its entries, and the topics
// the budget empties are dropped), except a watched one: it stays, empty,
// and its next entry is delivered as usual (its trimmed entry had been).
func TestMemoryMaxBytesTopics(t *testing.T) {
	const budget = 64 << 10
	m := newTestMemory(t, MemoryConfig{MaxBytes: budget})
	rec := newRecorder(t)
	if err := m.Start(rec.handle); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := m.Watch(ctx, "watched", 0, 0); err != nil {
		t.Fatal(err)
	}
	first := mustPublish(t, m, "watched", "first")
	waitFor(t, "the watched entry", func() bool { return rec.count("watched") == 1 })
	for i := range 10000 {
		mustPublish(t, m, fmt.Sprintf("flood%d", i), "x")
		if held := m.HeldBytes(); held > budget {
			t.Fatalf("after topic %d: %d bytes held, budget %d", i, held, budget)
		}
	}
	if held, sum := m.HeldBytes(), heldSum(m); held != sum {
		t.Fatalf("count %d, recount %d", held, sum)
	}
	m.mu.RLock()
	topics := len(m.topics)
	m.mu.RUnlock()
	if most := budget / (topicCost + EntryOverhead); topics > most {
		t.Errorf("%d topics held, want at most %d", topics, most)
	}
	if info, _ := m.Info(ctx, "watched"); !info.Exists || info.Length != 0 || info.MaxDeleted != first {
		t.Errorf("watched: Info %+v, want existing, empty, max-deleted %v", info, first)
	}
	if info, _ := m.Info(ctx, "flood0"); info.Exists {
		t.Errorf("flood0: Info %+v, want dropped", info)
	}
	second := mustPublish(t, m, "watched", "second")
	waitFor(t, "the second entry", func() bool { return rec.count("watched") == 2 })
	if got := ids(rec.entries("watched")); !slices.Equal(got, []ID{first, second}) {
		t.Errorf("watched: delivered %v, want %v", got, []ID{first, second})
	}
}

// TestMemoryKeepsOwnStrings: the topic name and event type the broker
// keeps are its own copies. A caller's strings may be pieces of a much
// larger buffer (net/http's urlencoded form values are pieces of the whole
// body's string), which the broker would otherwise hold, uncounted.
func TestMemoryKeepsOwnStrings(t *testing.T) {
	m := newTestMemory(t, MemoryConfig{})
	body := strings.Repeat("x", 1<<20) + "topicev"
	topic, event := body[1<<20:1<<20+5], body[1<<20+5:]
	if _, err := m.Publish(context.Background(), topic, event, []byte("d")); err != nil {
		t.Fatal(err)
	}
	start := uintptr(unsafe.Pointer(unsafe.StringData(body)))
	inBody := func(s string) bool {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		return p >= start && p < start+uintptr(len(body))
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for key, s := range m.topics {
		if inBody(key) || inBody(s.topic) {
			t.Errorf("topic %q: the map key or the stream's name is a piece of the caller's buffer", key)
		}
		for i := s.head; i < len(s.log); i++ {
			if inBody(s.log[i].Event) {
				t.Errorf("topic %q: an entry's event is a piece of the caller's buffer", key)
			}
		}
	}
}

// TestMemoryMaxBytesWatchedTopics: watched topics alone cost more than the
// budget (a trim cannot free them). Publishes then trim once per eighth of
// the budget they add, not each one looking at every topic again, and
// what they add is still trimmed.
func TestMemoryMaxBytesWatchedTopics(t *testing.T) {
	const budget = 64 << 10
	m := newTestMemory(t, MemoryConfig{MaxBytes: budget})
	ctx := context.Background()
	for i := range 400 { // 400 x (256 + 5) bytes > 64 KiB
		if _, err := m.Watch(ctx, fmt.Sprintf("w%04d", i), 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	watched := m.HeldBytes()
	if watched <= budget {
		t.Fatalf("watched topics cost %d, want more than the budget %d", watched, budget)
	}
	const n = 1000 // 1000 x 73 bytes: about nine eighths of the budget
	for range n {
		mustPublish(t, m, "live", "x")
	}
	if p := m.passes.Load(); p > 20 {
		t.Errorf("%d trims for %d publishes, want about one per %d bytes published", p, n, budget/8)
	}
	if held := m.HeldBytes(); held > watched+budget/8+budget/8 {
		t.Errorf("%d bytes held, want at most the watched topics' %d and an eighth of the budget or two", held, watched)
	}
}
