package replay

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

var randomSeeds = flag.Int("replay.seeds", 300, "seeds TestReplayRandomSchedules runs")

// TestReplayRandomSchedules applies seeded random schedules of appends,
// trims, XDELs, deletions and recreations (lower and higher, each followed
// by the broker's reset signal) to a stream, and after each step resumes
// from a random position (held, trimmed, deleted, never an entry, in the
// future) on two nodes: one whose window has held the topic all along,
// fed live (ring, page cache), and one that takes the topic as the client
// arrives. Both must answer alike, deliver exactly what the stream holds
// after the position (everything, after a reset), and announce a gap
// before any entry, or at the end, that follows an entry the stream lost.
// To keep every loss detectable, at most one XDEL'd entry at a time lies
// at or above the stream's first entry (Redis records only the newest
// XDEL: see the package doc). A failure prints the seed and the schedule.
func TestReplayRandomSchedules(t *testing.T) {
	for seed := 1; seed <= *randomSeeds; seed++ {
		if log, err := randomSchedule(uint64(seed), 40); err != nil {
			t.Fatalf("seed %d: %v\nschedule:\n%s", seed, err, strings.Join(log, "\n"))
		}
	}
}

// history is what the model knows of the stream's current incarnation.
type history struct {
	added []uint64 // ms of every entry added, ascending
	xdel  []uint64 // ms of XDEL'd entries
}

func randomSchedule(seed uint64, steps int) (log []string, err error) {
	rng := rand.New(rand.NewPCG(seed, seed))
	src := newFake()
	clock := time.Unix(1e6, 0)
	now := func() time.Time { return clock }
	ringCfg := Config{RingSize: 1 + rng.IntN(40), PageSize: 1 + rng.IntN(12), Now: now}
	otherCfg := Config{RingSize: 1 + rng.IntN(40), PageSize: 1 + rng.IntN(12), Now: now}
	// Byte budgets from their own generator, so that the schedules stay
	// those of the seeds before budgets: a test entry is about 75 bytes,
	// so the ring budget evicts and pages stop by bytes in many schedules.
	brng := rand.New(rand.NewPCG(seed, ^seed))
	ringCfg.RingBytes, ringCfg.PageBytes = int64(1+brng.IntN(3000)), 1+brng.IntN(1000)
	otherCfg.RingBytes, otherCfg.PageBytes = int64(1+brng.IntN(3000)), 1+brng.IntN(1000)
	ring, err := New(src, ringCfg)
	if err != nil {
		return nil, err
	}
	if err := ring.Acquire(t0ctx, "t"); err != nil {
		return nil, err
	}
	defer ring.Release("t")
	log = append(log, fmt.Sprintf("ring node %+v, other node %+v", ringCfg, otherCfg))
	var h history
	last := uint64(0) // newest ms ever added (the model's Last)
	add := func(from, n uint64) {
		es := src.add("t", from, from+n-1)
		for _, e := range es {
			h.added = append(h.added, e.ID.Ms)
		}
		last = from + n - 1
		ring.Append("t", es) // the reader delivers them
	}
	lose := func() {
		src.lose("t")
		h = history{}
		ring.Reset("t") // the reader's reset signal
	}
	for step := 0; step < steps; step++ {
		held := src.snapshot("t")
		switch op := rng.IntN(10); {
		case op < 4 || len(held) == 0 && op < 7:
			n := 1 + uint64(rng.IntN(15))
			log = append(log, fmt.Sprintf("add %d after %d", n, last))
			add(last+1, n)
		case op < 6 && len(held) > 0:
			upTo := held[rng.IntN(len(held))].ID.Ms
			log = append(log, fmt.Sprintf("trim up to %d", upTo))
			src.trim("t", id(upTo))
		case op < 7 && len(held) > 0:
			x := held[rng.IntN(len(held))].ID.Ms
			if slices.ContainsFunc(h.xdel, func(d uint64) bool { return d >= held[0].ID.Ms }) {
				continue // keep every loss detectable
			}
			log = append(log, fmt.Sprintf("xdel %d", x))
			src.del("t", x)
			h.xdel = append(h.xdel, x)
		case op < 8:
			from := 1 + uint64(rng.IntN(int(max(last, 1))))
			log = append(log, fmt.Sprintf("delete, recreate from %d", from))
			lose()
			add(from, 1+uint64(rng.IntN(20)))
		case op < 9:
			from := last + 1 + uint64(rng.IntN(50))
			log = append(log, fmt.Sprintf("delete, recreate higher from %d", from))
			lose()
			add(from, 1+uint64(rng.IntN(20)))
		default:
			log = append(log, "delete")
			lose()
		}
		clock = clock.Add(infoReuse) // the ring is checked again
		// The other node takes the topic as the client arrives.
		other, err := New(src, otherCfg)
		if err != nil {
			return log, err
		}
		if err := other.Acquire(t0ctx, "t"); err != nil {
			return log, err
		}
		pos := randomPosition(rng, h, last)
		err = checkResume(ring, other, src, h, pos)
		other.Release("t")
		if err != nil {
			return append(log, fmt.Sprintf("resume from %s", pos)), err
		}
	}
	return log, nil
}

// randomPosition picks 0-0, an entry ever added, a position between two,
// or one in the future.
func randomPosition(rng *rand.Rand, h history, last uint64) pubsub.ID {
	switch k := rng.IntN(6); {
	case k == 0:
		return pubsub.ID{}
	case k < 4 && len(h.added) > 0:
		return id(h.added[rng.IntN(len(h.added))])
	case k == 4:
		return pubsub.ID{Ms: uint64(rng.IntN(int(last) + 2)), Seq: 5}
	}
	return id(last + 1 + uint64(rng.IntN(10)))
}

// checkResume resumes from pos on both windows and checks the answer.
func checkResume(ring, plain *Window, src *fakeSource, h history, pos pubsub.ID) error {
	a, err := answer(ring, pos)
	if err != nil {
		return err
	}
	b, err := answer(plain, pos)
	if err != nil {
		return err
	}
	if !slices.Equal(a, b) {
		return fmt.Errorf("node with the ring answered %v\nnode without it answered %v", a, b)
	}
	held := src.snapshot("t")
	info, _ := src.Info(t0ctx, "t")
	// What must come: everything held after pos, or after a reset (the
	// first event) everything held.
	from := pos
	events := a
	if len(events) > 0 && strings.HasSuffix(events[0], "!") {
		from, events = pubsub.ID{}, events[1:]
	} else if !pos.IsZero() && (!info.Exists || info.Last.Less(pos)) {
		return fmt.Errorf("answer %v: no reset for a stream gone or behind the position", a)
	}
	var want []string
	for _, e := range held {
		if from.Less(e.ID) {
			want = append(want, e.ID.String())
		}
	}
	var got []string
	for _, ev := range events {
		if !strings.HasPrefix(ev, "gap") {
			got = append(got, ev)
		}
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("answer %v: entries %v, want the held %v", a, got, want)
	}
	// Every loss between two delivered positions is announced before the
	// next entry (or at the end, up to Last).
	if from.IsZero() {
		return nil
	}
	removed := func(lo, hi pubsub.ID) bool { // an entry of this history in (lo, hi) not held
		for _, ms := range h.added {
			x := id(ms)
			if lo.Less(x) && x.Less(hi) && !slices.ContainsFunc(held, func(e pubsub.Entry) bool { return e.ID == x }) {
				return true
			}
		}
		return false
	}
	prev, gapped := from, false
	for _, ev := range events {
		if strings.HasPrefix(ev, "gap") {
			gapped = true
			continue
		}
		e, _ := pubsub.ParseID(ev)
		if removed(prev, e) && !gapped {
			return fmt.Errorf("answer %v: entries between %s and %s were lost, no gap before %s", a, prev, e, e)
		}
		prev, gapped = e, false
	}
	if removed(prev, info.Last.Next()) && !gapped {
		return fmt.Errorf("answer %v: entries after %s were lost, no gap at the end", a, prev)
	}
	return nil
}

// answer replays pos on w as events: "gap" (with "!" for a reset) and IDs.
func answer(w *Window, pos pubsub.ID) ([]string, error) {
	var got []string
	_, err := w.Replay(t0ctx, "t", pos,
		func(g Gap) error {
			s := "gap"
			if g.Reset {
				s += "!"
			}
			got = append(got, s)
			return nil
		},
		func(e pubsub.Entry) error { got = append(got, e.ID.String()); return nil })
	return got, err
}
