package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// haproxySections parses haproxy.cfg into "keyword name" -> directive lines.
func haproxySections(t *testing.T) map[string][]string {
	t.Helper()
	sections := map[string][]string{}
	var cur string
	for _, line := range strings.Split(string(readFile(t, "haproxy.cfg")), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			cur = strings.Join(strings.Fields(line), " ")
			sections[cur] = nil
			continue
		}
		sections[cur] = append(sections[cur], strings.Join(strings.Fields(line), " "))
	}
	return sections
}

// directive returns the arguments of the last line starting with prefix.
func directive(lines []string, prefix string) (string, bool) {
	for _, l := range slices.Backward(lines) {
		if rest, ok := strings.CutPrefix(l, prefix+" "); ok {
			return rest, true
		}
	}
	return "", false
}

func TestHAProxyConfig(t *testing.T) {
	s := haproxySections(t)
	defaults, backend := s["defaults"], s["backend sse_nodes"]
	if backend == nil {
		t.Fatal("no backend sse_nodes")
	}
	if v, _ := directive(defaults, "mode"); v != "http" {
		t.Errorf("defaults mode %q, want http", v)
	}
	hb := heartbeat(t)
	for _, name := range []string{"client", "server"} {
		v, _ := directive(defaults, "timeout "+name)
		d, err := time.ParseDuration(v)
		if err != nil || d < 2*hb {
			t.Errorf("timeout %s %q: want a duration of at least twice the heartbeat (%v), or idle streams are cut", name, v, hb)
		}
	}
	// Without it HAProxy sends small chunks with MSG_MORE and each event
	// waits ~200 ms in the kernel (integration/proxy_latency_test.go).
	if !slices.Contains(defaults, "option http-no-delay") {
		t.Error("defaults lack option http-no-delay: every event would be delayed ~200 ms")
	}
	if v, _ := directive(defaults, "timeout tunnel"); v == "" {
		t.Error("no timeout tunnel")
	}
	for _, l := range append(defaults, backend...) {
		for _, bad := range []string{"option http-server-close", "option httpclose", "option http-buffer-request", "no option http-no-delay", "cookie ", "stick ", "stick-table ", "balance source", "compression "} {
			if strings.HasPrefix(l, bad) {
				t.Errorf("%q: SSE through HAProxy wants keep-alive, no stickiness, no compression, no request buffering and no send delay", l)
			}
		}
	}
	if !slices.ContainsFunc(defaults, func(l string) bool { return strings.HasPrefix(l, "option redispatch") }) {
		t.Error("no option redispatch: a retried request would go back to the failed node")
	}
	if v, _ := directive(defaults, "retries"); checkCount(v) != nil {
		t.Errorf("retries %q, want a positive count", v)
	}
	if v, _ := directive(backend, "balance"); v != "leastconn" {
		t.Errorf("balance %q, want leastconn (rebalanced streams must reach the node with room)", v)
	}
	if v, _ := directive(backend, "option httpchk"); v != "GET /readyz" {
		t.Errorf("option httpchk %q, want GET /readyz", v)
	}
	ds, _ := directive(backend, "default-server")
	for _, want := range []string{"check", "port 9090", "init-addr last,libc,none"} {
		if !strings.Contains(ds, want) {
			t.Errorf("default-server %q lacks %q", ds, want)
		}
	}
	var servers []string
	for _, l := range backend {
		if f := strings.Fields(l); f[0] == "server" {
			if f[2] != f[1]+":8080" {
				t.Errorf("%q: want the node's compose name and port 8080", l)
			}
			servers = append(servers, f[1])
		}
	}
	if nodes := loadCompose(t).nodeServices(); !slices.Equal(servers, nodes) {
		t.Errorf("haproxy servers %v, compose nodes %v", servers, nodes)
	}
}

// TestHAProxyCheck runs haproxy -c. Node names do not resolve outside
// compose; init-addr ...,none makes that a warning, the only one allowed.
func TestHAProxyCheck(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("haproxy is not on PATH, so haproxy.cfg cannot be checked: install it (apt-get install haproxy)")
	}
	out, err := exec.Command(bin, "-c", "-f", "haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f haproxy.cfg: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "[ALERT]") ||
			(strings.Contains(line, "[WARNING]") && !strings.Contains(line, "could not resolve address")) {
			t.Errorf("haproxy -c: %s", line)
		}
	}
}

// nginx.conf.

var (
	nginxUpstreamRE = regexp.MustCompile(`(?s)upstream\s+sse_nodes\s*\{(.*?)\}`)
	nginxServerRE   = regexp.MustCompile(`(?m)^\s*server\s+([^\s;]+)`)
	nginxEventsRE   = regexp.MustCompile(`(?s)location\s+/events\s*\{(.*?)\n\s*\}`)
	nginxNodeRE     = regexp.MustCompile(`\b(node\d+):8080\b`)
)

func TestNginxConfig(t *testing.T) {
	conf := string(readFile(t, "nginx.conf"))
	up := nginxUpstreamRE.FindStringSubmatch(conf)
	if up == nil {
		t.Fatal("no upstream sse_nodes")
	}
	var servers []string
	for _, m := range nginxServerRE.FindAllStringSubmatch(up[1], -1) {
		host, port, _ := strings.Cut(m[1], ":")
		if port != "8080" {
			t.Errorf("upstream server %s: want port 8080", m[1])
		}
		servers = append(servers, host)
	}
	if nodes := loadCompose(t).nodeServices(); !slices.Equal(servers, nodes) {
		t.Errorf("nginx upstream servers %v, compose nodes %v", servers, nodes)
	}
	if !strings.Contains(up[1], "least_conn;") || !strings.Contains(up[1], "zone ") {
		t.Error("upstream sse_nodes: want least_conn with a shared zone (rebalanced streams must reach the node with room)")
	}
	loc := nginxEventsRE.FindStringSubmatch(conf)
	if loc == nil {
		t.Fatal("no location /events")
	}
	for _, want := range []string{
		"proxy_pass http://sse_nodes;",
		"proxy_http_version 1.1;",
		`proxy_set_header Connection "";`,
		"proxy_set_header Last-Event-ID $http_last_event_id;",
		"proxy_buffering off;",
		"proxy_cache off;",
		"gzip off;",
		"tcp_nodelay on;",
	} {
		if !strings.Contains(loc[1], want) {
			t.Errorf("location /events lacks %q", want)
		}
	}
	m := regexp.MustCompile(`proxy_read_timeout\s+(\S+);`).FindStringSubmatch(loc[1])
	if m == nil {
		t.Fatal("location /events: no proxy_read_timeout (nginx's default 60s is too close to the heartbeat)")
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d < 2*heartbeat(t) {
		t.Errorf("proxy_read_timeout %s: want at least twice the heartbeat", m[1])
	}
}

// TestNginxCheck runs nginx -t on a copy of nginx.conf with three
// substitutions, everything else as written:
//   - node1..3 become 127.0.0.1: open-source nginx resolves upstream names
//     when it loads the configuration, and they exist only inside compose;
//   - `listen 80` becomes a Unix socket in a temporary directory: nginx -t
//     binds its listeners, and port 80 needs root and may be taken;
//   - the pid file moves to that directory.
func TestNginxCheck(t *testing.T) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatal("nginx is not on PATH, so nginx.conf cannot be checked: install it (apt-get install nginx-light)")
	}
	dir := t.TempDir()
	conf := nginxNodeRE.ReplaceAllString(string(readFile(t, "nginx.conf")), "127.0.0.1:8080")
	conf = regexp.MustCompile(`(?m)^pid .*;$`).ReplaceAllLiteralString(conf, "pid "+filepath.Join(dir, "nginx.pid")+";")
	listen := regexp.MustCompile(`(?m)^(\s*)listen 80;$`)
	if !listen.MatchString(conf) {
		t.Fatal("nginx.conf: no `listen 80;` line (compose publishes port 80)")
	}
	conf = listen.ReplaceAllString(conf, "${1}listen unix:"+filepath.Join(dir, "nginx.sock")+";")
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-t", "-q", "-e", "stderr", "-p", dir, "-c", path).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// The test process's own nofile limit, not the configuration's.
		if line != "" && !strings.Contains(line, "exceed open file resource limit") {
			t.Errorf("nginx -t: %s", line)
		}
	}
}
