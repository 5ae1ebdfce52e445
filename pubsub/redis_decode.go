package pubsub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unsafe"
)

// Reasons passed to RedisConfig.OnBadEntry. They are few and fixed so they
// can be metric label values. An entry of the first three is skipped (no
// publisher can write one: they guard against a reply of another shape);
// one with a bad event or a repeated field is delivered in another form.
const (
	// BadEntryMalformed: the reply for an entry did not have the shape of a
	// stream entry (not [id, [field, value, ...]], non-string field or value).
	BadEntryMalformed = "malformed"
	// BadEntryOddFields: an entry with an odd number of field/value items.
	BadEntryOddFields = "odd field count"
	// BadEntryBadID: an entry whose ID does not parse.
	BadEntryBadID = "bad id"
	// BadEntryBadEvent: an event field ValidateEvent refuses (a line break
	// would forge SSE fields, an sse- name the server's notices); the entry
	// is delivered as the JSON object of its fields, with no event name.
	BadEntryBadEvent = "bad event"
	// BadEntryRepeatedField: more than one data or event field; the entry is
	// delivered as the JSON object of its fields, with no event name.
	BadEntryRepeatedField = "repeated field"
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
// XREVRANGE, one stream of XREAD) into Entries. Entries not in the shape
// publishers are given are reported through bad, and skipped when they
// have no usable ID or fields (see the BadEntry reasons); last is the ID of the
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
			entries = append(entries, e)
		}
		if reason != "" {
			bad(reason)
		}
	}
	return entries, last, len(items), true
}

// splitEntry checks the [id, [f, v, ...]] shape of one entry, with string
// fields and values.
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
	for _, f := range fields {
		if _, ok := f.(string); !ok {
			return rawEntry{id: id}, BadEntryMalformed
		}
	}
	return rawEntry{id: id, fields: fields}, ""
}

// buildEntry maps the fields of a well-shaped entry. An entry in the shape
// the contract gives publishers (one data field, at most one event field
// with a name ValidateEvent accepts) is delivered as its data under its
// event; a valid traceparent field links its trace; other fields are
// metadata and ignored. Any other entry is delivered too, never dropped:
// its Data is the JSON object of all its fields (fieldsJSON), under its
// event when that is one valid name, else as the default message event, so
// a publisher cannot forge the server's sse- notices or SSE fields and
// loses nothing. reason says why an entry was not in the shape ("" when
// it was); the entry is delivered either way.
func buildEntry(raw rawEntry) (e Entry, reason string) {
	e.ID = raw.id
	var data string
	var nData, nEvent int
	for i := 0; i < len(raw.fields); i += 2 {
		name, _ := raw.fields[i].(string)
		value, _ := raw.fields[i+1].(string)
		switch name {
		case fieldData:
			nData++
			data = value
		case fieldEvent:
			nEvent++
			e.Event = value
		case fieldTraceParent:
			if e.TraceParent == "" && validTraceParent(value) {
				e.TraceParent = value
			}
		}
	}
	switch {
	case nData > 1 || nEvent > 1:
		reason = BadEntryRepeatedField
	case nEvent == 1 && ValidateEvent(e.Event) != nil:
		reason = BadEntryBadEvent
	}
	if reason != "" {
		e.Event = ""
	}
	if nData == 1 && reason == "" {
		e.Data = replyBytes(data)
	} else {
		e.Data = fieldsJSON(raw.fields)
	}
	return e, reason
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

// fieldsJSON renders an entry's fields as a JSON object with sorted keys,
// so the same entry always gives the same bytes. A field's value is a
// string; a field given more than once has the array of its values, in
// order. In field names and values that are not valid UTF-8, each invalid
// byte becomes the escape \ufffd (encoding/json's rule), so the result is
// always valid JSON. HTML characters are not escaped: the payload goes to
// an event stream, not HTML. fields must hold strings (splitEntry has
// checked).
func fieldsJSON(fields []any) []byte {
	values := make(map[string][]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		name, _ := fields[i].(string)
		value, _ := fields[i+1].(string)
		values[name] = append(values[name], value)
	}
	m := make(map[string]any, len(values))
	for name, v := range values {
		if len(v) == 1 {
			m[name] = v[0]
		} else {
			m[name] = v
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		// Strings and string slices always encode; keep the promise of valid JSON.
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
