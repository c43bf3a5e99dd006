package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

// Presence is which nodes are online, with what each reported.
type Presence = map[key.Public]NodePresence

// NodePresence is what an online node reported when it connected.
type NodePresence struct {
	Endpoints []netip.AddrPort
	Version   string // agent version (api.ValidVersion); "" if none
}

// PresenceKeeper is a Store that also keeps the fleet's presence: the
// serving coordinator saves it every few seconds, in batches, and the
// next one (another replica after a failover, or the same after a
// restart) starts from it instead of from nobody online, so the map it
// serves is the one agents already hold (see netmap's digest).
//
// Presence is not durable state: a save may be seconds old, and a lost
// or refused one costs agents only a full map each. It never costs a
// write per node.
type PresenceKeeper interface {
	// SavePresence replaces the saved presence with p, as of at.
	SavePresence(ctx context.Context, p Presence, at time.Time) error
	// LoadPresence returns the saved presence and the time of its oldest
	// part (zero time and no error if nothing is saved). Parts that do
	// not decode are left out.
	LoadPresence(ctx context.Context) (Presence, time.Time, error)
}

// Encoding of a saved presence (EncodePresence): a format byte (2), the
// save time (int64 Unix milliseconds, big-endian), then per node in key
// order: the 32-byte key, the number of endpoints (one byte, at most
// MaxPresenceEndpoints), per endpoint the address length (4 or 16), the
// address and the port (big-endian), then the agent version's length
// (one byte, at most api.MaxVersionLen) and its bytes. Format 1, what
// coordinators before agent versions saved, is the same without the
// version; it still decodes (versions empty), so an upgrade does not cost
// the fleet its carried presence.
const (
	presenceFormat   = 2
	presenceFormatV1 = 1
	// PresenceHeaderLen is the format byte and the save time: what
	// follows is the presence itself.
	PresenceHeaderLen = 9
	// MaxPresenceEndpoints bounds the endpoints kept per node.
	MaxPresenceEndpoints = 32
)

// EncodePresence encodes p as of at. Endpoints beyond
// MaxPresenceEndpoints are left out, and so is a version that is not
// api.ValidVersion.
func EncodePresence(p Presence, at time.Time) []byte {
	keys := make([]key.Public, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key.Public) int { return bytes.Compare(a[:], b[:]) })
	b := make([]byte, 0, PresenceHeaderLen+len(p)*(34+2*7+8))
	b = append(b, presenceFormat)
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMilli()))
	for _, k := range keys {
		np := p[k]
		eps := np.Endpoints
		if len(eps) > MaxPresenceEndpoints {
			eps = eps[:MaxPresenceEndpoints]
		}
		b = append(b, k[:]...)
		b = append(b, byte(len(eps)))
		for _, ep := range eps {
			a := ep.Addr().Unmap()
			b = append(b, byte(a.BitLen()/8))
			b = append(b, a.AsSlice()...)
			b = binary.BigEndian.AppendUint16(b, ep.Port())
		}
		v := np.Version
		if !api.ValidVersion(v) {
			v = ""
		}
		b = append(b, byte(len(v)))
		b = append(b, v...)
	}
	return b
}

// ErrBadPresence is DecodePresence's error for bytes that are not an
// encoded presence.
var ErrBadPresence = errors.New("not a saved presence")

// DecodePresence decodes what EncodePresence made, adding the nodes to
// into (which must not be nil), and returns the save time. Bytes that do
// not decode whole (truncated, trailing, a bad length, a key twice)
// add nothing.
func DecodePresence(b []byte, into Presence) (time.Time, error) {
	if len(b) < PresenceHeaderLen || (b[0] != presenceFormat && b[0] != presenceFormatV1) {
		return time.Time{}, fmt.Errorf("%w: bad header", ErrBadPresence)
	}
	withVersion := b[0] == presenceFormat
	at := time.UnixMilli(int64(binary.BigEndian.Uint64(b[1:PresenceHeaderLen])))
	b = b[PresenceHeaderLen:]
	got := Presence{}
	for len(b) > 0 {
		if len(b) < 33 {
			return time.Time{}, fmt.Errorf("%w: truncated node", ErrBadPresence)
		}
		k := key.Public(b[:32])
		n := int(b[32])
		b = b[33:]
		if n > MaxPresenceEndpoints {
			return time.Time{}, fmt.Errorf("%w: %d endpoints", ErrBadPresence, n)
		}
		if _, dup := got[k]; dup {
			return time.Time{}, fmt.Errorf("%w: node %s twice", ErrBadPresence, k.Short())
		}
		eps := make([]netip.AddrPort, 0, n)
		for range n {
			if len(b) < 1 {
				return time.Time{}, fmt.Errorf("%w: truncated endpoint", ErrBadPresence)
			}
			l := int(b[0])
			if (l != 4 && l != 16) || len(b) < 1+l+2 {
				return time.Time{}, fmt.Errorf("%w: bad endpoint", ErrBadPresence)
			}
			a, _ := netip.AddrFromSlice(b[1 : 1+l])
			if a.Is4In6() {
				return time.Time{}, fmt.Errorf("%w: mapped address", ErrBadPresence)
			}
			eps = append(eps, netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[1+l:])))
			b = b[1+l+2:]
		}
		var v string
		if withVersion {
			if len(b) < 1 || len(b) < 1+int(b[0]) {
				return time.Time{}, fmt.Errorf("%w: truncated version", ErrBadPresence)
			}
			v = string(b[1 : 1+int(b[0])])
			if !api.ValidVersion(v) {
				return time.Time{}, fmt.Errorf("%w: bad version %q", ErrBadPresence, v)
			}
			b = b[1+len(v):]
		}
		got[k] = NodePresence{Endpoints: eps, Version: v}
	}
	for k, np := range got {
		into[k] = np
	}
	return at, nil
}
