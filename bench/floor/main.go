// Command floor measures what this machine charges for the work every SSE
// delivery needs, with no SSE, no Redis and no node in the way, so that the
// scenarios' figures can be read against it:
//
//   - tcp_us: one 150-byte message written to a loopback TCP socket and read
//     from its peer, in one goroutine (no wakeup, no scheduling): the
//     kernel's cost per delivery, paid once by every node and client;
//   - unix_us: the same over a Unix socket pair, for contrast;
//   - fanout: N loopback connections, a message written to each of them
//     `-rate` times a second by GOMAXPROCS writers in this process, read by
//     a goroutine per connection in a second process: latency from the
//     time a round was due to each read, as S2 counts from the publish
//     (start_p50/start_p99: from the time the round began, which hides
//     the wait of a round that begins late). It is the simplest server
//     and client that can do what S2 asks. It also reports the CPU time each side
//     spent per message (writer_us, reader_us), to set against S2's node
//     and load generator CPU per million deliveries.
//
// It prints key=value lines (floor_*), which bench/run.sh adds to the report.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	var (
		n      = flag.Int("n", 10000, "connections of the fan-out round")
		size   = flag.Int("size", 150, "bytes per message (an S2 event on the wire is about 150)")
		rate   = flag.Int("rate", 10, "fan-out rounds per second")
		rounds = flag.Int("rounds", 30, "fan-out rounds")
		src    = flag.String("src", "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4", "source addresses of the fan-out connections")
		rd     = flag.String("reader", "", "internal: run as the fan-out's reading process, dialing this address")
	)
	flag.Parse()
	if *size < 16 || *n < 1 || *rate < 1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "floor: -size must be at least 16; -n, -rate and -rounds at least 1")
		os.Exit(2)
	}
	if *rd != "" {
		if err := reader(*rd, *n, *size, *rounds, strings.Split(*src, ",")); err != nil {
			fmt.Fprintln(os.Stderr, "floor reader:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*n, *size, *rate, *rounds, strings.Split(*src, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(n, size, rate, rounds int, srcs []string) error {
	tcp, err := perMessage("tcp", size)
	if err != nil {
		return err
	}
	unix, err := perMessage("unix", size)
	if err != nil {
		return err
	}
	fmt.Printf("floor_tcp_us=%.2f\nfloor_unix_us=%.2f\n", tcp.Seconds()*1e6, unix.Seconds()*1e6)
	f, err := fanout(n, size, rate, rounds, srcs)
	if err != nil {
		return err
	}
	fmt.Printf("floor_fanout_clients=%d\nfloor_fanout_rate=%d\nfloor_fanout_writers=%d\nfloor_fanout_p50_ms=%.1f\nfloor_fanout_p99_ms=%.1f\nfloor_fanout_max_ms=%.1f\n",
		n, rate, f.writers, ms(f.p50), ms(f.p99), ms(f.max))
	fmt.Printf("floor_fanout_writer_us=%.2f\nfloor_fanout_reader_us=%.2f\n", f.writerUs, f.readerUs)
	fmt.Printf("floor_fanout_late_rounds=%d\nfloor_fanout_rounds_per_s=%.2f\nfloor_fanout_start_p50_ms=%.1f\nfloor_fanout_start_p99_ms=%.1f\n",
		f.late, f.roundsPerS, ms(f.startP50), ms(f.startP99))
	return nil
}

func ms(d time.Duration) float64 { return d.Seconds() * 1e3 }

// pair returns two connected sockets of the given network.
func pair(network string) (a, b net.Conn, err error) {
	addr := "127.0.0.1:0"
	if network == "unix" {
		dir, err := os.MkdirTemp("", "floor")
		if err != nil {
			return nil, nil, err
		}
		defer os.RemoveAll(dir)
		addr = dir + "/s"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	defer ln.Close()
	a, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", ln.Addr(), err)
	}
	b, err = ln.Accept()
	if err != nil {
		a.Close()
		return nil, nil, fmt.Errorf("accept %s: %w", ln.Addr(), err)
	}
	return a, b, nil
}

// perMessage is the mean cost of writing a message to one end of a socket
// pair and reading it from the other, in one goroutine: the write has put
// the bytes in the peer's buffer by the time it returns, so the read never
// waits.
func perMessage(network string, size int) (time.Duration, error) {
	a, b, err := pair(network)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	defer b.Close()
	msg, buf := make([]byte, size), make([]byte, size)
	const warm, count = 10000, 200000
	var start time.Time
	for i := range warm + count {
		if i == warm {
			start = time.Now()
		}
		if _, err := a.Write(msg); err != nil {
			return 0, fmt.Errorf("%s write: %w", network, err)
		}
		if _, err := io.ReadFull(b, buf); err != nil {
			return 0, fmt.Errorf("%s read: %w", network, err)
		}
	}
	return time.Since(start) / count, nil
}

type fanoutResult struct {
	writers       int
	p50, p99, max time.Duration
	// CPU time (user and system) per message of the writing and the
	// reading process, over the rounds, in microseconds.
	writerUs, readerUs float64
	// late counts the rounds that began after they were due (the previous
	// one was still being written); roundsPerS is the rate kept.
	late       int
	roundsPerS float64
	// startP50 and startP99 are counted from when each round began
	// instead of when it was due (the measure before 2026-12-01).
	startP50, startP99 time.Duration
}

// cpuTime is the CPU time (user and system) this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fanout runs the bare fan-out rounds: this process writes, a child process
// (this program with -reader) holds the client ends and reads, so each
// process needs one descriptor per connection, as the node and sseload do.
func fanout(n, size, rate, rounds int, srcs []string) (fanoutResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fanoutResult{}, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		return fanoutResult{}, fmt.Errorf("find own binary: %w", err)
	}
	child := exec.Command(self, "-reader", ln.Addr().String(), "-n", strconv.Itoa(n), "-size", strconv.Itoa(size),
		"-rounds", strconv.Itoa(rounds), "-src", strings.Join(srcs, ","))
	var out strings.Builder
	child.Stdout, child.Stderr = &out, os.Stderr
	if err := child.Start(); err != nil {
		return fanoutResult{}, fmt.Errorf("start reader: %w", err)
	}
	defer child.Process.Kill() // a no-op once it has exited

	servers := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range servers {
			c.Close()
		}
	}()
	for len(servers) < n {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
		s, err := ln.Accept()
		if err != nil {
			return fanoutResult{}, fmt.Errorf("accept %d of %d: %w", len(servers)+1, n, err)
		}
		servers = append(servers, s)
	}

	writers := runtime.GOMAXPROCS(0)
	per := (n + writers - 1) / writers
	period := time.Second / time.Duration(rate)
	msg := make([]byte, size)
	cpu0 := cpuTime()
	// Round r is due at start + (r+1) periods and its messages carry that
	// time, whenever it begins: a round that starts late because the
	// previous one is still being written counts its wait, as S2's
	// publisher, which goes on at its rate whatever the node does, counts
	// the node's backlog. (Stamped when the round began, as before, a
	// machine that cannot keep the rate ran fewer rounds a second and hid
	// the wait.)
	start := time.Now()
	late := 0
	for r := range rounds {
		due := start.Add(time.Duration(r+1) * period)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else {
			late++
		}
		binary.LittleEndian.PutUint64(msg, uint64(due.UnixNano()))
		binary.LittleEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for w := range writers {
			part := servers[min(w*per, n):min((w+1)*per, n)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, s := range part {
					if _, err := s.Write(msg); err != nil {
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return fanoutResult{}, fmt.Errorf("write: %w", err)
		}
	}
	writerCPU := cpuTime() - cpu0
	took := time.Since(start)
	if err := child.Wait(); err != nil {
		return fanoutResult{}, fmt.Errorf("reader: %w", err)
	}
	var p50, p99, mx, readerUs, startP50, startP99 float64
	if _, err := fmt.Sscanf(out.String(), "%f %f %f %f %f %f", &p50, &p99, &mx, &readerUs, &startP50, &startP99); err != nil {
		return fanoutResult{}, fmt.Errorf("reader said %q: %w", out.String(), err)
	}
	d := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	msgs := float64(n * rounds)
	return fanoutResult{writers: writers, p50: d(p50), p99: d(p99), max: d(mx),
		writerUs: float64(writerCPU.Microseconds()) / msgs, readerUs: readerUs,
		late: late, roundsPerS: float64(rounds) / took.Seconds(), startP50: d(startP50), startP99: d(startP99)}, nil
}

// reader is the client side of fanout: it dials n connections, reads rounds
// messages from each, and prints the latency quantiles in milliseconds.
func reader(addr string, n, size, rounds int, srcs []string) error {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("dial %s, %d of %d, from %s: %w", addr, i+1, n, srcs[i%len(srcs)], err)
		}
		conns = append(conns, c)
	}
	lat := make([]time.Duration, n*rounds)
	fromStart := make([]time.Duration, n*rounds)
	errs := make([]error, n)
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			_ = c.SetReadDeadline(time.Now().Add(time.Duration(rounds)*time.Second + time.Minute))
			for r := range rounds {
				if _, err := io.ReadFull(c, buf); err != nil {
					errs[i] = fmt.Errorf("connection %d, message %d: %w", i, r+1, err)
					return
				}
				sent := int64(binary.LittleEndian.Uint64(buf))
				now := time.Now().UnixNano()
				lat[i*rounds+r] = time.Duration(now - sent)
				fromStart[i*rounds+r] = time.Duration(now - int64(binary.LittleEndian.Uint64(buf[8:])))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	perMsg := float64((cpuTime() - cpu0).Microseconds()) / float64(n*rounds)
	slices.Sort(lat)
	slices.Sort(fromStart)
	fmt.Printf("%.3f %.3f %.3f %.3f %.3f %.3f\n", ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]), ms(lat[len(lat)-1]), perMsg,
		ms(fromStart[len(fromStart)/2]), ms(fromStart[len(fromStart)*99/100]))
	return nil
}
