// Package redistest gives integration tests a real Redis: a redis:7
// container started with testcontainers-go, or the server named by
// SSE_TEST_REDIS_ADDR. Tests that stop, restart or stall Redis ask for a
// container of their own with WithContainer.
package redistest

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
)

// EnvAddr names an existing Redis (host:port or a redis:// URL) to use
// instead of starting a container.
const EnvAddr = "SSE_TEST_REDIS_ADDR"

// EnvImage names another Redis image for the tests' containers (for
// example one that deploy/images/seed.sh built under SEED_TAG_SUFFIX).
const EnvImage = "SSE_TEST_REDIS_IMAGE"

// Image is the Redis image the tests run, redis:7 unless SSE_TEST_REDIS_IMAGE
// is set; integration/seed-images.sh pulls or builds it.
var Image = cmp.Or(os.Getenv(EnvImage), "redis:7")

// Server is a Redis for one test.
type Server struct {
	// Addr is host:port. It does not change across Stop and Start: the
	// container's port is bound to a fixed loopback port.
	Addr string
	url  string

	ctr *tcredis.RedisContainer // nil for an external server

	mu     sync.Mutex
	client *redis.Client // lazily made by Client; closed at cleanup
}

type options struct {
	aof       bool
	container bool
}

// Option changes what Start starts.
type Option func(*options)

// WithAOF turns on the append-only file with fsync on every write, so that
// a Stop and Start of the container keeps every acknowledged entry.
func WithAOF() Option { return func(o *options) { o.aof = true } }

// WithContainer always starts a container of the test's own, even when
// SSE_TEST_REDIS_ADDR is set: for tests that Stop, Start or stall Redis and
// must not disturb others.
func WithContainer() Option { return func(o *options) { o.container = true } }

// Start returns a Redis for t: the one named by SSE_TEST_REDIS_ADDR, or a
// new redis:7 container terminated by t.Cleanup. The container allows DEBUG
// (for DEBUG SLEEP stalls). Unless already set, it sets
// TESTCONTAINERS_RYUK_DISABLED=true (containers are cleaned by the test
// itself) and TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1 (the port is published
// on loopback only).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{}
	t.Cleanup(s.closeClient)
	if v := os.Getenv(EnvAddr); v != "" && !o.container {
		s.url, s.Addr = v, v
		if strings.Contains(v, "://") {
			opt, err := redis.ParseURL(v)
			if err != nil {
				t.Fatalf("redistest: %s=%q: %v", EnvAddr, v, err)
			}
			s.Addr = opt.Addr
		} else {
			s.url = "redis://" + v
		}
		s.waitReady(t)
		return s
	}
	setDefaultEnv("TESTCONTAINERS_RYUK_DISABLED", "true")
	// The port is bound on loopback (below), so loopback is where to reach
	// it. Left alone, testcontainers running inside a container (as in CI
	// here, /.dockerenv) picks the bridge gateway, where nothing listens.
	setDefaultEnv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	args := []string{"--enable-debug-command", "yes", "--save", ""}
	if o.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	// A fixed host port, so that the address survives Stop and Start
	// (Docker picks a new ephemeral port on every start otherwise). The
	// port is free when chosen; another process could take it before
	// Docker binds it, hence one retry.
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		port := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		s.ctr, err = tcredis.Run(ctx, Image,
			testcontainers.WithLogger(tclog.TestLogger(t)),
			testcontainers.WithCmdArgs(args...),
			testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
				hc.PortBindings = network.PortMap{
					network.MustParsePort("6379/tcp"): {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(port)}},
				}
			}),
		)
		cancel()
		if s.ctr != nil {
			ctr := s.ctr
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := ctr.Terminate(ctx); err != nil {
					t.Errorf("redistest: terminate container: %v", err)
				}
			})
		}
		if err == nil {
			s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			s.url = "redis://" + s.Addr
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: start %s: %v", Image, err)
	}
	s.waitReady(t)
	return s
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return s.url }

// External reports whether the server came from SSE_TEST_REDIS_ADDR.
func (s *Server) External() bool { return s.ctr == nil }

// Stop stops the container (SIGTERM: Redis flushes its AOF and exits). It
// fails the test for an external server.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.needContainer(t, "Stop")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	timeout := 10 * time.Second
	if err := s.ctr.Stop(ctx, &timeout); err != nil {
		t.Fatalf("redistest: stop: %v", err)
	}
}

// Start starts a stopped container again on the same address and waits
// until it answers PING (which, with AOF, is after the file is loaded).
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.needContainer(t, "Start")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.ctr.Start(ctx); err != nil {
		t.Fatalf("redistest: start: %v", err)
	}
	s.waitReady(t)
}

// Client returns a client of the server, closed at the end of the test.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		opt, err := redis.ParseURL(s.url)
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		// No retries: a test that stalls Redis wants to see the failure.
		opt.MaxRetries = -1
		opt.ContextTimeoutEnabled = true
		s.client = redis.NewClient(opt)
	}
	return s.client
}

// Do runs one command within 10s and returns its reply or error.
func (s *Server) Do(t testing.TB, args ...any) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Client(t).Do(ctx, args...).Result()
}

// MustDo runs one command and fails the test on an error (redis.Nil, a nil
// reply, is not an error here).
func (s *Server) MustDo(t testing.TB, args ...any) any {
	t.Helper()
	v, err := s.Do(t, args...)
	if err != nil && err != redis.Nil {
		t.Fatalf("redistest: %v: %v", args, err)
	}
	return v
}

// Prefix returns a key prefix of the test's own, "t-<random>:", so tests can
// share a server.
func Prefix(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return "t-" + hex.EncodeToString(b[:]) + ":"
}

func (s *Server) needContainer(t testing.TB, op string) {
	t.Helper()
	if s.ctr == nil {
		t.Fatalf("redistest: %s needs a container of the test's own; use WithContainer (the server is %s from %s)", op, s.Addr, EnvAddr)
	}
}

// waitReady polls PING until it answers, for at most 30s.
func (s *Server) waitReady(t testing.TB) {
	t.Helper()
	opt, err := redis.ParseURL(s.url)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	opt.MaxRetries = -1
	c := redis.NewClient(opt)
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: %s does not answer PING: %v", s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) closeClient() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		_ = s.client.Close()
		s.client = nil
	}
}

// setDefaultEnv sets an environment variable unless it is already set.
// testcontainers reads these when it first needs them, so this runs before
// any testcontainers call.
func setDefaultEnv(name, value string) {
	if _, ok := os.LookupEnv(name); !ok {
		os.Setenv(name, value)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// String describes the server for test logs.
func (s *Server) String() string {
	if s.ctr == nil {
		return fmt.Sprintf("redis %s (%s)", s.Addr, EnvAddr)
	}
	return fmt.Sprintf("redis %s (container %.12s)", s.Addr, s.ctr.GetContainerID())
}
