package wgdev

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/edgewire/edgewire/types/key"
)

func testKey(t *testing.T) (key.Private, key.Public) {
	t.Helper()
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return priv, priv.Public()
}

// endpointOf reads the endpoint WireGuard holds for peer.
func endpointOf(t *testing.T, d *Device, peer key.Public) string {
	t.Helper()
	stats, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return stats[peer].Endpoint.String()
}

// TestEndpointDoesNotRoam: the agent is the only authority on endpoints.
// A peer is created without an endpoint (it only answers handshakes until
// it has a path) and gets one later; packets from it that arrive from
// another endpoint (over the relay, after the path went direct) must not
// move WireGuard's endpoint. wireguard-go disables roaming only for peers
// created with an endpoint, which once let a late relayed packet steer a
// direct pair back onto the relay, silent once the relay was gone.
func TestEndpointDoesNotRoam(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	aPriv, aPub := testKey(t)
	bPriv, bPub := testKey(t)
	tunA, tunB := tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	a, err := New(Config{Name: "roam-a", MTU: 1420, PrivateKey: aPriv, Bind: binds[0], TUN: tunA.TUN()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(Config{Name: "roam-b", MTU: 1420, PrivateKey: bPriv, Bind: binds[1], TUN: tunB.TUN()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	aIP, bIP := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")

	// a knows b without an endpoint first, as the agent does before a path.
	if err := a.SetPeers([]PeerConfig{{PublicKey: bPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(bIP, 32)}}}); err != nil {
		t.Fatal(err)
	}
	// Then a path: b's "direct" endpoint. (bindtest: a reaches b on port 1;
	// everything a receives appears to come from port 3, another endpoint.)
	direct := "127.0.0.1:1"
	if err := a.SetPeers([]PeerConfig{{PublicKey: bPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(bIP, 32)},
		Endpoint: netip.MustParseAddrPort(direct), Keepalive: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]PeerConfig{{PublicKey: aPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(aIP, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:2"), Keepalive: time.Second}}); err != nil {
		t.Fatal(err)
	}
	// Traffic both ways: a handshake and keepalives from b reach a from
	// the other endpoint.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := a.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s := st[bPub]; !s.LastHandshake.IsZero() && s.RxBytes > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _ := a.Stats()
	if st[bPub].RxBytes == 0 {
		t.Fatal("no traffic from b reached a")
	}
	if got := endpointOf(t, a, bPub); got != direct {
		t.Errorf("a's endpoint for b after b's packets: got %s, want %s (roamed to where the packets came from)", got, direct)
	}
}

// TestPeerNamesInLogs: wireguard-go's lines about a peer carry the peer
// by name and short key, from its creation on.
func TestPeerNamesInLogs(t *testing.T) {
	priv, _ := testKey(t)
	_, peer := testKey(t)
	var mu sync.Mutex
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tunA := tuntest.NewChannelTUN()
	d, err := New(Config{Name: "names", MTU: 1420, PrivateKey: priv, Bind: bindtest.NewChannelBinds()[0], TUN: tunA.TUN(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetPeers([]PeerConfig{{PublicKey: peer, Name: "db", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}}}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var named int
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m struct {
			Msg  string
			Peer *struct{ Name, Key string }
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !strings.HasPrefix(m.Msg, "peer(") {
			continue
		}
		if m.Peer == nil || m.Peer.Name != "db" || m.Peer.Key != peer.Short() {
			t.Errorf("line %s: got peer %+v, want {db %s}", line, m.Peer, peer.Short())
		}
		named++
	}
	if named == 0 {
		t.Errorf("no wireguard-go line about the peer in %s", buf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// TestRefusedInitiation: an initiation from a key that is not a peer is
// refused by WireGuard and reported with the endpoint it came from; once
// the key is a peer, its initiations are answered (the handshake
// completes) and not reported.
func TestRefusedInitiation(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	aPriv, aPub := testKey(t)
	bPriv, bPub := testKey(t)
	refused := make(chan netip.AddrPort, 16)
	tunA, tunB := tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	a, err := New(Config{Name: "refuse-a", MTU: 1420, PrivateKey: aPriv, Bind: binds[0], TUN: tunA.TUN()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(Config{Name: "refuse-b", MTU: 1420, PrivateKey: bPriv, Bind: binds[1], TUN: tunB.TUN(),
		OnRefusedInitiation: func(from netip.AddrPort) {
			select {
			case refused <- from:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	aIP, bIP := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")
	toB := PeerConfig{PublicKey: bPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(bIP, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:1"), Keepalive: time.Second}
	// a initiates at once (keepalive on); b does not know a.
	if err := a.SetPeers([]PeerConfig{toB}); err != nil {
		t.Fatal(err)
	}
	select {
	case from := <-refused:
		if !from.IsValid() || !from.Addr().IsLoopback() {
			t.Errorf("refused initiation from %v, want bindtest's loopback endpoint", from)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b refused no initiation from a key it does not know")
	}

	// Once b knows a, b's own initiation is answered and nothing more is
	// refused.
	if err := b.SetPeers([]PeerConfig{{PublicKey: aPub, AllowedIPs: []netip.Prefix{netip.PrefixFrom(aIP, 32)},
		Endpoint: netip.MustParseAddrPort("127.0.0.1:2"), Keepalive: time.Second}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if !st[aPub].LastHandshake.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no handshake once b knows a")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case from := <-refused:
		t.Errorf("refused an initiation from %v after the handshake; want none", from)
	default:
	}
}
