package node

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// epollWatcher sees clients leave without a goroutine per stream: every
// hijacked socket is in one epoll set, watched for the peer's FIN or RST
// (EPOLLRDHUP, EPOLLHUP, EPOLLERR; not EPOLLIN, so a client that sends
// bytes wakes nobody). Go's own netpoller keeps the socket too; an fd may
// sit in several epoll sets.
//
// Events carry a token, not the fd: a closed fd's number is soon reused by
// a new connection, and a stale event must not close the newcomer.
type epollWatcher struct {
	pool   *writerPool
	epfd   int
	wakeR  int // pipe whose write end wakes the loop to stop
	wakeW  int
	mu     sync.Mutex
	conns  map[uint64]*stream
	next   uint64
	done   chan struct{}
	closed bool
}

const (
	epollET     = 1 << 31
	wakeToken   = 0
	watchEvents = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | epollET
)

func newCloseWatcher(p *writerPool) (closeWatcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var pipe [2]int
	if err := syscall.Pipe2(pipe[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pipe[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(pipe[0])
		syscall.Close(pipe[1])
		return nil, fmt.Errorf("epoll_ctl wake pipe: %w", err)
	}
	w := &epollWatcher{pool: p, epfd: epfd, wakeR: pipe[0], wakeW: pipe[1], conns: make(map[uint64]*stream), next: wakeToken + 1, done: make(chan struct{})}
	p.wg.Add(1)
	go w.loop()
	return w, nil
}

func (w *epollWatcher) add(s *stream) error {
	sc, ok := s.conn.(syscall.Conn)
	if !ok {
		return errors.New("connection has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("close watcher stopped")
	}
	token := w.next
	w.next++
	var cerr error
	err = rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: watchEvents, Fd: int32(uint32(token)), Pad: int32(uint32(token >> 32))}
		cerr = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	s.token = token
	w.conns[token] = s
	return nil
}

// remove forgets s; the kernel drops the fd from the set when the socket
// closes, which follows at once.
func (w *epollWatcher) remove(s *stream) {
	w.mu.Lock()
	if s.token != 0 {
		delete(w.conns, s.token)
		s.token = 0
	}
	w.mu.Unlock()
}

// close stops the loop and waits for it; the pool calls it once.
func (w *epollWatcher) close() {
	w.mu.Lock()
	w.closed = true // add refuses from now on
	w.mu.Unlock()
	syscall.Write(w.wakeW, []byte{1})
	<-w.done
	syscall.Close(w.epfd)
	syscall.Close(w.wakeR)
	syscall.Close(w.wakeW)
}

func (w *epollWatcher) loop() {
	defer w.pool.wg.Done()
	defer close(w.done)
	events := make([]syscall.EpollEvent, 128)
	gone := make([]*stream, 0, 128)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			w.pool.n.log.Error("close watcher stopped", "err", err)
			return
		}
		gone = gone[:0]
		w.mu.Lock()
		for _, ev := range events[:n] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if token == wakeToken {
				w.mu.Unlock()
				return
			}
			if s := w.conns[token]; s != nil {
				gone = append(gone, s)
			}
		}
		w.mu.Unlock()
		for i, s := range gone {
			w.pool.end(s, reasonClientGone)
			gone[i] = nil
		}
	}
}
