package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	promStringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchersRE = regexp.MustCompile(`\{[^{}]*\}`)
	promRangeRE    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGroupingRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promVarRE      = regexp.MustCompile(`\$\{?\w+\}?`)
	promTokenRE    = regexp.MustCompile(`\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*|[A-Za-z_:][A-Za-z0-9_:]*`)

	promKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "inf", "nan", "Inf", "NaN"}
	promFuncs = []string{"sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "rate", "irate",
		"increase", "delta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs", "absent",
		"avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "time", "vector", "scalar",
		"label_replace", "round", "changes", "resets"}
)

// promMetrics returns the metric names an expression selects, or an error
// for a function it does not know (likely a typo).
func promMetrics(expr string) ([]string, error) {
	e := promStringRE.ReplaceAllString(expr, `""`)
	e = promMatchersRE.ReplaceAllString(e, " ")
	e = promRangeRE.ReplaceAllString(e, " ")
	e = promGroupingRE.ReplaceAllString(e, " ")
	e = promVarRE.ReplaceAllString(e, " ")
	var names []string
	for _, loc := range promTokenRE.FindAllStringIndex(e, -1) {
		tok := e[loc[0]:loc[1]]
		switch {
		case tok[0] >= '0' && tok[0] <= '9', slices.Contains(promKeywords, tok):
		case strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "("):
			if !slices.Contains(promFuncs, tok) {
				return nil, fmt.Errorf("unknown function %s", tok)
			}
		default:
			names = append(names, tok)
		}
	}
	return names, nil
}

// knownMetric reports whether name is a series the nodes export, and which
// sse_ metric it belongs to ("" for runtime and Prometheus' own).
func knownMetric(name string) (base string, ok bool) {
	if name == "up" || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
		return "", true
	}
	if kind, ok := sseMetrics[name]; ok && kind != histogram {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		b, ok := strings.CutSuffix(name, suffix)
		if kind, exists := sseMetrics[b]; ok && exists && kind == histogram {
			return b, true
		}
	}
	return "", false
}

// checkExprs checks every expression's metric names and returns the sse_
// metrics they use.
func checkExprs(t *testing.T, where string, exprs map[string]string) map[string]bool {
	t.Helper()
	used := map[string]bool{}
	for what, expr := range exprs {
		if strings.Count(expr, "(") != strings.Count(expr, ")") {
			t.Errorf("%s %s: unbalanced parentheses in %q", where, what, expr)
		}
		names, err := promMetrics(expr)
		if err != nil {
			t.Errorf("%s %s: %v in %q", where, what, err, expr)
		}
		if len(names) == 0 {
			t.Errorf("%s %s: no metric in %q", where, what, expr)
		}
		for _, n := range names {
			base, ok := knownMetric(n)
			if !ok {
				t.Errorf("%s %s: %s is not a metric ssenode exports", where, what, n)
			}
			if base != "" {
				used[base] = true
			}
		}
	}
	return used
}

func TestPromMetrics(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="ssenode"} == 0`, []string{"up"}},
		{`sum by (instance, le) (rate(sse_queue_depth_bucket{instance=~"$instance"}[$__rate_interval]))`, []string{"sse_queue_depth_bucket"}},
		{`histogram_quantile(0.99, sum(rate(a_bucket[5m])) by (le)) > 1e3 and b offset 5m`, []string{"a_bucket", "b"}},
		{`x / on(instance) group_left y{l="a(b"}`, []string{"x", "y"}},
	} {
		got, err := promMetrics(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("promMetrics(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
		}
	}
	if _, err := promMetrics(`rat(sse_connections[5m])`); err == nil {
		t.Error("promMetrics accepted the unknown function rat")
	}
	for name, want := range map[string]bool{
		"sse_connections": true, "sse_connections_bucket": false, "sse_queue_depth": false,
		"sse_queue_depth_bucket": true, "sse_connection": false, "go_goroutines": true,
	} {
		if _, ok := knownMetric(name); ok != want {
			t.Errorf("knownMetric(%s) = %v, want %v", name, ok, want)
		}
	}
}

// Prometheus alert rules.

func TestAlerts(t *testing.T) {
	docs := yamlDocs(t, "prometheus/alerts.yml")
	if len(docs) != 1 {
		t.Fatalf("%d documents, want 1", len(docs))
	}
	exprs := map[string]string{}
	for _, g := range list(docs[0], "groups") {
		if str(g, "name") == "" {
			t.Error("group without a name")
		}
		for _, r := range list(g, "rules") {
			name := str(r, "alert")
			if name == "" {
				t.Errorf("rule without alert name: %v", r)
				continue
			}
			if _, dup := exprs[name]; dup {
				t.Errorf("alert %s defined twice", name)
			}
			exprs[name] = str(r, "expr")
			if f := str(r, "for"); f != "" {
				if _, err := time.ParseDuration(f); err != nil {
					t.Errorf("alert %s: for %q: %v", name, f, err)
				}
			}
			if sev := str(r, "labels", "severity"); !slices.Contains([]string{"critical", "warning", "info"}, sev) {
				t.Errorf("alert %s: severity %q", name, sev)
			}
			if str(r, "annotations", "summary") == "" {
				t.Errorf("alert %s: no summary", name)
			}
		}
	}
	used := checkExprs(t, "alert", exprs)
	// The brief's list: node down (up), readyz failing, slow clients, read
	// lag, broker errors, dropped frames.
	for _, m := range []string{"sse_broker_up", "sse_draining", "sse_slow_client_disconnects_total",
		"sse_broker_read_lag_seconds", "sse_broker_errors_total", "sse_frames_dropped_total"} {
		if !used[m] {
			t.Errorf("no alert uses %s", m)
		}
	}
	if !slices.ContainsFunc(slices.Collect(maps.Values(exprs)), func(e string) bool { return strings.Contains(e, "up{") }) {
		t.Error("no node-down alert on up{...}")
	}
}

// Grafana dashboard.

type grafanaPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)

func TestDashboard(t *testing.T) {
	var d struct {
		UID        string         `json:"uid"`
		Title      string         `json:"title"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(bytes.NewReader(readFile(t, "grafana/dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	vars := map[string]bool{"__rate_interval": true, "__interval": true}
	exprs := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		// label_values(metric, label) is Grafana's, not PromQL: keep the metric.
		if m := labelValuesRE.FindStringSubmatch(str(v.Query, "query")); m != nil {
			exprs["variable "+v.Name] = m[1]
		}
	}
	ids := map[int]bool{}
	for i, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for _, q := range d.Panels[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", q.Title, p.Title)
			}
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = tg.Expr
			for _, v := range promVarRE.FindAllString(tg.Expr, -1) {
				if name := strings.Trim(v, "${}"); !vars[name] {
					t.Errorf("panel %q: variable %s is not defined", p.Title, v)
				}
			}
		}
	}
	used := checkExprs(t, "dashboard", exprs)
	for m := range sseMetrics {
		if !used[m] {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
	for _, want := range []string{"go_memstats_heap_inuse_bytes", "go_goroutines"} {
		if !slices.ContainsFunc(slices.Collect(maps.Values(exprs)), func(e string) bool { return strings.Contains(e, want) }) {
			t.Errorf("no dashboard panel shows %s", want)
		}
	}
}
