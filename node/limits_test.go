package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCORS(t *testing.T) {
	tests := []struct {
		name     string
		origins  []string
		method   string
		origin   string
		preflite bool
		want     int    // status; 200 for a stream
		wantACAO string // Access-Control-Allow-Origin
		wantACAC string // Access-Control-Allow-Credentials
	}{
		{"allowed", []string{"https://app.example"}, "GET", "https://app.example", false, 200, "https://app.example", "true"},
		{"allowed, case differs", []string{"https://App.Example"}, "GET", "https://app.example", false, 200, "https://app.example", "true"},
		{"not allowed", []string{"https://app.example"}, "GET", "https://evil.example", false, 403, "", ""},
		{"scheme differs", []string{"https://app.example"}, "GET", "http://app.example", false, 403, "", ""},
		{"no Origin: not a browser's cross-origin request", []string{"https://app.example"}, "GET", "", false, 200, "", ""},
		{"any", []string{"*"}, "GET", "https://whoever.example", false, 200, "https://whoever.example", ""},
		{"preflight", []string{"https://app.example"}, "OPTIONS", "https://app.example", true, 204, "https://app.example", "true"},
		{"preflight, not allowed", []string{"https://app.example"}, "OPTIONS", "https://evil.example", true, 403, "", ""},
		{"OPTIONS without preflight headers", []string{"https://app.example"}, "OPTIONS", "", false, 405, "", ""},
		{"no CORS configured", nil, "GET", "https://app.example", false, 200, "", ""},
		{"no CORS configured, preflight", nil, "OPTIONS", "https://app.example", true, 405, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTestNode(t, testOpts{cfg: Config{CORSOrigins: tt.origins}})
			req, _ := http.NewRequest(tt.method, tn.srv.URL+"/events?topic=a", nil)
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			if tt.preflite {
				req.Header.Set("Access-Control-Request-Method", "GET")
				req.Header.Set("Access-Control-Request-Headers", "last-event-id, authorization")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if got := h.Get("Access-Control-Allow-Origin"); got != tt.wantACAO {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", got, tt.wantACAO)
			}
			if got := h.Get("Access-Control-Allow-Credentials"); got != tt.wantACAC {
				t.Errorf("Access-Control-Allow-Credentials %q, want %q", got, tt.wantACAC)
			}
			if tt.origins != nil && h.Get("Vary") != "Origin" {
				t.Errorf("Vary %q, want Origin", h.Get("Vary"))
			}
			if tt.want == 204 {
				allowed := strings.ToLower(h.Get("Access-Control-Allow-Headers"))
				if !strings.Contains(allowed, "last-event-id") || !strings.Contains(allowed, "authorization") || h.Get("Access-Control-Allow-Methods") != "GET" {
					t.Errorf("preflight headers %v", h)
				}
			}
			if tt.want == 403 {
				if l := firstLine(resp); !strings.Contains(l, "origin") {
					t.Errorf("body %q does not name the origin", l)
				}
			}
			refusals := 0.0
			if tt.want == 403 {
				refusals = 1
			}
			if got := testutil.ToFloat64(tn.m.connTotal.WithLabelValues(outcomeCORS)); got != refusals {
				t.Errorf("sse_connections_total{outcome=%q} = %v, want %v", outcomeCORS, got, refusals)
			}
		})
	}
	if _, err := newCORS([]string{"app.example"}); err == nil {
		t.Error("an origin without scheme was accepted")
	}
	if _, err := newCORS([]string{"https://app.example/path"}); err == nil {
		t.Error("an origin with a path was accepted")
	}
}

// The per-address limit counts open streams, on both paths: a stream that
// ends (client gone, drain) gives its place back.
func TestMaxConnectionsPerIP(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{MaxConnectionsPerIP: 2, Retry: 3 * time.Second}})
	u := tn.srv.URL + "/events?topic=a"
	c1 := dial(t, u, "")
	c2 := dial(t, u, "")
	_ = c2
	resp := getWith(t, u, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("third stream: %d Retry-After %q, want 429 and 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if l := firstLine(resp); !strings.Contains(l, "at most 2") {
		t.Fatalf("body %q", l)
	}
	if got := testutil.ToFloat64(tn.m.connTotal.WithLabelValues(outcomeIPLimit)); got != 1 {
		t.Fatalf("sse_connections_total{outcome=%q} = %v", outcomeIPLimit, got)
	}
	c1.close()
	eventually(t, 5*time.Second, "the closed stream's place", func() bool {
		c, _, _ := tryDial(t, u, "")
		if c != nil {
			c.close()
			return true
		}
		return false
	})
	eventually(t, 5*time.Second, "one stream left", func() bool { return tn.Connections() == 1 })
	tn.perIP.mu.Lock()
	entries := len(tn.perIP.count)
	tn.perIP.mu.Unlock()
	if entries != 1 {
		t.Fatalf("%d addresses counted, want 1", entries)
	}
}

func TestIPLimiterKey(t *testing.T) {
	trusted, err := ParseTrustedProxies([]string{"10.0.0.0/8", "192.0.2.1", " "})
	if err != nil {
		t.Fatal(err)
	}
	l := newIPLimiter(1, trusted)
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"direct", "203.0.113.5:1234", nil, "203.0.113.5"},
		{"untrusted peer's XFF ignored", "203.0.113.5:1234", []string{"198.51.100.1"}, "203.0.113.5"},
		{"trusted proxy", "10.1.2.3:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"rightmost untrusted", "10.1.2.3:80", []string{"6.6.6.6, 198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"several headers", "192.0.2.1:80", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},
		{"garbage stops at the proxy", "10.1.2.3:80", []string{"nonsense"}, "10.1.2.3"},
		{"IPv6 by /64", "[2001:db8:1:2:aaaa::1]:80", nil, "2001:db8:1:2::"},
		{"IPv4-mapped", "[::ffff:203.0.113.5]:80", nil, "203.0.113.5"},
		{"unparsable", "pipe", nil, "invalid IP"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/events", nil)
		r.RemoteAddr = tt.remote
		for _, v := range tt.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := l.key(r).String(); got != tt.want {
			t.Errorf("%s: key %s, want %s", tt.name, got, tt.want)
		}
	}
	if _, err := ParseTrustedProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("bad prefix accepted")
	}
	a := netip.MustParseAddr("203.0.113.5")
	if !l.acquire(a) || l.acquire(a) {
		t.Fatal("limit 1 not enforced")
	}
	l.release(a)
	if len(l.count) != 0 || !l.acquire(a) {
		t.Fatal("release did not free the place")
	}
}

// TestClientGoneDuringAdmission: a client that leaves while its topics
// load is counted as gone, not as a broker failure (which alerts watch).
func TestClientGoneDuringAdmission(t *testing.T) {
	tn := newTestNode(t, testOpts{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest(http.MethodGet, "/events?topic=gone", nil).WithContext(ctx)
	tn.Handler().ServeHTTP(httptest.NewRecorder(), req)
	if got := testutil.ToFloat64(tn.m.connTotal.WithLabelValues(outcomeUnavailable)); got != 0 {
		t.Fatalf("sse_connections_total{outcome=%q} = %v, want 0", outcomeUnavailable, got)
	}
	if got := testutil.ToFloat64(tn.m.connTotal.WithLabelValues(outcomeClientGone)); got != 1 {
		t.Fatalf("sse_connections_total{outcome=%q} = %v, want 1", outcomeClientGone, got)
	}
	if tn.Connections() != 0 {
		t.Fatalf("%d connections held, want 0", tn.Connections())
	}
}
