// Package replay resumes SSE streams: it parses Last-Event-ID positions and
// keeps the capped replay window, a hot ring of the newest entries of each
// topic that has local subscribers, backed by paged reads from the broker
// for positions the ring does not cover, with exact gap detection.
//
// Memory is bounded in entries and in bytes (an entry counts its data,
// event type and traceparent plus a fixed 72 bytes), whatever the publish
// rate or how far behind a client is:
//
//   - each active topic's ring holds at most RingSize entries, and all
//     rings together at most RingBytes. Past that budget the coldest data
//     leaves first: the oldest entries of the topics least recently
//     appended to or replayed from (a topic's recency is its last Append
//     or ring read), down to 7/8 of the budget, so that one sweep serves
//     many appends. A ring that lost entries this way only has a higher
//     floor: positions below it are served from source pages, with the
//     gap rule (a raised floor is not a deletion, so no gap). An entry
//     larger than the whole budget is evicted as soon as it is pushed:
//     clients get it live, a resume reads it from the source. A topic's
//     first Acquire loads its ring with the newest entries that fit in
//     what the budget has left, at most PageBytes: the load holds that
//     much of the budget before it reads (until the ring has counted what
//     it kept), so that loads in flight and the rings never pass it
//     together, and a load that finds no room loads no history (the ring
//     starts at the stream's last ID; older positions are served from
//     source pages). A ring's buffer shrinks when evictions leave it a
//     quarter full, so emptied slots do not stay allocated;
//   - a Replay holds one page at a time, of at most PageSize entries and
//     PageBytes but for its last entry: ring and source pages stop at the
//     entry that brings them to PageBytes (the source cuts its reply where
//     it reads: in the Redis script, see pubsub.Redis.Page), and source
//     reads ask for no more entries than PageBytes holds by the topic's
//     mean entry size (a moving mean over its ring's pushes, and the
//     pages this Replay read), so that Redis reads little past the bound
//     (while no size is known, a Replay's first source read asks for
//     PageSize entries: Redis reads them, the reply is cut). A single
//     entry larger than PageBytes is a page alone: delivered, never
//     refused;
//   - full source pages kept for reconnect storms hold at most
//     PageCacheBytes together.
//
// Concurrent Replays that need the same page of the same topic share one
// source read, so a reconnect storm costs the source a number of reads
// that grows with topics and pages, not with clients.
//
// # The gap rule
//
// Between two events a client receives, either every entry the stream held
// in between was delivered, or an sse-gap was sent first. Every page read
// from the source comes with the stream's state at the same instant
// (pubsub.Page): exists, First (oldest held), Last (last generated),
// MaxDeleted (at or above every removed ID) and the page's entries
// P1..Pn. For a client at cursor c other than 0-0 (which asks for
// everything held and is never a gap), each page is judged on its own:
//
//   - the stream does not exist, or Last < c (deleted and recreated lower,
//     a failover that lost writes, a position from the future): gap with
//     Reset, and the replay restarts from 0-0;
//   - c < First, unless c is MaxDeleted itself: the entries after c up to
//     First were removed (trimmed or deleted), or c was never an entry of
//     the stream's current history (recreated with higher IDs, or an
//     invented position): gap;
//   - c < MaxDeleted < Pi for the next entry Pi: an entry between the
//     client's position and Pi was deleted: gap before Pi, even in the
//     middle of a page;
//   - at the end of the stream (a short page), c < MaxDeleted: the newest
//     entries were deleted: gap.
//
// A gap is announced at most once per position reached. What Redis cannot
// tell: it records only the newest deleted ID, so an XDEL of an entry
// below a later XDEL'd one (that is, XDEL of an entry between c and Pi
// while MaxDeleted is above Pi) goes unannounced. Trimming removes from
// the head, so it is always seen. The guarantee is thus: no entry is
// skipped without a gap, except entries removed by XDEL below the newest
// XDEL'd entry; and a position below First is a gap unless it is exactly
// MaxDeleted (Redis bounds trimmed IDs by the ID just before First, so a
// client whose last entry was trimmed may get a gap of zero entries).
//
// The ring answers like the source: before a Replay serves from it, the
// ring is checked against the stream's state (one Info, shared by
// concurrent Replays and reused for infoReuse): its floor is raised to
// MaxDeleted (positions below the floor are served from source pages and
// get the rule above), and positions below First other than MaxDeleted
// are left to the source, which announces their gap; when the stream is
// gone, its Last is below what the ring holds, or the ring holds entries
// the stream lost without recording their removal (it was recreated with
// higher IDs), the ring is emptied and fills again from the next live
// delivery. Full pages kept for reconnect storms are checked the same way
// (see pageCache). A stream deleted and recreated with IDs among those a
// ring or a kept page holds cannot be told from the state alone: the
// broker's reset signal (pubsub.Handler called with no entries) covers it,
// through Reset, which empties the ring and drops the kept pages at once.
package replay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Source is what the window needs from a broker; pubsub.Memory and
// pubsub.Redis both satisfy it.
type Source interface {
	// Watch activates topic and returns its last ID and up to tail newest
	// entries that fit in maxBytes together (by pubsub.Entry.Size; 0: no
	// bound).
	Watch(ctx context.Context, topic string, tail, maxBytes int) (pubsub.Tail, error)
	// Unwatch stops delivering topic; it must not block.
	Unwatch(topic string)
	// Page returns up to count entries with ID > after, ascending, and the
	// stream's state at the same instant, for the gap rule; with maxBytes
	// > 0 it stops at the entry that brings the page to about maxBytes
	// (by pubsub.Entry.Size) and says Cut if it left entries out.
	Page(ctx context.Context, topic string, after pubsub.ID, count, maxBytes int) (pubsub.Page, error)
	// Info describes topic's stream, to check a ring against it.
	Info(ctx context.Context, topic string) (pubsub.StreamInfo, error)
	// Recheck tells the live reader of topic that a read found the stream
	// lost what was delivered live: it should check the stream's history
	// now, not at its next periodic check. It must not block.
	Recheck(topic string)
}

// Defaults for zero Config fields.
const (
	defaultRingSize       = 1024
	defaultRingBytes      = 64 << 20
	defaultPageSize       = 256
	defaultPageBytes      = 4 << 20
	defaultPageCacheBytes = 16 << 20
)

// Config configures a Window. Zero fields take the documented defaults.
type Config struct {
	// RingSize is the number of entries held per active topic; 0 means 1024.
	RingSize int
	// MaxAge evicts ring entries older than this (by the time in their ID);
	// 0 means no age limit.
	MaxAge time.Duration
	// RingBytes is the budget of all rings together, by entry size (see
	// the package doc); 0 means 64 MiB.
	RingBytes int64
	// PageSize is the number of entries read from the source per Range call
	// and copied from the ring per step of a Replay; 0 means 256.
	PageSize int
	// PageBytes bounds the bytes of a page (see the package doc); 0 means
	// 4 MiB.
	PageBytes int
	// PageCacheBytes bounds the full source pages kept for reconnect
	// storms; 0 means 16 MiB.
	PageCacheBytes int
	// Now is the clock for MaxAge; nil means time.Now.
	Now func() time.Time
}

// Window is the replay window of one node: a ring per active topic and
// shared paged reads from the Source. It starts no goroutine and needs no
// Close. Its methods are safe for concurrent use.
type Window struct {
	// Immutable after New.
	src       Source
	ringSize  int
	ringBytes int64
	pageSize  int
	pageBytes int
	maxAge    time.Duration
	now       func() time.Time

	// mu guards the map and the topics' life (phase and what goes with
	// it); each topic's ring has its own lock (topicState.mu), so that
	// appends and replays of different topics do not contend. Lock order:
	// mu (shared or exclusive) before a topicState.mu, and never two
	// topicState.mu at once.
	mu     sync.RWMutex
	topics map[string]*topicState // guarded by mu

	// rings is what all rings hold, against ringBytes.
	rings ringAccount
	// clock orders Appends and ring reads, for the coldest-first eviction.
	clock atomic.Uint64
	// sweeping is held by the one goroutine bringing the rings back under
	// ringBytes; the others go on.
	sweeping sync.Mutex

	infos  flight[string, ringCheck]
	states flight[string, pubsub.StreamInfo] // to check cached pages
	ranges flight[rangeKey, *pubsub.Page]
	recent pageCache // full source pages, shared for a few seconds
	pages  sync.Pool // *[]pubsub.Entry with cap pageSize, for ring copies
	// resets counts Reset calls, so that a read that overlapped one is not
	// kept for later Replays.
	resets atomic.Uint64
}

// infoReuse is how long a ring check stands for later Replays of the topic:
// a reconnect storm whose clients arrive one after another costs a few
// Info reads, not one per client. Past it, one Replay renews the check and
// the others serve from the ring until staleServe. A deleted or trimmed
// entry may thus be served from a ring for up to staleServe after the
// check began (never one that a reset invalidated: Reset clears the check).
const infoReuse = 100 * time.Millisecond

// staleServe bounds how long a ring check stands while a renewal is under
// way; then every Replay waits for one (at most checkWait).
const staleServe = checkWait

// checkWait bounds the wait for a ring check: a source that does not answer
// within it (Redis down or stalled) leaves the ring to serve unchecked
// rather than hold resumes the ring can serve.
const checkWait = 500 * time.Millisecond

// liveMark is what the live path had delivered of a topic when a read of
// its stream started. The state the read returns is checked against it,
// never against the topic's state when the read returns: the live path may
// have delivered newer entries meanwhile, which the read could not see.
type liveMark struct {
	st   *topicState // the topic's state; nil if it was not in the window
	last pubsub.ID   // st.last
}

// markLive returns topic's liveMark now.
func (w *Window) markLive(topic string) (m liveMark) {
	w.withRing(topic, func(st *topicState) { m = liveMark{st, st.last} })
	return m
}

// ringCheck is a stream's state read to check a topic's ring, with the
// ring's state when the read started.
type ringCheck struct {
	liveMark
	at time.Time // when the read started
	// resets is Window.resets when the read started.
	resets uint64
	info   pubsub.StreamInfo
}

type rangeKey struct {
	topic string
	after pubsub.ID
	count int
}

// phase is where a topic is in its life. Transitions, all under Window.mu
// held exclusively:
// (absent) -> loading -> active -> closing -> (absent), or loading -> failed.
// Exactly one Watch or Unwatch call is in flight in loading and closing,
// none otherwise, so calls for one topic never overlap or reorder.
type phase uint8

const (
	loading phase = iota // Watch in flight
	active               // ring loaded, kept up to date by Append
	closing              // Unwatch in flight, ring freed
	failed               // Watch failed; the state is out of the map
)

// topicState is one topic's entry in Window.topics. Its life (phase, refs,
// done, loadErr, retry) changes under Window.mu held exclusively and is
// read under Window.mu; its ring (ring, last, checkedAt, stale) is used
// under mu and Window.mu held shared, or under Window.mu held exclusively
// (which excludes every holder of mu).
type topicState struct {
	mu sync.Mutex
	// touched is Window.clock at the topic's last Append or ring read.
	touched atomic.Uint64

	phase phase
	// refs counts subscribers that hold the topic, plus those waiting for
	// its load (they hold it once the load succeeds).
	refs int
	// done is closed when the Watch (loading) or Unwatch (closing) in
	// flight returns; never closed twice, a new channel per transition.
	done chan struct{}
	// loadErr and retry are set before done is closed on a failed load;
	// retry means the loader's context ended, so waiters should try again.
	loadErr error
	retry   bool
	// last is the newest ID seen: the ring's newest or Tail.Last; zero
	// after a reset, so that the stream's new entries are taken whatever
	// their IDs.
	last pubsub.ID
	// live is the newest ID the broker's reader delivered (or Tail.Last):
	// where its next delivery continues from. Only the broker's reset
	// signal (Reset) clears it; a ring emptied on a read's evidence
	// leaves it, since the reader still reads from there.
	live pubsub.ID
	ring ring
	// checkedAt is when the read that last checked the ring against the
	// stream started; zero if never, or since a reset.
	checkedAt time.Time
	// refreshing: a Replay is renewing a check that still stands (see
	// ringPage), so the others need not wait for it until staleServe.
	refreshing bool
	// stale means a reset arrived while loading: the tail may be from the
	// stream's old history.
	stale bool
}

// New returns a Window over src.
func New(src Source, cfg Config) (*Window, error) {
	if src == nil {
		return nil, errors.New("replay: nil Source")
	}
	if cfg.RingSize < 0 {
		return nil, fmt.Errorf("replay: RingSize %d is negative", cfg.RingSize)
	}
	if cfg.PageSize < 0 {
		return nil, fmt.Errorf("replay: PageSize %d is negative", cfg.PageSize)
	}
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("replay: MaxAge %s is negative", cfg.MaxAge)
	}
	if cfg.RingBytes < 0 || cfg.PageBytes < 0 || cfg.PageCacheBytes < 0 {
		return nil, fmt.Errorf("replay: RingBytes %d, PageBytes %d, PageCacheBytes %d: none may be negative",
			cfg.RingBytes, cfg.PageBytes, cfg.PageCacheBytes)
	}
	w := &Window{
		src:       src,
		ringSize:  orDefault(cfg.RingSize, defaultRingSize),
		ringBytes: orDefault(cfg.RingBytes, defaultRingBytes),
		pageSize:  orDefault(cfg.PageSize, defaultPageSize),
		pageBytes: orDefault(cfg.PageBytes, defaultPageBytes),
		maxAge:    cfg.MaxAge,
		now:       cfg.Now,
		topics:    make(map[string]*topicState),
		recent:    pageCache{ttl: pageCacheTTL, maxBytes: orDefault(cfg.PageCacheBytes, defaultPageCacheBytes)},
	}
	if w.now == nil {
		w.now = time.Now
	}
	pageSize := w.pageSize
	w.pages.New = func() any {
		b := make([]pubsub.Entry, 0, pageSize)
		return &b
	}
	return w, nil
}

// orDefault returns v, or def when v is 0.
func orDefault[T int | int64](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Acquire marks topic active for one more local subscriber. The first
// Acquire calls Watch for up to RingSize entries that fit in the room the
// budget has left (see the package doc) and fills the ring from the
// returned tail; concurrent Acquires of a topic that is still loading wait
// for it (or their ctx). A Watch error is returned wrapped and leaves the
// topic inactive; if it came from the loading caller's ctx ending, the
// waiters try again instead of sharing it. Every nil return must be paired
// with one Release.
func (w *Window) Acquire(ctx context.Context, topic string) error {
	for {
		w.mu.Lock()
		st := w.topics[topic]
		if st == nil {
			st = &topicState{phase: loading, refs: 1, done: make(chan struct{}), ring: ring{max: w.ringSize, acct: &w.rings}}
			st.touched.Store(w.clock.Add(1))
			w.topics[topic] = st
			w.mu.Unlock()
			err := w.load(ctx, topic, st)
			w.keepBudget()
			return err
		}
		switch st.phase {
		case active:
			st.refs++
			w.mu.Unlock()
			return nil
		case loading:
			st.refs++
			done := st.done
			w.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				w.mu.Lock()
				if st.phase == loading {
					st.refs--
					w.mu.Unlock()
					return fmt.Errorf("replay: acquire %q: waiting for load: %w", topic, ctx.Err())
				}
				w.mu.Unlock()
				// The load ended anyway; take its outcome below.
			}
			w.mu.Lock()
			ph, loadErr, retry := st.phase, st.loadErr, st.retry
			w.mu.Unlock()
			if ph != failed {
				return nil // we hold a reference on the loaded topic
			}
			if retry && ctx.Err() == nil {
				continue
			}
			return fmt.Errorf("replay: watch %q: %w", topic, loadErr)
		default: // closing: wait for Unwatch to return, then start over
			done := st.done
			w.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return fmt.Errorf("replay: acquire %q: waiting for unwatch: %w", topic, ctx.Err())
			}
		}
	}
}

// load runs Watch for a state that Acquire put in the map as loading.
func (w *Window) load(ctx context.Context, topic string, st *topicState) (err error) {
	// Pages cached while no reader watched the topic would not have been
	// dropped by a reset: the stream may have been deleted and recreated
	// since.
	w.forget(topic)
	// The tail is held against the budget before it is read (released
	// below once the ring holds, and accounts for, what it kept).
	held := w.rings.reserve(w.ringBytes, int64(w.pageBytes))
	defer w.rings.release(held)
	var tail pubsub.Tail
	err = errSourcePanicked
	defer func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			st.phase, st.loadErr, st.retry = failed, err, ctx.Err() != nil
			st.ring.free()
			delete(w.topics, topic)
			err = fmt.Errorf("replay: watch %q: %w", topic, err)
		} else if st.stale {
			st.stale = false
			st.resetLocked()
			st.phase = active
		} else {
			st.ring.finishLoad(tail)
			if tail.Last.Less(st.last) {
				tail.Last = st.last
			}
			st.last = tail.Last
			if st.live.Less(tail.Last) {
				st.live = tail.Last
			}
			st.phase = active
			w.evictAgedLocked(st)
		}
		st.ring.settle()
		close(st.done)
	}()
	count := w.ringSize
	if held == 0 {
		count = 0 // no room: the ring starts at Tail.Last
	}
	tail, err = w.src.Watch(ctx, topic, count, int(held))
	return err
}

// Release drops one subscriber of topic; the last one calls Unwatch and
// frees the ring. A Release during a load waits for the load first, so
// Watch and Unwatch never overlap; otherwise Release blocks on no I/O
// (Unwatch does not block). Releasing a topic that is not held is a no-op.
func (w *Window) Release(topic string) {
	for {
		w.mu.Lock()
		st := w.topics[topic]
		if st == nil || st.phase == closing {
			w.mu.Unlock()
			return
		}
		if st.phase == loading {
			done := st.done
			w.mu.Unlock()
			<-done
			continue
		}
		st.refs--
		if st.refs > 0 {
			w.mu.Unlock()
			return
		}
		st.phase = closing
		st.done = make(chan struct{})
		st.ring.free()
		w.mu.Unlock()
		w.unwatch(topic, st)
		return
	}
}

// unwatch calls Unwatch for a closing state and removes it, even if Unwatch
// panics, so that a later Acquire does not wait forever.
func (w *Window) unwatch(topic string, st *topicState) {
	defer func() {
		w.mu.Lock()
		delete(w.topics, topic)
		close(st.done)
		w.mu.Unlock()
	}()
	w.src.Unwatch(topic)
}

// Append adds entries the broker delivered for topic to its ring. The node
// calls it from the broker's reader goroutine, before fan-out. Entries of
// a topic that is not active or loading are ignored, as are entries not
// newer than the newest seen (late or repeated deliveries). It does no I/O
// and allocates only when a ring grows toward its capacity. When the rings
// exceed RingBytes, it evicts the coldest entries (see the package doc).
//
// It returns the newest ID the broker delivered before entries, which they
// continue from, so that the node can tell a client whose position lies
// below it that entries between the two may exist; zero when unknown (the
// topic is not active, or the broker reset it since).
func (w *Window) Append(topic string, entries []pubsub.Entry) (prev pubsub.ID) {
	if len(entries) == 0 {
		return pubsub.ID{}
	}
	prev = w.append(topic, entries)
	w.keepBudget()
	return prev
}

// append is Append but for the budget, which needs the locks released.
func (w *Window) append(topic string, entries []pubsub.Entry) (prev pubsub.ID) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	st := w.topics[topic]
	if st == nil || (st.phase != active && st.phase != loading) {
		return pubsub.ID{}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	defer st.ring.settle()
	w.touch(st)
	if st.phase == active {
		prev = st.live
	}
	if last := entries[len(entries)-1].ID; st.live.Less(last) {
		st.live = last
	}
	for i := range entries {
		if !st.last.Less(entries[i].ID) {
			continue
		}
		st.ring.push(&entries[i])
		st.last = entries[i].ID
	}
	if st.phase == active {
		w.evictAgedLocked(st)
	}
	return prev
}

// Reset forgets what the window holds of topic because its stream moved
// under the broker's reader (deleted, recreated, or its last ID went
// backwards): the ring is emptied and covers positions again from the next
// entry delivered, whatever its ID, and cached pages and ring checks of the
// topic are dropped. The node calls it for the broker's reset signal
// (pubsub.Handler with no entries), before closing the topic's streams.
func (w *Window) Reset(topic string) {
	w.forget(topic)
	w.withRing(topic, func(st *topicState) {
		st.live = pubsub.ID{}
		switch st.phase {
		case active:
			st.resetLocked()
		case loading:
			st.stale = true
		}
	})
}

// forget drops topic's cached pages and state, and keeps reads in flight
// from caching theirs.
func (w *Window) forget(topic string) {
	w.resets.Add(1)
	w.recent.drop(topic)
}

// resetLocked empties st's ring: it covers nothing until the next entry is
// pushed. st's ring must be locked (see topicState).
func (st *topicState) resetLocked() {
	st.ring.clear()
	st.last = pubsub.ID{}
	st.checkedAt = time.Time{}
}

// checkRing checks topic's ring against the stream's state (see the
// package doc), reading it once for concurrent callers, within checkWait.
func (w *Window) checkRing(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, checkWait)
	defer cancel()
	c, err := w.infos.do(ctx, topic, func(ctx context.Context) (ringCheck, error) {
		c := ringCheck{resets: w.resets.Load()}
		c.at = w.now()
		c.liveMark = w.markLive(topic)
		var err error
		c.info, err = w.src.Info(ctx, topic)
		return c, err
	})
	if err != nil {
		w.withRing(topic, func(st *topicState) { st.refreshing = false })
		return fmt.Errorf("replay: stream info of %q: %w", topic, err)
	}
	lost := false
	w.withRing(topic, func(st *topicState) {
		if st == c.st && st.phase == active && w.resets.Load() == c.resets {
			lost = st.applyCheckLocked(c)
		}
		st.refreshing = false
	})
	if lost {
		w.src.Recheck(topic)
	}
	return nil
}

// lostUnder reports that the stream in info lost entries delivered live up
// to last: it is gone, or its last ID went below last. That is a reset the
// broker has not (yet) signalled: it checks a stream's history about once
// a second, and a DEL followed by a RESTORE of the same entries within that
// time would look to it like no change at all, while clients resuming in
// between were told of the reset.
func lostUnder(info *pubsub.StreamInfo, last pubsub.ID) bool {
	return (!info.Exists && !last.IsZero()) || info.Last.Less(last)
}

// sawState takes the state of topic's stream read by a page that started
// at mark: if it lost what the live path had delivered by then, the ring
// is emptied and the broker asked to check the stream's history now.
func (w *Window) sawState(topic string, info *pubsub.StreamInfo, mark liveMark) {
	lost := false
	w.withRing(topic, func(st *topicState) {
		if st == mark.st && st.phase == active && lostUnder(info, mark.last) {
			st.resetLocked()
			lost = true
		}
	})
	if lost {
		w.src.Recheck(topic)
	}
}

// applyCheckLocked makes st's ring answer as the stream in c does: every
// position it covers gets from it what a source page would give, with no
// gap. It reports that the stream lost what the ring holds (lostUnder); the
// ring is then empty. st's ring must be locked.
func (st *topicState) applyCheckLocked(c ringCheck) (lost bool) {
	info := &c.info
	if lostUnder(info, c.last) {
		st.resetLocked()
		return true
	}
	r := &st.ring
	r.raiseFloor(info.MaxDeleted)
	if info.Length > 0 {
		if r.n > 0 && r.at(0).ID.Less(info.First) {
			// Above everything removed, yet not in the stream: the stream
			// was recreated (with higher IDs) under the ring.
			st.resetLocked()
			return
		}
		// Below First, positions other than MaxDeleted are gaps: the
		// source answers them.
		r.first, r.maxDeleted = info.First, info.MaxDeleted
	} else {
		r.first, r.maxDeleted = pubsub.ID{}, pubsub.ID{}
	}
	if st.checkedAt.Before(c.at) {
		st.checkedAt = c.at
	}
	return false
}

// Last returns the newest ID the window has seen for topic (the ring's
// newest entry, or the Tail.Last it was loaded with); ok is false unless the
// topic is active (loaded).
func (w *Window) Last(topic string) (id pubsub.ID, ok bool) {
	w.withRing(topic, func(st *topicState) {
		id, ok = st.last, st.phase == active
	})
	if !ok {
		return pubsub.ID{}, false
	}
	return id, true
}

// withRing calls f with topic's state and its ring locked, if the topic is
// in the window; f must not take Window.mu.
func (w *Window) withRing(topic string, f func(st *topicState)) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	st := w.topics[topic]
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	f(st)
	st.ring.settle()
}

// touch marks st as the most recently used topic. The clock moves only
// when another topic was used since, so that a busy topic does not keep
// writing to memory every topic shares.
func (w *Window) touch(st *topicState) {
	if st.touched.Load() != w.clock.Load() {
		st.touched.Store(w.clock.Add(1))
	}
}

// evictAgedLocked evicts st's entries older than MaxAge. st's ring must be
// locked.
func (w *Window) evictAgedLocked(st *topicState) {
	if w.maxAge <= 0 || st.ring.n == 0 {
		return
	}
	cutoff := w.now().Add(-w.maxAge).UnixMilli()
	if cutoff <= 0 {
		return
	}
	st.ring.evictBefore(uint64(cutoff))
}

// keepBudget brings the rings back under RingBytes when they exceed it,
// evicting the oldest entries of the coldest active topics first (least
// recently appended to or read) down to 7/8 of the budget. One goroutine
// sweeps at a time; the others go on, and an append racing with the end
// of a sweep is evicted by the next one.
func (w *Window) keepBudget() {
	if w.rings.bytes.Load() <= w.ringBytes || !w.sweeping.TryLock() {
		return
	}
	defer w.sweeping.Unlock()
	low := w.ringBytes - w.ringBytes/8
	type candidate struct {
		st      *topicState
		touched uint64
	}
	w.mu.RLock()
	cold := make([]candidate, 0, len(w.topics))
	for _, st := range w.topics {
		if st.phase == active {
			cold = append(cold, candidate{st, st.touched.Load()})
		}
	}
	w.mu.RUnlock()
	slices.SortFunc(cold, func(a, b candidate) int { return cmp.Compare(a.touched, b.touched) })
	for _, c := range cold {
		if w.rings.bytes.Load() <= low {
			return
		}
		w.mu.RLock()
		if c.st.phase == active { // not released since
			c.st.mu.Lock()
			for c.st.ring.n > 0 && w.rings.bytes.Load() > low {
				c.st.ring.evictOldest(evictBudget)
				c.st.ring.settle()
			}
			c.st.mu.Unlock()
		}
		w.mu.RUnlock()
	}
}

// Stats is what the window holds against its budgets, for metrics.
type Stats struct {
	// RingBytes is what all rings hold, by entry size; RingBudget is
	// Config.RingBytes.
	RingBytes, RingBudget int64
	// PageCacheBytes is what the kept pages hold; PageCacheBudget is
	// Config.PageCacheBytes.
	PageCacheBytes, PageCacheBudget int64
	// Evicted counts the entries that left rings of active topics, by
	// reason: "size" (RingSize), "age" (MaxAge), "stream" (trimmed or
	// deleted from the stream) and "budget" (RingBytes).
	Evicted map[string]uint64
}

// evictReasonNames are the Stats.Evicted keys, by evictReason.
var evictReasonNames = [numEvictReasons]string{
	evictSize: "size", evictAge: "age", evictStream: "stream", evictBudget: "budget",
}

// Stats returns the window's use of its budgets; it takes no topic's lock.
func (w *Window) Stats() Stats {
	s := Stats{
		RingBytes:       w.rings.bytes.Load(),
		RingBudget:      w.ringBytes,
		PageCacheBytes:  w.recent.size(),
		PageCacheBudget: int64(w.recent.maxBytes),
		Evicted:         make(map[string]uint64, numEvictReasons),
	}
	for i, name := range evictReasonNames {
		s.Evicted[name] = w.rings.evicted[i].Load()
	}
	return s
}
