package pubsub

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// defaultMemoryMaxLen is the number of entries the in-memory broker keeps per
// topic when MemoryConfig.MaxLen is zero.
const defaultMemoryMaxLen = 10000

// defaultMemoryMaxBytes bounds what all topics of the in-memory broker hold
// together when MemoryConfig.MaxBytes is zero.
const defaultMemoryMaxBytes = 256 << 20

// MemoryConfig configures the embedded in-memory broker.
type MemoryConfig struct {
	// MaxLen is the number of entries kept per topic; older entries are
	// trimmed on every publish. Zero means 10000.
	MaxLen int
	// MaxAge trims entries whose ID time is older than Now-MaxAge, on publish
	// and lazily when a topic is read. Zero means no age limit.
	MaxAge time.Duration
	// MaxBytes bounds what all topics hold together, counted as
	// Entry.Size per entry and 256 bytes plus its name per topic. Past it,
	// a publish trims the oldest entries of all topics (lowest IDs first)
	// until an eighth of it is free again, and drops the topics left empty
	// that nobody watches, so a node's memory does not follow what
	// publishers send. Zero means 256 MiB.
	MaxBytes int64
	// Now is the clock entry IDs are made from. Nil means time.Now.
	Now func() time.Time
}

// Memory is the embedded broker: one bounded in-memory stream per topic with
// Redis stream semantics (IDs, trimming, XINFO-like Info), and one reader
// goroutine that delivers watched topics' new entries to a Handler, so a
// node sees the same behaviour as with the Redis broker.
//
// Lock order: Memory.evict, then Memory.mu, then stream.mu; Memory.dmu is
// never held with another lock. The Handler is called with no lock held.
type Memory struct {
	// Immutable after NewMemory.
	maxLen   int
	maxAge   time.Duration
	maxBytes int64
	now      func() time.Time
	wake     chan struct{} // 1-slot: "the dirty list may be non-empty"; never closed
	done     chan struct{} // closed by Close

	closed atomic.Bool
	wg     sync.WaitGroup // the reader goroutine

	held  atomic.Int64 // Entry.Size of the entries all streams hold
	evict sync.Mutex   // one publish at a time trims for MaxBytes; taken before mu
	// stuck is what the last trim could not bring under MaxBytes (topics
	// watched but empty cost bytes no trim frees), 0 if it could: until
	// held passes it by an eighth of MaxBytes, publishes do not look at
	// every topic again.
	stuck  atomic.Int64
	passes atomic.Int64 // trims run (for tests)

	mu      sync.RWMutex
	topics  map[string]*stream // guarded by mu
	started bool               // guarded by mu

	dmu   sync.Mutex
	dirty []*stream // watched streams with entries the reader may not have delivered; guarded by dmu
}

// stream is one topic's bounded log plus its delivery state.
type stream struct {
	topic string        // immutable
	held  *atomic.Int64 // Memory.held; immutable

	mu sync.Mutex
	// log[head:] are the entries held, ascending; log[:head] are trimmed
	// slots, zeroed so their data can be collected, reclaimed in bulk.
	log        []Entry
	head       int
	exists     bool // published at least once: the Redis key would exist
	last       ID   // newest ID ever added
	maxDeleted ID   // highest ID trimmed
	removed    bool // dropped from Memory.topics; lookups must retry

	watched bool
	cursor  ID   // last ID delivered (or skipped by Watch) while watched
	queued  bool // on Memory.dirty or about to be
}

// NewMemory validates cfg and returns a broker. Call Start to begin delivery
// and Close to release it.
func NewMemory(cfg MemoryConfig) (*Memory, error) {
	if cfg.MaxLen < 0 {
		return nil, fmt.Errorf("pubsub: memory config: MaxLen %d is negative", cfg.MaxLen)
	}
	if cfg.MaxAge < 0 {
		return nil, fmt.Errorf("pubsub: memory config: MaxAge %v is negative", cfg.MaxAge)
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("pubsub: memory config: MaxBytes %d is negative", cfg.MaxBytes)
	}
	m := &Memory{
		maxLen:   cfg.MaxLen,
		maxAge:   cfg.MaxAge,
		maxBytes: cfg.MaxBytes,
		now:      cfg.Now,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		topics:   make(map[string]*stream),
	}
	if m.maxLen == 0 {
		m.maxLen = defaultMemoryMaxLen
	}
	if m.maxBytes == 0 {
		m.maxBytes = defaultMemoryMaxBytes
	}
	if m.now == nil {
		m.now = time.Now
	}
	return m, nil
}

// Start begins delivering the new entries of watched topics to h from one
// reader goroutine. It fails if called twice or after Close.
func (m *Memory) Start(h Handler) error {
	if h == nil {
		return errors.New("pubsub: memory start: nil handler")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// Checked under mu so that wg.Add happens before Close's wg.Wait.
	if m.closed.Load() {
		return ErrClosed
	}
	if m.started {
		return errors.New("pubsub: memory start: already started")
	}
	m.started = true
	m.wg.Add(1)
	go m.run(h)
	return nil
}

// Watch makes topic active: it returns the stream's current last ID and up
// to tail newest entries (oldest first) that fit in maxBytes together (by
// Entry.Size; 0: no bound), and from then on the Handler receives every
// entry after Tail.Last. Watching an already watched topic returns a fresh
// Tail and leaves delivery where it is.
//
// After Unwatch, a batch the reader had already taken may still reach the
// Handler; if the topic is watched again meanwhile, that batch holds entries
// at or below the new Tail.Last, which callers discard.
func (m *Memory) Watch(ctx context.Context, topic string, tail, maxBytes int) (Tail, error) {
	if err := m.check(ctx, "watch", topic); err != nil {
		return Tail{}, err
	}
	if tail < 0 || maxBytes < 0 {
		return Tail{}, fmt.Errorf("pubsub: watch %q: negative tail %d or maxBytes %d", topic, tail, maxBytes)
	}
	s, err := m.lockStream(topic, true)
	if err != nil {
		return Tail{}, err
	}
	defer s.mu.Unlock()
	s.trimAgeLocked(m.cutoff())
	if !s.watched {
		// Same critical section as the tail below: nothing between the tail
		// and the first delivery is skipped or repeated.
		s.watched = true
		s.cursor = s.last
	}
	held := s.log[s.head:]
	n := min(tail, len(held))
	for bytes, i := 0, 0; maxBytes > 0 && i < n; i++ {
		if bytes += held[len(held)-1-i].Size(); bytes > maxBytes {
			n = i
			break
		}
	}
	t := Tail{Last: s.last}
	if n > 0 {
		t.Entries = append([]Entry(nil), held[len(held)-n:]...)
	}
	return t, nil
}

// Unwatch stops delivering topic. It does not block; a batch already taken
// by the reader may still be delivered.
func (m *Memory) Unwatch(topic string) {
	if m.closed.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.topics[topic]
	if s == nil {
		return
	}
	s.mu.Lock()
	s.watched = false
	if !s.exists {
		// Created only to hold the watch: drop it, or topics that are
		// watched but never published would accumulate forever.
		m.dropLocked(s)
	}
	s.mu.Unlock()
}

// Publish appends an entry to topic, trims the topic to MaxLen and MaxAge,
// and returns the new entry's ID, then trims all topics to MaxBytes. It
// never waits for delivery. data is copied; event must pass ValidateEvent;
// an entry larger than MaxBytes is refused (ErrTooLarge).
func (m *Memory) Publish(ctx context.Context, topic, event string, data []byte) (ID, error) {
	if err := m.check(ctx, "publish", topic); err != nil {
		return ID{}, err
	}
	if err := ValidateEvent(event); err != nil {
		return ID{}, fmt.Errorf("pubsub: publish %q event %q: %w", topic, event, err)
	}
	if size := (&Entry{Event: event, Data: data}).Size(); int64(size) > m.maxBytes {
		return ID{}, fmt.Errorf("pubsub: publish %q: %w: %d bytes, the broker holds at most %d", topic, ErrTooLarge, size, m.maxBytes)
	}
	// Allocate outside the lock. The event is cloned like the data: the
	// caller's string may be a piece of a larger buffer.
	e := Entry{Event: strings.Clone(event), Data: bytes.Clone(data)}
	s, err := m.lockStream(topic, true)
	if err != nil {
		return ID{}, err
	}
	nowMs := m.nowMs()
	id, ok := nextID(s.last, nowMs)
	if !ok {
		s.mu.Unlock()
		return ID{}, fmt.Errorf("pubsub: publish %q: stream ID space exhausted after %v", topic, s.last)
	}
	e.ID = id
	s.appendLocked(e)
	s.exists = true
	s.last = id
	if excess := len(s.log) - s.head - m.maxLen; excess > 0 {
		s.trimLocked(s.head + excess)
	}
	s.trimAgeLocked(m.cutoffAt(nowMs))
	notify := s.watched && !s.queued
	if notify {
		s.queued = true
	}
	s.mu.Unlock()
	m.trimBytes()
	if notify {
		m.dmu.Lock()
		m.dirty = append(m.dirty, s)
		m.dmu.Unlock()
		select {
		case m.wake <- struct{}{}:
		default: // the reader is already due to look
		}
	}
	return id, nil
}

// Range returns up to count entries of topic with ID > after, ascending. The
// result is empty past the end or for a topic that does not exist.
func (m *Memory) Range(ctx context.Context, topic string, after ID, count int) ([]Entry, error) {
	p, err := m.Page(ctx, topic, after, count, 0)
	return p.Entries, err
}

// Page returns up to count entries of topic with ID > after, ascending,
// with the stream's Info at the same instant (one critical section), as
// Redis' page read does. With maxBytes > 0 the page also stops at the
// entry that brings it to maxBytes (by Entry.Size), and says Cut if
// entries that follow were left out: an entry larger than maxBytes is a
// page alone.
func (m *Memory) Page(ctx context.Context, topic string, after ID, count, maxBytes int) (Page, error) {
	if count <= 0 {
		return Page{}, fmt.Errorf("pubsub: page %q: count %d is not positive", topic, count)
	}
	p, err := m.read(ctx, "page", topic, after, count)
	if maxBytes > 0 {
		size := 0
		for i := range p.Entries {
			if size += p.Entries[i].Size(); size >= maxBytes && i+1 < len(p.Entries) {
				clear(p.Entries[i+1:])
				p.Entries = p.Entries[:i+1]
				p.Read, p.Last, p.Cut = i+1, p.Entries[i].ID, true
				break
			}
		}
	}
	return p, err
}

// Info describes topic's stream as Redis XINFO STREAM does: Exists is false
// for a topic never published. MaxDeleted is the newest entry trimmed.
func (m *Memory) Info(ctx context.Context, topic string) (StreamInfo, error) {
	p, err := m.read(ctx, "info", topic, ID{}, 0)
	return p.Info, err
}

// read takes the stream's info and up to count entries after `after` in
// one critical section.
func (m *Memory) read(ctx context.Context, op, topic string, after ID, count int) (Page, error) {
	if err := m.check(ctx, op, topic); err != nil {
		return Page{}, err
	}
	s, err := m.lockStream(topic, false)
	if err != nil || s == nil {
		return Page{}, err
	}
	defer s.mu.Unlock()
	if !s.exists {
		return Page{}, nil
	}
	s.trimAgeLocked(m.cutoff())
	held := s.log[s.head:]
	p := Page{Info: StreamInfo{
		Exists:     true,
		Length:     int64(len(held)),
		Last:       s.last,
		MaxDeleted: s.maxDeleted,
	}}
	if len(held) > 0 {
		p.Info.First = held[0].ID
	}
	if count > 0 {
		if page := s.after(after); len(page) > 0 {
			p.Entries = append([]Entry(nil), page[:min(count, len(page))]...)
			p.Read, p.Last = len(p.Entries), p.Entries[len(p.Entries)-1].ID
		}
	}
	return p, nil
}

// Recheck does nothing: the embedded broker's reader sees every trim that
// overtakes it as it happens (see take), and only unwatched streams are
// dropped (trimBytes).
func (m *Memory) Recheck(string) {}

// Ping reports ErrClosed after Close, else the context's error, else nil.
func (m *Memory) Ping(ctx context.Context) error {
	if m.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// Close stops the reader goroutine and waits for it, including a Handler
// call in progress (so a Handler must not call Close). Later calls return
// nil; every other method then returns ErrClosed.
func (m *Memory) Close() error {
	if !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	m.mu.Lock()
	// Start checks closed under mu, so after this no reader can be added.
	m.topics = make(map[string]*stream) // release the logs
	m.mu.Unlock()
	close(m.done)
	m.wg.Wait()
	m.dmu.Lock()
	m.dirty = nil
	m.dmu.Unlock()
	return nil
}

// check runs the checks common to every topic method.
func (m *Memory) check(ctx context.Context, op, topic string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("pubsub: %s %q: %w", op, topic, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pubsub: %s %q: %w", op, topic, err)
	}
	return nil
}

// lockStream returns topic's stream with its mu held. Without create, a
// missing topic gives (nil, nil).
func (m *Memory) lockStream(topic string, create bool) (*stream, error) {
	for {
		m.mu.RLock()
		s := m.topics[topic]
		m.mu.RUnlock()
		if s == nil {
			if !create {
				return nil, nil
			}
			m.mu.Lock()
			if m.closed.Load() {
				m.mu.Unlock()
				return nil, ErrClosed
			}
			if s = m.topics[topic]; s == nil {
				// Its own copy of the name, the map's key too.
				name := strings.Clone(topic)
				s = &stream{topic: name, held: &m.held}
				m.topics[name] = s
				m.held.Add(s.cost())
			}
			m.mu.Unlock()
		}
		s.mu.Lock()
		if !s.removed {
			return s, nil
		}
		// Unwatch dropped it between the lookup and the lock.
		s.mu.Unlock()
	}
}

func (m *Memory) nowMs() uint64 {
	ms := m.now().UnixMilli()
	if ms < 0 {
		return 0
	}
	return uint64(ms)
}

// cutoff is the smallest ID that MaxAge keeps now; zero keeps everything.
func (m *Memory) cutoff() ID {
	if m.maxAge == 0 {
		return ID{}
	}
	return m.cutoffAt(m.nowMs())
}

func (m *Memory) cutoffAt(nowMs uint64) ID {
	age := uint64(m.maxAge.Milliseconds())
	if m.maxAge == 0 || nowMs <= age {
		return ID{}
	}
	// As XTRIM MINID: entries with an ID below <now-age>-0 go.
	return ID{Ms: nowMs - age}
}

// nextID is the ID Redis XADD * makes after last at time nowMs: the clock if
// it moved forward, else last's ms with the next sequence. The first ID at
// ms 0 is 0-1, never 0-0. ok is false when the ID space is exhausted.
func nextID(last ID, nowMs uint64) (id ID, ok bool) {
	if nowMs > last.Ms {
		return ID{Ms: nowMs}, true
	}
	if last.Seq < ^uint64(0) {
		return ID{Ms: last.Ms, Seq: last.Seq + 1}, true
	}
	if last.Ms < ^uint64(0) {
		return ID{Ms: last.Ms + 1}, true
	}
	return ID{}, false
}

// run is the reader goroutine: woken by Publish, it delivers each dirty
// watched stream's entries after its cursor in one Handler call.
func (m *Memory) run(h Handler) {
	defer m.wg.Done()
	var batch []*stream // reused between wakes
	for {
		select {
		case <-m.done:
			return
		case <-m.wake:
		}
		m.dmu.Lock()
		batch, m.dirty = m.dirty, batch[:0]
		m.dmu.Unlock()
		for i, s := range batch {
			batch[i] = nil // do not pin removed streams until the next wake
			select {
			case <-m.done:
				return
			default:
			}
			entries, lost := s.take()
			if lost {
				h(s.topic, nil) // a reset: see Handler
			}
			if len(entries) > 0 {
				h(s.topic, entries)
			}
		}
		batch = batch[:0]
	}
}

// take returns a copy of the entries after the cursor and moves the cursor
// to the last of them. lost reports that entries after the cursor were
// trimmed before the reader got to them (publishers never wait): the
// reader then sends a reset before them, so that what holds the topic
// (the replay window's ring, live clients) starts again from the stream
// and the gap is announced.
func (s *stream) take() (entries []Entry, lost bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued = false
	if !s.watched {
		return nil, false
	}
	lost = s.cursor.Less(s.maxDeleted)
	if lost {
		s.cursor = s.maxDeleted
	}
	ready := s.after(s.cursor)
	if len(ready) == 0 {
		return nil, lost
	}
	s.cursor = ready[len(ready)-1].ID
	return append([]Entry(nil), ready...), lost
}

// after returns the held entries with ID > id, aliasing the log. Caller
// holds s.mu.
func (s *stream) after(id ID) []Entry {
	held := s.log[s.head:]
	i := sort.Search(len(held), func(i int) bool { return id.Less(held[i].ID) })
	return held[i:]
}

// appendLocked adds e, reusing the trimmed prefix once it is at least half
// the log, so trimming costs O(1) amortised and memory stays within about
// twice the held entries.
func (s *stream) appendLocked(e Entry) {
	if len(s.log) == cap(s.log) && s.head > 0 && s.head >= len(s.log)/2 {
		n := copy(s.log, s.log[s.head:])
		clear(s.log[n:])
		s.log = s.log[:n]
		s.head = 0
	}
	s.log = append(s.log, e)
	s.held.Add(int64(e.Size()))
}

// topicCost is what a topic costs besides its entries (its stream, map
// entry and log header), counted with its name against MaxBytes, so that
// a flood of topics is bounded like a flood of entries.
const topicCost = 256

// cost is what s counts against MaxBytes while it is in Memory.topics.
func (s *stream) cost() int64 { return int64(topicCost + len(s.topic)) }

// dropLocked removes s from m.topics; a lookup that still holds it
// retries. Caller holds m.mu and s.mu.
func (m *Memory) dropLocked(s *stream) {
	s.removed = true
	delete(m.topics, s.topic)
	m.held.Add(-s.cost())
}

// keptLogCap is the capacity an emptied log keeps for the next entries; a
// larger array is released, so a topic that once held many entries costs
// nothing once they are gone.
const keptLogCap = 64

// trimLocked drops the held entries before index end of log.
func (s *stream) trimLocked(end int) {
	if end <= s.head {
		return
	}
	s.maxDeleted = s.log[end-1].ID
	var size int64
	for i := s.head; i < end; i++ {
		size += int64(s.log[i].Size())
	}
	s.held.Add(-size)
	clear(s.log[s.head:end])
	s.head = end
	if s.head == len(s.log) {
		// Empty: start again at the front of the same array, or a new one.
		s.log = s.log[:0]
		s.head = 0
		if cap(s.log) > keptLogCap {
			s.log = nil
		}
	}
}

// trimBytes trims the oldest entries of all topics, lowest ID first, while
// the broker holds more than MaxBytes, down to seven eighths of it, and
// drops the topics it leaves empty that nobody watches (as a Redis stream
// deleted: a resume from a position in it gets a reset gap). It runs after
// a publish; a publish that finds another one trimming leaves it the work,
// so at most the entries of publishes in flight pass the bound. When what
// is left is over the bound anyway (watched topics' costs), the next trim
// waits for an eighth of MaxBytes more, rather than every publish looking
// at every topic.
func (m *Memory) trimBytes() {
	if m.held.Load() <= max(m.maxBytes, m.stuck.Load()+m.maxBytes/8) || !m.evict.TryLock() {
		return
	}
	defer m.evict.Unlock()
	m.passes.Add(1)
	m.dropEmpty(m.trimOldest(m.maxBytes - m.maxBytes/8))
	stuck := int64(0)
	if held := m.held.Load(); held > m.maxBytes {
		stuck = held
	}
	m.stuck.Store(stuck)
}

// trimOldest trims the oldest entries of all topics, lowest ID first, until
// the broker holds low bytes or no entry is left, and returns the streams
// it found or left empty and unwatched.
func (m *Memory) trimOldest(low int64) (empty []*stream) {
	m.mu.RLock()
	heads := make(streamHeads, 0, len(m.topics))
	for _, s := range m.topics {
		s.mu.Lock()
		if s.head < len(s.log) {
			heads = append(heads, streamHead{s, s.log[s.head].ID})
		} else if !s.watched {
			empty = append(empty, s)
		}
		s.mu.Unlock()
	}
	m.mu.RUnlock()
	heap.Init(&heads)
	// Publishes go on meanwhile: a head read above may have been trimmed
	// since (by MaxLen or age), so each stream's head is read again under
	// its lock before its oldest entry goes.
	for len(heads) > 0 && m.held.Load() > low {
		s := heads[0].s
		s.mu.Lock()
		switch {
		case s.head == len(s.log):
			heap.Pop(&heads)
		case s.log[s.head].ID != heads[0].id:
			heads[0].id = s.log[s.head].ID
			heap.Fix(&heads, 0)
		default:
			s.trimLocked(s.head + 1)
			if s.head < len(s.log) {
				heads[0].id = s.log[s.head].ID
				heap.Fix(&heads, 0)
			} else {
				heap.Pop(&heads)
				empty = append(empty, s)
			}
		}
		s.mu.Unlock()
	}
	return empty
}

// dropEmpty drops the streams of empty that are still empty, unwatched
// and in m.topics.
func (m *Memory) dropEmpty(empty []*stream) {
	if len(empty) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range empty {
		s.mu.Lock()
		if !s.removed && !s.watched && s.head == len(s.log) {
			m.dropLocked(s)
		}
		s.mu.Unlock()
	}
}

// HeldBytes is what all topics hold, counted as Entry.Size per entry and
// topicCost and its name per topic: the use of MaxBytes.
func (m *Memory) HeldBytes() int64 { return m.held.Load() }

// streamHead is a stream and the ID of its oldest entry, as trimBytes last
// read it.
type streamHead struct {
	s  *stream
	id ID
}

// streamHeads is a min-heap of streams by their oldest entry (container/heap).
type streamHeads []streamHead

func (h streamHeads) Len() int           { return len(h) }
func (h streamHeads) Less(i, j int) bool { return h[i].id.Less(h[j].id) }
func (h streamHeads) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *streamHeads) Push(x any)        { *h = append(*h, x.(streamHead)) }
func (h *streamHeads) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// trimAgeLocked drops the held entries with ID < cutoff.
func (s *stream) trimAgeLocked(cutoff ID) {
	if cutoff.IsZero() {
		return
	}
	held := s.log[s.head:]
	n := sort.Search(len(held), func(i int) bool { return !held[i].ID.Less(cutoff) })
	s.trimLocked(s.head + n)
}
