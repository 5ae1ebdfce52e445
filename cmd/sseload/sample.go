package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// scrapeMetrics are the node metrics sampled with -scrape: memory,
// goroutines, CPU (GC share included where the collector exposes it) and
// the node's own delivery counters.
var scrapeMetrics = []string{
	"go_goroutines",
	"go_memstats_heap_inuse_bytes",
	"go_memstats_stack_inuse_bytes",
	"go_memstats_sys_bytes",
	"process_resident_memory_bytes",
	"process_cpu_seconds_total",
	"go_cpu_classes_gc_total_cpu_seconds_total",
	"go_cpu_classes_total_cpu_seconds_total",
	"sse_connections",
	"sse_frames_delivered_total",
	"sse_frames_dropped_total",
	"sse_slow_client_disconnects_total",
	"sse_broker_events_total",
}

// Sample is the state of the load generator and the nodes at one phase.
type Sample struct {
	Phase      string          `json:"phase"`
	AtS        float64         `json:"at_s"`
	ConnsOpen  int64           `json:"conns_open"`
	Deliveries int64           `json:"deliveries"`
	LoadGen    ProcSample      `json:"loadgen"`
	Nodes      []ProcSample    `json:"nodes,omitempty"`
	Metrics    []MetricsSample `json:"metrics,omitempty"`
}

// ProcSample is one process's memory and CPU.
type ProcSample struct {
	PID        int     `json:"pid,omitempty"`
	RSSBytes   int64   `json:"rss_bytes"`
	CPUSeconds float64 `json:"cpu_s"`
	// Go figures, for the load generator only.
	HeapInuse  uint64 `json:"heap_inuse_bytes,omitempty"`
	StackInuse uint64 `json:"stack_inuse_bytes,omitempty"`
	Goroutines int    `json:"goroutines,omitempty"`
	Err        string `json:"error,omitempty"`
}

// MetricsSample is a node's /metrics, summed over label sets.
type MetricsSample struct {
	URL    string             `json:"url"`
	Values map[string]float64 `json:"values,omitempty"`
	Err    string             `json:"error,omitempty"`
}

// sample records the current state under phase name.
func (r *runner) sample(ctx context.Context, phase string, gc bool) Sample {
	s := Sample{
		Phase:      phase,
		AtS:        time.Since(r.start).Seconds(),
		ConnsOpen:  r.connsOpen.Load(),
		Deliveries: r.tot.load().deliveries,
		LoadGen:    selfSample(gc),
	}
	for _, pid := range r.cfg.NodePIDs {
		s.Nodes = append(s.Nodes, procSample(pid))
	}
	for _, u := range r.cfg.Scrape {
		s.Metrics = append(s.Metrics, scrape(ctx, r.http, u))
	}
	r.samples = append(r.samples, s)
	return s
}

// selfSample is the load generator's own memory and CPU. With gc, a
// collection runs first, so that heap figures hold live memory only.
func selfSample(gc bool) ProcSample {
	if gc {
		// Twice: the second cycle also shrinks the stacks the first found oversized.
		runtime.GC()
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p := ProcSample{
		CPUSeconds: selfCPU(),
		HeapInuse:  ms.HeapInuse,
		StackInuse: ms.StackInuse,
		Goroutines: runtime.NumGoroutine(),
	}
	p.RSSBytes, _ = readRSS("/proc/self/status")
	return p
}

// selfCPU is the user plus system CPU time of this process, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

// procSample reads another process's RSS and CPU time from /proc.
func procSample(pid int) ProcSample {
	p := ProcSample{PID: pid}
	var err error
	if p.RSSBytes, err = readRSS(fmt.Sprintf("/proc/%d/status", pid)); err != nil {
		p.Err = err.Error()
		return p
	}
	if p.CPUSeconds, err = readProcCPU(pid); err != nil {
		p.Err = err.Error()
	}
	return p
}

// readRSS returns VmRSS from a /proc/<pid>/status file, in bytes.
func readRSS(path string) (int64, error) { return readStatusBytes(path, "VmRSS") }

// readStatusBytes returns a kB field (VmRSS, VmHWM) of a /proc/<pid>/status
// file, in bytes.
func readStatusBytes(path, field string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("sseload: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("sseload: %s: %s %q: %w", path, field, v, err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("sseload: %s: no %s", path, field)
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// readProcCPU returns utime+stime of pid from /proc/<pid>/stat, in seconds.
func readProcCPU(pid int) (float64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("sseload: %w", err)
	}
	// The command name is in parentheses and may hold spaces: fields
	// count from after the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("sseload: %s: unexpected format", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("sseload: %s: unexpected format", path)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("sseload: %s: bad utime/stime", path)
	}
	return float64(ut+st) / clockTicks, nil
}

// scrape reads the wanted metrics from a node admin URL's /metrics.
func scrape(ctx context.Context, hc *http.Client, base string) MetricsSample {
	u := strings.TrimRight(base, "/")
	if !strings.HasSuffix(u, "/metrics") {
		u += "/metrics"
	}
	m := MetricsSample{URL: u}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		m.Err = err.Error()
		return m
	}
	resp, err := hc.Do(req)
	if err != nil {
		m.Err = err.Error()
		return m
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		m.Err = resp.Status
		return m
	}
	m.Values, err = parseMetrics(io.LimitReader(resp.Body, 64<<20), scrapeMetrics)
	if err != nil {
		m.Err = err.Error()
	}
	return m
}

// parseMetrics sums the samples of the wanted metric names in Prometheus
// text format, over all their label sets.
func parseMetrics(rd io.Reader, names []string) (map[string]float64, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end < 0 || !want[line[:end]] {
			continue
		}
		name, rest := line[:end], line[end:]
		if rest[0] == '{' {
			j := labelsEnd(rest)
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("sseload: read metrics: %w", err)
	}
	return out, nil
}

// labelsEnd returns the index of the '}' closing a label set that starts
// at s[0], skipping quoted values; -1 if there is none.
func labelsEnd(s string) int {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return i
		}
	}
	return -1
}
