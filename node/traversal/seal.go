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

// Seal encrypts and authenticates p from the holder of priv to peer.
func Seal(p *api.SignalPayload, peer key.Public, priv key.Private) (*api.Signal, error) {
	plain, err := proto.Marshal(p)
	if err != nil {
		return nil, err
	}
	k, err := signalKey(priv, peer, priv.Public(), peer)
	if err != nil {
		return nil, fmt.Errorf("seal to %s: %w", peer.Short(), err)
	}
	var nonce [24]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	return &api.Signal{PeerKey: peer[:], Nonce: nonce[:], Sealed: secretbox.Seal(nil, plain, &nonce, k)}, nil
}

// Open authenticates and decrypts a signal whose PeerKey is its sender,
// and checks it is fresh at now.
func Open(s *api.Signal, priv key.Private, now time.Time) (*api.SignalPayload, error) {
	if len(s.GetPeerKey()) != 32 || len(s.GetNonce()) != 24 {
		return nil, fmt.Errorf("%w: bad envelope", ErrOpen)
	}
	sender := key.Public(s.GetPeerKey())
	k, err := signalKey(priv, sender, sender, priv.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: sender key: %v", ErrOpen, err)
	}
	plain, ok := secretbox.Open(nil, s.GetSealed(), (*[24]byte)(s.GetNonce()), k)
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
