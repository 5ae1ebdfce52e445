package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
)

// topoRate is the publish period per topic: 50 events/s.
const topoRate = 20 * time.Millisecond

// checkExactlyOnce checks that the client got every entry of key that is
// in the stream now (after from) exactly once, in order. IDs the client
// got that the stream no longer holds (acknowledged by a master that died
// before its replica had them) are returned, not failed: they are the
// failover's loss, not the node's.
func checkExactlyOnce(t testing.TB, c redis.Cmdable, key string, got []string) (lostInRedis int) {
	t.Helper()
	want := streamIDs(t, c, key, "")
	in := make(map[string]bool, len(want))
	for _, id := range want {
		in[id] = true
	}
	var kept []string
	for _, id := range got {
		if in[id] {
			kept = append(kept, id)
		} else {
			lostInRedis++
		}
	}
	if err := checkSequence(kept, want); err != nil {
		t.Errorf("%s: client vs XRANGE (%d got, %d in stream): %v", key, len(got), len(want), err)
	}
	return lostInRedis
}

// TestTopologyCluster runs nodes against a real Redis Cluster (3 masters,
// 3 replicas) given ONE seed address: the mode comes from the server;
// delivery and a cross-slot multi-topic stream, resume on another node,
// XADD-to-client latency, then kill -9 of a master under load.
func TestTopologyCluster(t *testing.T) {
	rc := startRedisCluster(t)
	prefix := redistest.Prefix(t)
	byMaster := rc.topicsOnMasters(t, prefix, 2)
	var masters, topics []string
	for m, ts := range byMaster {
		masters = append(masters, m)
		topics = append(topics, ts...)
	}
	// The seed is a replica: the mode and the masters come from it.
	var seed string
	for _, a := range rc.addrs {
		if !strings.Contains(strings.Join(masters, ","), a) {
			seed = a
			break
		}
	}
	oneSeed := func(c *pubsub.RedisConfig) { c.Addrs = []string{seed} }
	a := topoNode(t, "a", prefix, oneSeed)
	b := topoNode(t, "b", prefix, oneSeed)
	if got := a.broker.Mode(); got != "cluster" {
		t.Fatalf("mode from one seed %s = %q, want cluster", seed, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	n, err := a.broker.Shards(ctx)
	cancel()
	if err != nil || n != 3 {
		t.Fatalf("shards = %d, %v; want 3", n, err)
	}

	t.Run("delivery, cross-slot and resume across nodes", func(t *testing.T) {
		arr := newArrivals()
		single := make(map[string]*sseClient)
		for _, topic := range topics {
			single[topic] = startClient(t, always(a.addr), clientOpts{onEvent: arr.hook(topic)}, topic)
		}
		// All six topics (three masters, six slots) in one stream; it moves
		// to b when a stream ends.
		multi := startClient(t, firstThen(a.addr, b.addr), clientOpts{}, topics...)
		pub := startRatePublisher(t, rc.client, prefix, topics, topoRate)
		time.Sleep(3 * time.Second)
		pub.halt()
		for _, topic := range topics {
			if pub.count(topic) == 0 {
				t.Fatalf("nothing published to %s", topic)
			}
			ids := streamIDs(t, rc.client, prefix+topic, "")
			single[topic].waitLast(t, ids[len(ids)-1], catchUp)
			got, _, _ := single[topic].snapshot()
			if err := checkSequence(got, ids); err != nil {
				t.Errorf("%s (master %s): %v", topic, rc.masterOf(t, prefix+topic), err)
			}
		}
		p99, count := arr.percentile(0.99)
		p50, _ := arr.percentile(0.50)
		t.Logf("Cluster, one seed: XADD-to-client latency over %d events at 50/s per topic on %d topics: p50 %v, p99 %v", count, len(topics), p50, p99)
		if p99 > 15*time.Millisecond {
			t.Errorf("p99 %v, want <= 15ms", p99)
		}
		// The multi-topic stream resumes on b with its composite ID and
		// then sees a second burst.
		mid := multi.last()
		if strings.Count(mid, ",") != len(topics)-1 {
			t.Fatalf("multi-topic last ID %q is not a %d-part position", mid, len(topics))
		}
		a.kill(t)
		pub = startRatePublisher(t, rc.client, prefix, topics, topoRate)
		time.Sleep(time.Second)
		pub.halt()
		var last []string
		for _, topic := range topics {
			ids := streamIDs(t, rc.client, prefix+topic, "")
			last = append(last, ids[len(ids)-1])
		}
		multi.waitLast(t, strings.Join(last, ","), catchUp)
		if multi.connections() < 2 {
			t.Fatalf("multi-topic client opened %d streams, want a resume on b", multi.connections())
		}
		ids, _, gaps := multi.snapshot()
		if len(gaps) > 0 {
			t.Errorf("gaps on resume: %v", gaps)
		}
		total := 0
		for _, topic := range topics {
			total += len(streamIDs(t, rc.client, prefix+topic, ""))
		}
		seen := make(map[string]bool)
		for _, id := range ids {
			if seen[id] {
				t.Errorf("multi-topic duplicate %s", id)
			}
			seen[id] = true
		}
		if len(ids) != total {
			t.Errorf("multi-topic client got %d events, streams hold %d", len(ids), total)
		}
	})

	t.Run("kill -9 of a master under 50 ev/s per topic", func(t *testing.T) {
		c := topoNode(t, "c", prefix+"k:", oneSeed)
		kp := prefix + "k:"
		byMaster := rc.topicsOnMasters(t, kp, 2)
		victim := ""
		for m := range byMaster {
			if m != seed {
				victim = m
				break
			}
		}
		var all []string
		for _, ts := range byMaster {
			all = append(all, ts...)
		}
		arr := newArrivals()
		clients := make(map[string]*sseClient)
		for _, topic := range all {
			clients[topic] = startClient(t, always(c.addr), clientOpts{onEvent: arr.hook(topic)}, topic)
		}
		pub := startRatePublisher(t, rc.client, kp, all, topoRate)
		time.Sleep(2 * time.Second)
		t0 := time.Now()
		rc.box.kill9(t, victim, "")
		// Promotion: the victim's topics have another master in the map.
		var promoted time.Time
		if !pollUntil(30*time.Second, 50*time.Millisecond, nil, func() bool {
			rc.client.ReloadState(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			slots, err := rc.client.ClusterSlots(ctx).Result()
			if err != nil {
				return false
			}
			slot := redisKeySlotOwner(slots, rc, kp+byMaster[victim][0])
			if slot != "" && slot != victim {
				promoted = time.Now()
				return true
			}
			return false
		}) {
			t.Fatalf("no replica promoted within 30s of killing %s", victim)
		}
		t.Logf("master %s killed; replica promoted after %v", victim, promoted.Sub(t0))
		time.Sleep(6 * time.Second)
		pub.halt()
		end := time.Now()
		for m, ts := range byMaster {
			for _, topic := range ts {
				ids := streamIDs(t, rc.client, kp+topic, "")
				clients[topic].waitLast(t, ids[len(ids)-1], catchUp)
				got, _, _ := clients[topic].snapshot()
				lost := checkExactlyOnce(t, rc.client, kp+topic, got)
				if m == victim {
					back := arr.firstAfter(topic, promoted)
					if back.IsZero() || back.Sub(promoted) > 5*time.Second {
						t.Errorf("%s (killed master): first delivery %v after promotion, want <= 5s", topic, back.Sub(promoted))
					}
					t.Logf("%s (killed master): delivering again %v after promotion; %d entries acknowledged by the dead master are not on the new one", topic, back.Sub(promoted).Round(time.Millisecond), lost)
					continue
				}
				if s := arr.maxSilence(topic, t0, end); s > 2*time.Second {
					t.Errorf("%s (healthy master %s): silent %v, want <= 2s", topic, m, s)
				} else {
					t.Logf("%s (healthy master): longest silence %v", topic, s.Round(time.Millisecond))
				}
			}
		}
	})
}

// redisKeySlotOwner returns the master of key's slot in slots.
func redisKeySlotOwner(slots []redis.ClusterSlot, rc *redisCluster, key string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	slot, err := rc.client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return ""
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			return s.Nodes[0].Addr
		}
	}
	return ""
}
