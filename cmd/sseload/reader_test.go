package main

import (
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll reads a response: header lines, then body lines (chunked when
// the headers say so) until an error.
func readAll(t *testing.T, rd io.Reader, bufSize int) (headers, body []string, err error) {
	t.Helper()
	lr := newLineReader(rd, bufSize)
	chunked := false
	for {
		line, err := lr.readLine()
		if err != nil {
			return headers, nil, err
		}
		if len(line) == 0 {
			break
		}
		if strings.EqualFold(string(line), "Transfer-Encoding: chunked") {
			chunked = true
		}
		headers = append(headers, string(line))
	}
	if chunked {
		lr.startChunked()
	}
	for {
		line, err := lr.readLine()
		if err != nil {
			return headers, body, err
		}
		body = append(body, string(line))
	}
}

// chunk encodes parts as HTTP/1.1 chunks, the last chunk and an empty trailer.
func chunk(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strconv.FormatInt(int64(len(p)), 16))
		b.WriteString("\r\n" + p + "\r\n")
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

func TestLineReader(t *testing.T) {
	const chunkedHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
	const plainHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
	headers := []string{"HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked"}
	tests := []struct {
		name    string
		in      string
		buf     int
		headers []string
		body    []string
		err     error
	}{
		{
			name: "identity body, LF and CRLF",
			in:   plainHead + "retry: 2000\n: ok\n\nid: 1-0\r\ndata: x\r\n\r\n",
			buf:  64, headers: headers[:2],
			body: []string{"retry: 2000", ": ok", "", "id: 1-0", "data: x", ""},
			err:  io.EOF,
		},
		{
			name: "one chunk per event",
			in:   chunkedHead + chunk("retry: 2000\n: ok\n\n", "id: 1-0\ndata: a\n\n", "id: 1-1\ndata: b\n\n"),
			buf:  64, headers: headers,
			body: []string{"retry: 2000", ": ok", "", "id: 1-0", "data: a", "", "id: 1-1", "data: b", ""},
			err:  io.EOF,
		},
		{
			name: "lines split across chunks",
			in:   chunkedHead + chunk("id: 1", "2-3\nda", "t", "a: hello\n", "\n"),
			buf:  64, headers: headers,
			body: []string{"id: 12-3", "data: hello", ""},
			err:  io.EOF,
		},
		{
			name: "CRLF split across chunks",
			in:   chunkedHead + chunk("data: a\r", "\n\r", "\n"),
			buf:  64, headers: headers,
			body: []string{"data: a", ""},
			err:  io.EOF,
		},
		{
			name: "chunk extension, upper-case size, trailer",
			in:   chunkedHead + "8;name=v\r\ndata: a\n\r\nA\r\ndata: bcd\n\r\n0\r\nX-Trailer: 1\r\n\r\n",
			buf:  64, headers: headers,
			body: []string{"data: a", "data: bcd"},
			err:  io.EOF,
		},
		{
			name: "line longer than the buffer is truncated, the rest skipped",
			in:   chunkedHead + chunk("data: "+strings.Repeat("x", 200)+"\n", "id: 2-0\n\n"),
			buf:  100, headers: headers,
			body: []string{"data: " + strings.Repeat("x", 94), "id: 2-0", ""},
			err:  io.EOF,
		},
		{
			name: "line exactly the buffer size",
			in:   plainHead + strings.Repeat("y", 100) + "\nz\n",
			buf:  101, headers: headers[:2],
			body: []string{strings.Repeat("y", 100), "z"},
			err:  io.EOF,
		},
		{
			name: "stream cut inside a chunk",
			in:   chunkedHead + "20\r\ndata: a\n",
			buf:  64, headers: headers,
			body: []string{"data: a"},
			err:  io.ErrUnexpectedEOF,
		},
		{
			name: "stream cut between chunks",
			in:   chunkedHead + "8\r\ndata: a\n\r\n",
			buf:  64, headers: headers,
			body: []string{"data: a"},
			err:  io.ErrUnexpectedEOF,
		},
		{
			name: "bad chunk size",
			in:   chunkedHead + "zz\r\ndata: a\n\r\n",
			buf:  64, headers: headers,
			err: errBadChunk,
		},
		{
			name: "missing CRLF after chunk data",
			in:   chunkedHead + "2\r\nabXY",
			buf:  64, headers: headers,
			err: errBadChunk,
		},
		{
			name: "empty chunk size line",
			in:   chunkedHead + "\r\n",
			buf:  64, headers: headers,
			err: errBadChunk,
		},
	}
	readers := map[string]func(string) io.Reader{
		"whole":    func(s string) io.Reader { return strings.NewReader(s) },
		"one byte": func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
		"half":     func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
	}
	for _, tt := range tests {
		for rname, mk := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				h, body, err := readAll(t, mk(tt.in), tt.buf)
				if !slices.Equal(h, tt.headers) {
					t.Errorf("headers = %q, want %q", h, tt.headers)
				}
				if !errors.Is(err, tt.err) {
					t.Errorf("err = %v, want %v", err, tt.err)
				}
				if tt.err != errBadChunk && !slices.Equal(body, tt.body) {
					t.Errorf("body = %q, want %q", body, tt.body)
				}
			})
		}
	}
}

func TestLineReaderNoAllocs(t *testing.T) {
	frame := "id: 1700000000000-12\ndata: " + string(appendPayload(nil, payload{run: 1, seq: 5, ts: 99}, 100)) + "\n\n"
	body := chunk(strings.Repeat(frame, 50))
	src := strings.NewReader(body)
	lr := newLineReader(src, 4096)
	allocs := testing.AllocsPerRun(20, func() {
		src.Reset(body)
		lr.reset(src)
		lr.startChunked()
		for {
			if _, err := lr.readLine(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("reading 50 chunked events allocates %v times, want 0", allocs)
	}
}
