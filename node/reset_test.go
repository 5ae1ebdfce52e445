package node

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBrokerResetEndsTopicStreams: the broker's reset signal (the Handler
// called with no entries) ends every local stream of the topic, whatever
// its other topics, as a slow client is ended, so that clients resume with
// their Last-Event-ID; streams of other topics go on.
func TestBrokerResetEndsTopicStreams(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	one := dial(t, tn.srv.URL+"/events?topic=t", "")
	both := dial(t, tn.srv.URL+"/events?topic=t&topic=u", "")
	other := dial(t, tn.srv.URL+"/events?topic=u", "")
	eventually(t, 10*time.Second, "three streams", func() bool { return tn.Connections() == 3 })
	id1 := tn.publish(t, "t", "", "one")
	if e := one.next(t); e.ID != id1.String() {
		t.Fatalf("live event %+v, want id %s", e, id1)
	}
	both.next(t)

	tn.deliver("t", nil)
	for name, c := range map[string]*sseClient{"topic t": one, "topics t and u": both} {
		if err := endsWithin(c, 10*time.Second); err != nil {
			t.Errorf("stream of %s after reset: %v", name, err)
		}
	}
	id2 := tn.publish(t, "u", "", "two")
	if e := other.next(t); e.ID != id2.String() {
		t.Fatalf("stream of topic u after reset of t: %+v, want id %s", e, id2)
	}
	if got := testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues(reasonStreamReset)); got != 2 {
		t.Errorf("slow disconnects by %s = %v, want 2", reasonStreamReset, got)
	}

	// The client resumes where it was and loses nothing.
	again := dial(t, tn.srv.URL+"/events?topic=t", id1.String())
	id3 := tn.publish(t, "t", "", "three")
	if e := again.next(t); e.ID != id3.String() {
		t.Fatalf("resumed stream: %+v, want id %s", e, id3)
	}
}

// endsWithin reads c until its stream ends, or fails after d (closing c so
// that the read returns).
func endsWithin(c *sseClient, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := c.nextErr(); err != nil {
				done <- nil
				return
			}
		}
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		c.close()
		<-done
		return errNotEnded
	}
}

var errNotEnded = errors.New("the stream did not end")
