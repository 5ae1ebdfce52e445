package node

import (
	"hash/maphash"
	"sync"
)

// hubShards spreads topics over independent locks, so that subscribing to
// one topic never waits for the fan-out of another.
const hubShards = 64

// hub is the local registry of subscribers by topic. Fan-out holds a
// shard's read lock while it hands a frame to each queue; queues never
// block, so the lock is held for a bounded time.
type hub struct {
	seed   maphash.Seed // immutable
	shards [hubShards]hubShard
}

type hubShard struct {
	mu     sync.RWMutex
	topics map[string]*topicSubs
}

type topicSubs struct {
	subs []*stream
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].topics = make(map[string]*topicSubs)
	}
	return h
}

func (h *hub) shard(topic string) *hubShard {
	return &h.shards[maphash.String(h.seed, topic)%hubShards]
}

// subscribe registers c under each of its topics.
func (h *hub) subscribe(c *stream) {
	for i, t := range c.topics {
		s := h.shard(t)
		s.mu.Lock()
		ts := s.topics[t]
		if ts == nil {
			ts = &topicSubs{}
			s.topics[t] = ts
		}
		c.slots[i] = len(ts.subs)
		ts.subs = append(ts.subs, c)
		s.mu.Unlock()
	}
}

// unsubscribe removes c from each of its topics. After it returns no
// fan-out will push to c's queue again.
func (h *hub) unsubscribe(c *stream) {
	for i, t := range c.topics {
		s := h.shard(t)
		s.mu.Lock()
		ts := s.topics[t]
		last := len(ts.subs) - 1
		at := c.slots[i]
		if at != last {
			moved := ts.subs[last]
			ts.subs[at] = moved
			moved.slots[moved.topicIndex(t)] = at
		}
		ts.subs[last] = nil
		ts.subs = ts.subs[:last]
		if last == 0 {
			delete(s.topics, t)
		} else if cap(ts.subs) > 64 && len(ts.subs) < cap(ts.subs)/4 {
			// Give memory back after a crowd has left.
			ts.subs = append([]*stream(nil), ts.subs...)
		}
		s.mu.Unlock()
	}
}

// fanout hands every frame to every subscriber of topic without blocking,
// all of them to one subscriber before the next (queue.pushAll), so that a
// subscriber's writer finds the whole batch when it wakes. The caller
// keeps its own reference to each frame. refused is called for every
// frame a queue did not take. It returns how many queues took each frame,
// on average.
func (h *hub) fanout(topic string, frames []*frame, refused func(*stream, overflow)) (delivered int) {
	s := h.shard(topic)
	s.mu.RLock()
	defer s.mu.RUnlock()
	ts := s.topics[topic]
	if ts == nil {
		return 0
	}
	// One atomic add per frame for all subscribers; a refusal gives its
	// reference back: the cost per subscriber is the queue push alone.
	for _, f := range frames {
		f.retain(int32(len(ts.subs)))
	}
	for _, c := range ts.subs {
		delivered += c.q.pushAll(frames, func(f *frame, o overflow) {
			f.refs.Add(-1)
			if o != queueClosed {
				refused(c, o)
			}
		})
	}
	return delivered / max(1, len(frames))
}

// subscribers returns the subscribers of topic, appended to dst.
func (h *hub) subscribers(dst []*stream, topic string) []*stream {
	s := h.shard(topic)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if ts := s.topics[topic]; ts != nil {
		dst = append(dst, ts.subs...)
	}
	return dst
}
