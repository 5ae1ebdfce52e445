package node

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// Keys are generated once per test binary: RSA generation is slow under -race.
var (
	testRSAKey   = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	otherRSAKey  = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	testECKey    = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	testP384Key  = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)) })
	testHS256Jwt = sync.OnceValue(func() *JWTAuth { return must(NewJWTAuth(JWTConfig{HS256Secret: testSecret})) })
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// claims grants topics for an hour.
func claims(topics ...string) jwt.MapClaims {
	return jwt.MapClaims{SubscribeClaim: topics, "exp": time.Now().Add(time.Hour).Unix()}
}

func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hs256(t testing.TB, c jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodHS256, testSecret, c, "")
}

func publicPEM(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func newAuth(t testing.TB, cfg JWTConfig) *JWTAuth {
	t.Helper()
	a, err := NewJWTAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// jwkOf is the JWK of an RSA or P-256 public key.
func jwkOf(kid string, key any) map[string]string {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := key.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		b := must(k.Bytes()) // 0x04 || x || y
		return map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(b[1:33]), "y": b64(b[33:])}
	}
	panic("unsupported key")
}

// jwksServer serves a key set that the test may replace.
type jwksServer struct {
	*httptest.Server
	body    atomic.Value // []byte
	fetches atomic.Int64
	fail    atomic.Bool
}

func newJWKSServer(t testing.TB, keys ...map[string]string) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.set(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.fail.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.body.Load().([]byte))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...map[string]string) {
	b, _ := json.Marshal(map[string]any{"keys": keys})
	s.body.Store(b)
}

func TestGrantsAllow(t *testing.T) {
	tests := []struct {
		grants []string
		topic  string
		want   bool
	}{
		{[]string{"news"}, "news", true},
		{[]string{"news"}, "news.eu", false},
		{[]string{"news.*"}, "news.eu", true},
		{[]string{"news.*"}, "news.", true},
		{[]string{"news.*"}, "news", false},
		{[]string{"news.*"}, "sport.eu", false},
		{[]string{"*"}, "anything/at:all", true},
		{[]string{"a", "b*"}, "bee", true},
		{nil, "news", false},
		{[]string{""}, "news", false},
		{[]string{"news*"}, "newsroom", true}, // a prefix, not a segment match: say "news.*" for segments
	}
	for _, tt := range tests {
		if got := grants(tt.grants).allows(tt.topic); got != tt.want {
			t.Errorf("%q allows %q = %v, want %v", tt.grants, tt.topic, got, tt.want)
		}
	}
}

func TestNewJWTAuthErrors(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	defer down.Close()
	empty := newJWKSServer(t)
	encKey := jwkOf("enc", &testRSAKey().PublicKey)
	encKey["use"] = "enc"
	encOnly := newJWKSServer(t, encKey)
	tests := []struct {
		name string
		cfg  JWTConfig
		want string
	}{
		{"nothing", JWTConfig{}, "exactly one"},
		{"two sources", JWTConfig{HS256Secret: testSecret, JWKSURL: "http://x"}, "exactly one"},
		{"short secret", JWTConfig{HS256Secret: []byte("short")}, "at least 32"},
		{"not PEM", JWTConfig{PublicKeyPEM: []byte("hello")}, "no PEM block"},
		{"private key PEM", JWTConfig{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})}, "want PUBLIC KEY"},
		{"P-384", JWTConfig{PublicKeyPEM: publicPEM(t, &testP384Key().PublicKey)}, "want P-256"},
		{"JWKS down", JWTConfig{JWKSURL: down.URL}, "500"},
		{"JWKS empty", JWTConfig{JWKSURL: empty.URL}, "no RS256 or ES256 key"},
		{"JWKS encryption keys only", JWTConfig{JWKSURL: encOnly.URL}, "no RS256 or ES256 key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewJWTAuth(tt.cfg)
			if err == nil {
				a.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestAuthorize checks each key source and each place a token may come in.
func TestAuthorize(t *testing.T) {
	rsaKey, ecKey := testRSAKey(), testECKey()
	rsaAuth := newAuth(t, JWTConfig{PublicKeyPEM: publicPEM(t, &rsaKey.PublicKey)})
	ecAuth := newAuth(t, JWTConfig{PublicKeyPEM: publicPEM(t, &ecKey.PublicKey), Cookie: "tok"})
	jwksSrv := newJWKSServer(t, jwkOf("r1", &rsaKey.PublicKey), jwkOf("e1", &ecKey.PublicKey))
	jwksAuth := newAuth(t, JWTConfig{JWKSURL: jwksSrv.URL})
	hsAuth := testHS256Jwt()

	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	query := func(tok string) func(*http.Request) {
		return func(r *http.Request) {
			q := r.URL.Query()
			q.Set("access_token", tok)
			r.URL.RawQuery = q.Encode()
		}
	}
	cookie := func(name, tok string) func(*http.Request) {
		return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: name, Value: tok}) }
	}
	tests := []struct {
		name   string
		auth   *JWTAuth
		token  func(*http.Request)
		topics []string
		want   int // 0: allowed
	}{
		{"HS256 header", hsAuth, bearer(hs256(t, claims("a"))), []string{"a"}, 0},
		{"HS256 lower-case scheme", hsAuth, func(r *http.Request) { r.Header.Set("Authorization", "bearer "+hs256(t, claims("a"))) }, []string{"a"}, 0},
		{"HS256 query", hsAuth, query(hs256(t, claims("a"))), []string{"a"}, 0},
		{"HS256 cookie", hsAuth, cookie("sse_token", hs256(t, claims("a"))), []string{"a"}, 0},
		{"header wins over query", hsAuth, func(r *http.Request) {
			bearer("garbage")(r)
			query(hs256(t, claims("a")))(r)
		}, []string{"a"}, 401},
		{"other cookie name", hsAuth, cookie("session", hs256(t, claims("a"))), []string{"a"}, 401},
		{"no token", hsAuth, func(*http.Request) {}, []string{"a"}, 401},
		{"Basic scheme", hsAuth, func(r *http.Request) { r.SetBasicAuth("u", "p") }, []string{"a"}, 401},
		{"prefix grant", hsAuth, bearer(hs256(t, claims("news.*"))), []string{"news.eu", "news.us"}, 0},
		{"one topic not granted", hsAuth, bearer(hs256(t, claims("news.*"))), []string{"news.eu", "sport"}, 403},
		{"single string claim", hsAuth, bearer(hs256(t, jwt.MapClaims{SubscribeClaim: "a"})), []string{"a"}, 0},
		{"no claim", hsAuth, bearer(hs256(t, jwt.MapClaims{"sub": "x"})), []string{"a"}, 403},
		{"claim of the wrong type", hsAuth, bearer(hs256(t, jwt.MapClaims{SubscribeClaim: 7})), []string{"a"}, 401},
		{"expired within leeway", hsAuth, bearer(hs256(t, jwt.MapClaims{SubscribeClaim: []string{"a"}, "exp": time.Now().Add(-JWTLeeway / 2).Unix()})), []string{"a"}, 0},
		{"expired", hsAuth, bearer(hs256(t, jwt.MapClaims{SubscribeClaim: []string{"a"}, "exp": time.Now().Add(-time.Hour).Unix()})), []string{"a"}, 401},
		{"not yet valid", hsAuth, bearer(hs256(t, jwt.MapClaims{SubscribeClaim: []string{"a"}, "nbf": time.Now().Add(time.Hour).Unix()})), []string{"a"}, 401},
		{"too long", hsAuth, bearer(strings.Repeat("a", maxTokenLen+1)), []string{"a"}, 401},
		{"RS256 PEM", rsaAuth, bearer(sign(t, jwt.SigningMethodRS256, rsaKey, claims("a"), "")), []string{"a"}, 0},
		{"RS256 wrong key", rsaAuth, bearer(sign(t, jwt.SigningMethodRS256, otherRSAKey(), claims("a"), "")), []string{"a"}, 401},
		{"RS512 where RS256 is expected", rsaAuth, bearer(sign(t, jwt.SigningMethodRS512, rsaKey, claims("a"), "")), []string{"a"}, 401},
		{"HS256 signed with the RSA public key", rsaAuth, bearer(sign(t, jwt.SigningMethodHS256, publicPEM(t, &rsaKey.PublicKey), claims("a"), "")), []string{"a"}, 401},
		{"ES256 PEM, custom cookie", ecAuth, cookie("tok", sign(t, jwt.SigningMethodES256, ecKey, claims("a"), "")), []string{"a"}, 0},
		{"ES256 token for the RSA key", rsaAuth, bearer(sign(t, jwt.SigningMethodES256, ecKey, claims("a"), "")), []string{"a"}, 401},
		{"JWKS RS256 by kid", jwksAuth, bearer(sign(t, jwt.SigningMethodRS256, rsaKey, claims("a"), "r1")), []string{"a"}, 0},
		{"JWKS ES256 by kid", jwksAuth, bearer(sign(t, jwt.SigningMethodES256, ecKey, claims("a"), "e1")), []string{"a"}, 0},
		{"JWKS kid of the other key type", jwksAuth, bearer(sign(t, jwt.SigningMethodES256, ecKey, claims("a"), "r1")), []string{"a"}, 401},
		{"JWKS unknown kid", jwksAuth, bearer(sign(t, jwt.SigningMethodRS256, rsaKey, claims("a"), "r9")), []string{"a"}, 401},
		{"JWKS no kid, several keys", jwksAuth, bearer(sign(t, jwt.SigningMethodRS256, rsaKey, claims("a"), "")), []string{"a"}, 401},
		{"JWKS HS256", jwksAuth, bearer(hs256(t, claims("a"))), []string{"a"}, 401},
		{"alg none", hsAuth, bearer(sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("a"), "")), []string{"a"}, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/events", nil)
			tt.token(r)
			_, err := tt.auth.Authorize(r, tt.topics)
			switch {
			case err == nil && tt.want != 0:
				t.Fatalf("allowed, want %d", tt.want)
			case err != nil && deniedStatus(err) != tt.want:
				t.Fatalf("%d %s, want %d", deniedStatus(err), err, tt.want)
			case err != nil:
				t.Logf("%d %s", deniedStatus(err), err)
			}
		})
	}
}

// getWith sends GET url with headers and returns the response, closed by
// the test's cleanup.
func getWith(t testing.TB, u string, hdr map[string]string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", u, err)
	}
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
	})
	return resp
}

// firstLine reads the first line of a refused request's body.
func firstLine(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	l, _, _ := strings.Cut(string(b), "\n")
	return l
}

func TestSubscribeNeedsToken(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{Auth: testHS256Jwt()}})
	u := tn.srv.URL + "/events?topic=news.eu"

	resp := getWith(t, u, nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("no token: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if l := firstLine(resp); !strings.HasPrefix(l, "unauthorized: a token is required") {
		t.Fatalf("no token: body %q", l)
	}

	resp = getWith(t, u, map[string]string{"Authorization": "Bearer " + hs256(t, claims("sport.*"))})
	if l := firstLine(resp); resp.StatusCode != http.StatusForbidden || !strings.Contains(l, `"news.eu"`) {
		t.Fatalf("topic not granted: %d %q", resp.StatusCode, l)
	}
	if got := tn.Connections(); got != 0 {
		t.Fatalf("%d streams open after refusals", got)
	}

	// EventSource's way: the token in the URL.
	c := dial(t, u+"&access_token="+url.QueryEscape(hs256(t, claims("news.*"))), "")
	id := tn.publish(t, "news.eu", "", "hello")
	if e := c.next(t); e.ID != id.String() || e.Data != "hello" {
		t.Fatalf("got %+v", e)
	}
	for outcome, want := range map[string]float64{outcomeUnauthorized: 1, outcomeForbidden: 1, outcomeAccepted: 1} {
		if got := testutil.ToFloat64(tn.m.connTotal.WithLabelValues(outcome)); got != want {
			t.Errorf("sse_connections_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
}

// A key rotated at the IdP is picked up by the periodic refresh, and
// Close stops the refresher (goleak checks it is gone).
func TestJWKSRefresh(t *testing.T) {
	rsaKey, ecKey := testRSAKey(), testECKey()
	srv := newJWKSServer(t, jwkOf("old", &rsaKey.PublicKey))
	a, err := NewJWTAuth(JWTConfig{JWKSURL: srv.URL, JWKSRefresh: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	check := func(tok string) error {
		r := httptest.NewRequest(http.MethodGet, "/events", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		_, err := a.Authorize(r, []string{"a"})
		return err
	}
	newTok := sign(t, jwt.SigningMethodES256, ecKey, claims("a"), "new")
	if err := check(newTok); err == nil {
		t.Fatal("token of a key not yet published was accepted")
	}
	srv.set(jwkOf("new", &ecKey.PublicKey))
	eventually(t, 5*time.Second, "the new key", func() bool { return check(newTok) == nil })
	if err := check(sign(t, jwt.SigningMethodRS256, rsaKey, claims("a"), "old")); err == nil {
		t.Fatal("token of a key withdrawn from the JWKS still accepted")
	}
	// A failing refresh keeps the keys.
	srv.fail.Store(true)
	n := srv.fetches.Load()
	eventually(t, 5*time.Second, "refresh attempts", func() bool { return srv.fetches.Load() > n+2 })
	if err := check(newTok); err != nil {
		t.Fatalf("keys lost after failed refreshes: %v", err)
	}
	a.Close()
	a.Close()
}

func TestPublishToken(t *testing.T) {
	tn := newTestNode(t, testOpts{cfg: Config{PublishToken: "s3cret"}})
	admin := httptest.NewServer(tn.AdminHandler(tn.reg))
	defer admin.Close()
	post := func(auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, admin.URL+"/publish", strings.NewReader("topic=a&data=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := bufio.NewReader(resp.Body).ReadString('\n')
		return resp.StatusCode, b
	}
	for _, tt := range []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer wrong", 401},
		{"Bearer s3cret2", 401},
		{"Basic s3cret", 401},
		{"Bearer s3cret", 200},
		{"bearer s3cret", 200},
	} {
		if code, body := post(tt.auth); code != tt.want {
			t.Errorf("Authorization %q: %d %q, want %d", tt.auth, code, body, tt.want)
		}
	}
}

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
