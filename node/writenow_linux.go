package node

import (
	"net"
	"syscall"
	"unsafe"
)

// vecWriter writes a chunk to a socket in one writev(2) without waiting:
// what the socket buffer does not take now is left in the buffers for the
// caller to finish elsewhere. Going through the raw descriptor skips the
// write deadline a net.Conn write needs to be bounded (arming and
// disarming a runtime timer per write was a visible share of a pool
// writer's time); a call that cannot block needs no bound. One per pool
// writer: its iovec array is reused.
type vecWriter struct {
	iov  []syscall.Iovec
	flat []byte // a small chunk gathered into one buffer
}

// flatMax is the largest chunk gathered into one buffer and written with
// write(2) instead of writev(2): for the small events of a fan-out, the
// kernel's per-piece work in writev cost more than the copy (S2: 7.7 µs
// per writev of three pieces). The buffer is the pool writer's, reused:
// no per-client memory.
const flatMax = 4 << 10

// iovMax is the kernel's limit on iovecs per writev (UIO_MAXIOV).
const iovMax = 1024

// writeNow writes what the socket takes of *b now, and consumes it from
// *b. A full socket buffer (EAGAIN) is no error: *b keeps the rest. ok is
// false when conn offers no raw descriptor; nothing was written then.
func (v *vecWriter) writeNow(rc syscall.RawConn, b *net.Buffers) (ok bool, err error) {
	if rc == nil {
		return false, nil
	}
	if size := buffersLen(*b); size > 0 && size <= flatMax {
		v.flat = v.flat[:0]
		for _, p := range *b {
			v.flat = append(v.flat, p...)
		}
		n, err := v.write(rc, syscall.SYS_WRITE, unsafe.Pointer(&v.flat[0]), len(v.flat))
		consume(b, n)
		return true, err
	}
	for len(*b) > 0 {
		v.iov = v.iov[:0]
		for _, p := range *b {
			if len(p) == 0 {
				continue
			}
			iov := syscall.Iovec{Base: &p[0]}
			iov.SetLen(len(p))
			v.iov = append(v.iov, iov)
			if len(v.iov) == iovMax {
				break
			}
		}
		if len(v.iov) == 0 {
			*b = (*b)[:0]
			return true, nil
		}
		n, err := v.write(rc, syscall.SYS_WRITEV, unsafe.Pointer(&v.iov[0]), len(v.iov))
		clear(v.iov) // drop the references to the frames' bytes
		if err != nil {
			return true, err
		}
		consume(b, n)
		if n == 0 {
			return true, nil // the socket buffer is full
		}
	}
	return true, nil
}

// write makes one write(2) or writev(2) call (trap) on rc's descriptor
// without waiting: a full socket buffer writes 0 bytes and is no error.
func (v *vecWriter) write(rc syscall.RawConn, trap uintptr, p unsafe.Pointer, n int) (int, error) {
	var r uintptr
	var errno syscall.Errno
	if err := rc.Write(func(fd uintptr) bool {
		for {
			r, _, errno = syscall.Syscall(trap, fd, uintptr(p), uintptr(n))
			if errno != syscall.EINTR {
				return true // never wait: a full buffer is the caller's to finish
			}
		}
	}); err != nil {
		return 0, err
	}
	switch errno {
	case 0:
		return int(r), nil
	case syscall.EAGAIN:
		return 0, nil
	}
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: errno}
}

// buffersLen is the number of bytes in b.
func buffersLen(b net.Buffers) int {
	n := 0
	for _, p := range b {
		n += len(p)
	}
	return n
}
