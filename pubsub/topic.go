package pubsub

import "fmt"

// maxTopicLen is the longest topic name accepted, in bytes.
const maxTopicLen = 200

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
