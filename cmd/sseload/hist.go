package main

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout, HDR-like: values below 2^histSubBits ns get a bucket
// each; above that every power of two is split in 2^histSubBits buckets, so
// a bucket is at most 1/32 (3%) of its value wide. 1024 buckets reach
// 2^36 ns (68.7 s); larger values land in the last bucket (max is exact).
const (
	histSubBits = 5
	histSub     = 1 << histSubBits
	histBuckets = 1024
	// histShards spreads concurrent recorders over separate counter arrays
	// so that two cores rarely write the same cache line.
	histShards = 16
)

// Histogram counts durations in fixed log-scaled buckets with atomic
// counters: recording never allocates and never locks.
type Histogram struct {
	shards [histShards]struct {
		b [histBuckets]atomic.Uint64
	}
	max atomic.Int64
}

// histBucket is the bucket of a value in nanoseconds.
func histBucket(v int64) int {
	if v < histSub {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 1 // top bit
	sub := int(uint64(v)>>(e-histSubBits)) - histSub
	i := (e-histSubBits+1)*histSub + sub
	return min(i, histBuckets-1)
}

// histUpper is the largest value that falls in bucket i.
func histUpper(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	e := i/histSub + histSubBits - 1
	sub := i % histSub
	low := int64(histSub+sub) << (e - histSubBits)
	return low + int64(1)<<(e-histSubBits) - 1
}

// Record counts one duration of ns nanoseconds; shard is any number that
// tends to differ between concurrent callers (a client index).
func (h *Histogram) Record(shard int, ns int64) {
	h.shards[uint(shard)%histShards].b[histBucket(ns)].Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			return
		}
	}
}

// HistSnapshot is a merged copy of a Histogram's counters.
type HistSnapshot struct {
	counts [histBuckets]uint64
	total  uint64
	max    int64
}

// Snapshot merges the shards. Concurrent records may or may not be included.
func (h *Histogram) Snapshot() *HistSnapshot {
	s := &HistSnapshot{max: h.max.Load()}
	for i := range h.shards {
		for j := range h.shards[i].b {
			if n := h.shards[i].b[j].Load(); n > 0 {
				s.counts[j] += n
				s.total += n
			}
		}
	}
	return s
}

// Count is the number of recorded values.
func (s *HistSnapshot) Count() uint64 { return s.total }

// Max is the largest recorded value.
func (s *HistSnapshot) Max() time.Duration { return time.Duration(s.max) }

// Quantile returns the value at quantile q (0..1): the upper bound of the
// bucket holding the ceil(q*count)-th smallest value, never above the
// maximum (the maximum itself in the last, open-ended bucket). Zero when
// empty.
func (s *HistSnapshot) Quantile(q float64) time.Duration {
	if s.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.total)))
	rank = min(max(rank, 1), s.total)
	var cum uint64
	for i, n := range s.counts {
		cum += n
		if cum >= rank {
			if i == histBuckets-1 {
				return time.Duration(s.max) // the last bucket is open-ended
			}
			return time.Duration(min(histUpper(i), s.max))
		}
	}
	return time.Duration(s.max)
}

// LatencyReport is the JSON form of a latency histogram, in milliseconds.
type LatencyReport struct {
	Count  uint64  `json:"count"`
	P50ms  float64 `json:"p50_ms"`
	P90ms  float64 `json:"p90_ms"`
	P99ms  float64 `json:"p99_ms"`
	P999ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func (s *HistSnapshot) report() LatencyReport {
	return LatencyReport{
		Count:  s.total,
		P50ms:  ms(s.Quantile(0.50)),
		P90ms:  ms(s.Quantile(0.90)),
		P99ms:  ms(s.Quantile(0.99)),
		P999ms: ms(s.Quantile(0.999)),
		MaxMs:  ms(s.Max()),
	}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
