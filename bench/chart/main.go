// Command chart turns the sseload reports of a bench/run.sh run into the
// results files: one JSON document with every report, the machine and the
// exact commands; a markdown table of scenarios S1-S8 and M1-M4 against the
// issues' targets; and a PNG chart of node memory per stream and latency p99 against
// connections.
//
//	chart -manifest m.tsv -meta meta.txt -json r.json -md r.md -png r.png
//	chart -brief report.json   one summary line of one sseload report
//	chart -pass report.json    exit 0 when p99 <= 250 ms, nothing lost or duplicated
//
// The reports are read as plain JSON (cmd/sseload is a main package), so a
// field the load generator does not write reads as zero.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// passP99 is the S3 stop condition: a step fails above this p99.
const passP99 = 250.0

func main() {
	var (
		manifest = flag.String("manifest", "", "TSV written by bench/run.sh: scenario, label, report, node log, node start, exit code, command")
		meta     = flag.String("meta", "", "key=value lines: commit, machine, commands")
		jsonOut  = flag.String("json", "", "combined JSON output")
		mdOut    = flag.String("md", "", "markdown table output")
		pngOut   = flag.String("png", "", "PNG chart output")
		brief    = flag.String("brief", "", "print a one-line summary of this sseload report")
		pass     = flag.String("pass", "", "exit 1 unless this sseload report has p99 <= 250 ms and no loss; 2 when it passed but the publisher fell short of the rate")
	)
	flag.Parse()
	if err := run(*manifest, *meta, *jsonOut, *mdOut, *pngOut, *brief, *pass); err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
}

func run(manifest, meta, jsonOut, mdOut, pngOut, brief, pass string) error {
	switch {
	case brief != "":
		r, err := readReport(brief)
		if err != nil {
			return err
		}
		fmt.Println(briefLine(r))
		return nil
	case pass != "":
		r, err := readReport(pass)
		if err != nil {
			return err
		}
		if !stepPassed(r) {
			os.Exit(1)
		}
		if publisherBound(r) {
			os.Exit(2)
		}
		return nil
	}
	runs, err := readManifest(manifest)
	if err != nil {
		return err
	}
	m, err := readMeta(meta)
	if err != nil {
		return err
	}
	res := summarize(runs, m)
	if jsonOut != "" {
		b, err := json.MarshalIndent(res, "", " ")
		if err != nil {
			return fmt.Errorf("encode %s: %w", jsonOut, err)
		}
		if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if mdOut != "" {
		if err := os.WriteFile(mdOut, []byte(markdown(res)), 0o644); err != nil {
			return err
		}
	}
	if pngOut != "" {
		if err := chart(res, pngOut); err != nil {
			return fmt.Errorf("chart %s: %w", pngOut, err)
		}
	}
	return nil
}

// obj is a decoded JSON object with path accessors that read missing values
// as zero.
type obj map[string]any

func (o obj) get(path ...string) any {
	var v any = map[string]any(o)
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func (o obj) num(path ...string) float64 {
	switch v := o.get(path...).(type) {
	case float64:
		return v
	case []any:
		if len(v) > 0 {
			f, _ := v[0].(float64)
			return f
		}
	}
	return 0
}

func (o obj) str(path ...string) string {
	s, _ := o.get(path...).(string)
	return s
}

func (o obj) list(path ...string) []obj {
	l, _ := o.get(path...).([]any)
	out := make([]obj, 0, len(l))
	for _, v := range l {
		if m, ok := v.(map[string]any); ok {
			out = append(out, obj(m))
		}
	}
	return out
}

func readReport(path string) (obj, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var o obj
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return o, nil
}

func briefLine(r obj) string {
	return fmt.Sprintf("  clients %v/%v  published %.0f (%.0f/s)  deliveries/s %.0f  p50 %.1f ms p99 %.1f ms max %.1f ms  lost %.0f dup %.0f  passed %v  node cpu/M %.1f s  loadgen cpu/M %.1f s",
		r.num("connections", "clients_opened"), r.num("connections", "clients"), r.num("published", "events"), r.num("published", "per_s"),
		r.num("deliveries_per_s"), r.num("latency", "p50_ms"), r.num("latency", "p99_ms"), r.num("latency", "max_ms"),
		r.num("check", "lost"), r.num("check", "duplicated"), r.get("check", "passed"),
		r.num("publish_phase", "node_cpu_s_per_million"), r.num("publish_phase", "loadgen_cpu_s_per_million"))
}

// stepPassed is the S3 criterion: p99 within bound, nothing lost or
// duplicated, every client caught up.
// publisherBound reports a run whose publisher did not reach 90% of the
// requested rate: the load generator, not the node, bounded it.
func publisherBound(r obj) bool {
	return r.num("published", "per_s") < 0.9*r.num("config", "rate_per_topic")
}

func stepPassed(r obj) bool {
	return r.num("published", "events") > 0 && r.num("latency", "p99_ms") <= passP99 &&
		r.num("check", "lost") == 0 && r.num("check", "duplicated") == 0 && r.num("check", "out_of_order") == 0 &&
		r.get("drain_complete") == true && r.num("connections", "clients_never_connected") == 0
}

// Run is one sseload run of the bench.
type Run struct {
	Scenario  string  `json:"scenario"`
	Label     string  `json:"label"`
	Command   string  `json:"command"`
	ExitCode  int     `json:"exit_code"`
	Report    obj     `json:"report"`
	GC        *GCInfo `json:"gc,omitempty"`
	nodeLog   string
	nodeStart float64
}

func readManifest(path string) ([]*Run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []*Run
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fs := strings.SplitN(sc.Text(), "\t", 7)
		if len(fs) != 7 {
			continue
		}
		rc, _ := strconv.Atoi(fs[5])
		start, _ := strconv.ParseFloat(fs[4], 64)
		r := &Run{Scenario: fs[0], Label: fs[1], ExitCode: rc, Command: strings.TrimSpace(fs[6]), nodeLog: fs[3], nodeStart: start}
		if rep, err := readReport(fs[2]); err == nil {
			r.Report = rep
		} else {
			fmt.Fprintln(os.Stderr, "chart: no report:", err)
		}
		runs = append(runs, r)
	}
	return runs, sc.Err()
}

func readMeta(path string) (map[string]string, error) {
	m := map[string]string{}
	if path == "" {
		return m, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// GCInfo is the node's garbage collector cost over a run's publishing phase,
// summed from its GODEBUG=gctrace=1 lines (the node's /metrics has no
// runtime/metrics CPU classes).
type GCInfo struct {
	Cycles int `json:"cycles"`
	// CPUSeconds is all GC CPU: pauses, assists, dedicated and idle mark workers.
	CPUSeconds float64 `json:"gc_cpu_s"`
	// CPUSecondsNoIdle leaves out idle-priority marking (CPU nobody else wanted).
	CPUSecondsNoIdle float64 `json:"gc_cpu_s_no_idle"`
	WindowSeconds    float64 `json:"window_s"`
	Procs            int     `json:"gomaxprocs"`
	// Fraction is CPUSeconds / (window x GOMAXPROCS): the runtime/metrics
	// definition (/cpu/classes/gc/total over /cpu/classes/total).
	Fraction float64 `json:"fraction_runtime_metrics"`
	// ShareOfNodeCPU is CPUSecondsNoIdle over the node's CPU time in the window.
	ShareOfNodeCPU float64 `json:"share_of_node_cpu"`
}

// gcWindow sums the gctrace lines whose start falls in the publishing phase.
func gcWindow(r *Run) *GCInfo {
	if r.Report == nil || r.nodeLog == "" || r.nodeStart == 0 {
		return nil
	}
	start, err := time.Parse(time.RFC3339Nano, r.Report.str("start"))
	if err != nil {
		return nil
	}
	var from, to float64 = -1, -1
	for _, s := range r.Report.list("samples") {
		switch s.str("phase") {
		case "connected":
			from = s.num("at_s")
		case "published":
			to = s.num("at_s")
		}
	}
	if from < 0 || to <= from {
		return nil
	}
	base := float64(start.UnixNano())/1e9 - r.nodeStart
	from, to = base+from, base+to
	f, err := os.Open(r.nodeLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	g := &GCInfo{WindowSeconds: to - from}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		at, cpu, noIdle, procs, ok := parseGCTrace(sc.Text())
		if !ok || at < from || at > to {
			continue
		}
		g.Cycles++
		g.CPUSeconds += cpu
		g.CPUSecondsNoIdle += noIdle
		g.Procs = procs
	}
	if g.Procs == 0 {
		g.Procs = 2
	}
	g.Fraction = g.CPUSeconds / (g.WindowSeconds * float64(g.Procs))
	if c := r.Report.num("publish_phase", "node_cpu_s"); c > 0 {
		g.ShareOfNodeCPU = g.CPUSecondsNoIdle / c
	}
	return g
}

// parseGCTrace reads "gc 7 @1.234s 2%: a+b+c ms clock, d+e/f/g+h ms cpu, ..., 2 P".
func parseGCTrace(l string) (at, cpu, noIdle float64, procs int, ok bool) {
	if !strings.HasPrefix(l, "gc ") {
		return
	}
	fs := strings.Fields(l)
	if len(fs) < 3 || !strings.HasPrefix(fs[2], "@") {
		return
	}
	at, err := strconv.ParseFloat(strings.TrimSuffix(fs[2][1:], "s"), 64)
	if err != nil {
		return
	}
	i := strings.Index(l, "ms clock, ")
	j := strings.Index(l, " ms cpu")
	if i < 0 || j < i {
		return
	}
	part := l[i+len("ms clock, ") : j] // d+e/f/g+h
	terms := strings.Split(part, "+")
	if len(terms) != 3 {
		return
	}
	mark := strings.Split(terms[1], "/")
	if len(mark) != 3 {
		return
	}
	vals := []string{terms[0], mark[0], mark[1], mark[2], terms[2]}
	var v [5]float64
	for k, s := range vals {
		if v[k], err = strconv.ParseFloat(s, 64); err != nil {
			return
		}
	}
	cpu = (v[0] + v[1] + v[2] + v[3] + v[4]) / 1000
	noIdle = (v[0] + v[1] + v[2] + v[4]) / 1000
	if k := strings.LastIndex(l, ", "); k >= 0 {
		procs, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(l[k+2:]), " P"))
	}
	return at, cpu, noIdle, procs, true
}

// Result is the combined results document.
type Result struct {
	Commit  string            `json:"commit"`
	Scale   string            `json:"scale"`
	Date    string            `json:"date"`
	Machine map[string]string `json:"machine"`
	// Commands: how Redis and the nodes were started and the bench invoked;
	// each run also carries its exact sseload command.
	Commands map[string]string `json:"commands"`
	Rows     []Row             `json:"summary"`
	Runs     []*Run            `json:"runs"`
}

// Row is one line of the S1-S8 table.
type Row struct {
	ID       string `json:"id"`
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      string `json:"met"`
}

func summarize(runs []*Run, m map[string]string) *Result {
	res := &Result{
		Commit: m["commit"], Scale: m["scale"], Date: m["date"], Runs: runs,
		Machine:  map[string]string{},
		Commands: map[string]string{},
	}
	for _, k := range []string{"go", "kernel", "cpu", "cpus", "mem_kb", "ulimit_n", "redis"} {
		res.Machine[k] = m[k]
	}
	for k, v := range m {
		if strings.HasPrefix(k, "floor_") {
			res.Machine[k] = v
		}
	}
	for _, k := range []string{"bench_cmd", "redis_cmd", "node_cmd"} {
		res.Commands[k] = m[k]
	}
	by := map[string][]*Run{}
	for _, r := range runs {
		if r.Scenario == "S3" {
			r.GC = gcWindow(r)
		}
		if r.Report != nil {
			by[r.Scenario] = append(by[r.Scenario], r)
		}
	}
	res.Rows = []Row{s1(by["S1"]), s2(by["S2"], m), s3(by["S3"]), s4(by["S4"]), s5(by["S5"]), s6(by["S6"], m), s7(by["S3"]), s8(by["S8"], by["S2"]),
		m1(by["M1"]), m2(by["M2"]), m3(by["M3"]), m4(by["M4"])}
	return res
}

func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func notRun(id, sc, target string) Row {
	return Row{ID: id, Scenario: sc, Target: target, Measured: "not run", Met: "-"}
}

func clients(r *Run) float64 { return r.Report.num("config", "clients") }

func lossText(r obj) string {
	return fmt.Sprintf("lost %.0f, dup %.0f, out of order %.0f", r.num("check", "lost"), r.num("check", "duplicated"), r.num("check", "out_of_order"))
}

func s1(runs []*Run) Row {
	const sc, target = "RSS and heap+stack per idle stream", "≤ 4 KiB RSS per stream at 10k"
	if len(runs) == 0 {
		return notRun("S1", sc, target)
	}
	var parts []string
	var last float64
	var lastN float64
	for _, r := range runs {
		pc := r.Report
		rss := pc.num("per_conn", "node_rss_bytes")
		hs := pc.num("per_conn", "node_heap_stack_bytes")
		g0, g1 := goroutines(pc, "baseline"), goroutines(pc, "connected")
		parts = append(parts, fmt.Sprintf("%.0fk: RSS %s, heap+stack %s, goroutines %.0f→%.0f (open %.0f)",
			clients(r)/1000, kib(rss), kib(hs), g0, g1, pc.num("connections", "open_at_end")))
		last, lastN = rss, clients(r)
	}
	met := "-"
	if lastN >= 10000 {
		met = yes(last <= 4096)
	} else {
		met = fmt.Sprintf("(%.0fk only) %s", lastN/1000, yes(last <= 4096))
	}
	return Row{"S1", sc, target, strings.Join(parts, "; "), met}
}

// goroutines is the node's go_goroutines at the named sample phase.
func goroutines(r obj, phase string) float64 {
	for _, s := range r.list("samples") {
		if s.str("phase") == phase {
			for _, m := range s.list("metrics") {
				return m.num("values", "go_goroutines")
			}
		}
	}
	return 0
}

// maxMetric is the largest value of a scraped node metric over all samples.
func maxMetric(r obj, name string) float64 {
	var mx float64
	for _, s := range r.list("samples") {
		for _, m := range s.list("metrics") {
			mx = math.Max(mx, m.num("values", name))
		}
	}
	return mx
}

func s2(runs []*Run, m map[string]string) Row {
	const sc, target = "clients, one topic, 10 events/s: XADD-to-client latency", "p99 ≤ 50 ms, 0 lost"
	if len(runs) == 0 {
		return notRun("S2", "10k "+sc, target)
	}
	r := runs[0].Report
	p99 := r.num("latency", "p99_ms")
	ok := p99 <= 50 && r.num("check", "lost") == 0 && r.num("check", "duplicated") == 0 && r.get("check", "passed") == true
	return Row{"S2", fmt.Sprintf("%.0fk %s", clients(runs[0])/1000, sc), target,
		fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms; %.0f deliveries/s; %s; check passed %v; node CPU %.1f s/M deliveries, load generator %.1f s/M",
			r.num("latency", "p50_ms"), p99, r.num("latency", "max_ms"), r.num("deliveries_per_s"), lossText(r), r.get("check", "passed"),
			r.num("publish_phase", "node_cpu_s_per_million"), r.num("publish_phase", "loadgen_cpu_s_per_million")) + floorText(m) + floorRatio(p99, m) + floorAfterText(m) + nodeLagText(m),
		yes(ok)}
}

// floorRatio is S2's p99 over the floor's (issue 11 asks for at most
// 1.15), empty when the floor did not run.
func floorRatio(p99 float64, m map[string]string) string {
	f, err := strconv.ParseFloat(m["floor_fanout_p99_ms"], 64)
	if err != nil || f <= 0 {
		return ""
	}
	return fmt.Sprintf("; p99 / floor p99 = %.2f", p99/f)
}

// floorAfterText is the floor measured again after S2, for how much the
// machine moved during the run; empty when it did not run.
func floorAfterText(m map[string]string) string {
	if m["floor_after_fanout_p99_ms"] == "" {
		return ""
	}
	return fmt.Sprintf("; the floor again after S2: p50 %s ms, p99 %s ms (%s rounds began late)",
		m["floor_after_fanout_p50_ms"], m["floor_after_fanout_p99_ms"], m["floor_after_fanout_late_rounds"])
}

// nodeLagText is the node's own share of S2's latency: its
// sse_delivery_lag_seconds quantiles (entry ID time to the end of each
// write to a client), read by bench/run.sh at the end of the run; empty
// when absent.
func nodeLagText(m map[string]string) string {
	p50, p99 := m["s2_node_lag_p50_ms"], m["s2_node_lag_p99_ms"]
	if p50 == "" || p99 == "" {
		return ""
	}
	t := fmt.Sprintf("; node's writes ended (sse_delivery_lag_seconds, interpolated in 20 %% buckets) at p50 %s ms, p99 %s ms", p50, p99)
	node, err1 := strconv.ParseFloat(p99, 64)
	floor, err2 := strconv.ParseFloat(m["floor_fanout_p99_ms"], 64)
	if err1 == nil && err2 == nil && floor > 0 {
		t += fmt.Sprintf(" (%.2f x the floor's p99)", node/floor)
	}
	return t
}

// floorText is what bench/floor measured on the machine: the least latency
// any server and client could reach here (empty when it did not run).
func floorText(m map[string]string) string {
	if m["floor_fanout_p99_ms"] == "" {
		return ""
	}
	cpu := ""
	if m["floor_fanout_writer_us"] != "" {
		// Comparable with the node's and the load generator's CPU-s per
		// million deliveries (µs per delivery).
		cpu = fmt.Sprintf(", spending %s µs CPU per message writing and %s µs reading", m["floor_fanout_writer_us"], m["floor_fanout_reader_us"])
	}
	due := ""
	if m["floor_fanout_start_p99_ms"] != "" {
		// Since 2026-12-01 the floor counts from the time each round was
		// due, as S2 counts from the publish; the older measure, from the
		// time the round began, is kept beside it.
		due = fmt.Sprintf(" (counted from the time each round was due; %s rounds began late, %s rounds/s kept; counted from the time each round began: p50 %s ms, p99 %s ms)",
			m["floor_fanout_late_rounds"], m["floor_fanout_rounds_per_s"], m["floor_fanout_start_p50_ms"], m["floor_fanout_start_p99_ms"])
	}
	return fmt.Sprintf("; machine floor (bench/floor, no SSE, no Redis): loopback TCP write+read %s µs per message (Unix socket %s µs), a bare fan-out to %s connections at %s rounds/s with %s writers reads at p50 %s ms, p99 %s ms%s%s",
		m["floor_tcp_us"], m["floor_unix_us"], m["floor_fanout_clients"], m["floor_fanout_rate"], m["floor_fanout_writers"], m["floor_fanout_p50_ms"], m["floor_fanout_p99_ms"], due, cpu)
}

func s3(runs []*Run) Row {
	const sc, target = "raise the rate until p99 > 250 ms or loss", "≥ 800k deliveries/s at 1k; ≥ 200k/s at 10k; CPU-s per million"
	if len(runs) == 0 {
		return notRun("S3", sc, target)
	}
	best := map[float64]*Run{}
	var ns []float64
	for _, r := range runs {
		n := clients(r)
		if _, seen := best[n]; !seen {
			ns = append(ns, n)
			best[n] = nil
		}
		if stepPassed(r.Report) && (best[n] == nil || r.Report.num("deliveries_per_s") > best[n].Report.num("deliveries_per_s")) {
			best[n] = r
		}
	}
	sort.Float64s(ns)
	var parts []string
	met := true
	for _, n := range ns {
		b := best[n]
		goal := 200000.0
		if n <= 1000 {
			goal = 800000
		}
		if b == nil {
			parts = append(parts, fmt.Sprintf("%.0fk: no step passed", n/1000))
			met = false
			continue
		}
		r := b.Report
		pb := ""
		if publisherBound(r) {
			pb = fmt.Sprintf(", publisher-bound: %.0f of %.0f ev/s published", r.num("published", "per_s"), r.num("config", "rate_per_topic"))
		}
		parts = append(parts, fmt.Sprintf("%.0fk: %.0fk deliveries/s sustained (%.0f ev/s requested%s, p99 %.1f ms); node %.1f CPU-s/M, load generator %.1f CPU-s/M",
			n/1000, r.num("deliveries_per_s")/1000, r.num("config", "rate_per_topic"), pb, r.num("latency", "p99_ms"),
			r.num("publish_phase", "node_cpu_s_per_million"), r.num("publish_phase", "loadgen_cpu_s_per_million")))
		if r.num("deliveries_per_s") < goal {
			met = false
		}
	}
	return Row{"S3", sc, target, strings.Join(parts, "; ") + " (every step below)", yes(met)}
}

func s4(runs []*Run) Row {
	const sc, target = "rounds of connect/disconnect while publishing", "RSS and HeapInuse plateau, goroutines back to baseline"
	if len(runs) == 0 {
		return notRun("S4", sc, target)
	}
	r := runs[0].Report
	base := goroutines(r, "baseline")
	rounds := r.list("churn")
	if len(rounds) == 0 {
		return Row{"S4", sc, target, "no rounds reported", "**no**"}
	}
	var rss, heap []string
	var closedG []float64
	for _, rd := range rounds {
		rss = append(rss, fmt.Sprintf("%.0f", nodeRSS(rd)/(1<<20)))
		var h float64
		for _, m := range rd.list("connected", "metrics") {
			h = m.num("values", "go_memstats_heap_inuse_bytes")
		}
		heap = append(heap, fmt.Sprintf("%.0f", h/(1<<20)))
		for _, m := range rd.list("closed", "metrics") {
			closedG = append(closedG, m.num("values", "go_goroutines"))
		}
	}
	end := goroutines(r, "end")
	// A plateau: the second half of the rounds peaks no higher than the
	// first half (10% for noise), for RSS and for HeapInuse.
	var rssV, heapV []float64
	for _, rd := range rounds {
		rssV = append(rssV, nodeRSS(rd))
		var h float64
		for _, m := range rd.list("connected", "metrics") {
			h = m.num("values", "go_memstats_heap_inuse_bytes")
		}
		heapV = append(heapV, h)
	}
	plateau := flat(rssV) && flat(heapV)
	back := end <= base+2
	return Row{"S4", fmt.Sprintf("%d %s (%.0fk clients each)", len(rounds), sc, clients(runs[0])/1000), target,
		fmt.Sprintf("node RSS MiB per round (connected): %s; HeapInuse MiB: %s; goroutines baseline %.0f, after each close %v, at end %.0f",
			strings.Join(rss, " "), strings.Join(heap, " "), base, closedG, end),
		yes(plateau && back)}
}

// flat reports whether the second half of v peaks within 10% of the first half's peak.
func flat(v []float64) bool {
	h := len(v) / 2
	var a, b float64
	for i, x := range v {
		if i < h {
			a = math.Max(a, x)
		} else {
			b = math.Max(b, x)
		}
	}
	return h == 0 || b <= a*1.1
}

// nodeRSS is the first node's RSS in a churn round's connected sample.
func nodeRSS(rd obj) float64 {
	for _, n := range rd.list("connected", "nodes") {
		return n.num("rss_bytes")
	}
	return 0
}

func s5(runs []*Run) Row {
	const sc, target = "clients offline while 50 events are published, then reconnect at once with Last-Event-ID", "0 lost, 0 dup, all complete in ≤ 1.5 s; Redis commands"
	if len(runs) == 0 {
		return notRun("S5", "10k "+sc, target)
	}
	r := runs[0].Report
	st := r.get("storm")
	if st == nil {
		return Row{"S5", sc, target, "no storm section", "**no**"}
	}
	secs := r.num("storm", "seconds")
	var cmds []string
	if m, ok := r.get("storm", "redis_commands").(map[string]any); ok {
		for k, v := range m {
			cmds = append(cmds, fmt.Sprintf("%s %v", k, v))
		}
		sort.Strings(cmds)
	}
	ok := r.get("storm", "complete") == true && secs <= 1.5 && r.num("check", "lost") == 0 && r.num("check", "duplicated") == 0
	return Row{"S5", fmt.Sprintf("%.0fk %s", clients(runs[0])/1000, sc), target,
		fmt.Sprintf("all caught up in %.2f s (p50 %.0f ms, p99 %.0f ms, max %.0f ms), %.0f of %.0f caught up, complete %v; %s; Redis commands during the storm: %s",
			secs, r.num("storm", "p50_ms"), r.num("storm", "p99_ms"), r.num("storm", "max_ms"), r.num("storm", "caught_up"), r.num("storm", "clients"),
			r.get("storm", "complete"), lossText(r), strings.Join(cmds, ", ")),
		yes(ok)}
}

func s6(runs []*Run, m map[string]string) Row {
	const sc, target = "clients on two nodes, one node SIGKILLed", "all resumed on the other, 0 lost, 0 dup; time to resume"
	if len(runs) == 0 {
		return notRun("S6", "5k "+sc, target)
	}
	r := runs[0].Report
	killed := m["s6_killed_at"] != ""
	ok := killed && r.get("check", "passed") == true && r.num("connections", "reconnects") > 0
	return Row{"S6", fmt.Sprintf("%.0fk %s", clients(runs[0])/1000, sc), target,
		fmt.Sprintf("node killed %v; reconnects %.0f, open at end %.0f of %.0f; resume p50 %.0f ms, p99 %.0f ms, max %.0f ms (includes the server's retry: wait); %s; check passed %v; latency p99 %.0f ms",
			killed, r.num("connections", "reconnects"), r.num("connections", "open_at_end"), clients(runs[0]),
			r.num("resume", "p50_ms"), r.num("resume", "p99_ms"), r.num("resume", "max_ms"), lossText(r), r.get("check", "passed"), r.num("latency", "p99_ms")),
		yes(ok)}
}

func s7(runs []*Run) Row {
	const sc, target = "GC CPU fraction during S3", "< 5%"
	var parts []string
	var worst float64
	for _, r := range runs {
		if r.GC == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1f%%", r.Label, 100*r.GC.Fraction))
		worst = math.Max(worst, r.GC.Fraction)
	}
	if len(parts) == 0 {
		return notRun("S7", sc, target)
	}
	return Row{"S7", sc, target, "GC CPU / (wall × GOMAXPROCS), from gctrace: " + strings.Join(parts, ", "), yes(worst < 0.05)}
}

func s8(runs, base []*Run) Row {
	const sc, target = "10% of clients stop reading during S2", "others' p99 within 20% of S2; node heap bounded"
	if len(runs) == 0 {
		return notRun("S8", sc, target)
	}
	r := runs[0].Report
	p99 := r.num("latency", "p99_ms")
	var ref float64
	if len(base) > 0 {
		ref = base[0].Report.num("latency", "p99_ms")
	}
	heap := maxMetric(r, "go_memstats_heap_inuse_bytes")
	within := ref > 0 && p99 <= ref*1.2
	return Row{"S8", sc, target,
		fmt.Sprintf("others' p99 %.1f ms vs S2 %.1f ms (%+.0f%%); %s among checked clients; slow clients %.0f; node HeapInuse max %.1f MiB; slow-client disconnects %.0f, frames dropped %.0f",
			p99, ref, 100*(p99/math.Max(ref, 1e-9)-1), lossText(r), r.num("connections", "slow_clients"), heap/(1<<20),
			maxMetric(r, "sse_slow_client_disconnects_total"), maxMetric(r, "sse_frames_dropped_total")),
		yes(within && r.num("check", "lost") == 0)}
}

// mib is bytes in MiB.
func mib(b float64) float64 { return b / (1 << 20) }

// memRun is the first run of a memory scenario and its node's RSS.
type memRun struct {
	r            obj
	clients      float64
	mem          string  // the node's RSS, in words
	growth, peak float64 // MiB; +Inf without samples
}

// memRow is the row of a memory scenario from its first run, built by
// measure (scenario as run, measured, met), or the row that says it did
// not run.
func memRow(id, sc, target string, runs []*Run, measure func(m memRun) (string, string, string)) Row {
	if len(runs) == 0 {
		return notRun(id, sc, target)
	}
	m := memRun{r: runs[0].Report, clients: clients(runs[0])}
	m.mem, m.growth, m.peak = memText(m.r)
	ran, measured, met := measure(m)
	return Row{id, ran, target, measured, met}
}

// memText is the first node's RSS over a run: peak, baseline, growth,
// VmHWM. growth and peak (MiB) are returned for the targets.
func memText(r obj) (text string, growth, peak float64) {
	mems := r.list("node_memory")
	if len(mems) == 0 {
		return "no node RSS samples", math.Inf(1), math.Inf(1)
	}
	m := mems[0]
	peak, growth = mib(m.num("peak_rss_bytes")), mib(m.num("peak_growth_bytes"))
	text = fmt.Sprintf("node RSS peak %.0f MiB (baseline %.0f MiB, growth %.0f MiB; VmHWM %.0f MiB; %.0f samples)",
		peak, mib(m.num("baseline_rss_bytes")), growth, mib(m.num("hwm_bytes")), m.num("samples"))
	if m.get("over_limit") == true {
		text += fmt.Sprintf("; **stopped: RSS passed the bench's limit of %.0f MiB**", r.num("config", "node_rss_max_mib"))
	}
	return text, growth, peak
}

// deliveredText says how many clients got what, for the -verify runs.
func deliveredText(r obj) string {
	return fmt.Sprintf("%.0f of %.0f clients opened; %.0f deliveries, %.0f whole, %.0f corrupt, %s; drain complete %v in %.1f s; check passed %v",
		r.num("connections", "clients_opened"), r.num("config", "clients"), r.num("deliveries"), r.num("check", "whole"), r.num("check", "corrupt"),
		lossText(r), r.get("drain_complete"), r.num("drain_s"), r.get("check", "passed"))
}

// scaled marks a target met at a smaller scale than the issue's.
func scaled(met string, n, want float64) string {
	if n < want {
		return fmt.Sprintf("(%.0f clients only) %s", n, met)
	}
	return met
}

// bigEvent is M1 and M2: one event of sizeMiB to 200 clients, whole, and
// the node's peak RSS growth within maxGrowthMiB (0: no target).
func bigEvent(id string, runs []*Run, sizeMiB int, maxGrowthMiB float64) Row {
	sc := fmt.Sprintf("one %d MiB event to 200 clients", sizeMiB)
	target := "every client receives it whole"
	if maxGrowthMiB > 0 {
		target += fmt.Sprintf("; peak RSS growth ≤ %.0f MiB", maxGrowthMiB)
	}
	return memRow(id, sc, target, runs, func(m memRun) (string, string, string) {
		ok := m.r.get("check", "passed") == true && m.r.num("check", "whole") == m.clients
		if maxGrowthMiB > 0 {
			ok = ok && m.growth <= maxGrowthMiB
		}
		return fmt.Sprintf("one %.0f MiB event to %.0f clients", mib(m.r.num("config", "size")), m.clients),
			deliveredText(m.r) + "; " + m.mem, scaled(yes(ok), m.clients, 200)
	})
}

func m1(runs []*Run) Row { return bigEvent("M1", runs, 10, 64) }
func m2(runs []*Run) Row { return bigEvent("M2", runs, 50, 0) }

func m3(runs []*Run) Row {
	const sc, target = "1,000 idle clients on 1,000 topics, each holding 1,024 × 1 KiB", "node RSS ≤ 256 MiB (default settings)"
	return memRow("M3", sc, target, runs, func(m memRun) (string, string, string) {
		r := m.r
		return fmt.Sprintf("%.0f idle clients on %.0f topics, each holding 1,024 × 1 KiB", m.clients, topicCount(r)),
			fmt.Sprintf("%.0f of %.0f clients opened, open at end %.0f; %s", r.num("connections", "clients_opened"), m.clients, r.num("connections", "open_at_end"), m.mem),
			scaled(yes(m.peak <= 256 && r.num("connections", "clients_never_connected") == 0), m.clients, 1000)
	})
}

// topicCount is how many topics the run's clients used.
func topicCount(r obj) float64 {
	t, _ := r.get("config", "topics").([]any)
	return float64(len(t))
}

func m4(runs []*Run) Row {
	const sc, target = "20 clients resume from 0 on a stream of 100 × 1 MiB, SSE_RING_SIZE=16", "all receive all 100; peak RSS growth ≤ 256 MiB"
	return memRow("M4", sc, target, runs, func(m memRun) (string, string, string) {
		pre := m.r.num("config", "preload")
		ok := m.r.get("check", "passed") == true && m.r.num("check", "whole") == m.clients*pre && m.growth <= 256
		return fmt.Sprintf("%.0f clients resume from 0 on a stream of %.0f × 1 MiB, SSE_RING_SIZE=16", m.clients, pre),
			deliveredText(m.r) + "; " + m.mem, scaled(yes(ok), m.clients, 20)
	})
}

func markdown(res *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# ssecluster bench %s, commit %s (scale %s)\n\n", res.Date, res.Commit, res.Scale)
	fmt.Fprintf(&b, "Machine: %s, %s CPUs, %s kB RAM, %s, %s, %s; ulimit -n %s. Load generator, Redis and nodes share the same CPUs (and other jobs ran on this machine): figures are noisy.\n\n",
		res.Machine["cpu"], res.Machine["cpus"], res.Machine["mem_kb"], res.Machine["kernel"], res.Machine["go"], res.Machine["redis"], res.Machine["ulimit_n"])
	b.WriteString("| | scenario | target | measured | met |\n| --- | --- | --- | --- | --- |\n")
	for _, r := range res.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.ID, r.Scenario, r.Target, r.Measured, r.Met)
	}
	b.WriteString("\n## Every run\n\n| scenario | run | clients | events/s per topic | published/s | deliveries/s | p50 ms | p99 ms | max ms | lost | dup | check | node CPU-s/M | loadgen CPU-s/M | GC % (S3) | exit |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range res.Runs {
		if r.Report == nil {
			fmt.Fprintf(&b, "| %s | %s | no report | | | | | | | | | | | | | %d |\n", r.Scenario, r.Label, r.ExitCode)
			continue
		}
		o := r.Report
		gc := ""
		if r.GC != nil {
			gc = fmt.Sprintf("%.1f", 100*r.GC.Fraction)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f | %v | %.1f | %.1f | %s | %d |\n",
			r.Scenario, r.Label, clients(r), o.num("config", "rate_per_topic"), o.num("published", "per_s"), o.num("deliveries_per_s"),
			o.num("latency", "p50_ms"), o.num("latency", "p99_ms"), o.num("latency", "max_ms"), o.num("check", "lost"), o.num("check", "duplicated"),
			o.get("check", "passed"), o.num("publish_phase", "node_cpu_s_per_million"), o.num("publish_phase", "loadgen_cpu_s_per_million"), gc, r.ExitCode)
	}
	b.WriteString("\n## Commands\n\n```\n")
	fmt.Fprintf(&b, "%s\n# Redis: %s\n# each node: %s\n", res.Commands["bench_cmd"], res.Commands["redis_cmd"], res.Commands["node_cmd"])
	for _, r := range res.Runs {
		fmt.Fprintf(&b, "# %s %s\n%s\n", r.Scenario, r.Label, r.Command)
	}
	b.WriteString("```\n")
	return b.String()
}

// chart draws node memory per idle stream (S1) and latency p99 of the
// steady runs against connections.
func chart(res *Result, path string) error {
	mem := plot.New()
	mem.Title.Text = "Node memory per idle stream (S1)"
	mem.X.Label.Text = "connections"
	mem.Y.Label.Text = "KiB per stream"
	var rss, hs plotter.XYs
	for _, r := range res.Runs {
		if r.Scenario != "S1" || r.Report == nil {
			continue
		}
		n := clients(r)
		rss = append(rss, plotter.XY{X: n, Y: r.Report.num("per_conn", "node_rss_bytes") / 1024})
		hs = append(hs, plotter.XY{X: n, Y: r.Report.num("per_conn", "node_heap_stack_bytes") / 1024})
	}
	if err := addLine(mem, "RSS", rss, color.RGBA{R: 200, A: 255}); err != nil {
		return err
	}
	if err := addLine(mem, "Go heap+stack", hs, color.RGBA{B: 200, A: 255}); err != nil {
		return err
	}
	mem.Y.Min = 0
	mem.X.Min = 0
	mem.Legend.Top = false

	lat := plot.New()
	lat.Title.Text = "Latency p99 (XADD to client)"
	lat.X.Label.Text = "connections"
	lat.Y.Label.Text = "ms"
	groups := map[string]plotter.XYs{}
	var names []string
	for _, r := range res.Runs {
		// Steady runs only: S5 and S6 latencies include replay after a wait.
		if r.Report == nil || (r.Scenario != "S2" && r.Scenario != "S3" && r.Scenario != "S8") || r.Report.num("latency", "count") == 0 {
			continue
		}
		name := r.Scenario
		if r.Scenario == "S3" {
			name = fmt.Sprintf("S3 %.0f ev/s", r.Report.num("config", "rate_per_topic"))
		}
		if _, ok := groups[name]; !ok {
			names = append(names, name)
		}
		groups[name] = append(groups[name], plotter.XY{X: clients(r), Y: r.Report.num("latency", "p99_ms")})
	}
	palette := []color.RGBA{{R: 200, A: 255}, {G: 150, A: 255}, {B: 200, A: 255}, {R: 200, G: 120, A: 255}, {R: 120, B: 160, A: 255}, {G: 140, B: 140, A: 255}, {R: 90, G: 90, B: 90, A: 255}}
	for i, name := range names {
		s, err := plotter.NewScatter(groups[name])
		if err != nil {
			return err
		}
		s.Color = palette[i%len(palette)]
		s.Shape = draw.CircleGlyph{}
		s.Radius = vg.Points(3)
		lat.Add(s)
		lat.Legend.Add(name, s)
	}
	lat.Y.Min = 0
	lat.X.Min = 0
	lat.Legend.Top = true
	lat.Legend.Left = true

	const w, h = 12 * vg.Inch, 4.5 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	t := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 8, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	plots := [][]*plot.Plot{{mem, lat}}
	cs := plot.Align(plots, t, dc)
	mem.Draw(cs[0][0])
	lat.Draw(cs[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func addLine(p *plot.Plot, name string, xys plotter.XYs, c color.RGBA) error {
	if len(xys) == 0 {
		return nil
	}
	l, pts, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, pts.Color = c, c
	p.Add(l, pts)
	p.Legend.Add(name, l, pts)
	return nil
}
