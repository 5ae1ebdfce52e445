package replay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestFlightShares(t *testing.T) {
	var f flight[string, int]
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) (int, error) {
		calls.Add(1)
		<-release
		return 42, nil
	}
	var wg sync.WaitGroup
	results := make([]int, 50)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _ = f.do(context.Background(), "k", fn)
		}()
	}
	waitFor(t, "49 followers", func() bool { return f.waiting("k") == 49 })
	close(release)
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("%d calls", calls.Load())
	}
	for i, r := range results {
		if r != 42 {
			t.Fatalf("caller %d got %d", i, r)
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("calls left: %v", f.calls)
	}
	// A later call runs again: results are not cached.
	if v, _ := f.do(context.Background(), "k", func(context.Context) (int, error) { return 7, nil }); v != 7 {
		t.Errorf("second round got %d", v)
	}
}

func TestFlightLeaderCanceled(t *testing.T) {
	var f flight[string, int]
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	leaderErr := make(chan error, 1)
	go func() {
		_, err := f.do(ctx, "k", func(ctx context.Context) (int, error) {
			close(started)
			<-ctx.Done()
			return 0, ctx.Err()
		})
		leaderErr <- err
	}()
	<-started
	followerDone := make(chan int, 1)
	go func() {
		v, err := f.do(context.Background(), "k", func(context.Context) (int, error) { return 9, nil })
		if err != nil {
			t.Error(err)
		}
		followerDone <- v
	}()
	waitFor(t, "the follower", func() bool { return f.waiting("k") == 1 })
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	if v := <-followerDone; v != 9 {
		t.Fatalf("follower got %d: it did not retry after the leader left", v)
	}
}

func TestFlightFollowerCanceledAndErrorsShared(t *testing.T) {
	var f flight[string, int]
	errDown := errors.New("down")
	release := make(chan struct{})
	leaderErr := make(chan error, 1)
	go func() {
		_, err := f.do(context.Background(), "k", func(context.Context) (int, error) {
			<-release
			return 0, errDown
		})
		leaderErr <- err
	}()
	waitFor(t, "the leader", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.calls) == 1
	})
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() { _, err := f.do(ctx, "k", nil); gone <- err }()
	shared := make(chan error, 1)
	go func() { _, err := f.do(context.Background(), "k", nil); shared <- err }()
	waitFor(t, "two followers", func() bool { return f.waiting("k") == 2 })
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled follower: %v", err)
	}
	if n := f.waiting("k"); n != 1 {
		t.Errorf("%d waiting after one follower left", n)
	}
	close(release)
	if err := <-leaderErr; !errors.Is(err, errDown) {
		t.Fatal(err)
	}
	if err := <-shared; !errors.Is(err, errDown) {
		t.Fatalf("follower: %v, want the leader's error", err)
	}
}

func TestFlightPanic(t *testing.T) {
	var f flight[string, int]
	inside := make(chan struct{})
	release := make(chan struct{})
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = f.do(context.Background(), "k", func(context.Context) (int, error) {
			close(inside)
			<-release
			panic("boom")
		})
	}()
	<-inside
	follower := make(chan error, 1)
	go func() { _, err := f.do(context.Background(), "k", nil); follower <- err }()
	waitFor(t, "the follower", func() bool { return f.waiting("k") == 1 })
	close(release)
	if p := <-panicked; p != "boom" {
		t.Fatalf("leader recovered %v", p)
	}
	if err := <-follower; !errors.Is(err, errSourcePanicked) {
		t.Fatalf("follower: %v", err)
	}
}
