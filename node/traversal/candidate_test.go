package traversal

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"

	"github.com/edgewire/edgewire/api"
)

// testLocal stands for this host's addresses (192.0.2.10) and the overlay
// (100.64.0.0/10) in the filter tests.
func testLocal(a netip.Addr) bool {
	return a == netip.MustParseAddr("192.0.2.10") || netip.MustParsePrefix("100.64.0.0/10").Contains(a)
}

// candidateCases are candidates as a peer may signal them; they also seed
// FuzzCandidate.
var candidateCases = []struct {
	name    string
	raw     string
	refused string // in the refusal's message; "": accepted
}{
	{"host, RFC 1918", "1 1 udp 2130706431 10.0.0.5 51820 typ host", ""},
	{"host, RFC 1918, candidate: prefix", "candidate:3471623853 1 udp 2130706431 192.168.1.10 51820 typ host", ""},
	{"host, ULA", "1 1 udp 2130706431 fd00::1 51820 typ host", ""},
	{"host, global IPv6", "1 1 udp 2130706431 2001:db8::1 51820 typ host", ""},
	{"srflx with related address", "2 1 udp 1694498815 203.0.113.7 40000 typ srflx raddr 10.0.0.5 rport 51820", ""},
	{"srflx, CGNAT outside the overlay", "2 1 udp 1694498815 100.128.0.1 40000 typ srflx raddr 0.0.0.0 rport 0", ""},
	{"host, port 65535", "1 1 udp 2130706431 10.0.0.5 65535 typ host", ""},

	{"loopback", "1 1 udp 2130706431 127.0.0.1 51820 typ host", "is loopback"},
	{"loopback, not .1", "1 1 udp 2130706431 127.1.2.3 51820 typ host", "is loopback"},
	{"loopback srflx", "2 1 udp 1694498815 127.0.0.1 51820 typ srflx raddr 10.0.0.5 rport 51820", "is loopback"},
	{"IPv6 loopback", "1 1 udp 2130706431 ::1 51820 typ host", "is loopback"},
	{"unspecified", "1 1 udp 2130706431 0.0.0.0 51820 typ host", "is unspecified"},
	{"IPv6 unspecified", "1 1 udp 2130706431 :: 51820 typ host", "is unspecified"},
	{"this network 0.0.0.0/8", "1 1 udp 2130706431 0.1.2.3 51820 typ host", "in 0.0.0.0/8"},
	{"multicast", "1 1 udp 2130706431 239.1.2.3 51820 typ host", "is multicast"},
	{"link-local multicast", "1 1 udp 2130706431 224.0.0.251 5353 typ host", "is multicast"},
	{"IPv6 link-local multicast", "1 1 udp 2130706431 ff02::1 51820 typ host", "is multicast"},
	{"IPv6 global multicast", "1 1 udp 2130706431 ff0e::1 51820 typ host", "is multicast"},
	{"link-local", "1 1 udp 2130706431 169.254.169.254 80 typ host", "is link-local"},
	{"IPv6 link-local", "1 1 udp 2130706431 fe80::1 51820 typ host", "is link-local"},
	{"IPv6 link-local with zone", "1 1 udp 2130706431 fe80::1%eth0 51820 typ host", "is link-local"},
	{"broadcast", "1 1 udp 2130706431 255.255.255.255 51820 typ host", "broadcast"},
	{"reserved 240.0.0.0/4", "1 1 udp 2130706431 240.0.0.1 51820 typ host", "240.0.0.0/4"},
	{"IPv4-mapped loopback", "1 1 udp 2130706431 ::ffff:127.0.0.1 51820 typ host", "is loopback"},
	{"IPv4-mapped private", "1 1 udp 2130706431 ::ffff:10.0.0.5 51820 typ host", "IPv4-mapped"},
	{"IPv4-compatible loopback", "1 1 udp 2130706431 ::7f00:1 51820 typ host", "IPv4-compatible"},
	{"this host's address", "1 1 udp 2130706431 192.0.2.10 51820 typ host", "this host's"},
	{"overlay address", "2 1 udp 1694498815 100.64.0.7 51820 typ srflx raddr 10.0.0.5 rport 51820", "overlay's"},
	{"port 0", "1 1 udp 2130706431 10.0.0.5 0 typ host", "port 0"},
	{"port over 65535", "1 1 udp 2130706431 10.0.0.5 65536 typ host", "port"},
	{"TCP", "1 1 tcp 2128609279 10.0.0.5 9 typ host tcptype passive", "network tcp4"},
	{"relay", "3 1 udp 16777215 203.0.113.9 3478 typ relay raddr 10.0.0.5 rport 51820", "type relay"},
	{"peer-reflexive", "4 1 udp 1862270975 203.0.113.9 40000 typ prflx raddr 10.0.0.5 rport 51820", "type prflx"},
	{"mDNS name", "1 1 udp 2130706431 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 51820 typ host", "not an IP address"},
	{"DNS name", "1 1 udp 2130706431 example.com 51820 typ host", "ParseAddr"},
	{"non-canonical IPv4", "1 1 udp 2130706431 127.1 51820 typ host", "ParseAddr"},
	{"too long", "1 1 udp 2130706431 10.0.0.5 51820 typ host" + strings.Repeat(" x y", 60), "more than 256"},
	{"empty", "", "not long enough"},
	{"garbage", "not a candidate", "parse component"},
	{"unknown type", "1 1 udp 2130706431 10.0.0.5 51820 typ nope", "unknown candidate typ"},
}

func TestRemoteCandidate(t *testing.T) {
	for _, tc := range candidateCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := remoteCandidate(tc.raw, testLocal)
			if tc.refused == "" {
				if err != nil {
					t.Fatalf("remoteCandidate(%q): got %v, want accepted", tc.raw, err)
				}
				checkAccepted(t, tc.raw, c)
				return
			}
			if err == nil {
				t.Fatalf("remoteCandidate(%q): got accepted (%s), want refused", tc.raw, c)
			}
			if !errors.Is(err, errCandidate) || !strings.Contains(err.Error(), tc.refused) {
				t.Errorf("remoteCandidate(%q): got error %v, want one wrapping errCandidate and saying %q", tc.raw, err, tc.refused)
			}
		})
	}
}

// neverChecked lists, independently of unsafeAddr, where no check may go.
var neverChecked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/96"), // ::, ::1 and IPv4-compatible
	netip.MustParsePrefix("::ffff:0:0/96"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// checkAccepted fails t unless c, accepted from raw, is a candidate a
// check may go to.
func checkAccepted(t *testing.T, raw string, c ice.Candidate) {
	t.Helper()
	if len(raw) > maxCandidateLen {
		t.Errorf("accepted %d bytes, want at most %d", len(raw), maxCandidateLen)
	}
	if typ := c.Type(); typ != ice.CandidateTypeHost && typ != ice.CandidateTypeServerReflexive {
		t.Errorf("accepted type %s, want host or srflx", typ)
	}
	if nt := c.NetworkType(); nt != ice.NetworkTypeUDP4 && nt != ice.NetworkTypeUDP6 {
		t.Errorf("accepted network %s, want udp4 or udp6", nt)
	}
	if p := c.Port(); p < 1 || p > 65535 {
		t.Errorf("accepted port %d, want 1-65535", p)
	}
	a, err := netip.ParseAddr(c.Address())
	if err != nil {
		t.Fatalf("accepted address %q: %v", c.Address(), err)
	}
	if a.Zone() != "" || testLocal(a) {
		t.Errorf("accepted address %s: zoned, this host's or the overlay's", a)
	}
	for _, p := range neverChecked {
		if p.Contains(a) {
			t.Errorf("accepted address %s, in %s", a, p)
		}
	}
}

// FuzzCandidate feeds candidate strings, as a signal carries them, to the
// parse and filter path handleSignal uses.
func FuzzCandidate(f *testing.F) {
	for _, tc := range candidateCases {
		f.Add(tc.raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := remoteCandidate(raw, testLocal)
		if err != nil {
			if !errors.Is(err, errCandidate) {
				t.Fatalf("remoteCandidate(%q): error %v does not wrap errCandidate", raw, err)
			}
			return
		}
		checkAccepted(t, raw, c)
	})
}

// waitCounters polls the manager's counters until ok holds, for at most d.
func waitCounters(t *testing.T, m *Manager, d time.Duration, ok func(Counters) bool) Counters {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c := m.Counters()
		if ok(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: counters %+v", d, c)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCandidateBound(t *testing.T) {
	r := newLazyRig(t, false)
	r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
	// An offer without credentials: the session exists and takes
	// candidates but never dials, so none of them gets a check.
	r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7})

	cands := []string{
		"1 1 udp 2130706431 127.0.0.1 51820 typ host",
		"3 1 udp 16777215 203.0.113.9 3478 typ relay raddr 10.0.0.5 rport 51820",
		"garbage",
	}
	for i := range maxRemoteCandidates + 4 {
		cands = append(cands, "1 1 udp 2130706431 198.51.100."+strconv.Itoa(i+1)+" 51820 typ host")
	}
	r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: 7, Candidates: cands})
	// Candidates for another session change nothing.
	r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: 8, Candidates: cands})
	r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: 7, Candidates: []string{
		"1 1 udp 2130706431 198.51.100.200 51820 typ host", "1 1 udp 2130706431 198.51.100.201 51820 typ host",
	}})

	c := waitCounters(t, r.m, 5*time.Second, func(c Counters) bool { return c.SignalsIn == 4 })
	if c.CandidatesAdded != maxRemoteCandidates || c.CandidatesRefused != 3 || c.CandidatesDropped != 6 {
		t.Errorf("candidates added, refused, dropped: got %d, %d, %d, want %d, 3, 6",
			c.CandidatesAdded, c.CandidatesRefused, c.CandidatesDropped, maxRemoteCandidates)
	}
}

// TestLoopbackCandidateGetsNoCheck signals candidates that point at a
// loopback listener and runs the session to its failure: the listener
// must get nothing. The unfiltered run shows the same session does send
// checks there when the filters are off.
func TestLoopbackCandidateGetsNoCheck(t *testing.T) {
	for _, unfiltered := range []bool{false, true} {
		name := "filtered"
		if unfiltered {
			name = "unfiltered"
		}
		t.Run(name, func(t *testing.T) {
			ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			var got atomic.Int64
			checked := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 1500)
				seenCheck := false
				for {
					n, _, err := ln.ReadFrom(buf)
					if err != nil {
						return
					}
					got.Add(1)
					if !seenCheck && stun.IsMessage(buf[:n]) {
						seenCheck = true
						close(checked)
					}
				}
			}()
			stopListener := func() int64 {
				ln.Close()
				<-done
				return got.Load()
			}
			defer stopListener()

			port := strconv.Itoa(ln.LocalAddr().(*net.UDPAddr).Port)
			cands := []string{
				"1 1 udp 2130706431 127.0.0.1 " + port + " typ host",
				"2 1 udp 1694498815 127.0.0.1 " + port + " typ srflx raddr 10.0.0.5 rport 51820",
				"1 1 udp 2130706431 ::ffff:127.0.0.1 " + port + " typ host",
				"1 1 udp 2130706431 0.0.0.0 " + port + " typ host", // Linux delivers 0.0.0.0 locally
			}

			r := newLazyRig(t, false)
			if unfiltered {
				r.m.post(func() { r.m.cfg.SameHost = true })
			}
			r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
			r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7,
				Ufrag: "peerufragpeeruf", Pwd: "peerpasswordpeerpasswordpeerpass"})
			r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: 7, Candidates: cands})

			if unfiltered {
				select {
				case <-checked:
				case <-time.After(2 * iceFailed):
					t.Fatalf("unfiltered: the listener got %d datagrams and no STUN check within %s, want a check: the rig cannot see checks", got.Load(), 2*iceFailed)
				}
				return
			}
			// The session ends when ICE gives up (iceDisconnected +
			// iceFailed) or the dial times out (2 * iceFailed).
			c := waitCounters(t, r.m, 2*iceFailed+5*time.Second, func(c Counters) bool { return c.Failures >= 1 })
			if c.CandidatesRefused != uint64(len(cands)) || c.CandidatesAdded != 0 {
				t.Errorf("candidates refused, added: got %d, %d, want %d, 0", c.CandidatesRefused, c.CandidatesAdded, len(cands))
			}
			if n := stopListener(); n != 0 {
				t.Errorf("the loopback listener got %d datagrams during the session, want 0", n)
			}
		})
	}
}
