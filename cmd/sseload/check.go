package main

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/ssecluster/ssecluster/pubsub"
)

// The publisher's log of one topic is split into lazily allocated chunks
// behind a fixed directory, so that readers index it without locks while
// the publisher appends: 2^14 chunks of 2^12 IDs hold 67M events per topic.
const (
	logChunkBits = 12
	logChunk     = 1 << logChunkBits
	logDirSize   = 1 << 14
	// MaxPublished is how many events one topic's log can hold.
	MaxPublished = logChunk * logDirSize
)

// errLogFull is returned when a topic's log cannot hold another event.
var errLogFull = errors.New("sseload: publish log full")

// pubLog is the ordered list of the IDs that XADD (or POST /publish)
// returned for one topic, indexed by the seq carried in each payload. One
// goroutine appends; any number read.
type pubLog struct {
	// started counts the seqs handed out: XADD of seq n began before
	// started exceeded n. A client whose stream opened when started was s
	// must receive every seq >= s.
	started atomic.Int64
	// done counts the seqs whose outcome is recorded, in order.
	done atomic.Int64
	// failed counts publishes that returned an error; their slot holds the
	// zero ID, and whether the event exists is unknown.
	failed atomic.Int64
	dir    [logDirSize]atomic.Pointer[[logChunk]pubsub.ID]
}

// begin hands out the next seq.
func (l *pubLog) begin() (int64, error) {
	seq := l.started.Load()
	if seq >= MaxPublished {
		return 0, errLogFull
	}
	l.started.Store(seq + 1)
	return seq, nil
}

// record stores the outcome of seq, the oldest one not yet recorded. The
// zero ID marks a failed publish.
func (l *pubLog) record(seq int64, id pubsub.ID) {
	c := l.dir[seq>>logChunkBits].Load()
	if c == nil {
		c = new([logChunk]pubsub.ID)
		l.dir[seq>>logChunkBits].Store(c)
	}
	c[seq&(logChunk-1)] = id
	if id.IsZero() {
		l.failed.Add(1)
	}
	l.done.Store(seq + 1)
}

// at returns the ID recorded for seq; ok is false if it is not recorded yet.
func (l *pubLog) at(seq int64) (pubsub.ID, bool) {
	if seq < 0 || seq >= l.done.Load() {
		return pubsub.ID{}, false
	}
	return l.dir[seq>>logChunkBits].Load()[seq&(logChunk-1)], true
}

// missing counts the seqs in [lo, hi] that a client should have received:
// every one, except those whose publish failed.
func (l *pubLog) missing(lo, hi int64) int64 {
	if hi < lo {
		return 0
	}
	n := hi - lo + 1
	if l.failed.Load() == 0 {
		return n
	}
	for s := lo; s <= hi; s++ {
		if id, ok := l.at(s); ok && id.IsZero() {
			n--
		}
	}
	return n
}

// lastGood is the highest seq whose publish succeeded, or -1.
func (l *pubLog) lastGood() int64 {
	for s := l.done.Load() - 1; s >= 0; s-- {
		if id, _ := l.at(s); !id.IsZero() {
			return s
		}
	}
	return -1
}

// tally holds a client's counts between two flushes to the run's totals,
// so the hot path touches no shared memory but the latency histogram.
type tally struct {
	deliveries int64 // events of this run received
	lost       int64 // silently missing: a seq skipped with no sse-gap
	dup        int64 // a seq received again
	ooo        int64 // a seq received after a later one (it had been counted lost)
	mismatch   int64 // the event's ID is not the one the publisher was given
	unverified int64 // the publisher had no ID to compare with (yet)
	foreign    int64 // events that are not this run's payloads
	gaps       int64 // sse-gap events
	gapLost    int64 // seqs skipped after an sse-gap: reported losses
	whole      int64 // -verify: payloads received with the published size and CRC
	corrupt    int64 // -verify: payloads whose size or CRC differ
}

// plus adds o's counts to t.
func (t *tally) plus(o *tally) {
	t.deliveries += o.deliveries
	t.lost += o.lost
	t.dup += o.dup
	t.ooo += o.ooo
	t.mismatch += o.mismatch
	t.unverified += o.unverified
	t.foreign += o.foreign
	t.gaps += o.gaps
	t.gapLost += o.gapLost
	t.whole += o.whole
	t.corrupt += o.corrupt
}

// totals are the run-wide sums of the clients' tallies. A client adds its
// tally before each read from its socket, not per event, so one short mutex
// section is cheap next to the read.
type totals struct {
	mu  sync.Mutex
	sum tally
}

func (g *totals) add(t *tally) {
	g.mu.Lock()
	g.sum.plus(t)
	g.mu.Unlock()
}

func (g *totals) load() tally {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sum
}

// slot is what one client remembers about one of its topics: enough to
// check continuity against the publisher's log, a few words whatever the
// event count.
type slot struct {
	log *pubLog
	// last is the last seq accepted in order. It starts at the baseline
	// minus one when the client's first stream opens; the run's controller
	// reads it to see who has caught up.
	last atomic.Int64
	// seen is set by the first event: events published before the
	// baseline may still arrive first and are accepted as the start.
	seen bool
	// gapPending is set by an sse-gap for this topic: the next jump is a
	// reported loss.
	gapPending bool
	// gapLo..gapHi is the last silent gap, so that a late arrival in it
	// counts as out of order rather than duplicate.
	gapLo, gapHi int64
	// pendSeq (-1: none) is an event whose ID could not be compared yet:
	// it can arrive before the XADD reply reaches the publisher. It is
	// compared at the next event or at the end, never waited for.
	pendSeq int64
	pendID  pubsub.ID
}

// newSlot is the state of a topic of a client, before its stream opens.
func newSlot(log *pubLog) slot {
	return slot{log: log, gapLo: 0, gapHi: -1, pendSeq: -1}
}

// open sets the baseline at the first successful open of a stream: every
// seq from the log's started count on must be received, or every seq of the
// run when the client started from the beginning (-from-start).
func (s *slot) open(fromStart bool) {
	if fromStart {
		s.last.Store(-1)
		return
	}
	s.last.Store(s.log.started.Load() - 1)
}

// event checks one received seq with event ID id (nil when the stream gave
// none) and counts it in t.
func (s *slot) event(t *tally, seq int64, id []byte) {
	t.deliveries++
	last := s.last.Load()
	if !s.seen {
		s.seen = true
		if seq <= last {
			// Published just before the stream opened and delivered anyway.
			s.last.Store(seq)
			s.verify(t, seq, id)
			return
		}
	}
	switch {
	case seq <= last:
		if seq >= s.gapLo && seq <= s.gapHi {
			t.ooo++
			t.lost-- // it did arrive, late
		} else {
			t.dup++
		}
		return
	case seq > last+1:
		n := s.log.missing(last+1, seq-1)
		if s.gapPending {
			t.gapLost += n
		} else {
			t.lost += n
			s.gapLo, s.gapHi = last+1, seq-1
		}
	}
	s.gapPending = false
	s.last.Store(seq)
	s.verify(t, seq, id)
}

func (s *slot) verify(t *tally, seq int64, id []byte) {
	if s.pendSeq >= 0 {
		s.settle(t)
	}
	got, ok := parseIDBytes(id)
	if !ok {
		t.mismatch++
		return
	}
	want, ok := s.log.at(seq)
	switch {
	case !ok:
		s.pendSeq, s.pendID = seq, got
	case want.IsZero():
		t.unverified++ // its publish failed: nothing to compare with
	case got != want:
		t.mismatch++
	}
}

// settle compares the pending event's ID, or gives up on it.
func (s *slot) settle(t *tally) {
	want, ok := s.log.at(s.pendSeq)
	switch {
	case !ok || want.IsZero():
		t.unverified++
	case s.pendID != want:
		t.mismatch++
	}
	s.pendSeq = -1
}

// finish settles the pending comparison, once the client has stopped.
func (s *slot) finish(t *tally) {
	if s.pendSeq >= 0 {
		s.settle(t)
	}
}

// tail counts what the client still misses at the end of the run, when
// every seq up to and including final should have arrived.
func (s *slot) tail(t *tally, final int64) {
	s.finish(t)
	last := s.last.Load()
	if final <= last {
		return
	}
	n := s.log.missing(last+1, final)
	if s.gapPending {
		t.gapLost += n
	} else {
		t.lost += n
	}
}
