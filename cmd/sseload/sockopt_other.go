//go:build !linux

package main

import "syscall"

// dialControl sets no socket options outside Linux.
func dialControl(srcSet bool, rcvbuf int) func(network, address string, rc syscall.RawConn) error {
	return nil
}
