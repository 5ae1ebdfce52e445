package main

import (
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// The -verify, -preload, -from-start, -count and RSS features behind the
// memory scenarios M1-M4, end to end against the fake server.
func TestMemoryScenarioFeatures(t *testing.T) {
	tests := []struct {
		name  string
		fake  func(*fakeSSE)
		cfg   func(*Config)
		check func(t *testing.T, rep *Report)
	}{
		{
			name: "verify: large payloads arrive whole at every client",
			cfg:  func(c *Config) { c.Size, c.Count, c.Verify, c.Duration = 300_000, 3, true, time.Minute },
			check: func(t *testing.T, rep *Report) {
				passed(t, rep)
				if rep.Published.Events != 3 || rep.Check.Whole != 3*6 || rep.Check.Corrupt != 0 {
					t.Errorf("published %d, check %+v; want 3 events, 18 whole", rep.Published.Events, rep.Check)
				}
			},
		},
		{
			name: "verify: one changed byte past the read buffer is caught",
			fake: func(f *fakeSSE) { f.corruptSeq = 1 },
			cfg:  func(c *Config) { c.Size, c.Count, c.Verify, c.Duration = 100_000, 3, true, time.Minute },
			check: func(t *testing.T, rep *Report) {
				if rep.Check.Corrupt != 6 || rep.Check.Whole != 2*6 || rep.Check.Passed {
					t.Errorf("check = %+v, want 6 corrupt, 12 whole, a failure", rep.Check)
				}
			},
		},
		{
			name: "a stream cut inside an event resumes from before it, as EventSource does",
			fake: func(f *fakeSSE) { f.cutInSeq = 1 },
			cfg:  func(c *Config) { c.Size, c.Count, c.Verify, c.Duration = 20_000, 3, true, time.Minute },
			check: func(t *testing.T, rep *Report) {
				passed(t, rep)
				if rep.Check.Whole != 3*6 || rep.Connections.Reconnects < 6 {
					t.Errorf("check %+v, reconnects %d; want 18 whole, every client reconnected", rep.Check, rep.Connections.Reconnects)
				}
			},
		},
		{
			name: "preload and from-start: every client receives the preloaded stream",
			cfg: func(c *Config) {
				c.Size, c.Preload, c.FromStart, c.Verify, c.Duration = 5000, 20, true, true, 0
			},
			check: func(t *testing.T, rep *Report) {
				passed(t, rep)
				if rep.Preloaded != 20 || rep.Deliveries != 20*6 || rep.Check.Whole != 20*6 {
					t.Errorf("preloaded %d, deliveries %d, check %+v; want 20, 120, 120 whole", rep.Preloaded, rep.Deliveries, rep.Check)
				}
			},
		},
		{
			name: "from-start: a server that leaves out the start of the stream is caught",
			fake: func(f *fakeSSE) { f.dropSeq = 0 },
			cfg:  func(c *Config) { c.Preload, c.FromStart, c.Duration = 5, true, 0 },
			check: func(t *testing.T, rep *Report) {
				if rep.Check.Lost != 6 || rep.Check.Passed {
					t.Errorf("check = %+v, want lost 6 and a failure", rep.Check)
				}
			},
		},
		{
			name: "node RSS sampled: peak, growth over the baseline, VmHWM",
			cfg: func(c *Config) {
				c.Idle, c.PublishURL, c.Duration = true, "", 200*time.Millisecond
				c.NodePIDs, c.RSSEvery = []int{os.Getpid()}, 10*time.Millisecond
			},
			check: func(t *testing.T, rep *Report) {
				passed(t, rep)
				if len(rep.NodeMemory) != 1 {
					t.Fatalf("node memory = %+v, want one node", rep.NodeMemory)
				}
				m := rep.NodeMemory[0]
				if m.Samples < 5 || m.PeakBytes <= 0 || m.PeakBytes < m.BaselineBytes || m.GrowthBytes != m.PeakBytes-m.BaselineBytes ||
					m.HWMBytes < m.PeakBytes || m.OverLimit {
					t.Errorf("node memory = %+v", m)
				}
			},
		},
		{
			name: "node RSS over the limit ends the run",
			cfg: func(c *Config) {
				c.Idle, c.PublishURL, c.Duration = true, "", time.Minute
				c.NodePIDs, c.RSSEvery, c.NodeRSSMax = []int{os.Getpid()}, 10*time.Millisecond, 1
			},
			check: func(t *testing.T, rep *Report) {
				if len(rep.NodeMemory) != 1 || !rep.NodeMemory[0].OverLimit || !rep.Interrupted || rep.Check.Passed {
					t.Errorf("node memory %+v, interrupted %v, check %+v", rep.NodeMemory, rep.Interrupted, rep.Check)
				}
				if rep.Seconds > 30 {
					t.Errorf("the run took %.0f s: the limit did not end it", rep.Seconds)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, _ := runAgainstFake(t, tt.fake, func(c *Config) {
				c.Drain = 20 * time.Second
				if tt.cfg != nil {
					tt.cfg(c)
				}
			})
			tt.check(t, rep)
		})
	}
}

// Whole data lines are hashed however the read buffer, the chunks and the
// line endings cut them.
func TestReadEventsVerify(t *testing.T) {
	for _, buf := range []int{512, 4096} {
		for _, size := range []int{100, 505, 506, 507, 4096, 20_000} {
			for _, eol := range []string{"\n", "\r\n"} {
				for _, piece := range []int{7, 1000, 1 << 20} {
					for _, corrupt := range []bool{false, true} {
						name := fmt.Sprintf("buf %d, size %d, eol %q, chunks of %d, corrupt %v", buf, size, eol, piece, corrupt)
						t.Run(name, func(t *testing.T) {
							c := newTestClient([]string{"a"}, []int{0}, 2)
							c.r.sums = new(sumLog)
							var body strings.Builder
							for seq := range int64(2) {
								p := appendPayload(nil, payload{run: 42, seq: seq, ts: 1}, size)
								c.r.sums.store(0, seq, sumOf(p))
								if corrupt && seq == 1 {
									p[len(p)-3] = 'y'
								}
								body.WriteString("id: " + idOf(seq).String() + eol + "data: " + string(p) + eol + eol)
							}
							var parts []string
							for s := body.String(); s != ""; {
								n := min(piece, len(s))
								parts, s = append(parts, s[:n]), s[n:]
							}
							c.lr = newLineReader(strings.NewReader(chunk(parts...)), buf)
							c.lr.startChunked()
							if err := c.readEvents(); err != io.EOF {
								t.Fatalf("readEvents = %v, want EOF", err)
							}
							want := tally{deliveries: 2, whole: 2}
							if corrupt {
								want = tally{deliveries: 2, whole: 1, corrupt: 1}
							}
							if c.t != want {
								t.Errorf("tally = %+v\nwant    %+v", c.t, want)
							}
						})
					}
				}
			}
		}
	}
}

// A CR at the end of a piece is content unless the line ends right after.
func TestLineSum(t *testing.T) {
	tests := []struct {
		name    string
		pieces  []string
		content bool // the line's ending was already removed (not truncated)
		want    string
	}{
		{"one piece", []string{"abc"}, true, "abc"},
		{"pieces", []string{"ab", "c", "", "de"}, false, "abcde"},
		{"CR inside, at a piece's end", []string{"ab\r", "cd"}, false, "ab\rcd"},
		{"CR of the CRLF, alone in the last piece", []string{"abc", "\r"}, false, "abc"},
		{"CR of the CRLF, end of the first piece", []string{"abc\r"}, false, "abc"},
		{"CR as the last content byte", []string{"abc\r"}, true, "abc\r"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s lineSum
			for _, p := range tt.pieces {
				s.write([]byte(p))
			}
			if tt.content {
				s.content()
			}
			want := payloadSum{n: int64(len(tt.want)), crc: crc32.Checksum([]byte(tt.want), castagnoli)}
			if s.payloadSum != want {
				t.Errorf("sum = %+v, want %+v (of %q)", s.payloadSum, want, tt.want)
			}
		})
	}
}
