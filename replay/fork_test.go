package replay

import (
	"strings"
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

// TestRingCoversOnlyItsEntries: above its floor a ring answers only the
// positions it holds (and its floor, the newest ID seen, MaxDeleted); a
// position between its entries that is none of them was never an entry of
// the stream's history (a fork) and goes to the source.
func TestRingCoversOnlyItsEntries(t *testing.T) {
	r := ring{max: 10, floor: id(5)}
	for _, ms := range []uint64{10, 20, 30} {
		e := pubsub.Entry{ID: id(ms)}
		r.push(&e)
	}
	tests := []struct {
		name       string
		c          pubsub.ID
		maxDeleted pubsub.ID
		want       bool
	}{
		{"floor", id(5), pubsub.ID{}, true},
		{"held", id(20), pubsub.ID{}, true},
		{"newest seen", id(30), pubsub.ID{}, true},
		{"between entries, never one", id(15), pubsub.ID{}, false},
		{"between entries, deleted", id(15), id(15), true},
		{"below floor", id(4), pubsub.ID{}, false},
		{"above last", id(31), pubsub.ID{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.maxDeleted = tt.maxDeleted
			if got := r.covers(tt.c, id(30)); got != tt.want {
				t.Fatalf("covers(%s) = %v, want %v", tt.c, got, tt.want)
			}
		})
	}
}

// TestStartGapFork: a position the source does not hold, inside the
// stream's span and above MaxDeleted, is a gap (no reset: the entries after
// it follow, each once); removed or outside
// the span it is judged as before.
func TestStartGapFork(t *testing.T) {
	info := pubsub.StreamInfo{Exists: true, Length: 5, First: id(10), Last: id(50), MaxDeleted: id(12)}
	tests := []struct {
		name      string
		cursor    pubsub.ID
		missing   bool
		wantGap   bool
		wantReset bool
	}{
		{"held", id(30), false, false, false},
		{"forked", id(30), true, true, false},
		{"deleted", id(12), true, false, false},
		{"below first, trimmed", id(5), true, true, false},
		{"0-0, entries deleted since", pubsub.ID{}, true, true, false},
		{"0-0 after a reset restart", pubsub.ID{}, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restarted := strings.HasSuffix(tt.name, "restart")
			g, restart := startGap("t", tt.cursor, restarted, &info, tt.missing)
			if (g != nil) != tt.wantGap || restart != tt.wantReset || g != nil && g.Reset != tt.wantReset {
				t.Fatalf("gap %+v restart %v, want gap %v reset %v", g, restart, tt.wantGap, tt.wantReset)
			}
		})
	}
}
