package node

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rawStream opens a stream on a raw TCP connection and reads the response
// headers; the caller decides whether to read any further.
func rawStream(t testing.TB, addr, path string) (net.Conn, *bufio.Reader, http.Header) {
	t.Helper()
	conn, _ := rawDial(t, addr)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return conn, br, resp.Header
}

// rawDial connects with a small receive buffer, so a client that stops
// reading fills the path quickly.
func rawDial(t testing.TB, addr string) (net.Conn, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	return conn, nil
}

func TestSlowClient(t *testing.T) {
	for _, policy := range []string{PolicyDisconnect, PolicyDrop} {
		t.Run(policy, func(t *testing.T) {
			// With drop, the write timeout is long enough for the queue to
			// fill and drop first; with disconnect, the queue or the
			// timeout, whichever comes first, ends the slow stream.
			timeout := 300 * time.Millisecond
			if policy == PolicyDrop {
				timeout = 5 * time.Second
			}
			tn := newTestNode(t, testOpts{cfg: Config{
				SlowClient:       policy,
				ClientBuffer:     16,
				WriteTimeout:     timeout,
				SocketSendBuffer: 16 << 10,
			}})
			addr := strings.TrimPrefix(tn.srv.URL, "http://")
			// The slow client reads the headers and then nothing.
			_, _, _ = rawStream(t, addr, "/events?topic=s")
			fast := dial(t, tn.srv.URL+"/events?topic=s", "")
			eventually(t, 5*time.Second, "two streams", func() bool { return tn.Connections() == 2 })

			payload := strings.Repeat("x", 16<<10)
			const events = 400 // 6.4 MB: more than socket buffers hold
			var got atomic.Int64
			done := make(chan error, 1)
			go func() {
				for i := range events {
					e, err := fast.nextErr()
					if err != nil {
						done <- fmt.Errorf("fast client after %d events: %w", i, err)
						return
					}
					if !strings.HasPrefix(e.Data, fmt.Sprintf("%d:", i)) {
						done <- fmt.Errorf("fast client event %d: got %.20q", i, e.Data)
						return
					}
					got.Add(1)
				}
				done <- nil
			}()
			for i := range events {
				tn.publish(t, "s", "", fmt.Sprintf("%d:%s", i, payload))
				// The fast client keeps pace (a few frames in flight at
				// most), so only the slow one can overflow its queue.
				eventually(t, 10*time.Second, "fast client progress", func() bool {
					select {
					case err := <-done:
						done <- err
						return true
					default:
					}
					return got.Load() >= int64(i-4)
				})
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			switch policy {
			case PolicyDisconnect:
				eventually(t, 10*time.Second, "slow client cut off", func() bool { return tn.Connections() == 1 })
				slow := testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues("queue_frames")) +
					testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues("queue_bytes")) +
					testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues(reasonWriteTimeout))
				if slow != 1 {
					t.Fatalf("slow-client disconnects = %v, want 1", slow)
				}
			case PolicyDrop:
				eventually(t, 10*time.Second, "drops counted", func() bool {
					return testutil.ToFloat64(tn.m.dropped.WithLabelValues("queue_frames"))+
						testutil.ToFloat64(tn.m.dropped.WithLabelValues("queue_bytes")) > 0
				})
			}
		})
	}
}

func TestQueueBounds(t *testing.T) {
	f := func(n int) *frame {
		fr := newFrame(n)
		fr.buf = fr.buf[:n]
		return fr
	}
	tests := []struct {
		name     string
		frames   int
		maxBytes int
		drop     bool
		sizes    []int
		want     []overflow
	}{
		{"frames bound disconnects", 2, 1 << 20, false, []int{10, 10, 10, 10}, []overflow{accepted, accepted, fullFrames, queueClosed}},
		{"bytes bound disconnects", 10, 25, false, []int{10, 10, 10}, []overflow{accepted, accepted, fullBytes}},
		{"one oversize frame passes when empty", 10, 5, false, []int{100, 1}, []overflow{accepted, fullBytes}},
		{"drop keeps the queue open", 2, 1 << 20, true, []int{1, 1, 1, 1}, []overflow{accepted, accepted, fullFrames, fullFrames}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(tt.frames, tt.maxBytes, tt.drop, func() {})
			for i, size := range tt.sizes {
				fr := f(size)
				fr.retain(1) // the queue's reference
				got := q.push(fr)
				if got != accepted {
					fr.Release()
				}
				fr.Release() // the caller's
				if got != tt.want[i] {
					t.Fatalf("push %d: %v, want %v", i, got, tt.want[i])
				}
			}
			batch, _, _ := q.take(nil)
			for _, fr := range batch {
				fr.Release()
			}
			q.close()

			// The same frames as one batch: the same outcomes, in order,
			// and the writer woken once.
			wakes := 0
			q = newQueue(tt.frames, tt.maxBytes, tt.drop, func() { wakes++ })
			var frames []*frame
			for _, size := range tt.sizes {
				fr := f(size)
				fr.retain(1)
				frames = append(frames, fr)
			}
			got := make([]overflow, len(frames))
			refusedAt := map[*frame]overflow{}
			took := q.pushAll(frames, func(fr *frame, o overflow) {
				refusedAt[fr] = o
				fr.Release()
			})
			for i, fr := range frames {
				got[i] = refusedAt[fr] // accepted when absent
				fr.Release()
			}
			wantTook := 0
			for _, o := range tt.want {
				if o == accepted {
					wantTook++
				}
			}
			if !slices.Equal(got, tt.want) || took != wantTook || wakes != 1 {
				t.Fatalf("pushAll: %v, took %d, %d wakes; want %v, one wake", got, took, wakes, tt.want)
			}
			batch, _, _ = q.take(nil)
			for _, fr := range batch {
				fr.Release()
			}
			q.close()
		})
	}
}

// TestOverflowCutsStuckWrite: on the writer pool a client whose queue
// overflows while a write to it is stuck is cut off at the overflow, not at
// the write deadline (a minute here). The net/http path waits out its
// deadline (README), so this test always hijacks.
func TestOverflowCutsStuckWrite(t *testing.T) {
	tn := stuckWriteNode(t)
	addr := strings.TrimPrefix(tn.srv.URL, "http://")
	_, _, _ = rawStream(t, addr, "/events?topic=s") // then reads nothing
	eventually(t, 5*time.Second, "stream open", func() bool { return tn.Connections() == 1 })
	payload := strings.Repeat("x", 16<<10)
	for i := 0; i < 400 && tn.Connections() == 1; i++ {
		tn.publish(t, "s", "", fmt.Sprintf("%d:%s", i, payload))
		time.Sleep(time.Millisecond) // let the writer get stuck between events
	}
	eventually(t, 10*time.Second, "slow client cut off at the overflow", func() bool { return tn.Connections() == 0 })
	over := testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues("queue_frames")) +
		testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues("queue_bytes"))
	if over != 1 {
		t.Fatalf("overflow disconnects = %v, want 1; ends %s, slow-client ends %s", over, counts(tn.m.disconnects), counts(tn.m.slowDisconnects))
	}
}

// stuckWriteNode is a hijacking node whose slow clients fill their socket
// fast and overflow at 16 frames, with a write timeout (a minute) no test
// waits for.
func stuckWriteNode(t *testing.T) *testNode {
	return newTestNode(t, testOpts{hijack: true, cfg: Config{
		SlowClient:       PolicyDisconnect,
		ClientBuffer:     16,
		WriteTimeout:     time.Minute,
		SocketSendBuffer: 16 << 10,
	}})
}

// TestOverflowCutsStuckReplay: the same while the request goroutine is
// still replaying, and the end is counted as the overflow that cut it, not
// as a write timeout.
func TestOverflowCutsStuckReplay(t *testing.T) {
	tn := stuckWriteNode(t)
	payload := strings.Repeat("x", 16<<10)
	for i := range 64 {
		tn.publish(t, "r", "", fmt.Sprintf("%d:%s", i, payload))
	}
	addr := strings.TrimPrefix(tn.srv.URL, "http://")
	_, _, _ = rawStream(t, addr, "/events?topic=r&lastEventId=0") // a 1 MiB replay it never reads
	for i := 0; i < 400 && tn.Connections() == 1; i++ {
		tn.publish(t, "r", "", fmt.Sprintf("live %d:%s", i, payload))
		time.Sleep(time.Millisecond)
	}
	eventually(t, 10*time.Second, "slow client cut off at the overflow", func() bool { return tn.Connections() == 0 })
	if got := testutil.ToFloat64(tn.m.slowDisconnects.WithLabelValues("queue_frames")); got != 1 {
		t.Fatalf("queue_frames disconnects = %v, want 1; ends %s, slow-client ends %s", got, counts(tn.m.disconnects), counts(tn.m.slowDisconnects))
	}
}

// counts lists the non-zero counts of v among the stream end reasons, for
// failure messages.
func counts(v *prometheus.CounterVec) string {
	var out []string
	for _, r := range []string{reasonClientGone, reasonWriteError, reasonWriteTimeout, reasonSlowClient, reasonDrain, reasonTokenExpired, reasonStreamReset, "queue_frames", "queue_bytes", "closed"} {
		if c := testutil.ToFloat64(v.WithLabelValues(r)); c != 0 {
			out = append(out, fmt.Sprintf("%s=%v", r, c))
		}
	}
	return strings.Join(out, " ")
}

// TestPausedClientOutlivesWriteTimeout: a stream keeps working long after
// SSE_WRITE_TIMEOUT: after an idle time following its replay, and after
// its client stopped reading long enough to fill its socket (a pool write
// finished off the pool) and then caught up. Neither the replay's write
// nor that slow write may leave a deadline on the socket that a later
// write trips over.
func TestPausedClientOutlivesWriteTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tn := newTestNode(t, testOpts{hijack: true, cfg: Config{
		WriteTimeout:     timeout,
		SocketSendBuffer: 16 << 10,
	}})
	addr := strings.TrimPrefix(tn.srv.URL, "http://")
	tn.publish(t, "p", "", "before")
	// Resume from 0: the opening and replay write under a deadline. (A
	// normal receive buffer: with a tiny one the kernel waits for its
	// persist timer to resume sending, longer than the write timeout.)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /events?topic=p HTTP/1.1\r\nHost: test\r\nLast-Event-ID: 0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	// No resp.Body.Close: it would read to the end of an endless stream;
	// closing conn ends it.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	want := func(prefix string) {
		t.Helper()
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: "+prefix) {
				return
			}
		}
		t.Fatalf("stream ended before %q: %v (disconnects: write_timeout %v, write_error %v)", prefix, sc.Err(),
			testutil.ToFloat64(tn.m.disconnects.WithLabelValues(reasonWriteTimeout)),
			testutil.ToFloat64(tn.m.disconnects.WithLabelValues(reasonWriteError)))
	}
	want("before")
	time.Sleep(3 * timeout) // past the replay's deadline
	tn.publish(t, "p", "", "idle")
	want("idle")

	// Fill the path while the client reads nothing, but stay within the
	// write timeout: the pool's write is cut short and finished later.
	payload := strings.Repeat("y", 32<<10)
	const burst = 24 // 768 KiB: more than the path holds, less than the queue
	for i := range burst {
		tn.publish(t, "p", "", fmt.Sprintf("burst %d %s", i, payload))
	}
	time.Sleep(timeout / 3)
	for i := range burst {
		want(fmt.Sprintf("burst %d ", i))
	}
	time.Sleep(3 * timeout) // past the slow write's deadline
	for i := range 3 {
		tn.publish(t, "p", "", fmt.Sprintf("after %d", i))
		want(fmt.Sprintf("after %d", i))
	}
}
