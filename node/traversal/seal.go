package traversal

import (
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/nacl/secretbox"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/dhkey"
	"github.com/edgewire/edgewire/types/key"
)

// maxSkew bounds how far a signal's timestamp may be from the local clock;
// older signals (replays through the coordinator) are dropped.
const maxSkew = 5 * time.Minute

// ErrOpen is returned for signals that do not open or are not fresh.
var ErrOpen = errors.New("signal rejected")

// signalKey is the key of signals from sender to recipient: derived
// from the two node keys for signalling only (dhkey.Signal), so no other
// use of the node key (the coordinator's challenge, the relay handshake)
// can be made to seal or open a signal.
func signalKey(priv key.Private, peer, sender, recipient key.Public) (*[32]byte, error) {
	k, err := dhkey.Derive(priv, peer, dhkey.Signal, sender[:], recipient[:])
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// Signal is a sealed signalling message as the coordinator forwards it:
// Peer is the recipient of one sent and the sender of one received.
type Signal struct {
	Peer   key.Public
	Nonce  [24]byte
	Sealed []byte // secretbox of a marshalled api.SignalPayload
}

// SignalFromProto converts a signal off the coordinator stream; a
// malformed envelope is an error wrapping ErrOpen.
func SignalFromProto(s *api.Signal) (Signal, error) {
	if len(s.GetPeerKey()) != key.Size || len(s.GetNonce()) != 24 {
		return Signal{}, fmt.Errorf("%w: bad envelope", ErrOpen)
	}
	return Signal{Peer: key.Public(s.GetPeerKey()), Nonce: [24]byte(s.GetNonce()), Sealed: s.GetSealed()}, nil
}

// Proto converts a signal for the coordinator stream.
func (s Signal) Proto() *api.Signal {
	return &api.Signal{PeerKey: s.Peer[:], Nonce: s.Nonce[:], Sealed: s.Sealed}
}

// Seal encrypts and authenticates p from the holder of priv to peer.
func Seal(p *api.SignalPayload, peer key.Public, priv key.Private) (Signal, error) {
	plain, err := proto.Marshal(p)
	if err != nil {
		return Signal{}, err
	}
	k, err := signalKey(priv, peer, priv.Public(), peer)
	if err != nil {
		return Signal{}, fmt.Errorf("seal to %s: %w", peer.Short(), err)
	}
	s := Signal{Peer: peer}
	if _, err := rand.Read(s.Nonce[:]); err != nil {
		return Signal{}, err
	}
	s.Sealed = secretbox.Seal(nil, plain, &s.Nonce, k)
	return s, nil
}

// Open authenticates and decrypts a signal whose PeerKey is its sender,
// and checks it is fresh at now.
func Open(s Signal, priv key.Private, now time.Time) (*api.SignalPayload, error) {
	sender := s.Peer
	k, err := signalKey(priv, sender, sender, priv.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: sender key: %v", ErrOpen, err)
	}
	plain, ok := secretbox.Open(nil, s.Sealed, &s.Nonce, k)
	if !ok {
		return nil, fmt.Errorf("%w: does not authenticate", ErrOpen)
	}
	var p api.SignalPayload
	if err := proto.Unmarshal(plain, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOpen, err)
	}
	sent := time.UnixMilli(p.GetSentUnixMs())
	if d := now.Sub(sent); d > maxSkew || d < -maxSkew {
		return nil, fmt.Errorf("%w: sent at %s, %s from now", ErrOpen, sent.UTC().Format(time.RFC3339), d.Round(time.Second))
	}
	if p.GetSession() == 0 {
		return nil, fmt.Errorf("%w: no session", ErrOpen)
	}
	return &p, nil
}
