package traversal

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
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
	r.m, err = New(Config{
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
	})
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
