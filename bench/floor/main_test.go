package main

import (
	"os"
	"slices"
	"testing"
)

// TestMain lets the test binary play the fan-out's reading process, which
// fanout starts as its own executable with -reader.
func TestMain(m *testing.M) {
	if slices.Contains(os.Args[1:], "-reader") {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestPerMessage(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		d, err := perMessage(network, 150)
		if err != nil {
			t.Fatalf("perMessage(%s): %v", network, err)
		}
		if d <= 0 {
			t.Fatalf("perMessage(%s) = %v, want > 0", network, d)
		}
	}
}

func TestFanoutReadsEveryMessage(t *testing.T) {
	f, err := fanout(50, 150, 50, 4, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if f.writers < 1 || f.p50 <= 0 || f.p99 < f.p50 || f.max < f.p99 || f.writerUs < 0 || f.readerUs < 0 {
		t.Fatalf("fanout = %+v, want 0 < p50 <= p99 <= max, writers >= 1 and CPU times >= 0", f)
	}
	// Each message's wait from its round's start is part of its wait from
	// the time the round was due.
	if f.startP50 <= 0 || f.startP50 > f.p50 || f.startP99 > f.p99 || f.roundsPerS <= 0 || f.late < 0 || f.late > 4 {
		t.Fatalf("fanout = %+v, want 0 < start_p50 <= p50, start_p99 <= p99, a rate, 0 to 4 late rounds", f)
	}
}
