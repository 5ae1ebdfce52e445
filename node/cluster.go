package node

// Cluster membership as the node sees it, and rebalancing (DESIGN
// "Scaling out"). A long-lived stream stays on the node it first reached,
// so a node added to the pool would only get new connections. Each node
// reports its stream count in the membership; one that holds clearly more
// than its share closes the excess gradually, with the jittered retry: of
// drain, and the load balancer spreads the reconnects; resume makes this
// lossless.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ssecluster/ssecluster/pubsub"
)

// Defaults of ClusterConfig's zero fields.
const (
	DefaultRebalanceRate      = 20
	DefaultRebalanceTolerance = 0.10
)

// Disconnect reasons of the cluster's closes.
const (
	reasonRebalance = "rebalance"
	reasonMaxAge    = "max_age"
)

// clusterTick is how often the cluster loop looks at the streams: the shed
// rate is spread over ticks, not sent in one burst per second.
const clusterTick = 100 * time.Millisecond

// Membership is what the node needs of the cluster's registry
// (pubsub.Members).
type Membership interface {
	// ID is this node's member ID.
	ID() string
	// Refresh is how often the view is refreshed.
	Refresh() time.Duration
	// TTL is how long a member that stops refreshing stays listed.
	TTL() time.Duration
	// View is the last refreshed view, when it was taken, and the last
	// refresh's error.
	View() ([]pubsub.Member, time.Time, error)
	// List reads the members now.
	List(ctx context.Context) ([]pubsub.Member, error)
}

// ClusterConfig sets rebalancing and the maximum stream age. Zero values
// mean the documented defaults.
type ClusterConfig struct {
	// NoRebalance turns rebalancing off: the node never closes a stream
	// because it holds more than its share.
	NoRebalance bool
	// RebalanceRate is the most streams closed per second to rebalance;
	// 0 means 20.
	RebalanceRate float64
	// Tolerance is how far above its share (a fraction of it) a node may
	// be before it sheds; 0 means 0.10.
	Tolerance float64
	// MaxStreamAge, when positive, closes every stream older than it
	// (jittered ±10% per stream) the way drain does, so that clients
	// reconnect periodically; 0 keeps streams open for ever.
	MaxStreamAge time.Duration
}

// Cluster runs the node's part of the cluster: its status for the
// membership, GET /cluster, rebalancing and the maximum stream age.
// Create it with NewCluster, then Start it with the membership; Close
// stops it.
type Cluster struct {
	n   *Node
	cfg ClusterConfig // immutable after NewCluster

	shed    *prometheus.CounterVec // by reason
	share   prometheus.Gauge
	members prometheus.Gauge

	mu      sync.Mutex
	m       Membership  // set by Start
	moving  []time.Time // when each recent rebalance close happened, oldest first
	rateAt  time.Time   // deliveries rate: the previous sample
	rateN   float64
	rate    float64
	started bool
	stopped bool

	stop    chan struct{} // closed by Close
	done    chan struct{} // closed when the loop returns
	streams []*stream     // scratch for expire; the loop's alone
}

// NewCluster validates cfg and attaches a cluster to n, whose admin
// listener then serves GET /cluster and /cluster/ui.
func NewCluster(n *Node, cfg ClusterConfig) (*Cluster, error) {
	if cfg.RebalanceRate == 0 {
		cfg.RebalanceRate = DefaultRebalanceRate
	}
	if cfg.Tolerance == 0 {
		cfg.Tolerance = DefaultRebalanceTolerance
	}
	switch {
	case cfg.RebalanceRate < 0 || math.IsNaN(cfg.RebalanceRate) || math.IsInf(cfg.RebalanceRate, 0):
		return nil, fmt.Errorf("node: rebalance rate %v: must be positive", cfg.RebalanceRate)
	case cfg.Tolerance < 0 || cfg.Tolerance >= 1 || math.IsNaN(cfg.Tolerance):
		return nil, fmt.Errorf("node: rebalance tolerance %v: want a fraction in [0, 1)", cfg.Tolerance)
	case cfg.MaxStreamAge < 0:
		return nil, fmt.Errorf("node: max stream age %v: must not be negative", cfg.MaxStreamAge)
	}
	c := &Cluster{
		n:       n,
		cfg:     cfg,
		shed:    newCounterVec("sse_rebalance_shed_total", "Streams this node closed so that they reconnect elsewhere or anew, by reason (rebalance, max_age).", "reason"),
		share:   newGauge("sse_cluster_share", "This node's open streams over its fair share of the cluster's (1: balanced)."),
		members: newGauge("sse_cluster_members", "Live nodes in this node's last membership view."),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.shed.WithLabelValues(reasonRebalance)
	c.shed.WithLabelValues(reasonMaxAge)
	if r := n.cfg.Registerer; r != nil {
		for _, col := range []prometheus.Collector{c.shed, c.share, c.members} {
			if err := r.Register(col); err != nil {
				return nil, fmt.Errorf("node: cluster metrics: %w", err)
			}
		}
	}
	if !n.cluster.CompareAndSwap(nil, c) {
		return nil, errors.New("node: NewCluster called twice for one node")
	}
	return c, nil
}

// Status is this node's changing part of its Member: the membership's
// Status function.
func (c *Cluster) Status(ctx context.Context) pubsub.Member {
	now := time.Now()
	c.mu.Lock()
	moving := c.movingLocked(now)
	delivered := counterValue(c.n.m.delivered)
	if !c.rateAt.IsZero() {
		if dt := now.Sub(c.rateAt).Seconds(); dt > 0 {
			c.rate = (delivered - c.rateN) / dt
		}
	}
	c.rateAt, c.rateN = now, delivered
	rate := c.rate
	c.mu.Unlock()
	return pubsub.Member{
		Streams:          c.n.Connections(),
		Moving:           moving,
		Topics:           c.n.hub.topicCount(),
		DeliveriesPerSec: math.Round(rate*10) / 10,
		Ready:            c.n.Ready(ctx) == nil,
		Draining:         c.n.Draining(),
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// movingWindow is how long a stream closed to rebalance counts as moving:
// its client waits up to twice SSE_RETRY (the jittered retry:), and the
// node it lands on reports it at its next refresh.
func (c *Cluster) movingWindowLocked() time.Duration {
	refresh := time.Duration(0)
	if c.m != nil {
		refresh = c.m.Refresh()
	}
	return 2*c.n.cfg.Retry + refresh + time.Second
}

func (c *Cluster) movingLocked(now time.Time) int {
	cut := now.Add(-c.movingWindowLocked())
	i := 0
	for i < len(c.moving) && c.moving[i].Before(cut) {
		i++
	}
	c.moving = c.moving[i:]
	return len(c.moving)
}

// Start runs the cluster loop over membership m until Close.
func (c *Cluster) Start(m Membership) error {
	if m == nil {
		return errors.New("node: cluster needs a membership")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.stopped {
		return errors.New("node: cluster started twice or after Close")
	}
	c.started, c.m = true, m
	go c.loop()
	return nil
}

// Close stops the cluster loop and waits for it. It is safe to call more
// than once, and without Start.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	started := c.started
	c.mu.Unlock()
	close(c.stop)
	if started {
		<-c.done
	}
	return nil
}

func (c *Cluster) membership() Membership {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

func (c *Cluster) loop() {
	defer close(c.done)
	t := time.NewTicker(clusterTick)
	defer t.Stop()
	var (
		tokens   float64   // rebalance closes allowed now: a bucket refilled at the rate
		since    time.Time // when the current wave of shedding began; zero when idle
		excess   time.Time // since when this node has been above its share; zero when not
		lastWant time.Time
		lastAge  time.Time // the last look at stream ages; the first is at once
	)
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			want, above, at := c.rebalanceWant(now)
			if !above {
				excess = time.Time{}
			} else if excess.IsZero() {
				excess = now
			}
			// This node's count is live, the others' are up to a refresh
			// old: a burst of connects to every node at once looks like
			// an excess here until they report it. Act only on a view
			// read a refresh after the excess began, in which every node's
			// count is newer than it.
			if want > 0 && at.Before(excess.Add(c.membership().Refresh())) {
				want = 0
				lastWant = now // a wave that is waiting stays one wave
			}
			if want == 0 {
				if !since.IsZero() && now.Sub(lastWant) > slowStartReset {
					since, tokens = time.Time{}, 0
				}
			} else {
				if since.IsZero() {
					since = now
				}
				lastWant = now
				rate := slowStart(c.cfg.RebalanceRate, now.Sub(since))
				tokens = min(tokens+rate*clusterTick.Seconds(), max(1, rate))
				tokens -= float64(c.shedNow(now, min(want, int(tokens))))
			}
			if c.cfg.MaxStreamAge > 0 && now.Sub(lastAge) >= time.Second {
				lastAge = now
				c.expire(now)
			}
		}
	}
}

// Slow start: a wave of shedding begins at 1/16 of the rate and doubles
// every second. A node that just joined is in the membership before the
// load balancer sends it anything (its health checks must pass first);
// streams closed meanwhile reconnect to the old nodes and must be shed
// again, so the first second sheds few.
const (
	slowStartFactor = 16
	slowStartReset  = 5 * time.Second // idle this long: the next wave starts slow again
)

func slowStart(rate float64, d time.Duration) float64 {
	return rate * min(1, math.Exp2(d.Seconds())/slowStartFactor)
}

// rebalanceWant is how many streams this node should shed now (0 when it
// holds no more than its share, or must not shed), whether it holds more
// than its share (or is still moving streams it shed), and when the
// membership view it judged by was read.
func (c *Cluster) rebalanceWant(now time.Time) (want int, above bool, at time.Time) {
	m := c.membership()
	view, at, err := m.View()
	c.members.Set(float64(len(view)))
	c.mu.Lock()
	moving := c.movingLocked(now)
	c.mu.Unlock()
	mine := c.n.Connections()
	p := plan{
		self: m.ID(), mine: mine, moving: moving, tolerance: c.cfg.Tolerance,
		// Older than two refreshes: Redis or this node is in trouble, and
		// counts that old may be far off.
		stale: err != nil || now.Sub(at) > 2*m.Refresh(),
	}
	want, share := p.excess(view)
	if share > 0 {
		c.share.Set(float64(mine) / share)
	}
	if c.cfg.NoRebalance || c.n.Draining() {
		return 0, false, at
	}
	// Streams this node shed and that are still moving count twice in
	// the share once their new node reports them: still the same wave.
	return want, share > 0 && (float64(mine) > share || moving > 0), at
}

// shedNow closes k streams chosen at random and returns how many it closed.
func (c *Cluster) shedNow(now time.Time, k int) int {
	if k <= 0 {
		return 0
	}
	k = c.n.shedRandom(k, reasonRebalance)
	c.shed.WithLabelValues(reasonRebalance).Add(float64(k))
	c.mu.Lock()
	for range k {
		c.moving = append(c.moving, now)
	}
	c.mu.Unlock()
	return k
}

// plan decides how many streams a node sheds, from the membership view
// and the node's own live counts.
type plan struct {
	self      string
	mine      int // this node's open streams, now
	moving    int // streams this node closed lately that are reconnecting
	tolerance float64
	stale     bool // the view is too old to act on
}

// excess returns how many streams this node should shed now (0 when it
// must not) and the fair share of streams per node (0 when unknown).
//
// The share counts the streams moving between nodes (closed, not yet
// reconnected), so that it does not dip while streams are in flight. A
// node sheds only while it is above its share by more than the tolerance,
// or above its share while another node is below it by more than the
// tolerance; never below its share, and never more than the nodes under
// their share still miss (less what is already moving), split among the
// nodes above it in proportion to their excess. It never sheds while a
// node is draining or not ready, or while the view is stale or lacks it.
func (p plan) excess(view []pubsub.Member) (want int, share float64) {
	var total float64
	found := false
	for _, m := range view {
		s, mv := m.Streams, m.Moving
		if m.ID == p.self {
			s, mv, found = p.mine, p.moving, true
		}
		total += float64(s + mv)
	}
	if !found || len(view) == 0 {
		return 0, 0
	}
	share = total / float64(len(view))
	if p.stale {
		return 0, share
	}
	var deficit, surplus float64
	under := false
	for _, m := range view {
		s, mv := float64(m.Streams), float64(m.Moving)
		if m.ID == p.self {
			s, mv = float64(p.mine), float64(p.moving)
		} else if m.Draining || !m.Ready {
			return 0, share
		}
		// What is already moving fills the deficit before anyone sheds more.
		deficit += max(0, share-s) - mv
		surplus += max(0, s-share)
		under = under || s < share*(1-p.tolerance)
	}
	mine := float64(p.mine)
	if mine <= share || deficit <= 0 || (mine <= share*(1+p.tolerance) && !under) {
		return 0, share
	}
	own := mine - math.Ceil(share) // never below the share
	quota := math.Ceil(deficit * (mine - share) / surplus)
	return int(max(0, min(own, quota))), share
}

// expire closes the streams older than their jittered maximum age, on
// every driver.
func (c *Cluster) expire(now time.Time) {
	c.streams = c.n.streams.all(c.streams[:0])
	k := 0
	for _, s := range c.streams {
		switch {
		case s.ageLimit.IsZero():
			// First seen now (within a second of its start): its own
			// age limit, ±10%, so that streams opened together do not all
			// reconnect together.
			jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(c.cfg.MaxStreamAge))
			s.ageLimit = now.Add(c.cfg.MaxStreamAge + jitter)
		case now.After(s.ageLimit) && s.positioned.Load() && c.n.closeStream(s, reasonMaxAge):
			// Not before it holds a position (see shedRandom).
			k++
		}
	}
	clear(c.streams)
	c.shed.WithLabelValues(reasonMaxAge).Add(float64(k))
}

// shedRandom closes up to k streams chosen at random, on every driver, and
// returns how many it closed. Only positioned streams are closed
// (stream.positioned): one that has not been sent anything yet would come
// back without a position and miss what is published meanwhile.
func (n *Node) shedRandom(k int, reason string) int {
	if k <= 0 {
		return 0
	}
	closed := 0
	for _, c := range n.streams.sample(k) {
		if n.closeStream(c, reason) {
			closed++
		}
	}
	return closed
}

// topicCount is the number of topics with a local subscriber.
func (h *hub) topicCount() int {
	k := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		k += len(s.topics)
		s.mu.RUnlock()
	}
	return k
}
