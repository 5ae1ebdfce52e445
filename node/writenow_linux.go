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
//
// A write of up to rawWriteMax bytes is made as a raw system call, which
// keeps the writer's P: a non-blocking writev cannot wait, and the
// scheduler's hand-off around a system call (sysmon takes the P of a call
// that lasts, another thread runs the next writer, the first then looks
// for a P again) was the node's main cost after the write itself. In S2
// (10k clients, 10 events/s) the raw call took p50 from 80-99 ms to 59-64
// ms, p99 from 168-218 ms to 122-164 ms and the node's CPU per delivery
// from 9.4-10.8 to 8.4-9.0 µs.
// A larger write, which copies more into the kernel, is made as an
// ordinary system call, so that it cannot hold up the scheduler or a GC.
type vecWriter struct {
	iov []syscall.Iovec
	// One writev's size and outcome, and the function that makes it,
	// bound once: a closure passed to RawConn.Write escapes, so a fresh
	// one per write put about 60 bytes per delivery on the heap (a GC
	// every 2 s in S2).
	size  int
	n     uintptr
	errno syscall.Errno
	call  func(fd uintptr) bool
}

// iovMax is the kernel's limit on iovecs per writev (UIO_MAXIOV).
const iovMax = 1024

// rawWriteMax is the largest write made as a raw system call: one memory
// copy of this size takes microseconds.
const rawWriteMax = 64 << 10

// writeNow writes what the socket takes of *b now, and consumes it from
// *b. A full socket buffer (EAGAIN) is no error: *b keeps the rest. ok is
// false when conn offers no raw descriptor; nothing was written then.
func (v *vecWriter) writeNow(rc syscall.RawConn, b *net.Buffers) (ok bool, err error) {
	if rc == nil {
		return false, nil
	}
	for len(*b) > 0 {
		v.iov = v.iov[:0]
		size := 0
		for _, p := range *b {
			if len(p) == 0 {
				continue
			}
			iov := syscall.Iovec{Base: &p[0]}
			iov.SetLen(len(p))
			v.iov = append(v.iov, iov)
			size += len(p)
			if len(v.iov) == iovMax {
				break
			}
		}
		if len(v.iov) == 0 {
			*b = (*b)[:0]
			return true, nil
		}
		if v.call == nil {
			v.call = v.writev
		}
		v.size = size
		if cerr := rc.Write(v.call); cerr != nil {
			return true, cerr
		}
		clear(v.iov) // drop the references to the frames' bytes
		n, errno := v.n, v.errno
		switch errno {
		case 0:
		case syscall.EAGAIN:
			return true, nil
		default:
			return true, &net.OpError{Op: "writev", Net: "tcp", Err: errno}
		}
		consume(b, int(n))
		if int(n) == 0 {
			return true, nil
		}
	}
	return true, nil
}

// writev writes v.iov to fd once (retrying only EINTR) and leaves the
// outcome in v.n and v.errno. It never waits: a full buffer is the
// caller's to finish.
func (v *vecWriter) writev(fd uintptr) bool {
	for {
		if v.size <= rawWriteMax {
			v.n, _, v.errno = syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&v.iov[0])), uintptr(len(v.iov)))
		} else {
			v.n, _, v.errno = syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&v.iov[0])), uintptr(len(v.iov)))
		}
		if v.errno != syscall.EINTR {
			return true
		}
	}
}
