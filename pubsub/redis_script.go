package pubsub

import (
	"context"
	_ "embed"
	"fmt"

	"github.com/redis/go-redis/v9"
)

//go:embed stream_read.lua
var streamReadLua string

// streamRead is the read-only script behind every read of a stream's
// entries or state (Page, Range, Info, Watch's tail): one round trip, one
// instant, no MULTI/EXEC (which Redis refuses under maxmemory and which a
// least-privilege ACL user may not have). See stream_read.lua.
var streamRead = redis.NewScript(streamReadLua)

// Modes of streamRead (its ARGV[1]).
const (
	readRange = "range" // entries after a position, ascending
	readRev   = "rev"   // the newest entries, newest first
	readInfo  = "info"  // the state alone
	readHeld  = "held"  // the state and whether the stream holds an entry
)

// rawPage is a streamRead reply before its entries are decoded.
type rawPage struct {
	info    StreamInfo
	added   int64 // entries-added: XADDs to the stream since it was made
	entries any   // the XRANGE/XREVRANGE reply
	cut     bool  // the byte bound stopped the range early
}

// readStream runs streamRead on key. A key holding another type gives an
// error wrapping ErrWrongType, from the same round trip.
func (b *Redis) readStream(ctx context.Context, key, mode string, start ID, count int) (rawPage, error) {
	return b.readStreamBytes(ctx, key, mode, start, count, 0)
}

// readStreamBytes is readStream with a byte bound on a range (0: none).
func (b *Redis) readStreamBytes(ctx context.Context, key, mode string, start ID, count, maxBytes int) (rawPage, error) {
	reply, err := streamRead.RunRO(ctx, b.client, []string{key}, mode, start.String(), count, maxBytes).Result()
	if err != nil {
		return rawPage{}, redisErr(err)
	}
	return parseStreamRead(reply)
}

// afterMissing takes the entry at after off a range read from after
// (inclusive) for count+1 entries, or the extra last entry when after is
// not held, and reports whether it was not held (never for 0-0).
func afterMissing(raw *rawPage, after ID, count int) bool {
	es, ok := raw.entries.([]any)
	if !ok {
		return false
	}
	if len(es) > 0 {
		if e, _ := es[0].([]any); len(e) > 0 && e[0] == after.String() {
			raw.entries = es[1:]
			return false
		}
	}
	if len(es) > count {
		raw.entries = es[:count]
	}
	return !after.IsZero()
}

// parseStreamRead decodes a streamRead reply; see stream_read.lua.
func parseStreamRead(reply any) (rawPage, error) {
	items, ok := reply.([]any)
	if !ok || len(items) == 0 {
		return rawPage{}, fmt.Errorf("stream read: reply of type %T", reply)
	}
	switch typ, _ := items[0].(string); typ {
	case "stream":
	case "none":
		return rawPage{}, nil
	default:
		return rawPage{}, fmt.Errorf("%w: type %s", ErrWrongType, typ)
	}
	if len(items) != 8 {
		return rawPage{}, fmt.Errorf("stream read: %d reply items, want 8", len(items))
	}
	length, ok1 := items[1].(int64)
	added, ok2 := items[4].(int64)
	if !ok1 || !ok2 {
		return rawPage{}, fmt.Errorf("stream read: length %T, entries-added %T: want integers", items[1], items[4])
	}
	info := StreamInfo{Exists: true, Length: length}
	for _, f := range []struct {
		dst  *ID
		item any
	}{{&info.Last, items[2]}, {&info.MaxDeleted, items[3]}, {&info.First, items[5]}} {
		s, _ := f.item.(string)
		if s == "" {
			continue // empty stream: no first entry
		}
		id, err := ParseID(s)
		if err != nil {
			return rawPage{}, fmt.Errorf("stream read: %w", err)
		}
		*f.dst = id
	}
	if added > length {
		// Entries were removed. Redis (7.0 at least) moves
		// max-deleted-entry-id only on XDEL, not when XTRIM or XADD MAXLEN
		// trims the head. Everything trimmed sorts before First, and with
		// nothing held the newest entry (Last) is gone too.
		bound := info.Last
		if length > 0 {
			bound = prevID(info.First)
		}
		if info.MaxDeleted.Less(bound) {
			info.MaxDeleted = bound
		}
	}
	cut, _ := items[7].(int64)
	return rawPage{info: info, added: added, entries: items[6], cut: cut == 1}, nil
}
