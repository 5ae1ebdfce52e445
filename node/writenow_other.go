//go:build !linux

package node

import (
	"net"
	"syscall"
)

// vecWriter is the Linux raw writev; elsewhere the pool writes through
// net.Conn with a short deadline.
type vecWriter struct{}

func (v *vecWriter) writeNow(syscall.RawConn, *net.Buffers) (ok bool, err error) {
	return false, nil
}
