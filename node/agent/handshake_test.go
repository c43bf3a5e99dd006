package agent

import (
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"

	"github.com/edgewire/edgewire/types/key"
)

// The smaller key waits for the larger's first initiation, up to
// firstHandshakeWait from when it could first have come, and not at all
// while a refused initiation from the peer says none is coming before the
// peer's retry; near that retry it waits again, so the two do not cross.
func TestHandshakeWait(t *testing.T) {
	var small, large key.Public
	small[0], large[0] = 1, 2
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	// A step asks at t0+at whether me waits for peer; refused, if set,
	// is when WireGuard refused an initiation from peer (before the step).
	type step struct {
		at        time.Duration
		handshook bool
		path      bool
		refused   *time.Duration
		want      bool
	}
	ago := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name     string
		me, peer key.Public
		steps    []step
	}{
		{"the larger key never waits", large, small, []step{{path: true, want: false}}},
		{"no path: no wait, and the wait starts with the path", small, large, []step{
			{at: 0, path: false, want: false},
			{at: 2 * firstHandshakeWait, path: true, want: true},
			{at: 3*firstHandshakeWait - time.Nanosecond, path: true, want: true},
			{at: 3 * firstHandshakeWait, path: true, want: false},
		}},
		{"a handshake ends the wait", small, large, []step{
			{at: 0, path: true, want: true},
			{at: firstHandshakeWait / 4, path: true, handshook: true, want: false},
		}},
		{"a refused initiation ends the wait at once", small, large, []step{
			{at: 0, path: true, want: true},
			{at: firstHandshakeWait / 4, path: true, refused: ago(firstHandshakeWait / 4), want: false},
		}},
		{"refused before the peer was known: no wait at all", small, large, []step{
			{at: firstHandshakeWait / 4, path: true, refused: ago(0), want: false},
			{at: firstHandshakeWait / 2, path: true, want: false},
		}},
		{"a refusal near the peer's retry: wait again", small, large, []step{
			{at: 0, path: true, refused: ago(0), want: false},
			{at: refusedTrust, path: true, want: true},
			{at: refusedTrust + firstHandshakeWait, path: true, want: false},
		}},
		{"a refusal says nothing to the larger key", large, small, []step{
			{at: 0, path: true, refused: ago(0), want: false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w handshakeWait
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				if s.refused != nil {
					w.refusedFrom(tt.peer, now.Add(-*s.refused))
				}
				if got := w.waiting(tt.me, tt.peer, s.handshook, s.path, now); got != s.want {
					t.Errorf("step %d (at %v): got waiting %v, want %v", i, s.at, got, s.want)
				}
			}
		})
	}
}

// Refusals are trusted for less than WireGuard's retry interval, and
// prune forgets them after that and forgets waits for peers that left.
func TestHandshakeWaitPrune(t *testing.T) {
	if refusedTrust <= 0 || refusedTrust >= device.RekeyTimeout {
		t.Fatalf("refusedTrust %v: want within (0, %v)", refusedTrust, device.RekeyTimeout)
	}
	var small, large, gone key.Public
	small[0], large[0], gone[0] = 1, 2, 3
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var w handshakeWait
	w.waiting(small, large, false, true, t0)
	w.waiting(small, gone, false, true, t0)
	w.refusedFrom(large, t0)
	w.prune(func(k key.Public) bool { return k != gone }, t0.Add(refusedTrust-time.Nanosecond))
	if _, ok := w.since[gone]; ok || len(w.since) != 1 || len(w.refused) != 1 {
		t.Errorf("after pruning the peer that left: got waits %v, refusals %v; want one of each, for %v", w.since, w.refused, large)
	}
	w.prune(func(key.Public) bool { return true }, t0.Add(refusedTrust))
	if len(w.refused) != 0 {
		t.Errorf("after refusedTrust: got refusals %v, want none", w.refused)
	}
}
