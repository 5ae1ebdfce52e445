package deploy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

type composeFile struct {
	Services map[string]map[string]any
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	docs := yamlDocs(t, "../docker-compose.yml")
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml: %d documents, want 1", len(docs))
	}
	var c composeFile
	c.Services = map[string]map[string]any{}
	for name, s := range dict(docs[0], "services") {
		c.Services[name], _ = s.(map[string]any)
	}
	return c
}

// nodeServices are the compose services running ssenode, sorted.
func (c composeFile) nodeServices() []string {
	var names []string
	for name, s := range c.Services {
		if strings.HasPrefix(str(s, "image"), "ssecluster/ssenode") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// words returns a compose command or healthcheck test as a list of words.
func words(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.Fields(v)
	case []any:
		var w []string
		for _, x := range v {
			w = append(w, fmt.Sprint(x))
		}
		return w
	}
	return nil
}

// mounts returns a service's bind mounts, container path -> host path.
func mounts(s map[string]any) map[string]string {
	m := map[string]string{}
	for _, v := range list(s, "volumes") {
		parts := strings.Split(fmt.Sprint(v), ":")
		if len(parts) >= 2 {
			m[parts[1]] = parts[0]
		}
	}
	return m
}

// publishes reports whether a service publishes container port p on the host.
func publishes(s map[string]any, p string) bool {
	for _, v := range list(s, "ports") {
		if strings.HasSuffix(fmt.Sprint(v), ":"+p) {
			return true
		}
	}
	return false
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	var names []string
	for name := range c.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	if want := []string{"lb", "nginx", "node1", "node2", "node3", "redis"}; !slices.Equal(names, want) {
		t.Errorf("services %v, want %v", names, want)
	}
	for name, s := range c.Services {
		if img := str(s, "image"); !slices.Contains(localImages, img) {
			t.Errorf("%s: image %q is not one of the local images %v", name, img, localImages)
		}
		if _, ok := s["build"]; ok {
			t.Errorf("%s: build: the node image comes from make image", name)
		}
		if p := str(s, "pull_policy"); p != "never" {
			t.Errorf("%s: pull_policy %q, want never (no registry)", name, p)
		}
	}

	redis := c.Services["redis"]
	if cmd := strings.Join(words(redis["command"]), " "); !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("redis command %q lacks --appendonly yes", cmd)
	}
	if hc := words(get(redis, "healthcheck", "test")); !slices.Contains(hc, "redis-cli") || !slices.Contains(hc, "ping") {
		t.Errorf("redis healthcheck %v, want redis-cli ping", hc)
	}
	if _, ok := mounts(redis)["/data"]; !ok {
		t.Error("redis: no volume on /data: the append-only file would die with the container")
	}

	nodes := c.nodeServices()
	if len(nodes) != 3 {
		t.Fatalf("node services %v, want 3", nodes)
	}
	for _, name := range nodes {
		s := c.Services[name]
		env := stringMap(dict(s, "environment"))
		checkEnv(t, name, env)
		if got := env["SSE_REDIS_URL"]; got != "redis://redis:6379" {
			t.Errorf("%s: SSE_REDIS_URL=%q, want redis://redis:6379", name, got)
		}
		if got := env["SSE_ADMIN_LISTEN"]; got != ":9090" {
			t.Errorf("%s: SSE_ADMIN_LISTEN=%q, want :9090 (HAProxy checks /readyz there)", name, got)
		}
		if got := env["SSE_LOG_FORMAT"]; got != "text" {
			t.Errorf("%s: SSE_LOG_FORMAT=%q, want text", name, got)
		}
		if get(s, "depends_on", "redis") == nil {
			t.Errorf("%s: does not depend on redis", name)
		}
		if s["healthcheck"] != nil {
			t.Errorf("%s: healthcheck in a scratch image: no shell or curl to run it", name)
		}
		shutdown := envDuration(t, env, "SSE_SHUTDOWN_TIMEOUT", defaultShutdownTimeout)
		grace, err := time.ParseDuration(str(s, "stop_grace_period"))
		if err != nil || grace <= shutdown {
			t.Errorf("%s: stop_grace_period %q must exceed SSE_SHUTDOWN_TIMEOUT %v, or compose kills draining nodes",
				name, str(s, "stop_grace_period"), shutdown)
		}
	}

	lb := c.Services["lb"]
	if src := mounts(lb)["/usr/local/etc/haproxy/haproxy.cfg"]; src != "./deploy/haproxy.cfg" {
		t.Errorf("lb mounts %q at haproxy.cfg, want ./deploy/haproxy.cfg", src)
	}
	if !publishes(lb, "8080") {
		t.Error("lb does not publish port 8080")
	}
	nginx := c.Services["nginx"]
	if p := words(nginx["profiles"]); !slices.Equal(p, []string{"nginx"}) {
		t.Errorf("nginx profiles %v, want [nginx]", p)
	}
	if src := mounts(nginx)["/etc/nginx/nginx.conf"]; src != "./deploy/nginx.conf" {
		t.Errorf("nginx mounts %q at nginx.conf, want ./deploy/nginx.conf", src)
	}
	if !publishes(nginx, "80") {
		t.Error("nginx does not publish port 80")
	}
	for _, lbName := range []string{"lb", "nginx"} {
		for _, n := range nodes {
			if !slices.Contains(words(c.Services[lbName]["depends_on"]), n) {
				t.Errorf("%s does not depend on %s", lbName, n)
			}
		}
	}
}

// heartbeat is the longest SSE_HEARTBEAT among the compose nodes.
func heartbeat(t *testing.T) time.Duration {
	t.Helper()
	c := loadCompose(t)
	var hb time.Duration
	for _, n := range c.nodeServices() {
		hb = max(hb, envDuration(t, stringMap(dict(c.Services[n], "environment")), "SSE_HEARTBEAT", defaultHeartbeat))
	}
	return hb
}
