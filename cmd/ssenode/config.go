package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/ssecluster/ssecluster/node"
	"github.com/ssecluster/ssecluster/pubsub"
)

// config is the node's whole configuration, from the environment only. Each
// field has a default that works on a laptop and a one-line description
// that `ssenode -help` prints.
type config struct {
	Listen      string `env:"LISTEN" envDefault:":8080" help:"public listener for GET /events"`
	AdminListen string `env:"ADMIN_LISTEN" envDefault:"127.0.0.1:9090" help:"admin listener: /metrics /healthz /readyz /debug/pprof/ POST /publish"`

	RedisURL              string   `env:"REDIS_URL" help:"redis:// or rediss:// URL; empty runs the embedded in-memory broker"`
	RedisAddrs            []string `env:"REDIS_ADDRS" envSeparator:"," help:"comma-separated Sentinel addresses, or Cluster seeds (one is enough: the server says whether it is a Cluster), used when SSE_REDIS_URL is empty"`
	RedisMasterName       string   `env:"REDIS_MASTER_NAME" help:"Sentinel master name (with SSE_REDIS_ADDRS)"`
	RedisUsername         string   `env:"REDIS_USERNAME" help:"Redis ACL user; overrides the one in SSE_REDIS_URL, also used with SSE_REDIS_ADDRS"`
	RedisPassword         string   `env:"REDIS_PASSWORD" help:"Redis password; overrides the one in SSE_REDIS_URL, also used with SSE_REDIS_ADDRS"`
	RedisSentinelUsername string   `env:"REDIS_SENTINEL_USERNAME" help:"ACL user on the Sentinels themselves (with SSE_REDIS_MASTER_NAME)"`
	RedisReadReplicas     bool     `env:"REDIS_READ_REPLICAS" envDefault:"false" help:"Redis Cluster: read live events from replicas (READONLY) to spare the masters; adds the replication lag (docs/redis.md)"`
	RedisSentinelPassword string   `env:"REDIS_SENTINEL_PASSWORD" help:"password of the Sentinels themselves (their requirepass; with SSE_REDIS_MASTER_NAME)"`
	StreamPrefix          string   `env:"STREAM_PREFIX" envDefault:"sse:" help:"Redis key prefix of topic streams"`

	ReplayMaxLen  int           `env:"REPLAY_MAXLEN" envDefault:"10000" help:"entries kept per topic (XADD MAXLEN ~)"`
	ReplayMaxAge  time.Duration `env:"REPLAY_MAXAGE" envDefault:"24h" help:"age beyond which entries leave the window (0: no age limit)"`
	RingSize      int           `env:"RING_SIZE" envDefault:"1024" help:"entries held in memory per active topic for fast resume"`
	RingBytes     int64         `env:"RING_BYTES" envDefault:"67108864" help:"bytes all topics' rings hold together (data, event, traceparent and 72 per entry); beyond, the oldest entries of the least recently used topics leave first and are read from Redis"`
	PageBytes     int           `env:"REPLAY_PAGE_BYTES" envDefault:"4194304" help:"bytes of one replay page (read from Redis or the ring) per resuming client; an entry larger than this is a page alone"`
	CacheBytes    int           `env:"REPLAY_CACHE_BYTES" envDefault:"16777216" help:"bytes of the Redis pages kept a few seconds for resumes of the same topic (a page larger than a quarter of it is not kept)"`
	EmbeddedBytes int64         `env:"EMBEDDED_BYTES" envDefault:"268435456" help:"embedded broker only (no SSE_REDIS_URL or SSE_REDIS_ADDRS): bytes all topics hold together, counted as SSE_RING_BYTES counts; beyond, the oldest entries of all topics are trimmed first (resumes below them get sse-gap), and a publish larger than this gets 413"`

	ClientBuffer      int           `env:"CLIENT_BUFFER" envDefault:"64" help:"frames queued per client before the slow-client policy applies"`
	ClientBufferBytes int           `env:"CLIENT_BUFFER_BYTES" envDefault:"1048576" help:"bytes queued per client before the slow-client policy applies"`
	SlowClient        string        `env:"SLOW_CLIENT" envDefault:"disconnect" help:"slow-client policy: disconnect (client resumes) or drop (frames lost, counted)"`
	Heartbeat         time.Duration `env:"HEARTBEAT" envDefault:"15s" help:"idle time after which a keep-alive (a blank line) is sent"`
	WriteTimeout      time.Duration `env:"WRITE_TIMEOUT" envDefault:"10s" help:"deadline of each write batch to a client"`
	Retry             time.Duration `env:"RETRY" envDefault:"2s" help:"reconnection delay sent to clients in retry: (each stream gets a value in [RETRY, 2*RETRY), with its first event)"`
	MaxConnections    int           `env:"MAX_CONNECTIONS" envDefault:"100000" help:"open streams beyond which new ones get 503"`
	MaxTopics         int           `env:"MAX_TOPICS" envDefault:"16" help:"topics one stream may subscribe to"`
	SocketSndbuf      int           `env:"SOCKET_SNDBUF" envDefault:"65536" help:"kernel send buffer per stream (SO_SNDBUF); a slow client's backlog then waits in its bounded queue (0: kernel default)"`
	Hijack            bool          `env:"HIJACK" envDefault:"true" help:"take HTTP/1.1 streams over from net/http: no goroutine and no net/http buffers per idle stream"`
	AnnouncePosition  string        `env:"ANNOUNCE_POSITION" envDefault:"auto" help:"send a stream opened without a position its starting position (an id-only block) so a stream cut before its first event resumes without loss: auto (to browsers only, recognised by Sec-Fetch-Mode; browsers ignore the block), true (to every client; libraries such as go-sse, launchdarkly and r3labs deliver it as an empty event) or false"`
	ShutdownTimeout   time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s" help:"time SIGTERM gives streams to move before the process exits"`

	TLSCertFile    string `env:"TLS_CERT_FILE" help:"PEM certificate (chain) file: with SSE_TLS_KEY_FILE the public listener serves HTTPS and HTTP/2"`
	TLSKeyFile     string `env:"TLS_KEY_FILE" help:"PEM private key file of SSE_TLS_CERT_FILE"`
	MaxHeaderBytes int    `env:"MAX_HEADER_BYTES" envDefault:"16384" help:"largest request line and headers the public listener reads (beyond: 431); at least 5120 in effect, since Go's server reads 4096 bytes past its own limit"`

	JWTHS256Secret   string        `env:"JWT_HS256_SECRET" help:"HS256 secret (32 bytes or more) verifying subscribe JWTs; setting one of the SSE_JWT_ key sources requires a token to subscribe"`
	JWTPublicKeyFile string        `env:"JWT_PUBLIC_KEY_FILE" help:"PEM public key or certificate (RSA: RS256, P-256: ES256) verifying subscribe JWTs"`
	JWTJWKSURL       string        `env:"JWT_JWKS_URL" help:"JWKS URL whose RSA and P-256 keys verify subscribe JWTs (fetched at start, refreshed every 10m)"`
	JWTCookie        string        `env:"JWT_COOKIE" envDefault:"sse_token" help:"cookie a subscribe token may come in (besides Authorization: Bearer and ?access_token=)"`
	JWTIssuer        string        `env:"JWT_ISSUER" help:"iss claim a subscribe JWT must carry (empty: not checked)"`
	JWTAudience      string        `env:"JWT_AUDIENCE" help:"audience a subscribe JWT's aud must include (empty: not checked)"`
	JWTLeeway        time.Duration `env:"JWT_LEEWAY" envDefault:"30s" help:"clock skew allowed on exp and nbf; a stream closes this long after its token's exp"`
	PublishToken     string        `env:"PUBLISH_TOKEN" help:"bearer token POST /publish requires (empty: none)"`
	CORSOrigins      []string      `env:"CORS_ORIGINS" envSeparator:"," help:"comma-separated origins (https://app.example, or *) whose pages may subscribe; others get 403 (empty: no CORS)"`
	MaxConnsPerIP    int           `env:"MAX_CONNECTIONS_PER_IP" envDefault:"0" help:"open streams per client address (IPv6: per /64) beyond which new ones get 429 (0: no limit)"`
	TrustedProxies   []string      `env:"TRUSTED_PROXIES" envSeparator:"," help:"comma-separated CIDRs of load balancers whose X-Forwarded-For gives the client address for SSE_MAX_CONNECTIONS_PER_IP"`

	NodeID             string        `env:"NODE_ID" help:"this node's ID in the cluster membership (empty: host name and a random suffix)"`
	AdvertiseAddr      string        `env:"ADVERTISE_ADDR" help:"address GET /cluster shows for this node (empty: SSE_LISTEN)"`
	ClusterRefresh     time.Duration `env:"CLUSTER_REFRESH" envDefault:"2s" help:"how often the node registers in the cluster membership (in Redis) and reads the other nodes'"`
	ClusterTTL         time.Duration `env:"CLUSTER_TTL" envDefault:"6s" help:"how long a node that stopped refreshing (killed) stays listed; above SSE_CLUSTER_REFRESH"`
	Rebalance          bool          `env:"REBALANCE" envDefault:"true" help:"while this node holds more than its share of the cluster's streams, close the excess gradually (clients resume elsewhere)"`
	RebalanceRate      float64       `env:"REBALANCE_RATE" envDefault:"20" help:"most streams closed per second to rebalance"`
	RebalanceTolerance float64       `env:"REBALANCE_TOLERANCE" envDefault:"0.1" help:"fraction above its share a node may hold before it sheds streams"`
	MaxStreamAge       time.Duration `env:"MAX_STREAM_AGE" envDefault:"0" help:"close every stream older than this, jittered ±10%, so clients reconnect and resume (0: never)"`

	LogLevel  string `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat string `env:"LOG_FORMAT" envDefault:"json" help:"json or text"`
}

const envPrefix = "SSE_"

// loadConfig reads the environment given as a map (os.Environ in main).
func loadConfig(environ map[string]string) (config, error) {
	var c config
	if err := env.ParseWithOptions(&c, env.Options{Prefix: envPrefix, Environment: environ}); err != nil {
		return c, fmt.Errorf("config: %w", nameVariables(err))
	}
	return c, c.validate()
}

// nameVariables rewrites env's parse errors, which name Go fields, to name
// the variables the user set.
func nameVariables(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	t := reflect.TypeFor[config]()
	var out []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				out = append(out, fmt.Errorf("%s%s: %w", envPrefix, f.Tag.Get("env"), pe.Err))
				continue
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func (c config) validate() error {
	var errs []error
	if c.ReplayMaxLen < 1 {
		errs = append(errs, fmt.Errorf("SSE_REPLAY_MAXLEN=%d: must be at least 1", c.ReplayMaxLen))
	}
	if c.ReplayMaxAge < 0 {
		errs = append(errs, fmt.Errorf("SSE_REPLAY_MAXAGE=%v: must not be negative", c.ReplayMaxAge))
	}
	if c.RingSize < 1 {
		errs = append(errs, fmt.Errorf("SSE_RING_SIZE=%d: must be at least 1", c.RingSize))
	}
	if c.RingBytes < 1 || c.PageBytes < 1 || c.CacheBytes < 1 || c.EmbeddedBytes < 1 {
		errs = append(errs, fmt.Errorf("SSE_RING_BYTES=%d, SSE_REPLAY_PAGE_BYTES=%d, SSE_REPLAY_CACHE_BYTES=%d, SSE_EMBEDDED_BYTES=%d: must be positive", c.RingBytes, c.PageBytes, c.CacheBytes, c.EmbeddedBytes))
	}
	if c.ClientBuffer < 1 || c.ClientBufferBytes < 1 {
		errs = append(errs, fmt.Errorf("SSE_CLIENT_BUFFER=%d, SSE_CLIENT_BUFFER_BYTES=%d: must be positive", c.ClientBuffer, c.ClientBufferBytes))
	}
	if c.AnnouncePosition != "auto" && c.AnnouncePosition != "true" && c.AnnouncePosition != "false" {
		errs = append(errs, fmt.Errorf("SSE_ANNOUNCE_POSITION=%q: want auto, true or false", c.AnnouncePosition))
	}
	if c.SlowClient != "disconnect" && c.SlowClient != "drop" {
		errs = append(errs, fmt.Errorf("SSE_SLOW_CLIENT=%q: want disconnect or drop", c.SlowClient))
	}
	for name, d := range map[string]time.Duration{"SSE_HEARTBEAT": c.Heartbeat, "SSE_WRITE_TIMEOUT": c.WriteTimeout, "SSE_RETRY": c.Retry, "SSE_SHUTDOWN_TIMEOUT": c.ShutdownTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%v: must be positive", name, d))
		}
	}
	if c.SocketSndbuf < 0 {
		errs = append(errs, fmt.Errorf("SSE_SOCKET_SNDBUF=%d: must not be negative", c.SocketSndbuf))
	}
	if c.MaxConnections < 1 || c.MaxTopics < 1 {
		errs = append(errs, fmt.Errorf("SSE_MAX_CONNECTIONS=%d, SSE_MAX_TOPICS=%d: must be positive", c.MaxConnections, c.MaxTopics))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("SSE_TLS_CERT_FILE, SSE_TLS_KEY_FILE: set both or neither"))
	}
	if c.MaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("SSE_MAX_HEADER_BYTES=%d: must be at least 1024", c.MaxHeaderBytes))
	}
	if k := btoi(c.JWTHS256Secret != "") + btoi(c.JWTPublicKeyFile != "") + btoi(c.JWTJWKSURL != ""); k > 1 {
		errs = append(errs, errors.New("SSE_JWT_HS256_SECRET, SSE_JWT_PUBLIC_KEY_FILE, SSE_JWT_JWKS_URL: set at most one"))
	}
	if c.JWTHS256Secret != "" && len(c.JWTHS256Secret) < 32 {
		errs = append(errs, fmt.Errorf("SSE_JWT_HS256_SECRET: %d bytes, want at least 32", len(c.JWTHS256Secret)))
	}
	if c.JWTJWKSURL != "" && !strings.HasPrefix(c.JWTJWKSURL, "https://") && !strings.HasPrefix(c.JWTJWKSURL, "http://") {
		errs = append(errs, fmt.Errorf("SSE_JWT_JWKS_URL=%q: want an http(s):// URL", c.JWTJWKSURL))
	}
	if c.JWTCookie == "" {
		errs = append(errs, errors.New("SSE_JWT_COOKIE: must not be empty"))
	}
	for _, o := range c.CORSOrigins {
		if o = strings.TrimSpace(o); o != "*" && !strings.HasPrefix(o, "https://") && !strings.HasPrefix(o, "http://") {
			errs = append(errs, fmt.Errorf("SSE_CORS_ORIGINS: %q: want * or scheme://host[:port]", o))
		}
	}
	if c.MaxConnsPerIP < 0 {
		errs = append(errs, fmt.Errorf("SSE_MAX_CONNECTIONS_PER_IP=%d: must not be negative", c.MaxConnsPerIP))
	}
	if _, err := node.ParseTrustedProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("SSE_TRUSTED_PROXIES: %w", err))
	}
	errs = append(errs, c.validateCluster()...)
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("SSE_LOG_FORMAT=%q: want json or text", c.LogFormat))
	}
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") && !strings.HasPrefix(c.RedisURL, "unix://") {
		errs = append(errs, fmt.Errorf("SSE_REDIS_URL: want a redis:// or rediss:// URL"))
	} else if err := pubsub.CheckRedisURL(c.RedisURL); err != nil {
		errs = append(errs, fmt.Errorf("SSE_REDIS_URL: %w", err))
	}
	return errors.Join(errs...)
}

func (c config) validateCluster() []error {
	var errs []error
	if c.ClusterRefresh < time.Millisecond || c.ClusterTTL <= c.ClusterRefresh {
		errs = append(errs, fmt.Errorf("SSE_CLUSTER_REFRESH=%v, SSE_CLUSTER_TTL=%v: want a positive refresh and a TTL above it", c.ClusterRefresh, c.ClusterTTL))
	}
	if !(c.RebalanceRate > 0) || math.IsInf(c.RebalanceRate, 1) {
		errs = append(errs, fmt.Errorf("SSE_REBALANCE_RATE=%v: must be positive", c.RebalanceRate))
	}
	if !(c.RebalanceTolerance > 0 && c.RebalanceTolerance < 1) {
		errs = append(errs, fmt.Errorf("SSE_REBALANCE_TOLERANCE=%v: want a fraction between 0 and 1", c.RebalanceTolerance))
	}
	if c.MaxStreamAge < 0 {
		errs = append(errs, fmt.Errorf("SSE_MAX_STREAM_AGE=%v: must not be negative", c.MaxStreamAge))
	}
	return errs
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// subscribeAuth reports whether subscribing needs a token.
func (c config) subscribeAuth() bool {
	return c.JWTHS256Secret != "" || c.JWTPublicKeyFile != "" || c.JWTJWKSURL != ""
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("SSE_LOG_LEVEL=%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// printHelp lists every variable with its default and description.
func printHelp(w io.Writer) {
	fmt.Fprintln(w, "ssenode: a Server-Sent Events node fed by Redis Streams (or an embedded broker).")
	fmt.Fprintln(w, "Configuration is read from the environment only:")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	t := reflect.TypeFor[config]()
	for i := range t.NumField() {
		f := t.Field(i)
		def := f.Tag.Get("envDefault")
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(tw, "  %s%s\t%s\t%s\n", envPrefix, f.Tag.Get("env"), def, f.Tag.Get("help"))
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "OpenTelemetry's standard OTEL_* variables configure tracing when set.")
}
