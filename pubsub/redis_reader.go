package pubsub

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timings of the reader loop.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
	parkRetry  = 10 * time.Second       // how often a wrong-type topic is checked again
	wakeRetry  = 200 * time.Millisecond // waker: longest pause between CLIENT UNBLOCKs
	// historyCheck is how often, at most, a reader checks that the streams
	// it reads did not move under it (see checkHistory).
	historyCheck = time.Second
	trimEvery    = 30 * time.Second // MaxAge: longest pause between trims
)

// reader is one reader goroutine and the topics it owns.
type reader struct {
	b     *Redis // immutable
	index int    // immutable; the hash slot in Cluster mode
	// client is the reader's own one-connection client, set by Start before
	// the goroutine starts and closed by Close. In Cluster mode the reader
	// sets it (and addr, its node) under b.mu when it connects to its
	// slot's master, and Close closes it.
	client redis.UniversalClient
	addr   string
	// conn is the CLIENT ID of the reader's current connection and the
	// node it is on, stored by onConnect before the connection carries any
	// XREAD; nil when unknown.
	conn atomic.Pointer[connRef]
	// down is set while the reader's reads fail (for ShardStates).
	down atomic.Bool
	// wake is a 1-slot signal that topics changed, for the waits that are
	// not a blocked XREAD (no topics, parked topics). Never closed.
	wake chan struct{}
	// applied is the gen of the topic set the current (or last) read uses.
	applied atomic.Uint64
	// recheck asks for a history check after the current read (Recheck).
	recheck atomic.Bool

	mu     sync.Mutex
	topics map[string]*watched // by key; guarded by mu
	gen    uint64              // bumped on every change of topics; guarded by mu
}

// watched is one active topic of a reader.
type watched struct {
	topic, key string // immutable
	// cursor is the ID of the last entry delivered or skipped (or the tail
	// of Watch); the next read asks for entries after it. Guarded by reader.mu.
	cursor ID
	// parkedUntil is non-zero while the key holds a non-stream type: the
	// topic is left out of reads until then. Guarded by reader.mu.
	parkedUntil time.Time
	// added and last are the stream's entries-added and
	// last-generated-id at the last history or continuity check (zero
	// before the first): a smaller added later means the stream was
	// deleted and made again, and every entry above last adds one to
	// added (see continuous). Guarded by reader.mu.
	added int64
	last  ID
}

func newReader(b *Redis, index int) *reader {
	return &reader{
		b:      b,
		index:  index,
		wake:   make(chan struct{}, 1),
		topics: make(map[string]*watched),
	}
}

// connRef names a reader's connection: its CLIENT ID on the node at addr
// ("" outside Cluster mode: the shared client's server).
type connRef struct {
	addr string
	id   int64
}

// onConnect returns the hook that names each new reader connection to addr
// and records its CLIENT ID, so CLIENT UNBLOCK always names the connection
// the reader blocks on, on the node it blocks on.
func (r *reader) onConnect(addr string, readonly bool) func(ctx context.Context, cn *redis.Conn) error {
	if r.b.mode != modeCluster {
		addr = ""
	}
	return func(ctx context.Context, cn *redis.Conn) error {
		r.conn.Store(nil)
		if readonly {
			// A Cluster replica serves reads only to READONLY connections.
			if err := cn.ReadOnly(ctx).Err(); err != nil {
				return err
			}
		}
		// A name for CLIENT LIST, best effort: go-redis' ClientName option
		// would fail the connection where ACLs refuse CLIENT SETNAME.
		if err := cn.ClientSetName(ctx, "sse-reader-"+strconv.Itoa(r.index)).Err(); err != nil && !refused(err) {
			return err
		}
		id, err := cn.ClientID(ctx).Result()
		if refused(err) {
			// Refused (an ACL without CLIENT ID, say): read anyway; changes
			// of topics then wait for the block to end.
			r.b.unblockRefused(err)
			return nil
		}
		if err != nil {
			return err
		}
		r.conn.Store(&connRef{addr: addr, id: id})
		return nil
	}
}

// health reports the node r reads from and whether its last read worked.
func (r *reader) health() (addr string, up bool) {
	if c := r.conn.Load(); c != nil {
		addr = c.addr
	}
	return addr, !r.down.Load()
}

// wakeReader makes r pick up a change of its topics without waiting for its
// blocked read to time out.
func (b *Redis) wakeReader(r *reader) {
	select {
	case r.wake <- struct{}{}:
	default:
	}
	select {
	case b.wakeCh <- struct{}{}:
	default:
	}
}

// runWaker sends CLIENT UNBLOCK (from the shared pool) to every reader whose
// read still uses an old topic set, until each has started a read with the
// new one. A single UNBLOCK is not enough: it is lost if it lands while the
// reader is between reads, so the waker retries with a short growing pause
// until the reader's applied generation catches up. The common case is one
// UNBLOCK that hits.
func (b *Redis) runWaker() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.wakeCh:
		}
		pause := time.Millisecond
		for b.unblockStale() {
			t := time.NewTimer(pause)
			select {
			case <-b.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			pause = min(2*pause, wakeRetry)
		}
	}
}

// unblockStale sends CLIENT UNBLOCK to each reader behind on its topic set
// and reports whether any was behind.
func (b *Redis) unblockStale() (behind bool) {
	for _, r := range b.allReaders() {
		r.mu.Lock()
		gen := r.gen
		r.mu.Unlock()
		if r.applied.Load() >= gen {
			continue
		}
		if b.noUnblock.Load() {
			return false
		}
		behind = true
		ref := r.conn.Load()
		if ref == nil {
			continue // connecting; it reads the new set when it gets there
		}
		var c redis.Cmdable = b.client
		if ref.addr != "" {
			c = b.nodeClient(ref.addr)
		}
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		// 0 (not blocked) is normal: the reader is between reads.
		err := c.ClientUnblock(ctx, ref.id).Err()
		cancel()
		if refused(err) {
			b.unblockRefused(err)
			return false
		}
	}
	return behind
}

// refused reports a reply saying the command will never be allowed: NOPERM
// (ACL), or unknown (renamed or disabled by the operator). Transient replies
// such as LOADING are not refusals.
func refused(err error) bool {
	if redis.IsPermissionError(err) {
		return true
	}
	var reply redis.Error
	return errors.As(err, &reply) && strings.HasPrefix(reply.Error(), "ERR unknown")
}

// unblockRefused records that Redis refuses CLIENT ID or CLIENT UNBLOCK
// (ACL, or a managed service that disables them). Readers still see every
// entry; a change of topics then waits for the current block to end (at
// most Block), and the waker stops retrying.
func (b *Redis) unblockRefused(err error) {
	if b.noUnblock.CompareAndSwap(false, true) {
		b.log.Warn("pubsub: redis refuses CLIENT ID/UNBLOCK; new topics wait up to Block to be read", "err", err, "block", b.cfg.Block)
	}
}

// readSet is the snapshot of a reader's topics that one read uses.
type readSet struct {
	keys   []string
	ids    []string
	topics map[string]string // key -> topic
}

// run is the reader goroutine.
func (r *reader) run(h Handler) {
	defer r.b.wg.Done()
	var bo backoff
	failing := false
	cluster := r.b.mode == modeCluster
	reload := false // Cluster mode: reload the slot map before connecting
	failures := 0   // failed reads in a row
	var checked time.Time
	for r.b.ctx.Err() == nil {
		if err := r.recheckParked(); err != nil {
			r.failed(err, &bo, &failing)
			continue
		}
		set, nextCheck := r.snapshot()
		if len(set.keys) == 0 {
			if cluster && nextCheck.IsZero() && r.retire() {
				return
			}
			r.idle(nextCheck)
			continue
		}
		var err error
		if cluster {
			err = r.connectSlot(set.keys[0], reload, failures)
			reload = false
		}
		// After a failure (a failover, say), the history is checked before
		// the first read: that read would move the cursors past a fork.
		if err == nil && failing {
			err = r.checkHistory(h)
			checked = time.Now()
		}
		if err == nil {
			err = r.block(set, nextCheck, h)
		}
		if err == nil && (r.recheck.Swap(false) || time.Since(checked) >= historyCheck) {
			err = r.checkHistory(h)
			checked = time.Now()
		}
		if err != nil {
			reload = cluster && needsReload(err)
			failures++
			r.failed(err, &bo, &failing)
			continue
		}
		failures = 0
		if failing {
			failing = false
			r.down.Store(false)
			r.b.log.Info("pubsub: redis reader resumed", "reader", r.index)
		}
		bo.reset()
	}
}

// checkHistory finds the watched streams whose history moved under the
// reader: deleted (missing with a cursor past 0-0), made again (fewer
// entries-added than last time), with a last-generated-id below the
// cursor (a failover lost entries the reader had delivered), or forked
// (the cursor's entry is missing from within the stream's span: a failover
// to a server that has other entries around it). Each such
// topic's cursor is reset to the stream's last-generated-id (0-0 when
// missing; a fork keeps it) and h gets the topic with no entries, the broker's way of
// saying "your position is no longer in this stream": the node then makes
// its clients resume through the replay window, which announces the gap.
// One pipeline of the read script per stream (its state, and whether it
// holds the cursor's entry: IDs only, no payload) on the reader's own
// connection (the same node it reads), every historyCheck at most.
func (r *reader) checkHistory(h Handler) error {
	r.mu.Lock()
	ws := make([]*watched, 0, len(r.topics))
	var curs []ID
	for _, w := range r.topics {
		if w.parkedUntil.IsZero() {
			ws = append(ws, w)
			curs = append(curs, w.cursor)
		}
	}
	r.mu.Unlock()
	if len(ws) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.b.ctx, r.b.cfg.Block+readMargin)
	defer cancel()
	var c redis.Cmdable = r.client
	if r.b.cfg.ReadReplicas {
		// A replica lags the master that Watch took positions from: only
		// the master's history tells a loss from a lag.
		m, err := r.b.cluster.MasterForKey(ctx, ws[0].key)
		if err != nil {
			return &readError{err: err}
		}
		c = m
	}
	// One read per stream of its state and whether it holds the cursor's
	// entry (its ID alone: a big payload is not read again each check).
	states := make([]*redis.Cmd, len(ws))
	for attempt := 0; ; attempt++ {
		_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, w := range ws {
				states[i] = streamRead.EvalShaRO(ctx, p, []string{w.key}, readHeld, curs[i].String(), prevID(curs[i]).String(), 0)
			}
			return nil
		})
		if err := states[0].Err(); attempt > 0 || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			break
		}
		// A new server (a restart, a failover): load the script, once.
		if err := streamRead.Load(ctx, c).Err(); err != nil {
			return &readError{err: err}
		}
	}
	for i, w := range ws {
		v, err := states[i].Result()
		if err != nil {
			return &readError{err: err}
		}
		page, err := parseStreamRead(v)
		if errors.Is(err, ErrWrongType) {
			continue // the read parks it
		}
		if err != nil {
			return fmt.Errorf("history of %s: %w", w.key, err)
		}
		exists, last, first := page.info.Exists, page.info.Last, page.info.First
		forked := false
		if page.info.Length > 0 {
			// The cursor is an entry the reader delivered (or Watch's
			// newest). Within the stream's span but not in it: the
			// stream forked (a failover to a server that never had it,
			// while writes went on there).
			held, _ := page.entries.([]any)
			forked = !curs[i].IsZero() && !curs[i].Less(first) && !last.Less(curs[i]) && len(held) == 0
		}
		r.mu.Lock()
		if r.topics[w.key] != w {
			r.mu.Unlock()
			continue // unwatched meanwhile
		}
		from := w.cursor
		if from != curs[i] {
			r.mu.Unlock()
			continue // moved on meanwhile: checked next time
		}
		back := !exists && !from.IsZero() || exists && (last.Less(from) || page.added < w.added)
		w.added, w.last = 0, ID{}
		if exists {
			w.added, w.last = page.added, last
		}
		// A fork keeps the cursor (even though entries-added went down
		// with the lost branch): the new branch's entries after it are new
		// to the topic's clients and come in order; those before it are
		// behind the fork, for the replay window to announce. Otherwise
		// new entries may sort below the cursor: start after the stream's
		// last ID.
		to := from
		if back && !forked {
			to = last
		}
		w.cursor = to
		r.mu.Unlock()
		if back || forked {
			r.b.log.Warn("pubsub: redis stream history moved under the reader; its clients resume", "topic", w.topic, "key", w.key, "exists", exists, "forked", forked, "from", from.String(), "to", to.String())
			h(w.topic, nil)
		}
	}
	return nil
}

// failed handles a read error: a WRONGTYPE parks the topics at fault and
// the loop goes on at once; anything else is reported and backed off.
func (r *reader) failed(err error, bo *backoff, failing *bool) {
	if r.b.ctx.Err() != nil {
		return // closing: the error is Close's doing
	}
	if isWrongType(err) {
		parked, perr := r.parkWrongType()
		if perr != nil {
			err = perr
		} else if parked > 0 {
			return // the others read again at once
		}
		// No key is of the wrong type any more: back off as for any error.
	}
	d := bo.next()
	if r.b.mode == modeCluster && needsReload(err) {
		// The slot may have a new master already: look again soon. A
		// dial to a dead node and a slot map read are cheap.
		d = min(d, clusterRetry/2+rand.N(clusterRetry/2+1))
	}
	r.b.log.Warn("pubsub: redis reader failed; resuming from last IDs", "reader", r.index, "err", err, "backoff", d)
	*failing = true
	r.down.Store(true)
	if r.b.cfg.OnReadError != nil {
		r.b.cfg.OnReadError(err)
	}
	sleep(r.b.ctx, d)
}

// snapshot takes the reader's unparked topics and cursors, and records
// their generation as applied. nextCheck is when a parked topic is due for
// a recheck (zero if none).
func (r *reader) snapshot() (set readSet, nextCheck time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	set.topics = make(map[string]string, len(r.topics))
	for key, w := range r.topics {
		if !w.parkedUntil.IsZero() {
			if nextCheck.IsZero() || w.parkedUntil.Before(nextCheck) {
				nextCheck = w.parkedUntil
			}
			continue
		}
		set.keys = append(set.keys, key)
		set.topics[key] = w.topic
	}
	// Sorted for Cluster slot grouping and reproducible commands.
	sort.Strings(set.keys)
	set.ids = make([]string, len(set.keys))
	for i, key := range set.keys {
		set.ids[i] = r.topics[key].cursor.String()
	}
	r.applied.Store(r.gen)
	return set, nextCheck
}

// idle waits while the reader has nothing to read.
func (r *reader) idle(nextCheck time.Time) {
	d := time.Hour
	if !nextCheck.IsZero() {
		d = max(time.Until(nextCheck), time.Millisecond)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.b.ctx.Done():
	case <-r.wake:
	case <-t.C:
	}
}

// block issues one XREAD BLOCK over set on the reader's connection and
// delivers what it returns. A timed-out block and one ended by CLIENT
// UNBLOCK both come back as a nil reply (redis.Nil): a normal wake.
func (r *reader) block(set readSet, nextCheck time.Time, h Handler) error {
	// Drain a stale signal: the snapshot already holds the change.
	select {
	case <-r.wake:
	default:
	}
	// At most historyCheck, so that the history of idle streams is
	// checked that often too.
	blk := min(r.b.cfg.Block, historyCheck)
	if !nextCheck.IsZero() {
		blk = max(min(blk, time.Until(nextCheck)), time.Millisecond)
	}
	args := make([]any, 0, 6+2*len(set.keys))
	args = append(args, "XREAD", "COUNT", r.b.cfg.Count, "BLOCK", blk.Milliseconds(), "STREAMS")
	for _, k := range set.keys {
		args = append(args, k)
	}
	for _, id := range set.ids {
		args = append(args, id)
	}
	// The per-call deadline outlasts the block: a read that takes longer
	// means a stalled server or a dead connection.
	ctx, cancel := context.WithTimeout(r.b.ctx, blk+readMargin)
	defer cancel()
	cmd := redis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(6)
	ids := make([]any, len(set.ids))
	for i, id := range set.ids {
		ids[i] = id
	}
	// The continuity check rides in the same pipeline: Redis runs it on
	// this connection as soon as the XREAD replies, so it costs no round
	// trip and adds no latency.
	var chk *redis.Cmd
	_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		_ = p.Process(ctx, cmd)
		chk = streamCheck.EvalShaRO(ctx, p, set.keys, ids...)
		return nil
	})
	reply, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return &readError{err: err}
	}
	state, err := chk.Result()
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A new server (a restart, a failover): load the script. Running
		// it later than the XREAD is as sound, only less often continuous.
		state, err = streamCheck.RunRO(ctx, r.client, set.keys, ids...).Result()
	}
	if err != nil {
		return &readError{err: fmt.Errorf("continuity check: %w", err)}
	}
	return r.deliver(set, reply, state, h)
}

// readError is a failed XREAD; it unwraps to the go-redis error.
type readError struct{ err error }

func (e *readError) Error() string { return "xread: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// deliver hands the entries of an XREAD reply to h, topic by topic, after
// moving each topic's cursor under the lock, when the continuity check
// state (the streamCheck reply for set) shows them to follow what was
// delivered; otherwise the topic is reset as by checkHistory. A topic
// whose cursor moved while the read was in flight (unwatched and watched
// again) is skipped: the next read starts at its new cursor. h runs with
// no lock held.
func (r *reader) deliver(set readSet, reply, state any, h Handler) error {
	streams, err := decodeStreams(reply)
	if err != nil {
		return err
	}
	checks, err := parseStreamChecks(state, len(set.keys))
	if err != nil {
		return err
	}
	for i, key := range set.keys {
		raw, ok := streams[key]
		if !ok {
			continue
		}
		topic, ok := set.topics[key]
		if !ok {
			continue
		}
		entries, last, _, ok := decodeEntries(raw, r.b.badEntryFunc(topic))
		if !ok {
			r.b.badEntry(topic, BadEntryMalformed)
			continue
		}
		r.mu.Lock()
		w := r.topics[key]
		if w == nil {
			r.mu.Unlock()
			continue
		}
		from := w.cursor
		if from.String() != set.ids[i] {
			r.mu.Unlock()
			continue
		}
		c := checks[i]
		if c.wrongType || c.idle {
			// Not a stream: the next XREAD fails and parks it. Idle: the
			// entries read are gone (nothing was delivered past from);
			// the next read waits for new ones and the history check
			// resets the topic if the stream moved back.
			r.mu.Unlock()
			continue
		}
		if continuous(from, w.added, w.last, entries, c) {
			w.cursor = last
			w.added, w.last = c.page.added, c.page.info.Last
			r.mu.Unlock()
			if len(entries) > 0 {
				h(topic, entries)
			}
			continue
		}
		// Entries past the stream's last ID come after the reset, in order.
		to := c.page.info.Last
		w.cursor, w.added, w.last = to, c.page.added, to
		r.mu.Unlock()
		r.b.log.Warn("pubsub: redis stream history moved under a read; its clients resume", "topic", topic, "key", key, "exists", c.page.info.Exists, "from", from.String(), "to", to.String(), "entries", len(entries))
		h(topic, nil)
	}
	return nil
}

// streamCheck is the continuity check pipelined after each XREAD; see
// stream_check.lua and continuous.
var streamCheck = redis.NewScript(streamCheckLua)

//go:embed stream_check.lua
var streamCheckLua string

// streamState is one key's item of a streamCheck reply.
type streamState struct {
	page      rawPage // info and entries-added; entries: the entry at the position
	idle      bool    // nothing after the position
	wrongType bool
}

// parseStreamChecks decodes a streamCheck reply for n keys.
func parseStreamChecks(reply any, n int) ([]streamState, error) {
	items, ok := reply.([]any)
	if !ok || len(items) != n {
		return nil, fmt.Errorf("continuity check: reply %T of %d items, want %d", reply, len(items), n)
	}
	out := make([]streamState, n)
	for i, item := range items {
		if one, ok := item.([]any); ok && len(one) == 1 && one[0] == "idle" {
			out[i].idle = true
			continue
		}
		page, err := parseStreamRead(item)
		switch {
		case errors.Is(err, ErrWrongType):
			out[i].wrongType = true
		case err != nil:
			return nil, fmt.Errorf("continuity check: %w", err)
		}
		out[i].page = page
	}
	return out, nil
}

// continuous reports whether entries, read after from, follow what the
// reader delivered up to from, given added and last (the stream's
// entries-added and last-generated-id at the previous check, zero if
// none) and c, the stream's state just after the read. The rule:
//
//   - the stream exists and holds something after from (not idle);
//   - entries-added did not go down, and it went up by at least the
//     number of entries above last: each of them is an XADD after the
//     previous check, in the same stream;
//   - the entry at from is still held, or from is max-deleted-entry-id
//     itself (the entry removed last), or from lies within the stream
//     (at or above its first entry) and was removed (at or below
//     max-deleted-entry-id: XDEL). A position below the first entry is
//     otherwise a gap, whatever removed the entries after it (trimming
//     overtook a slow reader), the rule of replay.Window's start gap;
//     0-0 is no exception (a stream empty at Watch, then written and
//     trimmed before the first read). Within the stream, a position
//     neither held nor removed is a fork.
//
// The last rule is waived when the reader was at the head (from is the
// last ID of the previous check) and the read holds every entry added
// since, up to the last ID: nothing can be missing. Before Redis 7
// entries-added is unknown (-1) and only the last rule holds.
//
// A stream deleted and made again has a new entries-added count from 0; a
// server that lost entries (a failover, RESTORE of an older copy) has a
// lower count or lacks the entry at from, unless it held from and lost
// only entries never delivered, which is no gap. Entries added between
// the XREAD's reply and the check only raise entries-added: still
// continuous. A history change between them makes a needless reset, never
// a silent skip.
func continuous(from ID, added int64, last ID, entries []Entry, c streamState) bool {
	if c.idle || c.wrongType || !c.page.info.Exists {
		return false
	}
	if c.page.added >= 0 {
		above := len(entries) - sort.Search(len(entries), func(i int) bool { return last.Less(entries[i].ID) })
		if c.page.added < added || c.page.added-added < int64(above) {
			return false
		}
	}
	info := &c.page.info
	if c.page.added >= 0 && from == last && len(entries) > 0 && entries[len(entries)-1].ID == info.Last &&
		c.page.added-added == int64(len(entries)) {
		// The reader was at the stream's head and read every entry added
		// since: whatever was trimmed before the check, the read missed
		// nothing. (Trimming between the XREAD and its check would
		// otherwise look like a gap.)
		return true
	}
	held, _ := c.page.entries.([]any)
	if len(held) > 0 || from == info.MaxDeleted {
		return true
	}
	return !from.Less(info.First) && !info.MaxDeleted.Less(from)
}

// parkWrongType finds, with TYPE, the reader's keys that hold something
// other than a stream (or nothing), parks them and reports them. Redis fails
// a whole multi-key XREAD for one such key without saying which.
func (r *reader) parkWrongType() (parked int, err error) {
	r.mu.Lock()
	keys := make([]string, 0, len(r.topics))
	for key, w := range r.topics {
		if w.parkedUntil.IsZero() {
			keys = append(keys, key)
		}
	}
	r.mu.Unlock()
	types, err := r.types(keys)
	if err != nil {
		return 0, err
	}
	until := time.Now().Add(parkRetry)
	for i, key := range keys {
		if types[i] == "stream" || types[i] == "none" {
			continue
		}
		r.mu.Lock()
		w := r.topics[key]
		if w != nil {
			w.parkedUntil = until
		}
		r.mu.Unlock()
		if w == nil {
			continue
		}
		parked++
		r.b.log.Warn("pubsub: redis topic key is not a stream; parked", "topic", w.topic, "key", key, "type", types[i], "retry", parkRetry)
		if r.b.cfg.OnBadEntry != nil {
			r.b.cfg.OnBadEntry(w.topic, BadEntryWrongType)
		}
	}
	return parked, nil
}

// recheckParked unparks the topics whose key is a stream again (or gone)
// and whose recheck is due; the others stay parked for another parkRetry.
func (r *reader) recheckParked() error {
	now := time.Now()
	r.mu.Lock()
	var keys []string
	for key, w := range r.topics {
		if !w.parkedUntil.IsZero() && !now.Before(w.parkedUntil) {
			keys = append(keys, key)
		}
	}
	r.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	types, err := r.types(keys)
	if err != nil {
		return err
	}
	var resumed []string
	r.mu.Lock()
	for i, key := range keys {
		w := r.topics[key]
		if w == nil {
			continue
		}
		if types[i] == "stream" || types[i] == "none" {
			w.parkedUntil = time.Time{}
			resumed = append(resumed, w.topic)
		} else {
			w.parkedUntil = now.Add(parkRetry)
		}
	}
	r.mu.Unlock()
	for _, topic := range resumed {
		r.b.log.Info("pubsub: redis topic key is a stream again; resumed", "topic", topic)
	}
	return nil
}

// types returns TYPE of each key, pipelined on the shared pool.
func (r *reader) types(keys []string) ([]string, error) {
	ctx, cancel := context.WithTimeout(r.b.ctx, r.b.cfg.Block+readMargin)
	defer cancel()
	cmds := make([]*redis.StatusCmd, len(keys))
	_, err := r.b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Type(ctx, k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, len(keys))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// runTrimmer applies MaxAge to the streams of watched topics: XTRIM MINID ~
// (now-MaxAge) on each, every min(MaxAge/4, 30s). Topics no node watches are
// bounded only by MAXLEN at publish.
func (b *Redis) runTrimmer() {
	defer b.wg.Done()
	every := max(min(b.cfg.MaxAge/4, trimEvery), 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		if err := b.trim(); err != nil && b.ctx.Err() == nil {
			b.log.Warn("pubsub: redis trim by age failed", "err", err)
		}
	}
}

// trim runs one round of XTRIM MINID over the watched keys, 100 per pipeline.
func (b *Redis) trim() error {
	var keys []string
	for _, r := range b.allReaders() {
		r.mu.Lock()
		for key := range r.topics {
			keys = append(keys, key)
		}
		r.mu.Unlock()
	}
	cut := b.cfg.Now().Add(-b.cfg.MaxAge).UnixMilli()
	if cut <= 0 {
		return nil
	}
	minID := strconv.FormatInt(cut, 10)
	var errs []error
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 100)]
		keys = keys[len(batch):]
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		cmds, err := b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range batch {
				p.Do(ctx, "XTRIM", k, "MINID", "~", minID)
			}
			return nil
		})
		cancel()
		if err == nil {
			continue
		}
		for _, c := range cmds {
			// A wrong-type key is the reader's to report.
			if err := c.Err(); err != nil && !isWrongType(err) {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// backoff is a capped exponential delay with jitter.
type backoff struct{ d time.Duration }

// next returns the next delay: doubling from backoffMin to backoffMax, each
// drawn from [d/2, d] so readers of many nodes do not retry in step.
func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = backoffMin
	} else {
		b.d = min(2*b.d, backoffMax)
	}
	return b.d/2 + rand.N(b.d/2+1)
}

func (b *backoff) reset() { b.d = 0 }

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
