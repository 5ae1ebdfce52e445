package replay

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Gap tells a client that entries after its position were lost: trimmed
// from the window, or the stream itself was lost. It is the data of the
// sse-gap event.
type Gap struct {
	// Topic is the topic concerned.
	Topic string
	// Requested is the position the client resumed from (or had reached
	// from the ring when the ring was evicted under it).
	Requested pubsub.ID
	// Oldest is the oldest entry the source still holds; 0-0 if none.
	Oldest pubsub.ID
}

// AppendJSON appends g as {"topic":"t","requested":"1-2","oldest":"3-0"}.
func (g Gap) AppendJSON(b []byte) []byte {
	b = append(b, `{"topic":`...)
	b = appendJSONString(b, g.Topic)
	b = append(b, `,"requested":"`...)
	b = g.Requested.AppendTo(b)
	b = append(b, `","oldest":"`...)
	b = g.Oldest.AppendTo(b)
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
	// Gap is the gap reported to the gap callback, nil if none.
	Gap *Gap
	// Count is the number of entries emitted.
	Count int
	// Last is where the client stands after the replay: the ID of the last
	// entry emitted, else the position replay started from (after, or 0-0
	// when a gap on a stream that never had `after` restarted it from the
	// beginning). Live entries at or below Last are duplicates.
	Last pubsub.ID
}

// Replay emits, in ID order, every entry of topic with ID > after that the
// window holds, calling gap first (if non-nil) when entries after `after`
// are known to be lost.
//
// It reads the ring when the ring covers the position (floor <= position <=
// newest seen), else the source in pages of PageSize: one page in flight
// per call, so memory does not depend on how far behind the client is. It
// switches to the ring as soon as the ring covers the position reached, and
// back to the source if the ring is evicted under it. Concurrent Replays
// needing the same source page or stream info share one source call.
//
// A replay served from the ring has no gap. When the source is read, Info
// is read once: there is a gap when after is not 0-0 and the stream does not
// exist, MaxDeleted > after, or after > Last (a position the stream never
// had, e.g. the stream was lost and recreated); in that last case replay
// restarts from 0-0, that is everything the source holds.
//
// An error from emit or gap stops the replay and is returned as is; source
// errors are wrapped. The Result is valid either way.
func (w *Window) Replay(ctx context.Context, topic string, after pubsub.ID,
	gap func(Gap) error, emit func(pubsub.Entry) error) (Result, error) {
	res := Result{Last: after}
	cursor := after
	infoRead := false
	var bufp *[]pubsub.Entry
	defer func() {
		if bufp != nil {
			clear((*bufp)[:cap(*bufp)]) // drop Data references before pooling
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
		page, covered := w.ringPage(topic, cursor, (*bufp)[:0])
		if covered {
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
		if !infoRead {
			infoRead = true
			g, restart, err := w.checkGap(ctx, topic, cursor)
			if err != nil {
				return res, err
			}
			if g != nil {
				res.Gap = g
				if gap != nil {
					if err := gap(*g); err != nil {
						return res, err
					}
				}
			}
			if restart {
				cursor, res.Last = pubsub.ID{}, pubsub.ID{}
				continue // the ring may cover 0-0
			}
		}
		from := cursor
		key := rangeKey{topic, from, w.pageSize}
		entries, ok := w.recent.get(key, w.now())
		if !ok {
			var err error
			entries, err = w.ranges.do(ctx, key, func(ctx context.Context) ([]pubsub.Entry, error) {
				page, err := w.src.Range(ctx, topic, from, w.pageSize)
				if err == nil && len(page) == w.pageSize {
					w.recent.put(key, page, w.now())
				}
				return page, err
			})
			if err != nil {
				return res, fmt.Errorf("replay: read %q after %s: %w", topic, from, err)
			}
		}
		// entries is shared with other Replays: read only.
		for i := range entries {
			if !cursor.Less(entries[i].ID) {
				continue // never emit out of order, whatever the source does
			}
			if err := emit(entries[i]); err != nil {
				return res, err
			}
			res.Count++
			res.Last, cursor = entries[i].ID, entries[i].ID
		}
		if len(entries) < w.pageSize {
			// The source had nothing more when read; later entries come live.
			return res, nil
		}
		if cursor == from {
			return res, fmt.Errorf("replay: read %q after %s: source returned a full page of old entries", topic, from)
		}
	}
}

// ringPage copies to buf up to PageSize ring entries of topic newer than
// cursor, if the ring covers cursor; covered is false when the topic is not
// active or the ring does not cover cursor.
func (w *Window) ringPage(topic string, cursor pubsub.ID, buf []pubsub.Entry) (page []pubsub.Entry, covered bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.topics[topic]
	if st == nil || st.phase != active {
		return nil, false
	}
	w.evictAgedLocked(st)
	r := &st.ring
	// Above last the ring knows nothing: the position may come from another
	// node ahead of us, or be one this stream never had. The source decides.
	if cursor.Less(r.floor) || st.last.Less(cursor) {
		return nil, false
	}
	for i := r.after(cursor); i < r.n && len(buf) < w.pageSize; i++ {
		buf = append(buf, *r.at(i))
	}
	return buf, true
}

// checkGap reads the stream info (shared among concurrent callers) and
// applies the gap rule to position pos. restart asks to replay from 0-0.
func (w *Window) checkGap(ctx context.Context, topic string, pos pubsub.ID) (g *Gap, restart bool, err error) {
	if pos.IsZero() {
		return nil, false, nil // "everything in the window": never a gap
	}
	info, err := w.infos.do(ctx, topic, func(ctx context.Context) (pubsub.StreamInfo, error) {
		return w.src.Info(ctx, topic)
	})
	if err != nil {
		return nil, false, fmt.Errorf("replay: stream info of %q: %w", topic, err)
	}
	restart = info.Last.Less(pos)
	if !info.Exists || pos.Less(info.MaxDeleted) || restart {
		var oldest pubsub.ID
		if info.Exists {
			oldest = info.First
		}
		g = &Gap{Topic: topic, Requested: pos, Oldest: oldest}
	}
	return g, restart, nil
}
