package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/node/mapstate"
)

// The next coordinator on the same store (a restart here; another replica
// on the Kubernetes store) starts from the presence the last one saved:
// an agent that comes back holding the last map is told it is current
// instead of getting a full map, its coming back changes nothing a peer
// sees, and a node saved online that never comes back goes offline when
// the grace ends.
func TestResumeOnNextCoordinator(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, b, c := newAgent(t), newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok)
	e.join(t, c, "c", tok)
	sa := e.connect(t, a, "192.0.2.1:51820")
	sa.next(t) // a is online
	sb := e.connect(t, b, "192.0.2.2:51820")
	if m := sb.next(t); !peerByName(m, "a").GetOnline() || !peerByName(m, "b").GetOnline() {
		t.Fatal("b's first map does not have a and b online")
	}
	// a's last map is the registry's now: a holds what b holds.
	held := sa.waitFor(t, "the registry's version", func(m *api.NetworkMap) bool { return m.Version == e.srv.Registry().Version() })
	if len(held.Digest) == 0 || !bytes.Equal(held.Digest, e.srv.Registry().Digest()) {
		t.Fatalf("a holds digest %x, the registry has %x", held.Digest, e.srv.Registry().Digest())
	}
	if _, err := e.srv.savePresence(context.Background(), e.store, e.clock.Now()); err != nil {
		t.Fatal(err)
	}

	// The next coordinator: same store, its own registry and versions.
	e2 := e.next(t, context.Background(), func(c *Config) { c.PresenceGrace = time.Minute })
	next := e2.srv
	if n := next.Registry().Carried(); n != 2 {
		t.Fatalf("the next coordinator carries %d nodes, want 2 (a and b)", n)
	}
	v := next.Registry().Version()

	h := hello(a, "192.0.2.1:51820")
	h.MapDigest = held.Digest
	ra := e2.connectHello(t, a, h)
	m := ra.next(t)
	if !m.Current || m.Full || len(m.Peers) != 0 || !bytes.Equal(m.Digest, held.Digest) || m.Version != v {
		t.Fatalf("a's first map: current %v full %v, %d peers, version %d; want current at %d", m.Current, m.Full, len(m.Peers), m.Version, v)
	}
	if got := next.Registry().Version(); got != v {
		t.Errorf("a coming back moved the map from %d to %d", v, got)
	}

	// A digest the coordinator does not have: a full map.
	hb := hello(b, "192.0.2.2:51820")
	hb.MapDigest = bytes.Repeat([]byte{7}, len(held.Digest))
	rb := e2.connectHello(t, b, hb)
	if m := rb.next(t); !m.Full || m.Current {
		t.Fatalf("b's first map: current %v full %v, want a full map", m.Current, m.Full)
	}
	for deadline := time.Now().Add(timeout); next.m.currentMaps.Load() != 1 || next.m.fullMaps.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("maps sent: %d current, %d full; want 1 each", next.m.currentMaps.Load(), next.m.fullMaps.Load())
		}
	}

	// b is back too; c was never online; a presence saved now says so.
	if _, err := next.savePresence(context.Background(), e.store, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	p, _, err := e.store.LoadPresence(context.Background())
	if err != nil || len(p) != 2 {
		t.Fatalf("saved presence %v (%v), want a and b", p, err)
	}
}

// A node saved online that does not come back goes offline when the
// grace ends, and peers see it; a save older than the maximum age is not
// carried at all.
func TestCarryGraceAndAge(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, b := newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok)
	e.connect(t, b, "192.0.2.2:51820").next(t)
	if err := e.store.SavePresence(context.Background(), mustPresence(t, e), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	start := func(age time.Duration) (*Server, *env) {
		e2 := e.next(t, context.Background(), func(c *Config) { c.PresenceGrace, c.PresenceMaxAge = 30*time.Second, age })
		return e2.srv, e2
	}
	e.clock.Advance(10 * time.Second)
	if old, _ := start(5 * time.Second); old.Registry().Carried() != 0 {
		t.Fatalf("a save 10 s old carried with a maximum age of 5 s")
	}
	next, e2 := start(time.Minute)
	if next.Registry().Carried() != 1 {
		t.Fatalf("carried %d, want 1 (b)", next.Registry().Carried())
	}
	sa := e2.connect(t, a, "192.0.2.1:51820")
	if m := sa.next(t); peerByName(m, "b") == nil || !peerByName(m, "b").Online {
		t.Fatal("b not online in a's first map during the grace")
	}
	e.clock.Advance(30 * time.Second)
	sa.waitFor(t, "b offline", func(m *api.NetworkMap) bool { p := peerByName(m, "b"); return p != nil && !p.Online })
}

func mustPresence(t *testing.T, e *env) store.Presence {
	t.Helper()
	p, _ := e.srv.Registry().Presence()
	if len(p) == 0 {
		t.Fatal("nobody online")
	}
	return p
}

// A coordinator that stops saves the presence as it was when it began to
// stop: the streams its stop ends are not disconnections.
func TestFinalSaveOnStop(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a := newAgent(t)
	e.join(t, a, "a", tok)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	e2 := e.next(t, ctx, nil)
	srv := e2.srv
	sa := e2.connect(t, a, "192.0.2.1:51820")
	sa.next(t)
	kept := make(chan error, 1)
	go func() { kept <- srv.KeepPresence(ctx) }()
	e2.waitTimers(t, 1) // the keeper's tick

	stop()
	sa.cancel() // the stream ends while the server stops
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
	p, _, err := e.store.LoadPresence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if np, ok := p[a.pub]; !ok || len(np.Endpoints) != 1 || np.Endpoints[0].String() != "192.0.2.1:51820" {
		t.Fatalf("saved presence %v, want a online at 192.0.2.1:51820", p)
	}
	for deadline := time.Now().Add(timeout); srv.m.streams.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream's handler did not end")
		}
	}
	if _, on, _ := srv.Registry().Node(a.pub); !on {
		t.Error("a went offline in the stopping server's registry")
	}
}

// After a crash the last save is a few seconds old: the next coordinator's
// map differs from what agents hold in the nodes that changed since. An
// agent that sends its own bucket sums gets those buckets only, and then
// holds exactly the coordinator's map.
func TestPatchAfterCrash(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
	a, b := newAgent(t), newAgent(t)
	e.join(t, a, "a", tok)
	e.join(t, b, "b", tok)
	for i := range 40 { // more nodes, in other buckets
		e.join(t, newAgent(t), fmt.Sprintf("n%d", i), tok)
	}
	sa := e.connect(t, a, "192.0.2.1:51820")
	state := mapstate.New()
	apply := func(m *api.NetworkMap) {
		t.Helper()
		if err := state.Apply(m); err != nil {
			t.Fatalf("apply %d->%d: %v", m.BaseVersion, m.Version, err)
		}
	}
	apply(sa.next(t))
	sb := e.connect(t, b, "192.0.2.2:51820")
	sb.next(t)
	sa.waitFor(t, "b online", func(m *api.NetworkMap) bool { apply(m); return peerByName(m, "b").GetOnline() })
	if _, err := e.srv.savePresence(context.Background(), e.store, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	// b moves after the save; the coordinator dies before the next one.
	sb.send(t, &api.ClientMessage{Msg: &api.ClientMessage_Endpoints{Endpoints: &api.EndpointUpdate{Endpoints: []string{"198.51.100.2:4242"}}}})
	sa.waitFor(t, "b's new endpoint", func(m *api.NetworkMap) bool {
		apply(m)
		return slices.Contains(peerByName(m, "b").GetEndpoints(), "198.51.100.2:4242")
	})
	if !bytes.Equal(state.Digest, e.srv.Registry().Digest()) || state.Buckets() == nil {
		t.Fatalf("a's map: digest %x, own sums %v; want the registry's digest %x and sums", state.Digest, state.Buckets() != nil, e.srv.Registry().Digest())
	}

	e2 := e.next(t, context.Background(), nil)
	next := e2.srv
	h := hello(a, "192.0.2.1:51820")
	h.MapDigest, h.MapBuckets = state.Digest, state.Buckets()
	m := e2.connectHello(t, a, h).next(t)
	if m.Full || m.Current || !bytes.Equal(m.PatchedBuckets, []byte{b.pub[0]}) {
		t.Fatalf("a's first map: full %v current %v patched %v; want a patch of b's bucket %d", m.Full, m.Current, m.PatchedBuckets, b.pub[0])
	}
	apply(m)
	if want := next.Registry().Digest(); !bytes.Equal(state.Digest, want) || state.Buckets() == nil {
		t.Errorf("after the patch a holds digest %x (own sums %v), the coordinator %x", state.Digest, state.Buckets() != nil, want)
	}
	if p := state.Peers[b.pub]; len(p.Endpoints) != 1 || p.Endpoints[0].String() != "192.0.2.2:51820" {
		t.Errorf("b after the patch: %v, want the endpoint the new coordinator has (the saved one, until b reports again)", p.Endpoints)
	}
	if len(state.Peers) != 41 {
		t.Errorf("a has %d peers after the patch, want 41", len(state.Peers))
	}
	// Counted once the send returned, which may be after a has it.
	for deadline := time.Now().Add(timeout); next.m.patchMaps.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("patch maps sent: %d, want 1", next.m.patchMaps.Load())
		}
	}
}

// next starts the next coordinator on e's store and clock (a restart, or
// another replica taking over), with cfg changed by mod, served until
// the test ends; ctx is its life (New's).
func (e *env) next(t *testing.T, ctx context.Context, mod func(*Config)) *env {
	t.Helper()
	cfg := Config{Store: e.store, Prefixes: e.srv.cfg.Prefixes, CAPin: e.srv.cfg.CAPin, Clock: e.clock, MapInterval: -1}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc := serve(t, srv)
	return &env{srv: srv, store: e.store, clock: e.clock, conn: cc, control: api.NewControlClient(cc), admin: api.NewAdminClient(cc)}
}
