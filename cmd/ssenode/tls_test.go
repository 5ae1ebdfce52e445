package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// selfSigned writes a certificate for 127.0.0.1 and its key to dir and
// returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ssenode test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// A node with a certificate serves HTTPS: HTTP/2 to clients that offer it
// (browsers then share one connection for all their streams) and HTTP/1.1
// to the others. The same process requires a subscribe token and a publish
// token, so the wiring of both is checked end to end.
func TestTLSAndTokens(t *testing.T) {
	bin := buildNode(t)
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	secret := "0123456789abcdef0123456789abcdef"
	pub, admin := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SSE_LISTEN="+pub, "SSE_ADMIN_LISTEN="+admin, "SSE_LOG_FORMAT=text",
		"SSE_TLS_CERT_FILE="+certFile, "SSE_TLS_KEY_FILE="+keyFile,
		"SSE_JWT_HS256_SECRET="+secret, "SSE_PUBLISH_TOKEN=pt")
	var logs syncBuffer // written by exec's copier while the test reads it
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitProcess(t, cmd)
	waitFor(t, "readyz 200", func() bool { return status("http://"+admin+"/readyz") == 200 })
	defer func() {
		if t.Failed() {
			t.Logf("node logs:\n%s", logs.String())
		}
	}()

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sse.subscribe": []string{"tls.*"}, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	defer h2.CloseIdleConnections()
	defer h1.CloseIdleConnections()
	u := "https://" + pub + "/events?topic=tls.a"

	// No token: 401, over HTTP/2.
	resp, err := h2.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.ProtoMajor != 2 {
		t.Fatalf("no token: %s %s, want 401 over HTTP/2", resp.Proto, resp.Status)
	}

	var streams []*bufio.Reader
	for _, c := range []struct {
		client *http.Client
		major  int
	}{{h2, 2}, {h2, 2}, {h1, 1}} {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != c.major {
			t.Fatalf("stream: %s %s, want 200 over HTTP/%d", resp.Proto, resp.Status, c.major)
		}
		streams = append(streams, bufio.NewReader(resp.Body))
	}

	publish := func(auth string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/publish",
			strings.NewReader(url.Values{"topic": {"tls.a"}, "data": {"over tls"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := publish(""); code != http.StatusUnauthorized {
		t.Fatalf("publish without token: %d, want 401", code)
	}
	if code := publish("Bearer pt"); code != http.StatusOK {
		t.Fatalf("publish with token: %d, want 200", code)
	}
	for i, s := range streams {
		if !readUntil(s, "data: over tls") {
			t.Fatalf("stream %d did not get the event", i)
		}
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Fatalf("warnings on loopback listeners with auth:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSecurityConfigErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := selfSigned(t, dir)
	tests := []struct {
		env  map[string]string
		code int
		want string
	}{
		{map[string]string{"SSE_TLS_CERT_FILE": certFile}, 2, "SSE_TLS_CERT_FILE, SSE_TLS_KEY_FILE: set both or neither"},
		{map[string]string{"SSE_TLS_KEY_FILE": keyFile}, 2, "set both or neither"},
		{map[string]string{"SSE_TLS_CERT_FILE": keyFile, "SSE_TLS_KEY_FILE": certFile}, 1, "SSE_TLS_CERT_FILE"},
		{map[string]string{"SSE_TLS_CERT_FILE": filepath.Join(dir, "none"), "SSE_TLS_KEY_FILE": keyFile}, 1, "no such file"},
		{map[string]string{"SSE_JWT_HS256_SECRET": "short"}, 2, "SSE_JWT_HS256_SECRET: 5 bytes, want at least 32"},
		{map[string]string{"SSE_JWT_HS256_SECRET": strings.Repeat("s", 32), "SSE_JWT_JWKS_URL": "https://idp/jwks"}, 2, "set at most one"},
		{map[string]string{"SSE_JWT_JWKS_URL": "ftp://idp/jwks"}, 2, "SSE_JWT_JWKS_URL"},
		{map[string]string{"SSE_JWT_PUBLIC_KEY_FILE": filepath.Join(dir, "none")}, 1, "SSE_JWT_PUBLIC_KEY_FILE"},
		{map[string]string{"SSE_JWT_PUBLIC_KEY_FILE": certFile + "x"}, 1, "SSE_JWT_PUBLIC_KEY_FILE"},
		{map[string]string{"SSE_JWT_PUBLIC_KEY_FILE": keyFile}, 1, "want PUBLIC KEY or CERTIFICATE"},
		{map[string]string{"SSE_CORS_ORIGINS": "app.example"}, 2, "SSE_CORS_ORIGINS"},
		{map[string]string{"SSE_MAX_CONNECTIONS_PER_IP": "-1"}, 2, "SSE_MAX_CONNECTIONS_PER_IP"},
		{map[string]string{"SSE_TRUSTED_PROXIES": "10.0.0.0/99"}, 2, "SSE_TRUSTED_PROXIES"},
		{map[string]string{"SSE_MAX_HEADER_BYTES": "10"}, 2, "SSE_MAX_HEADER_BYTES"},
	}
	for _, tt := range tests {
		env := map[string]string{"SSE_LISTEN": "127.0.0.1:0", "SSE_ADMIN_LISTEN": "127.0.0.1:0"}
		for k, v := range tt.env {
			env[k] = v
		}
		var out, errOut bytes.Buffer
		if code := run(nil, env, &out, &errOut); code != tt.code || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d containing %q", tt.env, code, errOut.String(), tt.code, tt.want)
		}
	}
}

func TestExposureWarnings(t *testing.T) {
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	any4 := &net.TCPAddr{IP: net.IPv4zero, Port: 8080}
	any6 := &net.TCPAddr{IP: net.IPv6unspecified, Port: 9090}
	secret := strings.Repeat("s", 32)
	tests := []struct {
		name       string
		cfg        config
		pub, admin net.Addr
		want       []string
	}{
		{"all loopback", config{}, loop, loop, nil},
		{"public open", config{}, any4, loop, []string{"public listener 0.0.0.0:8080 is not loopback and subscribing needs no token"}},
		{"public with JWT", config{JWTHS256Secret: secret}, any4, loop, nil},
		{"admin open", config{}, loop, any6, []string{"admin listener [::]:9090 is not loopback and POST /publish needs no token"}},
		{"admin with token", config{PublishToken: "t"}, loop, any6, nil},
		{"both open", config{}, any4, any6, []string{"public listener", "admin listener"}},
	}
	for _, tt := range tests {
		got := exposureWarnings(tt.cfg, tt.pub, tt.admin)
		if len(got) != len(tt.want) {
			t.Errorf("%s: %q, want %d warnings", tt.name, got, len(tt.want))
			continue
		}
		for i, w := range tt.want {
			if !strings.HasPrefix(got[i], w) {
				t.Errorf("%s: %q, want it to start with %q", tt.name, got[i], w)
			}
		}
	}
}
