package pubsub

import (
	"errors"
	"testing"
)

func TestParseID(t *testing.T) {
	const max = "18446744073709551615"
	tests := []struct {
		name string
		in   string
		want ID
		ok   bool
	}{
		{"full", "1526919030474-55", ID{1526919030474, 55}, true},
		{"bare ms means seq 0", "1526919030474", ID{1526919030474, 0}, true},
		{"bare zero", "0", ID{}, true},
		{"zero zero", "0-0", ID{}, true},
		{"leading zeros", "007-01", ID{7, 1}, true},
		{"max", max + "-" + max, MaxID, true},
		{"max ms bare", max, ID{Ms: MaxID.Ms}, true},

		{"empty", "", ID{}, false},
		{"leading space", " 1-2", ID{}, false},
		{"trailing space", "1-2 ", ID{}, false},
		{"plus sign", "+1", ID{}, false},
		{"plus seq", "1-+2", ID{}, false},
		{"empty seq", "1-", ID{}, false},
		{"empty ms", "-1", ID{}, false},
		{"lone dash", "-", ID{}, false},
		{"three parts", "1-2-3", ID{}, false},
		{"ms overflow", "18446744073709551616-0", ID{}, false},
		{"seq overflow", "1-18446744073709551616", ID{}, false},
		{"bare overflow", "99999999999999999999", ID{}, false},
		{"21 digits", "000000000000000000001", ID{}, false},
		{"too long", max + "-" + max + "0", ID{}, false},
		{"hex", "0x10-1", ID{}, false},
		{"redis special dollar", "$", ID{}, false},
		{"redis special star", "*", ID{}, false},
		{"redis min", "-", ID{}, false},
		{"exclusive", "(1-2", ID{}, false},
		{"unicode digit", "١-2", ID{}, false},
		{"nul", "1\x00-2", ID{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseID(tt.in)
			if !tt.ok {
				if !errors.Is(err, ErrBadID) {
					t.Fatalf("ParseID(%q) = %v, %v; want ErrBadID", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseID(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestIDString(t *testing.T) {
	tests := []struct {
		id   ID
		want string
	}{
		{ID{}, "0-0"},
		{ID{0, 1}, "0-1"},
		{ID{1526919030474, 55}, "1526919030474-55"},
		{MaxID, "18446744073709551615-18446744073709551615"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.id, got, tt.want)
		}
		if got := string(tt.id.AppendTo([]byte("x:"))); got != "x:"+tt.want {
			t.Errorf("%#v.AppendTo = %q, want %q", tt.id, got, "x:"+tt.want)
		}
	}
}

func TestIDAppendToNoAlloc(t *testing.T) {
	buf := make([]byte, 0, 64)
	allocs := testing.AllocsPerRun(100, func() { buf = MaxID.AppendTo(buf[:0]) })
	if allocs != 0 {
		t.Fatalf("AppendTo allocated %v times with room in the buffer", allocs)
	}
}

func TestIDCompare(t *testing.T) {
	tests := []struct {
		a, b ID
		want int
	}{
		{ID{}, ID{}, 0},
		{ID{1, 2}, ID{1, 2}, 0},
		{ID{1, 2}, ID{1, 3}, -1},
		{ID{1, 3}, ID{1, 2}, 1},
		{ID{1, 9}, ID{2, 0}, -1}, // ms dominates seq
		{ID{2, 0}, ID{1, 9}, 1},
		{ID{}, ID{0, 1}, -1},
		{MaxID, ID{MaxID.Ms, MaxID.Seq - 1}, 1},
		{ID{}, MaxID, -1},
	}
	for _, tt := range tests {
		if got := tt.a.Compare(tt.b); got != tt.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := tt.a.Less(tt.b); got != (tt.want < 0) {
			t.Errorf("%v.Less(%v) = %v, want %v", tt.a, tt.b, got, tt.want < 0)
		}
		if got := tt.b.Compare(tt.a); got != -tt.want {
			t.Errorf("%v.Compare(%v) = %d, want %d (antisymmetry)", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestIDNextAndIsZero(t *testing.T) {
	tests := []struct {
		id, want ID
	}{
		{ID{}, ID{0, 1}},
		{ID{5, 7}, ID{5, 8}},
		{ID{5, ^uint64(0)}, ID{6, 0}},
	}
	for _, tt := range tests {
		got := tt.id.Next()
		if got != tt.want {
			t.Errorf("%v.Next() = %v, want %v", tt.id, got, tt.want)
		}
		if !tt.id.Less(got) {
			t.Errorf("%v.Next() = %v does not sort after it", tt.id, got)
		}
	}
	if !(ID{}).IsZero() || (ID{0, 1}).IsZero() || (ID{1, 0}).IsZero() {
		t.Error("IsZero is true only for 0-0")
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"0", "0-0", "1-2", "007-01", " 1-2", "+1", "1-", "-1", "1-2-3",
		"18446744073709551615-18446744073709551615", "18446744073709551616", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrBadID) {
				t.Fatalf("ParseID(%q) error %v is not ErrBadID", s, err)
			}
			return
		}
		again, err := ParseID(id.String())
		if err != nil || again != id {
			t.Fatalf("ParseID(%q) = %v, but ParseID(%q) = %v, %v", s, id, id.String(), again, err)
		}
	})
}
