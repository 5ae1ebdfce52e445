package replay

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Gap tells a client that entries between its position and the next event
// it gets were lost: trimmed from the window, deleted, or the stream itself
// was lost or recreated. It is the data of the sse-gap event.
type Gap struct {
	// Topic is the topic concerned.
	Topic string
	// Requested is the position the client had reached: the one it resumed
	// from, or the last entry it was sent.
	Requested pubsub.ID
	// Oldest is the oldest entry the source held when the gap was found;
	// 0-0 if none.
	Oldest pubsub.ID
	// Reset means the stream's history restarted (it was lost, recreated,
	// or its last ID is below Requested): what follows starts from the
	// stream's beginning and may have IDs lower than Requested.
	Reset bool
}

// AppendJSON appends g as {"topic":"t","requested":"1-2","oldest":"3-0"},
// with ,"reset":true before the closing brace when g.Reset is set.
func (g Gap) AppendJSON(b []byte) []byte {
	b = append(b, `{"topic":`...)
	b = appendJSONString(b, g.Topic)
	b = append(b, `,"requested":"`...)
	b = g.Requested.AppendTo(b)
	b = append(b, `","oldest":"`...)
	b = g.Oldest.AppendTo(b)
	if g.Reset {
		return append(b, `","reset":true}`...)
	}
	return append(b, `"}`...)
}

// MarshalJSON implements json.Marshaler with the AppendJSON form.
func (g Gap) MarshalJSON() ([]byte, error) { return g.AppendJSON(nil), nil }

// appendJSONString appends s as a JSON string. Valid topics need no
// escaping; anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// From names what served a Replay, for metrics.
type From string

// Sources a Replay is served from.
const (
	// FromRing means the hot ring covered the position: no source read.
	FromRing From = "ring"
	// FromRedis means the source (Redis, or the embedded broker) was read,
	// possibly before handing over to the ring.
	FromRedis From = "redis"
)

// Result describes a finished (or stopped) Replay.
type Result struct {
	// From is FromRedis if the source was read at all, else FromRing.
	From From
	// Gap is the first gap reported to the gap callback, nil if none.
	Gap *Gap
	// Gaps is the number of gaps reported.
	Gaps int
	// Count is the number of entries emitted.
	Count int
	// Last is where the client stands after the replay: the ID of the last
	// entry emitted, else the position replay started from (after, or 0-0
	// when a gap with Reset restarted it from the beginning). Live entries
	// at or below Last are duplicates.
	Last pubsub.ID
}

// Replay emits, in ID order, every entry of topic with ID > after that the
// window holds, calling gap (if non-nil) before the next entry whenever
// entries between the client's position and that entry are known to be
// lost (see the package doc for the rule, applied to every page).
//
// It reads the ring when the ring covers the position (floor <= position <=
// newest seen), after checking the ring against the stream's state (one
// Info shared by concurrent Replays, reused for infoReuse; if the source
// fails it or takes longer than checkWait, the ring serves unchecked),
// else the source in pages of PageSize: one page in flight per call, so
// memory does not depend on how far behind the client is. It switches to the ring as
// soon as the ring covers the position reached, and back to the source if
// the ring is evicted under it. Concurrent Replays needing the same source
// page share one source call.
//
// A gap with Reset restarts the replay from 0-0: everything the source
// holds follows it.
//
// An error from emit or gap stops the replay and is returned as is; source
// errors are wrapped. The Result is valid either way.
func (w *Window) Replay(ctx context.Context, topic string, after pubsub.ID,
	gap func(Gap) error, emit func(pubsub.Entry) error) (Result, error) {
	res := Result{Last: after}
	cursor := after
	checked := false // the ring was checked against the stream's state
	// seenMean is the largest mean entry size of the source pages read, so
	// that a topic whose ring knows no entry sizes still gets pages
	// bounded by PageBytes after the first.
	seenMean := 0
	// gappedAt is the cursor a gap was last announced at: one gap per
	// discontinuity, not one per rule that sees it.
	gappedAt, gapped := pubsub.ID{}, false
	// restarted: a reset gap sent the cursor back to 0-0 (see startGap).
	restarted := false
	announce := func(g Gap) error {
		if gapped && gappedAt == g.Requested {
			return nil
		}
		gappedAt, gapped = g.Requested, true
		res.Gaps++
		if res.Gap == nil {
			res.Gap = &g
		}
		if gap == nil {
			return nil
		}
		return gap(g)
	}
	var bufp *[]pubsub.Entry
	used := 0 // how much of *bufp's array the ring pages wrote
	defer func() {
		if bufp != nil {
			// Drop Data references before pooling; only what was written
			// (clearing the whole page for every resume was a visible
			// share of a reconnect storm's CPU).
			clear((*bufp)[:used])
			*bufp = (*bufp)[:0]
			w.pages.Put(bufp)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if bufp == nil {
			bufp = w.pages.Get().(*[]pubsub.Entry)
		}
		page, covered, unchecked, mean := w.ringPage(topic, cursor, (*bufp)[:0], !checked)
		used = max(used, min(len(page), cap(*bufp)))
		if unchecked {
			// A failed check leaves the ring as it is: its entries are
			// still every entry after its floor that the reader saw, and a
			// Redis that is down or stalled must not hold resumes the
			// ring can serve.
			if err := w.checkRing(ctx, topic); err != nil && ctx.Err() != nil {
				return res, err
			}
			checked = true
			continue // the check may have moved the ring's floor
		}
		if covered {
			checked = true
			if res.From == "" {
				res.From = FromRing
			}
			if len(page) == 0 {
				return res, nil // caught up
			}
			for i := range page {
				if err := emit(page[i]); err != nil {
					return res, err
				}
				res.Count++
				res.Last, cursor = page[i].ID, page[i].ID
			}
			continue
		}

		res.From = FromRedis
		from := cursor
		count := w.pageCount(max(mean, seenMean))
		p, err := w.sourcePage(ctx, topic, from, count)
		if err != nil {
			return res, err
		}
		seenMean = max(seenMean, pageMean(p.Entries))
		info := &p.Info
		if g, restart := startGap(topic, cursor, restarted, info, p.AfterMissing); g != nil {
			if err := announce(*g); err != nil {
				return res, err
			}
			if restart {
				cursor, res.Last, restarted = pubsub.ID{}, pubsub.ID{}, true
				continue // the ring may cover 0-0
			}
		}
		// A deletion after the cursor is a gap; at 0-0 after a restart,
		// the reset was.
		deletedAfter := func(c pubsub.ID) bool {
			return !(c.IsZero() && restarted) && c.Less(info.MaxDeleted)
		}
		// p is shared with other Replays: read only.
		for i := range p.Entries {
			e := &p.Entries[i]
			if !cursor.Less(e.ID) {
				continue // never emit out of order, whatever the source does
			}
			if deletedAfter(cursor) && info.MaxDeleted.Less(e.ID) {
				// An entry after the cursor and before e was deleted.
				if err := announce(Gap{Topic: topic, Requested: cursor, Oldest: info.First}); err != nil {
					return res, err
				}
			}
			if err := emit(*e); err != nil {
				return res, err
			}
			res.Count++
			res.Last, cursor = e.ID, e.ID
		}
		if cursor.Less(p.Last) {
			cursor = p.Last // entries skipped by the source were read too
		}
		if p.Read < count && !p.Cut {
			// The source had nothing more when read; later entries come
			// live. Something after the cursor was deleted: a gap, even
			// with no entry after it to announce it before.
			if deletedAfter(cursor) {
				if err := announce(Gap{Topic: topic, Requested: cursor, Oldest: info.First}); err != nil {
					return res, err
				}
			}
			return res, nil
		}
		if cursor == from {
			return res, fmt.Errorf("replay: read %q after %s: source returned a full page of old entries", topic, from)
		}
	}
}

// startGap applies the gap rule to a page read after cursor, before its
// first entry: the stream is gone or moved backwards (a reset: restart from
// 0-0), or cursor is below the first entry held and not the newest removed
// one, so entries after it may have been removed, or it was never an entry
// of this stream: missing (the source does not hold the entry at cursor)
// within its span and above MaxDeleted, a fork. A fork keeps the cursor:
// the entries after it are new to the client and come in order, those
// before it are the gap.
//
// Position 0-0 is before the stream's first entry: nothing is ahead of it
// (no reset), and an entry deleted since (MaxDeleted) is a gap, as for any
// position below the first entry; a node hands it out for a topic that was
// empty when the stream opened. After a reset restarted the replay there
// (restarted), 0-0 is instead the whole of the new history, and its losses
// before the restart are the reset's gap.
func startGap(topic string, cursor pubsub.ID, restarted bool, info *pubsub.StreamInfo, missing bool) (g *Gap, restart bool) {
	if cursor.IsZero() && (restarted || !info.Exists) {
		return nil, false
	}
	forked := missing && info.Length > 0 && !cursor.Less(info.First) && info.MaxDeleted.Less(cursor)
	switch {
	case !info.Exists || info.Last.Less(cursor):
		return &Gap{Topic: topic, Requested: cursor, Oldest: info.First, Reset: true}, true
	case forked, info.Length > 0 && cursor.Less(info.First) && cursor != info.MaxDeleted:
		return &Gap{Topic: topic, Requested: cursor, Oldest: info.First}, false
	}
	return nil, false
}

// pageCount is how many entries a source page asks for, given the mean
// entry size of the topic (0 if unknown): PageSize, or as many as
// PageBytes holds, at least one.
func (w *Window) pageCount(mean int) int {
	if mean <= 0 {
		return w.pageSize
	}
	return max(1, min(w.pageSize, w.pageBytes/mean))
}

// pageMean is the mean Entry.Size of entries, 0 for none.
func pageMean(entries []pubsub.Entry) int {
	if len(entries) == 0 {
		return 0
	}
	total := 0
	for i := range entries {
		total += entries[i].Size()
	}
	return total / len(entries)
}

// sourcePage reads the page of count entries of topic after from, through
// the cache of full pages and the flight that shares reads among
// concurrent Replays.
func (w *Window) sourcePage(ctx context.Context, topic string, from pubsub.ID, count int) (*pubsub.Page, error) {
	key := rangeKey{topic, from, count}
	if p, ok := w.cachedPage(ctx, key); ok {
		return p, nil
	}
	p, err := w.ranges.do(ctx, key, func(ctx context.Context) (*pubsub.Page, error) {
		resets, at, mark := w.resets.Load(), w.now(), w.markLive(topic)
		p, err := w.src.Page(ctx, topic, from, count, w.pageBytes)
		if err != nil {
			return nil, err
		}
		// A page read before a Reset of its topic ends may describe the
		// old stream: never keep it.
		if w.resets.Load() == resets {
			w.sawState(topic, &p.Info, mark)
			w.recent.noteState(topic, p.Info, at)
			if p.Read == count || p.Cut {
				w.recent.put(key, &p, w.now())
			}
		}
		return &p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("replay: read %q after %s: %w", topic, from, err)
	}
	return p, nil
}

// cachedPage returns the cached page of key if the stream, in a state read
// within infoReuse (one Info shared by concurrent callers if none is
// known), still holds its entries; the page returned carries that state.
func (w *Window) cachedPage(ctx context.Context, key rangeKey) (*pubsub.Page, bool) {
	p, ok := w.recent.get(key, w.now())
	if !ok {
		return nil, false
	}
	info, ok := w.recent.state(key.topic, w.now())
	if !ok {
		var err error
		info, err = w.states.do(ctx, key.topic, func(ctx context.Context) (pubsub.StreamInfo, error) {
			resets, at := w.resets.Load(), w.now()
			info, err := w.src.Info(ctx, key.topic)
			if err == nil && w.resets.Load() == resets {
				w.recent.noteState(key.topic, info, at)
			}
			return info, err
		})
		if err != nil {
			return nil, false // the page read that follows reports it
		}
	}
	if !holds(&info, key.after, p) {
		return nil, false
	}
	q := *p
	q.Info = info
	return &q, true
}

// holds reports whether a stream in state s still holds the entries of p,
// a full page read after c, and no other before them: none trimmed (First
// at or below the first entry, and equal to it when c is below First), the
// stream not moved below the last (Last), and no entry deleted since among
// them (a new MaxDeleted in the page's range). An XDEL below a newer one
// escapes it, as it escapes Redis; so does a stream recreated with entries
// between c and the page's first above First.
func holds(s *pubsub.StreamInfo, c pubsub.ID, p *pubsub.Page) bool {
	if !s.Exists || s.Length == 0 || len(p.Entries) == 0 {
		return false
	}
	first, last := p.Entries[0].ID, p.Entries[len(p.Entries)-1].ID
	inPage := func(m pubsub.ID) bool { return c.Less(m) && !last.Less(m) }
	switch {
	case first.Less(s.First), s.Last.Less(last), c.Less(s.First) && first != s.First:
		return false
	case s.MaxDeleted != p.Info.MaxDeleted && (inPage(s.MaxDeleted) || inPage(p.Info.MaxDeleted)):
		return false
	}
	return true
}

// ringPage copies to buf ring entries of topic newer than cursor, up to
// PageSize entries or the first to reach PageBytes, if the ring covers
// cursor; covered is false when the topic is not active or the ring does
// not cover cursor. With check, a ring that covers cursor but was not
// checked against the stream within infoReuse is reported unchecked, and
// nothing is copied. mean is the ring's mean entry size (0 if unknown or
// the topic is not active), to size source pages.
func (w *Window) ringPage(topic string, cursor pubsub.ID, buf []pubsub.Entry, check bool) (page []pubsub.Entry, covered, unchecked bool, mean int) {
	w.withRing(topic, func(st *topicState) {
		if st.phase != active {
			return
		}
		w.evictAgedLocked(st)
		r := &st.ring
		mean = r.meanSize
		// Above last the ring knows nothing: the position may come from
		// another node ahead of us, or be one this stream never had. The
		// source decides.
		if !r.covers(cursor, st.last) {
			return
		}
		if check {
			// Past infoReuse one Replay renews the check while the others
			// go on serving, up to staleServe: in a reconnect storm the
			// resumes then never all wait for a round trip, which a
			// loaded node answers slowly (they did every infoReuse).
			age := w.now().Sub(st.checkedAt)
			switch {
			case st.checkedAt.IsZero() || age >= staleServe:
				unchecked = true
				return
			case age >= infoReuse && !st.refreshing:
				st.refreshing = true
				unchecked = true
				return
			}
		}
		w.touch(st)
		covered = true
		bytes := 0
		for i := r.after(cursor); i < r.n && len(buf) < w.pageSize && bytes < w.pageBytes; i++ {
			e := r.at(i)
			buf = append(buf, *e)
			bytes += e.Size()
		}
		page = buf
	})
	return page, covered, unchecked, mean
}
