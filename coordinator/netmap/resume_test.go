package netmap

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
)

func eps(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, e := range s {
		out = append(out, netip.MustParseAddrPort(e))
	}
	return out
}

// firstMap subscribes node i with digest and reads its first update.
func firstMap(t *testing.T, r *Registry, i int, digest []byte) *apiMap {
	t.Helper()
	s := r.Subscribe(nodeKey(i), &Held{Digest: digest})
	t.Cleanup(s.Close)
	<-s.C()
	m := next(t, s)
	if m == nil {
		t.Fatal("no first update")
	}
	return m
}

// The digest is the map's content only: a registry that loaded the same
// nodes in another order, at other versions, and carries the presence the
// first one had, has the same digest, and tells an agent holding the
// first one's map that its map is current. Any difference in what the
// map says gives another digest and a full map.
func TestResumeOnAnotherRegistry(t *testing.T) {
	var nodes []store.Node
	for i := 1; i <= 5; i++ {
		nodes = append(nodes, node(i))
	}
	online := Presence{
		nodeKey(1): {Endpoints: eps("192.0.2.1:51820"), Version: "v1.4.0"},
		nodeKey(2): {Endpoints: eps("192.0.2.2:51820", "[2001:db8::2]:51820"), Version: "v1.5.0-rc.1"},
	}

	// The serving registry: nodes joined over time, two online.
	a, _ := newFakeRegistry(t, 0)
	for _, n := range nodes {
		a.Upsert(n)
	}
	a.SetService(svc("web", "10.96.0.10"))
	for k, np := range online {
		if err := a.Connected(k, np.Endpoints, np.Version, t0); err != nil {
			t.Fatal(err)
		}
	}
	held := firstMap(t, a, 1, nil)
	if !held.Full || len(held.Digest) != DigestSize || !bytes.Equal(held.Digest, a.Digest()) {
		t.Fatalf("first map: full %v digest %x, want a full map with the registry's digest %x", held.Full, held.Digest, a.Digest())
	}

	// The next coordinator: the store in reverse order, presence carried.
	newB := func(carry Presence) *Registry {
		b := New(prefixes)
		b.SetClock(a.clk)
		rev := append([]store.Node(nil), nodes...)
		for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
			rev[i], rev[j] = rev[j], rev[i]
		}
		b.Load(rev)
		b.SetService(svc("web", "10.96.0.10"))
		b.Carry(carry, t0.Add(time.Minute))
		return b
	}
	b := newB(online)
	if b.Version() == a.Version() {
		t.Fatalf("both registries at version %d: the test wants them to differ", a.Version())
	}
	m := firstMap(t, b, 1, held.Digest)
	if !m.Current || m.Full || len(m.Peers) != 0 || m.Version != b.Version() || !bytes.Equal(m.Digest, held.Digest) {
		t.Fatalf("resume: got current %v full %v, %d peers, version %d (registry %d); want current at the registry's version", m.Current, m.Full, len(m.Peers), m.Version, b.Version())
	}

	// The agent reconnects with its own endpoints and version: nothing a
	// peer sees changes, so nothing is published.
	v := b.Version()
	if err := b.Connected(nodeKey(1), online[nodeKey(1)].Endpoints, online[nodeKey(1)].Version, t0); err != nil {
		t.Fatal(err)
	}
	if b.Version() != v || !bytes.Equal(b.Digest(), held.Digest) {
		t.Errorf("a carried node connecting with the same endpoints moved the map to %d (digest %x)", b.Version(), b.Digest())
	}

	// A change since the carry-over: the agent is told its map is the one
	// at the carried version, and the delta from there follows.
	for _, tt := range []struct {
		name string
		edit func(*Registry)
	}{
		{"a node more", func(r *Registry) { r.Upsert(node(6)) }},
		{"a Service less", func(r *Registry) { r.DeleteService("demo/web") }},
		{"a node offline", func(r *Registry) {
			_ = r.Connected(nodeKey(2), online[nodeKey(2)].Endpoints, online[nodeKey(2)].Version, t0)
			r.Disconnected(nodeKey(2), t0)
		}},
		{"a node upgraded", func(r *Registry) { _ = r.Connected(nodeKey(2), online[nodeKey(2)].Endpoints, "v1.5.0", t0) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newB(online)
			carried := b.Version()
			tt.edit(b)
			s := b.Subscribe(nodeKey(1), &Held{Digest: held.Digest})
			t.Cleanup(s.Close)
			<-s.C()
			m := next(t, s)
			if !m.Current || m.Version != carried {
				t.Fatalf("first: current %v at %d, want current at the carried version %d", m.Current, m.Version, carried)
			}
			select {
			case <-s.C():
			case <-time.After(timeout):
				t.Fatal("no delta after the current map")
			}
			d := next(t, s)
			if d == nil || d.Full || d.BaseVersion != carried || d.Version != b.Version() || !bytes.Equal(d.Digest, b.Digest()) {
				t.Fatalf("then: %v, want the delta from %d to %d", d, carried, b.Version())
			}
		})
	}

	// A map the registry never had: a full map.
	for _, tt := range []struct {
		name  string
		carry Presence
		edit  func(*Registry)
	}{
		{"presence not carried", Presence{}, nil},
		{"other endpoints", Presence{nodeKey(1): online[nodeKey(1)], nodeKey(2): {Endpoints: eps("192.0.2.2:4242"), Version: "v1.5.0-rc.1"}}, nil},
		// What a coordinator from before agent versions saved: the
		// nodes are in the map without theirs.
		{"no versions carried", Presence{nodeKey(1): {Endpoints: online[nodeKey(1)].Endpoints}, nodeKey(2): {Endpoints: online[nodeKey(2)].Endpoints}}, nil},
		{"another version", Presence{nodeKey(1): online[nodeKey(1)], nodeKey(2): {Endpoints: online[nodeKey(2)].Endpoints, Version: "v1.5.0"}}, nil},
		// A relay map set after the start changes what every past
		// version meant.
		{"another relay map", online, func(r *Registry) {
			r.SetRelays([]*api.RelayRegion{{Id: 1, Name: "r1", Port: 443, Key: make([]byte, 32)}})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newB(tt.carry)
			if tt.edit != nil {
				tt.edit(b)
			}
			if m := firstMap(t, b, 1, held.Digest); !m.Full || m.Current {
				t.Errorf("got current %v full %v, want a full map", m.Current, m.Full)
			}
		})
	}
}

// Every update carries the digest of the map it leaves the agent with, so
// an agent that applied a run of deltas can still resume.
func TestDigestFollowsDeltas(t *testing.T) {
	r, _ := newFakeRegistry(t, 3)
	s := subscribe(t, r, 1)
	changes := []func(){
		func() { r.Upsert(node(4)) },
		func() { _ = r.Connected(nodeKey(2), eps("192.0.2.2:1"), "", t0) },
		func() { r.SetService(svc("db", "10.96.0.11")) },
		func() { _ = r.SetEndpoints(nodeKey(2), eps("192.0.2.2:2")) },
		func() { r.Disconnected(nodeKey(2), t0) },
		func() { r.DeleteService("demo/db") },
		func() { r.Delete(nodeKey(3)) },
		func() { r.SetRelayRevocations([]byte("revoked")) },
	}
	for i, change := range changes {
		change()
		select {
		case <-s.C():
		case <-time.After(timeout):
			t.Fatalf("change %d: not published", i)
		}
		m := next(t, s)
		if m == nil || m.Full {
			t.Fatalf("change %d: got %v, want a delta", i, m)
		}
		if !bytes.Equal(m.Digest, r.Digest()) {
			t.Fatalf("change %d: delta digest %x, registry %x", i, m.Digest, r.Digest())
		}
		if m2 := firstMap(t, r, 1, m.Digest); !m2.Current {
			t.Fatalf("change %d: a stream holding this delta's map got a full map on reconnect", i)
		}
	}
	// Undoing a change gives the digest from before it back: the digest is
	// the content, not the history.
	before := r.Digest()
	_ = r.Connected(nodeKey(2), eps("192.0.2.2:2"), "", t0) // offline with these before
	if bytes.Equal(r.Digest(), before) {
		t.Fatal("a change left the digest as it was")
	}
	r.Disconnected(nodeKey(2), t0)
	if !bytes.Equal(r.Digest(), before) {
		t.Error("undoing a change did not restore the digest")
	}
}

// A digest of the wrong size or of another map gets a full map.
func TestResumeRefused(t *testing.T) {
	r, _ := newFakeRegistry(t, 2)
	for _, d := range [][]byte{make([]byte, DigestSize), bytes.Repeat([]byte{1}, DigestSize), {1, 2, 3}} {
		if m := firstMap(t, r, 1, d); !m.Full || m.Current {
			t.Errorf("digest %x: got current %v, want a full map", d, m.Current)
		}
	}
}

// Carried nodes are online until they connect or the carry-over ends;
// then those that did not connect go offline, in one change each.
func TestCarry(t *testing.T) {
	r, clk := newFakeRegistry(t, 3)
	r.Carry(Presence{nodeKey(1): {Endpoints: eps("192.0.2.1:1")}, nodeKey(2): {Endpoints: eps("192.0.2.2:1"), Version: "v2.0.0"}, nodeKey(9): {Endpoints: eps("192.0.2.9:1")}},
		t0.Add(30*time.Second))
	if n := r.Carried(); n != 2 {
		t.Fatalf("carried %d, want 2 (node 9 is not registered)", n)
	}
	online := func(i int) bool {
		_, on, _ := r.Node(nodeKey(i))
		return on
	}
	if !online(1) || !online(2) || online(3) {
		t.Fatalf("online: %v %v %v, want true true false", online(1), online(2), online(3))
	}
	p, _ := r.Presence()
	if len(p) != 2 || !slices.Equal(p[nodeKey(2)].Endpoints, eps("192.0.2.2:1")) || p[nodeKey(2)].Version != "v2.0.0" {
		t.Errorf("presence %v, want nodes 1 and 2 with their carried endpoints and version", p)
	}
	if err := r.Connected(nodeKey(1), eps("192.0.2.1:7"), "", t0); err != nil {
		t.Fatal(err)
	}
	v := r.Version()
	clk.Advance(30 * time.Second)
	waitFor(t, func() bool { return r.Carried() == 0 })
	if !online(1) || online(2) {
		t.Errorf("after the carry-over: node 1 online %v (connected), node 2 online %v (never came)", online(1), online(2))
	}
	if r.Version() != v+1 {
		t.Errorf("the carry-over's end moved the map %d versions, want 1 (node 2 offline)", r.Version()-v)
	}
	if _, on, _ := r.Node(nodeKey(1)); !on {
		t.Error("node 1 went offline at the end of the carry-over although it connected")
	}
	r.Disconnected(nodeKey(1), t0)
	if online(1) {
		t.Error("node 1 online after its only stream ended")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}
