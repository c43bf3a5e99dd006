package traversal

import (
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/nacl/box"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/coordinator/api"
)

// maxSkew bounds how far a signal's timestamp may be from the local clock;
// older signals (replays through the coordinator) are dropped.
const maxSkew = 5 * time.Minute

// ErrOpen is returned for signals that do not open or are not fresh.
var ErrOpen = errors.New("signal rejected")

// Seal encrypts and authenticates p from the holder of priv to peer.
func Seal(p *api.SignalPayload, peer, priv *[32]byte) (*api.Signal, error) {
	plain, err := proto.Marshal(p)
	if err != nil {
		return nil, err
	}
	var nonce [24]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	return &api.Signal{PeerKey: peer[:], Nonce: nonce[:], Sealed: box.Seal(nil, plain, &nonce, peer, priv)}, nil
}

// Open authenticates and decrypts a signal whose PeerKey is its sender,
// and checks it is fresh at now.
func Open(s *api.Signal, priv *[32]byte, now time.Time) (*api.SignalPayload, error) {
	if len(s.GetPeerKey()) != 32 || len(s.GetNonce()) != 24 {
		return nil, fmt.Errorf("%w: bad envelope", ErrOpen)
	}
	plain, ok := box.Open(nil, s.GetSealed(), (*[24]byte)(s.GetNonce()), (*[32]byte)(s.GetPeerKey()), priv)
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
