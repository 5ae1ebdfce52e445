// Package pubsub is where events come from: the stream entry model shared by
// the whole node, the in-memory broker used in embedded mode and the Redis
// Streams broker used in a cluster.
//
// A broker keeps one append-only stream per topic, bounded by a maximum
// length and age, and delivers the entries of the topics a node watches to
// a single Handler from a small fixed set of reader goroutines.
package pubsub

import (
	"errors"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrClosed is returned by a broker after Close.
	ErrClosed = errors.New("pubsub: broker closed")
	// ErrBadTopic is returned for a topic name outside the allowed alphabet or length.
	ErrBadTopic = errors.New("pubsub: bad topic")
	// ErrBadEvent is returned for an event name ValidateEvent refuses.
	ErrBadEvent = errors.New("pubsub: bad event type")
	// ErrTooLarge is returned by the embedded broker's Publish for an entry
	// larger than all it may hold (MemoryConfig.MaxBytes).
	ErrTooLarge = errors.New("pubsub: entry larger than the broker's budget")
	// ErrBadID is returned when a stream entry ID cannot be parsed.
	ErrBadID = errors.New("pubsub: bad entry id")
	// ErrWrongType is returned when the key of a topic holds something that is not a stream.
	ErrWrongType = errors.New("pubsub: key is not a stream")
)

// Entry is one event of a topic's stream. Entries are immutable once built:
// Data may be shared by every goroutine that receives the entry.
type Entry struct {
	// ID is the stream entry ID, unique and increasing within the topic.
	ID ID
	// Event is the SSE event type; empty for the default "message".
	Event string
	// Data is the payload, sent as one data: line per line.
	Data []byte
	// TraceParent is the W3C traceparent of the publisher, if the entry had one.
	TraceParent string
}

// Time is the wall-clock time the entry was added, from its ID.
func (e Entry) Time() time.Time { return time.UnixMilli(int64(e.ID.Ms)) }

// EntryOverhead is what an Entry costs in memory besides its strings and
// data: the struct itself (ID, two string headers, a slice header).
const EntryOverhead = 72

// Size is the bytes e holds in memory, the measure of every byte budget
// of pages and rings: its data, event type and traceparent, plus
// EntryOverhead.
func (e *Entry) Size() int {
	return len(e.Data) + len(e.Event) + len(e.TraceParent) + EntryOverhead
}

// StreamInfo describes a topic's stream as the replay window needs it.
type StreamInfo struct {
	// Exists is false when the stream has no key at all (never written, or lost).
	Exists bool
	// Length is the number of entries held.
	Length int64
	// First is the ID of the oldest entry held; zero when empty.
	First ID
	// Last is the ID of the newest entry ever added, even if since trimmed.
	Last ID
	// MaxDeleted is at or above every ID trimmed or deleted from the
	// stream; zero if none was. It is either such an ID or, when the head
	// was trimmed (Redis does not record trimmed IDs), the greatest ID
	// before First (Last for an empty stream): no removed entry lies
	// between MaxDeleted and First.
	MaxDeleted ID
}

// Page is one read of a topic's stream: entries after a position and the
// stream's state at the same instant, so that what is missing between the
// position and the first entry can be told exactly.
type Page struct {
	// Entries are the deliverable entries read, ascending.
	Entries []Entry
	// Info is the stream's state when the entries were read.
	Info StreamInfo
	// Read is the number of entries read, including entries that could not
	// be decoded and were skipped; Read below the count asked for means the
	// page reached the end of the stream.
	Read int
	// Last is the ID of the last entry read, skipped or not; zero when Read
	// is 0. The next page starts after it.
	Last ID
	// Cut means the page stopped at its byte bound and left out entries
	// that follow: more entries follow, whatever Read says.
	Cut bool
	// AfterMissing means the source looked for the entry at the position
	// read after and the stream does not hold it. With the position inside
	// the stream's span and above MaxDeleted, it was never an entry of this
	// history (a failover forked the stream). Sources that do not look
	// leave it false.
	AfterMissing bool
}

// Handler receives the entries a broker reads for a watched topic. A broker
// calls it from its reader goroutines, with each topic's entries in ID order
// and never concurrently for the same topic. It must not block.
//
// A call with no entries (h(topic, nil)) is a reset: the topic's stream
// moved under the reader (it was deleted, recreated, or its last ID went
// backwards, as after a failover that lost writes), or entries after the
// last one delivered were removed before the reader could deliver them
// (trimming overtook it). Anything the receiver cached for the topic is
// stale, and its clients must be told of a gap. Entries delivered after a
// reset may have lower IDs than those before it.
type Handler func(topic string, entries []Entry)

// Tail is what Watch returns: where live delivery starts for a topic and the
// newest entries at or before that point, for the replay ring.
type Tail struct {
	// Last is the ID of the newest entry at the time of the call (zero for an
	// empty or missing stream). The Handler receives every entry after it.
	Last ID
	// Entries are up to the requested number of newest entries, oldest first,
	// all at or before Last.
	Entries []Entry
}
