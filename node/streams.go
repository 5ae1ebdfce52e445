package node

import (
	"math/rand/v2"
	"sync"
)

// streamRegistry registers every open stream, whatever its driver (hijacked
// HTTP/1.1 or net/http), so that shedding and age limits reach them all.
// A stream is registered before its opening is written and removed by
// finish.
type streamRegistry struct {
	mu   sync.Mutex
	list []*stream
}

func (o *streamRegistry) add(c *stream) {
	o.mu.Lock()
	c.index = len(o.list)
	o.list = append(o.list, c)
	o.mu.Unlock()
}

func (o *streamRegistry) remove(c *stream) {
	o.mu.Lock()
	defer o.mu.Unlock()
	i := c.index
	if i < 0 || i >= len(o.list) || o.list[i] != c {
		return
	}
	last := len(o.list) - 1
	o.list[i] = o.list[last]
	o.list[i].index = i
	o.list[last] = nil
	o.list = o.list[:last]
	c.index = -1
	if cap(o.list) > 1024 && len(o.list) < cap(o.list)/4 {
		o.list = append([]*stream(nil), o.list...)
	}
}

// each calls f for every open stream, under the registry's lock (see the
// lock order in stream.go).
func (o *streamRegistry) each(f func(*stream)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.list {
		f(s)
	}
}

// all returns the open streams, appended to dst.
func (o *streamRegistry) all(dst []*stream) []*stream {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append(dst, o.list...)
}

// sample returns up to k open streams that hold a position, chosen at
// random.
func (o *streamRegistry) sample(k int) []*stream {
	o.mu.Lock()
	defer o.mu.Unlock()
	pick := make([]*stream, 0, min(k, len(o.list)))
	// A scan from a random start over a random stride prime to the length
	// visits every stream once, in an order that differs each time.
	if m := len(o.list); m > 0 {
		start, stride := rand.IntN(m), 1+rand.IntN(m)
		for gcd(stride, m) != 1 {
			stride++
		}
		for j := 0; j < m && len(pick) < k; j++ {
			if c := o.list[(start+j*stride)%m]; c.positioned.Load() {
				pick = append(pick, c)
			}
		}
	}
	return pick
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
