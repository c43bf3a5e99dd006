package traversal

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/types/key"
)

// lazyRig is a manager on a loopback socket with one peer that never
// answers; sent collects what the manager signals to it.
type lazyRig struct {
	m               *Manager
	ourPub, peerPub key.Public
	peerPriv        key.Private
	sent            chan *api.SignalPayload
}

func newLazyRig(t *testing.T, controlling bool) *lazyRig {
	t.Helper()
	return newLazyRigWith(t, controlling, nil)
}

// newLazyRigWith is newLazyRig with the manager's Config changed by tune.
func newLazyRigWith(t *testing.T, controlling bool, tune func(*Config)) *lazyRig {
	t.Helper()
	ourPub, ourPriv := keypair(t)
	peerPub, peerPriv := keypair(t)
	if (bytes.Compare(ourPub[:], peerPub[:]) > 0) != controlling {
		ourPub, ourPriv, peerPub, peerPriv = peerPub, peerPriv, ourPub, ourPriv
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	hosts := func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }
	mux := NewMux(pc, func() uint16 { return port }, hosts, slog.New(slog.DiscardHandler))
	r := &lazyRig{ourPub: ourPub, peerPub: peerPub, peerPriv: peerPriv, sent: make(chan *api.SignalPayload, 100)}
	cfg := Config{
		PrivateKey: ourPriv, PublicKey: ourPub, Mux: mux, HostAddrs: hosts,
		RelayEndpoint: func(key.Public) netip.AddrPort { return netip.MustParseAddrPort("127.77.0.1:1") },
		Send: func(sig Signal) bool {
			sig.Peer = ourPub // as the coordinator rewrites it: the sender
			pl, err := Open(sig, peerPriv, time.Now())
			if err != nil {
				t.Errorf("signal to the peer does not open: %v", err)
				return true
			}
			select {
			case r.sent <- pl:
			default:
			}
			return true
		},
	}
	if tune != nil {
		tune(&cfg)
	}
	r.m, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		mux.Close()
	})
	return r
}

// next returns the kind of the next signal within d, or 0 if none.
func (r *lazyRig) next(d time.Duration) api.SignalPayload_Kind {
	select {
	case pl := <-r.sent:
		return pl.GetKind()
	case <-time.After(d):
		return 0
	}
}

// fromPeer hands the manager a signal as the coordinator would.
func (r *lazyRig) fromPeer(t *testing.T, pl *api.SignalPayload) {
	pl.SentUnixMs = time.Now().UnixMilli()
	sig, err := Seal(pl, r.ourPub, r.peerPriv)
	if err != nil {
		t.Fatal(err)
	}
	sig.Peer = r.peerPub
	r.m.HandleSignal(sig)
}

func TestLazySessions(t *testing.T) {
	const quiet = 1500 * time.Millisecond // six ticks
	tests := []struct {
		name        string
		controlling bool
		relay       bool
		wake        func(t *testing.T, r *lazyRig) // nil: the peer stays silent
		want        api.SignalPayload_Kind         // first signal after wake
	}{
		{"silent peer, relay up: no session", true, true, nil, 0},
		{"silent peer, controlled side, relay up: no request", false, true, nil, 0},
		{"silent peer, no relay: ICE is the only way, offer at once", true, false, nil, api.SignalPayload_KIND_OFFER},
		{"relayed packet from the peer: offer", true, true, func(t *testing.T, r *lazyRig) { r.m.Seen(r.peerPub) }, api.SignalPayload_KIND_OFFER},
		{"relayed packet, controlled side: ask for a session", false, true, func(t *testing.T, r *lazyRig) { r.m.Seen(r.peerPub) }, api.SignalPayload_KIND_RESTART_REQUEST},
		{"peer asks for a session: offer", true, true, func(t *testing.T, r *lazyRig) {
			r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_RESTART_REQUEST, Session: 1})
		}, api.SignalPayload_KIND_OFFER},
		{"packets from another key change nothing", true, true, func(t *testing.T, r *lazyRig) { r.m.Seen(r.ourPub) }, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newLazyRig(t, tc.controlling)
			if tc.relay {
				r.m.SetRelay(true)
			}
			r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
			if tc.wake != nil {
				if got := r.next(quiet); got != 0 {
					t.Fatalf("before the peer talked: got signal %v, want none", got)
				}
				tc.wake(t, r)
			}
			if got := r.next(quiet); got != tc.want {
				t.Fatalf("got signal %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPriming follows a peer's server-reflexive candidate through
// priming: primed towards at once (TTL 2 and 3), announced to the peer
// with KIND_PRIMED, and checked only once the peer has primed too, or
// after the fallback delay. The sessions never dial (offers without
// credentials), so no check leaves the host.
func TestPriming(t *testing.T) {
	const srflx = "2 1 udp 1694498815 198.51.100.7 40123 typ srflx raddr 10.0.0.5 rport 51820"
	dst := netip.MustParseAddrPort("198.51.100.7:40123")
	type prime struct {
		dst netip.AddrPort
		ttl int
	}
	tests := []struct {
		name string
		// steps after the offer of session 7; the candidate is sent by
		// "cand", the peer's KIND_PRIMED by "primed" (for session 7) or
		// "primed-other" (session 8).
		steps     []string
		delay     time.Duration // fallback
		wantAdded uint64        // within 0.5 s of the last step
	}{
		{"peer primed after us: checked when its signal arrives", []string{"cand", "primed"}, time.Minute, 1},
		{"peer primed first: checked right after our primers", []string{"primed", "cand"}, time.Minute, 1},
		{"peer never primes: held for the fallback delay", []string{"cand"}, time.Minute, 0},
		{"peer never primes, short fallback: checked anyway", []string{"cand"}, 100 * time.Millisecond, 1},
		{"another session's signal releases nothing", []string{"cand", "primed-other"}, time.Minute, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var primes []prime
			r := newLazyRigWith(t, false, func(c *Config) {
				c.PrimeDelay = tc.delay
				c.Prime = func(dst netip.AddrPort, ttl int) {
					mu.Lock()
					primes = append(primes, prime{dst, ttl})
					mu.Unlock()
				}
			})
			r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
			r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7})
			for _, st := range tc.steps {
				switch st {
				case "cand":
					r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_CANDIDATE, Session: 7, Candidates: []string{srflx}})
				case "primed":
					r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_PRIMED, Session: 7})
				case "primed-other":
					r.fromPeer(t, &api.SignalPayload{Kind: api.SignalPayload_KIND_PRIMED, Session: 8})
				}
			}
			steps := uint64(1 + len(tc.steps))
			waitCounters(t, r.m, 5*time.Second, func(c Counters) bool { return c.SignalsIn == steps })

			// We primed and told the peer, whatever it did.
			deadline := time.Now().Add(5 * time.Second)
			sawPrimed := false
			for !sawPrimed && time.Now().Before(deadline) {
				select {
				case pl := <-r.sent:
					sawPrimed = pl.GetKind() == api.SignalPayload_KIND_PRIMED && pl.GetSession() == 7
				case <-time.After(100 * time.Millisecond):
				}
			}
			if !sawPrimed {
				t.Error("no KIND_PRIMED for session 7 sent to the peer")
			}
			mu.Lock()
			got := append([]prime(nil), primes...)
			mu.Unlock()
			if want := []prime{{dst, 2}, {dst, 3}}; !slices.Equal(got, want) {
				t.Errorf("primes: got %v, want %v", got, want)
			}

			time.Sleep(500 * time.Millisecond)
			if c := r.m.Counters(); c.CandidatesAdded != tc.wantAdded {
				t.Errorf("candidates added: got %d, want %d", c.CandidatesAdded, tc.wantAdded)
			}
		})
	}
}

// An offer from a node the map does not have yet is held and answered
// once the map brings it; one held longer than heldFor is dropped, and
// a flood from unknown nodes is bounded.
func TestSignalBeforeMap(t *testing.T) {
	offer := &api.SignalPayload{Kind: api.SignalPayload_KIND_OFFER, Session: 7, Ufrag: "ufragufragufrag1", Pwd: "pwdpwdpwdpwdpwdpwdpwdpwd"}

	r := newLazyRig(t, false) // the controlled side answers offers
	r.fromPeer(t, offer)
	if got := r.next(300 * time.Millisecond); got != 0 {
		t.Fatalf("answered %v before the map had the sender", got)
	}
	if c := waitCounters(t, r.m, time.Second, func(c Counters) bool { return c.SignalsHeld == 1 }); c.SignalsDropped != 0 {
		t.Fatalf("counters %+v, want 1 held, none dropped", c)
	}
	r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
	if got := r.next(time.Second); got != api.SignalPayload_KIND_ANSWER {
		t.Fatalf("after the map brought the sender: got %v, want an answer", got)
	}

	// Too late: the sender's session has long timed out.
	r = newLazyRig(t, false)
	now := time.Now()
	r.m.cfg.Now = func() time.Time { return now }
	r.fromPeer(t, offer)
	waitCounters(t, r.m, time.Second, func(c Counters) bool { return c.SignalsHeld == 1 })
	now = now.Add(heldFor + time.Second)
	r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}})
	if c := waitCounters(t, r.m, time.Second, func(c Counters) bool { return c.SignalsDropped == 1 }); c.SignalsIn != 0 {
		t.Fatalf("a signal held too long was handled: %+v", c)
	}

	// Bounded: a sender holds at most maxHeldPerKey.
	r = newLazyRig(t, false)
	for range maxHeldPerKey + 5 {
		r.fromPeer(t, offer)
	}
	waitCounters(t, r.m, time.Second, func(c Counters) bool { return c.SignalsHeld == maxHeldPerKey && c.SignalsDropped == 5 })
}

// An offer that cannot leave (no coordinator stream) fails its session at
// once: left checking, the session would ignore the peer's requests for
// a session until its timeout. Once the stream is back (Reconnected) the
// next offer goes out at once.
func TestOfferNotSent(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	r := newLazyRigWith(t, true, func(c *Config) {
		send := c.Send
		c.Send = func(s Signal) bool {
			if down.Load() {
				return false
			}
			return send(s)
		}
	})
	r.m.SetPeers([]Peer{{Key: r.peerPub, Online: true}}) // no relay: ICE at once
	waitCounters(t, r.m, 2*time.Second, func(c Counters) bool { return c.SignalsDropped > 0 })
	if st, _ := r.m.Status(r.peerPub); st.State == pathsel.Checking {
		t.Fatalf("a session whose offer did not leave is %v", st.State)
	}
	down.Store(false)
	r.m.Reconnected()
	if got := r.next(time.Second); got != api.SignalPayload_KIND_OFFER {
		t.Fatalf("after the stream is back: got %v, want an offer at once", got)
	}
}
