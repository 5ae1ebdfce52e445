package pubsub

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// go-redis' own lines (dial failures of its pools, mostly) come in bursts
// of dozens a second while Redis is down: at most redisLogBurst of them are
// logged per redisLogWindow, and the next one logged says how many were
// left out.
const (
	redisLogBurst  = 5
	redisLogWindow = 10 * time.Second
)

// SetRedisLogger routes go-redis' own log lines, which it otherwise prints
// unstructured to stderr, to log at Warn, rate-limited. go-redis has one
// logger per process, so the last call wins.
func SetRedisLogger(log *slog.Logger) {
	redis.SetLogger(newRedisLogger(log, time.Now))
}

// redisLogger is go-redis' Logging interface over slog, rate-limited.
type redisLogger struct {
	log *slog.Logger     // immutable
	now func() time.Time // immutable

	mu         sync.Mutex
	start      time.Time // of the current window; guarded by mu
	n          int       // lines logged in the window; guarded by mu
	suppressed int       // lines left out since the last one logged; guarded by mu
}

func newRedisLogger(log *slog.Logger, now func() time.Time) *redisLogger {
	return &redisLogger{log: log, now: now}
}

// Printf logs one go-redis line unless the window's budget is spent.
func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.mu.Lock()
	if now := l.now(); now.Sub(l.start) >= redisLogWindow {
		l.start, l.n = now, 0
	}
	if l.n >= redisLogBurst {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.n++
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	if suppressed > 0 {
		l.log.WarnContext(ctx, "go-redis", "line", msg, "suppressed", suppressed)
		return
	}
	l.log.WarnContext(ctx, "go-redis", "line", msg)
}
