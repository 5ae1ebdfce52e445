package main

import "syscall"

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (Linux 4.2): a socket
// bound to a source IP picks its port at connect time, by the whole
// 4-tuple, so each source IP adds a full ephemeral port range per node.
const ipBindAddressNoPort = 24

// dialControl sets the socket options of an outgoing connection before it
// connects: no-port binding when a source IP is set, and SO_RCVBUF when
// rcvbuf > 0 (slow clients, so that their backlog reaches the node fast).
func dialControl(srcSet bool, rcvbuf int) func(network, address string, rc syscall.RawConn) error {
	if !srcSet && rcvbuf <= 0 {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if srcSet {
				// Best effort: without it, binding still works, with fewer ports.
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}
			if rcvbuf > 0 {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}
