package integration

// The model-based checker of the window's promise (issue 10): a seeded
// random schedule of operations on in-process nodes over one real Redis
// (TestModelRedis) or the embedded broker (TestModelMemory), every client's
// received sequence checked against the recorded history of the streams
// (checkClient in model_util_test.go says exactly what is checked).
//
// make test runs the fixed seeds of modelFixedSeeds, 150 operations each.
// Longer runs (the fixed seeds, then random ones; operations per seed with
// -model.ops or SSE_MODEL_OPS):
//
//	make model MODEL_SEEDS=200 MODEL_OPS=300
//	go test -count=1 -run TestModel ./integration/ -model.seeds=200
//	SSE_MODEL_SEEDS=200 go test -count=1 -run TestModel ./integration/
//
// and one seed, as a failing seed prints it (the same operations in the
// same order; IDs and timings differ from run to run):
//
//	go test -count=1 -run TestModelRedis ./integration/ -model.seed=N -model.ops=150

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/node"
	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

var (
	modelSeed  = flag.Uint64("model.seed", 0, "model checker: run only this seed")
	modelSeeds = flag.Int("model.seeds", 0, "model checker: run this many seeds: the fixed ones, then random ones (env SSE_MODEL_SEEDS)")
	modelOps   = flag.Int("model.ops", 0, "model checker: operations per seed (env SSE_MODEL_OPS; default 150)")
)

// modelFixedSeeds run in make test. On a5870fe every one of them fails
// TestModelRedis (silent skips after DEL/recreate and failovers, clients
// stuck on a recreated stream, lower IDs and repeats after a gap without
// reset) and all but 3 and 4 fail TestModelMemory (lower IDs after a gap
// without reset). 681614392 is the embedded-broker seed that catches a
// replay checking for trimmed entries on its first page only.
var modelFixedSeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 681614392}

// modelSeedList returns the seeds to run.
func modelSeedList(t *testing.T) []uint64 {
	if *modelSeed != 0 {
		return []uint64{*modelSeed}
	}
	n := *modelSeeds
	if v := os.Getenv("SSE_MODEL_SEEDS"); n == 0 && v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("SSE_MODEL_SEEDS=%q: %v", v, err)
		}
	}
	seeds := append([]uint64(nil), modelFixedSeeds...)
	if n <= len(seeds) {
		if n > 0 {
			seeds = seeds[:n]
		}
		return seeds
	}
	base := uint64(time.Now().UnixNano()) % 1_000_000_000
	for i := len(seeds); i < n; i++ {
		seeds = append(seeds, base+uint64(i))
	}
	return seeds
}

func modelOpCount(t *testing.T) int {
	if *modelOps > 0 {
		return *modelOps
	}
	if v := os.Getenv("SSE_MODEL_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("SSE_MODEL_OPS=%q: want a positive number", v)
		}
		return n
	}
	return 150
}

// TestModelRedis runs the model checker on two or three nodes over one
// real Redis of the test's own (it restarts it).
func TestModelRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.WithContainer())
	ops := modelOpCount(t)
	for _, seed := range modelSeedList(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runModel(t, &model{srv: srv, prefix: redistest.Prefix(t)}, seed, ops)
		})
	}
}

// TestModelMemory runs the model checker on a node with the embedded
// broker: publishes, its own MAXLEN and MAXAGE trims, node restarts (which
// lose everything).
func TestModelMemory(t *testing.T) {
	ops := modelOpCount(t)
	for _, seed := range modelSeedList(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runModel(t, &model{}, seed, ops)
		})
	}
}

// model is one run: the system under test, the history, the clients and
// the schedule as executed.
type model struct {
	t      *testing.T
	rng    *rand.Rand
	seed   uint64
	began  time.Time
	srv    *redistest.Server // nil: the embedded broker
	prefix string
	rc     *redis.Client

	// Drawn from the seed.
	topics  []string
	ring    int
	page    int
	maxAge  time.Duration
	memLen  int // the embedded broker's MaxLen
	burst   int // entries per publish, at most
	pad     int // payload size
	sndBuf  int // the nodes' SocketSendBuffer
	cliBuf  int // the nodes' ClientBufferBytes
	restart bool

	h       *history
	mu      sync.Mutex // guards nodes (read by clients' pick) and mem
	nodes   []*mNode
	mem     *pubsub.Memory // the embedded broker of the running node
	clients []*wClient
	live    []*wClient
	dumps   map[string]dumpState
	names   int
	sched   []string
}

// dumpState is a DUMP taken for a later failover.
type dumpState struct {
	data string
	last pubsub.ID
}

// mNode is a node of the model: its address and how to end it.
type mNode struct {
	name string
	addr string
	end  func(crash bool)
}

func (m *model) logf(format string, args ...any) {
	m.sched = append(m.sched, fmt.Sprintf("%8.3fs ", time.Since(m.began).Seconds())+fmt.Sprintf(format, args...))
}

func (m *model) test() string {
	if m.srv == nil {
		return "TestModelMemory"
	}
	return "TestModelRedis"
}

func runModel(t *testing.T, m *model, seed uint64, ops int) {
	m.t, m.seed, m.began = t, seed, time.Now()
	m.rng = rand.New(rand.NewPCG(seed, seed^0x5eed))
	m.dumps = make(map[string]dumpState)
	m.topics = []string{"m.a", "m.b", "m.c"}
	m.ring = []int{8, 32, 1024}[m.rng.IntN(3)]
	m.page = []int{4, 16, 256}[m.rng.IntN(3)]
	if m.rng.IntN(3) == 0 {
		m.maxAge = 3 * time.Second
	}
	m.memLen = 100 + m.rng.IntN(900)
	m.burst = []int{20, 50, 100}[m.rng.IntN(3)]
	m.pad = []int{0, 100, 400}[m.rng.IntN(3)]
	// Small buffers keep a slow client's replay waiting on its socket, so
	// that trims and deletions overtake it; large ones let a node run ahead.
	if m.rng.IntN(2) == 0 {
		m.sndBuf, m.cliBuf = 4<<10, 16<<10
	}
	m.restart = m.srv != nil && m.rng.IntN(3) == 0
	m.h = newHistory(m.maxAge)
	m.h.pad = m.pad
	if m.srv != nil {
		m.rc = m.srv.Client(t)
	}
	m.logf("seed %d: %s, ring %d, page %d, max age %v, memory max len %d, burst %d, payload %d B, node buffers %d/%d", seed, m.test(), m.ring, m.page, m.maxAge, m.memLen, m.burst, m.pad, m.sndBuf, m.cliBuf)
	replay := fmt.Sprintf("go test -count=1 -run '%s' ./integration/ -model.seed=%d -model.ops=%d", m.test(), seed, ops)
	t.Logf("model seed %d (%d operations); replay: %s", seed, ops, replay)
	defer func() {
		if t.Failed() {
			t.Logf("schedule of seed %d:\n%s\nreplay: %s", seed, strings.Join(m.sched, "\n"), replay)
		}
	}()
	t.Cleanup(m.stopNodes)
	nNodes := 1
	if m.srv != nil {
		nNodes = 2 + m.rng.IntN(2)
	}
	for range nNodes {
		m.startNode()
	}
	for range 2 {
		m.startClient()
	}
	for range ops {
		m.step()
	}
	m.finish()
}

// step draws and runs one operation.
func (m *model) step() {
	r := m.rng.IntN(100)
	switch {
	case r < 35:
		m.publish()
	case r < 43:
		if m.srv != nil {
			m.trim()
		} else {
			m.publish()
		}
	case r < 46:
		if m.srv != nil {
			m.del()
		}
	case r < 50:
		if m.srv != nil {
			m.failover()
		}
	case r < 53:
		m.restartNode()
	case r < 55:
		if m.restart {
			m.restart = false // one Redis restart per seed at most: it takes seconds
			m.restartRedis()
		}
	case r < 65:
		m.startClient()
	case r < 68:
		m.stopClient()
	case r < 73:
		if len(m.live) > 0 {
			c := m.live[m.rng.IntN(len(m.live))]
			m.logf("break the connection of client %s", c.name)
			c.breakConn()
		}
	default:
		d := time.Duration(10+m.rng.IntN(140)) * time.Millisecond
		m.logf("sleep %v", d)
		time.Sleep(d)
	}
}

func (m *model) topic() string { return m.topics[m.rng.IntN(len(m.topics))] }

func (m *model) ctx() context.Context { return ctxT(m.t) }

func (m *model) publish() {
	topic := m.topic()
	k := 1 + m.rng.IntN(m.burst)
	if m.srv == nil {
		for range k {
			m.memPublish(topic)
		}
		m.logf("publish %d to %s (last %s)", k, topic, m.h.lastID(topic))
		return
	}
	ids := make([]string, k)
	last := m.h.lastID(topic)
	for i := range ids {
		ids[i] = "*"
		switch r := m.rng.IntN(100); {
		case r < 8:
			last = pubsub.ID{Ms: last.Ms + 1 + uint64(m.rng.IntN(1000)), Seq: uint64(m.rng.IntN(3))}
			ids[i] = last.String()
		case r < 9 && last.Ms < 9e12:
			last = pubsub.ID{Ms: 9e12 + uint64(m.rng.IntN(1000)), Seq: 1}
			ids[i] = last.String()
		}
	}
	maxLen := 0
	if m.rng.IntN(2) == 0 {
		maxLen = m.burst + 10 + m.rng.IntN(400)
	}
	added, err := m.h.xadds(m.ctx(), m.rc, m.prefix+topic, topic, ids, maxLen)
	trim := "no MAXLEN"
	if maxLen > 0 {
		trim = fmt.Sprintf("MAXLEN ~ %d", maxLen)
	}
	m.logf("XADD %s x%d ids %s %s: %d added, last %s, err %v", topic, k, strings.Join(ids, " "), trim, len(added), m.h.lastID(topic), err)
}

// memPublish publishes one entry to topic on the embedded broker and
// records it, with the trim to the broker's MaxLen that the publish made
// (every publish trims: the last one of a run too, or the checker owes
// clients an entry the broker no longer holds).
func (m *model) memPublish(topic string) (payload string) {
	p := m.h.nextPayload(topic)
	sent := time.Now()
	id, err := m.memBroker().Publish(m.ctx(), topic, "", []byte(p))
	if err != nil {
		m.t.Fatalf("publish %s: %v", topic, err)
	}
	m.h.add(topic, id, p, sent)
	m.h.keepNewest(topic, sent, m.memLen)
	return p
}

func (m *model) trim() {
	topic := m.topic()
	key := m.prefix + topic
	present := m.h.present(topic)
	at := time.Now()
	switch r := m.rng.IntN(3); {
	case r == 0:
		n := m.rng.IntN(100)
		err := m.rc.Do(m.ctx(), "XTRIM", key, "MAXLEN", n).Err()
		m.h.keepNewest(topic, at, n)
		m.logf("XTRIM %s MAXLEN %d: %v", topic, n, err)
	case r == 1 && len(present) > 0:
		min := present[m.rng.IntN(len(present))].id
		err := m.rc.Do(m.ctx(), "XTRIM", key, "MINID", min.String()).Err()
		m.h.remove(topic, at, func(_ int, e *hEntry) bool { return e.id.Less(min) })
		m.logf("XTRIM %s MINID %s: %v", topic, min, err)
	case r == 2:
		// Only entries old enough that every live reader has them: a live
		// XREAD cannot see a removal (see removalGrace). And only above
		// every ID removed so far: Redis keeps only the highest removed ID
		// (max-deleted-entry-id), so an XDEL below it cannot be told.
		var old []*hEntry
		floor := m.h.maxRemoved(topic)
		for _, e := range present {
			if at.Sub(e.sentAt) > removalGrace+time.Second/2 && floor.Less(e.id) {
				old = append(old, e)
			}
		}
		if len(old) == 0 {
			return
		}
		e := old[m.rng.IntN(len(old))]
		err := m.rc.Do(m.ctx(), "XDEL", key, e.id.String()).Err()
		m.h.xdel(topic, e, at)
		m.logf("XDEL %s %s: %v", topic, e.id, err)
	}
}

func (m *model) del() {
	topic := m.topic()
	at := time.Now()
	err := m.rc.Do(m.ctx(), "DEL", m.prefix+topic).Err()
	m.h.newEpoch(topic, at)
	m.logf("DEL %s: %v", topic, err)
	if m.rng.IntN(2) == 0 {
		id := fmt.Sprintf("%d-1", 1+m.rng.IntN(1_000_000))
		added, err := m.h.xadds(m.ctx(), m.rc, m.prefix+topic, topic, []string{id, "*"}, 0)
		m.logf("recreate %s lower: XADD %s, *: %v %v", topic, id, added, err)
	}
}

// failover takes a DUMP of a topic's stream the first time and, the next
// time, replaces the stream by it and adds entries above the dump's last
// ID: a promoted replica that had missed the writes between the two.
func (m *model) failover() {
	topic := m.topic()
	key := m.prefix + topic
	d, ok := m.dumps[topic]
	if !ok {
		s, err := m.rc.Dump(m.ctx(), key).Result()
		if err != nil {
			m.logf("DUMP %s: %v", topic, err)
			return
		}
		m.dumps[topic] = dumpState{data: s, last: m.h.lastID(topic)}
		m.logf("DUMP %s at %s", topic, m.h.lastID(topic))
		return
	}
	delete(m.dumps, topic)
	at := time.Now()
	err := m.rc.RestoreReplace(m.ctx(), key, 0, d.data).Err()
	if err != nil {
		m.t.Fatalf("RESTORE %s: %v", key, err)
	}
	if err := m.h.restoreFrom(m.ctx(), m.rc, key, topic, at); err != nil {
		m.t.Fatal(err)
	}
	ids := []string{fmt.Sprintf("%d-1", d.last.Ms+1), fmt.Sprintf("%d-2", d.last.Ms+1), "*"}
	added, err := m.h.xadds(m.ctx(), m.rc, key, topic, ids, 0)
	m.logf("failover %s: RESTORE the dump at %s, then XADD %v: %v %v", topic, d.last, ids, added, err)
}

// restartRedis restarts the container, keeping its data (SAVE first) or
// losing it (FLUSHALL first: a restart without persistence).
func (m *model) restartRedis() {
	keep := m.rng.IntN(2) == 0
	at := time.Now()
	if !keep {
		m.srv.MustDo(m.t, "FLUSHALL")
		for _, topic := range m.topics {
			m.h.newEpoch(topic, at)
		}
	}
	m.srv.MustDo(m.t, "SAVE")
	m.srv.Stop(m.t)
	m.srv.Start(m.t)
	m.logf("restart Redis (data kept: %v) in %v", keep, time.Since(at).Round(time.Millisecond))
}

func (m *model) memBroker() *pubsub.Memory {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mem
}

func (m *model) startNode() {
	m.names++
	name := "n" + strconv.Itoa(m.names)
	var n *mNode
	if m.srv != nil {
		cn := startNode(m.t, m.srv, m.prefix, name, func(c *nodeConfig) {
			c.Redis.MaxAge = m.maxAge
			c.Node.Window = replay.Config{RingSize: m.ring, PageSize: m.page, MaxAge: m.maxAge}
			c.Node.Retry = 50 * time.Millisecond
			c.Node.SocketSendBuffer, c.Node.ClientBufferBytes = m.sndBuf, m.cliBuf
		})
		n = &mNode{name: name, addr: cn.addr, end: func(crash bool) {
			if crash {
				cn.kill(m.t)
			} else {
				cn.stop(m.t)
			}
		}}
	} else {
		n = m.startMemNode(name)
	}
	m.mu.Lock()
	m.nodes = append(m.nodes, n)
	m.mu.Unlock()
	m.logf("start node %s on %s", name, n.addr)
}

func (m *model) restartNode() {
	m.mu.Lock()
	i := m.rng.IntN(len(m.nodes))
	n := m.nodes[i]
	m.nodes = append(m.nodes[:i:i], m.nodes[i+1:]...)
	m.mu.Unlock()
	crash := m.rng.IntN(2) == 0
	at := time.Now()
	n.end(crash)
	if m.srv == nil {
		for _, topic := range m.topics {
			m.h.newEpoch(topic, at) // the embedded broker's streams die with it
		}
		// A process restarts in more than a millisecond: the new broker's
		// IDs must not reuse the old one's (same millisecond, other
		// entries), which no node could tell apart.
		time.Sleep(2 * time.Millisecond)
	}
	m.logf("end node %s (crash: %v)", n.name, crash)
	m.startNode()
}

func (m *model) stopNodes() {
	m.mu.Lock()
	nodes := m.nodes
	m.nodes = nil
	m.mu.Unlock()
	for _, n := range nodes {
		n.end(false)
	}
}

// pick returns a node's address for a client's next connection.
func (m *model) pick() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.nodes) == 0 {
		return "127.0.0.1:1"
	}
	return m.nodes[rand.IntN(len(m.nodes))].addr
}

// position draws a resume position for topic.
func (m *model) position(topic string) string {
	m.h.mu.Lock()
	var all []*hEntry
	for _, ep := range m.h.topics[topic] {
		all = append(all, ep.entries...)
	}
	m.h.mu.Unlock()
	last := m.h.lastID(topic)
	switch r := m.rng.IntN(6); {
	case r == 0:
		return "0"
	case r <= 2 && len(all) > 0: // an entry's, present, trimmed or of an old epoch
		return all[m.rng.IntN(len(all))].id.String()
	case r == 3: // the future
		return pubsub.ID{Ms: last.Ms + 3_600_000}.String()
	case r == 4 && len(all) > 0: // never existed
		return pubsub.ID{Ms: all[m.rng.IntN(len(all))].id.Ms, Seq: 999_999}.String()
	}
	return last.String()
}

func (m *model) startClient() {
	if len(m.live) >= 8 {
		return
	}
	m.names++
	c := &wClient{name: "c" + strconv.Itoa(m.names), pick: m.pick}
	perm := m.rng.Perm(len(m.topics))
	c.topics = []string{m.topics[perm[0]]}
	if m.rng.IntN(3) == 0 {
		c.topics = append(c.topics, m.topics[perm[1]])
	}
	if m.rng.IntN(4) != 0 {
		pos := make([]string, len(c.topics))
		for i, tp := range c.topics {
			pos[i] = m.position(tp)
		}
		c.start = strings.Join(pos, ",")
	}
	if m.rng.IntN(5) == 0 {
		c.rcvBuf, c.rate = 4<<10, (4+m.rng.IntN(60))<<10
	}
	startWClient(m.t, c)
	m.clients = append(m.clients, c)
	m.live = append(m.live, c)
	m.logf("client %s: topics %v, start %q, slow %d B/s", c.name, c.topics, c.start, c.rate)
}

func (m *model) stopClient() {
	if len(m.live) == 0 {
		return
	}
	i := m.rng.IntN(len(m.live))
	c := m.live[i]
	m.live = append(m.live[:i:i], m.live[i+1:]...)
	c.halt()
	m.logf("stop client %s", c.name)
}

// finish adds a last entry to every topic, waits until every running
// client has it (a client must converge to its streams' newest entries,
// whatever happened before), then checks every client.
func (m *model) finish() {
	t := m.t
	last := make(map[string]string)
	for _, topic := range m.topics {
		if m.srv == nil {
			last[topic] = m.memPublish(topic)
		} else {
			if _, err := m.h.xadds(m.ctx(), m.rc, m.prefix+topic, topic, []string{"*"}, 0); err != nil {
				t.Fatal(err)
			}
			p := m.h.present(topic)
			last[topic] = p[len(p)-1].payload
		}
		m.logf("last entry of %s: %s %s", topic, m.h.lastID(topic), last[topic])
	}
	// Slow clients read at full speed from now on: what is checked is that
	// they converge, not how fast a throttled reader gets there.
	for _, c := range m.live {
		c.unthrottle()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range m.live {
		for _, topic := range c.topics {
			if !c.waitPayload(time.Until(deadline), topic, last[topic]) {
				t.Errorf("seed %d: client %s never received the last entry %s of %s\n\t%s", m.seed, c.name, short(last[topic]), topic, c.describe())
			}
		}
	}
	events, gaps, streams := 0, 0, 0
	for _, c := range m.clients {
		c.halt()
		events += len(c.snapshot())
		gaps += gapsOf(c)
		streams += c.opened()
		for _, v := range checkClient(m.h, c) {
			t.Errorf("seed %d: %s\n\t%s", m.seed, v, c.describe())
		}
	}
	t.Logf("seed %d: %d clients, %d streams, %d events (%d sse-gap) in %v", m.seed, len(m.clients), streams, events, gaps, time.Since(m.began).Round(time.Millisecond))
}

// startMemNode starts a node with a new embedded broker, as cmd/ssenode
// does without SSE_REDIS_URL.
func (m *model) startMemNode(name string) *mNode {
	t := m.t
	mem, err := pubsub.NewMemory(pubsub.MemoryConfig{MaxLen: m.memLen, MaxAge: m.maxAge})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", name)
	// The model's clients parse like EventSource (an id-only block sets the
	// last event ID and dispatches nothing), so they get the position
	// announcement, as startNode's do: without it a stream cut before its
	// first event comes back live (README, "Position announcement").
	n, err := node.New(node.Config{Logger: log, Retry: 50 * time.Millisecond, SocketSendBuffer: m.sndBuf, ClientBufferBytes: m.cliBuf, AnnouncePosition: true,
		Window: replay.Config{RingSize: m.ring, PageSize: m.page, MaxAge: m.maxAge}}, mem)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: time.Minute}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	m.mu.Lock()
	m.mem = mem
	m.mu.Unlock()
	var once sync.Once
	return &mNode{name: name, addr: ln.Addr().String(), end: func(crash bool) {
		once.Do(func() {
			if !crash {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := n.Drain(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("%s: drain: %v", name, err)
				}
				cancel()
			}
			_ = srv.Close()
			<-served
			_ = n.Close()
			if !pollUntil(10*time.Second, 5*time.Millisecond, nil, func() bool { return n.Connections() == 0 }) {
				t.Errorf("%s: %d streams open 10s after close", name, n.Connections())
			}
			_ = mem.Close()
		})
	}}
}
