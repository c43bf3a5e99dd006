package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestNewRejects(t *testing.T) {
	tests := []struct {
		prefix  netip.Prefix
		wantErr string
	}{
		{netip.Prefix{}, "not valid"},
		{netip.MustParsePrefix("10.0.0.1/24"), "host bits set; did you mean 10.0.0.0/24"},
		{netip.MustParsePrefix("10.0.0.0/31"), "too small: want at most /30"},
		{netip.MustParsePrefix("10.0.0.0/32"), "too small"},
		{netip.MustParsePrefix("fd00::/127"), "too small: want at most /126"},
		{netip.MustParsePrefix("::ffff:10.0.0.0/120"), "IPv4-mapped"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix.String(), func(t *testing.T) {
			_, err := New(tt.prefix)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// step is one operation on an Allocator and its expected result.
type step struct {
	op      string // "alloc", "reserve", "release"
	addr    string // for reserve/release; for alloc, the wanted address
	wantErr error
}

func TestAllocator(t *testing.T) {
	allocs := func(addrs ...string) []step {
		var s []step
		for _, a := range addrs {
			s = append(s, step{"alloc", a, nil})
		}
		return s
	}
	cat := func(parts ...[]step) []step {
		var s []step
		for _, p := range parts {
			s = append(s, p...)
		}
		return s
	}
	six := allocs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")
	tests := []struct {
		name      string
		prefix    string
		steps     []step
		wantInUse int
	}{
		{"fills /29 then exhausts", "10.0.0.0/29",
			cat(six, []step{{"alloc", "", ErrExhausted}}), 6},
		{"release and reallocate", "10.0.0.0/29",
			cat(six, []step{{"release", "10.0.0.3", nil}, {"alloc", "10.0.0.3", nil}, {"alloc", "", ErrExhausted}}), 6},
		{"released address not reused before wrap", "10.0.0.0/29",
			cat(allocs("10.0.0.1", "10.0.0.2"), []step{{"release", "10.0.0.1", nil}}, allocs("10.0.0.3")), 2},
		{"wrap finds lowest free", "10.0.0.0/29",
			cat(six, []step{{"release", "10.0.0.5", nil}, {"release", "10.0.0.2", nil}}, allocs("10.0.0.2", "10.0.0.5")), 6},
		{"allocate skips reserved", "10.0.0.0/29",
			cat([]step{{"reserve", "10.0.0.1", nil}, {"reserve", "10.0.0.2", nil}}, allocs("10.0.0.3")), 3},
		{"reserve conflicts with allocation", "10.0.0.0/29",
			cat(allocs("10.0.0.1"), []step{{"reserve", "10.0.0.1", ErrInUse}}), 1},
		{"reserve twice", "10.0.0.0/29",
			[]step{{"reserve", "10.0.0.4", nil}, {"reserve", "10.0.0.4", ErrInUse}}, 1},
		{"reserve network address", "10.0.0.0/29", []step{{"reserve", "10.0.0.0", ErrOutOfRange}}, 0},
		{"reserve broadcast address", "10.0.0.0/29", []step{{"reserve", "10.0.0.7", ErrOutOfRange}}, 0},
		{"reserve outside prefix", "10.0.0.0/29", []step{{"reserve", "10.0.0.8", ErrOutOfRange}}, 0},
		{"reserve other family", "10.0.0.0/29", []step{{"reserve", "fd00::1", ErrOutOfRange}}, 0},
		{"release unallocated is no-op", "10.0.0.0/29",
			cat(allocs("10.0.0.1"), []step{{"release", "10.0.0.5", nil}, {"release", "192.0.2.1", nil}}), 1},
		{"returned address is allocated again", "10.0.0.0/29",
			cat(allocs("10.0.0.1", "10.0.0.2"), []step{{"return", "10.0.0.2", nil}}, allocs("10.0.0.2")), 2},
		{"returned address after a later allocation waits for the wrap", "10.0.0.0/29",
			cat(allocs("10.0.0.1", "10.0.0.2"), []step{{"return", "10.0.0.1", nil}}, allocs("10.0.0.3")), 2},
		{"return of the last address wraps back", "10.0.0.0/29",
			cat(six, []step{{"return", "10.0.0.6", nil}}, allocs("10.0.0.6")), 6},
		{"return unallocated is no-op", "10.0.0.0/29",
			cat(allocs("10.0.0.1"), []step{{"return", "10.0.0.5", nil}}, allocs("10.0.0.2")), 2},
		{"ipv4 /30", "10.0.0.0/30",
			cat(allocs("10.0.0.1", "10.0.0.2"), []step{{"alloc", "", ErrExhausted}}), 2},
		{"ipv6 /120 uses last address", "fd7a:115c::/120",
			cat([]step{{"reserve", "fd7a:115c::fe", nil}}, allocs("fd7a:115c::1"),
				[]step{{"reserve", "fd7a:115c::ff", nil}, {"reserve", "fd7a:115c::", ErrOutOfRange}, {"reserve", "fd7a:115c::100", ErrOutOfRange}}), 3},
		{"ipv6 /126", "fd00::/126",
			cat(allocs("fd00::1", "fd00::2", "fd00::3"), []step{{"alloc", "", ErrExhausted}}), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(netip.MustParsePrefix(tt.prefix))
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				var err error
				switch s.op {
				case "alloc":
					var got netip.Addr
					got, err = a.Allocate()
					if s.wantErr == nil && got.String() != s.addr {
						t.Fatalf("step %d: Allocate got %v, want %s", i, got, s.addr)
					}
				case "reserve":
					err = a.Reserve(netip.MustParseAddr(s.addr))
				case "release":
					a.Release(netip.MustParseAddr(s.addr))
				case "return":
					a.Return(netip.MustParseAddr(s.addr))
				}
				if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
					t.Fatalf("step %d (%s %s): got error %v, want %v", i, s.op, s.addr, err, s.wantErr)
				}
			}
			if got := a.InUse(); got != tt.wantInUse {
				t.Errorf("InUse: got %d, want %d", got, tt.wantInUse)
			}
		})
	}
}

func TestPrefix(t *testing.T) {
	p := netip.MustParsePrefix("100.64.0.0/10")
	a, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Prefix(); got != p {
		t.Errorf("got %v, want %v", got, p)
	}
}

func TestConcurrentAllocate(t *testing.T) {
	a, err := New(netip.MustParsePrefix("10.1.0.0/22")) // 1022 addresses
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8
	results := make([][]netip.Addr, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				addr, err := a.Allocate()
				if errors.Is(err, ErrExhausted) {
					return
				}
				if err != nil {
					t.Errorf("Allocate: %v", err)
					return
				}
				results[w] = append(results[w], addr)
				if len(results[w])%3 == 0 { // churn: release and re-reserve
					a.Release(addr)
					switch err := a.Reserve(addr); {
					case errors.Is(err, ErrInUse): // another worker took it
						results[w] = results[w][:len(results[w])-1]
					case err != nil:
						t.Errorf("Reserve(%v): %v", addr, err)
					}
				}
			}
		})
	}
	wg.Wait()
	seen := make(map[netip.Addr]bool)
	for _, r := range results {
		for _, addr := range r {
			if seen[addr] {
				t.Fatalf("address %v handed out twice", addr)
			}
			seen[addr] = true
		}
	}
	if got, want := len(seen), 1022; got != want {
		t.Errorf("distinct addresses: got %d, want %d", got, want)
	}
	if got, want := a.InUse(), 1022; got != want {
		t.Errorf("InUse: got %d, want %d", got, want)
	}
}

func BenchmarkAllocate(b *testing.B) {
	p := netip.MustParsePrefix("100.64.0.0/10")
	for b.Loop() {
		a, err := New(p)
		if err != nil {
			b.Fatal(err)
		}
		for range 10_000 {
			if _, err := a.Allocate(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
