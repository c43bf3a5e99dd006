package bind

import "encoding/binary"

// Class is what a datagram on the shared socket is.
type Class uint8

const (
	// Other is neither WireGuard nor STUN; it is dropped.
	Other Class = iota
	// WireGuard is a WireGuard message, handed to the device untouched.
	WireGuard
	// STUN is a STUN message (ICE connectivity checks, binding
	// responses from STUN servers), diverted to ICE.
	STUN
)

func (c Class) String() string {
	switch c {
	case WireGuard:
		return "wireguard"
	case STUN:
		return "stun"
	}
	return "other"
}

// WireGuard message layouts (all little-endian, type in the first byte,
// then three reserved zero bytes):
//
//	type 1 handshake initiation: 148 bytes
//	type 2 handshake response:    92 bytes
//	type 3 cookie reply:          64 bytes
//	type 4 transport data:        16-byte header + payload + 16-byte tag, at least
//	                              32 bytes (a keepalive). The payload is padded to a
//	                              multiple of 16 only up to the MTU, so a full-size
//	                              packet's length is not 32 + 16k: only the minimum
//	                              can be checked.
const (
	wgInitiationSize = 148
	wgResponseSize   = 92
	wgCookieSize     = 64
	wgTransportMin   = 32
)

// STUN header (RFC 5389 section 6): 2 bits zero, 14-bit type, 16-bit
// length of the attributes (a multiple of 4), 32-bit magic cookie,
// 96-bit transaction id.
const (
	stunHeaderSize = 20
	stunCookie     = 0x2112A442
)

// Classify decides what b is from its header alone; it never allocates.
func Classify(b []byte) Class {
	if len(b) >= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0 {
		switch b[0] {
		case 1:
			if len(b) == wgInitiationSize {
				return WireGuard
			}
		case 2:
			if len(b) == wgResponseSize {
				return WireGuard
			}
		case 3:
			if len(b) == wgCookieSize {
				return WireGuard
			}
		case 4:
			if len(b) >= wgTransportMin {
				return WireGuard
			}
		}
		return Other
	}
	if len(b) >= stunHeaderSize && b[0]&0xC0 == 0 &&
		binary.BigEndian.Uint32(b[4:8]) == stunCookie &&
		int(binary.BigEndian.Uint16(b[2:4]))+stunHeaderSize == len(b) && len(b)%4 == 0 {
		return STUN
	}
	return Other
}
