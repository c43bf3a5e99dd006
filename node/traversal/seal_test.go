package traversal

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/box"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

func keypair(t testing.TB) (key.Public, key.Private) {
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return priv.Public(), priv
}

func TestSealOpen(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	aPub, aPriv := keypair(t)
	bPub, bPriv := keypair(t)
	_, mPriv := keypair(t) // mallory
	payload := &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7, Ufrag: "uf", Pwd: "pw", SentUnixMs: now.UnixMilli()}

	// seal from a to b; the coordinator rewrites PeerKey to the sender.
	sealed := func(p *api.SignalPayload, priv key.Private) Signal {
		s, err := Seal(p, bPub, priv)
		if err != nil {
			t.Fatal(err)
		}
		s.Peer = aPub
		return s
	}
	good := sealed(payload, aPriv)
	got, err := Open(good, bPriv, now)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if !proto.Equal(got, payload) {
		t.Errorf("open: got %v, want %v", got, payload)
	}

	flip := func(f func(s *Signal)) Signal {
		s := good
		s.Sealed = bytes.Clone(good.Sealed)
		f(&s)
		return s
	}
	stale := proto.Clone(payload).(*api.SignalPayload)
	stale.SentUnixMs = now.Add(-time.Hour).UnixMilli()
	noSession := proto.Clone(payload).(*api.SignalPayload)
	noSession.Session = 0
	for _, tc := range []struct {
		name string
		s    Signal
		priv key.Private
	}{
		{"tampered ciphertext", flip(func(s *Signal) { s.Sealed[len(s.Sealed)/2] ^= 1 }), bPriv},
		{"tampered nonce", flip(func(s *Signal) { s.Nonce[0] ^= 1 }), bPriv},
		{"sender key swapped", flip(func(s *Signal) { s.Peer = bPub }), bPriv},
		{"forged by a third key", sealed(payload, mPriv), bPriv},
		{"wrong recipient", good, aPriv},
		{"stale (replay)", sealed(stale, aPriv), bPriv},
		{"no session", sealed(noSession, aPriv), bPriv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(tc.s, tc.priv, now); !errors.Is(err, ErrOpen) {
				t.Errorf("open: got %v, want ErrOpen", err)
			}
		})
	}
	// Envelopes off the wire are checked when they are converted.
	for name, w := range map[string]*api.Signal{
		"short nonce": {PeerKey: aPub[:], Nonce: make([]byte, 23), Sealed: good.Sealed},
		"short key":   {PeerKey: aPub[:31], Nonce: make([]byte, 24), Sealed: good.Sealed},
	} {
		if _, err := SignalFromProto(w); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: SignalFromProto = %v, want ErrOpen", name, err)
		}
	}
	w, err := SignalFromProto(good.Proto())
	if err != nil || w.Peer != good.Peer || w.Nonce != good.Nonce || !bytes.Equal(w.Sealed, good.Sealed) {
		t.Errorf("Proto and back: got %+v, %v", w, err)
	}
}

func FuzzOpen(f *testing.F) {
	_, priv := keypair(f)
	pub, _ := keypair(f)
	f.Add(pub[:], make([]byte, 24), []byte("sealed"))
	f.Fuzz(func(t *testing.T, nk, nonce, sealed []byte) {
		sig, err := SignalFromProto(&api.Signal{PeerKey: nk, Nonce: nonce, Sealed: sealed})
		if err != nil {
			return
		}
		p, err := Open(sig, priv, time.Now())
		if err == nil && p.GetSession() == 0 {
			t.Fatal("opened a signal without a session")
		}
	})
}

// TestSignalNotAnOracle is the attack of a fake coordinator that wants to
// read a sealed offer (ufrag and pwd) from a peer to this node: it hands
// the sealed bytes to the node as an authentication challenge, the way
// the v1 challenge (a box opened with the node key) let it. The node's
// answer must reveal nothing of the signal, and a challenge that uses a
// known peer key is refused outright.
func TestSignalNotAnOracle(t *testing.T) {
	now := time.Now()
	nodePub, nodePriv := keypair(t)
	peerPub, peerPriv := keypair(t)
	offer := &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 9, Ufrag: "secretufrag", Pwd: "secretpassword0123456789", SentUnixMs: now.UnixMilli()}
	sig, err := Seal(offer, nodePub, peerPriv)
	if err != nil {
		t.Fatal(err)
	}
	sig.Peer = peerPub // as the coordinator forwards it
	plain, _ := proto.Marshal(offer)

	// The fake challenge: the peer's key as the "ephemeral" key.
	ch := &api.Challenge{EphemeralPublicKey: peerPub[:], Nonce: append(bytes.Clone(sig.Nonce[:]), make([]byte, 8)...)}
	known := func(k key.Public) bool { return k == peerPub }
	if _, err := api.Prove(nodePriv, ch, api.AuthConnect, nil, known); !errors.Is(err, api.ErrBadChallenge) {
		t.Errorf("challenge with a known peer key: got %v, want ErrBadChallenge", err)
	}
	// Even answered (a peer key the node does not know yet), the proof is
	// a MAC under a key derived for authentication only.
	proof, err := api.Prove(nodePriv, ch, api.AuthConnect, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(proof.GetMac(), plain[:8]) || bytes.Contains(plain, proof.GetMac()[:8]) {
		t.Error("the proof carries bytes of the signal's plaintext")
	}
	// The v1 oracle opened a NaCl box with the node key and the
	// challenge's key; the signal is no longer such a box.
	if _, ok := box.Open(nil, sig.Sealed, &sig.Nonce, (*[32]byte)(&peerPub), (*[32]byte)(&nodePriv)); ok {
		t.Error("the sealed signal opens as a NaCl box between the node keys")
	}
	// And the real recipient still opens it.
	got, err := Open(sig, nodePriv, now)
	if err != nil || got.GetPwd() != offer.Pwd {
		t.Fatalf("Open by the recipient: %v, %v", got, err)
	}
}

// TestOpenLowOrderSender: a signal claiming a low-order sender key would
// open under a predictable key; it is refused.
func TestOpenLowOrderSender(t *testing.T) {
	_, priv := keypair(t)
	s := Signal{Sealed: make([]byte, 40)}
	if _, err := Open(s, priv, time.Now()); !errors.Is(err, ErrOpen) {
		t.Errorf("got %v, want ErrOpen", err)
	}
}
