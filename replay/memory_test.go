package replay

import (
	"context"
	"fmt"
	"testing"

	"github.com/ssecluster/ssecluster/pubsub"
)

var _ Source = (*pubsub.Memory)(nil)

// TestWindowOverMemoryBroker runs the window over the real embedded broker:
// live appends, ring replay, paged source replay and a trimmed-away gap.
func TestWindowOverMemoryBroker(t *testing.T) {
	ctx := context.Background()
	b, err := pubsub.NewMemory(pubsub.MemoryConfig{MaxLen: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	w := newWindow(t, b, Config{RingSize: 20, PageSize: 7})
	if err := b.Start(func(topic string, entries []pubsub.Entry) { w.Append(topic, entries) }); err != nil {
		t.Fatal(err)
	}
	var ids []pubsub.ID
	publish := func(n int) {
		for range n {
			id, err := b.Publish(ctx, "t", "", []byte(fmt.Sprint(len(ids))))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
	}
	publish(150) // 0..49 trimmed, 50..149 held
	acquire(t, w, "t")
	publish(10)
	waitFor(t, "live delivery", func() bool { last, _ := w.Last("t"); return last == ids[len(ids)-1] })

	replay := func(after pubsub.ID) (data []string, gaps []Gap, res Result) {
		t.Helper()
		res, err := w.Replay(ctx, "t", after,
			func(g Gap) error { gaps = append(gaps, g); return nil },
			func(e pubsub.Entry) error { data = append(data, string(e.Data)); return nil })
		if err != nil {
			t.Fatal(err)
		}
		return data, gaps, res
	}
	check := func(name string, after pubsub.ID, from int, wantGaps int, wantFrom From) {
		t.Helper()
		data, gaps, res := replay(after)
		if len(data) != len(ids)-from || len(gaps) != wantGaps || res.From != wantFrom {
			t.Fatalf("%s: %d entries, %d gaps, from %s; want %d, %d, %s", name, len(data), len(gaps), res.From, len(ids)-from, wantGaps, wantFrom)
		}
		for i, d := range data {
			if d != fmt.Sprint(from+i) {
				t.Fatalf("%s: entry %d is %q, want %d", name, i, d, from+i)
			}
		}
	}
	check("ring", ids[150], 151, 0, FromRing)
	check("source then ring", ids[60], 61, 0, FromRedis)
	check("everything", pubsub.ID{}, 60, 1, FromRedis) // 0-0: the trimmed entries are a gap
	check("trimmed", ids[10], 60, 1, FromRedis)
	_, gaps, _ := replay(ids[10])
	if gaps[0].Requested != ids[10] || gaps[0].Oldest != ids[60] {
		t.Errorf("gap %+v, want requested %s oldest %s", gaps[0], ids[10], ids[60])
	}
}
