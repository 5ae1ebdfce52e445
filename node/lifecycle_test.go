package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// After any number of clients come and go, goroutines return exactly to
// their baseline and the heap to within 10% of it.
func TestConnectTeardownReturnsToBaseline(t *testing.T) {
	const clients, rounds = 1000, 5
	tn := newTestNode(t, testOpts{cfg: Config{Heartbeat: time.Hour}})
	addr := strings.TrimPrefix(tn.srv.URL, "http://")
	tr := &http.Transport{MaxConnsPerHost: 0, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	// One round of each kind first, so that pools, maps and the window's
	// ring reach their steady size before the baseline is taken.
	round := func(kind string, topics int) {
		t.Helper()
		var wg sync.WaitGroup
		cancels := make([]func(), clients)
		errs := make(chan error, clients)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				topic := "lc" + strconv.Itoa(i%topics)
				var err error
				if kind == "cancel" {
					cancels[i], err = openCancel(hc, tn.srv.URL+"/events?topic="+topic)
				} else {
					cancels[i], err = openRST(addr, "/events?topic="+topic)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "all streams open", func() bool { return tn.Connections() == clients })
		tn.publish(t, "lc0", "", "while open")
		for _, c := range cancels {
			c()
		}
		eventually(t, 20*time.Second, "all streams closed", func() bool { return tn.Connections() == 0 })
	}
	settle := func() (goroutines int, heap uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse
	}
	// The baseline is the steady state: the largest heap seen after each
	// of the warm-up rounds (HeapInuse moves by a few hundred KiB from one
	// GC to the next, with the race detector more, and pools and per-topic
	// window state take a few rounds to reach their size).
	var g0 int
	var h0 uint64
	for range 4 {
		for _, kind := range []string{"cancel", "rst"} {
			round(kind, 10)
			tr.CloseIdleConnections()
			g, h := settle()
			g0, h0 = g, max(h0, h)
		}
	}
	opts := goleak.IgnoreCurrent()
	for r := range rounds {
		for _, kind := range []string{"cancel", "rst"} {
			round(kind, 10)
			tr.CloseIdleConnections()
			eventually(t, 10*time.Second, "goroutines back to baseline", func() bool {
				return goleak.Find(opts) == nil
			})
			g, h := settle()
			t.Logf("round %d %s: goroutines %d (baseline %d), HeapInuse %d KiB (baseline %d KiB)", r, kind, g, g0, h>>10, h0>>10)
			if g != g0 {
				t.Fatalf("round %d %s: %d goroutines, baseline %d", r, kind, g, g0)
			}
			if float64(h) > float64(h0)*1.10 {
				t.Fatalf("round %d %s: HeapInuse %d, more than 10%% over baseline %d", r, kind, h, h0)
			}
		}
	}
}

// openCancel opens a stream with net/http and returns the cancel that ends it.
func openCancel(hc *http.Client, url string) (func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	// Read the opening, so the stream is known to be registered.
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		cancel()
		return nil, err
	}
	return func() {
		cancel()
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}, nil
}

// openRST opens a stream on a raw connection and returns a func that resets
// it (SO_LINGER 0: the kernel sends RST, not FIN).
func openRST(addr, path string) (func(), error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("open %s: %v %v", path, err, resp)
	}
	return func() {
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}, nil
}
