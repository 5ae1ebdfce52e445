// Package replay resumes SSE streams: it parses Last-Event-ID positions and
// keeps the capped replay window, a hot ring of the newest entries of each
// topic that has local subscribers, backed by paged reads from the broker
// for positions the ring does not cover, with exact gap detection.
//
// Memory is bounded by RingSize entries per active topic plus one page of
// PageSize entries per Replay in progress, whatever the publish rate or how
// far behind a client is. Concurrent Replays that need the same page of the
// same topic share one source read, so a reconnect storm costs the source a
// number of reads that grows with topics and pages, not with clients.
package replay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Source is what the window needs from a broker; pubsub.Memory and
// pubsub.Redis both satisfy it.
type Source interface {
	// Watch activates topic and returns its last ID and up to tail newest entries.
	Watch(ctx context.Context, topic string, tail int) (pubsub.Tail, error)
	// Unwatch stops delivering topic; it must not block.
	Unwatch(topic string)
	// Range returns up to count entries with ID > after, ascending.
	Range(ctx context.Context, topic string, after pubsub.ID, count int) ([]pubsub.Entry, error)
	// Info describes topic's stream, for gap detection.
	Info(ctx context.Context, topic string) (pubsub.StreamInfo, error)
}

// Defaults for zero Config fields.
const (
	DefaultRingSize = 1024
	DefaultPageSize = 256
)

// Config configures a Window. Zero fields take the documented defaults.
type Config struct {
	// RingSize is the number of entries held per active topic; 0 means
	// DefaultRingSize (1024).
	RingSize int
	// MaxAge evicts ring entries older than this (by the time in their ID);
	// 0 means no age limit.
	MaxAge time.Duration
	// PageSize is the number of entries read from the source per Range call
	// and copied from the ring per step of a Replay; 0 means DefaultPageSize
	// (256).
	PageSize int
	// Now is the clock for MaxAge; nil means time.Now.
	Now func() time.Time
}

// Window is the replay window of one node: a ring per active topic and
// shared paged reads from the Source. It starts no goroutine and needs no
// Close. Its methods are safe for concurrent use.
type Window struct {
	// Immutable after New.
	src      Source
	ringSize int
	pageSize int
	maxAge   time.Duration
	now      func() time.Time

	mu     sync.Mutex
	topics map[string]*topicState // guarded by mu

	infos  flight[string, pubsub.StreamInfo]
	ranges flight[rangeKey, []pubsub.Entry]
	recent pageCache // full source pages, shared for a few seconds
	pages  sync.Pool // *[]pubsub.Entry with cap pageSize, for ring copies
}

type rangeKey struct {
	topic string
	after pubsub.ID
	count int
}

// phase is where a topic is in its life. Transitions, all under Window.mu:
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

// topicState is one topic's entry in Window.topics, guarded by Window.mu.
type topicState struct {
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
	// last is the newest ID seen: the ring's newest or Tail.Last.
	last pubsub.ID
	ring ring
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
	w := &Window{
		src:      src,
		ringSize: cfg.RingSize,
		pageSize: cfg.PageSize,
		maxAge:   cfg.MaxAge,
		now:      cfg.Now,
		topics:   make(map[string]*topicState),
		recent:   pageCache{ttl: pageCacheTTL, maxBytes: pageCacheBytes},
	}
	if w.ringSize == 0 {
		w.ringSize = DefaultRingSize
	}
	if w.pageSize == 0 {
		w.pageSize = DefaultPageSize
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

// Acquire marks topic active for one more local subscriber. The first
// Acquire calls Watch(ctx, topic, RingSize) and fills the ring from the
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
			st = &topicState{phase: loading, refs: 1, done: make(chan struct{}), ring: ring{max: w.ringSize}}
			w.topics[topic] = st
			w.mu.Unlock()
			return w.load(ctx, topic, st)
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
	var tail pubsub.Tail
	err = errSourcePanicked
	defer func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			st.phase, st.loadErr, st.retry = failed, err, ctx.Err() != nil
			st.ring = ring{}
			delete(w.topics, topic)
			err = fmt.Errorf("replay: watch %q: %w", topic, err)
		} else {
			st.ring.finishLoad(tail)
			if tail.Last.Less(st.last) {
				tail.Last = st.last
			}
			st.last = tail.Last
			st.phase = active
			w.evictAgedLocked(st)
		}
		close(st.done)
	}()
	tail, err = w.src.Watch(ctx, topic, w.ringSize)
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
		st.ring = ring{}
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
// and allocates only when a ring grows toward its capacity.
func (w *Window) Append(topic string, entries []pubsub.Entry) {
	if len(entries) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.topics[topic]
	if st == nil || (st.phase != active && st.phase != loading) {
		return
	}
	for i := range entries {
		if !st.last.Less(entries[i].ID) {
			continue
		}
		st.ring.push(entries[i])
		st.last = entries[i].ID
	}
	if st.phase == active {
		w.evictAgedLocked(st)
	}
}

// Last returns the newest ID the window has seen for topic (the ring's
// newest entry, or the Tail.Last it was loaded with); ok is false unless the
// topic is active (loaded).
func (w *Window) Last(topic string) (id pubsub.ID, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.topics[topic]
	if st == nil || st.phase != active {
		return pubsub.ID{}, false
	}
	return st.last, true
}

// evictAgedLocked evicts st's entries older than MaxAge. w.mu must be held.
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
