package node

import "time"

// step is a stream writer's one decision, the same on both drivers (the
// writer pool of hijacked HTTP/1.1 streams, and the request goroutine of a
// net/http stream): end the stream (drain, closeStream, a queue overflow),
// or gather into w what to write next: the queued frames, by reference, or
// a heartbeat when one is due and nothing else goes out. It returns why
// the stream must end, or ""; then w.size > 0 means there is a write to
// make. batch is scratch for the queue's frames, returned for reuse.
func (n *Node) step(c *client, w *wire, batch []*frame, heartbeatDue bool) (string, []*frame) {
	// A server-side end aborts the connection (see closeStream), so every
	// client library reconnects.
	if n.draining.Load() {
		return reasonDrain, batch
	}
	if reason := c.ending(); reason != "" {
		return reason, batch
	}
	batch, closed, why := c.q.take(batch[:0])
	if closed {
		n.m.slowDisconnects.WithLabelValues(why.reason()).Inc()
		return reasonSlowClient, batch
	}
	if len(batch) > 0 {
		n.m.queueDepth.Observe(float64(len(batch)))
		for _, f := range batch {
			c.gather(w, f)
		}
		clear(batch)
	}
	if w.events == 0 {
		w.reset() // frames whose events the client had from replay
		if heartbeatDue {
			w.ref(heartbeat)
		}
	}
	return "", batch
}

// wrote records a write of sent events that began at start.
func (n *Node) wrote(start time.Time, sent int) {
	if sent > 0 {
		n.m.flush.Observe(time.Since(start).Seconds())
		n.m.delivered.Add(float64(sent))
	}
}
