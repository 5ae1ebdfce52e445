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
	l      *lean
	epfd   int
	wakeR  int // pipe whose write end wakes the loop to stop
	wakeW  int
	mu     sync.Mutex
	conns  map[uint64]*leanConn
	next   uint64
	done   chan struct{}
	closed bool
}

const (
	epollET     = 1 << 31
	wakeToken   = 0
	watchEvents = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | epollET
)

func newCloseWatcher(l *lean) (closeWatcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("epoll_ctl wake pipe: %w", err)
	}
	w := &epollWatcher{l: l, epfd: epfd, wakeR: p[0], wakeW: p[1], conns: make(map[uint64]*leanConn), next: wakeToken + 1, done: make(chan struct{})}
	l.wg.Add(1)
	go w.loop()
	return w, nil
}

func (w *epollWatcher) add(lc *leanConn) error {
	sc, ok := lc.conn.(syscall.Conn)
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
	lc.token = token
	w.conns[token] = lc
	return nil
}

// remove forgets lc; the kernel drops the fd from the set when the socket
// closes, which follows at once.
func (w *epollWatcher) remove(lc *leanConn) {
	w.mu.Lock()
	if lc.token != 0 {
		delete(w.conns, lc.token)
		lc.token = 0
	}
	w.mu.Unlock()
}

func (w *epollWatcher) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	syscall.Write(w.wakeW, []byte{1})
	<-w.done
	syscall.Close(w.epfd)
	syscall.Close(w.wakeR)
	syscall.Close(w.wakeW)
}

func (w *epollWatcher) loop() {
	defer w.l.wg.Done()
	defer close(w.done)
	events := make([]syscall.EpollEvent, 128)
	gone := make([]*leanConn, 0, 128)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			w.l.n.log.Error("close watcher stopped", "err", err)
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
			if lc := w.conns[token]; lc != nil {
				gone = append(gone, lc)
			}
		}
		w.mu.Unlock()
		for i, lc := range gone {
			lc.close(reasonClientGone)
			gone[i] = nil
		}
	}
}
