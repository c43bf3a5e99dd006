package server

import (
	"testing"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

func TestSignalRouter(t *testing.T) {
	var a, b, c key.Public
	a[0], b[0], c[0] = 1, 2, 3
	r := newSignalRouter()
	inB1 := r.attach(b)
	inB2 := r.attach(b) // a second stream of the same node gets it too

	if !r.forward(a, b, make([]byte, 24), []byte("sealed")) {
		t.Fatal("forward to a connected node: got false, want true")
	}
	for i, in := range []chan *api.Signal{inB1, inB2} {
		select {
		case s := <-in:
			if key.Public(s.GetPeerKey()) != a {
				t.Errorf("stream %d: peer key got %x, want the sender %x", i, s.GetPeerKey(), a)
			}
		default:
			t.Errorf("stream %d got nothing", i)
		}
	}
	if r.forward(a, c, make([]byte, 24), []byte("x")) {
		t.Error("forward to an absent node: got true, want false")
	}
	// A full inbox drops instead of blocking the sender.
	for i := 0; i < signalQueue+10; i++ {
		r.forward(a, b, make([]byte, 24), []byte("x"))
	}
	if len(inB1) != signalQueue {
		t.Errorf("inbox: got %d queued, want %d", len(inB1), signalQueue)
	}
	r.detach(b, inB1)
	r.detach(b, inB2)
	if r.forward(a, b, make([]byte, 24), []byte("x")) {
		t.Error("forward after detach: got true, want false")
	}
}

func TestValidSignal(t *testing.T) {
	var self, peer key.Public
	self[0], peer[0] = 1, 2
	for _, tc := range []struct {
		name string
		s    *api.Signal
		ok   bool
	}{
		{"good", &api.Signal{PeerKey: peer[:], Nonce: make([]byte, 24), Sealed: []byte("x")}, true},
		{"to self", &api.Signal{PeerKey: self[:], Nonce: make([]byte, 24), Sealed: []byte("x")}, false},
		{"short key", &api.Signal{PeerKey: peer[:31], Nonce: make([]byte, 24), Sealed: []byte("x")}, false},
		{"short nonce", &api.Signal{PeerKey: peer[:], Nonce: make([]byte, 23), Sealed: []byte("x")}, false},
		{"empty", &api.Signal{PeerKey: peer[:], Nonce: make([]byte, 24)}, false},
		{"oversize", &api.Signal{PeerKey: peer[:], Nonce: make([]byte, 24), Sealed: make([]byte, maxSealed+1)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := validSignal(tc.s, self); ok != tc.ok {
				t.Errorf("got %v, want %v", ok, tc.ok)
			}
		})
	}
}
