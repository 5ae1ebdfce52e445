package node

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
)

// TestWriteNow writes chunks larger than the socket buffer with writeNow:
// it must never wait, keep in the buffers exactly what it did not write,
// and, finished by an ordinary write, deliver every byte in order.
func TestWriteNow(t *testing.T) {
	client, server, rc := tcpPair(t)
	_ = server.(*net.TCPConn).SetWriteBuffer(4 << 10)

	// Pieces of every size, many more than one writev takes (iovMax).
	var want []byte
	var pieces net.Buffers
	for i := range 3000 {
		p := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i%300)
		if i%7 == 0 {
			p = nil // empty pieces are skipped
		}
		pieces = append(pieces, p)
		want = append(want, p...)
	}
	got := make(chan []byte, 1)
	var v vecWriter
	b := append(net.Buffers(nil), pieces...)
	ok, err := v.writeNow(rc, &b)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" && !ok {
		t.Fatal("writeNow: no raw write on linux")
	}
	if !ok {
		return
	}
	left := 0
	for _, p := range b {
		left += len(p)
	}
	if left == 0 || left == len(want) {
		t.Fatalf("writeNow left %d of %d bytes with a 4 KiB socket buffer and no reader: want a partial write", left, len(want))
	}
	go func() {
		all, _ := io.ReadAll(client)
		got <- all
	}()
	if _, err := b.WriteTo(server); err != nil {
		t.Fatal(err)
	}
	server.Close()
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("read %d bytes, want %d, equal %v", len(g), len(want), bytes.Equal(g, want))
	}
}

// tcpPair is a connected loopback TCP pair and the server end's raw
// descriptor; both ends close when the test ends.
func tcpPair(t *testing.T) (client, server net.Conn, rc syscall.RawConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if server = <-accepted; server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close() })
	if rc, err = server.(syscall.Conn).SyscallConn(); err != nil {
		t.Fatal(err)
	}
	return client, server, rc
}

// TestWriteNowAllocs: a pool write allocates nothing. The function handed
// to RawConn.Write escapes; made afresh per write, it cost about 60 bytes
// per delivery (in S2, 6 MB/s of garbage and a GC every 2 s).
func TestWriteNowAllocs(t *testing.T) {
	client, _, rc := tcpPair(t)
	chunk := [][]byte{[]byte("5\r\n"), []byte("hello"), []byte("\r\n")}
	var v vecWriter
	var pieces [3][]byte
	runs := 0
	allocs := testing.AllocsPerRun(100, func() {
		runs++
		copy(pieces[:], chunk)
		b := net.Buffers(pieces[:])
		ok, err := v.writeNow(rc, &b)
		if err != nil || ok != (runtime.GOOS == "linux") || ok && len(b) != 0 {
			t.Fatalf("writeNow = %v, %v, %d pieces left", ok, err, len(b))
		}
	})
	if allocs != 0 {
		t.Fatalf("writeNow: %v allocations per write, want 0", allocs)
	}
	if runtime.GOOS != "linux" {
		return
	}
	got := make([]byte, runs*10)
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if want := bytes.Repeat([]byte("5\r\nhello\r\n"), runs); !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %d chunks", got, runs)
	}
}

// TestWriteNowNoRawConn: without a raw descriptor nothing is written.
func TestWriteNowNoRawConn(t *testing.T) {
	var v vecWriter
	b := net.Buffers{[]byte("x")}
	if ok, err := v.writeNow(nil, &b); ok || err != nil || len(b) != 1 {
		t.Fatalf("writeNow(nil) = %v, %v, left %d; want false, nil, 1", ok, err, len(b))
	}
}

func TestConsume(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{{0, "abcdef"}, {1, "bcdef"}, {2, "cdef"}, {3, "def"}, {6, ""}} {
		b := net.Buffers{[]byte("ab"), []byte("c"), []byte("def")}
		consume(&b, tc.n)
		var got []byte
		for _, p := range b {
			got = append(got, p...)
		}
		if string(got) != tc.want {
			t.Errorf("consume(%d) left %q, want %q", tc.n, got, tc.want)
		}
	}
}
