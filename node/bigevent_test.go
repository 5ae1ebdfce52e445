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
	peak := stop()
	growth := int64(peak) - int64(before)
	t.Logf("%d clients, %d MiB event: heap %d MiB before, peak %d MiB, growth %d MiB",
		clients, size>>20, before>>20, peak>>20, growth>>20)
	if growth > maxGrowth {
		t.Errorf("heap grew by %d MiB delivering one %d MiB event to %d clients, want at most %d MiB",
			growth>>20, size>>20, clients, maxGrowth>>20)
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

// A replay is written whenever the client's byte budget has been gathered:
// what waits for a client is bounded in bytes, replay as live. The budget
// here holds four events; each chunk of the hijacked wire is one write.
func TestReplayWritesByBytes(t *testing.T) {
	const (
		events = 40
		budget = 4 << 10
	)
	tn := newTestNode(t, testOpts{hijack: true, cfg: Config{ClientBufferBytes: budget, Heartbeat: time.Hour}})
	data := strings.Repeat("r", 1000)
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
		if len(ch) > budget+len(data)+64 {
			t.Fatalf("replay chunk of %d bytes, want at most the budget (%d) and one event", len(ch), budget)
		}
		got += strings.Count(ch, "data: ")
	}
	if got != events || chunks < events*1000/(budget+1000) {
		t.Fatalf("%d events in %d chunks, want %d events in at least %d", got, chunks, events, events*1000/(budget+1000))
	}
}
