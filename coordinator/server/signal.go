package server

import (
	"sync"

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
)

// signalRouter delivers sealed signals to the streams of their recipient.
type signalRouter struct {
	mu      sync.Mutex // guards streams
	streams map[key.Public]map[chan *api.Signal]struct{}
}

func newSignalRouter() *signalRouter {
	return &signalRouter{streams: make(map[key.Public]map[chan *api.Signal]struct{})}
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
	return ch
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
