package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
)

// deliverWithin bounds every wait for a delivery. It is generous (tests
// must not be gated on speed) yet far below the one-minute Block some tests
// use, so a delivery within it proves the reader was woken.
const deliverWithin = 10 * time.Second

// collector is a Handler that records deliveries and checks the contract:
// never concurrently for one topic, IDs ascending.
type collector struct {
	t        testing.TB
	mu       sync.Mutex
	byTopic  map[string][]pubsub.Entry
	inFlight map[string]bool
	bad      []string // "topic reason" from OnBadEntry
	changed  chan struct{}
}

func newCollector(t testing.TB) *collector {
	return &collector{
		t:        t,
		byTopic:  make(map[string][]pubsub.Entry),
		inFlight: make(map[string]bool),
		changed:  make(chan struct{}, 1),
	}
}

func (c *collector) handle(topic string, entries []pubsub.Entry) {
	c.mu.Lock()
	if c.inFlight[topic] {
		c.t.Errorf("handler called concurrently for %q", topic)
	}
	c.inFlight[topic] = true
	c.mu.Unlock()
	// Outside the lock, as a real handler would run.
	for i := 1; i < len(entries); i++ {
		if !entries[i-1].ID.Less(entries[i].ID) {
			c.t.Errorf("%q: entries out of order: %v then %v", topic, entries[i-1].ID, entries[i].ID)
		}
	}
	c.mu.Lock()
	c.inFlight[topic] = false
	if prev := c.byTopic[topic]; len(prev) > 0 && len(entries) > 0 && !prev[len(prev)-1].ID.Less(entries[0].ID) {
		c.t.Errorf("%q: batch starts at %v, not after %v", topic, entries[0].ID, prev[len(prev)-1].ID)
	}
	c.byTopic[topic] = append(c.byTopic[topic], entries...)
	c.mu.Unlock()
	c.signal()
}

func (c *collector) onBad(topic, reason string) {
	c.mu.Lock()
	c.bad = append(c.bad, topic+" "+reason)
	c.mu.Unlock()
	c.signal()
}

func (c *collector) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

func (c *collector) entries(topic string) []pubsub.Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.byTopic[topic])
}

func (c *collector) badReports() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.bad)
}

// waitFor polls cond, woken by deliveries, until it holds or d passes.
func (c *collector) waitFor(d time.Duration, cond func() bool) bool {
	return pollUntil(d, 50*time.Millisecond, c.changed, cond)
}

// waitEntries waits until topic has at least n entries delivered.
func (c *collector) waitEntries(t testing.TB, topic string, n int, d time.Duration) []pubsub.Entry {
	t.Helper()
	if !c.waitFor(d, func() bool { return len(c.entries(topic)) >= n }) {
		t.Fatalf("%q: %d entries delivered within %v, want %d", topic, len(c.entries(topic)), d, n)
	}
	return c.entries(topic)
}

// newBroker starts a broker on srv with a prefix of the test's own,
// closed at cleanup.
func newBroker(t testing.TB, srv *redistest.Server, edit func(*pubsub.RedisConfig)) (*pubsub.Redis, *collector) {
	t.Helper()
	col := newCollector(t)
	return newBrokerHandler(t, srv, edit, col, col.handle), col
}

// newBrokerHandler is newBroker with a handler of the test's own.
func newBrokerHandler(t testing.TB, srv *redistest.Server, edit func(*pubsub.RedisConfig), col *collector, h pubsub.Handler) *pubsub.Redis {
	t.Helper()
	cfg := pubsub.RedisConfig{
		URL:        srv.URL(),
		Prefix:     redistest.Prefix(t),
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		OnBadEntry: col.onBad,
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := pubsub.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if err := b.Start(h); err != nil {
		t.Fatal(err)
	}
	return b
}

// testWriter sends broker logs to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// xrangeIDs lists every ID of key with XRANGE, the ground truth.
func xrangeIDs(t testing.TB, srv *redistest.Server, key string) []pubsub.ID {
	t.Helper()
	msgs, err := srv.Client(t).XRange(ctxT(t), key, "-", "+").Result()
	if err != nil {
		t.Fatalf("xrange %s: %v", key, err)
	}
	ids := make([]pubsub.ID, len(msgs))
	for i, m := range msgs {
		if ids[i], err = pubsub.ParseID(m.ID); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func idsOf(es []pubsub.Entry) []pubsub.ID {
	ids := make([]pubsub.ID, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}

func xadd(t testing.TB, srv *redistest.Server, key string, fields ...any) pubsub.ID {
	t.Helper()
	args := append([]any{"XADD", key, "*"}, fields...)
	v := srv.MustDo(t, args...)
	s, ok := v.(string)
	if !ok {
		t.Fatalf("XADD reply %T %v", v, v)
	}
	id, err := pubsub.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestBroker runs the broker's behaviours against one shared Redis, each
// subtest with its own prefix.
func TestBroker(t *testing.T) {
	srv := redistest.Start(t)

	t.Run("DeliversRawXAddOnceInOrder", func(t *testing.T) {
		t.Parallel()
		b, col := newBroker(t, srv, nil)
		key := b.Prefix() + "orders"
		tail, err := b.Watch(ctxT(t), "orders", 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !tail.Last.IsZero() || len(tail.Entries) != 0 {
			t.Fatalf("tail of a missing stream = %+v, want zero", tail)
		}
		const n = 200
		for i := range n {
			xadd(t, srv, key, "data", "m"+strconv.Itoa(i), "event", "order", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		}
		got := col.waitEntries(t, "orders", n, deliverWithin)
		if want := xrangeIDs(t, srv, key); !slices.Equal(idsOf(got), want) {
			t.Fatalf("delivered IDs differ from XRANGE:\n got %v\nwant %v", idsOf(got), want)
		}
		for i, e := range got {
			if string(e.Data) != "m"+strconv.Itoa(i) || e.Event != "order" || e.TraceParent == "" {
				t.Fatalf("entry %d = %+v", i, e)
			}
		}
		// Nothing more arrives: no duplicate.
		xadd(t, srv, key, "data", "last")
		got = col.waitEntries(t, "orders", n+1, deliverWithin)
		if len(got) != n+1 || string(got[n].Data) != "last" {
			t.Fatalf("after one more XADD: %d entries, last %q", len(got), got[len(got)-1].Data)
		}
	})

	// A reader that falls behind trimming (a node frozen or starved while
	// publishers go on) finds its position gone: the entries between it
	// and the stream's first were trimmed, so the read is no continuation
	// and the topic resets (its clients resume and the replay announces
	// the gap). It jumped over them, silently, when a position below
	// the stream's first entry counted as "removed itself".
	t.Run("TrimOvertakingAReaderResets", func(t *testing.T) {
		t.Parallel()
		col := newCollector(t)
		release := make(chan struct{})
		var mu sync.Mutex
		var log []string // "entries FIRST..LAST" and "reset", in order
		b := newBrokerHandler(t, srv, nil, col, func(topic string, entries []pubsub.Entry) {
			mu.Lock()
			first := len(log) == 0
			if len(entries) == 0 {
				log = append(log, "reset")
			} else {
				log = append(log, fmt.Sprintf("entries %v..%v", entries[0].ID, entries[len(entries)-1].ID))
			}
			mu.Unlock()
			col.handle(topic, entries)
			if first {
				<-release // the reader is stuck, as on a frozen node
			}
		})
		key := b.Prefix() + "trimmed"
		if _, err := b.Watch(ctxT(t), "trimmed", 10, 0); err != nil {
			t.Fatal(err)
		}
		xadd(t, srv, key, "data", "first")
		col.waitEntries(t, "trimmed", 1, deliverWithin)
		for i := range 300 {
			srv.MustDo(t, "XADD", key, "MAXLEN", "10", "*", "data", strconv.Itoa(i))
		}
		close(release)
		if !col.waitFor(deliverWithin, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.Contains(log, "reset")
		}) {
			mu.Lock()
			t.Fatalf("no reset within %v after the reader's position was trimmed; deliveries: %v", deliverWithin, log)
		}
		mu.Lock()
		defer mu.Unlock()
		if log[1] != "reset" {
			t.Fatalf("deliveries %v: entries after the trimmed position before the reset", log)
		}
	})

	t.Run("ManyTopicsAcrossReaders", func(t *testing.T) {
		t.Parallel()
		b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.Readers = 3; c.Count = 7 })
		const topics, per = 30, 20
		for i := range topics {
			if _, err := b.Watch(ctxT(t), "room/"+strconv.Itoa(i), 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		for j := range per {
			for i := range topics {
				if _, err := b.Publish(ctxT(t), "room/"+strconv.Itoa(i), "", []byte(strconv.Itoa(j))); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := range topics {
			topic := "room/" + strconv.Itoa(i)
			got := col.waitEntries(t, topic, per, deliverWithin)
			if want := xrangeIDs(t, srv, b.Prefix()+topic); !slices.Equal(idsOf(got), want) {
				t.Fatalf("%s: delivered %v, XRANGE %v", topic, idsOf(got), want)
			}
		}
	})

	t.Run("WatchWakesBlockedReader", func(t *testing.T) {
		t.Parallel()
		// One reader blocking for a minute: a delivery within
		// deliverWithin is only possible if Watch and Unwatch wake it.
		b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.Readers = 1; c.Block = time.Minute })
		if _, err := b.Watch(ctxT(t), "first", 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Publish(ctxT(t), "first", "", []byte("1")); err != nil {
			t.Fatal(err)
		}
		col.waitEntries(t, "first", 1, deliverWithin) // the reader is now in its blocking loop
		for i := range 3 {
			topic := "second-" + strconv.Itoa(i)
			if _, err := b.Watch(ctxT(t), topic, 0, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Publish(ctxT(t), topic, "", []byte("x")); err != nil {
				t.Fatal(err)
			}
			col.waitEntries(t, topic, 1, deliverWithin)
			b.Unwatch(topic)
		}
		// Unwatch took effect: entries of an unwatched topic are not delivered,
		// the remaining topic still is.
		if _, err := b.Publish(ctxT(t), "second-0", "", []byte("y")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Publish(ctxT(t), "first", "", []byte("2")); err != nil {
			t.Fatal(err)
		}
		col.waitEntries(t, "first", 2, deliverWithin)
		if n := len(col.entries("second-0")); n != 1 {
			t.Fatalf("unwatched topic got %d entries, want 1", n)
		}
	})

	t.Run("WatchTail", func(t *testing.T) {
		t.Parallel()
		b, col := newBroker(t, srv, nil)
		ctx := ctxT(t)
		var ids []pubsub.ID
		for i := range 5 {
			id, err := b.Publish(ctx, "tail", "", []byte(strconv.Itoa(i)))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		tail, err := b.Watch(ctx, "tail", 3, 0)
		if err != nil {
			t.Fatal(err)
		}
		if tail.Last != ids[4] || !slices.Equal(idsOf(tail.Entries), ids[2:]) {
			t.Fatalf("tail = last %v entries %v, want %v %v", tail.Last, idsOf(tail.Entries), ids[4], ids[2:])
		}
		// A byte bound keeps the newest entries that fit whole (the read
		// script counts 72 per entry plus field names and values: 77 here),
		// none when the newest does not fit; Last stays the stream's.
		for _, tt := range []struct {
			maxBytes int
			want     []pubsub.ID
		}{{2 * 77, ids[3:]}, {76, nil}} {
			tail, err := b.Watch(ctx, "tail", 3, tt.maxBytes)
			if err != nil || tail.Last != ids[4] || !slices.Equal(idsOf(tail.Entries), tt.want) {
				t.Fatalf("tail within %d bytes = last %v entries %v, %v; want %v %v", tt.maxBytes, tail.Last, idsOf(tail.Entries), err, ids[4], tt.want)
			}
		}
		// Watching again is a no-op for delivery: the next entry comes once.
		if _, err := b.Watch(ctx, "tail", 0, 0); err != nil {
			t.Fatal(err)
		}
		id5, _ := b.Publish(ctx, "tail", "", []byte("5"))
		got := col.waitEntries(t, "tail", 1, deliverWithin)
		if len(got) != 1 || got[0].ID != id5 {
			t.Fatalf("after tail: %v, want [%v]", idsOf(got), id5)
		}

		// An empty stream: Last is its last-generated-id.
		key := b.Prefix() + "emptied"
		last := xadd(t, srv, key, "data", "gone")
		srv.MustDo(t, "XTRIM", key, "MAXLEN", "0")
		tail, err = b.Watch(ctx, "emptied", 5, 0)
		if err != nil || tail.Last != last || len(tail.Entries) != 0 {
			t.Fatalf("emptied: %+v, %v; want Last %v", tail, err, last)
		}

		srv.MustDo(t, "SET", b.Prefix()+"str", "x")
		if _, err := b.Watch(ctx, "str", 1, 0); !errors.Is(err, pubsub.ErrWrongType) {
			t.Fatalf("watch of a string key: %v, want ErrWrongType", err)
		}
	})

	t.Run("RangePaging", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, nil)
		ctx := ctxT(t)
		var ids []pubsub.ID
		for i := range 25 {
			id, err := b.Publish(ctx, "pages", "", []byte(strconv.Itoa(i)))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		var got []pubsub.ID
		after := pubsub.ID{}
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("paging does not end")
			}
			page, err := b.Range(ctx, "pages", after, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			got = append(got, idsOf(page)...)
			after = page[len(page)-1].ID
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("paged %v, want %v", got, ids)
		}
		page, err := b.Range(ctx, "pages", ids[21], 100)
		if err != nil || !slices.Equal(idsOf(page), ids[22:]) {
			t.Fatalf("range after %v = %v, %v", ids[21], idsOf(page), err)
		}
		if page, err := b.Range(ctx, "missing", pubsub.ID{}, 10); err != nil || len(page) != 0 {
			t.Fatalf("range of missing = %v, %v", page, err)
		}
		if page, err := b.Range(ctx, "pages", pubsub.MaxID, 10); err != nil || len(page) != 0 {
			t.Fatalf("range after MaxID = %v, %v", page, err)
		}
	})

	t.Run("Info", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, nil)
		ctx := ctxT(t)
		info, err := b.Info(ctx, "info")
		if err != nil || info.Exists {
			t.Fatalf("info of missing = %+v, %v", info, err)
		}
		var ids []pubsub.ID
		for i := range 10 {
			id, _ := b.Publish(ctx, "info", "", []byte(strconv.Itoa(i)))
			ids = append(ids, id)
		}
		info, err = b.Info(ctx, "info")
		want := pubsub.StreamInfo{Exists: true, Length: 10, First: ids[0], Last: ids[9]}
		if err != nil || info != want {
			t.Fatalf("info = %+v, %v; want %+v", info, err, want)
		}
		// Redis records no max-deleted-entry-id for trimming; Info bounds
		// the trimmed IDs by First: at or after the last trimmed entry,
		// before the first one held.
		srv.MustDo(t, "XTRIM", b.Prefix()+"info", "MAXLEN", "=", "5")
		info, err = b.Info(ctx, "info")
		if err != nil || info.Length != 5 || info.First != ids[5] || info.Last != ids[9] ||
			info.MaxDeleted.Less(ids[4]) || !info.MaxDeleted.Less(ids[5]) {
			t.Fatalf("after XTRIM: info = %+v, %v; want MaxDeleted in [%v, %v)", info, err, ids[4], ids[5])
		}
		// XDEL is recorded exactly.
		srv.MustDo(t, "XDEL", b.Prefix()+"info", ids[7].String())
		info, err = b.Info(ctx, "info")
		if err != nil || info.Length != 4 || info.MaxDeleted != ids[7] {
			t.Fatalf("after XDEL: info = %+v, %v; want MaxDeleted %v", info, err, ids[7])
		}
		// Emptied: the newest entry is gone too.
		srv.MustDo(t, "XTRIM", b.Prefix()+"info", "MAXLEN", "=", "0")
		info, err = b.Info(ctx, "info")
		if err != nil || info.Length != 0 || !info.First.IsZero() || info.MaxDeleted != ids[9] {
			t.Fatalf("emptied: info = %+v, %v; want MaxDeleted %v", info, err, ids[9])
		}
		srv.MustDo(t, "SET", b.Prefix()+"str", "x")
		if _, err := b.Info(ctx, "str"); !errors.Is(err, pubsub.ErrWrongType) {
			t.Fatalf("info of a string key: %v, want ErrWrongType", err)
		}
	})

	t.Run("WrongTypeKeyDoesNotStopOthers", func(t *testing.T) {
		t.Parallel()
		// One reader, so both topics share each XREAD.
		b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.Readers = 1; c.Block = time.Second })
		ctx := ctxT(t)
		for _, topic := range []string{"good", "bad"} {
			if _, err := b.Watch(ctx, topic, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		srv.MustDo(t, "SET", b.Prefix()+"bad", "not a stream")
		for i := range 5 {
			if _, err := b.Publish(ctx, "good", "", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
		col.waitEntries(t, "good", 5, deliverWithin)
		if !col.waitFor(deliverWithin, func() bool { return slices.Contains(col.badReports(), "bad wrong type") }) {
			t.Fatalf("bad reports %q, want %q", col.badReports(), "bad wrong type")
		}
		// Once the key is a stream again, the parked topic resumes (checked
		// every 10s).
		srv.MustDo(t, "DEL", b.Prefix()+"bad")
		if _, err := b.Publish(ctx, "bad", "", []byte("back")); err != nil {
			t.Fatal(err)
		}
		got := col.waitEntries(t, "bad", 1, 10*time.Second+deliverWithin)
		if string(got[0].Data) != "back" {
			t.Fatalf("resumed topic got %q", got[0].Data)
		}
	})

	t.Run("EntryShapes", func(t *testing.T) {
		t.Parallel()
		b, col := newBroker(t, srv, nil)
		key := b.Prefix() + "shapes"
		if _, err := b.Watch(ctxT(t), "shapes", 0, 0); err != nil {
			t.Fatal(err)
		}
		xadd(t, srv, key, "user", "ann", "event", "joined", "bytes", "\xff<&>")
		xadd(t, srv, key, "data", "ok", "event", "a\nb") // forged SSE field: the JSON of its fields
		xadd(t, srv, key, "data", "after")
		got := col.waitEntries(t, "shapes", 3, deliverWithin)
		if want := `{"bytes":"\ufffd<&>","event":"joined","user":"ann"}`; string(got[0].Data) != want || got[0].Event != "joined" {
			t.Fatalf("no-data entry = %q event %q, want %q", got[0].Data, got[0].Event, want)
		}
		if want := `{"data":"ok","event":"a\nb"}`; string(got[1].Data) != want || got[1].Event != "" {
			t.Fatalf("bad event entry = %q event %q, want %q and no event", got[1].Data, got[1].Event, want)
		}
		if string(got[2].Data) != "after" {
			t.Fatalf("entry after a bad one = %q", got[2].Data)
		}
		if r := col.badReports(); !slices.Equal(r, []string{"shapes " + pubsub.BadEntryBadEvent}) {
			t.Fatalf("bad reports %q", r)
		}
		if _, err := b.Publish(ctxT(t), "shapes", "x\r", nil); !errors.Is(err, pubsub.ErrBadEvent) {
			t.Fatalf("publish with CR in event: %v", err)
		}
		if _, err := b.Publish(ctxT(t), "bad topic", "", nil); !errors.Is(err, pubsub.ErrBadTopic) {
			t.Fatalf("publish to a bad topic: %v", err)
		}
	})

	t.Run("BinaryAndLargeValues", func(t *testing.T) {
		t.Parallel()
		b, col := newBroker(t, srv, nil)
		ctx := ctxT(t)
		if _, err := b.Watch(ctx, "bin", 0, 0); err != nil {
			t.Fatal(err)
		}
		all := make([]byte, 256)
		for i := range all {
			all[i] = byte(i)
		}
		big := make([]byte, 1<<20)
		if _, err := rand.Read(big); err != nil {
			t.Fatal(err)
		}
		for _, v := range [][]byte{all, big, {}} {
			if _, err := b.Publish(ctx, "bin", "blob", v); err != nil {
				t.Fatal(err)
			}
		}
		got := col.waitEntries(t, "bin", 3, deliverWithin)
		ranged, err := b.Range(ctx, "bin", pubsub.ID{}, 10)
		if err != nil || len(ranged) != 3 {
			t.Fatalf("range = %d entries, %v", len(ranged), err)
		}
		for i, v := range [][]byte{all, big, {}} {
			if !bytes.Equal(got[i].Data, v) || !bytes.Equal(ranged[i].Data, v) {
				t.Fatalf("value %d (%d bytes) did not round-trip: delivered %d bytes, ranged %d", i, len(v), len(got[i].Data), len(ranged[i].Data))
			}
		}
	})

	t.Run("MaxAgeTrims", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.MaxAge = 200 * time.Millisecond })
		ctx := ctxT(t)
		if _, err := b.Watch(ctx, "aged", 0, 0); err != nil {
			t.Fatal(err)
		}
		// MINID ~ trims whole radix-tree nodes (100 entries by default).
		for i := range 300 {
			if _, err := b.Publish(ctx, "aged", "", []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(deliverWithin)
		for {
			info, err := b.Info(ctx, "aged")
			if err != nil {
				t.Fatal(err)
			}
			if info.Length < 300 && !info.MaxDeleted.IsZero() { // trimmed, and Info says so
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not trimmed by age: %+v", info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("ACLWithoutClientCommands", func(t *testing.T) {
		t.Parallel()
		// A user that may not run CLIENT ID or CLIENT UNBLOCK: readers still
		// deliver; a new topic waits for the block (1s here) to end.
		user := "limited-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		srv.MustDo(t, "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-client")
		t.Cleanup(func() { srv.MustDo(t, "ACL", "DELUSER", user) })
		b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) {
			c.Username, c.Password = user, "pw"
			c.Readers = 1
			c.Block = time.Second
		})
		for i := range 3 {
			topic := "acl-" + strconv.Itoa(i)
			if _, err := b.Watch(ctxT(t), topic, 0, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Publish(ctxT(t), topic, "", []byte("x")); err != nil {
				t.Fatal(err)
			}
			col.waitEntries(t, topic, 1, deliverWithin)
		}
	})

	t.Run("PingAndClose", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, nil)
		if err := b.Ping(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
		if err := b.Ping(ctxT(t)); !errors.Is(err, pubsub.ErrClosed) {
			t.Fatalf("ping after close: %v", err)
		}
		if _, err := b.Watch(ctxT(t), "x", 0, 0); !errors.Is(err, pubsub.ErrClosed) {
			t.Fatalf("watch after close: %v", err)
		}
	})
}

// TestBrokerPublishMaxLen: Publish trims with MAXLEN ~ MaxLen, the default
// for zero and none for a negative MaxLen (what sseload -maxlen 0 uses).
func TestBrokerPublishMaxLen(t *testing.T) {
	srv := redistest.Start(t)
	mon := startMonitor(t, srv)
	for _, tt := range []struct {
		name   string
		maxLen int64
		want   string // in the XADD; "" for no MAXLEN
	}{
		{"default", 0, `"maxlen" "~" "10000"`},
		{"set", 5, `"maxlen" "~" "5"`},
		{"none", -1, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.MaxLen = tt.maxLen })
			cmds := mon.sent(t, srv, b.Prefix()+"m", func() {
				if _, err := b.Publish(ctxT(t), "m", "", []byte("x")); err != nil {
					t.Fatal(err)
				}
			})
			if len(cmds) != 1 || !strings.Contains(cmds[0], `"xadd"`) {
				t.Fatalf("commands sent = %q, want one XADD", cmds)
			}
			if has := strings.Contains(cmds[0], `"maxlen"`); has != (tt.want != "") || !strings.Contains(cmds[0], tt.want) {
				t.Errorf("XADD = %s, want MAXLEN %q", cmds[0], tt.want)
			}
		})
	}
}

// publisher XADDs numbered entries to one key until stopped, retrying
// failed ones; the stream itself is the record of what was published.
type publisher struct {
	stop chan struct{}
	done chan struct{}
	ok   atomic.Int64
	errs atomic.Int64
}

func startPublisher(t testing.TB, url, key string, every time.Duration) *publisher {
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.MaxRetries = -1
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(every):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", strconv.Itoa(i)}}).Err()
			cancel()
			if err != nil {
				p.errs.Add(1)
			} else {
				p.ok.Add(1)
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

func (p *publisher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// waitOK waits until the publisher has n more successes than now.
func (p *publisher) waitOK(t testing.TB, n int64, d time.Duration) {
	t.Helper()
	want := p.ok.Load() + n
	deadline := time.Now().Add(d)
	for p.ok.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("publisher: %d successes, want %d within %v (%d errors)", p.ok.Load(), want, d, p.errs.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkAllDelivered waits until the topic's deliveries equal XRANGE of its
// key: everything published, no gap, no duplicate.
func checkAllDelivered(t testing.TB, srv *redistest.Server, col *collector, topic, key string) {
	t.Helper()
	want := xrangeIDs(t, srv, key)
	if !col.waitFor(deliverWithin, func() bool { return len(col.entries(topic)) >= len(want) }) {
		t.Fatalf("%d of %d entries delivered", len(col.entries(topic)), len(want))
	}
	if got := idsOf(col.entries(topic)); !slices.Equal(got, want) {
		t.Fatalf("delivered IDs differ from XRANGE (%d vs %d):\n got %v\nwant %v", len(got), len(want), got, want)
	}
}

// TestBrokerRedisRestart stops and starts Redis (AOF on) under a steady
// publisher: after recovery the watched topic has delivered exactly what
// the stream holds.
func TestBrokerRedisRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.WithContainer(), redistest.WithAOF())
	var readErrs atomic.Int64
	b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) {
		c.Block = time.Second
		c.OnReadError = func(error) { readErrs.Add(1) }
	})
	ctx := ctxT(t)
	if _, err := b.Watch(ctx, "live", 0, 0); err != nil {
		t.Fatal(err)
	}
	key := b.Prefix() + "live"
	pub := startPublisher(t, srv.URL(), key, 5*time.Millisecond)
	pub.waitOK(t, 50, deliverWithin)

	srv.Stop(t)
	if err := b.Ping(ctx); err == nil {
		t.Fatal("ping succeeded with Redis stopped")
	}
	srv.Start(t)

	pub.waitOK(t, 50, 2*deliverWithin)
	pub.halt()
	checkAllDelivered(t, srv, col, "live", key)
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
	if readErrs.Load() == 0 {
		t.Error("no read error reported across a restart")
	}
	t.Logf("published %d (%d failed attempts), read errors %d", pub.ok.Load(), pub.errs.Load(), readErrs.Load())
}

// TestBrokerRedisStall stalls Redis with DEBUG SLEEP: Ping fails within its
// deadline during the stall, and delivery resumes after it, complete.
func TestBrokerRedisStall(t *testing.T) {
	srv := redistest.Start(t, redistest.WithContainer())
	b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.Block = 500 * time.Millisecond })
	ctx := ctxT(t)
	if _, err := b.Watch(ctx, "stall", 0, 0); err != nil {
		t.Fatal(err)
	}
	key := b.Prefix() + "stall"
	pub := startPublisher(t, srv.URL(), key, 10*time.Millisecond)
	pub.waitOK(t, 20, deliverWithin)

	slept := make(chan error, 1)
	go func() {
		_, err := srv.Do(t, "DEBUG", "SLEEP", "3")
		slept <- err
	}()
	pingFailed := false
	for !pingFailed {
		select {
		case err := <-slept:
			t.Fatalf("DEBUG SLEEP ended (%v) and Ping never failed", err)
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		pingFailed = b.Ping(pctx) != nil
		cancel()
	}
	if err := <-slept; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("ping after the stall: %v", err)
	}
	pub.waitOK(t, 20, deliverWithin)
	pub.halt()
	checkAllDelivered(t, srv, col, "stall", key)
	t.Logf("published %d (%d failed attempts)", pub.ok.Load(), pub.errs.Load())
}

// TestBrokerCheckSkipsIdleKeys: the continuity check after each XREAD
// looks at each idle key of the read with no command of its own (one
// XREAD over all keys finds those with news). It ran a TYPE and an
// XRANGE per key, which a node watching thousands of topics paid on every
// read. The idle topics here have no key at all, as topics subscribed to
// before their first publish.
func TestBrokerCheckSkipsIdleKeys(t *testing.T) {
	srv := redistest.Start(t)
	b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) { c.Readers = 1 })
	const idle = 40
	for i := range idle {
		if _, err := b.Watch(ctxT(t), fmt.Sprintf("idle%d", i), 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Watch(ctxT(t), "live", 0, 0); err != nil {
		t.Fatal(err)
	}
	live := b.Prefix() + "live"
	xadd(t, srv, live, "data", "0")
	col.waitEntries(t, "live", 1, deliverWithin)
	mon := startMonitor(t, srv)
	const reads = 10
	for i := 1; i <= reads; i++ {
		xadd(t, srv, live, "data", strconv.Itoa(i))
		col.waitEntries(t, "live", i+1, deliverWithin)
	}
	mark := fmt.Sprintf("end#%d", time.Now().UnixNano())
	srv.MustDo(t, "ECHO", mark)
	perKey := 0 // commands a script ran on one idle key
	for {
		l := mon.line(t)
		if strings.Contains(l, mark) {
			break
		}
		if strings.Contains(l, " lua]") && strings.Contains(l, `"`+b.Prefix()+"idle") &&
			!strings.Contains(l, `"xread"`) && !strings.Contains(l, `"XREAD"`) {
			perKey++
			if perKey <= 3 {
				t.Logf("per-key command: %s", l)
			}
		}
	}
	// The history check (once a second) runs a TYPE per missing key:
	// allow two of them over the reads, far below a command per idle key
	// and read (400 here).
	t.Logf("%d script commands on idle keys over %d reads", perKey, reads)
	if perKey > 2*idle {
		t.Fatalf("%d script commands on idle keys over %d reads, want at most %d (history checks only)", perKey, reads, 2*idle)
	}
}

// TestBrokerCheckScriptFallback runs the continuity-check script directly.
// Its fast path finds the keys with news with one XREAD for all of them; a
// key of another type fails that XREAD, and the script then looks at every
// key alone (TYPE and XRANGE per key). The broker reaches that path only
// when a key changes type between its blocking XREAD and the check, so it
// is driven here: with a string among the keys, every stream key must get
// the same item as on the fast path, the string key its type, and a
// missing key "none" (the fast path reports it idle).
func TestBrokerCheckScriptFallback(t *testing.T) {
	srv := redistest.Start(t)
	script, err := os.ReadFile("../pubsub/stream_check.lua")
	if err != nil {
		t.Fatal(err)
	}
	p := redistest.Prefix(t)
	news, idle, trimmed, missing, str := p+"news", p+"idle", p+"trimmed", p+"missing", p+"str"
	n1 := xadd(t, srv, news, "data", "1")
	xadd(t, srv, news, "data", "2")
	i1 := xadd(t, srv, idle, "data", "1")
	t1 := xadd(t, srv, trimmed, "data", "1")
	xadd(t, srv, trimmed, "data", "2")
	xadd(t, srv, trimmed, "data", "3")
	srv.MustDo(t, "XTRIM", trimmed, "MAXLEN", "1")
	srv.MustDo(t, "SET", str, "not a stream")
	check := func(keys, pos []string) []any {
		t.Helper()
		args := []any{"EVAL", string(script), len(keys)}
		for _, k := range keys {
			args = append(args, k)
		}
		for _, p := range pos {
			args = append(args, p)
		}
		reply, ok := srv.MustDo(t, args...).([]any)
		if !ok || len(reply) != len(keys) {
			t.Fatalf("check of %d keys: reply %v", len(keys), reply)
		}
		return reply
	}
	keys := []string{news, idle, trimmed, missing}
	pos := []string{n1.String(), i1.String(), t1.String(), "5-0"}
	fast := check(keys, pos)
	slow := check(append(keys, str), append(pos, "0-0"))
	for i, k := range keys {
		want := fast[i]
		if k == missing {
			if fmt.Sprint(want) != "[idle]" {
				t.Errorf("fast path: missing key %v, want [idle]", want)
			}
			want = []any{"none"}
		}
		if !reflect.DeepEqual(slow[i], want) {
			t.Errorf("%s: per-key path %v, fast path %v", k, slow[i], fast[i])
		}
	}
	if fmt.Sprint(fast[1]) != "[idle]" || fmt.Sprint(fast[0]) == "[idle]" || fmt.Sprint(fast[2]) == "[idle]" {
		t.Errorf("fast path: news %v, idle %v, trimmed %v", fast[0], fast[1], fast[2])
	}
	if fmt.Sprint(slow[4]) != "[string]" {
		t.Errorf("string key: %v, want [string]", slow[4])
	}
}

// TestBrokerReadsByBytes: a read with a byte bound copies about the bound
// out of the stream, not the count it asks for. A first subscriber's
// history load asks for 1,024 entries; on a stream of 1 MiB entries the
// read script used to copy all of them before cutting the reply to the
// bound (30 entries of 20 MB held Redis for 11 s, and every node's
// subscribers got 503). Counted under MONITOR: the entries the script asks
// Redis for, by XRANGE and XREVRANGE, for the history load and a page.
func TestBrokerReadsByBytes(t *testing.T) {
	srv := redistest.Start(t)
	b, _ := newBroker(t, srv, nil)
	key := b.Prefix() + "big"
	big := bytes.Repeat([]byte("b"), 1<<20)
	var ids []pubsub.ID
	for range 30 {
		ids = append(ids, xadd(t, srv, key, "data", big))
	}
	mon := startMonitor(t, srv)
	tail, err := b.Watch(ctxT(t), "big", 1024, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	page, err := b.Page(ctxT(t), "big", ids[0], 1024, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("end#%d", time.Now().UnixNano())
	srv.MustDo(t, "ECHO", mark)
	asked := 0 // entries the script asked for
	for {
		l := mon.line(t)
		if strings.Contains(l, mark) {
			break
		}
		if !strings.Contains(l, " lua]") || !strings.Contains(l, `"`+key+`"`) {
			continue
		}
		// ... [0 lua] "XREVRANGE" "<key>" "+" "-" "COUNT" "1"
		f := strings.Fields(l[strings.Index(l, "]")+1:])
		if len(f) == 6 && strings.EqualFold(f[4], `"COUNT"`) &&
			(strings.EqualFold(f[0], `"XRANGE"`) || strings.EqualFold(f[0], `"XREVRANGE"`)) {
			n, _ := strconv.Atoi(strings.Trim(f[5], `"`))
			asked += n
			t.Logf("%s", strings.Join(f, " "))
		}
	}
	if len(tail.Entries) != 3 || tail.Entries[2].ID != ids[29] {
		t.Errorf("history load: %d entries, want the newest 3 (4 MiB)", len(tail.Entries))
	}
	if len(page.Entries) == 0 || len(page.Entries) > 4 || page.Entries[0].ID != ids[1] || !page.Cut {
		t.Errorf("page: %d entries from %v, cut %v; want up to 4 from %v, cut", len(page.Entries), idsOf(page.Entries), page.Cut, ids[1])
	}
	// Bound 4 MiB, 1 MiB each: about 5 entries per read (one to size the
	// rest, the rest, a look past the end), not 1,024.
	if asked > 16 {
		t.Fatalf("the reads asked Redis for %d entries of 1 MiB, want at most 16", asked)
	}
}
