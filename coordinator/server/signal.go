package server

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

// Signalling limits. Payloads are opaque to the coordinator (sealed
// between the two nodes); it only bounds their size and rate.
const (
	maxSealed      = 8 << 10
	signalQueue    = 64  // per stream; further signals are dropped
	signalRate     = 100 // per second per stream, sustained
	signalBurst    = 200
	signalKeyBytes = 32
	signalNonce    = 24
	// Signals for a registered node with no stream are held this long,
	// at most signalHeldPerKey per recipient and signalHeldMax in all,
	// and delivered when it connects: after a coordinator restart or
	// failover nodes come back seconds apart, and the first session
	// offer of one that came back early would otherwise be lost, its
	// ICE session waiting out its 10 s timeout.
	signalHold       = 8 * time.Second
	signalHeldPerKey = 16
	signalHeldMax    = 8192
)

// signalRouter delivers sealed signals to the streams of their recipient.
type signalRouter struct {
	mu      sync.Mutex // guards everything below
	streams map[key.Public]map[chan *api.Signal]struct{}
	held    map[key.Public][]heldSignal // for recipients with no stream
	nHeld   int
}

type heldSignal struct {
	sig *api.Signal
	at  time.Time
}

func newSignalRouter() *signalRouter {
	return &signalRouter{streams: make(map[key.Public]map[chan *api.Signal]struct{}), held: map[key.Public][]heldSignal{}}
}

// attach registers a stream of key and returns its inbox.
func (r *signalRouter) attach(nk key.Public) chan *api.Signal {
	ch := make(chan *api.Signal, signalQueue)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams[nk] == nil {
		r.streams[nk] = make(map[chan *api.Signal]struct{})
	}
	r.streams[nk][ch] = struct{}{}
	now := time.Now()
	for _, h := range r.held[nk] {
		if now.Sub(h.at) <= signalHold {
			select {
			case ch <- h.sig:
			default:
			}
		}
	}
	r.nHeld -= len(r.held[nk])
	delete(r.held, nk)
	return ch
}

// hold keeps a signal for a recipient that has no stream now, to be
// delivered when it attaches; false if the bounds leave no room.
func (r *signalRouter) hold(from, to key.Public, nonce, sealed []byte) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.streams[to]) > 0 {
		return false // attached meanwhile: the sender's retry reaches it
	}
	if r.nHeld >= signalHeldMax {
		for k, q := range r.held { // drop what has expired
			if now.Sub(q[len(q)-1].at) > signalHold {
				r.nHeld -= len(q)
				delete(r.held, k)
			}
		}
	}
	q := r.held[to]
	if r.nHeld >= signalHeldMax || len(q) >= signalHeldPerKey {
		return false
	}
	r.held[to] = append(q, heldSignal{sig: &api.Signal{PeerKey: from[:], Nonce: nonce, Sealed: sealed}, at: now})
	r.nHeld++
	return true
}

func (r *signalRouter) detach(nk key.Public, ch chan *api.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.streams[nk], ch)
	if len(r.streams[nk]) == 0 {
		delete(r.streams, nk)
	}
}

// forward hands a signal from one node to every stream of another and
// reports whether any stream took it. It never blocks.
func (r *signalRouter) forward(from, to key.Public, nonce, sealed []byte) bool {
	out := &api.Signal{PeerKey: from[:], Nonce: nonce, Sealed: sealed}
	r.mu.Lock()
	defer r.mu.Unlock()
	delivered := false
	for ch := range r.streams[to] {
		select {
		case ch <- out:
			delivered = true
		default:
		}
	}
	return delivered
}

// validSignal checks the envelope of a client's signal.
func validSignal(s *api.Signal, from key.Public) (key.Public, bool) {
	var to key.Public
	if len(s.GetPeerKey()) != signalKeyBytes || len(s.GetNonce()) != signalNonce ||
		len(s.GetSealed()) == 0 || len(s.GetSealed()) > maxSealed {
		return to, false
	}
	copy(to[:], s.GetPeerKey())
	return to, to != from
}

func newSignalLimiter() *rate.Limiter { return rate.NewLimiter(signalRate, signalBurst) }
