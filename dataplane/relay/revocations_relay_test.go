package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// TestRevocationListReachesRelay: a node deleted by the coordinator
// still holds a valid ticket; a relay that never heard of the deletion
// learns it from the list another node carries, and tells its mesh.
func TestRevocationListReachesRelay(t *testing.T) {
	e := newEnv(t)
	a, b, _ := meshPair(t, e, newNonce(32))
	eventually(t, 10*time.Second, "mesh links up", func() bool {
		return a.s.Stats().MeshLinks == 1 && b.s.Stats().MeshLinks == 1
	})
	kc, kv, kw := newKey(), newKey(), newKey()
	carrier := e.startClient(a, kc, e.ticket(kc.Public(), time.Hour))
	victim := e.startClient(a, kv, e.ticket(kv.Public(), time.Hour))
	onB := e.startClient(b, kw, e.ticket(kw.Public(), time.Hour))
	waitConnected(t, carrier, victim, onB)
	now := e.clock.Now()
	list := func(issued time.Time, es ...key.Private) []byte {
		r := Revocations{Issued: issued}
		for _, k := range es {
			r.Entries = append(r.Entries, Revocation{Node: k.Public(), Until: now.Add(time.Hour)})
		}
		return SignRevocations(e.tpriv, r)
	}
	refused := func(c *testClient) func() bool {
		return func() bool { return strings.Contains(fmt.Sprint(c.c.LastError()), "revoked") }
	}

	carrier.c.SetRevocations(list(now, kv, kw))
	eventually(t, 5*time.Second, "the relay to refuse the deleted node", refused(victim))
	eventually(t, 5*time.Second, "its mesh peer to refuse the other", refused(onB))
	if !carrier.c.Connected() {
		t.Fatal("the carrier lost its connection")
	}

	t.Run("stale list changes nothing", func(t *testing.T) {
		k := newKey()
		c := e.startClient(a, k, e.ticket(k.Public(), time.Hour))
		waitConnected(t, c)
		conn := carrier.c.cur.Load()
		carrier.c.SetRevocations(list(now.Add(-time.Second), k))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := carrier.c.Ping(ctx); err != nil { // the list was handled before the ping
			t.Fatal(err)
		}
		if !c.c.Connected() || carrier.c.cur.Load() != conn {
			t.Error("a stale list revoked a node or closed its carrier")
		}
		if got := a.s.Stats().Drops["bad_revocations"]; got != 0 {
			t.Errorf("bad_revocations: got %d, want 0 (stale is not bad)", got)
		}
	})

	t.Run("forged list closes its carrier", func(t *testing.T) {
		k, v := newKey(), newKey()
		c := e.startClient(a, v, e.ticket(v.Public(), time.Hour))
		waitConnected(t, c)
		rc := dialNode(t, a, k)
		if err := rc.handshake(a, e.ticket(k.Public(), time.Hour)); err != nil {
			t.Fatal(err)
		}
		_, other := testTicketKey(7)
		rc.send(t, frameRevocations, SignRevocations(other, Revocations{Issued: now.Add(time.Minute), Entries: []Revocation{{Node: v.Public(), Until: now.Add(time.Hour)}}}))
		rc.waitClosed(t)
		if got := a.s.Stats().Drops["bad_revocations"]; got != 1 {
			t.Errorf("bad_revocations: got %d, want 1", got)
		}
		if !c.c.Connected() {
			t.Error("a forged list revoked a node")
		}
	})

	t.Run("a restarted relay learns the list again", func(t *testing.T) {
		// A relay alone (no mesh, fresh state) hears the list from the
		// carrier's next handshake.
		u := e.startRelay(ServerConfig{}, "")
		k, v := newKey(), newKey()
		c := e.startClient(u, k, e.ticket(k.Public(), time.Hour))
		waitConnected(t, c)
		c.c.SetRevocations(list(now.Add(time.Minute), v))
		eventually(t, 5*time.Second, "the list to be applied", func() bool { return u.s.revokedUntil(v.Public(), now) })
		u.stop()
		u2 := e.startRelay(ServerConfig{PrivateKey: u.s.cfg.PrivateKey}, u.addr)
		eventually(t, 10*time.Second, "the restarted relay to apply the list", func() bool { return u2.s.revokedUntil(v.Public(), now) })
	})
}
