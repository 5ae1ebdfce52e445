package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of MembersConfig's zero fields.
const (
	defaultMembersRefresh = 2 * time.Second
	// A TTL of three refreshes lets one refresh fail (a Redis blip) without
	// the node disappearing from the others' view.
	defaultTTLRefreshes = 3
)

// ErrBadMembers is returned by NewRedisMembers and NewLocalMembers for a
// configuration they cannot run.
var ErrBadMembers = errors.New("pubsub: bad membership config")

// Member is one node of the cluster as it last registered itself.
type Member struct {
	// ID names the node; unique in the cluster.
	ID string `json:"id"`
	// Addr is the address the node advertises (its public listener).
	Addr string `json:"addr"`
	// Version is the node's build version.
	Version string `json:"version"`
	// Started is when the node's membership started.
	Started time.Time `json:"started"`
	// Updated is when the node last registered.
	Updated time.Time `json:"updated"`
	// Streams is the number of open streams.
	Streams int `json:"streams"`
	// Moving counts the streams the node closed lately to rebalance, which
	// are probably reconnecting to another node right now.
	Moving int `json:"moving"`
	// Topics is the number of topics with a local subscriber.
	Topics int `json:"topics"`
	// DeliveriesPerSec is the rate of events written to clients.
	DeliveriesPerSec float64 `json:"deliveries_per_s"`
	// Ready is false while the node refuses new streams or lost its broker.
	Ready bool `json:"ready"`
	// Draining is true once the node started to shut down.
	Draining bool `json:"draining"`
}

// MembersConfig configures a node's membership. Zero fields take the
// documented defaults.
type MembersConfig struct {
	// ID names this node; "" means the host name and a random suffix.
	ID string
	// Addr and Version are reported as they are.
	Addr, Version string
	// Refresh is how often the node registers again and reads the others;
	// 0 means 2s.
	Refresh time.Duration
	// TTL is how long a registration lives: a node that stops refreshing
	// (killed) leaves the list after it. 0 means 3 × Refresh; it must be
	// longer than Refresh.
	TTL time.Duration
	// Status returns the changing part of this node's Member (Streams,
	// Moving, Topics, DeliveriesPerSec, Ready, Draining); the identity
	// fields are filled in by Members. Required. It is called from the
	// refresh goroutine and must return quickly.
	Status func(ctx context.Context) Member
	// Logger receives failed refreshes. Nil discards.
	Logger *slog.Logger
}

// memberStore is where registrations live: Redis for a cluster, this
// process for the embedded broker.
type memberStore interface {
	put(ctx context.Context, m Member, ttl time.Duration) error
	list(ctx context.Context) ([]Member, error)
	remove(ctx context.Context, id string) error
}

// Members registers this node in the cluster's membership and keeps a
// recent view of every live node. Start begins refreshing every Refresh;
// Close stops, waits and removes the registration.
type Members struct {
	cfg     MembersConfig // immutable after construction; defaults applied
	store   memberStore   // immutable
	started time.Time     // immutable

	mu     sync.Mutex
	last   []Member // the view of the last successful refresh
	lastAt time.Time
	err    error // of the last refresh; nil when it succeeded
	run    bool  // Start was called
	closed bool

	stop chan struct{} // closed by Close
	done chan struct{} // closed when the refresh goroutine returns
}

// NewRedisMembers keeps membership in b's Redis, under keys that share one
// hash slot (so it works on Cluster as on a single server or Sentinel),
// named after b's stream prefix so that clusters sharing a Redis do not
// see each other.
func NewRedisMembers(b *Redis, cfg MembersConfig) (*Members, error) {
	// The prefix's own hash tag, if any, is kept inside ours: every key
	// below starts with the same "{...}" and so hashes alike.
	ns := "{" + b.cfg.Prefix + "members}:"
	return newMembers(&redisMembers{b: b, ids: ns + "ids", node: ns + "node:"}, cfg)
}

// NewLocalMembers is the membership of the embedded broker: this node alone.
func NewLocalMembers(cfg MembersConfig) (*Members, error) {
	return newMembers(&localMembers{}, cfg)
}

func newMembers(s memberStore, cfg MembersConfig) (*Members, error) {
	if cfg.Status == nil {
		return nil, fmt.Errorf("%w: Status is required", ErrBadMembers)
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = defaultMembersRefresh
	}
	if cfg.TTL == 0 {
		cfg.TTL = defaultTTLRefreshes * cfg.Refresh
	}
	if cfg.Refresh < time.Millisecond || cfg.TTL <= cfg.Refresh {
		return nil, fmt.Errorf("%w: refresh %v, TTL %v: want refresh of 1ms or more and TTL above it", ErrBadMembers, cfg.Refresh, cfg.TTL)
	}
	if cfg.ID == "" {
		cfg.ID = defaultMemberID()
	}
	if strings.ContainsAny(cfg.ID, " \t\r\n") || len(cfg.ID) > 200 {
		return nil, fmt.Errorf("%w: node ID %q: no spaces, at most 200 bytes", ErrBadMembers, cfg.ID)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Members{
		cfg:     cfg,
		store:   s,
		started: time.Now(),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

func defaultMemberID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// ID is this node's ID.
func (m *Members) ID() string { return m.cfg.ID }

// Refresh is the refresh interval.
func (m *Members) Refresh() time.Duration { return m.cfg.Refresh }

// TTL is how long a registration lives without a refresh.
func (m *Members) TTL() time.Duration { return m.cfg.TTL }

// Start registers this node once, so that it is listed as soon as Start
// returns, then refreshes in a goroutine that Close stops. A failed first
// registration is returned but the refreshing goes on (Redis may come back).
func (m *Members) Start() error {
	m.mu.Lock()
	if m.run || m.closed {
		m.mu.Unlock()
		return fmt.Errorf("%w: Start after Start or Close", ErrBadMembers)
	}
	m.run = true
	m.mu.Unlock()
	err := m.refresh()
	go m.loop()
	return err
}

func (m *Members) loop() {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			if err := m.refresh(); err != nil {
				m.cfg.Logger.Warn("membership refresh failed", "node", m.cfg.ID, "err", err)
			}
		}
	}
}

// refresh registers this node with its current status, then reads the
// view. Each step is bounded by the refresh interval.
func (m *Members) refresh() error {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Refresh)
	defer cancel()
	err := m.store.put(ctx, m.self(ctx), m.cfg.TTL)
	var view []Member
	if err == nil {
		view, err = m.store.list(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
	if err != nil {
		return err
	}
	m.last, m.lastAt = view, time.Now()
	return nil
}

func (m *Members) self(ctx context.Context) Member {
	s := m.cfg.Status(ctx)
	s.ID, s.Addr, s.Version = m.cfg.ID, m.cfg.Addr, m.cfg.Version
	s.Started, s.Updated = m.started, time.Now()
	return s
}

// View returns the members seen by the last successful refresh, sorted by
// ID, and when it was taken; err is the last refresh's error, if it failed.
// The caller must not modify the slice.
func (m *Members) View() (members []Member, at time.Time, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last, m.lastAt, m.err
}

// List reads every live member now, sorted by ID.
func (m *Members) List(ctx context.Context) ([]Member, error) {
	return m.store.list(ctx)
}

// Close stops refreshing, waits for the refresh goroutine and removes this
// node's registration so that the others stop counting it at once. It is
// safe to call more than once.
func (m *Members) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	run := m.run
	m.mu.Unlock()
	close(m.stop)
	if run {
		<-m.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Refresh)
	defer cancel()
	return m.store.remove(ctx, m.cfg.ID)
}

// redisMembers keeps each member as a key of its own that expires after
// the TTL (Redis forgets a dead node by itself, with no clock shared
// between nodes), and a set of IDs to find the keys without SCAN. The set
// is cleaned on read of the IDs whose key expired.
type redisMembers struct {
	b    *Redis
	ids  string // the set of member IDs
	node string // prefix of each member's key
}

// removeExpired drops from the set (KEYS[1]) each ID (ARGV[i]) whose key
// (KEYS[i+1]) is gone, atomically: a node that registers again between the
// read and the cleanup is never removed.
const removeExpiredScript = `
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = n + redis.call('SREM', KEYS[1], ARGV[i-1])
  end
end
return n`

func (s *redisMembers) put(ctx context.Context, m Member, ttl time.Duration) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("pubsub: member %s: %w", m.ID, err)
	}
	p := s.b.client.Pipeline()
	p.Set(ctx, s.node+m.ID, v, ttl)
	p.SAdd(ctx, s.ids, m.ID)
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("pubsub: register member %s: %w", m.ID, redisErr(err))
	}
	return nil
}

func (s *redisMembers) list(ctx context.Context) ([]Member, error) {
	ids, err := s.b.client.SMembers(ctx, s.ids).Result()
	if err != nil {
		return nil, fmt.Errorf("pubsub: read members %s: %w", s.ids, redisErr(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	slices.Sort(ids)
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.node + id
	}
	vals, err := s.b.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("pubsub: read members %s: %w", s.ids, redisErr(err))
	}
	out := make([]Member, 0, len(ids))
	var goneKeys, goneIDs []string
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			goneKeys, goneIDs = append(goneKeys, keys[i]), append(goneIDs, ids[i])
			continue
		}
		var m Member
		if err := json.Unmarshal([]byte(str), &m); err != nil {
			return nil, fmt.Errorf("pubsub: member %s: %w", keys[i], err)
		}
		out = append(out, m)
	}
	if len(goneIDs) > 0 {
		args := make([]any, len(goneIDs))
		for i, id := range goneIDs {
			args[i] = id
		}
		if err := s.b.client.Eval(ctx, removeExpiredScript, append([]string{s.ids}, goneKeys...), args...).Err(); err != nil {
			// The view is right without the cleanup; the next read retries it.
			s.b.log.Debug("membership cleanup failed", "key", s.ids, "err", err)
		}
	}
	return out, nil
}

func (s *redisMembers) remove(ctx context.Context, id string) error {
	p := s.b.client.Pipeline()
	p.Del(ctx, s.node+id)
	p.SRem(ctx, s.ids, id)
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("pubsub: remove member %s: %w", id, redisErr(err))
	}
	return nil
}

// localMembers is the embedded broker's membership: this node alone.
type localMembers struct {
	mu      sync.Mutex
	self    *Member // nil until put, and after remove
	expires time.Time
}

func (s *localMembers) put(_ context.Context, m Member, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.self, s.expires = &m, time.Now().Add(ttl)
	return nil
}

func (s *localMembers) list(context.Context) ([]Member, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.self == nil || time.Now().After(s.expires) {
		return nil, nil
	}
	return []Member{*s.self}, nil
}

func (s *localMembers) remove(context.Context, string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.self = nil
	return nil
}
