package netmap

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/key"
)

var (
	t0       = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	prefixes = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}
)

func nodeKey(i int) key.Public {
	var k key.Public
	k[0] = byte(i >> 8)
	k[1] = byte(i)
	k[31] = 0xee
	return k
}

func node(i int) store.Node {
	return store.Node{
		Key:       nodeKey(i),
		Name:      fmt.Sprintf("node-%05d", i),
		Addresses: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})},
		CreatedAt: t0,
	}
}

// newRegistry returns a registry holding nodes 1..n, added with Upsert.
func newRegistry(t testing.TB, n int) *Registry {
	t.Helper()
	r, _ := newFakeRegistry(t, n)
	return r
}

// newFakeRegistry is newRegistry on a fake clock at t0, which only the
// test moves.
func newFakeRegistry(t testing.TB, n int) (*Registry, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(t0)
	r := New(prefixes)
	r.SetClock(clk)
	for i := 1; i <= n; i++ {
		r.Upsert(node(i))
	}
	return r, clk
}

// decoded calls s.Next and decodes the update as an agent would see it.
func (s *Sub) decoded() (*api.NetworkMap, error) {
	u, err := s.Next()
	if err != nil || u == nil {
		return nil, err
	}
	return decode(u)
}

// next calls s.Next and fails the test on error.
func next(t *testing.T, s *Sub) *api.NetworkMap {
	t.Helper()
	m, err := s.decoded()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return m
}

// subscribe subscribes node i and consumes its first (full) map.
func subscribe(t *testing.T, r *Registry, i int) *Sub {
	t.Helper()
	s := r.Subscribe(nodeKey(i), nil)
	t.Cleanup(s.Close)
	<-s.C() // as a stream does: wait, then read
	if m := next(t, s); m == nil || !m.Full {
		t.Fatalf("first Next: got %v, want a full map", m)
	}
	return s
}

func names(nodes []*api.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}

func signalled(s *Sub) bool {
	select {
	case <-s.C():
		return true
	default:
		return false
	}
}

// The full map is the same for every stream: peers list every node, the
// subscriber's own included, and self is the subscriber's.
func TestFirstNextIsFullMap(t *testing.T) {
	r := newRegistry(t, 3)
	s := r.Subscribe(nodeKey(2), nil)
	defer s.Close()
	if !signalled(s) {
		t.Fatal("new subscriber not signalled, want a wake-up for its first map")
	}
	m := next(t, s)
	if m == nil {
		t.Fatal("got nil map, want a full map")
	}
	if !m.Full {
		t.Errorf("got Full=false, want true")
	}
	if m.Version != r.Version() || m.Version != 3 {
		t.Errorf("got version %d, want %d (registry) and 3", m.Version, r.Version())
	}
	if got := m.GetSelf().GetName(); got != "node-00002" {
		t.Errorf("got self %q, want node-00002", got)
	}
	if got, want := names(m.Peers), []string{"node-00001", "node-00002", "node-00003"}; !slices.Equal(got, want) {
		t.Errorf("got peers %v, want %v", got, want)
	}
	if got, want := m.OverlayPrefixes, []string{"100.64.0.0/10"}; !slices.Equal(got, want) {
		t.Errorf("got overlay prefixes %v, want %v", got, want)
	}
	if m2 := next(t, s); m2 != nil {
		t.Errorf("second Next with no change: got %v, want nil", m2)
	}
}

func TestLoadThenSubscribe(t *testing.T) {
	r := New(prefixes)
	r.Load([]store.Node{node(1), node(2)})
	if got := r.Version(); got != 2 {
		t.Fatalf("got version %d after Load, want 2", got)
	}
	s := r.Subscribe(nodeKey(1), nil)
	defer s.Close()
	m := next(t, s)
	if got, want := names(m.Peers), []string{"node-00001", "node-00002"}; !m.GetFull() || !slices.Equal(got, want) || m.Self.GetName() != "node-00001" {
		t.Fatalf("got full=%v peers %v self %q, want a full map with peers %v, self node-00001", m.GetFull(), got, m.Self.GetName(), want)
	}
	r.Upsert(node(3))
	m = next(t, s)
	if m.GetFull() || m.BaseVersion != 2 || m.Version != 3 || len(m.Peers) != 1 || m.Peers[0].Name != "node-00003" {
		t.Fatalf("got %v, want a delta 2->3 with peer node-00003", m)
	}
}

func TestDeltas(t *testing.T) {
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}
	tests := []struct {
		name        string
		change      func(t *testing.T, r *Registry)
		wantPeers   []string
		wantRemoved []key.Public
		wantSelf    bool
	}{
		{
			name:      "peer upsert",
			change:    func(t *testing.T, r *Registry) { r.Upsert(node(3)) },
			wantPeers: []string{"node-00003"},
		},
		{
			name:      "new node",
			change:    func(t *testing.T, r *Registry) { r.Upsert(node(9)) },
			wantPeers: []string{"node-00009"},
		},
		{
			name:        "peer delete",
			change:      func(t *testing.T, r *Registry) { r.Delete(nodeKey(3)) },
			wantRemoved: []key.Public{nodeKey(3)},
		},
		{
			name: "peer connects",
			change: func(t *testing.T, r *Registry) {
				if err := r.Connected(nodeKey(2), eps, "", t0); err != nil {
					t.Fatalf("Connected: %v", err)
				}
			},
			wantPeers: []string{"node-00002"},
		},
		{
			name: "peer endpoints",
			change: func(t *testing.T, r *Registry) {
				if err := r.SetEndpoints(nodeKey(2), eps); err != nil {
					t.Fatalf("SetEndpoints: %v", err)
				}
			},
			wantPeers: []string{"node-00002"},
		},
		{
			name:      "self change",
			change:    func(t *testing.T, r *Registry) { n := node(1); n.Hostname = "renamed"; r.Upsert(n) },
			wantPeers: []string{"node-00001"}, // the shared part lists it too
			wantSelf:  true,
		},
		{
			name: "several changes coalesce",
			change: func(t *testing.T, r *Registry) {
				r.Upsert(node(2))
				r.Delete(nodeKey(3))
				r.Upsert(node(4))
				r.Upsert(node(2))
				r.Upsert(node(1))
			},
			wantPeers:   []string{"node-00001", "node-00002", "node-00004"},
			wantRemoved: []key.Public{nodeKey(3)},
			wantSelf:    true,
		},
		{
			name: "one node changed 100 times appears once",
			change: func(t *testing.T, r *Registry) {
				for i := 0; i < 100; i++ {
					n := node(2)
					n.Hostname = fmt.Sprint(i)
					r.Upsert(n)
				}
			},
			wantPeers: []string{"node-00002"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, 4)
			s := subscribe(t, r, 1)
			base := r.Version()
			tt.change(t, r)
			if !signalled(s) {
				t.Fatal("subscriber not signalled after a change")
			}
			m := next(t, s)
			if m == nil {
				t.Fatal("got nil, want a delta")
			}
			if m.Full {
				t.Errorf("got a full map, want a delta")
			}
			if m.BaseVersion != base || m.Version != r.Version() {
				t.Errorf("got delta %d->%d, want %d->%d", m.BaseVersion, m.Version, base, r.Version())
			}
			if got := names(m.Peers); !slices.Equal(got, tt.wantPeers) {
				t.Errorf("got peers %v, want %v", got, tt.wantPeers)
			}
			var removed []key.Public
			for _, k := range m.Removed {
				removed = append(removed, key.Public(k))
			}
			if !slices.Equal(removed, tt.wantRemoved) {
				t.Errorf("got removed %v, want %v", removed, tt.wantRemoved)
			}
			if got := m.Self != nil; got != tt.wantSelf {
				t.Errorf("got self set %v, want %v", got, tt.wantSelf)
			}
			if k := nodeKey(1); tt.wantSelf && !bytes.Equal(m.Self.PublicKey, k[:]) {
				t.Errorf("got self key %x, want %x", m.Self.PublicKey, k[:])
			}
			if m := next(t, s); m != nil {
				t.Errorf("Next after the delta: got %v, want nil", m)
			}
		})
	}
}

func TestPeerStateInDelta(t *testing.T) {
	r := newRegistry(t, 2)
	s := subscribe(t, r, 1)
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("[2001:db8::1]:41641")}
	if err := r.Connected(nodeKey(2), eps, "", t0); err != nil {
		t.Fatalf("Connected: %v", err)
	}
	m := next(t, s)
	if len(m.GetPeers()) != 1 {
		t.Fatalf("got %d peers, want 1", len(m.GetPeers()))
	}
	p := m.Peers[0]
	if !p.Online {
		t.Errorf("got Online=false, want true")
	}
	if got, want := p.Endpoints, []string{"192.0.2.1:51820", "[2001:db8::1]:41641"}; !slices.Equal(got, want) {
		t.Errorf("got endpoints %v, want %v", got, want)
	}
	// Last-seen and hostname are for admins; every node would pay for them.
	if p.LastSeenUnixMs != 0 || p.Hostname != "" {
		t.Errorf("got last seen %d hostname %q in a map entry, want neither", p.LastSeenUnixMs, p.Hostname)
	}
	if got, want := p.Addresses, []string{"100.64.0.2"}; !slices.Equal(got, want) {
		t.Errorf("got addresses %v, want %v", got, want)
	}
}

func TestDeletedSelf(t *testing.T) {
	r := newRegistry(t, 2)
	s := subscribe(t, r, 1)
	r.Delete(nodeKey(1))
	if !signalled(s) {
		t.Fatal("subscriber of a deleted node not signalled")
	}
	if _, err := s.decoded(); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("got err %v, want ErrUnknownNode", err)
	}
	// A second Delete of an unknown key changes nothing.
	v := r.Version()
	r.Delete(nodeKey(1))
	if got := r.Version(); got != v {
		t.Errorf("deleting an unknown key bumped the version from %d to %d", v, got)
	}
}

func TestResync(t *testing.T) {
	r := newRegistry(t, 3)
	s := subscribe(t, r, 1)
	s.Resync()
	if !signalled(s) {
		t.Fatal("Resync did not signal")
	}
	m := next(t, s)
	if !m.GetFull() {
		t.Fatalf("got %v after Resync, want a full map", m)
	}
	if got, want := names(m.Peers), []string{"node-00001", "node-00002", "node-00003"}; !slices.Equal(got, want) {
		t.Errorf("got peers %v, want %v", got, want)
	}
	r.Upsert(node(3))
	if m := next(t, s); m.GetFull() {
		t.Errorf("got a full map after Resync was served, want a delta")
	}
}

func TestBehindLogFloorGetsFullMap(t *testing.T) {
	tests := []struct {
		name     string
		changes  int
		wantFull bool
	}{
		{"within the log", 4, false},
		{"log trimmed past the subscriber", 20, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, 3)
			r.maxLog = 8
			s := subscribe(t, r, 1)
			base := r.Version()
			for i := 0; i < tt.changes; i++ {
				n := node(2 + i%2)
				n.Hostname = fmt.Sprint(i)
				r.Upsert(n)
			}
			m := next(t, s)
			if m.GetFull() != tt.wantFull {
				t.Fatalf("got Full=%v, want %v", m.GetFull(), tt.wantFull)
			}
			if m.Version != r.Version() {
				t.Errorf("got version %d, want %d", m.Version, r.Version())
			}
			if tt.wantFull {
				if got, want := names(m.Peers), []string{"node-00001", "node-00002", "node-00003"}; !slices.Equal(got, want) {
					t.Errorf("got peers %v, want %v", got, want)
				}
			} else if m.BaseVersion != base {
				t.Errorf("got base version %d, want %d", m.BaseVersion, base)
			}
			if len(r.log) > r.maxLog {
				t.Errorf("got log of %d entries, want at most %d", len(r.log), r.maxLog)
			}
		})
	}
}

// A subscriber exactly at the log floor can still get a delta, and one
// further behind cannot.
func TestLogFloorBoundary(t *testing.T) {
	r := newRegistry(t, 3)
	r.maxLog = 4
	atFloor := r.Subscribe(nodeKey(1), nil)
	defer atFloor.Close()
	behind := r.Subscribe(nodeKey(2), nil)
	defer behind.Close()
	behindAt := next(t, behind).Version
	for i := 0; r.logFloor <= behindAt; i++ {
		n := node(3)
		n.Hostname = fmt.Sprint(i)
		r.Upsert(n)
	}
	atFloor.version = r.logFloor
	m := next(t, atFloor)
	if m.GetFull() || m.BaseVersion != r.logFloor {
		t.Errorf("subscriber at the floor: got full=%v base=%d, want a delta from %d", m.GetFull(), m.BaseVersion, r.logFloor)
	}
	if m := next(t, behind); !m.GetFull() {
		t.Errorf("subscriber behind the floor: got full=%v, want a full map", m.GetFull())
	}
}

func TestPresence(t *testing.T) {
	type step struct {
		op          string // "connect" or "disconnect"
		wantOnline  bool
		wantChanged bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"single stream", []step{
			{"connect", true, true},
			{"disconnect", false, true},
		}},
		{"two streams", []step{
			{"connect", true, true},
			{"connect", true, false}, // same endpoints: peers see nothing new
			{"disconnect", true, false},
			{"disconnect", false, true},
		}},
		{"disconnect without connect", []step{
			{"disconnect", false, false},
			{"connect", true, true},
			{"disconnect", false, true},
			{"disconnect", false, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, 2)
			s := subscribe(t, r, 1)
			for i, st := range tt.steps {
				v := r.Version()
				switch st.op {
				case "connect":
					if err := r.Connected(nodeKey(2), nil, "", t0.Add(time.Duration(i)*time.Second)); err != nil {
						t.Fatalf("step %d: Connected: %v", i, err)
					}
				case "disconnect":
					r.Disconnected(nodeKey(2), t0.Add(time.Duration(i)*time.Second))
				}
				if _, online, ok := r.Node(nodeKey(2)); !ok || online != st.wantOnline {
					t.Errorf("step %d %s: got online=%v ok=%v, want online=%v ok=true", i, st.op, online, ok, st.wantOnline)
				}
				if changed := r.Version() != v; changed != st.wantChanged {
					t.Errorf("step %d %s: got version changed=%v, want %v", i, st.op, changed, st.wantChanged)
				}
				m := next(t, s)
				if !st.wantChanged {
					if m != nil {
						t.Errorf("step %d %s: got map %v, want nil", i, st.op, m)
					}
					continue
				}
				if len(m.GetPeers()) != 1 || m.Peers[0].Online != st.wantOnline {
					t.Errorf("step %d %s: got peers %v, want node-00002 with online=%v", i, st.op, m.GetPeers(), st.wantOnline)
				}
			}
		})
	}
}

func TestUnknownNode(t *testing.T) {
	r := newRegistry(t, 1)
	v := r.Version()
	if err := r.Connected(nodeKey(7), nil, "", t0); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("Connected: got %v, want ErrUnknownNode", err)
	}
	if err := r.SetEndpoints(nodeKey(7), nil); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("SetEndpoints: got %v, want ErrUnknownNode", err)
	}
	r.Disconnected(nodeKey(7), t0)
	if _, _, ok := r.Node(nodeKey(7)); ok {
		t.Errorf("Node: got ok=true for an unknown key, want false")
	}
	if got := r.Version(); got != v {
		t.Errorf("operations on an unknown key moved the version from %d to %d", v, got)
	}
	s := r.Subscribe(nodeKey(7), nil)
	defer s.Close()
	if _, err := s.decoded(); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("Next for an unknown key: got %v, want ErrUnknownNode", err)
	}
}

func TestSetEndpoints(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:51820")
	b := netip.MustParseAddrPort("198.51.100.7:51820")
	tests := []struct {
		name        string
		first, then []netip.AddrPort
		wantChange  bool
	}{
		{"same list", []netip.AddrPort{a, b}, []netip.AddrPort{a, b}, false},
		{"same list, new slice", []netip.AddrPort{a, b}, slices.Clone([]netip.AddrPort{a, b}), false},
		{"both empty", nil, nil, false},
		{"nil and empty", nil, []netip.AddrPort{}, false},
		{"reordered", []netip.AddrPort{a, b}, []netip.AddrPort{b, a}, true},
		{"added", []netip.AddrPort{a}, []netip.AddrPort{a, b}, true},
		{"cleared", []netip.AddrPort{a}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, 2)
			if err := r.SetEndpoints(nodeKey(2), tt.first); err != nil {
				t.Fatalf("SetEndpoints: %v", err)
			}
			s := subscribe(t, r, 1)
			v := r.Version()
			if err := r.SetEndpoints(nodeKey(2), tt.then); err != nil {
				t.Fatalf("SetEndpoints: %v", err)
			}
			if changed := r.Version() != v; changed != tt.wantChange {
				t.Errorf("got version changed=%v, want %v", changed, tt.wantChange)
			}
			if got := signalled(s); got != tt.wantChange {
				t.Errorf("got subscriber signalled=%v, want %v", got, tt.wantChange)
			}
		})
	}
}

func TestNodesSortedByName(t *testing.T) {
	r := New(prefixes)
	for _, i := range []int{5, 1, 3} {
		r.Upsert(node(i))
	}
	if got, want := namesInOrder(r.Nodes()), []string{"node-00001", "node-00003", "node-00005"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func namesInOrder(nodes []*api.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

// Wake-ups must never block the writer, however many subscribers sleep.
func TestIdleSubscribersDoNotBlock(t *testing.T) {
	r := newRegistry(t, 100)
	for i := 1; i <= 100; i++ {
		s := r.Subscribe(nodeKey(i), nil)
		defer s.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 1000; i++ {
			n := node(1 + i%100)
			n.Hostname = fmt.Sprint(i)
			r.Upsert(n)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("1000 changes with 100 idle subscribers did not complete in 10s")
	}
	if got, want := r.Version(), uint64(1100); got != want {
		t.Errorf("got version %d, want %d", got, want)
	}
}

func TestClosedSubscriberNotWoken(t *testing.T) {
	r := newRegistry(t, 2)
	s := subscribe(t, r, 1)
	s.Close()
	r.Upsert(node(2))
	if signalled(s) {
		t.Error("closed subscriber was signalled")
	}
}

// Concurrent writers and readers, for the race detector; each reader must
// see versions increase and end at the final version.
func TestConcurrentReaders(t *testing.T) {
	const nodes, writes = 20, 500
	r := newRegistry(t, nodes)
	errc := make(chan error, nodes)
	stop := make(chan struct{})
	for i := 1; i <= nodes; i++ {
		s := r.Subscribe(nodeKey(i), nil)
		go func() {
			defer s.Close()
			var last uint64
			for {
				select {
				case <-s.C():
				case <-stop:
					m, err := s.decoded()
					if err == nil && m != nil {
						last = m.Version
					}
					if err == nil && last != r.Version() {
						err = fmt.Errorf("subscriber ended at version %d, want %d", last, r.Version())
					}
					errc <- err
					return
				}
				m, err := s.decoded()
				if err != nil {
					errc <- err
					return
				}
				if m == nil {
					continue
				}
				if m.Version <= last {
					errc <- fmt.Errorf("got version %d after %d, want increasing", m.Version, last)
					return
				}
				if !m.Full && m.BaseVersion != last {
					errc <- fmt.Errorf("got delta from %d, want from %d", m.BaseVersion, last)
					return
				}
				last = m.Version
			}
		}()
	}
	for i := 0; i < writes; i++ {
		n := node(1 + i%nodes)
		n.Hostname = fmt.Sprint(i)
		r.Upsert(n)
	}
	close(stop)
	for i := 0; i < nodes; i++ {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// BenchmarkFanout measures one change reaching every subscriber: each of
// 10,000 subscribers reads a one-node delta, all sharing its bytes.
func BenchmarkFanout(b *testing.B) {
	const n = 10000
	r := newRegistry(b, n)
	subs := make([]*Sub, 0, n)
	for i := 1; i <= n; i++ {
		s := r.Subscribe(nodeKey(i), nil)
		if _, err := s.Next(); err != nil {
			b.Fatal(err)
		}
		subs = append(subs, s)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		nd := node(1 + i%n)
		nd.Hostname = fmt.Sprint(i)
		r.Upsert(nd)
		for _, s := range subs {
			<-s.C()
			u, err := s.Next()
			if err != nil || u == nil || u.Full || len(u.Shared) == 0 {
				b.Fatalf("got %+v, %v; want a delta", u, err)
			}
		}
	}
}

type apiMap = api.NetworkMap

// decode decodes an update as the agent sees it: Head then Shared.
func decode(u *Update) (*api.NetworkMap, error) {
	m := new(api.NetworkMap)
	if err := proto.Unmarshal(append(slices.Clip(u.Head), u.Shared...), m); err != nil {
		return nil, err
	}
	if m.Version != u.Version || m.BaseVersion != u.Base || m.Full != u.Full {
		return nil, fmt.Errorf("update %d->%d full=%v decodes as %d->%d full=%v", u.Base, u.Version, u.Full, m.BaseVersion, m.Version, m.Full)
	}
	return m, nil
}

// TestAgentVersion: the version a node reports is part of its map entry
// (so of the digest), a new one is a change, the same one is none, and it
// stays when the node goes offline.
func TestAgentVersion(t *testing.T) {
	r, _ := newFakeRegistry(t, 2)
	version := func() string {
		for _, n := range r.Nodes() {
			if n.GetName() == node(2).Name {
				return n.GetVersion()
			}
		}
		t.Fatal("node 2 not listed")
		return ""
	}
	d0 := r.Digest()
	if err := r.Connected(nodeKey(2), nil, "v1.0.0", t0); err != nil {
		t.Fatal(err)
	}
	if got := version(); got != "v1.0.0" {
		t.Errorf("connected: got version %q, want v1.0.0", got)
	}
	r.Disconnected(nodeKey(2), t0)
	if got := version(); got != "v1.0.0" {
		t.Errorf("offline: got version %q, want v1.0.0 (the last reported)", got)
	}
	d1 := r.Digest()
	if bytes.Equal(d0, d1) {
		t.Error("a node offline with a version has the digest of one that never reported one")
	}
	if err := r.Connected(nodeKey(2), nil, "v1.0.0", t0); err != nil {
		t.Fatal(err)
	}
	v := r.Version()
	if err := r.Connected(nodeKey(2), nil, "v1.0.0", t0); err != nil { // a second stream, same version
		t.Fatal(err)
	}
	if r.Version() != v {
		t.Errorf("the same version again moved the map from %d to %d", v, r.Version())
	}
	if err := r.Connected(nodeKey(2), nil, "v1.1.0", t0); err != nil {
		t.Fatal(err)
	}
	if r.Version() != v+1 || version() != "v1.1.0" {
		t.Errorf("upgrade: map moved %d versions, version %q; want 1 and v1.1.0", r.Version()-v, version())
	}
	p, _ := r.Presence()
	if got := p[nodeKey(2)].Version; got != "v1.1.0" {
		t.Errorf("presence: got version %q, want v1.1.0", got)
	}
}
