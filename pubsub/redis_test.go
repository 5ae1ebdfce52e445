package pubsub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"
)

func TestRedisConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RedisConfig
		wantErr string // substring; "" means valid
		mode    redisMode
		dials   bool // NewRedis dials: wait for go-redis' dial probe to end
	}{
		{name: "url", cfg: RedisConfig{URL: "redis://localhost:6379/2"}, mode: modeSingle},
		{name: "tls url", cfg: RedisConfig{URL: "rediss://u:p@localhost:6380"}, mode: modeSingle},
		// One address is asked whether it is a Cluster node; with nobody
		// there to answer, the mode cannot be told and NewRedis says so.
		{name: "one addr unreachable", cfg: RedisConfig{Addrs: []string{closedAddr(t)}}, wantErr: "cannot ask 127.0.0.1:", dials: true},
		{name: "sentinel", cfg: RedisConfig{Addrs: []string{"s1:26379", "s2:26379"}, MasterName: "m"}, mode: modeFailover},
		{name: "cluster", cfg: RedisConfig{Addrs: []string{"c1:6379", "c2:6379"}}, mode: modeCluster},
		{name: "nothing", cfg: RedisConfig{}, wantErr: "URL or Addrs is required"},
		{name: "both", cfg: RedisConfig{URL: "redis://x", Addrs: []string{"y:1"}}, wantErr: "both set"},
		{name: "bad scheme", cfg: RedisConfig{URL: "http://x"}, wantErr: "URL"},
		{name: "password with slash and colon", cfg: RedisConfig{URL: "redis://u:p@ss/w:rd@localhost:6379/0"}, wantErr: "must be percent-encoded"},
		{name: "password with hash", cfg: RedisConfig{URL: "redis://:pa#ss@localhost:6379"}, wantErr: "must be percent-encoded"},
		{name: "password with question mark", cfg: RedisConfig{URL: "redis://:pa?ss@localhost:6379"}, wantErr: "must be percent-encoded"},
		{name: "password percent-encoded", cfg: RedisConfig{URL: "redis://u:p%40ss%2Fw%3Ard%23@localhost:6379/0"}, mode: modeSingle},
		{name: "master with url", cfg: RedisConfig{URL: "redis://x", MasterName: "m"}, wantErr: "MasterName"},
		{name: "empty addr", cfg: RedisConfig{Addrs: []string{"a:1", ""}}, wantErr: "empty address"},
		{name: "negative maxlen means none", cfg: RedisConfig{URL: "redis://x", MaxLen: -1}, mode: modeSingle},
		{name: "negative maxage", cfg: RedisConfig{URL: "redis://x", MaxAge: -time.Second}, wantErr: "MaxAge"},
		{name: "negative readers", cfg: RedisConfig{URL: "redis://x", Readers: -1}, wantErr: "Readers"},
		{name: "too many readers", cfg: RedisConfig{URL: "redis://x", Readers: 65}, wantErr: "Readers"},
		{name: "block below 1ms", cfg: RedisConfig{URL: "redis://x", Block: 500 * time.Microsecond}, wantErr: "Block"},
		{name: "negative block", cfg: RedisConfig{URL: "redis://x", Block: -time.Second}, wantErr: "Block"},
		{name: "negative count", cfg: RedisConfig{URL: "redis://x", Count: -1}, wantErr: "Count"},
		{name: "replica reads outside Cluster", cfg: RedisConfig{URL: "redis://x", ReadReplicas: true}, wantErr: "ReadReplicas is for Redis Cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.dials {
				defer waitDialersGone(t)
			}
			b, err := NewRedis(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					b.closeIfNotNil()
					t.Fatalf("NewRedis error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if b.mode != tt.mode {
				t.Errorf("mode = %d, want %d", b.mode, tt.mode)
			}
		})
	}
}

// closeIfNotNil lets a failing table case clean up a broker it did not expect.
func (b *Redis) closeIfNotNil() {
	if b != nil {
		_ = b.Close()
	}
}

func TestRedisConfigDefaults(t *testing.T) {
	b, err := NewRedis(RedisConfig{URL: "redis://localhost:6379"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := b.cfg
	if c.Prefix != "sse:" || c.MaxLen != 10000 || c.Readers != 2 || c.Block != 5*time.Second ||
		c.Count != 512 || c.MaxAge != 0 || c.Logger == nil || c.Now == nil {
		t.Fatalf("defaults = %+v", c)
	}
	if len(b.readers) != 2 || b.Prefix() != "sse:" || b.client == nil {
		t.Fatalf("readers %d, prefix %q", len(b.readers), b.Prefix())
	}
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// waitDialersGone waits for go-redis' dial probe goroutines to end. After
// failed dials a pool probes in a goroutine of its own that notices Close
// only after its next one-second sleep: not ours to stop, but goleak in
// TestMain would count it.
func waitDialersGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if !strings.Contains(string(buf[:n]), "pool.(*ConnPool).tryDial") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("go-redis dial probes still running 5s after Close")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisUnreachable: without Redis, commands fail, readers back off and
// report, and Close stops every goroutine (goleak checks in TestMain).
func TestRedisUnreachable(t *testing.T) {
	readErrs := make(chan error, 100)
	b, err := NewRedis(RedisConfig{
		URL:   "redis://" + closedAddr(t),
		Block: 50 * time.Millisecond,
		OnReadError: func(err error) {
			select {
			case readErrs <- err:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Bounded by the context, not by go-redis' retries.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if err := b.Ping(short); err == nil {
		t.Fatal("ping succeeded with no server")
	}
	if _, err := b.Watch(short, "t", 0, 0); err == nil {
		t.Fatal("watch succeeded with no server")
	}
	if err := b.Start(func(string, []Entry) {}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(func(string, []Entry) {}); err == nil {
		t.Fatal("second Start succeeded")
	}
	// Register a topic directly (Watch needs Redis) so a reader reads.
	r := b.readerFor(b.key("t"))
	r.mu.Lock()
	r.topics[b.key("t")] = &watched{topic: "t", key: b.key("t")}
	r.gen++
	r.mu.Unlock()
	b.wakeReader(r)
	select {
	case <-readErrs:
	case <-ctx.Done():
		t.Fatal("no read error reported")
	}
	b.Unwatch("t")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Start(func(string, []Entry) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close = %v", err)
	}
	if _, err := b.Publish(ctx, "t", "", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close = %v", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v", err)
	}
	waitDialersGone(t)
}

func TestRedisCloseWithoutStart(t *testing.T) {
	b, err := NewRedis(RedisConfig{URL: "redis://" + closedAddr(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRedisArgumentChecks(t *testing.T) {
	b, err := NewRedis(RedisConfig{URL: "redis://" + closedAddr(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if _, err := b.Watch(ctx, "bad topic", 0, 0); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Watch bad topic = %v", err)
	}
	if _, err := b.Watch(ctx, "t", -1, 0); err == nil {
		t.Error("Watch negative tail succeeded")
	}
	if _, err := b.Range(ctx, "t", ID{}, 0); err == nil {
		t.Error("Range count 0 succeeded")
	}
	if _, err := b.Info(ctx, ""); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Info empty topic = %v", err)
	}
	for _, event := range []string{"a\nb", "sse-gap"} {
		if _, err := b.Publish(ctx, "t", event, nil); !errors.Is(err, ErrBadEvent) {
			t.Errorf("Publish event %q = %v", event, err)
		}
	}
	if _, err := b.Publish(ctx, "t t", "", nil); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Publish bad topic = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Range(cctx, "t", ID{}, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Range with canceled ctx = %v", err)
	}
}

// entry builds a raw [id, [f, v, ...]] entry as go-redis returns it.
func entry(id string, fields ...any) any { return []any{id, fields} }

func TestRedisDecodeEntries(t *testing.T) {
	tests := []struct {
		name    string
		reply   any
		want    []Entry
		last    string
		bad     []string
		notList bool
	}{
		{
			name:  "plain",
			reply: []any{entry("1-0", "data", "a", "event", "e", "traceparent", "00-abc-def-01"), entry("2-5", "data", "b")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte("a"), Event: "e", TraceParent: "00-abc-def-01"}, {ID: ID{2, 5}, Data: []byte("b")}},
			last:  "2-5",
		},
		{
			name:  "binary data",
			reply: []any{entry("1-0", "data", "\x00\xff\r\n\x01")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte("\x00\xff\r\n\x01")}},
			last:  "1-0",
		},
		{
			name:  "empty data",
			reply: []any{entry("1-0", "data", "")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte{}}},
			last:  "1-0",
		},
		{
			name:  "no data field: sorted JSON of all fields",
			reply: []any{entry("1-0", "z", "1", "a", `q"<>`, "event", "ev")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"a":"q\"<>","event":"ev","z":"1"}`), Event: "ev"}},
			last:  "1-0",
		},
		{
			name:  "no fields at all",
			reply: []any{[]any{"1-0", nil}},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{}`)}},
			last:  "1-0",
		},
		{
			name:  "repeated data: all fields as JSON, repeats as arrays, no event",
			reply: []any{entry("1-0", "data", "one", "data", "two", "event", "x")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"data":["one","two"],"event":"x"}`)}},
			last:  "1-0",
			bad:   []string{BadEntryRepeatedField},
		},
		{
			name:  "repeated event: all fields as JSON, no event",
			reply: []any{entry("1-0", "data", "one", "event", "x", "event", "y")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"data":"one","event":["x","y"]}`)}},
			last:  "1-0",
			bad:   []string{BadEntryRepeatedField},
		},
		{
			name:  "repeated other field and traceparent: data as given, first valid trace",
			reply: []any{entry("1-0", "data", "one", "k", "1", "k", "2", "traceparent", "bad one", "traceparent", "00-a-b-01")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte("one"), TraceParent: "00-a-b-01"}},
			last:  "1-0",
		},
		{
			name:  "bad traceparent dropped, entry kept",
			reply: []any{entry("1-0", "data", "d", "traceparent", "has space")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte("d")}},
			last:  "1-0",
		},
		{
			name:  "event with line break: all fields as JSON, no event",
			reply: []any{entry("1-0", "data", "a", "event", "x\ndata: forged"), entry("2-0", "data", "b")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"data":"a","event":"x\ndata: forged"}`)}, {ID: ID{2, 0}, Data: []byte("b")}},
			last:  "2-0",
			bad:   []string{BadEntryBadEvent},
		},
		{
			name:  "forged server notice: all fields as JSON, no event",
			reply: []any{entry("1-0", "event", "sse-gap", "data", `{"topic":"t"}`)},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"data":"{\"topic\":\"t\"}","event":"sse-gap"}`)}},
			last:  "1-0",
			bad:   []string{BadEntryBadEvent},
		},
		{
			name:  "carriage return in an event of an entry without data",
			reply: []any{entry("1-0", "event", "a\rb", "k", "v")},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte(`{"event":"a\rb","k":"v"}`)}},
			last:  "1-0",
			bad:   []string{BadEntryBadEvent},
		},
		{
			name:  "odd field count",
			reply: []any{entry("1-0", "data", "a", "event"), entry("3-0", "data", "c", "orphan")},
			want:  []Entry{},
			last:  "3-0",
			bad:   []string{BadEntryOddFields, BadEntryOddFields},
		},
		{
			name:  "non-string value",
			reply: []any{entry("1-0", "data", int64(5))},
			want:  []Entry{},
			last:  "1-0",
			bad:   []string{BadEntryMalformed},
		},
		{
			name:  "fields not a list",
			reply: []any{[]any{"1-0", "data"}},
			want:  []Entry{},
			last:  "1-0",
			bad:   []string{BadEntryMalformed},
		},
		{
			name:  "bad id does not move the cursor",
			reply: []any{entry("1-0", "data", "a"), entry("x-1", "data", "b"), []any{"3-0"}},
			want:  []Entry{{ID: ID{1, 0}, Data: []byte("a")}},
			last:  "1-0",
			bad:   []string{BadEntryBadID, BadEntryMalformed},
		},
		{
			name:  "nil reply",
			reply: nil,
			last:  "0-0",
		},
		{
			name:    "not a list",
			reply:   "OK",
			notList: true,
			last:    "0-0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var bad []string
			got, last, n, ok := decodeEntries(tt.reply, func(r string) { bad = append(bad, r) })
			if ok == tt.notList {
				t.Fatalf("ok = %v", ok)
			}
			if l, _ := tt.reply.([]any); n != len(l) {
				t.Errorf("n = %d, want %d", n, len(l))
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || len(got) != len(tt.want) {
				t.Errorf("entries =\n%+v\nwant\n%+v", got, tt.want)
			}
			if last.String() != tt.last {
				t.Errorf("last = %v, want %s", last, tt.last)
			}
			if !slices.Equal(bad, tt.bad) {
				t.Errorf("bad = %q, want %q", bad, tt.bad)
			}
		})
	}
}

// TestRedisDecodeDataIsTheReply: Data is the reply's bulk string itself,
// not a copy (entries are immutable; a payload is held once).
func TestRedisDecodeDataIsTheReply(t *testing.T) {
	v := strings.Repeat("p", 100)
	got, _, _, _ := decodeEntries([]any{entry("1-0", "data", v)}, func(string) {})
	if len(got) != 1 || string(got[0].Data) != v || unsafe.SliceData(got[0].Data) != unsafe.StringData(v) {
		t.Fatal("Data is a copy of the reply, or not its bytes")
	}
	empty, _, _, _ := decodeEntries([]any{entry("2-0", "data", "")}, func(string) {})
	if len(empty) != 1 || empty[0].Data == nil || len(empty[0].Data) != 0 {
		t.Fatalf("empty data decoded as %#v, want an empty non-nil slice", empty)
	}
}

func TestRedisFieldsJSON(t *testing.T) {
	tests := []struct {
		fields []any
		want   string
	}{
		{[]any{}, `{}`},
		{[]any{"b", "2", "a", "1"}, `{"a":"1","b":"2"}`},
		{[]any{"k", "line\nbreak\t\"q\""}, `{"k":"line\nbreak\t\"q\""}`},
		{[]any{"k", "a\xffb", "\xfe", "v"}, `{"k":"a\ufffdb","\ufffd":"v"}`},
		{[]any{"html", "<a href='x'>&</a>"}, `{"html":"<a href='x'>&</a>"}`},
		{[]any{"dup", "first", "dup", "second", "one", "1", "dup", "third"}, `{"dup":["first","second","third"],"one":"1"}`},
	}
	for _, tt := range tests {
		got := fieldsJSON(tt.fields)
		if string(got) != tt.want {
			t.Errorf("fieldsJSON(%q) = %s, want %s", tt.fields, got, tt.want)
		}
		if !json.Valid(got) || !utf8.Valid(got) {
			t.Errorf("fieldsJSON(%q) = %q is not valid JSON", tt.fields, got)
		}
	}
}

func TestRedisDecodeStreams(t *testing.T) {
	entries := []any{entry("1-0", "data", "x")}
	resp2 := []any{[]any{"k1", entries}, []any{"k2", []any{}}}
	resp3 := map[any]any{"k1": entries, "k2": []any{}}
	for name, reply := range map[string]any{"resp2": resp2, "resp3": resp3} {
		got, err := decodeStreams(reply)
		if err != nil || len(got) != 2 || fmt.Sprint(got["k1"]) != fmt.Sprint(entries) {
			t.Errorf("%s: %v, %v", name, got, err)
		}
	}
	for _, bad := range []any{"x", []any{"k"}, []any{[]any{1, entries}}, map[any]any{1: entries}} {
		if _, err := decodeStreams(bad); err == nil {
			t.Errorf("decodeStreams(%v) succeeded", bad)
		}
	}
	if got, err := decodeStreams(nil); err != nil || got != nil {
		t.Errorf("nil reply: %v, %v", got, err)
	}
}

func TestRedisKeySlot(t *testing.T) {
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16 check value = %#x, want 0x31c3", got)
	}
	tests := []struct {
		key  string
		want int
	}{
		{"foo", 12182}, // CLUSTER KEYSLOT foo, from the Redis docs
		{"{user1000}.following", keySlot("user1000")},
		{"{user1000}.followers", keySlot("user1000")},
		{"foo{}{bar}", int(crc16("foo{}{bar}") % 16384)}, // empty tag: whole key
		{"foo{{bar}}zap", keySlot("{bar")},
		{"{sse}:a", keySlot("sse")},
	}
	for _, tt := range tests {
		if got := keySlot(tt.key); got != tt.want {
			t.Errorf("keySlot(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
}

func TestRedisBackoff(t *testing.T) {
	var b backoff
	prevCap := time.Duration(0)
	for i := range 20 {
		d := b.next()
		if d < b.d/2 || d > b.d || b.d > backoffMax || b.d < prevCap {
			t.Fatalf("step %d: delay %v with cap %v", i, d, b.d)
		}
		prevCap = b.d
	}
	if b.d != backoffMax {
		t.Fatalf("cap after 20 steps = %v", b.d)
	}
	b.reset()
	if d := b.next(); d > backoffMin {
		t.Fatalf("after reset: %v", d)
	}
}

func TestRedisPrevID(t *testing.T) {
	for _, tt := range []struct{ in, want ID }{
		{ID{5, 3}, ID{5, 2}},
		{ID{5, 0}, ID{4, ^uint64(0)}},
		{ID{0, 1}, ID{0, 0}},
		{ID{}, ID{}},
	} {
		if got := prevID(tt.in); got != tt.want {
			t.Errorf("prevID(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// fakeRedisErr is an error reply as go-redis types them.
type fakeRedisErr string

func (e fakeRedisErr) Error() string { return string(e) }
func (fakeRedisErr) RedisError()     {}

func TestRedisIsWrongType(t *testing.T) {
	wt := fakeRedisErr("WRONGTYPE Operation against a key holding the wrong kind of value")
	if !isWrongType(wt) || !isWrongType(&readError{err: wt}) || !isWrongType(fmt.Errorf("x: %w", wt)) {
		t.Error("WRONGTYPE reply not recognised")
	}
	if isWrongType(errors.New("WRONGTYPE but not a reply")) || isWrongType(fakeRedisErr("ERR x")) || isWrongType(nil) {
		t.Error("false positive")
	}
	if err := redisErr(wt); !errors.Is(err, ErrWrongType) {
		t.Errorf("redisErr = %v", err)
	}
}

func TestRedisRefused(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fakeRedisErr("ERR unknown command 'CLIENT', with args beginning with: 'UNBLOCK'"), true},
		{fakeRedisErr("ERR unknown subcommand 'UNBLOCK'. Try CLIENT HELP."), true},
		{fakeRedisErr("LOADING Redis is loading the dataset in memory"), false},
		{errors.New("ERR unknown, but not a reply"), false},
		{nil, false},
	} {
		if got := refused(tt.err); got != tt.want {
			t.Errorf("refused(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestRedisLogger: go-redis lines go to slog as structured records, at
// most redisLogBurst per window; the first line of the next window counts
// the ones left out.
func TestRedisLogger(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	now := time.Unix(1000, 0)
	l := newRedisLogger(log, func() time.Time { return now })
	for i := range 20 {
		l.Printf(context.Background(), "pool.go:770: dial %d failed\n", i)
	}
	now = now.Add(redisLogWindow)
	l.Printf(context.Background(), "later")
	var lines []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON record: %q", line)
		}
		lines = append(lines, m)
	}
	if len(lines) != redisLogBurst+1 {
		t.Fatalf("%d records, want %d: %s", len(lines), redisLogBurst+1, buf.String())
	}
	if lines[0]["msg"] != "go-redis" || lines[0]["level"] != "WARN" || lines[0]["line"] != "pool.go:770: dial 0 failed" {
		t.Errorf("first record %v", lines[0])
	}
	last := lines[len(lines)-1]
	if last["suppressed"] != float64(20-redisLogBurst) {
		t.Errorf("last record %v, want suppressed %d", last, 20-redisLogBurst)
	}
}

// TestRedisNeedsReload: the read errors after which a Cluster reader asks
// for a new slot map (the slot may have moved) and those after which it
// must not (the key or the user is at fault, not the map).
func TestRedisNeedsReload(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{fakeRedisErr("MOVED 3999 127.0.0.1:6381"), true},
		{fakeRedisErr("ASK 3999 127.0.0.1:6381"), true},
		{fakeRedisErr("CLUSTERDOWN The cluster is down"), true},
		{fakeRedisErr("TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{fakeRedisErr("LOADING Redis is loading the dataset in memory"), true},
		{fakeRedisErr("READONLY You can't write against a read only replica."), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{fmt.Errorf("xread: %w", io.EOF), true},
		{fakeRedisErr("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{fakeRedisErr("NOPERM this user has no permissions to run the 'xread' command"), false},
	}
	for _, tt := range tests {
		if got := needsReload(tt.err); got != tt.want {
			t.Errorf("needsReload(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestParseCommandStats: CommandCalls reads the calls of each command and
// ignores the other fields and sections.
func TestParseCommandStats(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]int64
	}{
		{"empty", "", map[string]int64{}},
		{"two commands", "# Commandstats\r\ncmdstat_xadd:calls=12,usec=34,usec_per_call=2.83\r\ncmdstat_client|unblock:calls=3,usec=1\r\n",
			map[string]int64{"xadd": 12, "client|unblock": 3}},
		{"other lines", "# Server\r\nredis_version:7.0.15\r\ncmdstat_get:usec=3\r\ncmdstat_bad\r\ncmdstat_set:calls=x\r\n", map[string]int64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseCommandStats(tt.in); !maps.Equal(got, tt.want) {
				t.Errorf("parseCommandStats = %v, want %v", got, tt.want)
			}
		})
	}
}
