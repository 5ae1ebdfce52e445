package replay

import (
	"context"
	"errors"
	"sync"
)

// errSourcePanicked is what the followers of a source call see when the
// call panicked in its leader (the panic itself goes on up the leader).
var errSourcePanicked = errors.New("replay: source call panicked")

// flight merges concurrent calls with the same key into one: the first
// caller (the leader) runs fn with its own context, the others wait for its
// result. Results are shared, so callers treat them as read-only. It starts
// no goroutine. The zero value is ready to use.
type flight[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*flightCall[V] // calls in progress, guarded by mu
}

type flightCall[V any] struct {
	done    chan struct{} // closed when val and err are final
	waiters int           // followers waiting, guarded by flight.mu
	val     V
	err     error
	// abandoned means the leader's context ended during the call, so its
	// error says nothing about the source: followers try again.
	abandoned bool
}

// do returns fn's result for key, running fn at most once among concurrent
// callers. A follower whose ctx ends stops waiting with ctx's error.
func (f *flight[K, V]) do(ctx context.Context, key K, fn func(context.Context) (V, error)) (V, error) {
	for {
		f.mu.Lock()
		if c, ok := f.calls[key]; ok {
			c.waiters++
			f.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				f.mu.Lock()
				c.waiters--
				f.mu.Unlock()
				var zero V
				return zero, ctx.Err()
			}
			if c.abandoned && ctx.Err() == nil {
				continue // become or follow a new leader
			}
			return c.val, c.err
		}
		if f.calls == nil {
			f.calls = make(map[K]*flightCall[V])
		}
		c := &flightCall[V]{done: make(chan struct{})}
		f.calls[key] = c
		f.mu.Unlock()
		f.lead(ctx, key, c, fn)
		return c.val, c.err
	}
}

// lead runs fn for c and publishes the result, even if fn panics.
func (f *flight[K, V]) lead(ctx context.Context, key K, c *flightCall[V], fn func(context.Context) (V, error)) {
	c.err = errSourcePanicked
	defer func() {
		f.mu.Lock()
		delete(f.calls, key)
		f.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn(ctx)
	c.abandoned = c.err != nil && ctx.Err() != nil
}

// waiting returns how many followers wait on the call in progress for key
// (0 if none); for tests.
func (f *flight[K, V]) waiting(key K) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.calls[key]; ok {
		return c.waiters
	}
	return 0
}
