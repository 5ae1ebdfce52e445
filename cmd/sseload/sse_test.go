package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// newTestClient is a client of topics (indices into names) with a
// published log of n events per topic, opened at baseline 0.
func newTestClient(names []string, topics []int, n int) *client {
	r := &runner{cfg: &Config{Topics: names}, run: 42}
	for range names {
		log := new(pubLog)
		for range n {
			seq, _ := log.begin()
			log.record(seq, idOf(seq))
		}
		r.logs = append(r.logs, log)
	}
	c := &client{r: r, topics: topics, slots: make([]slot, len(topics)), retry: defaultRetry}
	for k, ti := range topics {
		c.slots[k] = newSlot(r.logs[ti])
		c.slots[k].last.Store(-1)
	}
	c.flushF = func() {}
	return c
}

func data(topic, seq int64) string {
	return "data: " + string(appendPayload(nil, payload{run: 42, topic: topic, seq: seq, ts: time.Now().UnixNano()}, 0)) + "\n"
}

func TestReadEvents(t *testing.T) {
	a0, a1, a2 := idOf(0).String(), idOf(1).String(), idOf(2).String()
	tests := []struct {
		name   string
		topics []int
		stream string
		want   tally
		lastID string
		retry  time.Duration
	}{
		{
			name:   "in order",
			topics: []int{0},
			stream: "retry: 1500\n: ok\n\nid: " + a0 + "\n" + data(0, 0) + "\nid: " + a1 + "\n" + data(0, 1) + "\n",
			want:   tally{deliveries: 2}, lastID: a1, retry: 1500 * time.Millisecond,
		},
		{
			name:   "CRLF, no space after colon, event type, heartbeat",
			topics: []int{0},
			stream: ":hb\r\nevent: tick\r\nid:" + a0 + "\r\n" + strings.TrimSuffix(data(0, 0), "\n") + "\r\n\r\n",
			want:   tally{deliveries: 1}, lastID: a0, retry: defaultRetry,
		},
		{
			name:   "multi-topic composite IDs",
			topics: []int{0, 1},
			stream: "id: " + a0 + "," + a0 + "\n" + data(0, 0) + "\n" +
				"id: " + a0 + "," + a0 + "\n" + data(1, 0) + "\n" +
				"id: " + a1 + "," + a0 + "\n" + data(0, 1) + "\n" +
				"id: " + a1 + "," + a1 + "\n" + data(1, 1) + "\n",
			want: tally{deliveries: 4}, lastID: a1 + "," + a1, retry: defaultRetry,
		},
		{
			name:   "ID of the wrong topic part",
			topics: []int{0, 1},
			stream: "id: " + a0 + "," + a2 + "\n" + data(1, 0) + "\n",
			want:   tally{deliveries: 1, mismatch: 1}, lastID: a0 + "," + a2, retry: defaultRetry,
		},
		{
			name:   "lost and duplicated",
			topics: []int{0},
			stream: "id: " + a0 + "\n" + data(0, 0) + "\nid: " + a2 + "\n" + data(0, 2) + "\nid: " + a2 + "\n" + data(0, 2) + "\n",
			want:   tally{deliveries: 3, lost: 1, dup: 1}, lastID: a2, retry: defaultRetry,
		},
		{
			name:   "sse-gap then a jump",
			topics: []int{0, 1},
			stream: "event: sse-gap\ndata: {\"topic\":\"b\",\"requested\":\"1-0\",\"oldest\":\"5-0\"}\n\n" +
				"id: " + a0 + "," + a2 + "\n" + data(1, 2) + "\n" +
				"id: " + a2 + "," + a2 + "\n" + data(0, 2) + "\n",
			want: tally{deliveries: 2, gaps: 1, gapLost: 2, lost: 2}, lastID: a2 + "," + a2, retry: defaultRetry,
		},
		{
			name:   "foreign events: other payloads, other runs, other topics",
			topics: []int{0},
			stream: "id: 1-0\ndata: hello\n\n" +
				"id: 1-1\ndata: {\"r\":7,\"t\":0,\"seq\":0,\"ts\":1}\n\n" +
				"id: 1-2\n" + data(1, 0) + "\n",
			want: tally{foreign: 3}, lastID: "1-2", retry: defaultRetry,
		},
		{
			name:   "id without data updates the last ID only; extra data lines ignored",
			topics: []int{0},
			stream: "id: " + a0 + "\n" + data(0, 0) + "data: second line\n\nid: " + a1 + "\n\n",
			want:   tally{deliveries: 1}, lastID: a1, retry: defaultRetry,
		},
		{
			name:   "unterminated last event is not dispatched, and its ID is not the last event ID",
			topics: []int{0},
			stream: "id: " + a0 + "\n" + data(0, 0) + "\nid: " + a1 + "\n" + data(0, 1),
			want:   tally{deliveries: 1}, lastID: a0, retry: defaultRetry,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient([]string{"a", "b"}, tt.topics, 3)
			c.lr = newLineReader(strings.NewReader(tt.stream), 4096)
			if err := c.readEvents(); err != io.EOF {
				t.Fatalf("readEvents = %v, want EOF", err)
			}
			if c.t != tt.want {
				t.Errorf("tally = %+v\nwant    %+v", c.t, tt.want)
			}
			if string(c.lastID) != tt.lastID {
				t.Errorf("last ID = %q, want %q", c.lastID, tt.lastID)
			}
			if c.retry != tt.retry {
				t.Errorf("retry = %v, want %v", c.retry, tt.retry)
			}
		})
	}
}

// The whole per-event path (line reading, SSE fields, payload scan, ID
// check, latency record) allocates nothing.
func TestReadEventsNoAllocs(t *testing.T) {
	var b strings.Builder
	for i := range int64(200) {
		b.WriteString("id: " + idOf(i).String() + "\n" + data(0, i) + "\n")
	}
	stream := b.String()
	c := newTestClient([]string{"a"}, []int{0}, 200)
	src := strings.NewReader(stream)
	c.lr = newLineReader(src, 4096)
	c.lastID = make([]byte, 0, 64)
	allocs := testing.AllocsPerRun(10, func() {
		src.Reset(stream)
		c.lr.reset(src)
		c.slots[0].last.Store(-1)
		c.slots[0].seen = false
		_ = c.readEvents()
	})
	if allocs != 0 {
		t.Errorf("200 events allocate %v times, want 0", allocs)
	}
	if c.t.lost+c.t.dup+c.t.mismatch != 0 {
		t.Errorf("unexpected tally %+v", c.t)
	}
}
