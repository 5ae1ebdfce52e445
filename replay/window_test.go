package replay

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewConfig(t *testing.T) {
	tests := []struct {
		name    string
		src     Source
		cfg     Config
		errPart string
	}{
		{name: "defaults", src: newFake()},
		{name: "all set", src: newFake(), cfg: Config{RingSize: 1, PageSize: 1, MaxAge: time.Second, Now: time.Now}},
		{name: "nil source", errPart: "nil Source"},
		{name: "negative ring", src: newFake(), cfg: Config{RingSize: -1}, errPart: "RingSize -1"},
		{name: "negative page", src: newFake(), cfg: Config{PageSize: -2}, errPart: "PageSize -2"},
		{name: "negative age", src: newFake(), cfg: Config{MaxAge: -time.Second}, errPart: "MaxAge -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New(tt.src, tt.cfg)
			if tt.errPart != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errPart) {
					t.Fatalf("New: %v, want error naming %q", err, tt.errPart)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.ringSize <= 0 || w.pageSize <= 0 || w.now == nil {
				t.Errorf("defaults not applied: %+v", w)
			}
			if tt.name == "defaults" && (w.ringSize != defaultRingSize || w.pageSize != defaultPageSize) {
				t.Errorf("ring %d page %d, want defaults", w.ringSize, w.pageSize)
			}
		})
	}
}

func TestAcquireReleaseRefcount(t *testing.T) {
	src := newFake()
	src.add("t", 1, 3)
	w := newWindow(t, src, Config{})
	ctx := context.Background()
	for range 3 {
		if err := w.Acquire(ctx, "t"); err != nil {
			t.Fatal(err)
		}
	}
	if src.watches.Load() != 1 {
		t.Fatalf("%d Watch calls for 3 Acquires", src.watches.Load())
	}
	w.Release("t")
	w.Release("t")
	if _, ok := w.Last("t"); !ok || src.unwatches.Load() != 0 {
		t.Fatalf("topic inactive or unwatched with one subscriber left")
	}
	w.Release("t")
	if _, ok := w.Last("t"); ok || src.unwatches.Load() != 1 {
		t.Fatalf("topic still active after the last Release (%d Unwatch)", src.unwatches.Load())
	}
	w.Release("t") // unbalanced: a no-op
	w.Release("never")
	if src.unwatches.Load() != 1 {
		t.Fatalf("unbalanced Release called Unwatch")
	}
}

// TestAcquireReleaseConcurrent hammers a few topics from many goroutines
// with a slow fake and checks Watch/Unwatch never overlap for a topic and
// always pair up.
func TestAcquireReleaseConcurrent(t *testing.T) {
	src := newFake()
	topics := []string{"a", "b", "c"}
	for _, tp := range topics {
		src.add(tp, 1, 10)
	}
	yield := func() {
		for range 3 {
			runtime.Gosched()
		}
	}
	src.onWatch = func(context.Context, string) { yield() }
	src.onUnwatch = func(string) { yield() }
	w := newWindow(t, src, Config{RingSize: 8})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				tp := topics[r.IntN(len(topics))]
				if err := w.Acquire(context.Background(), tp); err != nil {
					t.Error(err)
					return
				}
				w.Append(tp, entries(11, 11))
				if _, ok := w.Last(tp); !ok {
					t.Errorf("Last(%q) not ok while held", tp)
				}
				if r.IntN(2) == 0 {
					runtime.Gosched()
				}
				w.Release(tp)
			}
		}()
	}
	wg.Wait()
	if src.overlap.Load() {
		t.Error("Watch/Unwatch calls overlapped for a topic")
	}
	if wa, un := src.watches.Load(), src.unwatches.Load(); wa != un || wa == 0 {
		t.Errorf("%d Watch and %d Unwatch calls", wa, un)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.topics) != 0 {
		t.Errorf("topics left after every Release: %v", w.topics)
	}
}

func TestAcquireWatchError(t *testing.T) {
	src := newFake()
	errDown := errors.New("redis down")
	src.watchErr = errDown
	w := newWindow(t, src, Config{})
	err := w.Acquire(context.Background(), "t")
	if !errors.Is(err, errDown) || !strings.Contains(err.Error(), `"t"`) {
		t.Fatalf("Acquire: %v, want wrapped %v naming the topic", err, errDown)
	}
	if _, ok := w.Last("t"); ok {
		t.Fatal("topic active after a failed Watch")
	}
	w.Release("t") // nothing held: must not Unwatch
	if src.unwatches.Load() != 0 {
		t.Fatal("Unwatch after a failed Watch")
	}
	src.watchErr = nil
	acquire(t, w, "t")
}

// loadGate makes the fake's Watch block until released, and reports when
// a Watch has started.
type loadGate struct {
	started chan string
	release chan struct{}
}

func newLoadGate(src *fakeSource) *loadGate {
	g := &loadGate{started: make(chan string, 16), release: make(chan struct{})}
	src.onWatch = func(ctx context.Context, topic string) {
		g.started <- topic
		select {
		case <-g.release:
		case <-ctx.Done():
		}
	}
	return g
}

func TestAcquireWaitsForLoad(t *testing.T) {
	src := newFake()
	src.add("t", 1, 3)
	gate := newLoadGate(src)
	w := newWindow(t, src, Config{})
	errs := make(chan error, 10)
	for range 10 {
		go func() { errs <- w.Acquire(context.Background(), "t") }()
	}
	<-gate.started
	waitFor(t, "9 waiters", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.topics["t"].refs == 10
	})
	select {
	case err := <-errs:
		t.Fatalf("an Acquire returned (%v) while the load was in flight", err)
	default:
	}
	close(gate.release)
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if src.watches.Load() != 1 {
		t.Errorf("%d Watch calls", src.watches.Load())
	}
	for range 10 {
		w.Release("t")
	}
	if src.unwatches.Load() != 1 {
		t.Errorf("%d Unwatch calls", src.unwatches.Load())
	}
}

func TestAcquireWaiterCanceled(t *testing.T) {
	src := newFake()
	gate := newLoadGate(src)
	w := newWindow(t, src, Config{})
	loaded := make(chan error, 1)
	go func() { loaded <- w.Acquire(context.Background(), "t") }()
	<-gate.started
	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() { waited <- w.Acquire(ctx, "t") }()
	waitFor(t, "the waiter", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.topics["t"].refs == 2
	})
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter: %v", err)
	}
	close(gate.release)
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	w.Release("t") // the loader's only: the waiter's ref was dropped
	if src.unwatches.Load() != 1 {
		t.Fatalf("%d Unwatch calls after the only holder released", src.unwatches.Load())
	}
}

func TestAcquireLoaderCanceledWaitersRetry(t *testing.T) {
	src := newFake()
	gate := newLoadGate(src)
	w := newWindow(t, src, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	loaded := make(chan error, 1)
	go func() { loaded <- w.Acquire(ctx, "t") }()
	<-gate.started
	waited := make(chan error, 1)
	go func() { waited <- w.Acquire(context.Background(), "t") }()
	waitFor(t, "the waiter", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.topics["t"].refs == 2
	})
	cancel() // the loader's Watch returns ctx's error
	if err := <-loaded; !errors.Is(err, context.Canceled) {
		t.Fatalf("loader: %v", err)
	}
	<-gate.started // the waiter loads again itself
	close(gate.release)
	if err := <-waited; err != nil {
		t.Fatalf("waiter did not retry: %v", err)
	}
	if src.watches.Load() != 2 {
		t.Errorf("%d Watch calls, want 2", src.watches.Load())
	}
	w.Release("t")
}

func TestAcquireWaitsForUnwatch(t *testing.T) {
	src := newFake()
	inUnwatch := make(chan struct{})
	finish := make(chan struct{})
	src.onUnwatch = func(string) {
		close(inUnwatch)
		<-finish
	}
	w := newWindow(t, src, Config{})
	if err := w.Acquire(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() { w.Release("t"); close(released) }()
	<-inUnwatch
	acquired := make(chan error, 1)
	go func() { acquired <- w.Acquire(context.Background(), "t") }()
	// While Unwatch runs, the new Acquire must not Watch.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := w.Acquire(ctx, "t"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire during Unwatch: %v, want to wait until its deadline", err)
	}
	if n := src.watches.Load(); n != 1 {
		t.Fatalf("%d Watch calls while Unwatch was in flight", n)
	}
	close(finish)
	<-released
	if err := <-acquired; err != nil {
		t.Fatal(err)
	}
	if src.watches.Load() != 2 || src.overlap.Load() {
		t.Errorf("%d Watch calls, overlap %v", src.watches.Load(), src.overlap.Load())
	}
	src.onUnwatch = nil
	w.Release("t")
}

func TestReleaseDuringLoadWaits(t *testing.T) {
	// A Release that finds the topic loading (only possible when the caller
	// mismatches Acquire and Release) waits for the load before touching it,
	// so no Unwatch overlaps the Watch.
	src := newFake()
	gate := newLoadGate(src)
	w := newWindow(t, src, Config{})
	loaded := make(chan error, 1)
	go func() { loaded <- w.Acquire(context.Background(), "t") }()
	<-gate.started
	released := make(chan struct{})
	go func() { w.Release("t"); close(released) }()
	select {
	case <-released:
		t.Fatal("Release returned while the load was in flight")
	case <-time.After(10 * time.Millisecond):
	}
	close(gate.release)
	<-released
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	if src.overlap.Load() || src.unwatches.Load() != 1 {
		t.Errorf("overlap %v, %d Unwatch", src.overlap.Load(), src.unwatches.Load())
	}
}

func TestSourcePanicDoesNotWedge(t *testing.T) {
	src := newFake()
	w := newWindow(t, src, Config{})
	src.onWatch = func(context.Context, string) { panic("boom") }
	func() {
		defer func() { _ = recover() }()
		_ = w.Acquire(context.Background(), "t")
	}()
	src.onWatch = nil
	acquire(t, w, "t") // not stuck in loading
	if _, ok := w.Last("t"); !ok {
		t.Fatal("topic not active")
	}
}
