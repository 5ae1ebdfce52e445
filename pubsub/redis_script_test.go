package pubsub

import (
	"errors"
	"testing"
)

// TestParseStreamRead decodes the read script's replies: the state, the
// wrong type from the same reply, and MaxDeleted raised over trimming.
func TestParseStreamRead(t *testing.T) {
	page := []any{[]any{"5-0", []any{"data", "x"}}}
	tests := []struct {
		name    string
		reply   any
		want    StreamInfo
		entries bool
		cut     bool
		wantErr error
	}{
		{name: "missing", reply: []any{"none"}},
		{name: "wrong type", reply: []any{"string"}, wantErr: ErrWrongType},
		{name: "nothing removed", reply: []any{"stream", int64(2), "5-0", "0-0", int64(2), "4-0", page, int64(0)},
			want: StreamInfo{Exists: true, Length: 2, First: ID{Ms: 4}, Last: ID{Ms: 5}}, entries: true},
		{name: "head trimmed", reply: []any{"stream", int64(2), "5-0", "0-0", int64(9), "4-0", []any{}, int64(0)},
			want: StreamInfo{Exists: true, Length: 2, First: ID{Ms: 4}, Last: ID{Ms: 5}, MaxDeleted: ID{Ms: 3, Seq: ^uint64(0)}}, entries: true},
		{name: "xdel above the trimmed head", reply: []any{"stream", int64(2), "9-0", "7-0", int64(9), "4-0", []any{}, int64(0)},
			want: StreamInfo{Exists: true, Length: 2, First: ID{Ms: 4}, Last: ID{Ms: 9}, MaxDeleted: ID{Ms: 7}}, entries: true},
		{name: "emptied", reply: []any{"stream", int64(0), "9-0", "0-0", int64(9), "", []any{}, int64(0)},
			want: StreamInfo{Exists: true, Last: ID{Ms: 9}, MaxDeleted: ID{Ms: 9}}, entries: true},
		{name: "cut by the byte bound", reply: []any{"stream", int64(2), "5-0", "0-0", int64(2), "4-0", page, int64(1)},
			want: StreamInfo{Exists: true, Length: 2, First: ID{Ms: 4}, Last: ID{Ms: 5}}, entries: true, cut: true},
		{name: "seven items", reply: []any{"stream", int64(2), "5-0", "0-0", int64(2), "4-0", page}, wantErr: errAny},
		{name: "not an array", reply: "OK", wantErr: errAny},
		{name: "short", reply: []any{"stream", int64(1)}, wantErr: errAny},
		{name: "length not an integer", reply: []any{"stream", "1", "5-0", "0-0", int64(1), "5-0", []any{}, int64(0)}, wantErr: errAny},
		{name: "bad id", reply: []any{"stream", int64(1), "x", "0-0", int64(1), "5-0", []any{}, int64(0)}, wantErr: ErrBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStreamRead(tt.reply)
			switch {
			case tt.wantErr == errAny && err == nil, tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			case tt.wantErr != nil:
				return
			}
			if got.info != tt.want || (got.entries != nil) != tt.entries || got.cut != tt.cut {
				t.Fatalf("got %+v entries %v cut %v, want %+v entries %v cut %v", got.info, got.entries, got.cut, tt.want, tt.entries, tt.cut)
			}
		})
	}
}

// errAny stands for "some error" in TestParseStreamRead.
var errAny = errors.New("any error")
