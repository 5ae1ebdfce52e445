package pubsub

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults of RedisConfig's zero fields.
const (
	DefaultRedisPrefix  = "sse:"
	defaultRedisMaxLen  = 10000
	defaultRedisReaders = 2
	defaultRedisBlock   = 5 * time.Second
	defaultRedisCount   = 512
)

// maxRedisReaders bounds cfg.Readers: each reader holds a connection, and
// the point of readers is that there are few of them.
const maxRedisReaders = 64

// RedisConfig configures the Redis Streams broker. Zero fields take the
// documented defaults; exactly one of URL and Addrs must be set.
type RedisConfig struct {
	// URL of a single Redis server: redis:// or rediss:// (TLS), with user,
	// password, database and go-redis options taken from the URL. Used when
	// set; Addrs must then be empty.
	URL string
	// Addrs are seed addresses used when URL is empty: with MasterName, the
	// Sentinels of a failover group; otherwise Redis Cluster seeds or one
	// single server. The mode comes from the server: NewRedis asks a lone
	// address whether it is a Cluster node (so one seed is enough); two or
	// more addresses are Cluster seeds.
	Addrs []string
	// MasterName is the Sentinel master name. Empty means no Sentinel.
	MasterName string
	// Username and Password, when set, are the ACL credentials (and override
	// those of URL).
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the Sentinels
	// themselves (requirepass or ACL on the Sentinels). Empty means none.
	SentinelUsername, SentinelPassword string
	// Prefix is put before a topic to make its stream key. "" means "sse:".
	// In Cluster mode a hash tag such as "{sse}:" puts every topic in one
	// slot: one reader connection per node, but a single shard.
	Prefix string
	// MaxLen is the approximate length (MAXLEN ~) Publish trims a stream to.
	// Zero means 10000; negative means no MAXLEN (a load generator's
	// publisher that leaves trimming to the nodes' own settings).
	MaxLen int64
	// MaxAge, when positive, makes the broker trim the streams of watched
	// topics with XTRIM MINID ~ (now-MaxAge) every min(MaxAge/4, 30s). Zero
	// means no trimming by age.
	MaxAge time.Duration
	// Readers is the number of reader goroutines, each with its own
	// connection. Zero means 2; at most 64. Cluster mode ignores it: it
	// has one reader per watched hash slot (see Redis).
	Readers int
	// Block is how long one XREAD BLOCK waits before the reader loops, up
	// to 1s (historyCheck), so that a reader checks its streams' history
	// every second even when they are idle. Zero means 5s; at least 1ms.
	Block time.Duration
	// ReadReplicas makes the readers of a Redis Cluster read from replicas
	// (READONLY), so that many nodes fan out without all reading the
	// masters. Live events then arrive later by the replication lag (see
	// docs/redis.md); Watch, Range and Info still read the masters. Only
	// for Cluster mode.
	ReadReplicas bool
	// Count is the XREAD COUNT: entries read per stream per call. Zero
	// means 512.
	Count int
	// Logger receives read errors, recoveries and bad entries. Nil discards.
	Logger *slog.Logger
	// OnBadEntry, when set, is called for every entry not in the shape
	// publishers are given (skipped or delivered in another form, see the
	// BadEntry constants) and every topic parked, with its reason. It must not
	// block.
	OnBadEntry func(topic, reason string)
	// OnReadError, when set, is called for every failed read of a reader
	// (before it backs off). It must not block.
	OnReadError func(err error)
	// Now is the clock used for MaxAge trimming. Nil means time.Now.
	Now func() time.Time
}

// redisMode is how the broker reaches Redis, which decides how readers read.
type redisMode int

const (
	modeSingle   redisMode = iota // one server (URL, or one address)
	modeFailover                  // Sentinel: one master at a time
	modeCluster                   // Redis Cluster
	modeProbe                     // one address: NewRedis asks the server
)

func (m redisMode) String() string {
	switch m {
	case modeFailover:
		return "sentinel"
	case modeCluster:
		return "cluster"
	}
	return "standalone"
}

// Redis is the Redis Streams broker. Each topic is the stream
// <Prefix><topic>; any client that can XADD is a publisher.
//
// A small fixed set of reader goroutines deliver watched topics. A topic
// belongs to one reader (by hash of its name, or of its hash slot in
// Cluster mode), which keeps the last ID it delivered and reads with
// explicit IDs, never "$", so nothing is skipped between calls or across
// Redis errors: after an error a reader backs off (capped, jittered) and
// resumes from its cursors.
//
// On a single server or Sentinel, a reader issues one XREAD BLOCK over all
// its topics on its own connection. Watch and Unwatch wake it at once with
// CLIENT UNBLOCK from the shared connection pool, retried until the reader
// has picked up the change, so a new topic adds no polling latency. With an
// ACL user this needs +client|id and +client|unblock; if Redis refuses
// them, the broker logs it once and a new topic waits up to Block.
//
// In Cluster mode the keys of one XREAD must share a hash slot (Redis
// answers CROSSSLOT otherwise, even for slots of one node), so there is one
// reader per watched slot, started with the slot's first topic and ended
// with its last. It connects to the slot's master itself and blocks there
// like any other reader; CLIENT UNBLOCK goes to that same node. On a
// connection error, MOVED, ASK, TRYAGAIN or CLUSTERDOWN it asks the shared
// client to reload the slot map (which is also reloaded every
// clusterReload) and connects to whatever master the slot has then: a
// promoted replica is found at the reader's next retry, not at go-redis'
// 60 s reload. A node thus holds one reader connection per watched slot; a
// prefix with a hash tag keeps that to one per node (and one shard).
//
// A reader also checks, every second and at once after a failed read
// works again, that its streams' history did not move under it (deleted,
// made again, or a last-generated-id below what it delivered, as after a
// failover that lost entries): it then resets that topic's position to the
// stream's last ID and calls the Handler with no entries, h(topic, nil), so
// the node can make the topic's clients resume through the replay window.
// The delay is about a second after the change (see checkHistory).
//
// A topic whose key holds another type (WRONGTYPE, which fails a whole
// multi-key XREAD) is found with TYPE, reported as "wrong type", parked and
// checked again every parkRetry (10s) while the others keep flowing.
type Redis struct {
	// Immutable after NewRedis.
	cfg     RedisConfig // defaults applied
	mode    redisMode
	client  redis.UniversalClient // shared pool: commands, CLIENT UNBLOCK
	cluster *redis.ClusterClient  // client, in Cluster mode; else nil
	log     *slog.Logger
	ctx     context.Context // canceled by Close
	cancel  context.CancelFunc
	readers []*reader     // fixed readers; nil in Cluster mode
	wakeCh  chan struct{} // 1-slot: a reader may need CLIENT UNBLOCK; never closed
	handler Handler       // set by Start

	closed    atomic.Bool
	noUnblock atomic.Bool    // Redis refused CLIENT ID or CLIENT UNBLOCK: readers wake at Block
	wg        sync.WaitGroup // readers, waker, trimmer, slot map reloader

	// mu orders Start against Close and guards the Cluster readers. Lock
	// order: mu, then a reader's mu.
	mu      sync.Mutex
	started bool                     // guarded by mu
	slots   map[int]*reader          // Cluster mode: reader of each watched slot; guarded by mu
	nodes   map[string]*redis.Client // Cluster mode: one small pool per node for CLIENT UNBLOCK; guarded by mu
}

// NewRedis validates cfg and builds the broker and its client. It does not
// connect: Redis need not be up until the first command.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	cfg, mode, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Redis{
		cfg:    cfg,
		mode:   mode,
		log:    cfg.Logger,
		wakeCh: make(chan struct{}, 1),
	}
	if mode == modeProbe {
		if b.mode, err = probeMode(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.ReadReplicas && b.mode != modeCluster {
		return nil, fmt.Errorf("pubsub: redis config: ReadReplicas is for Redis Cluster; this is %s", b.mode)
	}
	b.client, err = b.newClient(nil)
	if err != nil {
		return nil, err
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if b.mode == modeCluster {
		b.cluster = b.client.(*redis.ClusterClient)
		b.slots = make(map[int]*reader)
		b.nodes = make(map[string]*redis.Client)
		return b, nil
	}
	b.readers = make([]*reader, cfg.Readers)
	for i := range b.readers {
		b.readers[i] = newReader(b, i)
	}
	return b, nil
}

// withDefaults validates c and fills its zero fields.
func (c RedisConfig) withDefaults() (RedisConfig, redisMode, error) {
	fail := func(format string, args ...any) (RedisConfig, redisMode, error) {
		return c, 0, fmt.Errorf("pubsub: redis config: "+format, args...)
	}
	mode := modeSingle
	switch {
	case c.URL != "" && len(c.Addrs) > 0:
		return fail("URL and Addrs are both set; use one")
	case c.URL != "":
		if c.MasterName != "" {
			return fail("MasterName %q needs Addrs (Sentinels), not URL", c.MasterName)
		}
		if _, err := parseURL(c.URL); err != nil {
			return c, 0, err
		}
	case len(c.Addrs) > 0:
		for _, a := range c.Addrs {
			if a == "" {
				return fail("Addrs holds an empty address")
			}
		}
		switch {
		case c.MasterName != "":
			mode = modeFailover
		case len(c.Addrs) > 1:
			mode = modeCluster
		default:
			mode = modeProbe
		}
	default:
		return fail("URL or Addrs is required")
	}
	switch {
	case c.MaxAge < 0:
		return fail("MaxAge %v is negative", c.MaxAge)
	case c.Readers < 0 || c.Readers > maxRedisReaders:
		return fail("Readers %d outside 0..%d", c.Readers, maxRedisReaders)
	case c.Block < 0 || (c.Block > 0 && c.Block < time.Millisecond):
		// XREAD BLOCK 0 would block forever.
		return fail("Block %v must be 0 (default) or at least 1ms", c.Block)
	case c.Count < 0:
		return fail("Count %d is negative", c.Count)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultRedisPrefix
	}
	if c.MaxLen == 0 {
		c.MaxLen = defaultRedisMaxLen
	}
	if c.Readers == 0 {
		c.Readers = defaultRedisReaders
	}
	if c.Block == 0 {
		c.Block = defaultRedisBlock
	}
	if c.Count == 0 {
		c.Count = defaultRedisCount
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, mode, nil
}

// readMargin is added to Block for a reader's read deadline: the server
// answers a block that timed out a little after Block.
const readMargin = 3 * time.Second

// newClient builds a client for cfg. r is nil for the shared pool; for a
// reader it builds a one-connection client whose connections report their
// CLIENT ID to r, with no retries of its own (the reader retries) and a
// read timeout beyond Block. Cluster readers use newNodeClient instead.
func (b *Redis) newClient(r *reader) (redis.UniversalClient, error) {
	c := b.cfg
	if c.URL != "" {
		opt, err := parseURL(c.URL)
		if err != nil {
			return nil, err
		}
		if c.Username != "" {
			opt.Username = c.Username
		}
		if c.Password != "" {
			opt.Password = c.Password
		}
		b.commonOptions(opt, r)
		return redis.NewClient(opt), nil
	}
	opt := &redis.UniversalOptions{
		Addrs:                    c.Addrs,
		MasterName:               c.MasterName,
		Username:                 c.Username,
		Password:                 c.Password,
		SentinelUsername:         c.SentinelUsername,
		SentinelPassword:         c.SentinelPassword,
		ContextTimeoutEnabled:    true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	switch b.mode {
	case modeCluster:
		co := opt.Cluster()
		// A promoted replica is found within this even with no error to
		// trigger a reload (go-redis' default is 60s).
		co.ClusterStateReloadInterval = clusterReload
		return redis.NewClusterClient(co), nil
	case modeSingle:
		so := opt.Simple()
		b.commonOptions(so, r)
		return redis.NewClient(so), nil
	}
	if r != nil {
		opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 1, 0, 1
		opt.MaxRetries = -1
		opt.ReadTimeout = c.Block + readMargin
		opt.OnConnect = r.onConnect("", false)
	}
	return redis.NewUniversalClient(opt), nil
}

// commonOptions sets what every single-server client of the broker shares,
// and for a reader (r not nil) its one connection, no retries, a read
// timeout beyond Block and the CLIENT ID hook.
func (b *Redis) commonOptions(opt *redis.Options, r *reader) {
	// Context deadlines bound every command, including Ping.
	opt.ContextTimeoutEnabled = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if r != nil {
		opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 1, 0, 1
		opt.MaxRetries = -1
		opt.ReadTimeout = b.cfg.Block + readMargin
		opt.OnConnect = r.onConnect(opt.Addr, false)
	}
}

// Prefix returns the key prefix in use (the default applied).
func (b *Redis) Prefix() string { return b.cfg.Prefix }

// Start begins delivering the new entries of watched topics to h from the
// reader goroutines. It fails if called twice or after Close.
func (b *Redis) Start(h Handler) error {
	if h == nil {
		return errors.New("pubsub: redis start: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// Checked under mu so that every wg.Add happens before Close's Wait.
	if b.closed.Load() {
		return ErrClosed
	}
	if b.started {
		return errors.New("pubsub: redis start: already started")
	}
	for _, r := range b.readers {
		c, err := b.newClient(r)
		if err != nil {
			for _, r := range b.readers {
				if r.client != nil {
					_ = r.client.Close()
					r.client = nil
				}
			}
			return err
		}
		r.client = c
	}
	b.started = true
	b.handler = h
	for _, r := range b.readers {
		b.wg.Add(1)
		go r.run(h)
	}
	for _, r := range b.slots {
		b.wg.Add(1)
		go r.run(h)
	}
	b.wg.Add(1)
	go b.runWaker()
	if b.cfg.MaxAge > 0 {
		b.wg.Add(1)
		go b.runTrimmer()
	}
	return nil
}

// Watch makes topic active: it returns the stream's current last ID and up
// to tail newest entries (oldest first) that fit in maxBytes together (by
// Entry.Size; 0: no bound), and from then on the Handler receives every
// entry after Tail.Last. Watching an already watched topic
// returns a fresh Tail and leaves its delivery cursor where it is. A key
// holding another type gives an error wrapping ErrWrongType.
//
// After Unwatch, a batch a reader had already read may still reach the
// Handler; entries at or below the cursor of a new Watch are filtered out.
func (b *Redis) Watch(ctx context.Context, topic string, tail, maxBytes int) (Tail, error) {
	if err := b.check(ctx, "watch", topic); err != nil {
		return Tail{}, err
	}
	if tail < 0 || maxBytes < 0 {
		return Tail{}, fmt.Errorf("pubsub: watch %q: negative tail %d or maxBytes %d", topic, tail, maxBytes)
	}
	key := b.key(topic)
	t, err := b.tail(ctx, topic, key, tail, maxBytes)
	if err != nil {
		return Tail{}, fmt.Errorf("pubsub: watch %q: %w", topic, err)
	}
	had, r := b.addWatched(topic, key, t.Last)
	if r == nil {
		return Tail{}, ErrClosed
	}
	if !had {
		b.wakeReader(r)
	}
	return t, nil
}

// addWatched adds key to its reader with cursor last, unless it is there
// already, and returns that reader (nil after Close). In Cluster mode it
// makes, and once started runs, the reader of the key's slot.
func (b *Redis) addWatched(topic, key string, last ID) (had bool, r *reader) {
	if b.mode == modeCluster {
		// mu stays held while the topic is added: a reader ends, under mu,
		// only when it has no topics.
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.closed.Load() {
			return false, nil
		}
		slot := keySlot(key)
		r = b.slots[slot]
		if r == nil {
			r = newReader(b, slot)
			b.slots[slot] = r
			if b.started {
				b.wg.Add(1)
				go r.run(b.handler)
			}
		}
	} else {
		r = b.readerFor(key)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, had = r.topics[key]
	if !had {
		// The cursor is the tail's Last: whatever is added after the
		// XREVRANGE has a greater ID and is delivered.
		r.topics[key] = &watched{topic: topic, key: key, cursor: last}
		r.gen++
	}
	return had, r
}

// Unwatch stops delivering topic. It does not block.
func (b *Redis) Unwatch(topic string) {
	b.changeWatched(topic, func(r *reader, key string) { delete(r.topics, key) })
}

// Recheck makes the reader of topic check its watched streams' history
// (see reader.checkHistory) right after its current read instead of at its
// next periodic check: a caller that read the stream and found that it
// lost what was delivered live (it is gone, or its last ID is below what
// the reader delivered) calls it, so that live delivery does not go on from
// a cursor in the old history. It does not block.
func (b *Redis) Recheck(topic string) {
	b.changeWatched(topic, func(r *reader, _ string) { r.recheck.Store(true) })
}

// changeWatched applies change to the reader of topic, under its mu, if
// topic is watched, and wakes the reader (the waker ends its blocked read
// with CLIENT UNBLOCK) to act on it. It does not block.
func (b *Redis) changeWatched(topic string, change func(r *reader, key string)) {
	if b.closed.Load() {
		return
	}
	key := b.key(topic)
	r := b.readerFor(key)
	if r == nil {
		return // Cluster mode: no reader, so not watched
	}
	r.mu.Lock()
	_, had := r.topics[key]
	if had {
		change(r, key)
		r.gen++
	}
	r.mu.Unlock()
	if had {
		b.wakeReader(r)
	}
}

// Publish appends an entry to topic's stream, as any Go publisher would:
//
//	XADD <Prefix><topic> MAXLEN ~ <MaxLen> * data <data> [event <event>]
//
// with no MAXLEN when MaxLen is negative. topic must pass ValidateTopic and
// event ValidateEvent. A key of another type gives
// an error wrapping ErrWrongType.
func (b *Redis) Publish(ctx context.Context, topic, event string, data []byte) (ID, error) {
	if b.closed.Load() {
		return ID{}, ErrClosed
	}
	if err := ValidateTopic(topic); err != nil {
		return ID{}, fmt.Errorf("pubsub: publish %q: %w", topic, err)
	}
	if err := ValidateEvent(event); err != nil {
		return ID{}, fmt.Errorf("pubsub: publish %q event %q: %w", topic, event, err)
	}
	values := make([]any, 0, 4)
	values = append(values, fieldData, data)
	if event != "" {
		values = append(values, fieldEvent, event)
	}
	args := &redis.XAddArgs{Stream: b.key(topic), Values: values}
	if b.cfg.MaxLen > 0 {
		args.MaxLen, args.Approx = b.cfg.MaxLen, true
	}
	s, err := b.client.XAdd(ctx, args).Result()
	if err != nil {
		return ID{}, fmt.Errorf("pubsub: publish %q: %w", topic, redisErr(err))
	}
	id, err := ParseID(s)
	if err != nil {
		return ID{}, fmt.Errorf("pubsub: publish %q: reply: %w", topic, err)
	}
	return id, nil
}

// CommandCalls returns how many times Redis ran each command since its
// stats were last reset (INFO commandstats: command name -> calls), summed
// over the masters in Cluster mode. A load generator reads it before and
// after a run to report the commands the nodes cost Redis.
func (b *Redis) CommandCalls(ctx context.Context) (map[string]int64, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	calls := make(map[string]int64)
	var mu sync.Mutex // ForEachMaster runs fn concurrently
	add := func(ctx context.Context, c *redis.Client) error {
		s, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for name, n := range parseCommandStats(s) {
			calls[name] += n
		}
		return nil
	}
	var err error
	switch c := b.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, add)
	case *redis.Client:
		err = add(ctx, c)
	default: // Sentinel's failover client is a *redis.Client; nothing else is built
		err = fmt.Errorf("client %T", c)
	}
	if err != nil {
		return nil, fmt.Errorf("pubsub: redis INFO commandstats: %w", err)
	}
	return calls, nil
}

// parseCommandStats reads lines like "cmdstat_xadd:calls=12,usec=34,...".
func parseCommandStats(s string) map[string]int64 {
	m := make(map[string]int64)
	for line := range strings.Lines(s) {
		line, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for kv := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					m[name] = n
				}
			}
		}
	}
	return m
}

// Range returns up to count entries of topic with ID > after, ascending;
// empty past the end or for a missing stream. Entries that cannot be
// decoded are skipped (and reported), and more are read in their place, so
// a short result always means the end.
func (b *Redis) Range(ctx context.Context, topic string, after ID, count int) ([]Entry, error) {
	if count <= 0 {
		return nil, fmt.Errorf("pubsub: range %q: count %d is not positive", topic, count)
	}
	var out []Entry
	for len(out) < count {
		want := count - len(out)
		p, err := b.Page(ctx, topic, after, want, 0)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Entries...)
		if p.Read < want || p.Last == MaxID {
			break
		}
		after = p.Last
	}
	return out, nil
}

// Page returns up to count entries of topic with ID > after, ascending,
// and the stream's Info at the same instant: one read-only script call
// (see stream_read.lua). With maxBytes > 0 the page also stops at the
// entry that brings it to maxBytes (counting 72 per entry plus its field
// names and values, a little above Entry.Size), and says Cut if entries
// read after it were left out: an entry larger than maxBytes is a page
// alone. The script reads by bytes too (one entry, then as many as the
// bound leaves room for), so Redis copies about maxBytes, whatever count.
// Entries that cannot be decoded are skipped and reported; Read and Last
// count them. A missing stream gives an empty Page (Info.Exists false), a
// key of another type an error wrapping ErrWrongType.
func (b *Redis) Page(ctx context.Context, topic string, after ID, count, maxBytes int) (Page, error) {
	if err := b.check(ctx, "page", topic); err != nil {
		return Page{}, err
	}
	if count <= 0 {
		return Page{}, fmt.Errorf("pubsub: page %q: count %d is not positive", topic, count)
	}
	mode := readRange
	if after == MaxID {
		mode = readInfo // nothing sorts after it
	}
	// The range starts at after itself, one entry more, to tell whether
	// the stream holds it (AfterMissing) in the same read.
	raw, err := b.readStreamBytes(ctx, b.key(topic), mode, after, count+1, maxBytes)
	if err != nil {
		return Page{}, fmt.Errorf("pubsub: page %q after %v: %w", topic, after, err)
	}
	missing := afterMissing(&raw, after, count)
	if es, _ := raw.entries.([]any); raw.cut && len(es) == 0 {
		// The entry at after filled the byte bound alone: read on.
		raw, err = b.readStreamBytes(ctx, b.key(topic), mode, after.Next(), count, maxBytes)
		if err != nil {
			return Page{}, fmt.Errorf("pubsub: page %q after %v: %w", topic, after, err)
		}
	}
	entries, last, n, ok := decodeEntries(raw.entries, b.badEntryFunc(topic))
	if !ok {
		return Page{}, fmt.Errorf("pubsub: page %q: entries of type %T", topic, raw.entries)
	}
	return Page{Entries: entries, Info: raw.info, Read: n, Last: last, Cut: raw.cut, AfterMissing: missing}, nil
}

// Info describes topic's stream from XINFO STREAM (Redis 7), read with the
// same script as pages. A missing key gives Exists false; a key of another
// type an error wrapping ErrWrongType.
//
// MaxDeleted is max-deleted-entry-id raised to cover trimming, which Redis
// does not record there: when entries-added exceeds the length, it is at
// least the ID just before First (or Last when the stream is empty). It is
// thus an upper bound of every removed ID rather than always an exact one:
// a position below it may be a gap of zero entries, never a missed gap.
func (b *Redis) Info(ctx context.Context, topic string) (StreamInfo, error) {
	if err := b.check(ctx, "info", topic); err != nil {
		return StreamInfo{}, err
	}
	info, err := b.info(ctx, b.key(topic))
	if err != nil {
		return StreamInfo{}, fmt.Errorf("pubsub: info %q: %w", topic, err)
	}
	return info, nil
}

// info reads the state of the stream at key in one read-only round trip;
// a key of another type gives an error wrapping ErrWrongType.
func (b *Redis) info(ctx context.Context, key string) (StreamInfo, error) {
	raw, err := b.readStream(ctx, key, readInfo, ID{}, 0)
	return raw.info, err
}

// prevID is the greatest ID before id (zero for the zero ID).
func prevID(id ID) ID {
	switch {
	case id.Seq > 0:
		return ID{Ms: id.Ms, Seq: id.Seq - 1}
	case id.Ms > 0:
		return ID{Ms: id.Ms - 1, Seq: ^uint64(0)}
	}
	return ID{}
}

// tail reads the newest n entries of key (oldest first) that fit in
// maxBytes (0: no bound) and the ID after which live delivery starts: the
// newest entry's ID, or when no entry is read (an empty stream, or a newest
// entry larger than maxBytes) its last-generated-id, or 0-0 when the key is
// missing. Both come from one atomic read, so no entry can slip between
// them.
func (b *Redis) tail(ctx context.Context, topic, key string, n, maxBytes int) (Tail, error) {
	raw, err := b.readStreamBytes(ctx, key, readRev, MaxID, max(n, 1), maxBytes)
	if err != nil {
		return Tail{}, err
	}
	entries, last, read, ok := decodeEntries(raw.entries, b.badEntryFunc(topic))
	if !ok {
		return Tail{}, fmt.Errorf("xrevrange reply of type %T", raw.entries)
	}
	if read == 0 {
		// Missing (Last zero), empty or cut to nothing: any later entry
		// sorts after Last.
		return Tail{Last: raw.info.Last}, nil
	}
	t := Tail{Last: last}
	if n > 0 && len(entries) > 0 {
		for i, j := 0, len(entries)-1; i < j; i, j = i+1, j-1 {
			entries[i], entries[j] = entries[j], entries[i]
		}
		t.Entries = entries
	}
	return t, nil
}

// Ping sends PING within ctx: nil when Redis answers. In Cluster mode it
// is nil while any master answers (see pingCluster for why).
func (b *Redis) Ping(ctx context.Context) error {
	if b.closed.Load() {
		return ErrClosed
	}
	var err error
	if b.cluster != nil {
		err = b.pingCluster(ctx)
	} else {
		err = b.client.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("pubsub: redis ping: %w", err)
	}
	return nil
}

// Close stops the readers (closing their connections ends a blocked read),
// the waker and the trimmer, waits for them, including a Handler call in
// progress (so a Handler must not call Close), and closes the clients.
// Later calls return nil; every other method then returns ErrClosed.
func (b *Redis) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.mu.Lock()
	// Start checks closed under mu: no goroutine can be added after this.
	b.cancel()
	var errs []error
	for _, r := range b.readers {
		if r.client != nil {
			errs = append(errs, r.client.Close())
		}
	}
	for _, r := range b.slots {
		// A Cluster reader swaps its client under mu and checks closed.
		if r.client != nil {
			_ = r.client.Close() // the reader may be closing it too
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
	for _, c := range b.nodes {
		errs = append(errs, c.Close())
	}
	errs = append(errs, b.client.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pubsub: redis close: %w", err)
	}
	return nil
}

// check runs the checks common to every topic method.
func (b *Redis) check(ctx context.Context, op, topic string) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("pubsub: %s %q: %w", op, topic, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pubsub: %s %q: %w", op, topic, err)
	}
	return nil
}

func (b *Redis) key(topic string) string { return b.cfg.Prefix + topic }

// readerFor is the reader that owns key: in Cluster mode the reader of its
// slot, nil when none; else one of the fixed readers by hash of the key.
func (b *Redis) readerFor(key string) *reader {
	if b.mode == modeCluster {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.slots[keySlot(key)]
	}
	n := uint32(len(b.readers))
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return b.readers[h.Sum32()%n]
}

// badEntryFunc returns the reporter of skipped entries of topic.
func (b *Redis) badEntryFunc(topic string) func(reason string) {
	return func(reason string) { b.badEntry(topic, reason) }
}

func (b *Redis) badEntry(topic, reason string) {
	b.log.Warn("pubsub: redis: stream entry not in the shape publishers are given", "topic", topic, "reason", reason)
	if b.cfg.OnBadEntry != nil {
		b.cfg.OnBadEntry(topic, reason)
	}
}

// redisErr maps Redis' WRONGTYPE reply to ErrWrongType, keeping the reply
// in the message.
func redisErr(err error) error {
	if isWrongType(err) {
		return fmt.Errorf("%w: %v", ErrWrongType, err)
	}
	return err
}

// isWrongType reports a WRONGTYPE error reply. Redis has no other way to
// say it than the error code at the start of the reply.
func isWrongType(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}
