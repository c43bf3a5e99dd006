package api

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

// The key proof of Join and Connect (see Challenge and AuthProof in
// edgewire.proto). Both sides build it with these functions.

// Methods a proof is for: a Join proof cannot stand in for a Connect.
const (
	AuthJoin    = "join"
	AuthConnect = "connect"
	AuthUpdate  = "update"
)

// ChallengeNonceLen is the length of Challenge.nonce.
const ChallengeNonceLen = 32

// exporterLabel is the TLS exporter label of the channel binding.
const exporterLabel = "EXPORTER-edgewire-control-auth"

// Binding returns the channel binding of a TLS connection: 32 bytes of
// exported keying material, the same on both ends of one TLS session and
// unrelated on any other. cs nil (a connection without TLS: the
// coordinator's local unix socket, in-process tests) binds to nothing.
func Binding(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil {
		return nil, nil
	}
	b, err := cs.ExportKeyingMaterial(exporterLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("tls exporter: %w", err)
	}
	return b, nil
}

// NewChallenge returns a challenge and the ephemeral key the server
// keeps to check the proof.
func NewChallenge() (*Challenge, *dhkey.Local, error) {
	eph, err := dhkey.GenerateLocal()
	if err != nil {
		return nil, nil, err
	}
	pub := eph.Public()
	nonce := make([]byte, ChallengeNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	return &Challenge{EphemeralPublicKey: pub[:], Nonce: nonce}, eph, nil
}

// ErrBadChallenge is returned by Prove for a challenge it refuses to
// answer.
var ErrBadChallenge = errors.New("bad challenge")

// Prove answers ch for method with the node's private key over the
// connection with channel binding binding. It refuses an ephemeral key
// that is of small order or that refuse reports as known (the node's own
// key, a peer's, a relay's): a genuine challenge uses a fresh key.
func Prove(nodePriv key.Private, ch *Challenge, method string, binding []byte, refuse func(key.Public) bool) (*AuthProof, error) {
	node, err := dhkey.NewLocal(nodePriv)
	if err != nil {
		return nil, err
	}
	return ProveWith(node, ch, method, binding, refuse)
}

// ProveWith is Prove with the node key prepared (dhkey.Local), which
// halves its cost.
func ProveWith(node *dhkey.Local, ch *Challenge, method string, binding []byte, refuse func(key.Public) bool) (*AuthProof, error) {
	if len(ch.GetEphemeralPublicKey()) != 32 || len(ch.GetNonce()) != ChallengeNonceLen {
		return nil, fmt.Errorf("%w: want a 32-byte key and a %d-byte nonce", ErrBadChallenge, ChallengeNonceLen)
	}
	eph := key.Public(ch.GetEphemeralPublicKey())
	if refuse != nil && refuse(eph) {
		return nil, fmt.Errorf("%w: its key is a known node or relay key, not a fresh one", ErrBadChallenge)
	}
	pub := node.Public()
	if eph == pub {
		return nil, fmt.Errorf("%w: its key is this node's own", ErrBadChallenge)
	}
	mac, err := proofMAC(node, eph, eph, pub, ch.GetNonce(), method, binding)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadChallenge, err)
	}
	return &AuthProof{Mac: mac[:]}, nil
}

// CheckProof reports whether p proves nodePub for the challenge ch the
// server made with ephPriv, for method over binding. It fails for
// low-order node keys (anyone could compute their proof).
func CheckProof(eph *dhkey.Local, nodePub key.Public, ch *Challenge, method string, binding []byte, p *AuthProof) bool {
	if len(ch.GetEphemeralPublicKey()) != key.Size || len(p.GetMac()) != dhkey.Size {
		return false
	}
	want, err := proofMAC(eph, nodePub, key.Public(ch.GetEphemeralPublicKey()), nodePub, ch.GetNonce(), method, binding)
	if err != nil {
		return false
	}
	return dhkey.Equal(want[:], p.GetMac())
}

// proofMAC is the proof from either side: local's agreement with pub,
// bound to the ephemeral and node keys, the nonce and the binding.
func proofMAC(local *dhkey.Local, pub, eph, node key.Public, nonce []byte, method string, binding []byte) ([32]byte, error) {
	k, err := local.Derive(pub, dhkey.ControlAuth, binding, eph[:], node[:], nonce)
	if err != nil {
		return [32]byte{}, err
	}
	return dhkey.MAC(k, []byte(method)), nil
}
