package replay

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ssecluster/ssecluster/pubsub"
)

// ErrBadLastEventID is wrapped by every error ParseLastEventID returns; the
// wrapping message says which part is wrong and why, fit for a 400 body.
var ErrBadLastEventID = errors.New("replay: bad Last-Event-ID")

// MaxLastEventIDLen is the longest Last-Event-ID accepted, in bytes; longer
// values are refused before any parsing. 4096 is what common proxies pass in
// one header line (nginx's large_client_header_buffers is 8k) and holds
// MaxTopics positions even at the longest possible entry IDs.
const MaxLastEventIDLen = 4096

// maxIDLen is the longest <ms>-<seq> form: two 20-digit uint64 and a dash.
const maxIDLen = 41

// MaxTopics is the largest number of topics whose joined positions always fit
// in MaxLastEventIDLen, whatever their IDs. A stream over more topics may send
// an id: line that ParseLastEventID refuses on reconnect (at today's 13-digit
// millisecond IDs about 250 topics fit), so callers should cap topics per
// stream at MaxTopics.
const MaxTopics = MaxLastEventIDLen / (maxIDLen + 1)

// ParseLastEventID parses a resume position for n topics, in the order of
// the topic parameters.
//
// raw == "" means no position (live from now): ok is false and err nil. For
// one topic raw is an entry ID, "<ms>-<seq>" or "<ms>". Both "0" and "0-0"
// parse to 0-0, but mean different things (see WholeWindow): "0" asks for
// whatever the window holds, 0-0 is the position before the stream's first
// entry. For several, raw is exactly n such IDs joined by ','; a lone "0"
// (or "0-0") means that for every topic. Anything else
// (wrong count, an empty part, spaces, signs, longer than
// MaxLastEventIDLen) is an error wrapping ErrBadLastEventID whose message
// names the offending part.
func ParseLastEventID(raw string, n int) (ids []pubsub.ID, ok bool, err error) {
	if raw == "" {
		return nil, false, nil
	}
	if n < 1 {
		return nil, false, fmt.Errorf("%w: no topics to resume", ErrBadLastEventID)
	}
	if len(raw) > MaxLastEventIDLen {
		return nil, false, fmt.Errorf("%w: %d bytes, at most %d", ErrBadLastEventID, len(raw), MaxLastEventIDLen)
	}
	ids = make([]pubsub.ID, n)
	if n > 1 && (raw == "0" || raw == "0-0") {
		return ids, true, nil // ids are all 0-0 already
	}
	if parts := strings.Count(raw, ",") + 1; parts != n {
		if n == 1 {
			return nil, false, fmt.Errorf("%w: %s has %d comma-separated parts, want one ID for one topic",
				ErrBadLastEventID, quotePart(raw), parts)
		}
		return nil, false, fmt.Errorf("%w: %d comma-separated parts, want %d (one per topic, or a lone 0)",
			ErrBadLastEventID, parts, n)
	}
	rest := raw
	for i := range ids {
		part, tail, _ := strings.Cut(rest, ",")
		rest = tail
		if part == "" {
			return nil, false, fmt.Errorf("%w: %s is empty", ErrBadLastEventID, partName(i, n))
		}
		id, perr := pubsub.ParseID(part)
		if perr != nil {
			return nil, false, fmt.Errorf("%w: %s %s is not an entry ID (<ms>-<seq>, <ms> or 0)",
				ErrBadLastEventID, partName(i, n), quotePart(part))
		}
		ids[i] = id
	}
	return ids, true, nil
}

// AppendLastEventID appends ids joined by ',' to b: the id: line of a
// stream over len(ids) topics. It allocates only if b has to grow.
func AppendLastEventID(b []byte, ids []pubsub.ID) []byte {
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = id.AppendTo(b)
	}
	return b
}

// partName says which part of a multi-topic position is meant, 1-based as a
// user counts.
func partName(i, n int) string {
	if n == 1 {
		return "the ID"
	}
	return "part " + strconv.Itoa(i+1) + " of " + strconv.Itoa(n)
}

// quotePart quotes a piece of client input for an error message, cut short
// so that a 4 KiB header does not become a 4 KiB error body.
func quotePart(s string) string {
	const maxShown = 48
	if len(s) > maxShown {
		return strconv.Quote(s[:maxShown]) + "..."
	}
	return strconv.Quote(s)
}

// WholeWindow reports which topics of a Last-Event-ID that ParseLastEventID
// accepted for n topics ask for the whole window: a "0" part, or a lone
// "0". Such a topic's replay starts at its oldest entry held, and what the
// stream lost before that is no gap; a position 0-0 (what a node hands out
// for a topic that was empty) is before the stream's first entry, and an
// entry removed since is a gap. nil when no topic asks.
func WholeWindow(raw string, n int) []bool {
	if raw != "0" && !strings.HasPrefix(raw, "0,") && !strings.Contains(raw, ",0,") && !strings.HasSuffix(raw, ",0") {
		return nil
	}
	whole := make([]bool, n)
	if raw == "0" {
		for i := range whole {
			whole[i] = true
		}
		return whole
	}
	for i, part := range strings.SplitN(raw, ",", n) {
		whole[i] = part == "0"
	}
	return whole
}
