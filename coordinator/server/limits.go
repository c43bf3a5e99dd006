package server

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/clock"
)

// Failure limits: every failed join or authentication costs its source
// address (and, for joins, the token ID it named) one token of a bucket.
// A legitimate fleet joining in a burst does not fail, so it is never
// slowed; guessing secrets, probing which token IDs exist and replaying
// challenges are.
const (
	defaultFailureRate  = rate.Limit(1) // per second, per key
	defaultFailureBurst = 20
	maxFailureKeys      = 1 << 16 // sources and token IDs tracked at once
)

// failureLimiter holds one token bucket per key (a source address or a
// token ID). The map is bounded: when it is full, buckets that have
// refilled (forgiven) are dropped, then the oldest.
type failureLimiter struct {
	rate  rate.Limit
	burst int
	clk   clock.Clock

	mu      sync.Mutex // guards buckets
	buckets map[string]*failureBucket
}

type failureBucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newFailureLimiter(r rate.Limit, burst int, clk clock.Clock) *failureLimiter {
	return &failureLimiter{rate: r, burst: burst, clk: clk, buckets: map[string]*failureBucket{}}
}

// allow reports whether every key may try again (empty keys are skipped).
func (l *failureLimiter) allow(keys ...string) bool {
	if l.rate <= 0 {
		return true
	}
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if b := l.buckets[k]; k != "" && b != nil && b.lim.TokensAt(now) < 1 {
			return false
		}
	}
	return true
}

// fail charges one failure to every key.
func (l *failureLimiter) fail(keys ...string) {
	if l.rate <= 0 {
		return
	}
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if k == "" {
			continue
		}
		b := l.buckets[k]
		if b == nil {
			if len(l.buckets) >= maxFailureKeys {
				l.evictLocked(now)
			}
			b = &failureBucket{lim: rate.NewLimiter(l.rate, l.burst)}
			l.buckets[k] = b
		}
		b.lim.AllowN(now, 1)
		b.last = now
	}
}

// evictLocked drops buckets that are full again; if none are, the one
// charged longest ago.
func (l *failureLimiter) evictLocked(now time.Time) {
	var oldest string
	var oldestAt time.Time
	for k, b := range l.buckets {
		if b.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
			continue
		}
		if oldest == "" || b.last.Before(oldestAt) {
			oldest, oldestAt = k, b.last
		}
	}
	if len(l.buckets) >= maxFailureKeys {
		delete(l.buckets, oldest)
	}
}

// source returns the caller's address ("" when unknown, e.g. bufconn).
func source(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
		return ap.Addr().Unmap().String()
	}
	if h, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return h
	}
	return ""
}

// binding returns the TLS channel binding of the caller's connection
// (nil without TLS: the local unix socket).
func binding(ctx context.Context) ([]byte, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, nil
	}
	return api.Binding(&ti.State)
}
