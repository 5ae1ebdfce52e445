package replay

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// fakeSource is a hand-written Source holding streams in memory, counting
// calls and checking that Watch/Unwatch calls for a topic never overlap.
type fakeSource struct {
	mu      sync.Mutex
	streams map[string]*fakeStream

	watches, unwatches, ranges, infos atomic.Int64
	rechecked                         sync.Map     // topic -> true: Recheck was called
	maxCount                          atomic.Int64 // largest count a Range asked for
	tailBytes                         atomic.Int64 // Entry.Size of the entries of every Watch tail

	inflight sync.Map // topic -> *atomic.Int32: Watch/Unwatch calls in progress
	overlap  atomic.Bool

	// Hooks, set before use; nil means none.
	watchErr  error                                   // Watch fails with this
	onWatch   func(ctx context.Context, topic string) // runs inside Watch before the tail is read
	afterTail func(topic string)                      // runs inside Watch after the tail is read
	onUnwatch func(topic string)                      // runs inside Unwatch
	onRange   func(topic string, after pubsub.ID)     // runs inside Range before reading
	onInfo    func(topic string)                      // runs inside Info before reading
	rangeErr  error
	infoErr   error
	infoStall chan struct{} // Info waits for it to close, or for its ctx, as Redis stalled
}

type fakeStream struct {
	entries    []pubsub.Entry
	last       pubsub.ID
	maxDeleted pubsub.ID
	lost       bool // the key does not exist
}

func newFake() *fakeSource { return &fakeSource{streams: make(map[string]*fakeStream)} }

func (f *fakeSource) stream(topic string) *fakeStream {
	s := f.streams[topic]
	if s == nil {
		s = &fakeStream{lost: true}
		f.streams[topic] = s
	}
	return s
}

// add appends entries with IDs ms-0 for ms in [from, to].
func (f *fakeSource) add(topic string, from, to uint64) []pubsub.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stream(topic)
	s.lost = false
	var added []pubsub.Entry
	for ms := from; ms <= to; ms++ {
		e := entry(ms)
		s.entries = append(s.entries, e)
		s.last = e.ID
		added = append(added, e)
	}
	return added
}

// trim drops the entries with ID <= upTo, as XTRIM MINID does.
func (f *fakeSource) trim(topic string, upTo pubsub.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stream(topic)
	k := sort.Search(len(s.entries), func(i int) bool { return upTo.Less(s.entries[i].ID) })
	if k > 0 && s.maxDeleted.Less(s.entries[k-1].ID) {
		s.maxDeleted = s.entries[k-1].ID
	}
	s.entries = append([]pubsub.Entry(nil), s.entries[k:]...)
}

// snapshot returns the entries held.
func (f *fakeSource) snapshot(topic string) []pubsub.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.stream(topic).entries)
}

// t0ctx is the context of calls that a test does not cancel.
var t0ctx = context.Background()

// lose deletes the stream, as a Redis that lost its data.
func (f *fakeSource) lose(topic string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.streams[topic] = &fakeStream{lost: true}
}

func (f *fakeSource) enter(topic string) func() {
	v, _ := f.inflight.LoadOrStore(topic, new(atomic.Int32))
	c := v.(*atomic.Int32)
	if c.Add(1) != 1 {
		f.overlap.Store(true)
	}
	return func() { c.Add(-1) }
}

func (f *fakeSource) Watch(ctx context.Context, topic string, tail, maxBytes int) (pubsub.Tail, error) {
	defer f.enter(topic)()
	f.watches.Add(1)
	if f.onWatch != nil {
		f.onWatch(ctx, topic)
	}
	if f.watchErr != nil {
		return pubsub.Tail{}, f.watchErr
	}
	if err := ctx.Err(); err != nil {
		return pubsub.Tail{}, err
	}
	f.mu.Lock()
	s := f.stream(topic)
	t := pubsub.Tail{Last: s.last}
	k, bytes := len(s.entries), 0
	for ; k > 0 && len(s.entries)-k < tail; k-- {
		size := s.entries[k-1].Size()
		if maxBytes > 0 && bytes+size > maxBytes {
			break
		}
		bytes += size
	}
	f.tailBytes.Add(int64(bytes))
	t.Entries = append([]pubsub.Entry(nil), s.entries[k:]...)
	f.mu.Unlock()
	if f.afterTail != nil {
		f.afterTail(topic)
	}
	return t, nil
}

func (f *fakeSource) Unwatch(topic string) {
	defer f.enter(topic)()
	f.unwatches.Add(1)
	if f.onUnwatch != nil {
		f.onUnwatch(topic)
	}
}

func (f *fakeSource) Page(ctx context.Context, topic string, after pubsub.ID, count, maxBytes int) (pubsub.Page, error) {
	f.ranges.Add(1)
	for {
		m := f.maxCount.Load()
		if int64(count) <= m || f.maxCount.CompareAndSwap(m, int64(count)) {
			break
		}
	}
	if f.onRange != nil {
		f.onRange(topic, after)
	}
	if f.rangeErr != nil {
		return pubsub.Page{}, f.rangeErr
	}
	if err := ctx.Err(); err != nil {
		return pubsub.Page{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stream(topic)
	p := pubsub.Page{Info: s.infoLocked()}
	k := sort.Search(len(s.entries), func(i int) bool { return after.Less(s.entries[i].ID) })
	end := min(len(s.entries), k+count)
	size := 0
	for i := k; i < end && maxBytes > 0; i++ {
		if size += s.entries[i].Size(); size >= maxBytes {
			p.Cut = i+1 < end
			end = i + 1
		}
	}
	p.Entries = append([]pubsub.Entry{}, s.entries[k:end]...)
	if p.Read = len(p.Entries); p.Read > 0 {
		p.Last = p.Entries[p.Read-1].ID
	}
	return p, nil
}

func (f *fakeSource) Recheck(topic string) { f.rechecked.Store(topic, true) }

func (f *fakeSource) Info(ctx context.Context, topic string) (pubsub.StreamInfo, error) {
	f.infos.Add(1)
	if f.onInfo != nil {
		f.onInfo(topic)
	}
	if f.infoErr != nil {
		return pubsub.StreamInfo{}, f.infoErr
	}
	if f.infoStall != nil {
		select {
		case <-f.infoStall:
		case <-ctx.Done():
			return pubsub.StreamInfo{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stream(topic).infoLocked(), nil
}

// infoLocked is the stream's state as Redis reports it; f.mu is held.
func (s *fakeStream) infoLocked() pubsub.StreamInfo {
	if s.lost {
		return pubsub.StreamInfo{}
	}
	info := pubsub.StreamInfo{Exists: true, Length: int64(len(s.entries)), Last: s.last, MaxDeleted: s.maxDeleted}
	if len(s.entries) > 0 {
		info.First = s.entries[0].ID
	}
	return info
}

// del removes the entry ms-0, as XDEL does.
func (f *fakeSource) del(topic string, ms uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stream(topic)
	s.entries = slices.DeleteFunc(s.entries, func(e pubsub.Entry) bool { return e.ID == id(ms) })
	if s.maxDeleted.Less(id(ms)) {
		s.maxDeleted = id(ms)
	}
}

// entry builds the test entry with ID ms-0.
func entry(ms uint64) pubsub.Entry {
	return pubsub.Entry{ID: pubsub.ID{Ms: ms}, Data: []byte(fmt.Sprint(ms))}
}

func entries(from, to uint64) []pubsub.Entry {
	var es []pubsub.Entry
	for ms := from; ms <= to; ms++ {
		es = append(es, entry(ms))
	}
	return es
}

func id(ms uint64) pubsub.ID { return pubsub.ID{Ms: ms} }

// newWindow builds a Window over src or fails the test.
func newWindow(t testing.TB, src Source, cfg Config) *Window {
	t.Helper()
	w, err := New(src, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return w
}

// acquire acquires topic and releases it at the end of the test.
func acquire(t testing.TB, w *Window, topic string) {
	t.Helper()
	if err := w.Acquire(context.Background(), topic); err != nil {
		t.Fatalf("Acquire(%q): %v", topic, err)
	}
	t.Cleanup(func() { w.Release(topic) })
}

// collect replays and returns the emitted IDs' ms parts.
func collect(t testing.TB, w *Window, topic string, after pubsub.ID) ([]uint64, []Gap, Result) {
	t.Helper()
	var got []uint64
	var gaps []Gap
	res, err := w.Replay(context.Background(), topic, after,
		func(g Gap) error { gaps = append(gaps, g); return nil },
		func(e pubsub.Entry) error {
			if string(e.Data) != fmt.Sprint(e.ID.Ms) {
				return fmt.Errorf("entry %s has data %q", e.ID, e.Data)
			}
			got = append(got, e.ID.Ms)
			return nil
		})
	if err != nil {
		t.Fatalf("Replay(%q, %s): %v", topic, after, err)
	}
	return got, gaps, res
}

// seq returns [from, to] as a slice (nil when from > to).
func seq(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
