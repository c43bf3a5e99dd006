package relay

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// meshPair starts relays A and B meshed with key, on fixed ports so B can
// be restarted at the same address.
func meshPair(t *testing.T, e *env, meshKey []byte) (a, b *testRelay, bCfg ServerConfig) {
	t.Helper()
	addrs := make([]string, 2)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	ka, kb := newKey(), newKey()
	aCfg := ServerConfig{PrivateKey: ka, MeshKey: meshKey, MeshPeers: []MeshPeer{
		{URL: "http://" + addrs[1] + "/relay", Key: kb.Public()},
		{URL: "http://" + addrs[0] + "/relay", Key: ka.Public()}, // itself: skipped
	}}
	bCfg = ServerConfig{PrivateKey: kb, MeshKey: meshKey, MeshPeers: []MeshPeer{
		{URL: "http://" + addrs[0] + "/relay", Key: ka.Public()},
	}}
	return e.startRelay(aCfg, addrs[0]), e.startRelay(bCfg, addrs[1]), bCfg
}

func TestMesh(t *testing.T) {
	e := newEnv(t)
	meshKey := newNonce(32)
	a, b, bCfg := meshPair(t, e, meshKey)
	k1, k2 := newKey(), newKey()
	c1 := e.startClient(a, k1, e.ticket(k1.Public(), time.Hour))
	c2 := e.startClient(b, k2, e.ticket(k2.Public(), time.Hour))
	waitConnected(t, c1, c2)
	eventually(t, 10*time.Second, "mesh links up", func() bool {
		return a.s.Stats().MeshLinks == 1 && b.s.Stats().MeshLinks == 1
	})
	sendUntilDelivered(t, c1, c2, []byte("a to b"))
	sendUntilDelivered(t, c2, c1, []byte("b to a"))
	for i := 0; i < 20; i++ { // steady state: no loss on an idle link
		p := []byte(fmt.Sprintf("pkt %d", i))
		c1.c.Send(c2.pub, p)
		expectPacket(t, c2, c1.pub, p)
		c2.c.Send(c1.pub, p)
		expectPacket(t, c1, c2.pub, p)
	}

	t.Run("restart B", func(t *testing.T) {
		b.stop()
		eventually(t, 10*time.Second, "A to forget B's nodes", func() bool {
			a.s.mu.RLock()
			defer a.s.mu.RUnlock()
			return len(a.s.remote) == 0 && a.s.links == 0
		})
		b = e.startRelay(bCfg, b.addr)
		c2.stop()
		c2 = e.startClient(b, k2, e.ticket(k2.Public(), time.Hour))
		waitConnected(t, c2)
		sendUntilDelivered(t, c1, c2, []byte("a to new b"))
		sendUntilDelivered(t, c2, c1, []byte("new b to a"))
	})

	t.Run("revocation on A reaches B", func(t *testing.T) {
		a.s.Revoke(c2.pub, e.clock.Now().Add(time.Hour))
		eventually(t, 5*time.Second, "B to drop the revoked node", func() bool { return b.s.Stats().Clients == 0 })
		eventually(t, 5*time.Second, "B to refuse the revoked node", func() bool {
			return strings.Contains(fmt.Sprint(c2.c.LastError()), "revoked")
		})
	})
}

func TestMeshRefusesWrongKey(t *testing.T) {
	e := newEnv(t)
	meshKey := newNonce(32)
	a := e.startRelay(ServerConfig{MeshKey: meshKey}, "")
	plain := e.startRelay(ServerConfig{}, "")
	tests := []struct {
		name   string
		r      *testRelay
		key    []byte
		reason string
	}{
		{"right key", a, meshKey, ""},
		{"wrong key", a, newNonce(32), "bad mesh key"},
		{"relay without mesh", plain, meshKey, "mesh not enabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRaw(t, tt.r)
			_, err := meshHandshake(rc.br, rc.bw, tt.r.s.PublicKey(), newKey().Public(), tt.key)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, tt.reason)
			}
		})
	}
	// A relay configured with the wrong key never brings its link up.
	c := e.startRelay(ServerConfig{MeshKey: newNonce(32), MeshPeers: []MeshPeer{{URL: a.url, Key: a.s.PublicKey()}}}, "")
	eventually(t, 5*time.Second, "A to refuse the impostor", func() bool { return a.s.Stats().Refused >= 2 })
	if got := c.s.Stats().MeshLinks; got != 0 {
		t.Errorf("impostor mesh links: got %d, want 0", got)
	}
}
