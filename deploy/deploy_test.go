package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The contract these files are checked against: DESIGN.md and the names the
// lead fixed for cmd/ssenode (environment, metrics). Keep them in step.

// envVars maps every ssenode environment variable to a check of its value.
var envVars = map[string]func(string) error{
	"SSE_LISTEN":                  checkListen,
	"SSE_ADMIN_LISTEN":            checkListen,
	"SSE_REDIS_URL":               checkRedisURL,
	"SSE_REDIS_ADDRS":             anyValue,
	"SSE_REDIS_MASTER_NAME":       anyValue,
	"SSE_REDIS_USERNAME":          anyValue,
	"SSE_REDIS_PASSWORD":          anyValue,
	"SSE_REDIS_SENTINEL_USERNAME": anyValue,
	"SSE_REDIS_SENTINEL_PASSWORD": anyValue,
	"SSE_REDIS_READ_REPLICAS":     anyValue,
	"SSE_STREAM_PREFIX":           anyValue,
	"SSE_REPLAY_MAXLEN":           checkCount,
	"SSE_REPLAY_MAXAGE":           checkDuration,
	"SSE_RING_SIZE":               checkCount,
	"SSE_RING_BYTES":              checkCount,
	"SSE_EMBEDDED_BYTES":          checkCount,
	"SSE_REPLAY_PAGE_BYTES":       checkCount,
	"SSE_REPLAY_CACHE_BYTES":      checkCount,
	"SSE_CLIENT_BUFFER":           checkCount,
	"SSE_CLIENT_BUFFER_BYTES":     checkCount,
	"SSE_SLOW_CLIENT":             oneOf("disconnect", "drop"),
	"SSE_HEARTBEAT":               checkDuration,
	"SSE_WRITE_TIMEOUT":           checkDuration,
	"SSE_RETRY":                   checkDuration,
	"SSE_MAX_CONNECTIONS":         checkCount,
	"SSE_MAX_TOPICS":              checkCount,
	"SSE_SOCKET_SNDBUF":           checkCount,
	"SSE_HIJACK":                  oneOf("true", "false"),
	"SSE_ANNOUNCE_POSITION":       oneOf("auto", "true", "false"),
	"SSE_SHUTDOWN_TIMEOUT":        checkDuration,
	"SSE_LOG_LEVEL":               oneOf("debug", "info", "warn", "error"),
	"SSE_LOG_FORMAT":              oneOf("json", "text"),

	"SSE_TLS_CERT_FILE":          anyValue,
	"SSE_TLS_KEY_FILE":           anyValue,
	"SSE_MAX_HEADER_BYTES":       checkCount,
	"SSE_JWT_HS256_SECRET":       anyValue,
	"SSE_JWT_PUBLIC_KEY_FILE":    anyValue,
	"SSE_JWT_JWKS_URL":           anyValue,
	"SSE_JWT_COOKIE":             anyValue,
	"SSE_JWT_ISSUER":             anyValue,
	"SSE_JWT_AUDIENCE":           anyValue,
	"SSE_JWT_LEEWAY":             checkDuration,
	"SSE_PUBLISH_TOKEN":          anyValue,
	"SSE_CORS_ORIGINS":           anyValue,
	"SSE_MAX_CONNECTIONS_PER_IP": checkNonNegative,
	"SSE_TRUSTED_PROXIES":        anyValue,

	"SSE_NODE_ID":             anyValue,
	"SSE_ADVERTISE_ADDR":      anyValue,
	"SSE_CLUSTER_REFRESH":     checkDuration,
	"SSE_CLUSTER_TTL":         checkDuration,
	"SSE_REBALANCE":           oneOf("true", "false"),
	"SSE_REBALANCE_RATE":      anyValue,
	"SSE_REBALANCE_TOLERANCE": anyValue,
	"SSE_MAX_STREAM_AGE":      anyValue, // 0 (off) or a duration
}

// Defaults the files rely on when they do not set a variable.
const (
	defaultHeartbeat       = 15 * time.Second
	defaultShutdownTimeout = 10 * time.Second
)

// Metric kinds decide which series names a metric has.
const (
	gauge = iota
	counter
	histogram
)

// sseMetrics are the node's own metrics and their kinds.
var sseMetrics = map[string]int{
	"sse_connections":                   gauge,
	"sse_connections_total":             counter,
	"sse_disconnects_total":             counter,
	"sse_slow_client_disconnects_total": counter,
	"sse_broker_events_total":           counter,
	"sse_frames_delivered_total":        counter,
	"sse_frames_dropped_total":          counter,
	"sse_flush_duration_seconds":        histogram,
	"sse_queue_depth":                   histogram,
	"sse_replay_requests_total":         counter,
	"sse_replay_events_total":           counter,
	"sse_broker_read_lag_seconds":       histogram,
	"sse_delivery_lag_seconds":          histogram,
	"sse_broker_errors_total":           counter,
	"sse_broker_bad_entries_total":      counter,
	"sse_draining":                      gauge,
	"sse_broker_up":                     gauge,
	"sse_broker_shard_up":               gauge,
	"sse_cluster_members":               gauge,
	"sse_cluster_share":                 gauge,
	"sse_rebalance_shed_total":          counter,
	"sse_ring_bytes":                    gauge,
	"sse_embedded_bytes":                gauge,
	"sse_ring_budget_bytes":             gauge,
	"sse_replay_cache_bytes":            gauge,
	"sse_replay_cache_budget_bytes":     gauge,
	"sse_ring_evictions_total":          counter,
}

// localImages are the only images compose may name: none can be pulled.
var localImages = []string{"redis:7", "haproxy:2.6", "nginx:1.22", "ssecluster/ssenode:dev"}

func anyValue(string) error { return nil }

func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err == nil && d <= 0 {
		err = errors.New("not positive")
	}
	return err
}

func checkCount(v string) error {
	n, err := strconv.Atoi(v)
	if err == nil && n <= 0 {
		err = errors.New("not positive")
	}
	return err
}

func checkNonNegative(v string) error {
	n, err := strconv.Atoi(v)
	if err == nil && n < 0 {
		err = errors.New("negative")
	}
	return err
}

func checkListen(v string) error {
	if _, port, ok := strings.Cut(v, ":"); !ok || checkCount(port) != nil {
		return errors.New("want [host]:port")
	}
	return nil
}

func checkRedisURL(v string) error {
	if v != "" && !strings.HasPrefix(v, "redis://") && !strings.HasPrefix(v, "rediss://") {
		return errors.New("want redis:// or rediss://")
	}
	return nil
}

func oneOf(values ...string) func(string) error {
	return func(v string) error {
		if !slices.Contains(values, v) {
			return fmt.Errorf("want one of %v", values)
		}
		return nil
	}
}

// checkEnv reports unknown variables and bad values in a node's environment.
func checkEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	for k, v := range env {
		check, ok := envVars[k]
		switch {
		case ok:
			if err := check(v); err != nil {
				t.Errorf("%s: %s=%q: %v", where, k, v, err)
			}
		case strings.HasPrefix(k, "SSE_"):
			t.Errorf("%s: unknown variable %s (typo? ssenode ignores it)", where, k)
		}
	}
	if admin, ok := env["SSE_ADMIN_LISTEN"]; ok && isLoopback(admin) {
		t.Errorf("%s: SSE_ADMIN_LISTEN=%q is loopback: probes and the LB cannot reach it", where, admin)
	}
}

func isLoopback(listen string) bool {
	host, _, _ := strings.Cut(listen, ":")
	return host == "localhost" || strings.HasPrefix(host, "127.") || host == "[::1]"
}

// envDuration is env[key] as a duration, or def when unset.
func envDuration(t *testing.T, env map[string]string, key string, def time.Duration) time.Duration {
	t.Helper()
	v, ok := env[key]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", key, v, err)
	}
	return d
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// yamlDocs decodes every document of a (possibly multi-document) YAML file.
func yamlDocs(t *testing.T, name string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, name)))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", name, len(docs)+1, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// get walks a decoded YAML/JSON tree: keys for maps, ints for lists. It
// returns nil when a step is missing.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	s, _ := get(v, path...).(string)
	return s
}

func list(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func dict(v any, path ...any) map[string]any {
	m, _ := get(v, path...).(map[string]any)
	return m
}

// stringMap turns a YAML map of scalars into strings, as the environment sees them.
func stringMap(m map[string]any) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

var (
	goEnvTagRE = regexp.MustCompile(`env:"(\w+)"`)
	// A metric's name, in its Opts or as the first argument of node's
	// constructors (newGauge, newCounterVec, ...).
	goMetricNameRE = regexp.MustCompile(`(?:Name:\s*|new(?:Gauge|Counter|CounterVec|Histogram)\(\s*)"(sse_\w+)"`)
)

// goSources returns the repository's non-test Go files outside deploy/.
func goSources(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && (d.Name() == "deploy" || strings.HasPrefix(d.Name(), ".") && path != dir):
			return filepath.SkipDir
		case !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go"):
			b, err := os.ReadFile(path)
			files[path] = b
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestContractMatchesCode keeps the lists above in step with the code: the
// variables cmd/ssenode reads (caarlos0/env tags under the SSE_ prefix) and
// the sse_ metrics the repository registers.
func TestContractMatchesCode(t *testing.T) {
	var inConfig []string
	for _, src := range goSources(t, "../cmd/ssenode") {
		for _, m := range goEnvTagRE.FindAllSubmatch(src, -1) {
			inConfig = append(inConfig, "SSE_"+string(m[1]))
		}
	}
	if len(inConfig) == 0 {
		t.Fatal(`no env:"..." tags in cmd/ssenode: has the configuration moved?`)
	}
	sort.Strings(inConfig)
	known := slices.Sorted(maps.Keys(envVars))
	if !slices.Equal(inConfig, known) {
		t.Errorf("cmd/ssenode reads %v\nthese tests know %v", inConfig, known)
	}

	var inCode []string
	for _, src := range goSources(t, "..") {
		for _, m := range goMetricNameRE.FindAllSubmatch(src, -1) {
			inCode = append(inCode, string(m[1]))
		}
	}
	sort.Strings(inCode)
	inCode = slices.Compact(inCode)
	if want := slices.Sorted(maps.Keys(sseMetrics)); !slices.Equal(inCode, want) {
		t.Errorf("the code registers %v\nthese tests (dashboard, alerts) know %v", inCode, want)
	}
}
