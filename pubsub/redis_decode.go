package pubsub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unsafe"
)

// Reasons passed to RedisConfig.OnBadEntry. They are few and fixed so they
// can be metric label values.
const (
	// BadEntryMalformed: the reply for an entry did not have the shape of a
	// stream entry (not [id, [field, value, ...]], non-string field or value).
	BadEntryMalformed = "malformed"
	// BadEntryOddFields: an entry with an odd number of field/value items.
	BadEntryOddFields = "odd field count"
	// BadEntryBadID: an entry whose ID does not parse.
	BadEntryBadID = "bad id"
	// BadEntryBadEvent: an event field holding CR or LF, which would let a
	// publisher forge SSE fields; the entry is skipped.
	BadEntryBadEvent = "bad event"
	// BadEntryWrongType: the topic's key holds something that is not a stream.
	BadEntryWrongType = "wrong type"
)

// Field names of a stream entry, as publishers write them.
const (
	fieldData        = "data"
	fieldEvent       = "event"
	fieldTraceParent = "traceparent"
)

// rawEntry is one stream entry as read from Redis, before validation.
type rawEntry struct {
	id     ID
	fields []any // field, value, field, value...; strings when well formed
}

// decodeEntries converts a reply holding an array of stream entries (XRANGE,
// XREVRANGE, one stream of XREAD) into Entries. Entries that cannot be
// delivered are skipped and reported through bad; last is the ID of the
// newest entry seen whether or not it was valid, so a reader's cursor moves
// past bad entries instead of reading them again forever. ok is false when
// the reply is not an array at all.
func decodeEntries(reply any, bad func(reason string)) (entries []Entry, last ID, n int, ok bool) {
	items, ok := reply.([]any)
	if !ok {
		if reply == nil {
			return nil, ID{}, 0, true
		}
		return nil, ID{}, 0, false
	}
	entries = make([]Entry, 0, len(items))
	for _, it := range items {
		raw, reason := splitEntry(it)
		// Any entry with a parsable ID advances the cursor (raw.id is zero
		// when it did not parse).
		if last.Less(raw.id) {
			last = raw.id
		}
		if reason == "" {
			var e Entry
			e, reason = buildEntry(raw)
			if reason == "" {
				entries = append(entries, e)
				continue
			}
		}
		bad(reason)
	}
	return entries, last, len(items), true
}

// splitEntry checks the [id, [f, v, ...]] shape of one entry.
func splitEntry(it any) (rawEntry, string) {
	pair, ok := it.([]any)
	if !ok || len(pair) != 2 {
		return rawEntry{}, BadEntryMalformed
	}
	ids, ok := pair[0].(string)
	if !ok {
		return rawEntry{}, BadEntryBadID
	}
	id, err := ParseID(ids)
	if err != nil {
		return rawEntry{}, BadEntryBadID
	}
	var fields []any
	switch f := pair[1].(type) {
	case []any:
		fields = f
	case nil:
		// A deleted entry in some replies (XCLAIM); never from XREAD/XRANGE.
	default:
		return rawEntry{id: id}, BadEntryMalformed
	}
	if len(fields)%2 != 0 {
		return rawEntry{id: id}, BadEntryOddFields
	}
	return rawEntry{id: id, fields: fields}, ""
}

// buildEntry maps the fields of a well-shaped entry: data -> Data (binary
// safe), event -> Event, traceparent -> TraceParent. When a field name
// repeats, the first occurrence wins. An entry without a data field is
// delivered with Data set to a JSON object of all its fields (see fieldsJSON).
func buildEntry(raw rawEntry) (Entry, string) {
	e := Entry{ID: raw.id}
	var data *string
	var haveEvent, haveTrace bool
	for i := 0; i < len(raw.fields); i += 2 {
		name, ok1 := raw.fields[i].(string)
		value, ok2 := raw.fields[i+1].(string)
		if !ok1 || !ok2 {
			return Entry{}, BadEntryMalformed
		}
		switch name {
		case fieldData:
			if data == nil {
				data = &value
			}
		case fieldEvent:
			if !haveEvent {
				haveEvent = true
				if strings.ContainsAny(value, "\r\n") {
					return Entry{}, BadEntryBadEvent
				}
				e.Event = value
			}
		case fieldTraceParent:
			if !haveTrace {
				haveTrace = true
				if validTraceParent(value) {
					e.TraceParent = value
				}
			}
		}
	}
	if data != nil {
		e.Data = replyBytes(*data)
	} else {
		e.Data = fieldsJSON(raw.fields)
	}
	return e, ""
}

// replyBytes returns the bytes of s, a bulk string of a go-redis reply,
// without copying them: go-redis reads each bulk string into a buffer of
// its own and makes the string from it in place, so nothing else holds or
// writes those bytes, and an Entry is immutable (its Data is never written
// by any holder). A payload thus costs its reply once, not twice: issue
// 11's 10 MiB event is held by the ring and the frame, not also by a copy.
func replyBytes(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// validTraceParent accepts a printable ASCII token of sane length. A bad
// value only loses the trace link, so it is dropped without a report.
func validTraceParent(s string) bool {
	if len(s) == 0 || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// fieldsJSON renders an entry's fields as a JSON object with string values
// and sorted keys, so the same entry always gives the same bytes. The first
// occurrence of a repeated field wins, as in buildEntry. In field names and
// values that are not valid UTF-8, each invalid byte becomes the escape
// \ufffd (encoding/json's rule), so the result is always valid JSON. HTML
// characters are not escaped: the payload goes to an event stream, not HTML.
// fields must hold strings (buildEntry has checked).
func fieldsJSON(fields []any) []byte {
	m := make(map[string]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		name, _ := fields[i].(string)
		if _, dup := m[name]; !dup {
			m[name], _ = fields[i+1].(string)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		// map[string]string always encodes; keep the promise of valid JSON.
		return []byte("{}")
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// decodeStreams splits an XREAD reply into key -> entries reply, accepting
// both RESP2 (array of [key, entries]) and RESP3 (map key -> entries).
func decodeStreams(reply any) (map[string]any, error) {
	switch r := reply.(type) {
	case nil:
		return nil, nil
	case map[any]any:
		out := make(map[string]any, len(r))
		for k, v := range r {
			key, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("pubsub: xread reply: stream name of type %T", k)
			}
			out[key] = v
		}
		return out, nil
	case []any:
		out := make(map[string]any, len(r))
		for _, it := range r {
			pair, ok := it.([]any)
			if !ok || len(pair) != 2 {
				return nil, fmt.Errorf("pubsub: xread reply: stream item of type %T", it)
			}
			key, ok := pair[0].(string)
			if !ok {
				return nil, fmt.Errorf("pubsub: xread reply: stream name of type %T", pair[0])
			}
			out[key] = pair[1]
		}
		return out, nil
	}
	return nil, fmt.Errorf("pubsub: xread reply of type %T", reply)
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of the key,
// or of its {hash tag} when it has a non-empty one, modulo 16384.
func keySlot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM (poly 0x1021, init 0), the checksum Redis Cluster uses.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
