package pubsub

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateTopic(t *testing.T) {
	tests := []struct {
		name  string
		topic string
		ok    bool
	}{
		{"letters and digits", "AZaz09", true},
		{"one byte", "a", true},
		{"200 bytes", strings.Repeat("a", maxTopicLen), true},
		{"dot", "a.b", true},
		{"underscore", "a_b", true},
		{"colon", "a:b", true},
		{"slash", "a/b", true},
		{"at", "a@b", true},
		{"dash", "a-b", true},
		{"only punctuation", "._:/@-", true},

		{"empty", "", false},
		{"201 bytes", strings.Repeat("a", maxTopicLen+1), false},
		{"space", "a b", false},
		{"newline", "a\nb", false},
		{"carriage return", "a\r", false},
		{"tab", "\ta", false},
		{"nul", "a\x00", false},
		{"unicode letter", "café", false},
		{"unicode within length", strings.Repeat("é", 50), false},
		{"comma (multi-topic ID separator)", "a,b", false},
		{"star", "a*", false},
		{"question", "a?b", false},
		{"hash", "a#b", false},
		{"plus", "a+b", false},
		{"percent", "a%20b", false},
		{"braces (cluster hash tag)", "{a}", false},
		{"backslash", `a\b`, false},
		{"high byte", "a\xff", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTopic(tt.topic)
			if tt.ok && err != nil {
				t.Fatalf("ValidateTopic(%q) = %v, want nil", tt.topic, err)
			}
			if !tt.ok && !errors.Is(err, ErrBadTopic) {
				t.Fatalf("ValidateTopic(%q) = %v, want ErrBadTopic", tt.topic, err)
			}
		})
	}
}

func TestValidateTopicEveryByte(t *testing.T) {
	const allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@-"
	for b := 0; b < 256; b++ {
		want := strings.IndexByte(allowed, byte(b)) >= 0
		if got := ValidateTopic(string([]byte{byte(b)})) == nil; got != want {
			t.Errorf("byte %q: valid = %v, want %v", byte(b), got, want)
		}
	}
}

func TestValidateEvent(t *testing.T) {
	tests := []struct {
		event string
		ok    bool
	}{
		{"", true},
		{"greeting", true},
		{"with space and ünïcode", true},
		{"sse", true},
		{"sse_gap", true},
		{"SSE-gap", true}, // the reserved prefix is exact: event names are case-sensitive
		{"x-sse-gap", true},

		{"sse-", false},
		{"sse-gap", false},
		{"sse-anything", false},
		{"a\nb", false},
		{"a\rb", false},
		{"\n", false},
		{"x\ndata: injected", false},
	}
	for _, tt := range tests {
		err := ValidateEvent(tt.event)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateEvent(%q) = %v, want ok %v", tt.event, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadEvent) {
			t.Errorf("ValidateEvent(%q) = %v, not ErrBadEvent", tt.event, err)
		}
	}
}
