package replay

import (
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Clients that resume one after another from the same old position share
// the full pages behind the ring (not only reads that overlap in time); the
// tail page is read afresh, so entries added since are not missed.
func TestSequentialReplaysShareFullPages(t *testing.T) {
	src := newFake()
	src.add("t", 1, 1000)
	clock := time.Unix(100, 0)
	w, err := New(src, Config{PageSize: 100, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	// No Acquire: the ring does not cover anything, every entry comes from
	// the source (10 full pages and an empty tail page).
	for i := range 5 {
		got, _, _ := collect(t, w, "t", pubsub.ID{Ms: 0, Seq: 1})
		if len(got) != 1000 {
			t.Fatalf("replay %d: %d entries, want 1000", i, len(got))
		}
	}
	// Page after 0-1: 1..100 ... page after 900-0: 901..1000, then the
	// empty tail read: 11 reads the first time, 1 tail read each after.
	if got, want := src.ranges.Load(), int64(11+4); got != want {
		t.Fatalf("%d source reads for 5 sequential replays, want %d", got, want)
	}
	src.add("t", 1001, 1050)
	got, _, _ := collect(t, w, "t", pubsub.ID{Ms: 0, Seq: 1})
	if len(got) != 1050 || got[len(got)-1] != 1050 {
		t.Fatalf("after new entries: %d entries ending %v, want 1050", len(got), got[len(got)-1])
	}
	// Past the TTL the pages are read again.
	before := src.ranges.Load()
	clock = clock.Add(pageCacheTTL + time.Second)
	collect(t, w, "t", pubsub.ID{Ms: 0, Seq: 1})
	if src.ranges.Load()-before < 10 {
		t.Fatalf("expired pages were not read again")
	}
}

func TestPageCacheBound(t *testing.T) {
	c := pageCache{ttl: time.Minute, maxBytes: pubsub.EntryOverhead * 10 * 4}
	now := time.Unix(0, 0)
	page := &pubsub.Page{Entries: make([]pubsub.Entry, 10)} // 10 * pubsub.EntryOverhead bytes by the cache's count
	for i := range 10 {
		c.put(rangeKey{topic: "t", after: pubsub.ID{Ms: uint64(i)}, count: 10}, page, now)
		if c.bytes > c.maxBytes {
			t.Fatalf("cache holds %d bytes, bound %d", c.bytes, c.maxBytes)
		}
	}
	if _, ok := c.get(rangeKey{topic: "t", after: pubsub.ID{Ms: 9}, count: 10}, now); !ok {
		t.Fatal("newest page evicted")
	}
	if _, ok := c.get(rangeKey{topic: "t", after: pubsub.ID{Ms: 0}, count: 10}, now); ok {
		t.Fatal("oldest page kept past the bound")
	}
}

// TestPageCacheReplacesExpired: a page read again after its entry expired
// is cached again, and the byte count stays exact.
func TestPageCacheReplacesExpired(t *testing.T) {
	c := pageCache{ttl: time.Second, maxBytes: 1 << 20}
	k := rangeKey{topic: "t", count: 10}
	page := &pubsub.Page{Entries: make([]pubsub.Entry, 10)}
	now := time.Unix(0, 0)
	for round := range 3 {
		c.put(k, page, now)
		if _, ok := c.get(k, now); !ok {
			t.Fatalf("round %d: page not cached", round)
		}
		if c.bytes != 10*pubsub.EntryOverhead || len(c.pages) != 1 {
			t.Fatalf("round %d: %d bytes in %d pages, want %d in 1", round, c.bytes, len(c.pages), 10*pubsub.EntryOverhead)
		}
		now = now.Add(2 * time.Second) // expired
		if _, ok := c.get(k, now); ok {
			t.Fatalf("round %d: expired page served", round)
		}
	}
	if len(c.fifo) > 1 {
		t.Fatalf("fifo holds %d keys for one page", len(c.fifo))
	}
}
