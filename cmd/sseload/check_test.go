package main

import (
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

func idOf(seq int64) pubsub.ID { return pubsub.ID{Ms: 1700000000000, Seq: uint64(seq)} }

// step is one thing a client sees: an sse-gap, or an event with a seq and
// the ID it came with ("" means the published one).
type step struct {
	gap bool
	seq int64
	id  string
}

func ev(seqs ...int64) []step {
	out := make([]step, len(seqs))
	for i, s := range seqs {
		out[i] = step{seq: s}
	}
	return out
}

func TestSlotCheck(t *testing.T) {
	tests := []struct {
		name      string
		published int     // seqs 0..published-1 exist
		failed    []int64 // seqs whose publish failed
		base      int64   // log's started count when the stream opened
		steps     []step
		final     int64 // last seq due at the end; -1: no tail check
		want      tally
	}{
		{name: "all in order", published: 5, steps: ev(0, 1, 2, 3, 4), final: 4,
			want: tally{deliveries: 5}},
		{name: "one lost in the middle", published: 5, steps: ev(0, 1, 3, 4), final: 4,
			want: tally{deliveries: 4, lost: 1}},
		{name: "lost at the start, after the baseline", published: 5, base: 1, steps: ev(3, 4), final: 4,
			want: tally{deliveries: 2, lost: 2}},
		{name: "lost at the end", published: 6, steps: ev(0, 1, 2), final: 5,
			want: tally{deliveries: 3, lost: 3}},
		{name: "nothing received at all", published: 4, base: 1, final: 3,
			want: tally{lost: 3}},
		{name: "published before the baseline and delivered", published: 5, base: 3, steps: ev(2, 3, 4), final: 4,
			want: tally{deliveries: 3}},
		{name: "duplicate", published: 4, steps: ev(0, 1, 1, 2, 3), final: 3,
			want: tally{deliveries: 5, dup: 1}},
		{name: "replayed twice after a reconnect", published: 5, steps: ev(0, 1, 2, 1, 2, 3, 4), final: 4,
			want: tally{deliveries: 7, dup: 2}},
		{name: "out of order: late arrival is not lost", published: 5, steps: ev(0, 2, 1, 3, 4), final: 4,
			want: tally{deliveries: 5, ooo: 1}},
		{name: "wrong ID", published: 3, steps: []step{{seq: 0}, {seq: 1, id: "1700000000000-7"}, {seq: 2}}, final: 2,
			want: tally{deliveries: 3, mismatch: 1}},
		{name: "unparseable ID", published: 2, steps: []step{{seq: 0, id: "x"}, {seq: 1}}, final: 1,
			want: tally{deliveries: 2, mismatch: 1}},
		{name: "multi-topic part picked by caller: bare ms", published: 1, steps: []step{{seq: 0, id: "1700000000000"}}, final: 0,
			want: tally{deliveries: 1}},
		{name: "failed publish is not a loss", published: 5, failed: []int64{2}, steps: ev(0, 1, 3, 4), final: 4,
			want: tally{deliveries: 4}},
		{name: "failed publish delivered anyway is unverified", published: 3, failed: []int64{1}, steps: ev(0, 1, 2), final: 2,
			want: tally{deliveries: 3, unverified: 1}},
		{name: "failed publish at the end", published: 4, failed: []int64{3}, steps: ev(0, 1, 2), final: 2,
			want: tally{deliveries: 3}},
		{name: "gap reported: skipped events are gap losses", published: 6,
			steps: []step{{seq: 0}, {seq: 1}, {gap: true}, {seq: 4}, {seq: 5}}, final: 5,
			want: tally{deliveries: 4, gapLost: 2}},
		{name: "gap only covers the next jump", published: 8,
			steps: []step{{seq: 0}, {gap: true}, {seq: 2}, {seq: 3}, {seq: 5}, {seq: 6}, {seq: 7}}, final: 7,
			want: tally{deliveries: 6, gapLost: 1, lost: 1}},
		{name: "gap pending at the end", published: 5,
			steps: []step{{seq: 0}, {gap: true}}, final: 4,
			want: tally{deliveries: 1, gapLost: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := new(pubLog)
			failed := make(map[int64]bool)
			for _, s := range tt.failed {
				failed[s] = true
			}
			for range tt.base {
				seq, _ := log.begin()
				log.record(seq, idOrFailed(seq, failed))
			}
			s := newSlot(log)
			s.open(false)
			for log.started.Load() < int64(tt.published) {
				seq, _ := log.begin()
				log.record(seq, idOrFailed(seq, failed))
			}
			var got tally
			for _, st := range tt.steps {
				if st.gap {
					got.gaps++
					s.gapPending = true
					continue
				}
				id := st.id
				if id == "" {
					id = idOf(st.seq).String()
				}
				s.event(&got, st.seq, []byte(id))
			}
			if tt.final >= 0 {
				s.tail(&got, tt.final)
			}
			tt.want.gaps = got.gaps
			if got != tt.want {
				t.Errorf("tally = %+v\nwant    %+v", got, tt.want)
			}
		})
	}
}

func idOrFailed(seq int64, failed map[int64]bool) pubsub.ID {
	if failed[seq] {
		return pubsub.ID{}
	}
	return idOf(seq)
}

// An event can reach a client before the publisher has recorded its ID:
// the comparison waits for the next event or the end, not the client.
func TestSlotPendingID(t *testing.T) {
	tests := []struct {
		name string
		id1  string // ID the client sees for seq 1, published late
		end  bool   // settle at the end rather than by a next event
		rec  bool   // the publisher records seq 1 before settling
		want tally
	}{
		{name: "recorded by the next event", id1: idOf(1).String(), rec: true, want: tally{deliveries: 3}},
		{name: "recorded by the end", id1: idOf(1).String(), rec: true, end: true, want: tally{deliveries: 2}},
		{name: "wrong ID found late", id1: "1-1", rec: true, want: tally{deliveries: 3, mismatch: 1}},
		{name: "never recorded", id1: idOf(1).String(), end: true, want: tally{deliveries: 2, unverified: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := new(pubLog)
			s := newSlot(log)
			s.open(false)
			for range 2 {
				seq, _ := log.begin()
				if seq == 0 {
					log.record(seq, idOf(seq))
				}
			}
			var got tally
			s.event(&got, 0, []byte(idOf(0).String()))
			s.event(&got, 1, []byte(tt.id1)) // not recorded yet
			if tt.rec {
				log.record(1, idOf(1))
			}
			if tt.end {
				s.finish(&got)
			} else {
				seq, _ := log.begin()
				log.record(seq, idOf(seq))
				s.event(&got, 2, []byte(idOf(2).String()))
				s.finish(&got)
			}
			if got != tt.want {
				t.Errorf("tally = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPubLogChunks(t *testing.T) {
	log := new(pubLog)
	for range 3*logChunk + 5 {
		seq, err := log.begin()
		if err != nil {
			t.Fatal(err)
		}
		log.record(seq, idOf(seq))
	}
	for _, s := range []int64{0, logChunk - 1, logChunk, 3*logChunk + 4} {
		if id, ok := log.at(s); !ok || id != idOf(s) {
			t.Errorf("at(%d) = %v, %v", s, id, ok)
		}
	}
	if got := log.lastGood(); got != 3*logChunk+4 {
		t.Errorf("lastGood = %d", got)
	}
	log.started.Store(MaxPublished)
	if _, err := log.begin(); err == nil {
		t.Error("begin past MaxPublished succeeded")
	}
}
