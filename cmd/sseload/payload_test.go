package main

import (
	"encoding/json"
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 10, 60, 100, 1000} {
		p := payload{run: 1<<62 + 3, topic: 7, seq: 123456, ts: 1700000000123456789}
		b := appendPayload(nil, p, size)
		if size >= 80 && len(b) != size {
			t.Errorf("size %d: payload is %d bytes", size, len(b))
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("size %d: not JSON: %v: %s", size, err, b)
		}
		got, ok := scanPayload(b)
		if !ok || got != p {
			t.Errorf("size %d: scanPayload = %+v, %v; want %+v", size, got, ok, p)
		}
	}
}

func TestScanPayload(t *testing.T) {
	tests := []struct {
		in   string
		want payload
		ok   bool
	}{
		{`{"r":1,"t":2,"seq":3,"ts":4,"pad":"xx"}`, payload{1, 2, 3, 4}, true},
		{`{"ts":4, "seq" : 3,"t":2,"r":1}`, payload{1, 2, 3, 4}, true},
		{`{"r":1,"t":2,"seq":3,"ts":4`, payload{1, 2, 3, 4}, true}, // truncated line: the start is enough
		{`{"x":9,"r":1,"t":2,"seq":3,"ts":4}`, payload{1, 2, 3, 4}, true},
		{`{"r":1,"t":2,"seq":3}`, payload{}, false},
		{`{"r":1,"t":2,"pad":"x","seq":3,"ts":4}`, payload{}, false},
		{`{"r":1,"t":2,"seq":-3,"ts":4}`, payload{}, false},
		{`{"r":1,"t":2,"seq":99999999999999999999,"ts":4}`, payload{}, false},
		{`hello`, payload{}, false},
		{``, payload{}, false},
		{`{"topic":"a","requested":"1-0","oldest":"5-0"}`, payload{}, false},
	}
	for _, tt := range tests {
		got, ok := scanPayload([]byte(tt.in))
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("scanPayload(%s) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseIDBytes(t *testing.T) {
	tests := []struct {
		in   string
		want pubsub.ID
		ok   bool
	}{
		{"1700000000000-5", pubsub.ID{Ms: 1700000000000, Seq: 5}, true},
		{"12", pubsub.ID{Ms: 12}, true},
		{"0-0", pubsub.ID{}, true},
		{"18446744073709551615-18446744073709551615", pubsub.MaxID, true},
		{"18446744073709551616-0", pubsub.ID{}, false},
		{"1-", pubsub.ID{}, false},
		{"-1", pubsub.ID{}, false},
		{"1-2-3", pubsub.ID{}, false},
		{"1,2", pubsub.ID{}, false},
		{"", pubsub.ID{}, false},
		{" 1-2", pubsub.ID{}, false},
	}
	for _, tt := range tests {
		got, ok := parseIDBytes([]byte(tt.in))
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseIDBytes(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
		// Agrees with pubsub.ParseID.
		pid, err := pubsub.ParseID(tt.in)
		if (err == nil) != ok || (ok && pid != got) {
			t.Errorf("parseIDBytes(%q) disagrees with pubsub.ParseID: %v, %v", tt.in, pid, err)
		}
	}
}

func TestIDPart(t *testing.T) {
	tests := []struct {
		in   string
		k    int
		want string
	}{
		{"1-0", 0, "1-0"},
		{"1-0,2-0,3-0", 0, "1-0"},
		{"1-0,2-0,3-0", 1, "2-0"},
		{"1-0,2-0,3-0", 2, "3-0"},
		{"1-0,2-0", 2, ""},
		{"", 0, ""},
	}
	for _, tt := range tests {
		if got := string(idPart([]byte(tt.in), tt.k)); got != tt.want {
			t.Errorf("idPart(%q, %d) = %q, want %q", tt.in, tt.k, got, tt.want)
		}
	}
}

func TestGapTopic(t *testing.T) {
	if got := string(gapTopic([]byte(`{"topic":"news/eu","requested":"1-0","oldest":"9-0"}`))); got != "news/eu" {
		t.Errorf("gapTopic = %q", got)
	}
	if got := gapTopic([]byte(`{"requested":"1-0"}`)); got != nil {
		t.Errorf("gapTopic without topic = %q", got)
	}
}

func TestHotPathNoAllocs(t *testing.T) {
	b := appendPayload(nil, payload{run: 1, topic: 0, seq: 5, ts: 99}, 100)
	id := []byte("1700000000000-5,1700000000001-9")
	n := testing.AllocsPerRun(100, func() {
		if _, ok := scanPayload(b); !ok {
			t.Fatal("scan failed")
		}
		if _, ok := parseIDBytes(idPart(id, 1)); !ok {
			t.Fatal("parse failed")
		}
	})
	if n != 0 {
		t.Errorf("payload scan and ID parse allocate %v times", n)
	}
}
