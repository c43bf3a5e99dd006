//go:build !linux

package bind

import (
	"errors"
	"net/netip"
)

func omitPMTU(uint16) ([]int, error) { return nil, nil }

func sendTTL(int, netip.AddrPort, []byte, int) error { return errors.ErrUnsupported }
