package localsrc

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/internal/clock"
)

type fakeHost struct {
	mu    sync.Mutex // guards addrs, calls, err
	addrs []netip.Addr
	calls int
	err   error
}

func (f *fakeHost) list() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return append([]netip.Addr(nil), f.addrs...), f.err
}

func (f *fakeHost) set(addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = nil
	for _, a := range addrs {
		f.addrs = append(f.addrs, netip.MustParseAddr(a))
	}
}

func (f *fakeHost) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func TestContains(t *testing.T) {
	host := &fakeHost{}
	host.set("192.0.2.10", "fe80::1", "100.64.0.7")
	s := New(Config{Addrs: host.list, Clock: clock.NewFake(time.Unix(1000, 0))})
	s.SetPodCIDRs([]netip.Prefix{netip.MustParsePrefix("10.244.1.7/24")})

	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"192.0.2.10", true},        // host address
		{"::ffff:192.0.2.10", true}, // mapped host address
		{"fe80::1%eth0", true},      // zone ignored
		{"100.64.0.7", true},        // our overlay address
		{"10.244.1.200", true},      // local pod CIDR (masked)
		{"10.244.2.1", false},       // another node's pods
		{"192.0.2.11", false},       // a LAN neighbour
		{"100.64.0.8", false},       // an overlay peer
		{"0.0.0.0", false},
		{"", false},
	}
	for _, tt := range tests {
		var a netip.Addr
		if tt.addr != "" {
			a = netip.MustParseAddr(tt.addr)
		}
		if got := s.Contains(a); got != tt.want {
			t.Errorf("Contains(%s): got %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// TestRefreshBounded: a flood of foreign sources reads the host addresses
// at most once per interval, and a new host address is seen after it.
func TestRefreshBounded(t *testing.T) {
	host := &fakeHost{}
	host.set("192.0.2.10")
	clk := clock.NewFake(time.Unix(1000, 0))
	s := New(Config{Addrs: host.list, Clock: clk, RefreshEvery: time.Second})
	calls := host.count()
	for i := range 10000 {
		s.Contains(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}))
	}
	// The first miss may refresh only once the interval has passed since New.
	if got := host.count() - calls; got != 0 {
		t.Errorf("host address reads during 10,000 foreign lookups in one instant: got %d, want 0", got)
	}
	host.set("192.0.2.10", "192.0.2.99")
	if s.Contains(netip.MustParseAddr("192.0.2.99")) {
		t.Errorf("new address seen before the refresh interval passed")
	}
	clk.Advance(time.Second - time.Millisecond)
	if s.Contains(netip.MustParseAddr("192.0.2.99")) {
		t.Errorf("new address seen 1ms before the refresh interval passed")
	}
	clk.Advance(time.Millisecond)
	if !s.Contains(netip.MustParseAddr("192.0.2.99")) {
		t.Errorf("new host address not seen after the refresh interval")
	}
	for range 1000 {
		s.Contains(netip.MustParseAddr("198.51.100.1"))
	}
	if got := host.count() - calls; got != 1 {
		t.Errorf("host address reads: got %d, want 1", got)
	}

	// A failing read keeps the addresses it had.
	host.mu.Lock()
	host.err = errors.New("netlink down")
	host.mu.Unlock()
	clk.Advance(2 * time.Second)
	if !s.Contains(netip.MustParseAddr("192.0.2.10")) || s.Contains(netip.MustParseAddr("198.51.100.2")) {
		t.Errorf("a failed read changed the answer")
	}
}

func TestInterfaceAddrsHasLoopback(t *testing.T) {
	addrs, err := InterfaceAddrs()
	if err != nil {
		t.Skipf("no interface addresses here: %v", err)
	}
	for _, a := range addrs {
		if a.IsLoopback() {
			return
		}
	}
	t.Errorf("got %v, want a loopback address among them", addrs)
}
