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
}
