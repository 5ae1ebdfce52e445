package pubsub

import (
	"testing"
)

// TestRedisContinuous applies the continuity rule of a live read to the
// stream states a continuity check can report.
func TestRedisContinuous(t *testing.T) {
	es := func(ms ...uint64) []Entry {
		out := make([]Entry, len(ms))
		for i, m := range ms {
			out[i] = Entry{ID: ID{Ms: m}}
		}
		return out
	}
	held := []any{[]any{"10-0", []any{"data", "x"}}}
	state := func(added int64, first, last, maxDel uint64, atFrom []any) streamState {
		return streamState{page: rawPage{
			info:    StreamInfo{Exists: true, Length: 1, First: ID{Ms: first}, Last: ID{Ms: last}, MaxDeleted: ID{Ms: maxDel}},
			added:   added,
			entries: atFrom,
		}}
	}
	tests := []struct {
		name    string
		from    ID
		added   int64 // at the previous check
		last    ID    // at the previous check
		entries []Entry
		c       streamState
		want    bool
	}{
		{"same stream, two new entries", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 12), state(7, 1, 12, 0, held), true},
		{"more added after the read", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 12), state(9, 1, 14, 0, held), true},
		{"entries below last were counted at the last check", ID{Ms: 10}, 7, ID{Ms: 12}, es(11, 12), state(7, 1, 12, 0, held), true},
		{"one above last, one below", ID{Ms: 10}, 6, ID{Ms: 11}, es(11, 12), state(7, 1, 12, 0, held), true},
		{"first read, nothing known", ID{Ms: 10}, 0, ID{}, es(11), state(6, 1, 11, 0, held), true},
		{"from 0-0", ID{}, 0, ID{}, es(11), state(1, 11, 11, 0, nil), true},
		{"position deleted (XDEL)", ID{Ms: 10}, 5, ID{Ms: 10}, es(11), state(6, 1, 11, 10, nil), true},
		{"position trimmed, the last removed", ID{Ms: 10}, 5, ID{Ms: 10}, es(11), state(6, 11, 11, 10, nil), true},
		{"trimmed past the position", ID{Ms: 10}, 5, ID{Ms: 10}, es(20), state(15, 20, 20, 19, nil), false},
		{"position deleted within the stream, later ones too", ID{Ms: 10}, 5, ID{Ms: 10}, es(13), state(8, 1, 13, 12, nil), true},
		{"at the head, every entry since read, then trimmed", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 12), state(7, 12, 12, 11, nil), true},
		{"at the head, one added and removed in between", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 13), state(8, 13, 13, 12, nil), false},
		{"at the head, more added than read", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 12), state(8, 13, 13, 12, nil), false},
		{"from 0-0, trimmed before the first read", ID{}, 0, ID{}, es(20), state(15, 20, 20, 19, nil), false},
		{"recreated higher with more entries than before (restart, then trimming)", ID{Ms: 10}, 5, ID{Ms: 10}, es(50), state(600, 50, 60, 49, nil), false},
		{"recreated: entries-added from 0", ID{Ms: 10}, 5, ID{Ms: 10}, es(20), state(1, 20, 20, 0, nil), false},
		{"restored older, counter lower", ID{Ms: 10}, 5, ID{Ms: 10}, es(20), state(4, 1, 20, 0, held), false},
		{"fewer added than entries above last", ID{Ms: 10}, 5, ID{Ms: 10}, es(11, 12, 13), state(7, 1, 13, 0, held), false},
		{"forked: position not held, not removed", ID{Ms: 10}, 5, ID{Ms: 10}, es(20), state(9, 1, 20, 0, nil), false},
		{"before Redis 7: no entries-added, position held", ID{Ms: 10}, 0, ID{}, es(11), state(-1, 1, 11, 0, held), true},
		{"before Redis 7: position not held", ID{Ms: 10}, 0, ID{}, es(20), state(-1, 1, 20, 0, nil), false},
		{"missing", ID{Ms: 10}, 5, ID{Ms: 10}, es(11), streamState{}, false},
		{"idle", ID{Ms: 10}, 5, ID{Ms: 10}, es(11), streamState{idle: true}, false},
		{"wrong type", ID{Ms: 10}, 5, ID{Ms: 10}, es(11), streamState{wrongType: true}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := continuous(tt.from, tt.added, tt.last, tt.entries, tt.c); got != tt.want {
				t.Fatalf("continuous = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRedisParseStreamChecks decodes a continuity check reply item by item.
func TestRedisParseStreamChecks(t *testing.T) {
	reply := []any{
		[]any{"idle"},
		[]any{"none"},
		[]any{"string"},
		[]any{"stream", int64(2), "5-0", "0-0", int64(3), "4-0", []any{}, int64(0)},
	}
	got, err := parseStreamChecks(reply, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].idle || got[1].page.info.Exists || got[1].idle || !got[2].wrongType || got[3].page.added != 3 || got[3].page.info.Last != (ID{Ms: 5}) {
		t.Fatalf("got %+v", got)
	}
	for _, bad := range []any{"OK", []any{[]any{"idle"}}, []any{[]any{"stream", int64(1)}, []any{"idle"}}} {
		if _, err := parseStreamChecks(bad, 2); err == nil {
			t.Errorf("reply %v: no error", bad)
		}
	}
}

// TestRedisAfterMissing: a page read from its position takes that entry
// off when held, or the extra last entry when not.
func TestRedisAfterMissing(t *testing.T) {
	e := func(id string) any { return []any{id, []any{"data", "x"}} }
	tests := []struct {
		name        string
		after       ID
		entries     []any
		wantMissing bool
		wantFirst   string
		wantLen     int
	}{
		{"held", ID{Ms: 5}, []any{e("5-0"), e("6-0"), e("7-0")}, false, "6-0", 2},
		{"not held, full", ID{Ms: 5}, []any{e("6-0"), e("7-0"), e("8-0")}, true, "6-0", 2},
		{"not held, short", ID{Ms: 5}, []any{e("6-0")}, true, "6-0", 1},
		{"nothing", ID{Ms: 5}, []any{}, true, "", 0},
		{"from 0-0", ID{}, []any{e("1-0"), e("2-0"), e("3-0")}, false, "1-0", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := rawPage{entries: tt.entries}
			missing := afterMissing(&raw, tt.after, 2)
			es := raw.entries.([]any)
			first := ""
			if len(es) > 0 {
				first = es[0].([]any)[0].(string)
			}
			if missing != tt.wantMissing || len(es) != tt.wantLen || first != tt.wantFirst {
				t.Fatalf("missing %v, %d entries from %q; want %v, %d from %q", missing, len(es), first, tt.wantMissing, tt.wantLen, tt.wantFirst)
			}
		})
	}
}
