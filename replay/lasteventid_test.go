package replay

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestParseLastEventID(t *testing.T) {
	big := "18446744073709551615-18446744073709551615"
	tests := []struct {
		name    string
		raw     string
		n       int
		want    []pubsub.ID // nil with ok=false and no error for ""
		errPart string      // substring of the error; "" means no error
	}{
		{name: "empty one", raw: "", n: 1},
		{name: "empty three", raw: "", n: 3},
		{name: "full id", raw: "1700000000000-3", n: 1, want: []pubsub.ID{{Ms: 1700000000000, Seq: 3}}},
		{name: "ms only", raw: "1700000000000", n: 1, want: []pubsub.ID{{Ms: 1700000000000}}},
		{name: "zero", raw: "0", n: 1, want: []pubsub.ID{{}}},
		{name: "zero-zero", raw: "0-0", n: 1, want: []pubsub.ID{{}}},
		{name: "largest", raw: big, n: 1, want: []pubsub.ID{pubsub.MaxID}},
		{name: "two", raw: "5-1,7", n: 2, want: []pubsub.ID{{Ms: 5, Seq: 1}, {Ms: 7}}},
		{name: "three", raw: "1-0,0,3-9", n: 3, want: []pubsub.ID{{Ms: 1}, {}, {Ms: 3, Seq: 9}}},
		{name: "lone zero two", raw: "0", n: 2, want: []pubsub.ID{{}, {}}},
		{name: "lone zero three", raw: "0", n: 3, want: []pubsub.ID{{}, {}, {}}},
		{name: "lone zero-zero three", raw: "0-0", n: 3, want: []pubsub.ID{{}, {}, {}}},
		{name: "zeros spelled out", raw: "0,0,0", n: 3, want: []pubsub.ID{{}, {}, {}}},

		{name: "no topics", raw: "1", n: 0, errPart: "no topics"},
		{name: "letters", raw: "abc", n: 1, errPart: `"abc"`},
		{name: "negative", raw: "-1", n: 1, errPart: `"-1"`},
		{name: "plus", raw: "+1", n: 1, errPart: `"+1"`},
		{name: "space", raw: " 1", n: 1, errPart: `" 1"`},
		{name: "trailing space", raw: "1-0 ", n: 1, errPart: `"1-0 "`},
		{name: "two dashes", raw: "1-2-3", n: 1, errPart: `"1-2-3"`},
		{name: "dash no seq", raw: "1-", n: 1, errPart: `"1-"`},
		{name: "overflow", raw: "18446744073709551616", n: 1, errPart: "18446744073709551616"},
		{name: "comma for one", raw: "1,2", n: 1, errPart: "2 comma-separated parts"},
		{name: "trailing comma for one", raw: "1,", n: 1, errPart: "2 comma-separated parts"},
		{name: "too few", raw: "1,2", n: 3, errPart: "2 comma-separated parts, want 3"},
		{name: "too many", raw: "1,2,3", n: 2, errPart: "3 comma-separated parts, want 2"},
		{name: "single id for two", raw: "5-1", n: 2, errPart: "1 comma-separated parts, want 2"},
		{name: "empty first", raw: ",2", n: 2, errPart: "part 1 of 2 is empty"},
		{name: "empty last", raw: "1,2,", n: 3, errPart: "part 3 of 3 is empty"},
		{name: "empty middle", raw: "1,,3", n: 3, errPart: "part 2 of 3 is empty"},
		{name: "space after comma", raw: "1, 2", n: 2, errPart: `part 2 of 2 " 2"`},
		{name: "bad third", raw: "1,2,x", n: 3, errPart: `part 3 of 3 "x"`},
		{name: "too long", raw: strings.Repeat("1", MaxLastEventIDLen+1), n: 1, errPart: "4097 bytes, at most 4096"},
		{name: "long part cut short", raw: strings.Repeat("9", 100), n: 1, errPart: `"` + strings.Repeat("9", 48) + `"...`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids, ok, err := ParseLastEventID(tt.raw, tt.n)
			if tt.errPart != "" {
				if err == nil {
					t.Fatalf("ParseLastEventID(%q, %d) = %v, %v, nil; want error", tt.raw, tt.n, ids, ok)
				}
				if !errors.Is(err, ErrBadLastEventID) {
					t.Errorf("error %v does not wrap ErrBadLastEventID", err)
				}
				if !strings.Contains(err.Error(), tt.errPart) {
					t.Errorf("error %q does not name %q", err, tt.errPart)
				}
				if ok || ids != nil {
					t.Errorf("error came with ids %v ok %v", ids, ok)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLastEventID(%q, %d): %v", tt.raw, tt.n, err)
			}
			if ok != (tt.want != nil) || !slices.Equal(ids, tt.want) {
				t.Fatalf("ParseLastEventID(%q, %d) = %v, %v; want %v", tt.raw, tt.n, ids, ok, tt.want)
			}
		})
	}
}

func TestParseLastEventIDFitsMaxTopics(t *testing.T) {
	ids := make([]pubsub.ID, MaxTopics)
	for i := range ids {
		ids[i] = pubsub.MaxID
	}
	raw := AppendLastEventID(nil, ids)
	got, ok, err := ParseLastEventID(string(raw), MaxTopics)
	if err != nil || !ok || !slices.Equal(got, ids) {
		t.Fatalf("%d max IDs (%d bytes) do not round-trip: ok %v err %v", MaxTopics, len(raw), ok, err)
	}
}

func TestAppendLastEventID(t *testing.T) {
	tests := []struct {
		ids  []pubsub.ID
		want string
	}{
		{nil, ""},
		{[]pubsub.ID{{}}, "0-0"},
		{[]pubsub.ID{{Ms: 17, Seq: 2}}, "17-2"},
		{[]pubsub.ID{{Ms: 1}, {}, {Ms: 3, Seq: 4}}, "1-0,0-0,3-4"},
	}
	for _, tt := range tests {
		if got := string(AppendLastEventID([]byte("id: "), tt.ids)); got != "id: "+tt.want {
			t.Errorf("AppendLastEventID(%v) = %q, want %q", tt.ids, got, "id: "+tt.want)
		}
	}
	ids := []pubsub.ID{pubsub.MaxID, pubsub.MaxID, {Ms: 5}}
	buf := make([]byte, 0, 256)
	if allocs := testing.AllocsPerRun(100, func() { buf = AppendLastEventID(buf[:0], ids) }); allocs != 0 {
		t.Errorf("AppendLastEventID allocates %.1f times with room in b", allocs)
	}
}

func FuzzParseLastEventID(f *testing.F) {
	for _, s := range []string{"", "0", "0-0", "1-2", "1,2", "1-0,0,3-9", ",", "1,,2", " 1", "18446744073709551615-18446744073709551615", "-", "1-2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for n := 1; n <= 3; n++ {
			ids, ok, err := ParseLastEventID(raw, n)
			switch {
			case err != nil:
				if !errors.Is(err, ErrBadLastEventID) || ok || ids != nil {
					t.Fatalf("(%q, %d): bad error result %v %v %v", raw, n, ids, ok, err)
				}
				continue
			case !ok:
				if raw != "" || ids != nil {
					t.Fatalf("(%q, %d): not ok without error", raw, n)
				}
				continue
			}
			if len(ids) != n {
				t.Fatalf("(%q, %d): %d ids", raw, n, len(ids))
			}
			again := string(AppendLastEventID(nil, ids))
			ids2, ok2, err2 := ParseLastEventID(again, n)
			if err2 != nil || !ok2 || !slices.Equal(ids, ids2) {
				t.Fatalf("(%q, %d) = %v does not round-trip through %q: %v %v %v", raw, n, ids, again, ids2, ok2, err2)
			}
		}
	})
}

func TestWholeWindow(t *testing.T) {
	tests := []struct {
		raw  string
		n    int
		want []bool
	}{
		{"0", 1, []bool{true}},
		{"0-0", 1, nil},
		{"5-1", 1, nil},
		{"0", 3, []bool{true, true, true}},
		{"0-0", 3, nil},
		{"0,5-1,0-0", 3, []bool{true, false, false}},
		{"5-1,0", 2, []bool{false, true}},
		{"5-1,0,7", 3, []bool{false, true, false}},
		{"10,20", 2, nil},
	}
	for _, tt := range tests {
		if got := WholeWindow(tt.raw, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("WholeWindow(%q, %d) = %v, want %v", tt.raw, tt.n, got, tt.want)
		}
	}
}
