package agent

import (
	"bytes"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"

	"github.com/edgewire/edgewire/types/key"
)

// firstHandshakeWait bounds how long a node with a path to a peer leaves
// their first handshake to the peer (the one with the larger key).
const firstHandshakeWait = time.Second

// refusedTrust is how long after WireGuard refused a peer's initiation
// this node initiates at once instead of waiting for the peer's: the
// peer retries only device.RekeyTimeout after its refused attempt, and in
// the last firstHandshakeWait before that retry the peer's initiation may
// cross this node's, which the wait exists to avoid.
const refusedTrust = device.RekeyTimeout - firstHandshakeWait

// handshakeWait decides which peers' first handshake this node leaves to
// the peer (see makePlan for why only one side starts it). The larger
// key initiates the moment it has a path, and the other waits for that
// initiation, but not for long (the peer may have had no path back yet),
// and not at all once WireGuard has refused the peer's initiation: a
// node that just joined initiates as soon as its relay is up, which can
// be before its entry reaches this node, and WireGuard drops an
// initiation from a key that is not a peer; the joiner's retry comes
// only device.RekeyTimeout later.
type handshakeWait struct {
	since map[key.Public]time.Time // when the wait for each peer began; reconcile only

	mu      sync.Mutex               // guards refused
	refused map[key.Public]time.Time // when WireGuard last refused an initiation from the key
}

// refusedFrom records that WireGuard refused an initiation from k at
// now. Safe for concurrent use (WireGuard's receive path calls it).
func (w *handshakeWait) refusedFrom(k key.Public, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.refused == nil {
		w.refused = map[key.Public]time.Time{}
	}
	w.refused[k] = now
}

// waiting reports whether, at now, this node (key me) leaves its first
// handshake with peer k to k: k has the larger key, no handshake with k
// happened yet (handshook false), there is a path to k, k's initiation
// was not refused lately, and the wait that began when all that first
// held is not over.
func (w *handshakeWait) waiting(me, k key.Public, handshook, path bool, now time.Time) bool {
	if bytes.Compare(me[:], k[:]) >= 0 || handshook || !path || w.refusedLately(k, now) {
		delete(w.since, k)
		return false
	}
	since, ok := w.since[k]
	if !ok {
		if w.since == nil {
			w.since = map[key.Public]time.Time{}
		}
		w.since[k], since = now, now
	}
	return now.Sub(since) < firstHandshakeWait
}

func (w *handshakeWait) refusedLately(k key.Public, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.refused[k]
	return ok && now.Sub(at) < refusedTrust
}

// prune forgets peers for which known is false (they left the map) and
// refusals too old to matter. Reconcile only.
func (w *handshakeWait) prune(known func(key.Public) bool, now time.Time) {
	for k := range w.since {
		if !known(k) {
			delete(w.since, k)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, at := range w.refused {
		if now.Sub(at) >= refusedTrust {
			delete(w.refused, k)
		}
	}
}
