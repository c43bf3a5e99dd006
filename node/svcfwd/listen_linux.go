package svcfwd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// freebind lets a socket bind the overlay address before the agent has
// put it on the interface (and keep it across a brief removal).
func freebind(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	}); err != nil {
		return err
	}
	return serr
}
