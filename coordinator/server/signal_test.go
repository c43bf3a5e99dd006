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

// Signals for a node with no stream are held and delivered, in order,
// when it attaches; bounded per recipient and in all; none for a node
// that has a stream (forward's business).
func TestSignalHold(t *testing.T) {
	var a, b, c key.Public
	a[0], b[0], c[0] = 1, 2, 3
	r := newSignalRouter()
	for i := range signalHeldPerKey + 3 {
		ok := r.hold(a, b, make([]byte, 24), []byte{byte(i)})
		if want := i < signalHeldPerKey; ok != want {
			t.Fatalf("hold %d: %v, want %v", i, ok, want)
		}
	}
	in := r.attach(b)
	for i := range signalHeldPerKey {
		select {
		case s := <-in:
			if s.GetSealed()[0] != byte(i) || key.Public(s.GetPeerKey()) != a {
				t.Fatalf("held signal %d: %x from %x", i, s.GetSealed(), s.GetPeerKey())
			}
		default:
			t.Fatalf("only %d held signals delivered on attach, want %d", i, signalHeldPerKey)
		}
	}
	if r.nHeld != 0 || len(r.held) != 0 {
		t.Errorf("after delivery: %d held for %d keys, want none", r.nHeld, len(r.held))
	}
	if r.hold(a, b, make([]byte, 24), []byte("x")) {
		t.Error("held a signal for a node with a stream")
	}
	// In all: at most signalHeldMax.
	r2 := newSignalRouter()
	held := 0
	for i := range signalHeldMax + 100 {
		var to key.Public
		to[0], to[1], to[2] = byte(i>>16), byte(i>>8), byte(i)
		to[3] = 9
		if r2.hold(c, to, make([]byte, 24), []byte("x")) {
			held++
		}
	}
	if held != signalHeldMax {
		t.Errorf("held %d in all, want %d", held, signalHeldMax)
	}
}
