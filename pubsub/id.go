package pubsub

import (
	"fmt"
	"strconv"
	"strings"
)

// ID is a Redis stream entry ID, <ms>-<seq>. The zero ID (0-0) sorts before
// every real entry.
type ID struct {
	Ms  uint64
	Seq uint64
}

// MaxID sorts after every entry.
var MaxID = ID{Ms: ^uint64(0), Seq: ^uint64(0)}

// ParseID parses "<ms>-<seq>" or a bare "<ms>" (sequence 0), as Redis does.
func ParseID(s string) (ID, error) {
	if s == "" || len(s) > 41 {
		return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
	}
	msPart, seqPart, hasSeq := strings.Cut(s, "-")
	ms, err := parseUint(msPart)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
	}
	var seq uint64
	if hasSeq {
		if seq, err = parseUint(seqPart); err != nil {
			return ID{}, fmt.Errorf("%w: %q", ErrBadID, s)
		}
	}
	return ID{Ms: ms, Seq: seq}, nil
}

// parseUint accepts only plain decimal digits: no sign, no spaces, no base prefix.
func parseUint(s string) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, ErrBadID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrBadID
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

// String formats the ID as <ms>-<seq>.
func (id ID) String() string { return string(id.AppendTo(make([]byte, 0, 24))) }

// AppendTo appends the <ms>-<seq> form to b without allocating beyond b's growth.
func (id ID) AppendTo(b []byte) []byte {
	b = strconv.AppendUint(b, id.Ms, 10)
	b = append(b, '-')
	return strconv.AppendUint(b, id.Seq, 10)
}

// IsZero reports whether id is 0-0.
func (id ID) IsZero() bool { return id.Ms == 0 && id.Seq == 0 }

// Compare returns -1, 0 or +1 as id sorts before, equal to or after o.
func (id ID) Compare(o ID) int {
	switch {
	case id.Ms < o.Ms:
		return -1
	case id.Ms > o.Ms:
		return 1
	case id.Seq < o.Seq:
		return -1
	case id.Seq > o.Seq:
		return 1
	}
	return 0
}

// Less reports whether id sorts before o.
func (id ID) Less(o ID) bool { return id.Compare(o) < 0 }

// Next is the smallest ID after id, for exclusive ranges.
func (id ID) Next() ID {
	if id.Seq == ^uint64(0) {
		return ID{Ms: id.Ms + 1}
	}
	return ID{Ms: id.Ms, Seq: id.Seq + 1}
}
