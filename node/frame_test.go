package node

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

func TestEncodeFrame(t *testing.T) {
	tests := []struct {
		name  string
		event string
		data  string
		want  string
	}{
		{"plain", "", "hello", "id: 5-1\ndata: hello\n\n"},
		{"typed", "price", "1.5", "id: 5-1\nevent: price\ndata: 1.5\n\n"},
		{"empty data", "", "", "id: 5-1\ndata: \n\n"},
		{"lf", "", "a\nb", "id: 5-1\ndata: a\ndata: b\n\n"},
		{"crlf", "", "a\r\nb", "id: 5-1\ndata: a\ndata: b\n\n"},
		{"cr", "", "a\rb", "id: 5-1\ndata: a\ndata: b\n\n"},
		{"mixed and trailing", "", "a\r\n\rb\n", "id: 5-1\ndata: a\ndata: \ndata: b\ndata: \n\n"},
		{"cr then lf split", "", "a\r\r\nb", "id: 5-1\ndata: a\ndata: \ndata: b\n\n"},
		{"leading space kept", "", " x", "id: 5-1\ndata:  x\n\n"},
		{"colon in data", "", ":not a comment", "id: 5-1\ndata: :not a comment\n\n"},
		{"line break in event removed", "a\r\nb", "x", "id: 5-1\nevent: ab\ndata: x\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := pubsub.Entry{ID: pubsub.ID{Ms: 5, Seq: 1}, Event: tt.event, Data: []byte(tt.data)}
			f := encodeOne("t", &e)
			defer f.Release()
			if got := string(f.Bytes()); got != tt.want {
				t.Fatalf("frame = %q, want %q", got, tt.want)
			}
			if got, want := string(f.Body()), strings.TrimPrefix(tt.want, "id: 5-1\n"); got != want {
				t.Fatalf("body = %q, want %q", got, want)
			}
			if f.Len() > frameSize(&e) {
				t.Fatalf("frame of %d bytes exceeds its size bound %d", f.Len(), frameSize(&e))
			}
		})
	}
}

func TestFrameRefcount(t *testing.T) {
	e := pubsub.Entry{ID: pubsub.ID{Ms: 1}, Data: []byte("x")}
	f := encodeOne("t", &e)
	f.retain(2)
	f.Release()
	f.Release()
	if got := f.refs.Load(); got != 1 {
		t.Fatalf("refs = %d, want 1", got)
	}
	f.Release()
	defer func() {
		if recover() == nil {
			t.Fatal("releasing a released frame did not panic")
		}
	}()
	f.Release()
}

func TestLargeFrameNotPooled(t *testing.T) {
	e := pubsub.Entry{ID: pubsub.ID{Ms: 1}, Data: bytes.Repeat([]byte("x"), 1<<20)}
	f := encodeOne("t", &e)
	if f.class != -1 {
		t.Fatalf("1 MiB frame in pool class %d", f.class)
	}
	if !bytes.HasSuffix(f.Bytes(), []byte("x\n\n")) {
		t.Fatal("1 MiB frame truncated")
	}
	f.Release()
}

// parseData is the SSE parser's view of the frame's data lines: it joins
// the values of the data: lines with "\n", as the spec says.
func parseData(frame []byte) (id, event, data string) {
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(string(frame), "\n\n"), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "id":
			id = v
		case "event":
			event = v
		case "data":
			lines = append(lines, v)
		}
	}
	return id, event, strings.Join(lines, "\n")
}

// normalize is what SSE can carry: every line break becomes "\n".
func normalize(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "\n")
}

func FuzzEncodeFrame(f *testing.F) {
	for _, s := range []string{"", "a", "a\nb", "a\r\nb", "a\rb", "\r\n\r\n", "data: x\n\nid: 1"} {
		f.Add("ev", []byte(s))
	}
	f.Fuzz(func(t *testing.T, event string, data []byte) {
		e := pubsub.Entry{ID: pubsub.ID{Ms: 42, Seq: 7}, Event: event, Data: data}
		fr := encodeOne("t", &e)
		defer fr.Release()
		b := fr.Bytes()
		if fr.Len() > frameSize(&e) {
			t.Fatalf("frame %d bytes over bound %d", fr.Len(), frameSize(&e))
		}
		if !bytes.HasSuffix(b, []byte("\n\n")) {
			t.Fatalf("frame does not end with a blank line: %q", b)
		}
		// No blank line inside: it would end the event early.
		if i := bytes.Index(b, []byte("\n\n")); i != len(b)-2 {
			t.Fatalf("blank line at %d inside frame %q", i, b)
		}
		if bytes.IndexByte(b, '\r') >= 0 {
			t.Fatalf("CR in frame %q", b)
		}
		id, ev, got := parseData(b)
		if id != "42-7" {
			t.Fatalf("id = %q", id)
		}
		if want := strings.NewReplacer("\r", "", "\n", "").Replace(event); ev != want {
			t.Fatalf("event = %q, want %q", ev, want)
		}
		if want := normalize(string(data)); got != want {
			t.Fatalf("data = %q, want %q", got, want)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	e := pubsub.Entry{ID: pubsub.ID{Ms: 1732700000000, Seq: 3}, Event: "tick", Data: bytes.Repeat([]byte("x"), 100)}
	b.ReportAllocs()
	b.SetBytes(int64(len(e.Data)))
	for b.Loop() {
		encodeOne("t", &e).Release()
	}
}

func TestEncodeFramesBatches(t *testing.T) {
	var entries []pubsub.Entry
	for i := range 100 {
		entries = append(entries, pubsub.Entry{ID: pubsub.ID{Ms: 9, Seq: uint64(i)}, Data: bytes.Repeat([]byte("z"), 400)})
	}
	frames := encodeFrames(nil, "t", pubsub.ID{}, entries)
	var all []byte
	n := 0
	for _, f := range frames {
		if f.Len() > maxBatchBytes {
			t.Fatalf("batch frame of %d bytes over %d", f.Len(), maxBatchBytes)
		}
		if f.class < 0 {
			t.Fatalf("batch frame not pooled")
		}
		for k := range f.events {
			if f.events[k].id != entries[n].ID {
				t.Fatalf("event %d has id %v", n, f.events[k].id)
			}
			n++
		}
		all = append(all, f.Bytes()...)
		f.Release()
	}
	if n != len(entries) || len(frames) < 2 {
		t.Fatalf("%d events in %d frames", n, len(frames))
	}
	var want []byte
	for i := range entries {
		want, _ = appendEvent(want, entries[i].ID, "", entries[i].Data)
	}
	if !bytes.Equal(all, want) {
		t.Fatal("batched frames differ from events encoded one by one")
	}
}

// A client skips the events of a batch it already had from replay, and a
// client of several topics gets a composite id before each body; the
// frame's bytes are gathered by reference.
func TestGatherSkipsAndComposes(t *testing.T) {
	entries := []pubsub.Entry{
		{ID: pubsub.ID{Ms: 1, Seq: 1}, Data: []byte("a")},
		{ID: pubsub.ID{Ms: 1, Seq: 2}, Data: []byte("b")},
		{ID: pubsub.ID{Ms: 1, Seq: 3}, Event: "e", Data: []byte("c")},
	}
	f := encodeFrames(nil, "t2", pubsub.ID{}, entries)[0]
	defer f.Release()
	tests := []struct {
		name   string
		topics []string
		pos    []pubsub.ID
		want   string
		n      int
	}{
		{"single, all new", []string{"t2"}, []pubsub.ID{{}}, "id: 1-1\ndata: a\n\nid: 1-2\ndata: b\n\nid: 1-3\nevent: e\ndata: c\n\n", 3},
		{"single, first two seen", []string{"t2"}, []pubsub.ID{{Ms: 1, Seq: 2}}, "id: 1-3\nevent: e\ndata: c\n\n", 1},
		{"single, all seen", []string{"t2"}, []pubsub.ID{{Ms: 1, Seq: 3}}, "", 0},
		{"several topics", []string{"t1", "t2"}, []pubsub.ID{{Ms: 7}, {Ms: 1, Seq: 1}}, "id: 7-0,1-2\ndata: b\n\nid: 7-0,1-3\nevent: e\ndata: c\n\n", 2},
		{"not subscribed", []string{"x", "y"}, []pubsub.ID{{}, {}}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &stream{topics: tt.topics, pos: append([]pubsub.ID(nil), tt.pos...)}
			var w wire
			f.retain(1) // the wire takes a reference over
			n := c.gather(&w, f)
			if ps := w.pieces(); n > 0 && &ps[len(ps)-1][0] != &f.buf[len(f.buf)-len(ps[len(ps)-1])] {
				t.Fatal("the frame's bytes were copied, not referenced")
			}
			var s discardSink
			s.keep = true
			_ = s.send(&w)
			w.reset()
			if got := string(s.buf); got != tt.want || n != tt.n {
				t.Fatalf("got %q (%d), want %q (%d)", got, n, tt.want, tt.n)
			}
		})
	}
}

// Replays of one large entry share its frame; the same topic and ID with
// other data (a stream reset reused the ID) get a frame of their own, and
// a frame no write holds leaves the map.
func TestSharedFrames(t *testing.T) {
	var c sharedFrames
	data := bytes.Repeat([]byte("y"), 256<<10)
	e := pubsub.Entry{ID: pubsub.ID{Ms: 7}, Data: data}
	a, b := c.encode("t", &e), c.encode("t", &e)
	if a != b {
		t.Fatal("two replays of one large entry got two frames")
	}
	got := make(chan *frame)
	for range 20 {
		go func() { got <- c.encode("t", &pubsub.Entry{ID: e.ID, Data: data}) }()
	}
	for range 20 {
		if f := <-got; f != a {
			t.Fatal("concurrent replays of one large entry got two frames")
		}
	}
	other := pubsub.Entry{ID: e.ID, Data: bytes.Repeat([]byte("z"), len(data))}
	o := c.encode("t", &other)
	if o == a || !bytes.Contains(o.Bytes(), []byte("zzz")) {
		t.Fatal("an entry with the same ID and other data got the first entry's frame")
	}
	if s := c.encode("u", &e); s == a {
		t.Fatal("the same data on another topic got the first topic's frame")
	}
	small := pubsub.Entry{ID: e.ID, Data: []byte("s")}
	s1, s2 := c.encode("t", &small), c.encode("t", &small)
	if s1 == s2 {
		t.Fatal("a pooled frame was shared")
	}
	s1.Release()
	s2.Release()
	a.Release()
	b.Release()
	if !bytes.HasSuffix(a.Bytes(), []byte("y\n\n")) {
		t.Fatal("a shared frame was emptied when its references went")
	}
	if f := c.encode("t", &e); f != a {
		t.Fatal("a frame still alive was encoded again")
	}
	a, b, o = nil, nil, nil
	runtime.KeepAlive(data)
	deadline := time.Now().Add(10 * time.Second)
	for c.len() > 0 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := c.len(); n != 0 {
		t.Fatalf("%d frames still in the map after every write let go", n)
	}
}
