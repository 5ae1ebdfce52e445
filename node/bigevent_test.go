package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

// heapPeak samples the live heap until stop is called and returns the
// highest value seen.
func heapPeak() (stop func() uint64) {
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			rtmetrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(sample)
	return sample[0].Value.Uint64()
}

// TestBigEventFanoutHeap sends one 10 MiB event to many clients, an event
// ten times the per-client byte budget: every client gets it whole (an
// event larger than the budget is delivered alone into an empty queue),
// and the node holds it once, not once per client. It was 2.5 GiB of heap
// with a copy per hijacked client.
func TestBigEventFanoutHeap(t *testing.T) {
	const (
		clients = 200
		size    = 10 << 20
		// The broker's copy, the frame and the test's own payload are
		// ~30 MiB; a copy per client would be 2 GiB.
		maxGrowth = 64 << 20
	)
	tn := newTestNode(t, testOpts{cfg: Config{ClientBufferBytes: 1 << 20, WriteTimeout: time.Minute}})
	streams := make([]*sseClient, clients)
	for i := range streams {
		streams[i] = dial(t, tn.srv.URL+"/events?topic=big", "")
	}
	eventually(t, 30*time.Second, "every client subscribed", func() bool {
		return len(tn.subscribers("big")) == clients
	})
	payload := bytes.Repeat([]byte("x"), size)
	before := liveHeap()
	stop := heapPeak()
	if _, err := tn.broker.Publish(context.Background(), "big", "", payload); err != nil {
		t.Fatal(err)
	}
	payload = nil
	errs := make(chan error, clients)
	for _, c := range streams {
		go func() { errs <- readData(c, size) }()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	checkGrowth(t, fmt.Sprintf("delivering one %d MiB event to %d clients", size>>20, clients), before, stop(), maxGrowth)
}

// checkGrowth logs the heap's growth from before to peak while doing what,
// and fails the test beyond maxGrowth bytes.
func checkGrowth(t *testing.T, what string, before, peak uint64, maxGrowth int64) {
	t.Helper()
	growth := int64(peak) - int64(before)
	t.Logf("%s: heap %d MiB before, peak %d MiB, growth %d MiB", what, before>>20, peak>>20, growth>>20)
	if growth > maxGrowth {
		t.Errorf("heap grew by %d MiB %s, want at most %d MiB", growth>>20, what, maxGrowth>>20)
	}
}

// readData reads c's next event and checks that its data is n bytes of 'x',
// without keeping it.
func readData(c *sseClient, n int) error {
	line, err := c.r.ReadSlice('\n')
	for err == nil && !bytes.HasPrefix(line, []byte("data: ")) {
		line, err = c.r.ReadSlice('\n')
	}
	got := len(line) - len("data: ")
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = c.r.ReadSlice('\n')
		got += len(line)
	}
	if err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	if got--; got != n { // the line's \n
		return fmt.Errorf("got %d bytes of data, want %d", got, n)
	}
	return nil
}

// readLines reads c's next event and checks that it has n empty data
// lines, without keeping them.
func readLines(c *sseClient, n int) error {
	got := 0
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("read stream after %d data lines: %w", got, err)
		}
		switch {
		case bytes.HasPrefix(line, []byte("data:")):
			if len(bytes.TrimSpace(line[len("data:"):])) != 0 {
				return fmt.Errorf("data line %q, want an empty one", line)
			}
			got++
		case len(line) == 1 && got > 0:
			if got != n {
				return fmt.Errorf("got %d data lines, want %d", got, n)
			}
			return nil
		}
	}
}

// A replay is written whenever replayFlushBytes, or the client's smaller
// byte budget, have been gathered: a replay's frames are the client's own,
// so what waits for a client that does not read stays small. Each chunk of
// the hijacked wire is one write.
func TestReplayWritesByBytes(t *testing.T) {
	const size = 1000
	for _, budget := range []int{4 << 10, 1 << 20} {
		t.Run(fmt.Sprintf("budget %d", budget), func(t *testing.T) {
			flush := min(budget, replayFlushBytes)
			events := 4 * flush / size
			tn := newTestNode(t, testOpts{hijack: true, cfg: Config{ClientBufferBytes: budget, Heartbeat: time.Hour}})
			data := strings.Repeat("r", size)
			for range events {
				tn.publish(t, "rp", "", data)
			}
			c := rawHTTP(t, tn.srv.URL, "/events?topic=rp&lastEventId=0-0")
			if got := readChunk(t, c.br); got != "\n\n" {
				t.Fatalf("opening chunk = %q, want a blank line", got)
			}
			got, chunks := 0, 0
			for got < events {
				ch := readChunk(t, c.br)
				chunks++
				if len(ch) > flush+size+64 {
					t.Fatalf("replay chunk of %d bytes, want at most %d and one event", len(ch), flush)
				}
				got += strings.Count(ch, "data: ")
			}
			if want := events * size / (flush + size); got != events || chunks < want {
				t.Fatalf("%d events in %d chunks, want %d events in at least %d", got, chunks, events, want)
			}
		})
	}
}

// TestReplaySharesLargeFrames resumes many clients that do not read over
// one large entry made of line breaks, which encodes to seven times its
// size: the clients share one encoded frame. With a frame per replay it
// was 100 clients x 7 MiB.
func TestReplaySharesLargeFrames(t *testing.T) {
	const (
		clients   = 50
		size      = 1 << 20
		maxGrowth = 32 << 20
	)
	tn := newTestNode(t, testOpts{cfg: Config{WriteTimeout: time.Minute}})
	before := liveHeap()
	stop := heapPeak()
	tn.publish(t, "nl", "", strings.Repeat("\n", size))
	streams := make([]*sseClient, clients)
	for i := range streams {
		streams[i] = dial(t, tn.srv.URL+"/events?topic=nl", "0")
	}
	// The replays block in their writes of the frame, which no client
	// reads yet.
	eventually(t, 30*time.Second, "every client subscribed", func() bool {
		return len(tn.subscribers("nl")) == clients
	})
	for _, c := range streams {
		if err := readLines(c, size+1); err != nil {
			t.Fatal(err)
		}
	}
	checkGrowth(t, fmt.Sprintf("replaying one %d KiB entry of line breaks to %d clients", size>>10, clients), before, stop(), maxGrowth)
}
