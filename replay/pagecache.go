package replay

import (
	"sync"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// pageCache keeps full source pages for a short time, so that clients of a
// reconnect storm that arrive one after another (not only those whose reads
// overlap) share the reads of pages behind the ring.
//
// Only full pages are kept (count entries, or cut by the byte bound): the
// first entries after a position never change once the stream holds them
// (new entries have larger IDs; trimming only removes, and an entry
// trimmed since it was read still existed). A short page is the stream's tail at read time and may have
// grown, so it is never cached. Unless the stream changed under it:
// trimmed into it, an entry of it deleted, or the stream deleted and
// recreated. So a cached page is served only if the stream's state, read
// within infoReuse (kept here per topic, from page reads and Info), shows
// it still holds the page's entries; the gap rule is then applied with
// that state, so the answer is the one a fresh read would give (but for
// what Redis cannot tell: see the package doc). Window.Reset drops a
// topic's pages and state.
//
// Memory is bounded by maxBytes of entries (pubsub.Entry.Size: payload and
// headers): a fixed amount per node, whatever the number of clients or
// topics. A page larger than a quarter of it is not kept.
type pageCache struct {
	ttl      time.Duration // immutable
	maxBytes int           // immutable

	mu    sync.Mutex
	pages map[rangeKey]*cachedPage // guarded by mu
	fifo  []rangeKey               // insertion order, for eviction; guarded by mu
	bytes int                      // guarded by mu
	// states is the newest stream state read per topic, to check cached
	// pages against; at most maxStates topics. Guarded by mu.
	states map[string]stateAt
}

// stateAt is a stream's state and when the read that got it started.
type stateAt struct {
	info pubsub.StreamInfo
	at   time.Time
}

type cachedPage struct {
	page    *pubsub.Page // shared, read-only
	bytes   int
	expires time.Time
}

const (
	pageCacheTTL = 5 * time.Second
	maxStates    = 4096
)

func (c *pageCache) get(k rangeKey, now time.Time) (*pubsub.Page, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pages[k]
	if p == nil || now.After(p.expires) {
		return nil, false
	}
	return p.page, true
}

func (c *pageCache) put(k rangeKey, page *pubsub.Page, now time.Time) {
	size := 0
	for i := range page.Entries {
		size += page.Entries[i].Size()
	}
	if size > c.maxBytes/4 {
		return // one page may not crowd out the rest
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pages == nil {
		c.pages = make(map[rangeKey]*cachedPage)
	}
	if old, ok := c.pages[k]; ok {
		if !now.After(old.expires) {
			return
		}
		// Expired: replace it. Its key stays in fifo; eviction then finds
		// the new page under it, or nothing.
		c.bytes -= old.bytes
		delete(c.pages, k)
	}
	// Evict expired pages and then the oldest until the new one fits.
	for len(c.fifo) > 0 {
		old := c.pages[c.fifo[0]]
		if old != nil && c.bytes+size <= c.maxBytes && !now.After(old.expires) {
			break
		}
		if old != nil {
			c.bytes -= old.bytes
			delete(c.pages, c.fifo[0])
		}
		c.fifo = c.fifo[1:]
	}
	c.pages[k] = &cachedPage{page: page, bytes: size, expires: now.Add(c.ttl)}
	c.fifo = append(c.fifo, k)
	c.bytes += size
}

// size returns the bytes the kept pages hold.
func (c *pageCache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(c.bytes)
}

// noteState records info as topic's state, read by a call that started at
// at, unless a newer one is known.
func (c *pageCache) noteState(topic string, info pubsub.StreamInfo, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.states[topic]; ok && old.at.After(at) {
		return
	}
	if c.states == nil || len(c.states) >= maxStates {
		c.states = make(map[string]stateAt) // a cache: forgetting costs reads
	}
	c.states[topic] = stateAt{info, at}
}

// state returns topic's newest state if it was read within infoReuse of now.
func (c *pageCache) state(topic string, now time.Time) (pubsub.StreamInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.states[topic]
	if !ok || now.Sub(s.at) >= infoReuse {
		return pubsub.StreamInfo{}, false
	}
	return s.info, true
}

// drop forgets the pages and the state of topic. The pages' keys stay in
// fifo; eviction skips keys with no page.
func (c *pageCache) drop(topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.states, topic)
	for k, p := range c.pages {
		if k.topic == topic {
			c.bytes -= p.bytes
			delete(c.pages, k)
		}
	}
}
