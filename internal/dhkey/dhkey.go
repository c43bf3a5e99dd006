// Package dhkey turns X25519 agreements into keys bound to one purpose.
//
// A node has one Curve25519 key (its WireGuard key), and several protocols
// use agreements with it: the coordinator's authentication challenge,
// signalling between nodes, the relay handshake. If two of them used the
// raw agreement (as NaCl box does), a party that can make the node run
// one protocol could use its answers against another: a fake coordinator
// could hand the node a sealed signal as a "challenge" and read the
// plaintext in the proof. Every use here derives its own key with
// HKDF-SHA256 from the agreement, a purpose label and the transcript, so
// what one protocol reveals is useless to every other.
package dhkey

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"

	"golang.org/x/crypto/curve25519"

	"github.com/edgewire/edgewire/types/key"
)

// Purpose names one use of an agreement. Each purpose yields unrelated
// keys from the same two key pairs.
type Purpose string

// The purposes edgewire uses. The version in each label changes whenever
// the use of its key changes.
const (
	// ControlAuth: the node proves its key to the coordinator (Join and
	// Connect), ephemeral (coordinator) × static (node).
	ControlAuth Purpose = "edgewire control auth v1"
	// Signal: ICE signalling sealed between two nodes, static × static.
	Signal Purpose = "edgewire signal v1"
	// RelayServerProof: a relay proves its key to a client before the
	// client sends anything sealed, static (relay) × static (node).
	RelayServerProof Purpose = "edgewire relay server proof v2"
	// RelayClient: the client's sealed ticket and key proof.
	RelayClient Purpose = "edgewire relay client v2"
	// RelayServerInfo: the relay's sealed reply with its parameters.
	RelayServerInfo Purpose = "edgewire relay server info v2"
)

// ErrLowOrder is returned for a public key whose agreement with any
// private key is predictable (a point of small order): whoever sends it
// needs no private key to complete a protocol.
var ErrLowOrder = errors.New("low-order public key")

// Size is the size of keys, public keys and MACs here.
const Size = 32

// lowOrder are the public keys whose agreement with every clamped scalar
// is all zeros: the u-coordinates of the points of order 1, 2, 4 and 8 on
// Curve25519 and its twist (0, 1, p-1 and the two of order 8), and p and
// p+1, which X25519 reads as 0 and 1. A clamped scalar is a multiple of 8
// and less than 8 times the large prime order of either group, so its
// agreement is zero for exactly these, whatever the scalar (the test
// checks this against a ladder). Bit 255 is ignored, as X25519 ignores it.
var lowOrder = [...][Size]byte{
	{},
	{1},
	{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
	{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
		0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
	pMinus(1), pMinus(0), pMinus(-1),
}

// pMinus returns p-d (p = 2^255-19) for small d, little-endian.
func pMinus(d int) [Size]byte {
	b := [Size]byte{0: byte(0xed - d)}
	for i := 1; i < Size-1; i++ {
		b[i] = 0xff
	}
	b[Size-1] = 0x7f
	return b
}

// CheckPublic returns ErrLowOrder if pub is a point of small order (the
// all-zero key among them): one whose agreement with any key is all
// zeros, so a party using it would agree on a key everyone knows.
func CheckPublic(pub key.Public) error {
	pub[Size-1] &= 0x7f
	for _, lo := range lowOrder {
		if pub == key.Public(lo) {
			return ErrLowOrder
		}
	}
	return nil
}

// Local is a private key prepared for agreements. Its public key is
// computed once, when it is made; an agreement with a bare key.Private
// (Derive) computes it again each time, which doubles the cost of every
// agreement. Safe for concurrent use.
type Local struct{ k *ecdh.PrivateKey }

// NewLocal prepares priv.
func NewLocal(priv key.Private) (*Local, error) {
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return nil, err
	}
	return &Local{k: k}, nil
}

// GenerateLocal returns a fresh random key, prepared.
func GenerateLocal() (*Local, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Local{k: k}, nil
}

// Public returns the public key.
func (l *Local) Public() key.Public { return key.Public(l.k.PublicKey().Bytes()) }

// Derive is the package's Derive with l's private key.
func (l *Local) Derive(pub key.Public, p Purpose, transcript ...[]byte) ([Size]byte, error) {
	shared, err := l.agree(pub)
	if err != nil {
		return [Size]byte{}, err
	}
	return derive(shared, p, transcript)
}

// agree returns the X25519 agreement of l and pub, ErrLowOrder when it
// is all zeros (pub of small order).
func (l *Local) agree(pub key.Public) ([]byte, error) {
	pk, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return nil, err // cannot happen for 32 bytes
	}
	shared, err := l.k.ECDH(pk)
	if err != nil {
		return nil, ErrLowOrder
	}
	return shared, nil
}

// Derive returns the key for purpose p from the agreement of priv and pub,
// bound to the transcript parts (public keys, nonces, channel bindings).
// Both sides must pass the same parts in the same order. It fails with
// ErrLowOrder when pub is of small order.
func Derive(priv key.Private, pub key.Public, p Purpose, transcript ...[]byte) ([Size]byte, error) {
	shared, err := curve25519.X25519(priv[:], pub[:])
	if err != nil {
		return [Size]byte{}, ErrLowOrder
	}
	return derive(shared, p, transcript)
}

// derive is Derive after the agreement.
func derive(shared []byte, p Purpose, transcript [][]byte) ([Size]byte, error) {
	var out [Size]byte
	// The transcript is the HKDF salt, hashed with each part's length so
	// that no two different transcripts collide.
	h := sha256.New()
	for _, t := range transcript {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(t)>>24), byte(len(t)>>16), byte(len(t)>>8), byte(len(t))
		h.Write(n[:])
		h.Write(t)
	}
	k, err := hkdf.Key(sha256.New, shared, h.Sum(nil), string(p), Size)
	if err != nil {
		return out, err // cannot happen for 32 bytes of SHA-256
	}
	copy(out[:], k)
	return out, nil
}

// MAC returns HMAC-SHA256 of the concatenated parts under key. All parts
// but the last must have a fixed length in the caller's layout.
func MAC(k [Size]byte, parts ...[]byte) [Size]byte {
	m := hmac.New(sha256.New, k[:])
	for _, p := range parts {
		m.Write(p)
	}
	var out [Size]byte
	copy(out[:], m.Sum(nil))
	return out
}

// Equal compares two MACs in constant time.
func Equal(a, b []byte) bool { return hmac.Equal(a, b) }
