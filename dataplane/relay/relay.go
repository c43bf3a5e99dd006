// Package relay carries WireGuard packets between nodes that cannot reach
// each other directly, DERP-style: over TCP (TLS in production), entered by
// an HTTP/1.1 Upgrade so it leaves sites where only HTTPS-like traffic
// does. Packets are addressed by node public key; the payloads are
// WireGuard ciphertext, so a relay learns nothing but who talks to whom.
//
// A relay proves its identity with a Curve25519 key pinned in the relay
// map; a client proves it holds its node key (a NaCl box over a fresh
// server nonce) and presents a short-lived ticket signed by the
// coordinator, so relays check membership offline and are never open
// proxies. Several relays sharing a mesh key tell each other which nodes
// they hold and forward packets one hop, so nodes homed on different
// relays still reach each other.
package relay

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/curve25519"
)

// Key is a Curve25519 public or private key (node or relay).
type Key = [32]byte

// ProtocolVersion is the relay protocol version spoken here. It travels in
// the Upgrade request (versionHeader) and in frameServerKey/frameServerInfo.
const ProtocolVersion = 1

// HTTP upgrade parameters.
const (
	upgradeProto  = "edgewire-relay"
	versionHeader = "Edgewire-Relay-Version"
	relayPath     = "/relay"
	probePath     = "/relay/probe"
)

// frameType is the first byte of every frame. A frame is
//
//	type (1) | payload length (4, big-endian) | payload
//
// Layouts of the payloads:
type frameType byte

const (
	frameServerKey     = frameType(0x01) // "EWRELAY" (7) + version (1) + relay public key (32) + server nonce (32)
	frameClientInfo    = frameType(0x02) // node public key (32) + box nonce (24) + box(server nonce (32) || ticket) to the relay key
	frameServerInfo    = frameType(0x03) // box nonce (24) + box(server nonce (32) || version (1) || keepalive seconds (2, BE)) to the node key
	frameSendPacket    = frameType(0x04) // client->relay: destination key (32) + packet
	frameRecvPacket    = frameType(0x05) // relay->client: source key (32) + packet
	frameKeepAlive     = frameType(0x06) // empty; sent on idle connections, either way
	framePing          = frameType(0x07) // 8 opaque bytes, either way; answered by framePong
	framePong          = frameType(0x08) // the 8 bytes of the ping it answers
	frameTicket        = frameType(0x09) // client->relay: renewed ticket (see SignTicket)
	frameMeshInfo      = frameType(0x0a) // mesh client->relay: its relay key (32) + HMAC-SHA256(mesh key, "edgewire-mesh-v1" || server nonce || server key || client key) (32)
	frameMeshAck       = frameType(0x0b) // relay->mesh client: keepalive seconds (2, BE) + HMAC-SHA256(mesh key, "edgewire-mesh-v1-ack" || server nonce || server key || client key || keepalive) (32)
	framePeerPresent   = frameType(0x0c) // relay->mesh client: key (32) of a node now connected here
	framePeerGone      = frameType(0x0d) // relay->mesh client: key (32) of a node gone from here
	frameForwardPacket = frameType(0x0e) // mesh client->relay: source key (32) + destination key (32) + packet
	frameRevoke        = frameType(0x0f) // relay->mesh client: node key (32) + refused until, unix seconds (8, BE)
	frameRefused       = frameType(0x10) // relay->client during the handshake: reason, UTF-8 (<= 256); the relay then closes
)

const (
	frameHeaderLen = 5
	// maxPacketSize bounds one relayed packet (WireGuard never sends more
	// than MTU+32, but leave room for jumbo links).
	maxPacketSize = 64 << 10
	// maxFramePayload is the largest payload: a forwarded packet with its
	// two keys. A bigger length closes the connection.
	maxFramePayload = 2*32 + maxPacketSize
	maxRefusalLen   = 256
	pingLen         = 8
	serverMagic     = "EWRELAY"
	serverKeyLen    = len(serverMagic) + 1 + 32 + 32
)

var (
	errFrameTooLarge = errors.New("relay: frame too large")
	// ErrNotConnected is returned by Client.Send and Client.Ping while no
	// relay connection is up.
	ErrNotConnected = errors.New("relay: not connected")
	// ErrRefused wraps the reason a relay gave for refusing a handshake.
	ErrRefused = errors.New("relay: refused")
	// ErrWrongServerKey means the relay did not hold the key the relay
	// map pins for it.
	ErrWrongServerKey = errors.New("relay: server key mismatch")
	// ErrPacketTooLarge is returned by Client.Send for oversize packets.
	ErrPacketTooLarge = errors.New("relay: packet too large")
)

// PublicKey returns the Curve25519 public key of priv.
func PublicKey(priv Key) Key {
	var pub Key
	curve25519.ScalarBaseMult(&pub, &priv)
	return pub
}

// readFrame reads one frame from br into buf (grown to at most
// maxFramePayload when too small) and returns its type and payload, which
// aliases buf. An oversize length returns errFrameTooLarge before reading
// or allocating anything.
func readFrame(br *bufio.Reader, buf []byte) (frameType, []byte, error) {
	hdr, err := br.Peek(frameHeaderLen)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	t := frameType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFramePayload {
		return 0, nil, fmt.Errorf("%w: type %#x length %d, max %d", errFrameTooLarge, byte(t), n, maxFramePayload)
	}
	br.Discard(frameHeaderLen)
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(br, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return t, buf, nil
}

// writeFrameHeader starts a frame of n payload bytes; the caller writes
// exactly n bytes after it.
func writeFrameHeader(bw *bufio.Writer, t frameType, n int) error {
	if bw.Available() < frameHeaderLen {
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	// Appending to AvailableBuffer writes in place: no allocation.
	hdr := append(bw.AvailableBuffer(), byte(t))
	_, err := bw.Write(binary.BigEndian.AppendUint32(hdr, uint32(n)))
	return err
}

// writeFrame writes a frame whose payload is the concatenation of parts.
// It does not flush.
func writeFrame(bw *bufio.Writer, t frameType, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > maxFramePayload {
		return fmt.Errorf("%w: type %#x length %d", errFrameTooLarge, byte(t), n)
	}
	if err := writeFrameHeader(bw, t, n); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := bw.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// newNonce returns n random bytes.
func newNonce(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand panics instead)
	return b
}

func shortKey(k Key) string { return fmt.Sprintf("%x", k[:4]) }
