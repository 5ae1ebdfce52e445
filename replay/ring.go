package replay

import (
	"sort"
	"sync/atomic"

	"github.com/ssecluster/ssecluster/pubsub"
)

// evictReason says why entries left a ring, for metrics.
type evictReason uint8

// Reasons entries leave a ring before the topic is released.
const (
	evictSize   evictReason = iota // the ring held RingSize entries
	evictAge                       // older than MaxAge
	evictStream                    // trimmed or deleted from the stream (floor raised to MaxDeleted)
	evictBudget                    // the node's rings exceeded RingBytes
	numEvictReasons
)

// ringAccount is what all the rings of a Window hold together: bytes
// (pubsub.Entry.Size) and entries evicted by reason. Rings add to it when settled,
// once per locked operation rather than per entry: fewer writes to memory
// every topic shares.
type ringAccount struct {
	bytes atomic.Int64
	// reserved is held for ring loads in flight: bytes+reserved stays
	// within the budget while tails are read (appends alone may pass it
	// until the next sweep).
	reserved atomic.Int64
	evicted  [numEvictReasons]atomic.Uint64
}

// reserve holds up to want bytes of budget for a ring load and returns
// what it got: what budget has left beside the rings and other loads, 0 if
// nothing.
func (a *ringAccount) reserve(budget, want int64) int64 {
	for {
		r := a.reserved.Load()
		got := min(want, budget-a.bytes.Load()-r)
		if got <= 0 {
			return 0
		}
		if a.reserved.CompareAndSwap(r, r+got) {
			return got
		}
	}
}

// release gives back what reserve returned, once the ring that loaded
// has settled what it kept.
func (a *ringAccount) release(n int64) { a.reserved.Add(-n) }

// minRingAlloc is the first allocation of a ring's buffer. Buffers grow by
// doubling up to the ring's capacity, so a quiet topic does not pin
// RingSize entries of memory; growth is amortised bookkeeping, never a
// per-entry allocation.
const minRingAlloc = 16

// ring is a bounded circular buffer of one topic's newest entries, in
// strictly ascending ID order, with the coverage floor of the replay window.
// It is not safe for concurrent use: Window guards it with the topic's
// lock.
type ring struct {
	buf  []pubsub.Entry // circular storage, len(buf) <= max
	head int            // index in buf of the oldest entry
	n    int            // entries held
	max  int            // capacity, >= 1

	// bytes is the Entry.Size sum of the held entries, also counted in
	// acct (nil: not counted, in tests) by settle, with the evictions.
	bytes int64
	acct  *ringAccount
	// unsettled is what acct does not know yet.
	unsettledBytes   int64
	unsettledEvicted [numEvictReasons]uint32
	// meanSize is a moving mean of the Entry.Size of pushed entries, kept
	// across evictions and clears: what a page of the topic's entries
	// costs. 0 until the first push.
	meanSize int

	// floor is the coverage floor: every entry with an ID above floor that
	// exists is held here or will be appended later. MaxID after clear:
	// nothing is covered until the next push sets it.
	floor pubsub.ID
	// evicted reports whether floor was set by an eviction (as opposed to
	// the initial load); finishLoad needs to know.
	evicted bool
	// first and maxDeleted are the stream's First and MaxDeleted at the
	// last check: a position below first is covered only if it is
	// maxDeleted (any other is a gap the source must announce). Zero
	// until checked.
	first, maxDeleted pubsub.ID
}

// account adds delta bytes to the ring, and to its account when settled.
func (r *ring) account(delta int64) {
	r.bytes += delta
	r.unsettledBytes += delta
}

// settle adds to the account what changed since the last settle, and gives
// back the buffer of a ring that eviction left mostly empty. Every locked
// operation on a ring ends with it.
func (r *ring) settle() {
	r.fit()
	if r.acct == nil {
		return
	}
	if r.unsettledBytes != 0 {
		r.acct.bytes.Add(r.unsettledBytes)
		r.unsettledBytes = 0
	}
	for why, n := range r.unsettledEvicted {
		if n != 0 {
			r.acct.evicted[why].Add(uint64(n))
			r.unsettledEvicted[why] = 0
		}
	}
}

// count accounts for e, just stored in buf.
func (r *ring) count(e *pubsub.Entry) {
	size := e.Size()
	r.account(int64(size))
	if r.meanSize == 0 {
		r.meanSize = size
	} else {
		r.meanSize += (size - r.meanSize) / 8
	}
}

// covers reports whether the ring answers position c, for a topic whose
// newest seen ID is last.
func (r *ring) covers(c, last pubsub.ID) bool {
	if c.Less(r.floor) || last.Less(c) {
		return false
	}
	if c.Less(r.first) || c == r.maxDeleted {
		return c == r.maxDeleted
	}
	if c == r.floor || c == last {
		return true
	}
	// Above floor every entry of the stream is held: a position that is
	// none of them was never an entry of this history (a failover forked
	// the stream, say); the source tells.
	i := r.after(c)
	return i > 0 && r.at(i-1).ID == c
}

// at returns the i-th oldest entry, 0 <= i < n.
func (r *ring) at(i int) *pubsub.Entry {
	j := r.head + i
	if j >= len(r.buf) {
		j -= len(r.buf)
	}
	return &r.buf[j]
}

// reserve grows buf to hold at least want entries (capped at max),
// linearising the circle so that head is 0.
func (r *ring) reserve(want int) {
	if want <= len(r.buf) {
		return
	}
	r.resize(min(max(len(r.buf)*2, minRingAlloc, want), r.max))
}

// resize moves the held entries to a new buf of size slots (>= n),
// linearising the circle so that head is 0.
func (r *ring) resize(size int) {
	nb := make([]pubsub.Entry, size)
	for i := 0; i < r.n; i++ {
		nb[i] = *r.at(i)
	}
	r.buf, r.head = nb, 0
}

// fit shrinks buf once it is at most a quarter full, to twice what the
// ring holds (nil when empty): the budget counts held entries, so the
// slots that evictions emptied must not stay allocated. The margin keeps
// a ring that shrinks and grows again from reallocating on every push.
func (r *ring) fit() {
	switch {
	case r.n == 0:
		r.buf, r.head = nil, 0
	case len(r.buf) > minRingAlloc && r.n <= len(r.buf)/4:
		r.resize(max(2*r.n, minRingAlloc))
	}
}

// push appends e as the newest entry, evicting the oldest when full. The
// caller guarantees e is newer than every held entry.
func (r *ring) push(e *pubsub.Entry) {
	if r.floor == pubsub.MaxID {
		// First entry after a clear: the entries after it are delivered
		// in order, those before it are unknown.
		r.floor = e.ID
	}
	if r.n == r.max {
		r.evictOldest(evictSize)
	}
	if r.n == len(r.buf) {
		r.reserve(r.n + 1)
	}
	j := r.head + r.n
	if j >= len(r.buf) {
		j -= len(r.buf)
	}
	r.buf[j] = *e
	r.count(&r.buf[j])
	r.n++
}

// pushFront inserts e as the oldest entry. The caller guarantees n < max
// and e older than every held entry.
func (r *ring) pushFront(e pubsub.Entry) {
	if r.n == len(r.buf) {
		r.reserve(r.n + 1)
	}
	r.head--
	if r.head < 0 {
		r.head += len(r.buf)
	}
	r.buf[r.head] = e
	r.count(&r.buf[r.head])
	r.n++
}

// popFront drops the oldest entry without touching floor (for entries that
// were never part of the window, see finishLoad).
func (r *ring) popFront() {
	r.account(-int64(r.buf[r.head].Size()))
	r.buf[r.head] = pubsub.Entry{} // let its Data be collected
	r.head++
	if r.head == len(r.buf) {
		r.head = 0
	}
	r.n--
}

// evictOldest drops the oldest entry e and raises floor to e.ID: entries
// after it are still all here.
func (r *ring) evictOldest(why evictReason) {
	r.floor = r.buf[r.head].ID
	r.evicted = true
	r.popFront()
	r.unsettledEvicted[why]++
}

// clear drops every entry; the ring covers nothing until the next push.
func (r *ring) clear() {
	for r.n > 0 {
		r.popFront()
	}
	r.head, r.floor, r.evicted = 0, pubsub.MaxID, false
	r.first, r.maxDeleted = pubsub.ID{}, pubsub.ID{}
}

// free empties the ring and releases its buffer, for a topic that leaves
// the window; its bytes leave the account.
func (r *ring) free() {
	r.clear()
	r.settle()
	r.buf = nil
}

// raiseFloor evicts the entries at or below id and raises floor to id:
// positions at or below it are no longer the ring's to answer.
func (r *ring) raiseFloor(id pubsub.ID) {
	if r.floor == pubsub.MaxID || !r.floor.Less(id) {
		return
	}
	for r.n > 0 && !id.Less(r.buf[r.head].ID) {
		r.evictOldest(evictStream)
	}
	r.floor = id
}

// evictBefore evicts every entry added before cutoffMs (Unix milliseconds).
func (r *ring) evictBefore(cutoffMs uint64) {
	for r.n > 0 && r.buf[r.head].ID.Ms < cutoffMs {
		r.evictOldest(evictAge)
	}
}

// finishLoad merges the Tail that Watch returned with the entries appended
// while Watch was in flight (already in r): the ring ends as
// tail ++ delivered, trimmed to max from the oldest, and floor is set by the
// coverage rule.
func (r *ring) finishLoad(tail pubsub.Tail) {
	// Entries at or below Tail.Last that arrived during the load are late
	// deliveries to an earlier watch of this topic, not part of this one.
	for r.n > 0 && !tail.Last.Less(r.buf[r.head].ID) {
		r.popFront()
	}
	if r.evicted && tail.Last.Less(r.floor) {
		// Entries delivered after Tail.Last overflowed the ring already:
		// no tail entry fits and the eviction set floor.
		return
	}
	r.evicted = false
	entries := tail.Entries
	if r.n > 0 { // be safe against a tail that overlaps deliveries
		first := r.buf[r.head].ID
		k := sort.Search(len(entries), func(i int) bool { return !entries[i].ID.Less(first) })
		entries = entries[:k]
	}
	keep := min(r.max-r.n, len(entries))
	dropped, kept := entries[:len(entries)-keep], entries[len(entries)-keep:]
	r.reserve(r.n + len(kept))
	for i := len(kept) - 1; i >= 0; i-- {
		r.pushFront(kept[i])
	}
	switch {
	case len(dropped) > 0:
		r.floor, r.evicted = dropped[len(dropped)-1].ID, true
	case len(kept) > 0:
		r.floor = kept[0].ID
	default:
		r.floor = tail.Last
	}
}

// after returns the index of the oldest held entry with ID > id (n if none).
func (r *ring) after(id pubsub.ID) int {
	return sort.Search(r.n, func(i int) bool { return id.Less(r.at(i).ID) })
}
