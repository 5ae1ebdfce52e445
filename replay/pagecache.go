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
// Only full pages are kept: the first count entries after a position never
// change once the stream holds that many (new entries have larger IDs;
// trimming only removes, and an entry trimmed since it was read still
// existed). A short page is the stream's tail at read time and may have
// grown, so it is never cached. A page keeps the stream state it was read
// with, so a Replay served from the cache applies the gap rule as of that
// instant; the next page it reads is judged against the stream's state
// then. Window.Reset drops a topic's pages (its stream was deleted or
// recreated).
//
// Memory is bounded by maxBytes of payload plus the entries' headers: a
// fixed amount per node, whatever the number of clients or topics.
type pageCache struct {
	ttl      time.Duration // immutable
	maxBytes int           // immutable

	mu    sync.Mutex
	pages map[rangeKey]*cachedPage // guarded by mu
	fifo  []rangeKey               // insertion order, for eviction; guarded by mu
	bytes int                      // guarded by mu
}

type cachedPage struct {
	page    *pubsub.Page // shared, read-only
	bytes   int
	expires time.Time
}

const (
	pageCacheTTL   = 5 * time.Second
	pageCacheBytes = 16 << 20
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
		size += len(page.Entries[i].Data) + len(page.Entries[i].Event) + 64
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

// drop forgets the pages of topic. Their keys stay in fifo; eviction skips
// keys with no page.
func (c *pageCache) drop(topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, p := range c.pages {
		if k.topic == topic {
			c.bytes -= p.bytes
			delete(c.pages, k)
		}
	}
}
