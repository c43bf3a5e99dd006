package netcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/edgewire/edgewire/dataplane/stunserver"
)

func udpConn(t *testing.T) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// serveSTUN runs a real STUN server on loopback.
func serveSTUN(t *testing.T) string {
	t.Helper()
	s, err := stunserver.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve() }()
	t.Cleanup(func() { s.Close(); <-done })
	return s.Addr().String()
}

// serveMapping answers every binding request as a NAT would have it seen
// from this server: with the given mapped address (a symmetric NAT shows
// each server another port).
func serveMapping(t *testing.T, mapped netip.AddrPort) string {
	t.Helper()
	pc := udpConn(t)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil {
				continue
			}
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: mapped.Addr().AsSlice(), Port: int(mapped.Port())}, stun.Fingerprint)
			pc.WriteToUDPAddrPort(resp.Raw, from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestProbe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	silent := udpConn(t).LocalAddr().String() // bound, never answers
	pc := udpConn(t)
	self := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	isSelf := func(a netip.AddrPort) bool { return a == self }

	t.Run("real servers, no NAT", func(t *testing.T) {
		a, b := serveSTUN(t), serveSTUN(t)
		res := Probe(ctx, pc, []Target{{Server: a}, {Server: b, Alt: true}, {Server: silent}, {Server: "no-such-host.invalid:3478"}}, 300*time.Millisecond)
		if len(res) != 4 {
			t.Fatalf("got %d results, want 4", len(res))
		}
		for _, r := range res[:2] {
			if r.Err != nil || r.Mapped != self || r.RTT <= 0 {
				t.Errorf("%s: got mapped %v rtt %v err %v, want %v", r.Server, r.Mapped, r.RTT, r.Err, self)
			}
		}
		if !res[1].Alt {
			t.Error("the target's Alt flag was lost")
		}
		if !errors.Is(res[2].Err, ErrNoAnswer) {
			t.Errorf("silent server: got %v, want ErrNoAnswer", res[2].Err)
		}
		if res[3].Err == nil || !strings.Contains(res[3].Err.Error(), "resolve") {
			t.Errorf("unresolvable server: got %v, want a resolve error", res[3].Err)
		}
		v := Classify(res, isSelf)
		if !v.UDP || v.Mapping != MappingIndependent || !v.NoNAT || v.PublicAddr != self {
			t.Errorf("got %+v, want UDP, endpoint-independent, no NAT, public %v", v, self)
		}
	})
	t.Run("a new port per destination", func(t *testing.T) {
		a := serveMapping(t, netip.MustParseAddrPort("203.0.113.7:40001"))
		b := serveMapping(t, netip.MustParseAddrPort("203.0.113.7:40002"))
		res := Probe(ctx, pc, []Target{{Server: a}, {Server: b, Alt: true}}, time.Second)
		v := Classify(res, isSelf)
		if v.Mapping != MappingDependent || v.PublicAddr != netip.MustParseAddrPort("203.0.113.7:40001") {
			t.Errorf("got %+v, want endpoint-dependent from 203.0.113.7:40001", v)
		}
	})
	t.Run("nothing answers", func(t *testing.T) {
		start := time.Now()
		res := Probe(ctx, pc, []Target{{Server: silent}}, 100*time.Millisecond)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v, want about two waits", d)
		}
		if v := Classify(res, isSelf); v.UDP || !strings.HasPrefix(v.Meaning, "UDP blocked") {
			t.Errorf("got %+v, want no UDP, UDP blocked", v)
		}
	})
	t.Run("the context ends first", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer ccancel()
		start := time.Now()
		Probe(cctx, pc, []Target{{Server: silent}}, 5*time.Second)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v after a 50ms context, want it to end with the context", d)
		}
	})
}

func TestClassify(t *testing.T) {
	ap := netip.MustParseAddrPort
	ok := func(server, dest, mapped string) Result {
		return Result{Target: Target{Server: server}, Dest: ap(dest), Mapped: ap(mapped)}
	}
	fail := func(server, dest string) Result {
		return Result{Target: Target{Server: server}, Dest: ap(dest), Err: ErrNoAnswer}
	}
	local := func(a netip.AddrPort) bool { return a == ap("192.0.2.10:5000") }
	for _, tc := range []struct {
		name        string
		results     []Result
		wantUDP     bool
		wantMapping string
		wantMeaning string
	}{
		{"no servers", nil, false, MappingUnknown, "no STUN server known"},
		{"no answers", []Result{fail("c:3478", "198.51.100.1:3478"), fail("c:3479", "198.51.100.1:3479")}, false, MappingUnknown, "UDP blocked"},
		{"one answer", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), fail("c:3479", "198.51.100.1:3479")}, true, MappingUnknown, "only one STUN endpoint answered (c:3478)"},
		{"one server listed twice", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), ok("c2:3478", "198.51.100.1:3478", "203.0.113.5:1000")}, true, MappingUnknown, "needs two"},
		{"two ports, same mapping", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), ok("c:3479", "198.51.100.1:3479", "203.0.113.5:1000")}, true, MappingIndependent, "on two ports of one server"},
		{"two servers, same mapping", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), ok("r:3478", "198.51.100.2:3478", "203.0.113.5:1000")}, true, MappingIndependent, "hole punching works"},
		{"two ports, other port", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), ok("c:3479", "198.51.100.1:3479", "203.0.113.5:1001")}, true, MappingDependent, "symmetric NAT"},
		{"other address", []Result{ok("c:3478", "198.51.100.1:3478", "203.0.113.5:1000"), ok("r:3478", "198.51.100.2:3478", "203.0.113.6:1000")}, true, MappingDependent, "relay"},
		{"public", []Result{ok("c:3478", "198.51.100.1:3478", "192.0.2.10:5000"), ok("c:3479", "198.51.100.1:3479", "192.0.2.10:5000")}, true, MappingIndependent, "no NAT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Classify(tc.results, local)
			if v.UDP != tc.wantUDP || v.Mapping != tc.wantMapping || !strings.Contains(v.Meaning, tc.wantMeaning) {
				t.Errorf("got udp %v mapping %q meaning %q; want %v %q containing %q", v.UDP, v.Mapping, v.Meaning, tc.wantUDP, tc.wantMapping, tc.wantMeaning)
			}
		})
	}
}

func TestParseResponse(t *testing.T) {
	id := [stun.TransactionIDSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	tx := stun.NewTransactionIDSetter(id)
	for _, tc := range []struct {
		name       string
		msg        []byte
		wantMapped string
		wantErr    string
	}{
		{"xor mapped", stun.MustBuild(tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(203, 0, 113, 9), Port: 4242}, stun.Fingerprint).Raw, "203.0.113.9:4242", ""},
		{"plain mapped", stun.MustBuild(tx, stun.BindingSuccess, &stun.MappedAddress{IP: net.IPv4(203, 0, 113, 9), Port: 7}).Raw, "203.0.113.9:7", ""},
		{"ipv6", stun.MustBuild(tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.ParseIP("2001:db8::9"), Port: 9}).Raw, "[2001:db8::9]:9", ""},
		{"no address", stun.MustBuild(tx, stun.BindingSuccess).Raw, "", "no mapped address"},
		{"port 0", stun.MustBuild(tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(203, 0, 113, 9), Port: 0}).Raw, "", "bad mapped address"},
		{"unspecified", stun.MustBuild(tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4zero, Port: 9}).Raw, "", "bad mapped address"},
		{"error response", stun.MustBuild(tx, stun.BindingError).Raw, "", "want a binding success"},
		{"a request", stun.MustBuild(tx, stun.BindingRequest).Raw, "", "want a binding success"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotTx, mapped, err := ParseResponse(tc.msg)
			if gotTx != id {
				t.Errorf("transaction id: got %x, want %x", gotTx, id)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrNotSTUN) {
					t.Errorf("got %v %v, want an error containing %q", mapped, err, tc.wantErr)
				}
				return
			}
			if err != nil || mapped.String() != tc.wantMapped {
				t.Errorf("got %v %v, want %s", mapped, err, tc.wantMapped)
			}
		})
	}
	for _, junk := range [][]byte{nil, []byte("a WireGuard packet, say"), stun.MustBuild(tx, stun.BindingSuccess).Raw[:19]} {
		if _, _, err := ParseResponse(junk); !errors.Is(err, ErrNotSTUN) {
			t.Errorf("ParseResponse(%q): got %v, want ErrNotSTUN", junk, err)
		}
	}
}

// FuzzParseResponse: answers come from the network. Whatever they hold,
// parsing does not panic, and a mapped address it returns is usable.
func FuzzParseResponse(f *testing.F) {
	tx := stun.NewTransactionIDSetter([stun.TransactionIDSize]byte{9})
	f.Add(stun.MustBuild(tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(203, 0, 113, 9), Port: 4242}, stun.Fingerprint).Raw)
	f.Add(stun.MustBuild(tx, stun.BindingSuccess, &stun.MappedAddress{IP: net.ParseIP("2001:db8::1"), Port: 1}).Raw)
	f.Add(stun.MustBuild(tx, stun.BindingError).Raw)
	f.Add([]byte{1, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, mapped, err := ParseResponse(b)
		if err != nil {
			if mapped.IsValid() {
				t.Fatalf("error %v with a mapped address %v", err, mapped)
			}
			return
		}
		if !mapped.IsValid() || mapped.Port() == 0 || mapped.Addr().IsUnspecified() || mapped.Addr().Is4In6() {
			t.Fatalf("accepted mapped address %v", mapped)
		}
	})
}
