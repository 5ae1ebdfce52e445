package integration

// Helpers for the topology tests: a Redis Cluster (3 masters, 3 replicas)
// and a Sentinel group (1 master, 1 replica, 3 sentinels), each as several
// redis-server processes in one redis:7 container on the host network, so
// that the addresses the nodes announce are the loopback addresses the
// tests dial. Plus a publisher at a fixed rate per topic and a check of
// what clients received against XRANGE.

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tclog "github.com/testcontainers/testcontainers-go/log"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
)

// topoSettings are the Redis settings docs/redis.md asks for, as
// redis-server arguments: streams must not be evicted, and a Cluster keeps
// serving the slots it has while one is being failed over. (No delay
// before a replica's first sync either, so tests need not wait 5 s.)
const topoSettings = "--maxmemory-policy noeviction --appendonly yes --appendfsync everysec --save '' --repl-diskless-sync-delay 0"

// topoBox is one redis:7 container on the host network running the
// processes of a topology.
type topoBox struct {
	ctr *testcontainers.DockerContainer
}

// startBox runs script (sh) in a new host-network redis:7 container that
// the test terminates at cleanup. The script must start its servers in the
// background and then wait.
func startBox(t testing.TB, name, script string) *topoBox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctr, err := testcontainers.Run(ctx, redistest.Image,
		testcontainers.WithLogger(tclog.TestLogger(t)),
		testcontainers.WithName(fmt.Sprintf("sse-%s-%s", name, redistest.Prefix(t)[2:14])),
		testcontainers.WithEntrypoint("sh", "-c"),
		testcontainers.WithCmd(script),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) { hc.NetworkMode = "host" }),
	)
	if ctr != nil {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := ctr.Terminate(ctx); err != nil {
				t.Errorf("terminate %s: %v", name, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return &topoBox{ctr: ctr}
}

// exec runs cmd in the box and returns its output; a non-zero exit fails t.
func (b *topoBox) exec(t testing.TB, cmd ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code, r, err := b.ctr.Exec(ctx, cmd, tcexec.Multiplexed())
	var out []byte
	if r != nil {
		out, _ = io.ReadAll(r)
	}
	if err != nil || code != 0 {
		t.Fatalf("exec %q: code %d, err %v: %s", cmd, code, err, out)
	}
	return string(out)
}

// kill9 sends SIGKILL to the redis-server answering on addr.
func (b *topoBox) kill9(t testing.TB, addr, password string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Password: password, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatalf("info %s: %v", addr, err)
	}
	pid := infoField(info, "process_id")
	if pid == "" {
		t.Fatalf("no process_id from %s", addr)
	}
	b.exec(t, "sh", "-c", "kill -9 "+pid)
}

// infoField returns the value of field in an INFO reply.
func infoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// topoPorts returns n free loopback ports whose port+10000 (a Cluster bus)
// is free too.
func topoPorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		p := l.Addr().(*net.TCPAddr).Port
		if p+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		held = append(held, bus)
		out = append(out, p)
	}
	return out
}

// waitPing polls PING on addr until it answers (30s at most).
func waitPing(t testing.TB, addr, password string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Password: password, MaxRetries: -1})
	defer c.Close()
	if !pollUntil(30*time.Second, 50*time.Millisecond, nil, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	}) {
		t.Fatalf("%s does not answer PING", addr)
	}
}

// redisCluster is a Redis Cluster of 3 masters and 3 replicas.
type redisCluster struct {
	box    *topoBox
	addrs  []string // every node, masters first at creation
	client *redis.ClusterClient
}

// startRedisCluster starts the six servers and joins them with redis-cli
// --cluster create. A short cluster-node-timeout makes promotion take
// about two seconds.
func startRedisCluster(t testing.TB) *redisCluster {
	t.Helper()
	ports := topoPorts(t, 6)
	var script strings.Builder
	rc := &redisCluster{}
	for _, p := range ports {
		fmt.Fprintf(&script, "mkdir -p /tmp/%[1]d && redis-server --port %[1]d --bind 127.0.0.1 --dir /tmp/%[1]d --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 --cluster-require-full-coverage no --cluster-replica-validity-factor 0 %[2]s --daemonize yes --logfile /tmp/%[1]d/log && ", p, topoSettings)
		rc.addrs = append(rc.addrs, "127.0.0.1:"+strconv.Itoa(p))
	}
	script.WriteString("while true; do sleep 3600; done")
	rc.box = startBox(t, "cluster", script.String())
	for _, a := range rc.addrs {
		waitPing(t, a, "")
	}
	args := append([]string{"redis-cli", "--cluster", "create"}, rc.addrs...)
	rc.box.exec(t, append(args, "--cluster-replicas", "1", "--cluster-yes")...)
	// The publishers' client: it finds a promoted replica within half a
	// second, so that the nodes' own delay is what the tests see.
	rc.client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.addrs, MaxRetries: 3, MinRetryBackoff: 50 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond, ClusterStateReloadInterval: 500 * time.Millisecond})
	t.Cleanup(func() { rc.client.Close() })
	rc.waitHealthy(t)
	return rc
}

// waitHealthy waits until every live node says cluster_state:ok and the
// slot map has 3 masters each with a replica.
func (rc *redisCluster) waitHealthy(t testing.TB) {
	t.Helper()
	ok := pollUntil(60*time.Second, 100*time.Millisecond, nil, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		shards, err := rc.client.ClusterShards(ctx).Result()
		if err != nil {
			return false
		}
		masters := map[string]bool{}
		n := 0
		for _, s := range shards {
			if len(s.Slots) == 0 {
				continue
			}
			online := map[string]int{}
			for _, node := range s.Nodes {
				if node.Health == "online" {
					online[node.Role]++
					if node.Role == "master" {
						masters[net.JoinHostPort(node.IP, strconv.FormatInt(node.Port, 10))] = true
					}
				}
			}
			if online["master"] != 1 || online["replica"] < 1 {
				return false
			}
			for _, r := range s.Slots {
				n += int(r.End - r.Start + 1)
			}
		}
		if n != 16384 || len(masters) != 3 {
			return false
		}
		for a := range masters {
			c := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			info, err := c.ClusterInfo(ctx).Result()
			c.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("cluster %v not healthy within 60s", rc.addrs)
	}
}

// commandCalls sums INFO commandstats calls of cmd over the masters.
func (rc *redisCluster) commandCalls(t testing.TB, cmd string) int64 {
	t.Helper()
	var mu sync.Mutex
	var total int64
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := rc.client.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		v := infoField(info, "cmdstat_"+cmd)
		calls, _ := strconv.ParseInt(strings.TrimPrefix(strings.Split(v, ",")[0], "calls="), 10, 64)
		mu.Lock()
		total += calls
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatalf("commandstats: %v", err)
	}
	return total
}

// masterNow asks the cluster (CLUSTER SHARDS, not the client's cached map)
// for the master of key's slot; "" when it cannot tell.
func (rc *redisCluster) masterNow(key string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	slot, err := rc.client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return ""
	}
	shards, err := rc.client.ClusterShards(ctx).Result()
	if err != nil {
		return ""
	}
	for _, s := range shards {
		for _, r := range s.Slots {
			if r.Start <= slot && slot <= r.End {
				for _, node := range s.Nodes {
					if node.Role == "master" && node.Health == "online" {
						return net.JoinHostPort(node.IP, strconv.FormatInt(node.Port, 10))
					}
				}
			}
		}
	}
	return ""
}

// masterOf returns the address of the master that holds key now.
func (rc *redisCluster) masterOf(t testing.TB, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := rc.client.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return c.Options().Addr
}

// topicsOnMasters returns, for each of the 3 masters, n topics whose keys
// (prefix+topic) it holds: by master address.
func (rc *redisCluster) topicsOnMasters(t testing.TB, prefix string, n int) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for i := 0; ; i++ {
		topic := "t" + strconv.Itoa(i)
		m := rc.masterOf(t, prefix+topic)
		if len(out[m]) < n {
			out[m] = append(out[m], topic)
		}
		full := len(out) == 3
		for _, ts := range out {
			full = full && len(ts) == n
		}
		if full {
			return out
		}
		if i > 10000 {
			t.Fatalf("cannot spread topics over 3 masters: %v", out)
		}
	}
}

// ratePublisher XADDs to each of its topics every period through c, with
// the publish time (unix ns) as data, and keeps the IDs Redis acknowledged.
type ratePublisher struct {
	c      redis.Cmdable
	prefix string
	topics []string

	mu     sync.Mutex
	acked  map[string][]string
	ackAt  map[string][]time.Time
	errs   int
	cancel context.CancelFunc
	done   chan struct{}
}

func startRatePublisher(t testing.TB, c redis.Cmdable, prefix string, topics []string, period time.Duration) *ratePublisher {
	ctx, cancel := context.WithCancel(context.Background())
	p := &ratePublisher{c: c, prefix: prefix, topics: topics, acked: map[string][]string{}, ackAt: map[string][]time.Time{}, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	for _, topic := range topics {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(period)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
				// Short, so that a write stuck on a dead master gives way
				// to the next one, which may find the promoted replica.
				cctx, ccancel := context.WithTimeout(ctx, 500*time.Millisecond)
				id, err := c.XAdd(cctx, &redis.XAddArgs{Stream: prefix + topic, Values: []any{"data", strconv.FormatInt(time.Now().UnixNano(), 10)}}).Result()
				ccancel()
				p.mu.Lock()
				if err != nil {
					p.errs++
				} else {
					p.acked[topic] = append(p.acked[topic], id)
					p.ackAt[topic] = append(p.ackAt[topic], time.Now())
				}
				p.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
	t.Cleanup(p.halt)
	return p
}

func (p *ratePublisher) halt() {
	p.cancel()
	<-p.done
}

// firstAckAfter is when the first write to topic after t0 was acknowledged.
func (p *ratePublisher) firstAckAfter(topic string, t0 time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.ackAt[topic] {
		if at.After(t0) {
			return at
		}
	}
	return time.Time{}
}

func (p *ratePublisher) count(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked[topic])
}

// arrivals records, per topic, when each event reached a client and its
// latency from XADD (data is the publish time).
type arrivals struct {
	mu    sync.Mutex
	times map[string][]time.Time
	lat   []time.Duration
}

func newArrivals() *arrivals { return &arrivals{times: map[string][]time.Time{}} }

// hook returns an onEvent for a client of one topic.
func (a *arrivals) hook(topic string) func(event) {
	return func(e event) {
		now := time.Now()
		a.mu.Lock()
		defer a.mu.Unlock()
		a.times[topic] = append(a.times[topic], now)
		if ns, err := strconv.ParseInt(e.Data, 10, 64); err == nil {
			a.lat = append(a.lat, now.Sub(time.Unix(0, ns)))
		}
	}
}

// maxSilence is the longest time between two arrivals of topic in
// [from, to], counting the edges.
func (a *arrivals) maxSilence(topic string, from, to time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev := from
	var worst time.Duration
	for _, at := range a.times[topic] {
		if at.Before(from) || at.After(to) {
			continue
		}
		worst = max(worst, at.Sub(prev))
		prev = at
	}
	return max(worst, to.Sub(prev))
}

// firstAfter is the first arrival of topic after t0 (zero if none).
func (a *arrivals) firstAfter(topic string, t0 time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.times[topic] {
		if at.After(t0) {
			return at
		}
	}
	return time.Time{}
}

// percentile returns the q-th latency percentile (0..1) and the count.
func (a *arrivals) percentile(q float64) (time.Duration, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.lat) == 0 {
		return 0, 0
	}
	s := slices.Clone(a.lat)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))], len(s)
}

// streamIDs returns every ID of key with XRANGE through c.
func streamIDs(t testing.TB, c redis.Cmdable, key, after string) []string {
	t.Helper()
	var out []string
	start := "-"
	if after != "" {
		id, err := pubsub.ParseID(after)
		if err != nil {
			t.Fatal(err)
		}
		start = id.Next().String()
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		msgs, err := c.XRangeN(ctx, key, start, "+", 5000).Result()
		cancel()
		if err != nil {
			t.Fatalf("xrange %s: %v", key, err)
		}
		for _, m := range msgs {
			out = append(out, m.ID)
		}
		if len(msgs) < 5000 {
			return out
		}
		id, _ := pubsub.ParseID(msgs[len(msgs)-1].ID)
		start = id.Next().String()
	}
}

// topoNode starts an in-process node whose broker has cfg's connection
// settings (URL empty) and prefix.
func topoNode(t testing.TB, name, prefix string, set func(*pubsub.RedisConfig)) *clusterNode {
	t.Helper()
	return startNode(t, &redistest.Server{}, prefix, name, func(c *nodeConfig) {
		c.Redis.URL = ""
		set(&c.Redis)
	})
}

// redisSentinel is a Sentinel group: a master and a replica, both with
// requirepass, and three Sentinels with a requirepass of their own.
type redisSentinel struct {
	box                *topoBox
	master, replica    string
	sentinels          []string
	password, sentPass string
	name               string
}

// startRedisSentinel starts the group and waits until the replica is in
// sync and each Sentinel knows the two others.
func startRedisSentinel(t testing.TB) *redisSentinel {
	t.Helper()
	ports := topoPorts(t, 5)
	rs := &redisSentinel{password: "m-secret", sentPass: "s-secret", name: "ssemaster"}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	rs.master, rs.replica = addr(ports[0]), addr(ports[1])
	var script strings.Builder
	for i, p := range ports[:2] {
		fmt.Fprintf(&script, "mkdir -p /tmp/%[1]d && redis-server --port %[1]d --bind 127.0.0.1 --dir /tmp/%[1]d --requirepass %[2]s --masterauth %[2]s %[3]s --daemonize yes --logfile /tmp/%[1]d/log", p, rs.password, topoSettings)
		if i == 1 {
			fmt.Fprintf(&script, " --replicaof 127.0.0.1 %d", ports[0])
		}
		script.WriteString(" && ")
	}
	for _, p := range ports[2:] {
		rs.sentinels = append(rs.sentinels, addr(p))
		fmt.Fprintf(&script, "mkdir -p /tmp/%[1]d && printf 'port %[1]d\\nbind 127.0.0.1\\ndir /tmp/%[1]d\\nrequirepass %[2]s\\nsentinel sentinel-pass %[2]s\\nsentinel monitor %[3]s 127.0.0.1 %[4]d 2\\nsentinel auth-pass %[3]s %[5]s\\nsentinel down-after-milliseconds %[3]s 1000\\nsentinel failover-timeout %[3]s 5000\\ndaemonize yes\\nlogfile /tmp/%[1]d/log\\n' > /tmp/%[1]d/s.conf && redis-server /tmp/%[1]d/s.conf --sentinel && ",
			p, rs.sentPass, rs.name, ports[0], rs.password)
	}
	script.WriteString("while true; do sleep 3600; done")
	rs.box = startBox(t, "sentinel", script.String())
	waitPing(t, rs.master, rs.password)
	waitPing(t, rs.replica, rs.password)
	for _, s := range rs.sentinels {
		waitPing(t, s, rs.sentPass)
	}
	ok := pollUntil(60*time.Second, 100*time.Millisecond, nil, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// The replica has finished its first sync: promoting it before
		// that would lose everything.
		c := redis.NewClient(&redis.Options{Addr: rs.replica, Password: rs.password, MaxRetries: -1})
		info, err := c.Info(ctx, "replication").Result()
		c.Close()
		if err != nil || infoField(info, "master_link_status") != "up" {
			return false
		}
		for _, s := range rs.sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: s, Password: rs.sentPass, MaxRetries: -1})
			others, err := sc.Sentinels(ctx, rs.name).Result()
			replicas, err2 := sc.Replicas(ctx, rs.name).Result()
			sc.Close()
			if err != nil || err2 != nil || len(others) != 2 || len(replicas) != 1 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("sentinel group not ready within 60s")
	}
	return rs
}

// client is a failover client of the group, closed at cleanup.
func (rs *redisSentinel) client(t testing.TB) *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: rs.name, SentinelAddrs: rs.sentinels, SentinelPassword: rs.sentPass,
		Password: rs.password, MaxRetries: 10, MinRetryBackoff: 50 * time.Millisecond, MaxRetryBackoff: 500 * time.Millisecond,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// masterAddr asks the first Sentinel for the master's address.
func (rs *redisSentinel) masterAddr(t testing.TB) string {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: rs.sentinels[0], Password: rs.sentPass, MaxRetries: -1})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	hp, err := sc.GetMasterAddrByName(ctx, rs.name).Result()
	if err != nil || len(hp) != 2 {
		return ""
	}
	return net.JoinHostPort(hp[0], hp[1])
}

// failover runs SENTINEL FAILOVER on the first Sentinel.
func (rs *redisSentinel) failover(t testing.TB) {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: rs.sentinels[0], Password: rs.sentPass, MaxRetries: -1})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.Failover(ctx, rs.name).Err(); err != nil {
		t.Fatalf("sentinel failover: %v", err)
	}
}
