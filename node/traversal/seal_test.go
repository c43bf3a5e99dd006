package traversal

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/box"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/coordinator/api"
)

func keypair(t testing.TB) (pub, priv *[32]byte) {
	pub, priv, err := box.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func TestSealOpen(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	aPub, aPriv := keypair(t)
	bPub, bPriv := keypair(t)
	_, mPriv := keypair(t) // mallory
	payload := &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7, Ufrag: "uf", Pwd: "pw", SentUnixMs: now.UnixMilli()}

	// seal from a to b; the coordinator rewrites PeerKey to the sender.
	sealed := func(p *api.SignalPayload, priv *[32]byte) *api.Signal {
		s, err := Seal(p, bPub, priv)
		if err != nil {
			t.Fatal(err)
		}
		s.PeerKey = aPub[:]
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

	flip := func(f func(s *api.Signal)) *api.Signal {
		s := proto.Clone(good).(*api.Signal)
		f(s)
		return s
	}
	stale := proto.Clone(payload).(*api.SignalPayload)
	stale.SentUnixMs = now.Add(-time.Hour).UnixMilli()
	noSession := proto.Clone(payload).(*api.SignalPayload)
	noSession.Session = 0
	for _, tc := range []struct {
		name string
		s    *api.Signal
		priv *[32]byte
	}{
		{"tampered ciphertext", flip(func(s *api.Signal) { s.Sealed[len(s.Sealed)/2] ^= 1 }), bPriv},
		{"tampered nonce", flip(func(s *api.Signal) { s.Nonce[0] ^= 1 }), bPriv},
		{"sender key swapped", flip(func(s *api.Signal) { s.PeerKey = bPub[:] }), bPriv},
		{"forged by a third key", sealed(payload, mPriv), bPriv},
		{"wrong recipient", good, aPriv},
		{"short nonce", flip(func(s *api.Signal) { s.Nonce = s.Nonce[:23] }), bPriv},
		{"stale (replay)", sealed(stale, aPriv), bPriv},
		{"no session", sealed(noSession, aPriv), bPriv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(tc.s, tc.priv, now); !errors.Is(err, ErrOpen) {
				t.Errorf("open: got %v, want ErrOpen", err)
			}
		})
	}
}

func FuzzOpen(f *testing.F) {
	_, priv := keypair(f)
	pub, _ := keypair(f)
	f.Add(pub[:], make([]byte, 24), []byte("sealed"))
	f.Fuzz(func(t *testing.T, key, nonce, sealed []byte) {
		p, err := Open(&api.Signal{PeerKey: key, Nonce: nonce, Sealed: sealed}, priv, time.Now())
		if err == nil && p.GetSession() == 0 {
			t.Fatal("opened a signal without a session")
		}
	})
}
