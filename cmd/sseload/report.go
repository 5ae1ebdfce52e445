package main

import (
	"fmt"
	"time"
)

// Report is the JSON written at the end of a run.
type Report struct {
	Config      *Config   `json:"config"`
	Run         uint64    `json:"run"`
	Start       time.Time `json:"start"`
	Seconds     float64   `json:"duration_s"`
	Interrupted bool      `json:"interrupted"`

	Connections ConnReport `json:"connections"`
	Published   PubReport  `json:"published"`
	Deliveries  int64      `json:"deliveries"`
	// DeliveriesPerSec is over the publishing time.
	DeliveriesPerSec float64     `json:"deliveries_per_s"`
	Check            CheckReport `json:"check"`

	Latency LatencyReport `json:"latency"`
	// Resume is the time from a stream lost to the next one open.
	Resume LatencyReport `json:"resume"`

	// Preloaded events were published before the clients connected (-preload).
	Preloaded      int64   `json:"preloaded,omitempty"`
	PreloadSeconds float64 `json:"preload_s,omitempty"`
	PublishSeconds float64 `json:"publish_s,omitempty"`
	DrainSeconds   float64 `json:"drain_s,omitempty"`
	DrainComplete  bool    `json:"drain_complete"`

	LoadGen LoadGenReport `json:"loadgen"`
	// PerConn is memory per open connection, connected minus baseline.
	PerConn *PerConnReport `json:"per_conn,omitempty"`
	// Phase is CPU over the publishing phase, per million deliveries.
	Phase *PhaseReport `json:"publish_phase,omitempty"`
	// NodeMemory is each -node-pid's RSS sampled every -rss-every: the
	// peak and its growth over the baseline.
	NodeMemory []NodeMemReport `json:"node_memory,omitempty"`

	Storm         *StormReport     `json:"storm,omitempty"`
	Churn         []RoundReport    `json:"churn,omitempty"`
	RedisCommands map[string]int64 `json:"redis_commands,omitempty"`
	Samples       []Sample         `json:"samples"`
}

// ConnReport counts clients and connection attempts.
type ConnReport struct {
	Clients        int     `json:"clients"`
	SlowClients    int     `json:"slow_clients"`
	Opened         int     `json:"clients_opened"`
	NeverConnected int     `json:"clients_never_connected"`
	GaveUp         int     `json:"clients_gave_up"`
	Attempts       int64   `json:"attempts"`
	OK             int64   `json:"ok"`
	FailedDial     int64   `json:"failed_dial"`
	FailedStatus   int64   `json:"failed_status"`
	FailedProtocol int64   `json:"failed_protocol"`
	Reconnects     int64   `json:"reconnects"`
	Disconnects    int64   `json:"disconnects"`
	OpenAtEnd      int64   `json:"open_at_end"`
	RampSeconds    float64 `json:"ramp_s,omitempty"`
}

// PubReport counts published events.
type PubReport struct {
	Events   int64   `json:"events"`
	Errors   int64   `json:"errors"`
	PerSec   float64 `json:"per_s"`
	PerTopic []int64 `json:"per_topic"`
}

// CheckReport is the loss, duplicate and order check.
type CheckReport struct {
	Lost       int64 `json:"lost"`
	Duplicated int64 `json:"duplicated"`
	OutOfOrder int64 `json:"out_of_order"`
	IDMismatch int64 `json:"id_mismatch"`
	Unverified int64 `json:"unverified"`
	Foreign    int64 `json:"foreign"`
	Gaps       int64 `json:"gaps"`
	GapLost    int64 `json:"gap_lost"`
	// Whole and Corrupt count -verify's payload checks (size and CRC-32C).
	Whole    int64    `json:"whole,omitempty"`
	Corrupt  int64    `json:"corrupt,omitempty"`
	Passed   bool     `json:"passed"`
	Failures []string `json:"failures,omitempty"`
}

// LoadGenReport is the load generator's own cost.
type LoadGenReport struct {
	CPUSeconds    float64 `json:"cpu_s"`
	CPUPerMillion float64 `json:"cpu_s_per_million_deliveries,omitempty"`
	MaxRSSBytes   int64   `json:"rss_bytes"`
	Goroutines    int     `json:"goroutines"`
}

// PerConnReport is memory per open connection.
type PerConnReport struct {
	Conns int64 `json:"conns"`
	// LoadGenHeapStack is the load generator's heap+stack per connection.
	LoadGenHeapStack float64 `json:"loadgen_heap_stack_bytes"`
	LoadGenRSS       float64 `json:"loadgen_rss_bytes"`
	// NodeRSS is per node PID (-node-pid), in order.
	NodeRSS []float64 `json:"node_rss_bytes,omitempty"`
	// NodeHeapStack is go heap+stack in use per -scrape URL, in order.
	NodeHeapStack []float64 `json:"node_heap_stack_bytes,omitempty"`
}

// PhaseReport is the publishing phase's CPU.
type PhaseReport struct {
	Deliveries           int64     `json:"deliveries"`
	LoadGenCPU           float64   `json:"loadgen_cpu_s"`
	LoadGenCPUPerMillion float64   `json:"loadgen_cpu_s_per_million"`
	NodeCPU              []float64 `json:"node_cpu_s,omitempty"`
	NodeCPUPerMillion    float64   `json:"node_cpu_s_per_million,omitempty"`
}

// StormReport is the reconnect storm of -storm-events.
type StormReport struct {
	Events        int              `json:"events_per_topic"`
	Clients       int              `json:"clients"`
	OfflineConns  int64            `json:"conns_open_while_offline"`
	Reconnected   int64            `json:"reconnected"`
	CaughtUp      int              `json:"caught_up"`
	Complete      bool             `json:"complete"`
	Seconds       float64          `json:"seconds"`
	P50ms         float64          `json:"p50_ms"`
	P99ms         float64          `json:"p99_ms"`
	MaxMs         float64          `json:"max_ms"`
	RedisCommands map[string]int64 `json:"redis_commands,omitempty"`
}

// RoundReport is one churn round.
type RoundReport struct {
	Round          int     `json:"round"`
	Opened         int     `json:"opened"`
	ConnectSeconds float64 `json:"connect_s"`
	Connected      Sample  `json:"connected"`
	Closed         Sample  `json:"closed"`
}

// countClients adds a finished group's clients to the report.
func (rep *Report) countClients(g *group) {
	c := &rep.Connections
	for _, cl := range g.clients {
		c.Clients++
		if cl.slow {
			c.SlowClients++
		}
		switch {
		case cl.opened.Load():
			c.Opened++
		default:
			c.NeverConnected++
		}
		if cl.permanent.Load() {
			c.GaveUp++
		}
	}
}

// perConn derives memory per connection from two samples.
func perConn(base, conn Sample, n int64) PerConnReport {
	p := PerConnReport{Conns: n}
	f := float64(n)
	p.LoadGenHeapStack = float64(int64(conn.LoadGen.HeapInuse+conn.LoadGen.StackInuse)-
		int64(base.LoadGen.HeapInuse+base.LoadGen.StackInuse)) / f
	p.LoadGenRSS = float64(conn.LoadGen.RSSBytes-base.LoadGen.RSSBytes) / f
	for i := range min(len(base.Nodes), len(conn.Nodes)) {
		p.NodeRSS = append(p.NodeRSS, float64(conn.Nodes[i].RSSBytes-base.Nodes[i].RSSBytes)/f)
	}
	for i := range min(len(base.Metrics), len(conn.Metrics)) {
		hs := func(m MetricsSample) float64 {
			return m.Values["go_memstats_heap_inuse_bytes"] + m.Values["go_memstats_stack_inuse_bytes"]
		}
		p.NodeHeapStack = append(p.NodeHeapStack, (hs(conn.Metrics[i])-hs(base.Metrics[i]))/f)
	}
	return p
}

// phaseCPU is the CPU used between two samples, per million deliveries.
func phaseCPU(a, b Sample) *PhaseReport {
	p := &PhaseReport{Deliveries: b.Deliveries - a.Deliveries, LoadGenCPU: b.LoadGen.CPUSeconds - a.LoadGen.CPUSeconds}
	var node float64
	for i := range min(len(a.Nodes), len(b.Nodes)) {
		d := b.Nodes[i].CPUSeconds - a.Nodes[i].CPUSeconds
		p.NodeCPU = append(p.NodeCPU, d)
		node += d
	}
	if p.Deliveries > 0 {
		m := float64(p.Deliveries) / 1e6
		p.LoadGenCPUPerMillion = p.LoadGenCPU / m
		if len(p.NodeCPU) > 0 {
			p.NodeCPUPerMillion = node / m
		}
	}
	return p
}

// finish fills the totals and the check verdict.
func (rep *Report) finish(r *runner) {
	rep.Seconds = time.Since(r.start).Seconds()
	c := &rep.Connections
	c.Attempts = r.attempts.Load()
	c.OK = r.ok.Load()
	c.FailedDial = r.failedDial.Load()
	c.FailedStatus = r.failedStatus.Load()
	c.FailedProtocol = r.failedProto.Load()
	c.Reconnects = r.reconnects.Load()
	c.Disconnects = r.disconnects.Load()

	rep.Published.Events = r.published.Load()
	rep.Published.Errors = r.pubErrors.Load()
	for _, l := range r.logs {
		rep.Published.PerTopic = append(rep.Published.PerTopic, l.done.Load())
	}
	if rep.PublishSeconds > 0 {
		// Preloaded events went out before the publishing phase.
		rep.Published.PerSec = float64(rep.Published.Events-rep.Preloaded) / rep.PublishSeconds
	}

	t := r.tot.load()
	rep.Deliveries = t.deliveries
	if rep.PublishSeconds > 0 && rep.Preloaded == 0 {
		rep.DeliveriesPerSec = float64(t.deliveries) / rep.PublishSeconds
	}
	rep.Check = CheckReport{
		Lost: t.lost, Duplicated: t.dup, OutOfOrder: t.ooo, IDMismatch: t.mismatch,
		Unverified: t.unverified, Foreign: t.foreign, Gaps: t.gaps, GapLost: t.gapLost,
		Whole: t.whole, Corrupt: t.corrupt,
	}
	rep.Latency = r.lat.Snapshot().report()
	rep.Resume = r.resume.Snapshot().report()

	self := selfSample(false)
	rep.LoadGen = LoadGenReport{CPUSeconds: self.CPUSeconds, MaxRSSBytes: self.RSSBytes, Goroutines: self.Goroutines}
	if t.deliveries > 0 {
		rep.LoadGen.CPUPerMillion = self.CPUSeconds / (float64(t.deliveries) / 1e6)
	}
	rep.Samples = r.samples
	rep.verdict(r.cfg)
}

// verdict decides Check.Passed.
func (rep *Report) verdict(cfg *Config) {
	ch := &rep.Check
	fail := func(format string, a ...any) { ch.Failures = append(ch.Failures, fmt.Sprintf(format, a...)) }
	if ch.Lost != 0 {
		fail("lost=%d", ch.Lost)
	}
	if ch.Duplicated != 0 {
		fail("duplicated=%d", ch.Duplicated)
	}
	if ch.OutOfOrder != 0 {
		fail("out_of_order=%d", ch.OutOfOrder)
	}
	if ch.IDMismatch != 0 {
		fail("id_mismatch=%d", ch.IDMismatch)
	}
	if ch.Corrupt != 0 {
		fail("corrupt=%d (payload size or CRC differs from what was published)", ch.Corrupt)
	}
	if want := cfg.Preload * int64(len(cfg.Topics)); rep.Preloaded < want {
		fail("preloaded %d of %d events", rep.Preloaded, want)
	}
	for _, m := range rep.NodeMemory {
		if m.OverLimit {
			fail("node %d RSS above -node-rss-max-mib %d", m.PID, cfg.NodeRSSMax)
		}
	}
	if ch.Gaps != 0 && !cfg.AllowGaps {
		fail("gaps=%d (gap_lost=%d)", ch.Gaps, ch.GapLost)
	}
	if rep.Connections.NeverConnected != 0 {
		fail("clients_never_connected=%d", rep.Connections.NeverConnected)
	}
	if !cfg.Idle && rep.Published.Errors != 0 {
		fail("publish_errors=%d", rep.Published.Errors)
	}
	if !cfg.Idle && cfg.Churn == 0 && rep.Published.Events == 0 {
		fail("nothing published")
	}
	if !cfg.Idle && cfg.Churn == 0 && !rep.DrainComplete {
		fail("drain incomplete: not every client caught up within -drain")
	}
	if rep.Storm != nil && !rep.Storm.Complete {
		fail("storm incomplete: %d of %d clients caught up within -storm-timeout", rep.Storm.CaughtUp, rep.Storm.Clients)
	}
	if rep.Interrupted {
		fail("interrupted")
	}
	ch.Passed = len(ch.Failures) == 0
}
