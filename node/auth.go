package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Access control (issue 6). Subscribing needs a JWT when a JWTAuth is
// configured; publishing on the admin listener needs Config.PublishToken
// when it is set.
//
// A subscribe token is a JWT signed with HS256 (a shared secret), RS256 or
// ES256 (a public key, or the keys of a JWKS URL). Its claim
// "sse.subscribe" lists the topics it grants: exact names, or prefixes
// ending in "*" ("news.*" grants "news.eu"; "*" grants every topic). A
// single string is read as a list of one. exp and nbf are honoured when
// present, with JWTConfig.Leeway of clock skew; tokens without exp do not
// expire. A stream whose token has exp is closed at exp plus the leeway
// (as a drain closes it), so its client reconnects with a fresh token and
// resumes. iss and aud are checked when JWTConfig.Issuer or Audience is set.
// Only the algorithms of the configured key are accepted: "none", and an
// HS256 token where a public key is configured, are refused.
//
// The token comes from, in this order: the Authorization: Bearer header,
// the access_token query parameter (EventSource cannot set headers; mind
// that URLs end up in proxies' access logs), or a cookie (JWTConfig.Cookie,
// "sse_token" by default; with CORS, cookies need an explicit origin list).

// SubscribeClaim is the JWT claim listing the topics a token grants.
const SubscribeClaim = "sse.subscribe"

// JWTLeeway is the default clock skew allowed when checking exp and nbf.
const JWTLeeway = 30 * time.Second

// maxTokenLen bounds the tokens the node parses at all.
const maxTokenLen = 8 << 10

// JWTConfig says how subscribe tokens are verified. Exactly one of
// HS256Secret, PublicKeyPEM and JWKSURL must be set.
type JWTConfig struct {
	// HS256Secret verifies HS256 tokens; at least 32 bytes.
	HS256Secret []byte
	// PublicKeyPEM verifies RS256 (an RSA key) or ES256 (a P-256 key)
	// tokens: a PEM "PUBLIC KEY" (PKIX) or "CERTIFICATE" block.
	PublicKeyPEM []byte
	// JWKSURL is a JSON Web Key Set whose RSA and P-256 keys verify RS256
	// and ES256 tokens, chosen by the token's kid. It is fetched by
	// NewJWTAuth (which fails if it cannot), then every JWKSRefresh, and
	// sooner (at most every 30s) when a token names a kid it lacks.
	JWKSURL string
	// JWKSRefresh is the JWKS refresh period; 0 means 10 minutes.
	JWKSRefresh time.Duration
	// HTTPClient fetches the JWKS; nil means a client with a 10s timeout.
	HTTPClient *http.Client
	// Cookie is the cookie a token may come in; "" means "sse_token".
	Cookie string
	// Leeway is the clock skew allowed when checking exp and nbf, and how
	// long after exp an open stream is closed; 0 means JWTLeeway (30s).
	Leeway time.Duration
	// Issuer, when set, is the iss claim a token must carry.
	Issuer string
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Logger receives JWKS refresh failures; nil means slog.Default().
	Logger *slog.Logger
}

// JWTAuth verifies subscribe tokens. Create it with NewJWTAuth and Close it
// when done (it owns the JWKS refresher, if any).
type JWTAuth struct {
	parser *jwt.Parser
	keys   jwt.Keyfunc // immutable after NewJWTAuth
	cookie string
	leeway time.Duration
	// issuer and audience are the iss and aud a token must carry; "" is
	// not checked.
	issuer, audience string
	jwks             *jwks // nil unless JWKSURL
}

// NewJWTAuth validates cfg, loads the key (fetching the JWKS when given) and
// returns a verifier.
func NewJWTAuth(cfg JWTConfig) (*JWTAuth, error) {
	a := &JWTAuth{cookie: cfg.Cookie, leeway: cfg.Leeway, issuer: cfg.Issuer, audience: cfg.Audience}
	if a.cookie == "" {
		a.cookie = "sse_token"
	}
	switch {
	case a.leeway < 0:
		return nil, fmt.Errorf("node: jwt: leeway %v: must not be negative", a.leeway)
	case a.leeway == 0:
		a.leeway = JWTLeeway
	}
	set := 0
	for _, ok := range []bool{len(cfg.HS256Secret) > 0, len(cfg.PublicKeyPEM) > 0, cfg.JWKSURL != ""} {
		if ok {
			set++
		}
	}
	if set != 1 {
		return nil, errors.New("node: jwt: set exactly one of an HS256 secret, a public key, a JWKS URL")
	}
	var methods []string
	switch {
	case len(cfg.HS256Secret) > 0:
		if len(cfg.HS256Secret) < 32 {
			return nil, fmt.Errorf("node: jwt: HS256 secret of %d bytes: want at least 32", len(cfg.HS256Secret))
		}
		secret := append([]byte(nil), cfg.HS256Secret...)
		methods = []string{jwt.SigningMethodHS256.Alg()}
		a.keys = func(*jwt.Token) (any, error) { return secret, nil }
	case len(cfg.PublicKeyPEM) > 0:
		key, alg, err := parsePublicKeyPEM(cfg.PublicKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("node: jwt: public key: %w", err)
		}
		methods = []string{alg}
		a.keys = func(*jwt.Token) (any, error) { return key, nil }
	default:
		j, err := newJWKS(cfg)
		if err != nil {
			return nil, err
		}
		a.jwks = j
		methods = []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg()}
		a.keys = j.key
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(a.leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// Close stops the JWKS refresher and waits for it. It is safe to call more
// than once.
func (a *JWTAuth) Close() error {
	if a != nil && a.jwks != nil {
		a.jwks.close()
	}
	return nil
}

// grants is the sse.subscribe claim: a list of topics, or one string.
type grants []string

func (g *grants) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*g = grants{one}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("%s: want a list of topics", SubscribeClaim)
	}
	*g = list
	return nil
}

// allows reports whether the grants cover topic.
func (g grants) allows(topic string) bool {
	for _, p := range g {
		if p == topic {
			return true
		}
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(topic, prefix) {
			return true
		}
	}
	return false
}

type subscribeClaims struct {
	Subscribe grants `json:"sse.subscribe"`
	jwt.RegisteredClaims
}

// Authorizer decides who may subscribe to what (Config.Auth); JWTAuth is
// the node's own.
type Authorizer interface {
	// Authorize checks r's credentials for every topic. It returns when
	// the stream must end so that its client comes back with fresh
	// credentials (zero: never), or why it is refused: an error that wraps
	// ErrUnauthorized (401: no valid credentials) or ErrForbidden (403: a
	// topic not granted), with a message meant for the client.
	Authorize(r *http.Request, topics []string) (until time.Time, err error)
}

// Refusals of an Authorizer.
var (
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
)

func unauthorized(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnauthorized, fmt.Sprintf(format, args...))
}

// deniedStatus is the HTTP status of an Authorizer's refusal.
func deniedStatus(err error) int {
	if errors.Is(err, ErrForbidden) {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// Authorize checks r's token and that it grants every topic. The stream
// ends at the token's expiry plus the leeway; never when it has none.
func (a *JWTAuth) Authorize(r *http.Request, topics []string) (time.Time, error) {
	raw, err := a.token(r)
	if err != nil {
		return time.Time{}, err
	}
	var claims subscribeClaims
	if _, err := a.parser.ParseWithClaims(raw, &claims, a.keys); err != nil {
		// Name the claim that failed, so that a misconfigured issuer or
		// audience is told apart from a bad signature.
		switch {
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return time.Time{}, unauthorized("invalid token: claim iss %q: want %q", truncate(claims.Issuer, 64), a.issuer)
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return time.Time{}, unauthorized("invalid token: claim aud %q: want %q", truncate(strings.Join(claims.Audience, ","), 64), a.audience)
		}
		return time.Time{}, unauthorized("invalid token: %v", err)
	}
	for _, t := range topics {
		if !claims.Subscribe.allows(t) {
			return time.Time{}, fmt.Errorf("%w: the token does not grant topic %q", ErrForbidden, t)
		}
	}
	if claims.ExpiresAt == nil {
		return time.Time{}, nil
	}
	return claims.ExpiresAt.Time.Add(a.leeway), nil
}

// token finds the request's bearer token.
func (a *JWTAuth) token(r *http.Request) (string, error) {
	var raw string
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", unauthorized("Authorization scheme %q: want Bearer", truncate(scheme, 16))
		}
		raw = strings.TrimSpace(tok)
	} else if q := r.URL.Query().Get("access_token"); q != "" {
		raw = q
	} else if c, err := r.Cookie(a.cookie); err == nil {
		raw = c.Value
	}
	switch {
	case raw == "":
		return "", unauthorized("a token is required: Authorization: Bearer, access_token parameter or %s cookie", a.cookie)
	case len(raw) > maxTokenLen:
		return "", unauthorized("token of %d bytes: at most %d", len(raw), maxTokenLen)
	}
	return raw, nil
}

// checkBearer reports whether r carries Authorization: Bearer want, in time
// independent of where they differ (hashes make lengths equal too).
func checkBearer(r *http.Request, want string) bool {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got, exp := sha256.Sum256([]byte(strings.TrimSpace(tok))), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(got[:], exp[:]) == 1
}

// parsePublicKeyPEM reads an RSA or ECDSA public key and the algorithm it
// verifies.
func parsePublicKeyPEM(b []byte) (any, string, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, "", errors.New("no PEM block")
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, "", err
		}
		pub = k
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, "", err
		}
		pub = k
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, "", err
		}
		pub = c.PublicKey
	default:
		return nil, "", fmt.Errorf("PEM block %q: want PUBLIC KEY or CERTIFICATE", block.Type)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return k, jwt.SigningMethodRS256.Alg(), nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, "", fmt.Errorf("ECDSA curve %s: want P-256 (ES256)", k.Curve.Params().Name)
		}
		return k, jwt.SigningMethodES256.Alg(), nil
	default:
		return nil, "", fmt.Errorf("key type %T: want RSA or ECDSA P-256", pub)
	}
}

// jwks holds the keys of a JSON Web Key Set and refreshes them in a
// goroutine it owns.
type jwks struct {
	url     string
	client  *http.Client
	refresh time.Duration
	log     *slog.Logger

	mu   sync.RWMutex
	keys map[string]any // by kid

	kick chan struct{} // a token named an unknown kid; never closed
	ctx  context.Context
	stop context.CancelFunc
	done chan struct{} // closed when the refresher returns
}

// jwksMinInterval is the least time between two fetches asked for by
// unknown kids, so that bad tokens cannot make the node hammer the IdP.
const jwksMinInterval = 30 * time.Second

// maxJWKSBytes bounds a JWKS response.
const maxJWKSBytes = 1 << 20

func newJWKS(cfg JWTConfig) (*jwks, error) {
	j := &jwks{url: cfg.JWKSURL, client: cfg.HTTPClient, refresh: cfg.JWKSRefresh, log: cfg.Logger,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	if j.client == nil {
		j.client = &http.Client{Timeout: 10 * time.Second}
	}
	if j.refresh == 0 {
		j.refresh = 10 * time.Minute
	}
	if j.refresh < 0 {
		return nil, fmt.Errorf("node: jwt: JWKS refresh %v: must not be negative", j.refresh)
	}
	if j.log == nil {
		j.log = slog.Default()
	}
	j.ctx, j.stop = context.WithCancel(context.Background())
	if err := j.fetch(); err != nil {
		j.stop()
		return nil, fmt.Errorf("node: jwt: JWKS %s: %w", j.url, err)
	}
	go j.loop()
	return j, nil
}

func (j *jwks) close() {
	j.stop()
	<-j.done
}

func (j *jwks) loop() {
	defer close(j.done)
	t := time.NewTicker(j.refresh)
	defer t.Stop()
	// The last attempt, failed or not: while the IdP fails, unknown kids
	// must not turn into one fetch after another either.
	tried := time.Now() // newJWKS has just fetched
	for {
		select {
		case <-j.ctx.Done():
			return
		case <-t.C:
		case <-j.kick:
			if time.Since(tried) < jwksMinInterval {
				continue
			}
		}
		tried = time.Now()
		if err := j.fetch(); err != nil && j.ctx.Err() == nil {
			// Keep the keys we have: a token signed with them stays valid.
			j.log.Warn("jwt: JWKS refresh failed", "url", j.url, "err", err)
		}
	}
}

// fetch replaces the key set with the one at the URL.
func (j *jwks) fetch() error {
	req, err := http.NewRequestWithContext(j.ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return err
	}
	if len(b) > maxJWKSBytes {
		return fmt.Errorf("larger than %d bytes", maxJWKSBytes)
	}
	keys, err := parseJWKS(b)
	if err != nil {
		return err
	}
	j.mu.Lock()
	j.keys = keys
	j.mu.Unlock()
	return nil
}

// key is the jwt.Keyfunc: the key named by the token's kid, or the only
// key when the token has none.
func (j *jwks) key(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	j.mu.RLock()
	defer j.mu.RUnlock()
	if k, ok := j.keys[kid]; ok {
		return k, nil
	}
	if kid == "" && len(j.keys) == 1 {
		for _, k := range j.keys {
			return k, nil
		}
	}
	select {
	case j.kick <- struct{}{}:
	default:
	}
	return nil, fmt.Errorf("no key with kid %q in the JWKS", truncate(kid, 64))
}

// jwk is the part of a JSON Web Key that RS256 and ES256 use.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS reads the signing keys of a key set; keys of other kinds or
// uses are skipped, and a set with no usable key is an error.
func parseJWKS(b []byte) (map[string]any, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("bad JWKS: %w", err)
	}
	keys := make(map[string]any)
	var errs []error
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		key, err := k.publicKey()
		if err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", k.Kid, err))
			continue
		}
		if key != nil {
			keys[k.Kid] = key
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no RS256 or ES256 key in the JWKS: %w", errors.Join(errs...))
	}
	return keys, nil
}

// publicKey decodes k; nil, nil for a kind the node does not use.
func (k jwk) publicKey() (any, error) {
	b64 := base64.RawURLEncoding
	switch {
	case k.Kty == "RSA" && (k.Alg == "" || k.Alg == "RS256"):
		n, err1 := b64.DecodeString(k.N)
		e, err2 := b64.DecodeString(k.E)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if len(n) < 256 || len(e) == 0 || len(e) > 4 {
			return nil, errors.New("RSA key smaller than 2048 bits or bad exponent")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
	case k.Kty == "EC" && k.Crv == "P-256" && (k.Alg == "" || k.Alg == "ES256"):
		x, err1 := b64.DecodeString(k.X)
		y, err2 := b64.DecodeString(k.Y)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("P-256 coordinates must be 32 bytes")
		}
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	}
	return nil, nil
}
