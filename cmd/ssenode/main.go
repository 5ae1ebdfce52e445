// Command ssenode runs one node of the SSE cluster: the public /events
// listener and the admin listener, fed by Redis Streams or, with no Redis
// configured, by an embedded in-memory broker.
//
// Configuration is the environment only; `ssenode -help` lists it.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ssecluster/ssecluster/node"
	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
}

func environ() map[string]string {
	m := make(map[string]string)
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// broker is what main needs of either broker beyond what node (and its
// replay window) uses.
type broker interface {
	node.Broker
	Close() error
}

// adminReadTimeout bounds reading a whole admin request, body included.
const adminReadTimeout = 15 * time.Second

// Both brokers serve a node and its window.
var (
	_ broker = (*pubsub.Redis)(nil)
	_ broker = (*pubsub.Memory)(nil)
)

func run(args []string, env map[string]string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ssenode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, once, to the right stream
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout)
			return 0
		}
		printHelp(stderr)
		return 2
	}
	cfg, err := loadConfig(env)
	if err != nil {
		fmt.Fprintf(stderr, "ssenode: %v\n(see ssenode -help)\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)

	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			log.Error("SSE_TLS_CERT_FILE, SSE_TLS_KEY_FILE", "err", err)
			return 1
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	b, mode, err := newBroker(cfg, log, reg)
	if err != nil {
		log.Error("broker", "err", err)
		return 1
	}
	defer b.Close()

	tp, stopTracing, err := setupTracing(context.Background(), env)
	if err != nil {
		log.Error("tracing", "err", err)
		return 1
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = stopTracing(ctx)
	}()

	auth, err := newAuth(cfg, log)
	if err != nil {
		log.Error("subscribe auth", "err", err)
		return 1
	}
	defer auth.Close()
	var authz node.Authorizer // nil lets anyone subscribe; a nil *JWTAuth would not
	if auth != nil {
		authz = auth
	}
	trusted, _ := node.ParseTrustedProxies(cfg.TrustedProxies) // validated by loadConfig
	n, err := node.New(node.Config{
		ClientBuffer:       cfg.ClientBuffer,
		ClientBufferBytes:  cfg.ClientBufferBytes,
		SlowClient:         cfg.SlowClient,
		Heartbeat:          cfg.Heartbeat,
		WriteTimeout:       cfg.WriteTimeout,
		Retry:              cfg.Retry,
		MaxConnections:     cfg.MaxConnections,
		MaxTopics:          cfg.MaxTopics,
		NoHijack:           !cfg.Hijack,
		AnnouncePosition:   cfg.AnnouncePosition == "true",
		AnnounceToBrowsers: cfg.AnnouncePosition == "auto",
		SocketSendBuffer:   cfg.SocketSndbuf,
		TracerProvider:     tp,
		Auth:               authz,
		Window: replay.Config{RingSize: cfg.RingSize, MaxAge: cfg.ReplayMaxAge,
			RingBytes: cfg.RingBytes, PageBytes: cfg.PageBytes, PageCacheBytes: cfg.CacheBytes},
		PublishToken:        cfg.PublishToken,
		CORSOrigins:         cfg.CORSOrigins,
		MaxConnectionsPerIP: cfg.MaxConnsPerIP,
		TrustedProxies:      trusted,
		Logger:              log,
		Registerer:          reg,
	}, b)
	if err != nil {
		log.Error("node", "err", err)
		return 1
	}
	registerReplayMetrics(reg, n.WindowStats)
	if err := n.Start(); err != nil {
		log.Error("start", "err", err)
		return 1
	}
	cl, members, err := startCluster(cfg, n, b, log)
	if err != nil {
		log.Error("cluster", "err", err)
		return 1
	}
	defer members.Close() // both also closed after the drain, in order
	defer cl.Close()

	pubLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("listen", "addr", cfg.Listen, "err", err)
		return 1
	}
	adminLn, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		pubLn.Close()
		log.Error("listen admin", "addr", cfg.AdminListen, "err", err)
		return 1
	}
	// No WriteTimeout: it would cut every healthy stream after a fixed time.
	// Each write batch has its own deadline instead.
	pub := &http.Server{
		Handler:           n.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    serverHeaderBytes(cfg.MaxHeaderBytes),
		TLSConfig:         tlsConfig, // HTTP/2 too: net/http offers h2 over TLS
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	admin := &http.Server{
		Handler:           n.AdminHandler(reg),
		ReadHeaderTimeout: 10 * time.Second,
		// A publish body (up to 4 MiB) arrives within this, or its
		// connection is closed: a publisher that stalls mid-body does not
		// hold its buffer for ever. No WriteTimeout: a CPU profile takes
		// its ?seconds= to answer.
		ReadTimeout: adminReadTimeout,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 2)
	var streams net.Listener = pubLn
	if cfg.SocketSndbuf > 0 {
		streams = sndbufListener{Listener: pubLn, size: cfg.SocketSndbuf}
	}
	go func() { errc <- serve(pub, streams) }()
	for _, w := range exposureWarnings(cfg, pubLn.Addr(), adminLn.Addr()) {
		log.Warn(w)
	}
	go func() { errc <- serve(admin, adminLn) }()
	log.Info("ssenode ready", "listen", pubLn.Addr().String(), "admin", adminLn.Addr().String(), "broker", mode, "tls", tlsConfig != nil)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	code := 0
	select {
	case s := <-sigs:
		log.Info("signal: draining", "signal", s.String(), "streams", n.Connections(), "timeout", cfg.ShutdownTimeout)
	case err := <-errc:
		log.Error("listener failed", "err", err)
		code = 1
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// A second signal exits at once.
	go func() {
		select {
		case s := <-sigs:
			log.Warn("second signal: exiting now", "signal", s.String())
			os.Exit(1)
		case <-ctx.Done():
		}
	}()
	// Drain first: Shutdown never finishes while streams are open. The
	// drain stops a little before the deadline, so that closing what is
	// left still ends within SSE_SHUTDOWN_TIMEOUT.
	drainCtx, drainCancel := context.WithTimeout(ctx, cfg.ShutdownTimeout-min(cfg.ShutdownTimeout/10, 500*time.Millisecond))
	if err := n.Drain(drainCtx); err != nil {
		log.Warn("drain incomplete", "err", err)
	}
	drainCancel()
	// Listed as draining until now, so no other node shed meanwhile.
	cl.Close()
	members.Close()
	if err := pub.Shutdown(ctx); err != nil {
		log.Warn("public listener shutdown", "err", err)
		pub.Close()
	}
	n.Close() // hijacked streams: Shutdown does not see them
	if err := admin.Shutdown(ctx); err != nil {
		admin.Close()
	}
	log.Info("ssenode stopped")
	return code
}

func serve(s *http.Server, ln net.Listener) error {
	var err error
	if s.TLSConfig != nil {
		err = s.ServeTLS(ln, "", "") // the certificate is in TLSConfig
	} else {
		err = s.Serve(ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newAuth builds the subscribe token verifier; nil when no SSE_JWT_ key
// source is set (anyone may subscribe).
func newAuth(cfg config, log *slog.Logger) (*node.JWTAuth, error) {
	if !cfg.subscribeAuth() {
		return nil, nil
	}
	jc := node.JWTConfig{
		HS256Secret: []byte(cfg.JWTHS256Secret), JWKSURL: cfg.JWTJWKSURL, Cookie: cfg.JWTCookie,
		Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: cfg.JWTLeeway, Logger: log,
	}
	if cfg.JWTPublicKeyFile != "" {
		b, err := os.ReadFile(cfg.JWTPublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("SSE_JWT_PUBLIC_KEY_FILE: %w", err)
		}
		jc.PublicKeyPEM = b
	}
	return node.NewJWTAuth(jc)
}

// exposureWarnings says what anyone who can reach a non-loopback listener
// may do without credentials.
func exposureWarnings(cfg config, pub, admin net.Addr) []string {
	var out []string
	if !cfg.subscribeAuth() && !isLoopback(pub) {
		out = append(out, fmt.Sprintf("public listener %s is not loopback and subscribing needs no token: anyone who reaches it can read every topic (set SSE_JWT_HS256_SECRET, SSE_JWT_PUBLIC_KEY_FILE or SSE_JWT_JWKS_URL)", pub))
	}
	if cfg.PublishToken == "" && !isLoopback(admin) {
		out = append(out, fmt.Sprintf("admin listener %s is not loopback and POST /publish needs no token: anyone who reaches it can publish (set SSE_PUBLISH_TOKEN)", admin))
	}
	return out
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// headerSlop is what net/http reads past http.Server.MaxHeaderBytes
// before it answers 431 (its bufio slop).
const headerSlop = 4096

// serverHeaderBytes is the http.Server.MaxHeaderBytes that refuses a
// request line and headers longer than limit bytes, or than headerSlop+1024
// for a smaller limit.
func serverHeaderBytes(limit int) int { return max(limit-headerSlop, 1024) }

func newLogger(cfg config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func newBroker(cfg config, log *slog.Logger, reg prometheus.Registerer) (broker, string, error) {
	if cfg.RedisURL == "" && len(cfg.RedisAddrs) == 0 {
		m, err := pubsub.NewMemory(pubsub.MemoryConfig{MaxLen: cfg.ReplayMaxLen, MaxAge: cfg.ReplayMaxAge, MaxBytes: cfg.EmbeddedBytes})
		if err != nil {
			return nil, "", err
		}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_embedded_bytes", Help: "Bytes the embedded broker's topics hold (counted as sse_ring_bytes), against SSE_EMBEDDED_BYTES.",
		}, func() float64 { return float64(m.HeldBytes()) }))
		return m, "memory", nil
	}
	bm := node.NewBrokerMetrics(reg)
	pubsub.SetRedisLogger(log)
	r, err := pubsub.NewRedis(pubsub.RedisConfig{
		URL:              cfg.RedisURL,
		Addrs:            cfg.RedisAddrs,
		MasterName:       cfg.RedisMasterName,
		Username:         cfg.RedisUsername,
		Password:         cfg.RedisPassword,
		SentinelUsername: cfg.RedisSentinelUsername,
		SentinelPassword: cfg.RedisSentinelPassword,
		ReadReplicas:     cfg.RedisReadReplicas,
		Prefix:           cfg.StreamPrefix,
		MaxLen:           int64(cfg.ReplayMaxLen),
		MaxAge:           cfg.ReplayMaxAge,
		Logger:           log,
		OnBadEntry:       bm.BadEntry,
		OnReadError:      bm.ReadError,
	})
	if err != nil {
		return nil, "", err
	}
	reg.MustRegister(newShardCollector(r))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shards, err := r.Shards(ctx)
	log.Info("redis broker", "mode", r.Mode(), "shards", shards, "err", err)
	return r, "redis-" + r.Mode(), nil
}

// shardCollector exports sse_broker_shard_up{shard}: 1 while the node
// reads a Redis master (a Cluster shard; "" outside Cluster mode) without
// error. It is refilled from the broker at each scrape, so a master that
// left the slot map leaves no stale series behind.
type shardCollector struct {
	r  *pubsub.Redis
	up *prometheus.GaugeVec
}

func newShardCollector(r *pubsub.Redis) shardCollector {
	return shardCollector{r: r, up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sse_broker_shard_up",
		Help: "1 while this node's readers read the Redis master (Cluster shard) without error, 0 while they fail.",
	}, []string{"shard"})}
}

func (c shardCollector) Describe(ch chan<- *prometheus.Desc) { c.up.Describe(ch) }

func (c shardCollector) Collect(ch chan<- prometheus.Metric) {
	c.up.Reset()
	for _, s := range c.r.ShardStates() {
		v := 0.0
		if s.Up {
			v = 1
		}
		c.up.WithLabelValues(s.Addr).Set(v)
	}
	c.up.Collect(ch)
}

// sndbufListener caps the kernel send buffer of every accepted connection
// (SSE_SOCKET_SNDBUF), so that on the net/http path too a slow client's
// backlog waits in its bounded queue, where the slow-client policy applies,
// and not in a kernel buffer that autotuning grows to megabytes.
type sndbufListener struct {
	net.Listener
	size int
}

func (l sndbufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		_ = tc.SetWriteBuffer(l.size)
	}
	return c, err
}

// startCluster registers the node in the cluster membership (Redis, or
// this node alone with the embedded broker) and starts rebalancing.
func startCluster(cfg config, n *node.Node, b broker, log *slog.Logger) (*node.Cluster, *pubsub.Members, error) {
	cl, err := node.NewCluster(n, node.ClusterConfig{
		NoRebalance:   !cfg.Rebalance,
		RebalanceRate: cfg.RebalanceRate,
		Tolerance:     cfg.RebalanceTolerance,
		MaxStreamAge:  cfg.MaxStreamAge,
	})
	if err != nil {
		return nil, nil, err
	}
	addr := cfg.AdvertiseAddr
	if addr == "" {
		addr = cfg.Listen
	}
	mc := pubsub.MembersConfig{ID: cfg.NodeID, Addr: addr, Version: buildVersion(), Refresh: cfg.ClusterRefresh, TTL: cfg.ClusterTTL, Status: cl.Status, Logger: log}
	var members *pubsub.Members
	if r, ok := b.(*pubsub.Redis); ok {
		members, err = pubsub.NewRedisMembers(r, mc)
	} else {
		members, err = pubsub.NewLocalMembers(mc)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := members.Start(); err != nil {
		// Refreshing goes on: the node joins when Redis answers.
		log.Warn("cluster membership: first registration failed", "err", err)
	}
	if err := cl.Start(members); err != nil {
		members.Close()
		return nil, nil, err
	}
	log.Info("cluster membership", "node", members.ID(), "refresh", cfg.ClusterRefresh, "ttl", cfg.ClusterTTL, "rebalance", cfg.Rebalance)
	return cl, members, nil
}

// buildVersion is the module version and VCS revision the binary was built from.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}
