package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssecluster/ssecluster/integration/redistest"
	"github.com/ssecluster/ssecluster/pubsub"
	"github.com/ssecluster/ssecluster/replay"
)

// subscriberACL is the least privilege a node needs to serve subscribers
// (README, "Redis ACL"): the read script and what it calls, the readers'
// XREAD, PING for /readyz, CLIENT ID and CLIENT UNBLOCK to wake a blocked
// reader. The handshake (HELLO, AUTH) needs no permission; go-redis
// ignores a refused CLIENT SETINFO.
var subscriberACL = []string{
	"+evalsha_ro", "+eval_ro", "+type", "+xinfo|stream", "+xrange", "+xrevrange",
	"+xread", "+ping", "+client|id", "+client|unblock",
}

// monitor is a MONITOR connection to a Redis: it sees every command that
// clients send, and those scripts run (as client "lua").
type monitor struct {
	conn net.Conn
	rd   *bufio.Reader
}

func startMonitor(t *testing.T, srv *redistest.Server) *monitor {
	t.Helper()
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m := &monitor{conn: conn, rd: bufio.NewReader(conn)}
	if pw, ok := u.User.Password(); ok {
		fmt.Fprintf(conn, "AUTH %s %s\r\n", u.User.Username(), pw)
		m.line(t)
	}
	fmt.Fprintf(conn, "MONITOR\r\n")
	if l := m.line(t); l != "+OK" {
		t.Fatalf("MONITOR: %q", l)
	}
	return m
}

func (m *monitor) line(t *testing.T) string {
	t.Helper()
	_ = m.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := m.rd.ReadString('\n')
	if err != nil {
		t.Fatalf("monitor: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// sent runs f and returns the commands naming key that clients (not
// scripts) sent meanwhile, as MONITOR shows them: each is one round trip.
// An ECHO sent after f marks the end.
func (m *monitor) sent(t *testing.T, srv *redistest.Server, key string, f func()) []string {
	t.Helper()
	f()
	mark := fmt.Sprintf("%s#%d", key, time.Now().UnixNano())
	srv.MustDo(t, "ECHO", mark)
	var cmds []string
	for {
		l := m.line(t)
		switch {
		case strings.Contains(l, mark):
			return cmds
		case strings.Contains(l, `"`+key+`"`) && !strings.Contains(l, " lua]"):
			cmds = append(cmds, l)
		}
	}
}

// TestSourceReads checks the broker's stream reads (Page, Info, Watch's
// tail) on a Redis of the test's own: one round trip each, the state read
// with the entries, read-only so that a Redis out of memory and a
// least-privilege ACL user still serve subscribers.
func TestSourceReads(t *testing.T) {
	// Its own server: the test changes maxmemory and ACL users.
	srv := redistest.Start(t, redistest.WithContainer())
	ctx := ctxT(t)

	t.Run("PageState", func(t *testing.T) {
		b, _ := newBroker(t, srv, nil)
		key := b.Prefix() + "s"
		if p, err := b.Page(ctx, "s", pubsub.ID{}, 10, 0); err != nil || p.Info.Exists || p.Read != 0 {
			t.Fatalf("page of a missing stream = %+v, %v", p, err)
		}
		var ids []pubsub.ID
		for i := range 10 {
			ids = append(ids, xadd(t, srv, key, "data", fmt.Sprint(i)))
		}
		srv.MustDo(t, "XTRIM", key, "MAXLEN", "=", "7") // ids[0..2] trimmed
		srv.MustDo(t, "XDEL", key, ids[5].String())
		// A bad event: delivered as the JSON of its fields, with no event.
		bad := xadd(t, srv, key, "event", "a\nb", "data", "x")
		p, err := b.Page(ctx, "s", ids[3], 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := pubsub.StreamInfo{Exists: true, Length: 7, First: ids[3], Last: bad, MaxDeleted: ids[5]}
		if p.Info != want || !slices.Equal(idsOf(p.Entries), []pubsub.ID{ids[4], ids[6], ids[7], ids[8], ids[9], bad}) ||
			p.Read != 6 || p.Last != bad {
			t.Fatalf("page = entries %v read %d last %v info %+v; want 6 entries, read 6, info %+v",
				idsOf(p.Entries), p.Read, p.Last, p.Info, want)
		}
		if e := p.Entries[5]; e.Event != "" || string(e.Data) != `{"data":"x","event":"a\nb"}` {
			t.Fatalf("bad event entry = %q %q, want the JSON of its fields", e.Event, e.Data)
		}
		// Trimmed only: MaxDeleted bounds the trimmed IDs (Redis records
		// none for trimming).
		srv.MustDo(t, "XTRIM", key, "MAXLEN", "=", "2")
		p, err = b.Page(ctx, "s", pubsub.ID{}, 1, 0)
		if err != nil || p.Info.First != ids[9] || p.Info.MaxDeleted.Less(ids[8]) || !p.Info.MaxDeleted.Less(ids[9]) || p.Read != 1 {
			t.Fatalf("after trim: %+v, %v; want First %v and MaxDeleted in [%v, %v)", p, err, ids[9], ids[8], ids[9])
		}
	})

	t.Run("PageBytes", func(t *testing.T) {
		b, _ := newBroker(t, srv, nil)
		key := b.Prefix() + "pb"
		var ids []pubsub.ID
		for range 10 {
			ids = append(ids, xadd(t, srv, key, "data", strings.Repeat("x", 1000)))
		}
		size := 72 + len("data") + 1000 // the script's measure of each entry
		for _, tt := range []struct {
			name            string
			after           pubsub.ID
			count, maxBytes int
			want            []pubsub.ID
			cut             bool
		}{
			{"stops at the entry reaching the bound", pubsub.ID{}, 10, 3 * size, ids[:3], true},
			{"which is in the page", pubsub.ID{}, 10, 3*size - 1, ids[:3], true},
			{"a bound of two entries", pubsub.ID{}, 10, 2 * size, ids[:2], true},
			{"a bound of five entries", pubsub.ID{}, 10, 5 * size, ids[:5], true},
			{"an entry above the bound is a page alone", ids[0], 10, 1, ids[1:2], true},
			{"full by count first", pubsub.ID{}, 2, 3 * size, ids[:2], false},
			{"the end of the stream", ids[7], 10, 3 * size, ids[8:], false},
			{"far from the bound", pubsub.ID{}, 10, 100 * size, ids, false},
			{"no bound", ids[1], 5, 0, ids[2:7], false},
		} {
			p, err := b.Page(ctx, "pb", tt.after, tt.count, tt.maxBytes)
			if err != nil || !slices.Equal(idsOf(p.Entries), tt.want) || p.Cut != tt.cut || p.Read != len(tt.want) || p.Last != tt.want[len(tt.want)-1] {
				t.Errorf("%s: Page(%v, %d, %d) = %v read %d last %v cut %v, %v; want %v cut %v",
					tt.name, tt.after, tt.count, tt.maxBytes, idsOf(p.Entries), p.Read, p.Last, p.Cut, err, tt.want, tt.cut)
			}
		}
	})

	t.Run("WrongTypeOneRoundTrip", func(t *testing.T) {
		b, _ := newBroker(t, srv, nil)
		if _, err := b.Info(ctx, "warm"); err != nil { // loads the script
			t.Fatal(err)
		}
		key := b.Prefix() + "str"
		srv.MustDo(t, "SET", key, "x")
		mon := startMonitor(t, srv)
		for name, read := range map[string]func() error{
			"Page":  func() error { _, err := b.Page(ctx, "str", pubsub.ID{}, 10, 0); return err },
			"Info":  func() error { _, err := b.Info(ctx, "str"); return err },
			"Watch": func() error { _, err := b.Watch(ctx, "str", 10, 0); return err },
		} {
			n := len(mon.sent(t, srv, key, func() {
				if err := read(); !errors.Is(err, pubsub.ErrWrongType) || !strings.Contains(err.Error(), "type string") {
					t.Errorf("%s of a string key: %v, want ErrWrongType naming the type", name, err)
				}
			}))
			if n != 1 {
				t.Errorf("%s of a string key: %d commands, want 1", name, n)
			}
		}
	})

	t.Run("OutOfMemory", func(t *testing.T) {
		b, _ := newBroker(t, srv, nil)
		key := b.Prefix() + "m"
		var ids []pubsub.ID
		for i := range 5 {
			ids = append(ids, xadd(t, srv, key, "data", fmt.Sprint(i)))
		}
		srv.MustDo(t, "CONFIG", "SET", "maxmemory-policy", "noeviction")
		srv.MustDo(t, "CONFIG", "SET", "maxmemory", "1mb")
		t.Cleanup(func() { srv.MustDo(t, "CONFIG", "SET", "maxmemory", "0") })
		// Fill memory until Redis refuses writes.
		full := false
		for i := 0; i < 1000 && !full; i++ {
			_, err := srv.Do(t, "SET", b.Prefix()+fmt.Sprint("fill", i), strings.Repeat("x", 10000))
			full = err != nil && strings.HasPrefix(err.Error(), "OOM")
		}
		if _, err := srv.Do(t, "XADD", key, "*", "data", "x"); !full || err == nil || !strings.HasPrefix(err.Error(), "OOM") {
			t.Fatalf("Redis still takes writes (full %v, XADD: %v)", full, err)
		}
		// What reads used to be: TYPE and XINFO in MULTI/EXEC, refused now.
		_, txErr := srv.Client(t).TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Type(ctx, key)
			p.XInfoStream(ctx, key)
			return nil
		})
		t.Logf("MULTI/EXEC read out of memory: %v", txErr)
		p, err := b.Page(ctx, "m", ids[1], 10, 0)
		if err != nil || !slices.Equal(idsOf(p.Entries), ids[2:]) || p.Info.Last != ids[4] {
			t.Fatalf("page out of memory: %v %+v, %v", idsOf(p.Entries), p.Info, err)
		}
		if info, err := b.Info(ctx, "m"); err != nil || info.Length != 5 {
			t.Fatalf("info out of memory: %+v, %v", info, err)
		}
		if tail, err := b.Watch(ctx, "m", 3, 0); err != nil || tail.Last != ids[4] || !slices.Equal(idsOf(tail.Entries), ids[2:]) {
			t.Fatalf("watch out of memory: %+v, %v", tail, err)
		}
	})

	t.Run("LeastPrivilegeACL", func(t *testing.T) {
		prefix := redistest.Prefix(t)
		user := "sub" + strings.Trim(prefix, ":")
		args := append([]any{"ACL", "SETUSER", user, "reset", "on", ">pw", "~" + prefix + "*", "-@all"}, toAny(subscriberACL)...)
		srv.MustDo(t, args...)
		t.Cleanup(func() { srv.MustDo(t, "ACL", "DELUSER", user) })
		b, col := newBroker(t, srv, func(c *pubsub.RedisConfig) {
			c.Prefix, c.Username, c.Password = prefix, user, "pw"
		})
		key := prefix + "acl"
		first := xadd(t, srv, key, "data", "0")
		if err := b.Ping(ctx); err != nil {
			t.Fatalf("ping: %v", err)
		}
		tail, err := b.Watch(ctx, "acl", 10, 0)
		if err != nil || tail.Last != first {
			t.Fatalf("watch: %+v, %v", tail, err)
		}
		second := xadd(t, srv, key, "data", "1")
		if got := col.waitEntries(t, "acl", 1, deliverWithin); got[0].ID != second {
			t.Fatalf("delivered %v, want %v", idsOf(got), second)
		}
		if p, err := b.Page(ctx, "acl", pubsub.ID{}, 10, 0); err != nil || len(p.Entries) != 2 {
			t.Fatalf("page: %+v, %v", p, err)
		}
		if _, err := b.Info(ctx, "acl"); err != nil {
			t.Fatalf("info: %v", err)
		}
		// The user may not write: least privilege indeed.
		if _, err := b.Publish(ctx, "acl", "", []byte("x")); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("publish as the subscriber user: %v, want NOPERM", err)
		}
	})
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// TestSourceWindowGapRule runs the replay window over the Redis broker:
// the state each page is read with tells the window of trimming that
// overtakes a slow replay between pages, and of a stream deleted and
// recreated under a node whose ring holds the topic.
func TestSourceWindowGapRule(t *testing.T) {
	srv := redistest.Start(t)
	ctx := ctxT(t)

	t.Run("TrimBetweenPages", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, nil)
		key := b.Prefix() + "slow"
		ids := xaddN(t, srv, key, 100)
		w, err := replay.New(b, replay.Config{PageSize: 10})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		_, err = w.Replay(ctx, "slow", ids[9],
			func(g replay.Gap) error { got = append(got, "gap "+g.Requested.String()); return nil },
			func(e pubsub.Entry) error {
				got = append(got, e.ID.String())
				if e.ID == ids[14] { // the client is slow; the publisher trims meanwhile
					srv.MustDo(t, "XTRIM", key, "MAXLEN", "=", "50")
				}
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, id := range ids[10:20] {
			want = append(want, id.String())
		}
		want = append(want, "gap "+ids[19].String())
		for _, id := range ids[50:] {
			want = append(want, id.String())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("replay after %v:\n got %v\nwant %v", ids[9], got, want)
		}
	})

	t.Run("RecreatedLowerUnderRing", func(t *testing.T) {
		t.Parallel()
		b, _ := newBroker(t, srv, nil)
		key := b.Prefix() + "re"
		for i := range 20 {
			srv.MustDo(t, "XADD", key, fmt.Sprintf("9000000000000-%d", i+1), "data", "old")
		}
		w, err := replay.New(b, replay.Config{RingSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Acquire(ctx, "re"); err != nil {
			t.Fatal(err)
		}
		defer w.Release("re")
		srv.MustDo(t, "DEL", key)
		srv.MustDo(t, "XADD", key, "5-1", "data", "new")
		second := xadd(t, srv, key, "data", "new")
		var got []string
		_, err = w.Replay(ctx, "re", pubsub.ID{Ms: 9000000000000, Seq: 10},
			func(g replay.Gap) error { got = append(got, string(g.AppendJSON(nil))); return nil },
			func(e pubsub.Entry) error { got = append(got, e.ID.String()); return nil })
		if err != nil {
			t.Fatal(err)
		}
		want := []string{`{"topic":"re","requested":"9000000000000-10","oldest":"5-1","reset":true}`, "5-1", second.String()}
		if !slices.Equal(got, want) {
			t.Fatalf("replay on the node with a ring:\n got %v\nwant %v", got, want)
		}
	})
}

// xaddN adds n entries to key and returns their IDs.
func xaddN(t testing.TB, srv *redistest.Server, key string, n int) []pubsub.ID {
	t.Helper()
	ids := make([]pubsub.ID, n)
	for i := range ids {
		ids[i] = xadd(t, srv, key, "data", fmt.Sprint(i))
	}
	return ids
}
