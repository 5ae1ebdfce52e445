package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runner is one load run: the shared state every client reads, the
// counters they add to, and the controller's phases. Fields above the
// atomics are immutable once run starts.
type runner struct {
	cfg         *Config
	run         uint64 // nonce in every payload of this run
	targets     []target
	logs        []*pubLog // per topic
	sums        *sumLog   // with -verify
	pub         publisher
	dialers     []*net.Dialer
	slowDialers []*net.Dialer
	http        *http.Client // for -scrape
	start       time.Time
	stderr      io.Writer

	lat    Histogram // publish to receive
	resume Histogram // stream lost to stream reopened
	tot    totals

	attempts, ok, failedDial, failedStatus, failedProto atomic.Int64
	reconnects, disconnects, connsOpen                  atomic.Int64
	published, pubErrors                                atomic.Int64

	// gate, when set, holds clients offline until it is closed (storm).
	gate atomic.Pointer[chan struct{}]

	samples []Sample // controller only
}

func newRunner(cfg *Config, stderr io.Writer) (*runner, error) {
	r := &runner{
		cfg:    cfg,
		run:    rand.Uint64() >> 1,
		http:   &http.Client{Timeout: 5 * time.Second},
		stderr: stderr,
	}
	for _, u := range cfg.URLs {
		t, err := parseTarget(u)
		if err != nil {
			return nil, err
		}
		r.targets = append(r.targets, t)
	}
	for range cfg.Topics {
		r.logs = append(r.logs, new(pubLog))
	}
	srcs := cfg.Src
	if len(srcs) == 0 {
		srcs = []string{""}
	}
	for _, s := range srcs {
		r.dialers = append(r.dialers, newDialer(s, 0))
		r.slowDialers = append(r.slowDialers, newDialer(s, cfg.SlowRcvBuf))
	}
	if !cfg.Idle {
		var err error
		if cfg.Redis != "" {
			r.pub, err = newRedisPublisher(cfg.Redis, cfg.Prefix, cfg.Event, cfg.MaxLen)
		} else {
			r.pub = newHTTPPublisher(cfg.PublishURL, cfg.Event, cfg.PublishToken)
		}
		if err != nil {
			return nil, err
		}
		if cfg.Verify {
			r.sums = new(sumLog)
		}
	}
	return r, nil
}

func newDialer(src string, rcvbuf int) *net.Dialer {
	d := &net.Dialer{KeepAlive: -1, Control: dialControl(src != "", rcvbuf)}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return d
}

func (r *runner) dialer(c *client) *net.Dialer {
	ds := r.dialers
	if c.slow {
		ds = r.slowDialers
	}
	return ds[c.idx%len(ds)]
}

// waitGate holds a client while the gate is set. waited says it was held;
// ok is false when the client must end instead.
func (r *runner) waitGate(ctx context.Context, done <-chan struct{}) (waited, ok bool) {
	g := r.gate.Load()
	if g == nil {
		return false, ctx.Err() == nil
	}
	select {
	case <-*g:
		return true, ctx.Err() == nil
	case <-ctx.Done():
	case <-done:
	}
	return true, false
}

// group is a set of clients started together and stopped together.
type group struct {
	clients []*client
	done    chan struct{}
	wg      sync.WaitGroup
}

// isSlow spreads a fraction of slow clients evenly over the indices.
func isSlow(i int, frac float64) bool {
	return frac > 0 && math.Floor(float64(i+1)*frac) > math.Floor(float64(i)*frac)
}

// startGroup creates n clients numbered from base and starts them at the
// ramp rate. It returns when all are started or ctx ends.
func (r *runner) startGroup(ctx context.Context, n, base int) *group {
	g := &group{done: make(chan struct{}), clients: make([]*client, n)}
	k := r.cfg.TopicsPerConn
	for i := range g.clients {
		c := &client{r: r, idx: base + i, done: g.done, retry: defaultRetry,
			slow: isSlow(base+i, r.cfg.SlowFrac), topics: make([]int, k), slots: make([]slot, k)}
		for j := range k {
			c.topics[j] = (base + i + j) % len(r.cfg.Topics)
			c.slots[j] = newSlot(r.logs[c.topics[j]])
		}
		if r.cfg.FromStart {
			// EventSource's Last-Event-ID: one position per topic.
			c.lastID = []byte(strings.Repeat(",0", k)[1:])
		}
		c.urlIdx = (base + i) % len(r.targets)
		c.flushF = c.flush
		g.clients[i] = c
	}
	start := time.Now()
	for i, c := range g.clients {
		if r.cfg.Ramp > 0 {
			at := start.Add(time.Duration(float64(i) / r.cfg.Ramp * float64(time.Second)))
			if !sleepCtx(ctx, nil, time.Until(at)) {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			c.run(ctx)
		}()
	}
	return g
}

// stop ends every client of the group and waits for them.
func (g *group) stop() {
	for _, c := range g.clients {
		c.stop()
	}
	close(g.done)
	g.wg.Wait()
}

// waitConnected polls until every client has opened a stream or given up,
// or timeout passes. It returns how many have opened.
func (r *runner) waitConnected(ctx context.Context, g *group, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		opened, settled := 0, 0
		for _, c := range g.clients {
			if c.opened.Load() {
				opened++
				settled++
			} else if c.permanent.Load() {
				settled++
			}
		}
		if settled == len(g.clients) || time.Now().After(deadline) || !sleepCtx(ctx, nil, 20*time.Millisecond) {
			return opened
		}
	}
}

// finals is, per topic, the last seq every subscriber must receive.
func (r *runner) finals() []int64 {
	f := make([]int64, len(r.logs))
	for i, l := range r.logs {
		f[i] = l.lastGood()
	}
	return f
}

// checked reports whether c's deliveries are checked: it reads, and it
// has a baseline.
func (c *client) checked() bool { return !c.slow && c.opened.Load() && !c.permanent.Load() }

func (c *client) caughtUp(finals []int64) bool {
	for k, ti := range c.topics {
		if c.slots[k].last.Load() < finals[ti] {
			return false
		}
	}
	return true
}

// waitCaughtUp polls until every checked client has received everything up
// to finals, or timeout passes. It returns how long each client took, as
// seen by the polls (5 ms apart), and whether all made it.
func (r *runner) waitCaughtUp(ctx context.Context, g *group, finals []int64, timeout time.Duration) (times []time.Duration, all bool) {
	start := time.Now()
	deadline := start.Add(timeout)
	pending := make([]*client, 0, len(g.clients))
	for _, c := range g.clients {
		if c.checked() {
			pending = append(pending, c)
		}
	}
	for {
		now := time.Since(start)
		left := pending[:0]
		for _, c := range pending {
			if c.caughtUp(finals) {
				times = append(times, now)
			} else {
				left = append(left, c)
			}
		}
		pending = left
		if len(pending) == 0 {
			return times, true
		}
		if time.Now().After(deadline) || !sleepCtx(ctx, nil, 5*time.Millisecond) {
			return times, false
		}
	}
}

// publishAll runs one publishLoop per topic and waits for them.
func (r *runner) publishAll(ctx context.Context, stop <-chan struct{}, rate float64, count int64, until time.Time) []pubStats {
	stats := make([]pubStats, len(r.cfg.Topics))
	pub := r.pub
	if r.sums != nil {
		pub = &summingPublisher{publisher: r.pub, log: r.sums}
	}
	var wg sync.WaitGroup
	for i, t := range r.cfg.Topics {
		wg.Go(func() {
			stats[i] = publishLoop(ctx, stop, pub, r.logs[i], t, i, r.run, rate, r.cfg.Size, count, until)
			r.published.Add(stats[i].sent)
			r.pubErrors.Add(stats[i].errors)
		})
	}
	wg.Wait()
	return stats
}

// progress prints one line a second on stderr until ctx ends.
func (r *runner) progress(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tty := false
	if f, ok := r.stderr.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	var prev int64
	prevT := time.Now()
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(r.stderr)
			}
			return
		case now := <-tick.C:
			t := r.tot.load()
			rate := float64(t.deliveries-prev) / now.Sub(prevT).Seconds()
			prev, prevT = t.deliveries, now
			var pubs int64
			for _, l := range r.logs {
				pubs += l.done.Load()
			}
			line := fmt.Sprintf("[%5.0fs] conns %d  ev/s %.0f  deliv %d  p99 %.2fms  pub %d  lost %d dup %d ooo %d gaps %d  reconn %d fail %d",
				time.Since(r.start).Seconds(), r.connsOpen.Load(), rate, t.deliveries,
				ms(r.lat.Snapshot().Quantile(0.99)), pubs, t.lost, t.dup, t.ooo, t.gaps,
				r.reconnects.Load(), r.failedDial.Load()+r.failedStatus.Load()+r.failedProto.Load())
			if tty {
				fmt.Fprintf(r.stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(r.stderr, line)
			}
		}
	}
}

// runBound is a hard limit on the whole run, from the flags.
func runBound(cfg *Config) time.Duration {
	ramp := time.Duration(0)
	if cfg.Ramp > 0 {
		ramp = time.Duration(float64(cfg.Clients) / cfg.Ramp * float64(time.Second))
	}
	phase := ramp + 2*cfg.ConnectWait
	d := phase + cfg.Duration + cfg.Drain + 2*cfg.StormTimeout + time.Minute
	if cfg.Preload > 0 {
		d += preloadTimeout
	}
	if cfg.Churn > 0 {
		d += time.Duration(cfg.Churn) * (phase + cfg.ChurnHold)
	}
	return d
}

// run performs the whole run and returns its report. An interrupted run
// (ctx cancelled) still reports, marked interrupted.
func run(ctx context.Context, cfg *Config, stderr io.Writer) (*Report, error) {
	r, err := newRunner(cfg, stderr)
	if err != nil {
		return nil, err
	}
	if r.pub != nil {
		defer r.pub.close()
	}
	defer r.http.CloseIdleConnections()
	outer := ctx
	ctx, cancel := context.WithTimeout(ctx, runBound(cfg))
	defer cancel()

	r.start = time.Now()
	rep := &Report{Config: cfg, Run: r.run, Start: r.start}
	var progWG sync.WaitGroup
	progCtx, stopProgress := context.WithCancel(ctx)
	if cfg.Progress {
		progWG.Go(func() { r.progress(progCtx) })
	}
	defer func() {
		stopProgress()
		progWG.Wait()
	}()

	rp, _ := r.pub.(*redisPublisher)
	var cmdBefore map[string]int64
	if rp != nil {
		cmdBefore, _ = rp.commandStats(ctx)
	}
	base := r.sample(ctx, "baseline", true)
	var watch *rssWatch
	if len(cfg.NodePIDs) > 0 && cfg.RSSEvery > 0 {
		watch = startRSSWatch(cfg.NodePIDs, cfg.RSSEvery, cfg.NodeRSSMax<<20, cancel)
	}

	if cfg.Churn > 0 {
		r.churn(ctx, rep)
	} else {
		r.steady(ctx, rep, base)
	}

	if rp != nil && cmdBefore != nil {
		if after, err := rp.commandStats(context.WithoutCancel(ctx)); err == nil {
			rep.RedisCommands = diffCommands(cmdBefore, after)
		}
	}
	if watch != nil {
		rep.NodeMemory = watch.stop(base)
	}
	rep.Interrupted = outer.Err() != nil || ctx.Err() != nil
	rep.finish(r)
	return rep, nil
}

// steady is the default mode: ramp up, publish for the duration (or hold,
// with -idle), optionally a reconnect storm, drain, check.
func (r *runner) steady(ctx context.Context, rep *Report, base Sample) {
	cfg := r.cfg
	if cfg.Preload > 0 {
		r.preload(ctx, rep)
	}
	g := r.startGroup(ctx, cfg.Clients, 0)
	rep.Connections.RampSeconds = time.Since(r.start).Seconds()
	r.waitConnected(ctx, g, cfg.ConnectWait)
	conn := r.sample(ctx, "connected", true)
	if n := conn.ConnsOpen; n > 0 {
		per := perConn(base, conn, n)
		rep.PerConn = &per
	}

	var finals []int64
	if cfg.Idle {
		sleepCtx(ctx, nil, cfg.Duration)
		r.sample(ctx, "end", false)
	} else {
		pubStart := time.Now()
		r.publishAll(ctx, nil, cfg.Rate, cfg.Count, pubStart.Add(cfg.Duration))
		rep.PublishSeconds = time.Since(pubStart).Seconds()
		pubEnd := r.sample(ctx, "published", false)
		rep.Phase = phaseCPU(conn, pubEnd)
		if cfg.StormEvents > 0 && ctx.Err() == nil {
			rep.Storm = r.storm(ctx, g)
		}
		finals = r.finals()
		drainStart := time.Now()
		_, all := r.waitCaughtUp(ctx, g, finals, cfg.Drain)
		rep.DrainSeconds = time.Since(drainStart).Seconds()
		rep.DrainComplete = all
		r.sample(ctx, "end", false)
	}
	rep.Connections.OpenAtEnd = r.connsOpen.Load()
	g.stop()
	rep.countClients(g)
	var t tally
	for _, c := range g.clients {
		for k, ti := range c.topics {
			if !cfg.Idle && ctx.Err() == nil && c.checked() {
				// What every checked client still misses is lost.
				c.slots[k].tail(&t, finals[ti])
			} else {
				c.slots[k].finish(&t)
			}
		}
	}
	r.tot.add(&t)
}

// preloadTimeout bounds -preload.
const preloadTimeout = 2 * time.Minute

// preload publishes cfg.Preload events per topic back to back before any
// client connects: a stream to resume from (-from-start).
func (r *runner) preload(ctx context.Context, rep *Report) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, preloadTimeout)
	defer cancel()
	for _, st := range r.publishAll(pctx, nil, 0, r.cfg.Preload, time.Time{}) {
		rep.Preloaded += st.sent
	}
	rep.PreloadSeconds = time.Since(start).Seconds()
	r.sample(ctx, "preloaded", false)
}

// storm takes every client offline, publishes StormEvents per topic, then
// lets all reconnect at once with their Last-Event-ID and times the catch-up.
func (r *runner) storm(ctx context.Context, g *group) *StormReport {
	cfg := r.cfg
	st := &StormReport{Events: cfg.StormEvents}
	ch := make(chan struct{})
	r.gate.Store(&ch)
	for _, c := range g.clients {
		c.closeConn()
	}
	deadline := time.Now().Add(cfg.StormTimeout)
	for r.connsOpen.Load() > 0 && time.Now().Before(deadline) && sleepCtx(ctx, nil, 5*time.Millisecond) {
	}
	st.OfflineConns = r.connsOpen.Load() // should be 0
	rp, _ := r.pub.(*redisPublisher)
	var before map[string]int64
	r.publishAll(ctx, nil, 0, int64(cfg.StormEvents), time.Time{})
	if rp != nil {
		before, _ = rp.commandStats(ctx)
	}
	r.sample(ctx, "storm-offline", false)
	reconnBefore := r.reconnects.Load()
	finals := r.finals()
	start := time.Now()
	r.gate.Store(nil)
	close(ch)
	times, all := r.waitCaughtUp(ctx, g, finals, cfg.StormTimeout)
	st.Seconds = time.Since(start).Seconds()
	st.Complete = all
	st.Reconnected = r.reconnects.Load() - reconnBefore
	for _, c := range g.clients {
		if c.checked() {
			st.Clients++
		}
	}
	st.CaughtUp = len(times)
	if len(times) > 0 {
		slices.Sort(times)
		q := func(p float64) float64 {
			i := min(int(math.Ceil(p*float64(len(times))))-1, len(times)-1)
			return ms(times[max(i, 0)])
		}
		st.P50ms, st.P99ms, st.MaxMs = q(0.5), q(0.99), ms(times[len(times)-1])
	}
	if rp != nil && before != nil {
		if after, err := rp.commandStats(ctx); err == nil {
			st.RedisCommands = diffCommands(before, after)
		}
	}
	r.sample(ctx, "storm-caught-up", false)
	return st
}

// churn connects and disconnects the clients cfg.Churn times while
// publishing (unless -idle), sampling after each connect and disconnect.
func (r *runner) churn(ctx context.Context, rep *Report) {
	cfg := r.cfg
	stopPub := make(chan struct{})
	var pubWG sync.WaitGroup
	if !cfg.Idle {
		pubWG.Go(func() { r.publishAll(ctx, stopPub, cfg.Rate, 0, time.Time{}) })
	}
	pubStart := time.Now()
	for round := range cfg.Churn {
		if ctx.Err() != nil {
			break
		}
		rs := RoundReport{Round: round + 1}
		t0 := time.Now()
		g := r.startGroup(ctx, cfg.Clients, round*cfg.Clients)
		rs.Opened = r.waitConnected(ctx, g, cfg.ConnectWait)
		rs.ConnectSeconds = time.Since(t0).Seconds()
		rs.Connected = r.sample(ctx, fmt.Sprintf("round-%d-connected", round+1), false)
		sleepCtx(ctx, nil, cfg.ChurnHold)
		g.stop()
		rep.countClients(g)
		r.settleLogs(ctx)
		var t tally
		for _, c := range g.clients {
			for k := range c.slots {
				c.slots[k].finish(&t)
			}
		}
		r.tot.add(&t)
		rs.Closed = r.sample(ctx, fmt.Sprintf("round-%d-closed", round+1), true)
		rep.Churn = append(rep.Churn, rs)
	}
	close(stopPub)
	pubWG.Wait()
	rep.PublishSeconds = time.Since(pubStart).Seconds()
	r.sample(ctx, "end", false)
}

// settleLogs waits (up to a second) for the publishes in flight to be
// recorded, so that stopped clients can compare their last IDs.
func (r *runner) settleLogs(ctx context.Context) {
	deadline := time.Now().Add(time.Second)
	for _, l := range r.logs {
		want := l.started.Load()
		for l.done.Load() < want && time.Now().Before(deadline) && sleepCtx(ctx, nil, time.Millisecond) {
		}
	}
}

func diffCommands(before, after map[string]int64) map[string]int64 {
	d := make(map[string]int64)
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	return d
}
