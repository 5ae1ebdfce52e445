package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-help"}, nil, &out, &errOut); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if errOut.Len() != 0 {
		t.Fatalf("help wrote to stderr: %q", errOut.String())
	}
	for _, v := range []string{"SSE_LISTEN", "SSE_ADMIN_LISTEN", "SSE_REDIS_URL", "SSE_REDIS_ADDRS", "SSE_REDIS_MASTER_NAME",
		"SSE_REDIS_SENTINEL_USERNAME", "SSE_REDIS_SENTINEL_PASSWORD", "SSE_STREAM_PREFIX", "SSE_REPLAY_MAXLEN", "SSE_REPLAY_MAXAGE", "SSE_CLIENT_BUFFER", "SSE_SLOW_CLIENT",
		"SSE_HEARTBEAT", "SSE_WRITE_TIMEOUT", "SSE_RETRY", "SSE_MAX_CONNECTIONS", "SSE_SHUTDOWN_TIMEOUT", "SSE_LOG_LEVEL"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("help lacks %s", v)
		}
	}
	// Every line names a default and a description.
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "  SSE_") && len(strings.Fields(l)) < 3 {
			t.Errorf("help line without default or description: %q", l)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SSE_HEARTBEAT": "often"}, "SSE_HEARTBEAT"},
		{map[string]string{"SSE_SLOW_CLIENT": "block"}, "SSE_SLOW_CLIENT"},
		{map[string]string{"SSE_CLIENT_BUFFER": "0"}, "SSE_CLIENT_BUFFER"},
		{map[string]string{"SSE_LOG_LEVEL": "loud"}, "SSE_LOG_LEVEL"},
		{map[string]string{"SSE_REDIS_URL": "http://x"}, "SSE_REDIS_URL"},
		// The password p@ss/w:rd is not escaped: the error names the
		// variable and the fix, and never quotes the password.
		{map[string]string{"SSE_REDIS_URL": "redis://u:p@ss/w:rd@localhost:6379/0"}, "SSE_REDIS_URL: pubsub: bad redis URL: cannot parse it: a user or password holding @ / : # ? must be percent-encoded"},
		{map[string]string{"SSE_RETRY": "-1s"}, "SSE_RETRY"},
		{map[string]string{"SSE_RING_BYTES": "0"}, "SSE_RING_BYTES"},
		{map[string]string{"SSE_EMBEDDED_BYTES": "0"}, "SSE_EMBEDDED_BYTES"},
		{map[string]string{"SSE_REPLAY_PAGE_BYTES": "-1"}, "SSE_REPLAY_PAGE_BYTES"},
		{map[string]string{"SSE_REPLAY_CACHE_BYTES": "16MiB"}, "SSE_REPLAY_CACHE_BYTES"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := run(nil, tt.env, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tt.want) || strings.Contains(errOut.String(), "w:rd") {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", tt.env, code, errOut.String(), tt.want)
		}
	}
	if _, err := loadConfig(map[string]string{}); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// buildNode compiles ssenode once per test binary run.
func buildNode(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ssenode")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// SIGTERM with open streams: readyz fails at once, each stream (which had
// its retry: with its first event) is aborted so every client library
// reconnects, and the process exits 0 within SSE_SHUTDOWN_TIMEOUT.
func TestSIGTERMDrains(t *testing.T) {
	bin := buildNode(t)
	pub, admin := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SSE_LISTEN="+pub, "SSE_ADMIN_LISTEN="+admin,
		"SSE_SHUTDOWN_TIMEOUT=5s", "SSE_RETRY=1s", "SSE_LOG_FORMAT=text")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := waitProcess(t, cmd)
	waitFor(t, "readyz 200", func() bool { return status("http://"+admin+"/readyz") == 200 })

	// Publish through the admin listener and see it on the streams.
	var streams []*bufio.Reader
	for range 10 {
		resp, err := http.Get("http://" + pub + "/events?topic=term")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		streams = append(streams, bufio.NewReader(resp.Body))
	}
	resp, err := http.PostForm("http://"+admin+"/publish", map[string][]string{"topic": {"term"}, "data": {"before"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for i, s := range streams {
		if !readUntil(s, "data: before") {
			t.Fatalf("stream %d did not get the event", i)
		}
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, s := range streams {
		rest, err := io.ReadAll(s)
		if !errors.Is(err, io.ErrUnexpectedEOF) || strings.Trim(string(rest), "\n") != "" {
			t.Fatalf("stream %d ended with %v after %q, want an abort right after blank lines", i, err, rest)
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(5*time.Second + 2*time.Second):
		t.Fatalf("still running past SSE_SHUTDOWN_TIMEOUT\n%s", logs.String())
	}
	t.Logf("drained 10 streams and exited in %v", time.Since(start))
	if !strings.Contains(logs.String(), "signal: draining") {
		t.Fatalf("no drain log:\n%s", logs.String())
	}
}

// While draining, readiness fails at once. A client that never reads,
// with more queued for it than the socket buffers hold, keeps its writer
// blocked, so the drain lasts until SSE_SHUTDOWN_TIMEOUT: readyz must say
// 503 all that time, and the process still exits 0 by the deadline.
func TestReadyzFailsAtOnceOnSIGTERM(t *testing.T) {
	bin := buildNode(t)
	pub, admin := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SSE_LISTEN="+pub, "SSE_ADMIN_LISTEN="+admin,
		"SSE_SHUTDOWN_TIMEOUT=3s", "SSE_WRITE_TIMEOUT=1m", "SSE_CLIENT_BUFFER_BYTES=67108864")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := waitProcess(t, cmd)
	waitFor(t, "readyz 200", func() bool { return status("http://"+admin+"/readyz") == 200 })
	d := net.Dialer{}
	conn, err := d.Dial("tcp", pub)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(conn, "GET /events?topic=x HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "stream open", func() bool { return metric(t, admin, "sse_connections") == 1 })
	big := strings.Repeat("z", 3<<20)
	for range 4 {
		resp, err := http.PostForm("http://"+admin+"/publish", map[string][]string{"topic": {"x"}, "data": {big}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	waitFor(t, "writer blocked", func() bool { return metric(t, admin, "sse_broker_events_total") == 4 })
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "readyz 503", func() bool { return status("http://"+admin+"/readyz") == 503 })
	t.Logf("readyz 503 after %v", time.Since(start))
	// Still draining a second later: readiness stays failed.
	time.Sleep(time.Second)
	if code := status("http://" + admin + "/readyz"); code != 503 {
		t.Fatalf("readyz %d one second into the drain, want 503", code)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
		t.Logf("exited after %v (SSE_SHUTDOWN_TIMEOUT 3s)", time.Since(start))
	case <-time.After(6 * time.Second):
		t.Fatal("still running past SSE_SHUTDOWN_TIMEOUT")
	}
}

// metric reads one unlabelled sample from the admin listener's /metrics.
func metric(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// waitProcess reaps cmd in the background; the channel yields its exit
// once. Cleanup kills it if the test left it running.
func waitProcess(t *testing.T, cmd *exec.Cmd) <-chan error {
	exited := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return exited
}

func status(u string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readUntil(r *bufio.Reader, want string) bool {
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		if strings.TrimSpace(l) == want {
			return true
		}
	}
}

func TestTracingOffByDefault(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, false},
	}
	for _, tt := range tests {
		if got := tracingEnabled(tt.env); got != tt.want {
			t.Errorf("%v: tracing %v, want %v", tt.env, got, tt.want)
		}
	}
}

// TestAdminStalledBodyCut: a publisher that stalls in the middle of its
// body is cut off after adminReadTimeout, so it cannot hold its buffer (up
// to 4 MiB) for ever.
func TestAdminStalledBodyCut(t *testing.T) {
	t.Parallel()
	_, admin := startNode(t, "SSE_LOG_FORMAT=text")
	conn, err := net.Dial("tcp", admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000000\r\n\r\ntopic=t&data=xxxx")
	_ = conn.SetReadDeadline(time.Now().Add(adminReadTimeout + 20*time.Second))
	_, err = io.ReadAll(conn)
	if err != nil || time.Since(start) > adminReadTimeout+20*time.Second {
		t.Fatalf("stalled publish still open after %v (err %v), want it closed after %v", time.Since(start), err, adminReadTimeout)
	}
	if d := time.Since(start); d < adminReadTimeout-time.Second {
		t.Fatalf("stalled publish closed after %v, before the %v it is allowed", d, adminReadTimeout)
	}
}

// startNode runs the built node with env added to this process's, on free
// addresses, until it is ready; the test's cleanup stops it (SIGTERM) and
// waits for it. It returns the stream and admin listeners' addresses.
func startNode(t *testing.T, env ...string) (pub, admin string) {
	t.Helper()
	bin := buildNode(t)
	pub, admin = freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), "SSE_LISTEN="+pub, "SSE_ADMIN_LISTEN="+admin), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := waitProcess(t, cmd)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	waitFor(t, "readyz 200", func() bool { return status("http://"+admin+"/readyz") == 200 })
	return pub, admin
}

// TestEmbeddedBytes runs the embedded broker with a 64 KiB budget: what it
// holds stays within it as 10 KiB publishes go on (sse_embedded_bytes), a
// resume from the start then gets a gap for what was trimmed, and a publish
// larger than the budget gets 413.
func TestEmbeddedBytes(t *testing.T) {
	pub, admin := startNode(t, "SSE_EMBEDDED_BYTES=65536")
	publish := func(data string) int {
		t.Helper()
		resp, err := http.PostForm("http://"+admin+"/publish", map[string][]string{"topic": {"x"}, "data": {data}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	chunk := strings.Repeat("z", 10<<10)
	for i := range 20 {
		if code := publish(chunk); code != 200 {
			t.Fatalf("publish %d: %d", i, code)
		}
		if held := metric(t, admin, "sse_embedded_bytes"); held <= 0 || held > 65536 {
			t.Fatalf("after publish %d: sse_embedded_bytes %v, budget 65536", i, held)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+pub+"/events?topic=x", nil)
	req.Header.Set("Last-Event-ID", "1-0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The first field line (after the stream's opening blank line and
	// retry:) is the gap's.
	r := bufio.NewReader(resp.Body)
	var line string
	for line == "" || line == "\n" || strings.HasPrefix(line, "retry:") {
		if line, err = r.ReadString('\n'); err != nil {
			t.Fatalf("resume from 1-0: %v", err)
		}
	}
	if line != "event: sse-gap\n" {
		t.Fatalf("resume from 1-0: first field %q, want the gap's event line", line)
	}
	if code := publish(strings.Repeat("y", 65536)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("publish above the budget: %d, want 413", code)
	}
}

// TestMaxHeaderBytes: the public listener answers a request whose line and
// headers are 100 bytes under SSE_MAX_HEADER_BYTES, and refuses one 100
// bytes over it with 431 (net/http alone would read 4 KiB more).
func TestMaxHeaderBytes(t *testing.T) {
	pub, _ := startNode(t, "SSE_MAX_HEADER_BYTES=16384")
	for _, tt := range []struct {
		size int
		want string
	}{
		{16384 - 100, "HTTP/1.1 200 OK"},
		{16384 + 100, "HTTP/1.1 431 Request Header Fields Too Large"},
	} {
		head := "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX-Pad: "
		req := head + strings.Repeat("p", tt.size-len(head)-len("\r\n\r\n")) + "\r\n\r\n"
		conn, err := net.Dial("tcp", pub)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if strings.TrimSpace(line) != tt.want {
			t.Errorf("request of %d header bytes: %q (%v), want %q", len(req), line, err, tt.want)
		}
	}
}
