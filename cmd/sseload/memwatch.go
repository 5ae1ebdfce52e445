package main

import (
	"fmt"
	"sync"
	"time"
)

// NodeMemReport is one node's RSS over the run, sampled every -rss-every.
type NodeMemReport struct {
	PID int `json:"pid"`
	// BaselineBytes is the RSS in the baseline sample, before any client.
	BaselineBytes int64 `json:"baseline_rss_bytes"`
	// PeakBytes is the largest RSS sampled; GrowthBytes is peak - baseline.
	PeakBytes   int64 `json:"peak_rss_bytes"`
	GrowthBytes int64 `json:"peak_growth_bytes"`
	// HWMBytes is the kernel's VmHWM at the end: the true peak, start-up
	// included, where sampling could miss a short spike.
	HWMBytes int64 `json:"hwm_bytes"`
	Samples  int   `json:"samples"`
	// OverLimit is set when the RSS passed -node-rss-max-mib and the run was
	// ended there.
	OverLimit bool   `json:"over_limit,omitempty"`
	Err       string `json:"error,omitempty"`
}

// rssWatch samples the nodes' RSS from /proc every interval, keeping the
// peak, until stop. Over limit (when > 0), it calls onLimit once. The run
// owns it: startRSSWatch starts its goroutine, stop ends and waits for it.
type rssWatch struct {
	pids    []int
	limit   int64
	onLimit func()
	quit    chan struct{}
	done    chan struct{}

	mu      sync.Mutex
	peak    []int64
	over    []bool
	samples int
	errs    []string
}

func startRSSWatch(pids []int, every time.Duration, limit int64, onLimit func()) *rssWatch {
	w := &rssWatch{
		pids: pids, limit: limit, onLimit: onLimit,
		quit: make(chan struct{}), done: make(chan struct{}),
		peak: make([]int64, len(pids)), over: make([]bool, len(pids)), errs: make([]string, len(pids)),
	}
	go w.run(every)
	return w
}

func (w *rssWatch) run(every time.Duration) {
	defer close(w.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		w.once()
		select {
		case <-w.quit:
			return
		case <-tick.C:
		}
	}
}

// once takes one sample of every node.
func (w *rssWatch) once() {
	fire := false
	w.mu.Lock()
	w.samples++
	for i, pid := range w.pids {
		rss, err := readRSS(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			w.errs[i] = err.Error() // the node has gone: keep the peak so far
			continue
		}
		w.peak[i] = max(w.peak[i], rss)
		if w.limit > 0 && rss > w.limit && !w.over[i] {
			w.over[i], fire = true, true
		}
	}
	w.mu.Unlock()
	if fire {
		w.onLimit()
	}
}

// stop ends the sampling, takes a last sample and reports each node
// against its RSS in base.
func (w *rssWatch) stop(base Sample) []NodeMemReport {
	close(w.quit)
	<-w.done
	w.once()
	out := make([]NodeMemReport, len(w.pids))
	for i, pid := range w.pids {
		m := NodeMemReport{PID: pid, PeakBytes: w.peak[i], Samples: w.samples, OverLimit: w.over[i], Err: w.errs[i]}
		if i < len(base.Nodes) {
			// The baseline is a sample too: the peak is never below it,
			// even when the node returns memory afterwards.
			m.BaselineBytes = base.Nodes[i].RSSBytes
			m.PeakBytes = max(m.PeakBytes, m.BaselineBytes)
			m.GrowthBytes = m.PeakBytes - m.BaselineBytes
		}
		if hwm, err := readStatusBytes(fmt.Sprintf("/proc/%d/status", pid), "VmHWM"); err == nil {
			m.HWMBytes = hwm
		}
		out[i] = m
	}
	return out
}
