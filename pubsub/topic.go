package pubsub

import (
	"fmt"
	"strings"
)

// maxTopicLen is the longest topic name accepted, in bytes.
const maxTopicLen = 200

// ReservedEventPrefix starts the event names only the server sends
// (sse-gap); publishers may not use them.
const ReservedEventPrefix = "sse-"

// ValidateEvent checks an event name a publisher asks for: no CR or LF,
// which would let it forge SSE fields, and no name starting with
// ReservedEventPrefix, which would let it forge the server's notices. The
// empty name (the default "message" event) is valid.
func ValidateEvent(event string) error {
	if i := strings.IndexAny(event, "\r\n"); i >= 0 {
		return fmt.Errorf("%w: line break at offset %d", ErrBadEvent, i)
	}
	if strings.HasPrefix(event, ReservedEventPrefix) {
		return fmt.Errorf("%w: names starting with %s are reserved", ErrBadEvent, ReservedEventPrefix)
	}
	return nil
}

// ValidateTopic checks a topic name against the contract: 1 to 200 bytes of
// [A-Za-z0-9._:/@-].
func ValidateTopic(t string) error {
	if len(t) == 0 {
		return fmt.Errorf("%w: empty name", ErrBadTopic)
	}
	if len(t) > maxTopicLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadTopic, len(t), maxTopicLen)
	}
	for i := 0; i < len(t); i++ {
		if !topicByte[t[i]] {
			return fmt.Errorf("%w: byte %q at offset %d not in [A-Za-z0-9._:/@-]", ErrBadTopic, t[i], i)
		}
	}
	return nil
}

var topicByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "._:/@-" {
		t[c] = true
	}
	return t
}()
