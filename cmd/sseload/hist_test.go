package main

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestHistBuckets(t *testing.T) {
	// Every value lands in a bucket whose bounds hold it, buckets are
	// contiguous, and a bucket is at most 1/32 of its values wide.
	prevUpper := int64(-1)
	for i := range histBuckets {
		up := histUpper(i)
		if up <= prevUpper {
			t.Fatalf("bucket %d upper %d not above bucket %d's %d", i, up, i-1, prevUpper)
		}
		low := prevUpper + 1
		if got := histBucket(low); got != i {
			t.Fatalf("histBucket(%d) = %d, want %d", low, got, i)
		}
		if got := histBucket(up); got != i {
			t.Fatalf("histBucket(%d) = %d, want %d", up, got, i)
		}
		if low >= histSub && float64(up-low+1) > float64(low)/histSub+1 {
			t.Fatalf("bucket %d [%d,%d] wider than 1/32 of its values", i, low, up)
		}
		prevUpper = up
	}
	if top := time.Duration(histUpper(histBuckets - 1)); top < 60*time.Second {
		t.Errorf("histogram tops out at %v, want at least 60s", top)
	}
	for _, v := range []int64{-5, 0} {
		if got := histBucket(v); got != 0 {
			t.Errorf("histBucket(%d) = %d, want 0", v, got)
		}
	}
	if got := histBucket(int64(time.Hour)); got != histBuckets-1 {
		t.Errorf("histBucket(1h) = %d, want the last bucket", got)
	}
}

func TestHistQuantiles(t *testing.T) {
	tests := []struct {
		name   string
		values []time.Duration
		q      map[float64]time.Duration
		max    time.Duration
	}{
		{name: "empty", q: map[float64]time.Duration{0.5: 0, 0.99: 0}},
		{
			name:   "one value",
			values: []time.Duration{3 * time.Millisecond},
			q:      map[float64]time.Duration{0.5: 3 * time.Millisecond, 0.999: 3 * time.Millisecond},
			max:    3 * time.Millisecond,
		},
		{
			name:   "1..1000 ms",
			values: seqDurations(1000, time.Millisecond),
			q: map[float64]time.Duration{
				0.5: 500 * time.Millisecond, 0.9: 900 * time.Millisecond,
				0.99: 990 * time.Millisecond, 0.999: 999 * time.Millisecond, 1: 1000 * time.Millisecond,
			},
			max: time.Second,
		},
		{
			name:   "tail of 1% slow",
			values: append(repeat(99, time.Millisecond), 2*time.Second),
			q:      map[float64]time.Duration{0.5: time.Millisecond, 0.99: time.Millisecond, 0.999: 2 * time.Second},
			max:    2 * time.Second,
		},
		{
			name:   "beyond the top is clamped, max exact",
			values: []time.Duration{2 * time.Minute},
			q:      map[float64]time.Duration{0.5: 2 * time.Minute},
			max:    2 * time.Minute,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			// Shuffled, and over shards, as clients record.
			vs := append([]time.Duration(nil), tt.values...)
			rand.Shuffle(len(vs), func(i, j int) { vs[i], vs[j] = vs[j], vs[i] })
			for i, v := range vs {
				h.Record(i, int64(v))
			}
			s := h.Snapshot()
			if s.Count() != uint64(len(vs)) {
				t.Errorf("count = %d, want %d", s.Count(), len(vs))
			}
			if s.Max() != tt.max {
				t.Errorf("max = %v, want %v", s.Max(), tt.max)
			}
			for q, want := range tt.q {
				got := s.Quantile(q)
				// The bucket's upper bound: at most 1/32 above, never below.
				if got < want || float64(got) > float64(want)*(1+1.0/histSub)+1 {
					t.Errorf("q%v = %v, want %v (+3%%)", q, got, want)
				}
			}
		})
	}
}

func seqDurations(n int, unit time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * unit
	}
	return out
}

func repeat(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func TestHistConcurrent(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				h.Record(g, int64(i+1)*int64(time.Microsecond))
			}
		})
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Count() != 8000 || s.Max() != time.Millisecond {
		t.Errorf("count %d max %v, want 8000 and 1ms", s.Count(), s.Max())
	}
}

func TestHistRecordNoAllocs(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(100, func() { h.Record(3, 12345) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}
