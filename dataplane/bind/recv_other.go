//go:build !linux

package bind

import (
	"errors"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// recv4 is Linux's allocation-free IPv4 reader; elsewhere StdNetBind
// reads its sockets itself.
type recv4 struct{}

func newRecv4(int, int, *atomic.Uint64) (*recv4, error) { return nil, errors.ErrUnsupported }

func (*recv4) Close() error { return nil }

func (*recv4) receive([][]byte, []int, []conn.Endpoint) (int, error) {
	return 0, errors.ErrUnsupported
}
