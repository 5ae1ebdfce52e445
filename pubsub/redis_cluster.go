package pubsub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster timings.
const (
	// clusterReload is how often the shared client reloads the slot map
	// with no error to trigger it.
	clusterReload = 2 * time.Second
	// clusterRetry caps a Cluster reader's backoff after an error that
	// may mean its slot moved.
	clusterRetry = 400 * time.Millisecond
	// replicaFailures is how many failed reads in a row make a reader
	// that reads replicas try the master instead.
	replicaFailures = 2
	// probeTimeout bounds NewRedis' question to a lone address.
	probeTimeout = 5 * time.Second
)

// ErrBadURL is returned (wrapped) for a Redis URL that cannot be parsed.
// Its message never holds the URL's password.
var ErrBadURL = errors.New("pubsub: bad redis URL")

// parseURL parses a redis:// URL with go-redis. A URL with user info is
// reported without go-redis' message, which may quote part of the
// password; when the user info holds a character that ends it early, the
// error says how to escape it.
func parseURL(raw string) (*redis.Options, error) {
	opt, err := redis.ParseURL(raw)
	if err == nil {
		return opt, nil
	}
	_, rest, _ := strings.Cut(raw, "://")
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	if info := rest[:at]; strings.ContainsAny(info, "@/#?") || strings.Count(info, ":") > 1 {
		return nil, fmt.Errorf("%w: cannot parse it: a user or password holding @ / : # ? must be percent-encoded (@ is %%40, / is %%2F, : is %%3A, # is %%23, ? is %%3F)", ErrBadURL)
	}
	return nil, fmt.Errorf("%w: cannot parse it (message withheld: it may quote the password)", ErrBadURL)
}

// CheckRedisURL reports whether raw (empty: nothing to check) parses as
// a Redis URL, with parseURL's error: never quoting the password, saying
// how to escape one that breaks the URL.
func CheckRedisURL(raw string) error {
	if raw == "" {
		return nil
	}
	_, err := parseURL(raw)
	return err
}

// probeMode asks the lone address of cfg whether it is a Cluster node, so
// that one seed is enough to run in Cluster mode.
func probeMode(cfg RedisConfig) (redisMode, error) {
	c := redis.NewClient(&redis.Options{
		Addr:                  cfg.Addrs[0],
		Username:              cfg.Username,
		Password:              cfg.Password,
		MaxRetries:            -1,
		ContextTimeoutEnabled: true,
		PoolSize:              1,
	})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	info, err := c.Info(ctx, "cluster").Result()
	if err != nil {
		return 0, fmt.Errorf("pubsub: redis config: cannot ask %s whether it is a Cluster node (one address is a Cluster seed or a single server): %w", cfg.Addrs[0], err)
	}
	if strings.Contains(info, "cluster_enabled:1") {
		return modeCluster, nil
	}
	return modeSingle, nil
}

// Mode is how the broker reaches Redis: "standalone", "sentinel" or
// "cluster".
func (b *Redis) Mode() string { return b.mode.String() }

// Shards returns the number of masters: the Cluster's shards, else 1.
func (b *Redis) Shards(ctx context.Context) (int, error) {
	if b.cluster == nil {
		return 1, nil
	}
	shards, err := b.cluster.ClusterShards(ctx).Result()
	if err != nil {
		return 0, fmt.Errorf("pubsub: redis cluster shards: %w", err)
	}
	n := 0
	for _, s := range shards {
		if len(s.Slots) > 0 {
			n++
		}
	}
	return n, nil
}

// ShardState is the read health of one Redis node readers read from.
type ShardState struct {
	// Addr is the node's address (a Cluster master; "" outside Cluster
	// mode, where the broker has one shard).
	Addr string
	// Up is false while a reader of the node fails to read.
	Up bool
}

// ShardStates reports each node the readers read from, sorted by address:
// down while any of its readers fails. It is cheap (no I/O), for metrics.
func (b *Redis) ShardStates() []ShardState {
	up := make(map[string]bool)
	for _, r := range b.allReaders() {
		addr, ok := r.health()
		if b.mode != modeCluster {
			addr = ""
		}
		if prev, seen := up[addr]; seen {
			ok = ok && prev
		}
		up[addr] = ok
	}
	out := make([]ShardState, 0, len(up))
	for addr, ok := range up {
		out = append(out, ShardState{Addr: addr, Up: ok})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// allReaders returns the fixed readers, or in Cluster mode a snapshot of
// the slot readers.
func (b *Redis) allReaders() []*reader {
	if b.mode != modeCluster {
		return b.readers
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*reader, 0, len(b.slots))
	for _, r := range b.slots {
		out = append(out, r)
	}
	return out
}

// pingCluster is Ping in Cluster mode: ready while at least one master
// answers. A partial outage keeps a node ready on purpose: every node
// would fail readiness together and take the healthy shards' topics down
// too; the shard's topics stall instead and ShardStates reports it.
func (b *Redis) pingCluster(ctx context.Context) error {
	var mu sync.Mutex
	var ok bool
	var errs []error
	err := b.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		err := c.Ping(ctx).Err()
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			ok = true
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", c.Options().Addr, err))
		}
		return nil
	})
	if ok {
		return nil
	}
	if err != nil {
		return err
	}
	if len(errs) == 0 {
		return errors.New("no master in the slot map")
	}
	return errors.Join(errs...)
}

// nodeClient is the small pool used to send CLIENT UNBLOCK to the node at
// addr (Cluster mode), made on first use and closed by Close.
func (b *Redis) nodeClient(addr string) *redis.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.nodes[addr]
	if c == nil {
		opt := b.nodeOptions(addr)
		opt.PoolSize = 2
		c = redis.NewClient(opt)
		b.nodes[addr] = c
	}
	return c
}

// nodeOptions are the options of a plain client of one Cluster node, with
// the Cluster client's credentials and TLS.
func (b *Redis) nodeOptions(addr string) *redis.Options {
	co := b.cluster.Options()
	return &redis.Options{
		Addr:                  addr,
		Username:              co.Username,
		Password:              co.Password,
		TLSConfig:             co.TLSConfig,
		DialTimeout:           co.DialTimeout,
		ContextTimeoutEnabled: true,
	}
}

// connectSlot makes r's client a connection to the current master of its
// slot, or with ReadReplicas to one of its replicas (the master after
// failures in a row, in case the replica is the one failing), reloading
// the slot map first when reload is set. A client already on that master
// is kept; a replica client is kept until an error asks for a reload, and
// a reader meant for a replica but on the master looks again each time.
func (r *reader) connectSlot(key string, reload bool, failures int) error {
	b := r.b
	if reload {
		b.cluster.ReloadState(b.ctx)
		// ReloadState only starts a reload; give it a moment so the
		// address below is the new one when the map changed.
		sleep(b.ctx, 100*time.Millisecond)
	}
	replica := b.cfg.ReadReplicas && failures < replicaFailures
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Block+readMargin)
	defer cancel()
	if replica && r.client != nil && !reload {
		// Kept while it is on a replica; one on the master (no healthy
		// replica when it connected) looks for a replica again.
		m, err := b.cluster.MasterForKey(ctx, key)
		if err != nil || m.Options().Addr != r.addr {
			return nil
		}
	}
	node := b.cluster.MasterForKey
	if replica {
		node = b.cluster.SlaveForKey // the master when the slot has no healthy replica
	}
	m, err := node(ctx, key)
	if err != nil {
		return fmt.Errorf("slot %d node: %w", r.index, err)
	}
	addr := m.Options().Addr
	if r.client != nil && r.addr == addr {
		return nil
	}
	opt := b.nodeOptions(addr)
	b.commonOptions(opt, r)
	if replica {
		opt.OnConnect = r.onConnect(addr, true)
	}
	c := redis.NewClient(opt)
	b.mu.Lock()
	old := r.client
	if b.closed.Load() {
		b.mu.Unlock()
		_ = c.Close()
		return ErrClosed
	}
	r.client, r.addr = c, addr
	b.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// retire ends r (Cluster mode) when it has no topics: it leaves the slot
// map under b.mu, so a Watch either finds it with its topic added before
// this check or makes a new reader.
func (r *reader) retire() bool {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	r.mu.Lock()
	n := len(r.topics)
	r.mu.Unlock()
	if n > 0 {
		return false
	}
	if b.slots[r.index] == r {
		delete(b.slots, r.index)
	}
	if r.client != nil {
		_ = r.client.Close()
		r.client = nil
	}
	return true
}

// needsReload reports a read error after which the slot may have moved:
// a network error, a closed connection, or a redirection or cluster state
// reply.
func needsReload(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, redis.ErrClosed) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, p := range []string{"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "LOADING", "MASTERDOWN"} {
			if strings.HasPrefix(reply.Error(), p) {
				return true
			}
		}
		return false
	}
	// io.EOF and friends: the connection is gone.
	return true
}
