// Package relay carries WireGuard packets between nodes that cannot reach
// each other directly, DERP-style: over TCP (TLS in production), entered by
// an HTTP/1.1 Upgrade so it leaves sites where only HTTPS-like traffic
// does. Packets are addressed by node public key; the payloads are
// WireGuard ciphertext, so a relay learns nothing but who talks to whom.
//
// A relay proves its identity with a Curve25519 key pinned in the relay
// map before the client sends anything sealed; a client proves it holds
// its node key and presents a short-lived ticket signed by the
// coordinator, so relays check membership offline and are never open
// proxies. Every key of the handshake is derived for its one purpose
// (internal/dhkey). The coordinator's signed revocation lists, carried by
// the agents, reach relays that are not meshed with it. Several relays
// sharing a mesh key tell each other which nodes they hold and forward
// packets one hop, so nodes homed on different relays still reach each
// other. Nodes and relays that both take the batch feature (negotiated in
// the Upgrade) carry a batch of WireGuard packets in one frame.
//
// Memory is bounded in bytes: packets are at most maxPacketSize, every
// queue has a byte bound, all queues of a relay share a budget, and
// connections that have not finished the handshake are few (a semaphore,
// per-address limits) and cheap (small buffers).
package relay

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/edgewire/edgewire/types/key"
)

// Key is a node's or relay's public key (one type for all of edgewire).
type Key = key.Public

// ProtocolVersion is the relay protocol version spoken here. It travels in
// the Upgrade request (versionHeader) and in frameServerKey/frameServerInfo.
// Version 2 derives a key per purpose (internal/dhkey), has the relay
// prove its key before the client seals anything, and carries revocation
// lists; a relay refuses other versions at the Upgrade.
const ProtocolVersion = 2

// HTTP upgrade parameters.
const (
	upgradeProto  = "edgewire-relay"
	versionHeader = "Edgewire-Relay-Version"
	// clientHeader is sent by nodes (not by mesh relays, not on probes):
	// base64 (standard, padded) of node public key (32) || client nonce (32).
	clientHeader = "Edgewire-Relay-Client"
	// featuresHeader lists optional features, comma-separated: a node
	// sends what it supports in its Upgrade request, the relay answers in
	// its 101 response with those it supports too. Relays and nodes that
	// predate a feature ignore the header, so neither side uses it. The
	// header is not sealed: stripping or adding it can only slow down or
	// break a connection, which whoever can do it can do anyway.
	featuresHeader = "Edgewire-Relay-Features"
	// featureBatch: frameSendPackets and frameRecvPackets.
	featureBatch = "batch"
	relayPath    = "/relay"
	probePath    = "/relay/probe"
)

// frameType is the first byte of every frame. A frame is
//
//	type (1) | payload length (4, big-endian) | payload
//
// Layouts of the payloads:
type frameType byte

const (
	frameServerKey     = frameType(0x01) // "EWRELAY" (7) + version (1) + relay public key (32) + server nonce (32) + proof (32): MAC(RelayServerProof key, "server"), zero without a client header
	frameClientInfo    = frameType(0x02) // node public key (32, = the client header's) + nonce (24) + secretbox(server nonce (32) || ticket) under the RelayClient key
	frameServerInfo    = frameType(0x03) // nonce (24) + secretbox(server nonce (32) || version (1) || keepalive seconds (2, BE)) under the RelayServerInfo key
	frameSendPacket    = frameType(0x04) // client->relay: destination key (32) + packet (<= maxPacketSize)
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
	frameRevocations   = frameType(0x11) // client->relay: a coordinator-signed revocation list (see SignRevocations)
	frameSendPackets   = frameType(0x12) // client->relay (featureBatch): destination key (32) + packet records (see packetRecords)
	frameRecvPackets   = frameType(0x13) // relay->client that sent featureBatch: source key (32) + packet records
)

// A packet record is one packet of a batch frame:
//
//	length (2, big-endian; 1..maxPacketSize) | packet
//
// A batch frame holds one or more records back to back, nothing after
// the last, at most maxBatchPayload bytes with its key: one frame (and
// one queue entry at the relay) for a batch of WireGuard packets instead
// of one per packet.
const (
	recordHeaderLen = 2
	maxBatchPayload = 32 << 10
)

// The transcript both sides of a node handshake bind every derived key
// to (dhkey.Derive): relay key, node key, client nonce, server nonce. The
// proof label is what the RelayServerProof key MACs.
const serverProofLabel = "server"

const (
	frameHeaderLen = 5
	// maxPacketSize bounds one relayed packet. An agent's MTU is at most
	// 9000 and a WireGuard message is at most MTU + 32 (16-byte header,
	// 16-byte tag), so 9,032 bytes; 9 KiB leaves slack for headers of
	// later WireGuard versions. Bigger packets are dropped, never queued.
	maxPacketSize = 9 << 10
	// maxFramePayload is the largest payload of every frame but
	// frameRevocations: a forwarded packet with its two keys. A bigger
	// length closes the connection.
	maxFramePayload = 2*32 + maxPacketSize
	// maxHandshakePayload bounds frames read before the handshake is
	// done (a client info holds 32+24+16+32 bytes and a ticket).
	maxHandshakePayload = 512
	maxRefusalLen       = 256
	pingLen             = 8
	nonceLen            = 32
	proofLen            = 32
	serverMagic         = "EWRELAY"
	serverKeyLen        = len(serverMagic) + 1 + 32 + nonceLen + proofLen
)

// maxPayload is the largest payload a frame of type t may carry.
func maxPayload(t frameType) int {
	switch t {
	case frameRevocations:
		return maxRevocationsLen
	case frameSendPackets, frameRecvPackets:
		return maxBatchPayload
	}
	return maxFramePayload
}

var errBadRecords = errors.New("malformed packet records")

// packetRecords checks that b is a well-formed sequence of packet records
// and returns how many packets it holds and their bytes. It checks all of
// b before the caller uses any of it, so a bad frame is dropped whole.
func packetRecords(b []byte) (n, size int, err error) {
	for len(b) > 0 {
		if len(b) < recordHeaderLen {
			return 0, 0, fmt.Errorf("%w: %d bytes after the last record", errBadRecords, len(b))
		}
		l := int(binary.BigEndian.Uint16(b))
		if l == 0 || l > maxPacketSize || l > len(b)-recordHeaderLen {
			return 0, 0, fmt.Errorf("%w: record of %d bytes, %d left, max %d", errBadRecords, l, len(b)-recordHeaderLen, maxPacketSize)
		}
		b = b[recordHeaderLen+l:]
		n++
		size += l
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("%w: no packets", errBadRecords)
	}
	return n, size, nil
}

// nextRecord splits the first packet off records that packetRecords
// accepted.
func nextRecord(b []byte) (pkt, rest []byte) {
	l := recordHeaderLen + int(binary.BigEndian.Uint16(b))
	return b[recordHeaderLen:l], b[l:]
}

// appendRecord appends pkt (1..maxPacketSize bytes) as a packet record.
func appendRecord(b, pkt []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(pkt))), pkt...)
}

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

// readFrame reads one frame from br and returns its type and payload. A
// frame that fits br's buffer is returned in place, without a copy: the
// payload aliases br and is valid until br's next read. A bigger one is
// read into buf or, when buf is too small, new memory. A length above
// limit or above maxPayload of its type returns errFrameTooLarge before
// reading anything. Memory for a payload that fits neither grows as its
// bytes arrive, so a length field alone never allocates much.
func readFrame(br *bufio.Reader, buf []byte, limit int) (frameType, []byte, error) {
	hdr, err := br.Peek(frameHeaderLen)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	t := frameType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if max := min(limit, maxPayload(t)); uint64(n) > uint64(max) {
		return 0, nil, fmt.Errorf("%w: type %#x length %d, max %d", errFrameTooLarge, byte(t), n, max)
	}
	if total := frameHeaderLen + int(n); total <= br.Size() {
		f, err := br.Peek(total)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		br.Discard(total)
		return t, f[frameHeaderLen:total:total], nil
	}
	br.Discard(frameHeaderLen)
	if int(n) <= cap(buf) {
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return 0, nil, unexpected(err)
		}
		return t, buf, nil
	}
	// Grow by doubling from what fits buf, reading as we go.
	p := buf[:0]
	for len(p) < int(n) {
		step := min(int(n)-len(p), max(len(p), 4<<10))
		p = slices.Grow(p, step)
		if _, err := io.ReadFull(br, p[len(p):len(p)+step]); err != nil {
			return 0, nil, unexpected(err)
		}
		p = p[:len(p)+step]
	}
	return t, p, nil
}

// frameBuffered reports whether br holds a whole frame, so that the next
// readFrame returns without reading from the connection.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < frameHeaderLen {
		return false
	}
	hdr, _ := br.Peek(frameHeaderLen) // buffered: never reads
	return uint64(n-frameHeaderLen) >= uint64(binary.BigEndian.Uint32(hdr[1:]))
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
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
	if n > maxPayload(t) {
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
