package node

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A stream closes when its token expires (plus the leeway), aborted like a
// drain, and the client that reconnects with a fresh token and its
// Last-Event-ID resumes with nothing lost.
func TestTokenExpiryClosesStream(t *testing.T) {
	const leeway = time.Second
	auth := newAuth(t, JWTConfig{HS256Secret: testSecret, Leeway: leeway})
	tn := newTestNode(t, testOpts{cfg: Config{Auth: auth, Heartbeat: 50 * time.Millisecond}})
	token := func(life time.Duration) (string, time.Time) {
		// A lifetime of life, from a whole second (JWT times are seconds).
		iat := time.Now().Truncate(time.Second)
		exp := iat.Add(life)
		return hs256(t, jwt.MapClaims{SubscribeClaim: []string{"x"}, "iat": iat.Unix(), "exp": exp.Unix()}), exp
	}
	base := tn.srv.URL + "/events?topic=x&access_token="
	tok, exp := token(5 * time.Second)
	c := dial(t, base+url.QueryEscape(tok), "")
	var want []string
	publish := func(n int) {
		for range n {
			want = append(want, tn.publish(t, "x", "", "e").String())
		}
	}
	// Before the expiry the stream delivers as usual.
	publish(5)
	last := ""
	for range 5 {
		last = c.next(t).ID
	}
	// A stream that outlives its token is cut by the test, well after.
	stop := time.AfterFunc(time.Until(exp.Add(leeway+10*time.Second)), c.cancel)
	defer stop.Stop()
	_, err := io.ReadAll(c.r)
	ended := time.Now()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream ended with %v, want an abort (unexpected EOF)", err)
	}
	// exp has whole seconds; generous slack above for a loaded machine.
	if early, late := exp.Add(leeway-100*time.Millisecond), exp.Add(leeway+3*time.Second); ended.Before(early) || ended.After(late) {
		t.Fatalf("stream ended at %v, want at exp %v + leeway %v", ended.Format(time.StampMilli), exp.Format(time.StampMilli), leeway)
	}
	t.Logf("token exp %s, leeway %v: stream aborted %v after exp", exp.Format(time.StampMilli), leeway, ended.Sub(exp).Round(time.Millisecond))
	// Counted when the node has released the stream, just after the close.
	eventually(t, 5*time.Second, "sse_disconnects_total{reason=token_expired} 1", func() bool {
		return testutil.ToFloat64(tn.m.disconnects.WithLabelValues(reasonTokenExpired)) == 1
	})
	// Published while the client is away.
	publish(3)
	if resp := getWith(t, base+url.QueryEscape(tok), nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expired token: %d, want 401", resp.StatusCode)
	}
	fresh, _ := token(time.Hour)
	c2 := dial(t, base+url.QueryEscape(fresh), last)
	publish(1)
	var resumed []string
	for range 4 {
		resumed = append(resumed, c2.next(t).ID)
	}
	if last != want[4] || strings.Join(resumed, " ") != strings.Join(want[5:], " ") {
		t.Fatalf("resumed after %s with %v, want after %s %v (0 lost)", last, resumed, want[4], want[5:])
	}
	t.Logf("resumed with a fresh token: %d of %d events published meanwhile and after, 0 lost", len(resumed), len(want)-5)
}

// SSE_JWT_ISSUER and SSE_JWT_AUDIENCE: checked when set, a 401 that names
// the claim.
func TestIssuerAudience(t *testing.T) {
	auth := newAuth(t, JWTConfig{HS256Secret: testSecret, Issuer: "https://idp.example", Audience: "sse"})
	tn := newTestNode(t, testOpts{cfg: Config{Auth: auth}})
	tok := func(extra jwt.MapClaims) string {
		c := claims("a")
		for k, v := range extra {
			c[k] = v
		}
		return hs256(t, c)
	}
	tests := []struct {
		name   string
		claims jwt.MapClaims
		status int
		line   string
	}{
		{"both right", jwt.MapClaims{"iss": "https://idp.example", "aud": "sse"}, 200, ""},
		{"audience among several", jwt.MapClaims{"iss": "https://idp.example", "aud": []string{"other", "sse"}}, 200, ""},
		{"wrong issuer", jwt.MapClaims{"iss": "https://evil.example", "aud": "sse"}, 401, `unauthorized: invalid token: claim iss "https://evil.example": want "https://idp.example"`},
		{"no issuer", jwt.MapClaims{"aud": "sse"}, 401, "unauthorized: invalid token: token has invalid claims: token is missing required claim: iss claim is required"},
		{"wrong audience", jwt.MapClaims{"iss": "https://idp.example", "aud": "billing"}, 401, `unauthorized: invalid token: claim aud "billing": want "sse"`},
		{"no audience", jwt.MapClaims{"iss": "https://idp.example"}, 401, "unauthorized: invalid token: token has invalid claims: token is missing required claim: aud claim is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := getWith(t, tn.srv.URL+"/events?topic=a", map[string]string{"Authorization": "Bearer " + tok(tt.claims)})
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status != 200 {
				if l := firstLine(resp); !strings.HasPrefix(l, tt.line) {
					t.Fatalf("body %q, want %q...", l, tt.line)
				}
			}
		})
	}
}
