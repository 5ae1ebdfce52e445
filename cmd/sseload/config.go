package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// maxTopicsPerConn matches the node's default SSE_MAX_TOPICS.
const maxTopicsPerConn = 16

// Config is one run, from the command line. Zero values are the defaults
// noted on each flag.
type Config struct {
	URLs          []string      `json:"urls"`
	Clients       int           `json:"clients"`
	Topics        []string      `json:"topics"`
	TopicsPerConn int           `json:"topics_per_conn"`
	Ramp          float64       `json:"ramp_per_s"`
	Src           []string      `json:"src,omitempty"`
	Duration      time.Duration `json:"duration"`
	Rate          float64       `json:"rate_per_topic"`
	Size          int           `json:"size"`
	Event         string        `json:"event,omitempty"`
	Redis         string        `json:"redis,omitempty"`
	Prefix        string        `json:"prefix"`
	MaxLen        int64         `json:"maxlen"`
	PublishURL    string        `json:"publish_url,omitempty"`
	Token         string        `json:"-"`
	PublishToken  string        `json:"-"`
	Retry         time.Duration `json:"retry"`
	ConnectWait   time.Duration `json:"connect_timeout"`
	Drain         time.Duration `json:"drain"`
	BufSize       int           `json:"buf"`
	Idle          bool          `json:"idle"`
	SlowFrac      float64       `json:"slow_frac"`
	SlowRcvBuf    int           `json:"slow_rcvbuf"`
	Churn         int           `json:"churn"`
	ChurnHold     time.Duration `json:"churn_hold"`
	StormEvents   int           `json:"storm_events"`
	StormTimeout  time.Duration `json:"storm_timeout"`
	Check         bool          `json:"check"`
	AllowGaps     bool          `json:"allow_gaps"`
	CPUProfile    string        `json:"-"`
	Out           string        `json:"out,omitempty"`
	Progress      bool          `json:"-"`
	NodePIDs      []int         `json:"node_pids,omitempty"`
	Scrape        []string      `json:"scrape,omitempty"`
	// The memory-budget scenarios (bench M1-M4).
	TopicsN    int           `json:"topics_n,omitempty"`
	Count      int64         `json:"count,omitempty"`
	Preload    int64         `json:"preload,omitempty"`
	FromStart  bool          `json:"from_start,omitempty"`
	Verify     bool          `json:"verify,omitempty"`
	RSSEvery   time.Duration `json:"rss_every"`
	NodeRSSMax int64         `json:"node_rss_max_mib,omitempty"`
}

// maxSize bounds -size: the largest event the memory scenarios send is 50 MiB.
const maxSize = 64 << 20

// target is one node URL, split for writing requests by hand.
type target struct {
	addr string // host:port to dial
	host string // Host header
	path string // request path, /events unless the URL has one
}

// parseFlags reads the command line into a validated Config.
func parseFlags(args []string, stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("sseload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sseload [flags]\n\n"+
			"Opens -n SSE clients to the nodes, publishes at -rate per topic, checks that every\n"+
			"client receives every event once and in order, and writes a JSON report.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var c Config
	var urls, topics, src, pids, scrape string
	fs.StringVar(&urls, "url", "http://127.0.0.1:8080", "node `URLs`, comma-separated; clients are spread round-robin and reconnect to the next one (path defaults to /events)")
	fs.IntVar(&c.Clients, "n", 100, "number of SSE clients")
	fs.StringVar(&topics, "topics", "bench", "topics, comma-separated")
	fs.IntVar(&c.TopicsPerConn, "topics-per-conn", 1, "topics each client subscribes to (client i takes topics i, i+1, ... modulo the list)")
	fs.Float64Var(&c.Ramp, "ramp", 1000, "new connections per second while ramping up (0: all at once)")
	fs.StringVar(&src, "src", "", "local source `IPs` to spread connections over, comma-separated (e.g. 127.0.0.1,127.0.0.2), when ephemeral ports run out")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to publish (or, with -idle, to hold the connections)")
	fs.Float64Var(&c.Rate, "rate", 10, "events per second per topic")
	fs.IntVar(&c.Size, "size", 100, "payload bytes per event")
	fs.StringVar(&c.Event, "event", "", "SSE event type of published events (default: none, i.e. message)")
	fs.StringVar(&c.Redis, "redis", "", "publish with XADD to this Redis `URL` (redis://host:port/db)")
	fs.StringVar(&c.Prefix, "prefix", pubsub.DefaultRedisPrefix, "stream key prefix (SSE_STREAM_PREFIX)")
	fs.Int64Var(&c.MaxLen, "maxlen", 10000, "XADD MAXLEN ~ (0: none)")
	fs.StringVar(&c.PublishURL, "publish-url", "", "publish with POST /publish to this node admin `URL` (embedded mode), e.g. http://127.0.0.1:9090")
	fs.StringVar(&c.Token, "token", "", "bearer token sent with each subscribe (Authorization header), when the nodes require one")
	fs.StringVar(&c.PublishToken, "publish-token", "", "bearer token for POST /publish (SSE_PUBLISH_TOKEN)")
	fs.DurationVar(&c.Retry, "retry", 0, "reconnect delay (0: the server's retry: value, 1s until one is seen)")
	fs.DurationVar(&c.ConnectWait, "connect-timeout", 10*time.Second, "bound on dial plus response headers, and on waiting for the ramp to settle")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "after publishing, how long to wait for every client to catch up")
	fs.IntVar(&c.BufSize, "buf", 4096, "read buffer bytes per connection (longer data lines are read truncated)")
	fs.BoolVar(&c.Idle, "idle", false, "connect the clients, publish nothing, hold them for -duration")
	fs.Float64Var(&c.SlowFrac, "slow-frac", 0, "fraction of clients that stop reading once connected (excluded from the checks)")
	fs.IntVar(&c.SlowRcvBuf, "slow-rcvbuf", 4096, "SO_RCVBUF of slow clients, so they back up quickly (0: system default)")
	fs.IntVar(&c.Churn, "churn", 0, "rounds of connect -n clients, hold -churn-hold, disconnect all (publishing throughout)")
	fs.DurationVar(&c.ChurnHold, "churn-hold", 2*time.Second, "how long each churn round holds its connections")
	fs.IntVar(&c.StormEvents, "storm-events", 0, "after -duration, take every client offline, publish this many events, then reconnect all at once with Last-Event-ID and time the catch-up")
	fs.DurationVar(&c.StormTimeout, "storm-timeout", 30*time.Second, "bound on the reconnect storm's catch-up")
	fs.BoolVar(&c.Check, "check", false, "exit 1 if any event is lost, duplicated, out of order or has the wrong ID, a gap was reported (see -allow-gaps), or a client never connected")
	fs.BoolVar(&c.AllowGaps, "allow-gaps", false, "with -check, accept sse-gap events (reported losses)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the load generator to this `file`")
	fs.StringVar(&c.Out, "out", "", "write the JSON report to this `file` (default stdout)")
	fs.BoolVar(&c.Progress, "progress", true, "print a progress line on stderr every second")
	fs.StringVar(&pids, "node-pid", "", "node process `IDs`, comma-separated: their RSS and CPU time are sampled at each phase")
	fs.StringVar(&scrape, "scrape", "", "node admin `URLs`, comma-separated: their /metrics are sampled at each phase")
	fs.IntVar(&c.TopicsN, "topics-n", 0, "with one -topics name P, use the N topics P-0 ... P-(N-1)")
	fs.Int64Var(&c.Count, "count", 0, "publish at most this many events per topic (0: until -duration ends)")
	fs.Int64Var(&c.Preload, "preload", 0, "before the clients connect, publish this many events per topic as fast as possible; the clients must receive them too with -from-start")
	fs.BoolVar(&c.FromStart, "from-start", false, "first connect with Last-Event-ID 0 and expect every event of the run, preloaded ones included")
	fs.BoolVar(&c.Verify, "verify", false, "check every received payload whole: its size and CRC-32C against what was published")
	fs.DurationVar(&c.RSSEvery, "rss-every", 100*time.Millisecond, "with -node-pid, sample the nodes' RSS this often for the peak (0: off)")
	fs.Int64Var(&c.NodeRSSMax, "node-rss-max-mib", 0, "with -node-pid, end the run (interrupted) when a node's RSS exceeds this many MiB, to protect a shared machine (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("sseload: unexpected arguments %q", fs.Args())
	}
	c.URLs = splitList(urls)
	c.Topics = splitList(topics)
	if c.TopicsN > 0 && len(c.Topics) == 1 {
		c.Topics = numberedTopics(c.Topics[0], c.TopicsN)
	}
	c.Src = splitList(src)
	c.Scrape = splitList(scrape)
	for _, p := range splitList(pids) {
		var pid int
		if _, err := fmt.Sscan(p, &pid); err != nil || pid <= 0 {
			return nil, fmt.Errorf("sseload: -node-pid %q: not a process ID", p)
		}
		c.NodePIDs = append(c.NodePIDs, pid)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// validate checks the config; the errors name the flag.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("sseload: "+format, a...)) }
	if len(c.URLs) == 0 {
		bad("-url: need at least one node URL")
	}
	for _, u := range c.URLs {
		if _, err := parseTarget(u); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Clients <= 0 {
		bad("-n %d: need at least one client", c.Clients)
	}
	if len(c.Topics) == 0 {
		bad("-topics: need at least one topic")
	}
	if c.TopicsN < 0 || (c.TopicsN > 0 && len(c.Topics) != c.TopicsN) {
		bad("-topics-n %d: needs exactly one -topics name", c.TopicsN)
	}
	for _, t := range c.Topics {
		if err := pubsub.ValidateTopic(t); err != nil {
			bad("-topics %q: %w", t, err)
		}
	}
	if c.TopicsPerConn < 1 || c.TopicsPerConn > len(c.Topics) || c.TopicsPerConn > maxTopicsPerConn {
		bad("-topics-per-conn %d: must be 1 to min(%d topics, %d)", c.TopicsPerConn, len(c.Topics), maxTopicsPerConn)
	}
	if c.Ramp < 0 {
		bad("-ramp %v: must not be negative", c.Ramp)
	}
	for _, s := range c.Src {
		if net.ParseIP(s) == nil {
			bad("-src %q: not an IP address", s)
		}
	}
	if c.Duration < 0 {
		bad("-duration %v: must not be negative", c.Duration)
	}
	if c.Size < 0 || c.Size > maxSize {
		bad("-size %d: must be 0 to %d MiB", c.Size, maxSize>>20)
	}
	if err := pubsub.ValidateEvent(c.Event); err != nil {
		bad("-event %q: %v", c.Event, err)
	}
	publishes := !c.Idle
	if publishes {
		if c.Rate <= 0 {
			bad("-rate %v: must be positive (or use -idle)", c.Rate)
		}
		switch {
		case c.Redis == "" && c.PublishURL == "":
			bad("need -redis or -publish-url to publish (or -idle)")
		case c.Redis != "" && c.PublishURL != "":
			bad("-redis and -publish-url: choose one")
		}
	}
	if c.ConnectWait <= 0 {
		bad("-connect-timeout %v: must be positive", c.ConnectWait)
	}
	if c.Drain < 0 || c.Retry < 0 || c.ChurnHold < 0 || c.StormTimeout < 0 {
		bad("durations must not be negative")
	}
	if c.BufSize < 512 || c.BufSize > 1<<20 {
		bad("-buf %d: must be 512 to 1 MiB", c.BufSize)
	}
	if c.SlowFrac < 0 || c.SlowFrac >= 1 {
		bad("-slow-frac %v: must be in [0, 1)", c.SlowFrac)
	}
	if c.Churn < 0 || c.StormEvents < 0 {
		bad("-churn and -storm-events must not be negative")
	}
	if c.Churn > 0 && c.StormEvents > 0 {
		bad("-churn and -storm-events: choose one")
	}
	if c.StormEvents > 0 && (c.Idle || c.SlowFrac > 0) {
		bad("-storm-events cannot be combined with -idle or -slow-frac")
	}
	if c.Count < 0 || c.Preload < 0 || c.Preload > MaxPublished {
		bad("-count and -preload must be 0 to %d", MaxPublished)
	}
	if (c.Preload > 0 || c.Verify) && c.Idle {
		bad("-preload and -verify publish: not with -idle")
	}
	if (c.Preload > 0 || c.FromStart) && c.Churn > 0 {
		bad("-preload and -from-start: not with -churn")
	}
	if c.FromStart && c.StormEvents > 0 {
		bad("-from-start and -storm-events: choose one")
	}
	if c.RSSEvery < 0 || c.NodeRSSMax < 0 {
		bad("-rss-every and -node-rss-max-mib must not be negative")
	}
	if strings.ContainsAny(c.Token, "\r\n") || strings.ContainsAny(c.PublishToken, "\r\n") {
		bad("-token and -publish-token must not hold line breaks")
	}
	if c.Out == "-" {
		c.Out = ""
	}
	return errors.Join(errs...)
}

// numberedTopics is prefix-0 ... prefix-(n-1).
func numberedTopics(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + "-" + strconv.Itoa(i)
	}
	return out
}

// parseTarget splits a node URL. Only plain http:// is spoken: the client
// writes HTTP/1.1 by hand.
func parseTarget(raw string) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("sseload: -url %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return target{}, fmt.Errorf("sseload: -url %q: need http://host:port", raw)
	}
	t := target{host: u.Host, addr: u.Host, path: u.EscapedPath()}
	if u.Port() == "" {
		t.addr = net.JoinHostPort(u.Hostname(), "80")
	}
	if t.path == "" || t.path == "/" {
		t.path = "/events"
	}
	return t, nil
}

// MarshalJSON writes durations as Go duration strings.
func (c *Config) MarshalJSON() ([]byte, error) {
	type plain Config
	return json.Marshal(struct {
		*plain
		Duration     string `json:"duration"`
		Retry        string `json:"retry"`
		ConnectWait  string `json:"connect_timeout"`
		Drain        string `json:"drain"`
		ChurnHold    string `json:"churn_hold"`
		StormTimeout string `json:"storm_timeout"`
		RSSEvery     string `json:"rss_every"`
	}{
		plain:    (*plain)(c),
		Duration: c.Duration.String(), Retry: c.Retry.String(), ConnectWait: c.ConnectWait.String(),
		Drain: c.Drain.String(), ChurnHold: c.ChurnHold.String(), StormTimeout: c.StormTimeout.String(),
		RSSEvery: c.RSSEvery.String(),
	})
}
