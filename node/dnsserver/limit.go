package dnsserver

import (
	"net/netip"
	"sync"
	"time"
)

// limiter is a token bucket per client address for forwarded queries, so
// one client (a pod in a retry loop, say) cannot take every upstream slot.
// Its table holds at most max addresses: when it is full, buckets that
// have refilled (idle clients, no different from new ones) go first, then
// arbitrary ones.
type limiter struct {
	rate  float64 // tokens per second; <= 0: unlimited
	burst float64
	max   int

	mu      sync.Mutex // guards buckets
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst, max int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), max: max, buckets: map[netip.Addr]*bucket{}}
}

// allow takes a token from a's bucket and reports whether there was one.
func (l *limiter) allow(a netip.Addr, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[a]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.evictLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[a] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evictLocked makes room: refilled buckets first; if none, an eighth of
// the table, arbitrary entries (map order).
func (l *limiter) evictLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for a, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, a)
		}
	}
	for a := range l.buckets {
		if len(l.buckets) < l.max-l.max/8 {
			break
		}
		delete(l.buckets, a)
	}
}

// size returns how many addresses the table holds.
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
