package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
)

// hostRedis runs redis-server (apt) on a free loopback port with args,
// killed at cleanup, and returns its address once it answers PING.
func hostRedis(t *testing.T, args ...string) string {
	t.Helper()
	port := strconv.Itoa(e2eFreePorts(t, 1)[0])
	return runRedis(t, port, append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}, args...)...)
}

// hostSentinel runs a Sentinel watching the master at addr as "m1".
func hostSentinel(t *testing.T, master string) string {
	t.Helper()
	port := strconv.Itoa(e2eFreePorts(t, 1)[0])
	host, mport, _ := strings.Cut(master, ":")
	// A sentinel rewrites its config file: it needs one of its own.
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	lines := "port " + port + "\nbind 127.0.0.1\nsentinel monitor m1 " + host + " " + mport + " 1\n"
	if err := os.WriteFile(conf, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	return runRedis(t, port, conf, "--sentinel")
}

func runRedis(t *testing.T, port string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (apt-get install redis-server): %v", err)
	}
	cmd := exec.Command("redis-server", args...)
	var out lockedBuffer
	out.mu, out.b = new(sync.Mutex), new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + port
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			out.mu.Lock()
			defer out.mu.Unlock()
			t.Fatalf("redis-server %v not answering: %s", args, out.b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr
}

// TestMembersRedis runs the membership on a single Redis, through
// Sentinel and on a Redis Cluster: two nodes see each other, a node that
// closes leaves at once, and one that stops refreshing without a word
// (its Redis connection gone, as after SIGKILL) leaves after its TTL, its
// ID cleaned from the set.
func TestMembersRedis(t *testing.T) {
	topologies := []struct {
		name string
		cfg  func(t *testing.T) pubsub.RedisConfig
	}{
		{"single", func(t *testing.T) pubsub.RedisConfig {
			return pubsub.RedisConfig{URL: redistest.Start(t).URL()}
		}},
		{"sentinel", func(t *testing.T) pubsub.RedisConfig {
			return pubsub.RedisConfig{Addrs: []string{hostSentinel(t, hostRedis(t))}, MasterName: "m1"}
		}},
		{"cluster", func(t *testing.T) pubsub.RedisConfig {
			addr := hostRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+strconv.Itoa(e2eFreePorts(t, 1)[0])+".conf")
			c := redis.NewClient(&redis.Options{Addr: addr})
			defer c.Close()
			if err := c.Do(context.Background(), "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(c.ClusterInfo(context.Background()).Val(), "cluster_state:ok") {
				if time.Now().After(deadline) {
					t.Fatal("one-node Redis Cluster not ok after 10s")
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Two seeds make the broker a Cluster client; one server holds
			// every slot, but CROSSSLOT is checked all the same.
			return pubsub.RedisConfig{Addrs: []string{addr, addr}}
		}},
	}
	for _, tt := range topologies {
		t.Run(tt.name, func(t *testing.T) {
			rc := tt.cfg(t)
			rc.Prefix = redistest.Prefix(t)
			member := func(id string, streams int) (*pubsub.Members, *pubsub.Redis) {
				b, err := pubsub.NewRedis(rc)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				m, err := pubsub.NewRedisMembers(b, pubsub.MembersConfig{
					ID: id, Addr: id + ":8080", Refresh: 100 * time.Millisecond, TTL: 500 * time.Millisecond,
					Status: func(context.Context) pubsub.Member { return pubsub.Member{Streams: streams, Ready: true} },
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				if err := m.Start(); err != nil {
					t.Fatalf("%s: Start: %v", id, err)
				}
				return m, b
			}
			ids := func(m *pubsub.Members) string {
				l, err := m.List(context.Background())
				if err != nil {
					t.Fatalf("List: %v", err)
				}
				var out []string
				for _, x := range l {
					out = append(out, fmt.Sprintf("%s/%d", x.ID, x.Streams))
				}
				return strings.Join(out, ",")
			}
			a, _ := member("a", 1)
			b, _ := member("b", 2)
			c, cb := member("c", 3)
			if got := ids(a); got != "a/1,b/2,c/3" {
				t.Fatalf("a lists %q, want a/1,b/2,c/3", got)
			}
			if v, _, err := b.View(); err != nil || len(v) == 0 {
				t.Errorf("b's view: %v, %v", v, err)
			}
			b.Close()
			if got := ids(a); got != "a/1,c/3" {
				t.Errorf("after b closed, a lists %q, want a/1,c/3", got)
			}
			// c dies: its connection goes, nothing removes its key.
			cb.Close()
			c.Close()
			if got := ids(a); got != "a/1,c/3" {
				t.Errorf("right after c died, a lists %q, want c still listed until its TTL", got)
			}
			died := time.Now()
			for ids(a) != "a/1" {
				if time.Since(died) > 2*time.Second {
					t.Fatalf("c still listed %v after it died (TTL 500ms): %q", time.Since(died), ids(a))
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("MEMBERS %s: c gone %v after it died (TTL 500ms)", tt.name, time.Since(died).Round(time.Millisecond))
			// A client of the test's own: the broker keeps go-redis to itself.
			uo := &redis.UniversalOptions{Addrs: rc.Addrs, MasterName: rc.MasterName}
			if rc.URL != "" {
				opt, err := redis.ParseURL(rc.URL)
				if err != nil {
					t.Fatal(err)
				}
				uo.Addrs = []string{opt.Addr}
			}
			raw := redis.NewUniversalClient(uo)
			defer raw.Close()
			set, err := raw.SMembers(context.Background(), "{"+rc.Prefix+"members}:ids").Result()
			if err != nil || slices.Contains(set, "c") {
				t.Errorf("member IDs in Redis: %v, %v; want c cleaned after its key expired", set, err)
			}
		})
	}
}
