package node

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Close waits for the request goroutine of a hijacked stream still in its
// replay: when Close returns, that stream is closed and released, not left
// writing into a window and broker the caller is about to close.
func TestCloseWaitsForHijackedReplay(t *testing.T) {
	tn := newTestNode(t, testOpts{hijack: true, cfg: Config{
		WriteTimeout:     time.Minute,
		SocketSendBuffer: 16 << 10,
	}})
	data := strings.Repeat("c", 1<<10)
	for range 2000 {
		tn.publish(t, "cw", "", data)
	}
	// A client that asks for everything and reads nothing: the replay
	// blocks on a full socket, on the request goroutine.
	conn, _ := rawDial(t, strings.TrimPrefix(tn.srv.URL, "http://"))
	fmt.Fprintf(conn, "GET /events?topic=cw&lastEventId=0-0 HTTP/1.1\r\nHost: test\r\n\r\n")
	eventually(t, 10*time.Second, "the stream admitted", func() bool { return tn.Connections() == 1 })
	time.Sleep(100 * time.Millisecond) // let the replay fill the socket
	done := make(chan struct{})
	go func() {
		tn.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waiting 30s later")
	}
	if got := tn.Connections(); got != 0 {
		t.Fatalf("%d streams open after Close returned, want 0", got)
	}
}

// Start after Close refuses: it would start workers nobody stops.
func TestStartAfterClose(t *testing.T) {
	for _, noHijack := range []bool{false, true} {
		n := newBareNode(t, Config{NoHijack: noHijack})
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Start after Close = %v, want ErrClosed", err)
		}
	}
}

// newBareNode is a node over an in-memory broker, neither started nor
// served; the broker closes with the test.
func newBareNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	mem, err := pubsub.NewMemory(pubsub.MemoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	n, err := New(cfg, mem)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A stream refused after some of its places were taken gives them all
// back: here the window cannot load its topic (the broker is closed).
func TestAdmissionReleasesOnRefusal(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{MaxConnectionsPerIP: 1}})
	tn.broker.Close()
	for range 2 {
		resp, err := http.Get(tn.srv.URL + "/events?topic=a&topic=b")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d with the broker closed, want 503", resp.StatusCode)
		}
	}
	if got := tn.Connections(); got != 0 {
		t.Errorf("%d connections counted after refusals, want 0", got)
	}
	tn.perIP.mu.Lock()
	held := len(tn.perIP.count)
	tn.perIP.mu.Unlock()
	if held != 0 {
		t.Errorf("%d addresses still counted after refusals, want 0", held)
	}
}
