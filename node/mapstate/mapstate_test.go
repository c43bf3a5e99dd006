package mapstate

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/key"
)

func nk(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func k32(b byte) key.Public { return key.Public(nk(b)) }

func pbNode(b byte, name string) *api.Node {
	return &api.Node{
		PublicKey: nk(b),
		Name:      name,
		Addresses: []string{"100.64.0." + string('0'+rune(b))},
		Routes:    []string{"10.244." + string('0'+rune(b)) + ".0/24"},
		Endpoints: []string{"192.0.2." + string('0'+rune(b)) + ":51820"},
		Online:    true,
		Version:   "v1.0." + string('0'+rune(b)),
	}
}

// full returns a full map at version 10 for self 1 with peers 2 and 3.
func full() *api.NetworkMap {
	return &api.NetworkMap{
		Version:         10,
		Full:            true,
		Self:            pbNode(1, "self"),
		Peers:           []*api.Node{pbNode(2, "two"), pbNode(3, "three")},
		OverlayPrefixes: []string{"100.64.0.0/10", "fd7a:115c:a1e0::/48"},
		StunServers:     []*api.StunServer{{Port: 3478, AltPort: 3479}, {Host: "relay.example.net", Port: 3478}},
	}
}

func mustApply(t *testing.T, s *State, m *api.NetworkMap) {
	t.Helper()
	if err := s.Apply(m); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func peerNames(s *State) []string {
	var out []string
	for _, p := range s.SortedPeers() {
		out = append(out, p.Name)
	}
	return out
}

func marshal(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b
}

func TestApplyFull(t *testing.T) {
	s := New()
	mustApply(t, s, full())
	if s.Version != 10 {
		t.Errorf("got version %d, want 10", s.Version)
	}
	wantSelf := Self{
		Key:       k32(1),
		Name:      "self",
		Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.1")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
	}
	if !reflect.DeepEqual(s.Self, wantSelf) {
		t.Errorf("got self %+v, want %+v", s.Self, wantSelf)
	}
	wantPrefixes := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48")}
	if !slices.Equal(s.Prefixes, wantPrefixes) {
		t.Errorf("got prefixes %v, want %v", s.Prefixes, wantPrefixes)
	}
	wantTwo := Peer{
		Key:       k32(2),
		Name:      "two",
		Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.2")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:51820")},
		Online:    true,
		Version:   "v1.0.2",
	}
	if got := s.Peers[k32(2)]; !reflect.DeepEqual(got, wantTwo) {
		t.Errorf("got peer %+v, want %+v", got, wantTwo)
	}
	if got, want := peerNames(s), []string{"three", "two"}; !slices.Equal(got, want) {
		t.Errorf("got peers %v, want %v", got, want)
	}

	// A second full map replaces everything, including peers it omits.
	m := full()
	m.Version = 3 // a full map may go backwards (coordinator restart)
	m.Peers = m.Peers[:1]
	m.OverlayPrefixes = m.OverlayPrefixes[:1]
	mustApply(t, s, m)
	if got, want := peerNames(s), []string{"two"}; !slices.Equal(got, want) {
		t.Errorf("after second full map: got peers %v, want %v", got, want)
	}
	if s.Version != 3 || len(s.Prefixes) != 1 {
		t.Errorf("after second full map: got version %d, %d prefixes; want 3, 1", s.Version, len(s.Prefixes))
	}
}

func TestApplyDeltas(t *testing.T) {
	changedTwo := pbNode(2, "two")
	changedTwo.Online = false
	changedTwo.Endpoints = []string{"[2001:db8::2]:41641"}
	newSelf := pbNode(1, "self")
	newSelf.Routes = []string{"10.245.0.0/16"}

	tests := []struct {
		name      string
		delta     *api.NetworkMap
		wantPeers []string
		check     func(t *testing.T, s *State)
	}{
		{
			name:      "empty delta",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10},
			wantPeers: []string{"three", "two"},
		},
		{
			name:      "new peer",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Peers: []*api.Node{pbNode(4, "four")}},
			wantPeers: []string{"four", "three", "two"},
		},
		{
			name:      "changed peer",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Peers: []*api.Node{changedTwo}},
			wantPeers: []string{"three", "two"},
			check: func(t *testing.T, s *State) {
				p := s.Peers[k32(2)]
				if p.Online {
					t.Errorf("got Online=true, want false")
				}
				if want := []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::2]:41641")}; !slices.Equal(p.Endpoints, want) {
					t.Errorf("got endpoints %v, want %v", p.Endpoints, want)
				}
			},
		},
		{
			name:      "removed peer",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Removed: [][]byte{nk(3)}},
			wantPeers: []string{"two"},
		},
		{
			name:      "removed unknown key",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Removed: [][]byte{nk(9)}},
			wantPeers: []string{"three", "two"},
		},
		{
			name:      "self changed",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Self: newSelf},
			wantPeers: []string{"three", "two"},
			check: func(t *testing.T, s *State) {
				if want := []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16")}; !slices.Equal(s.Self.Routes, want) {
					t.Errorf("got self routes %v, want %v", s.Self.Routes, want)
				}
			},
		},
		{
			name:      "self takes a peer's key",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Self: pbNode(2, "self")},
			wantPeers: []string{"three"},
			check: func(t *testing.T, s *State) {
				if s.Self.Key != k32(2) {
					t.Errorf("got self key %x, want %x", s.Self.Key, k32(2))
				}
			},
		},
		{
			name:      "peer equal to self ignored",
			delta:     &api.NetworkMap{Version: 11, BaseVersion: 10, Peers: []*api.Node{pbNode(1, "me-again"), pbNode(4, "four")}},
			wantPeers: []string{"four", "three", "two"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			mustApply(t, s, full())
			mustApply(t, s, tt.delta)
			if s.Version != tt.delta.Version {
				t.Errorf("got version %d, want %d", s.Version, tt.delta.Version)
			}
			if got := peerNames(s); !slices.Equal(got, tt.wantPeers) {
				t.Errorf("got peers %v, want %v", got, tt.wantPeers)
			}
			if _, ok := s.Peers[s.Self.Key]; ok {
				t.Errorf("self is among the peers")
			}
			if len(s.Prefixes) != 2 {
				t.Errorf("got %d prefixes, want 2 (deltas keep them)", len(s.Prefixes))
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

func TestApplyFullIgnoresSelfAsPeer(t *testing.T) {
	m := full()
	m.Peers = append(m.Peers, pbNode(1, "self"))
	s := New()
	mustApply(t, s, m)
	if got, want := peerNames(s), []string{"three", "two"}; !slices.Equal(got, want) {
		t.Errorf("got peers %v, want %v", got, want)
	}
}

// A delta applied to a state it does not fit (gap), or a malformed message,
// fails and leaves the state as it was.
func TestApplyRejects(t *testing.T) {
	peer := func(mod func(n *api.Node)) *api.NetworkMap {
		n := pbNode(4, "four")
		mod(n)
		return &api.NetworkMap{Version: 11, BaseVersion: 10, Peers: []*api.Node{pbNode(5, "five"), n}}
	}
	tests := []struct {
		name    string
		msg     *api.NetworkMap
		wantGap bool
		wantErr string
	}{
		{"delta from an older version", &api.NetworkMap{Version: 11, BaseVersion: 9, Peers: []*api.Node{pbNode(4, "four")}}, true, "have 10, delta from 9"},
		{"delta from a newer version", &api.NetworkMap{Version: 12, BaseVersion: 11, Removed: [][]byte{nk(2)}}, true, "have 10, delta from 11"},
		{"delta from zero", &api.NetworkMap{Version: 1}, true, "have 10, delta from 0"},
		{"short peer key", peer(func(n *api.Node) { n.PublicKey = nk(4)[:31] }), false, "public key of 31 bytes"},
		{"long peer key", peer(func(n *api.Node) { n.PublicKey = append(nk(4), 0) }), false, "public key of 33 bytes"},
		{"missing peer key", peer(func(n *api.Node) { n.PublicKey = nil }), false, "public key of 0 bytes"},
		{"bad address", peer(func(n *api.Node) { n.Addresses = []string{"100.64.0.4", "100.64.0.256"} }), false, `address "100.64.0.256"`},
		{"address with prefix length", peer(func(n *api.Node) { n.Addresses = []string{"100.64.0.4/32"} }), false, `address "100.64.0.4/32"`},
		{"unmasked route", peer(func(n *api.Node) { n.Routes = []string{"10.244.4.1/24"} }), false, `route "10.244.4.1/24"`},
		{"route without length", peer(func(n *api.Node) { n.Routes = []string{"10.244.4.0"} }), false, `route "10.244.4.0"`},
		{"endpoint without port", peer(func(n *api.Node) { n.Endpoints = []string{"192.0.2.4"} }), false, `endpoint "192.0.2.4"`},
		{"endpoint hostname", peer(func(n *api.Node) { n.Endpoints = []string{"example.com:51820"} }), false, `endpoint "example.com:51820"`},
		{"bad self", &api.NetworkMap{Version: 11, BaseVersion: 10, Self: &api.Node{PublicKey: nk(1)[:5]}}, false, "self: public key of 5 bytes"},
		{"bad removed key", &api.NetworkMap{Version: 11, BaseVersion: 10, Peers: []*api.Node{pbNode(4, "four")}, Removed: [][]byte{nk(2), {1, 2}}}, false, "removed key of 2 bytes"},
		{"full without self", &api.NetworkMap{Version: 20, Full: true, Peers: []*api.Node{pbNode(4, "four")}}, false, "full map without self"},
		{"full with bad prefix", &api.NetworkMap{Version: 20, Full: true, Self: pbNode(1, "self"), OverlayPrefixes: []string{"100.64.0.0"}}, false, `overlay prefix "100.64.0.0"`},
		{"full with bad STUN alt port", &api.NetworkMap{Version: 20, Full: true, Self: pbNode(1, "self"), StunServers: []*api.StunServer{{Port: 3478, AltPort: 65536}}}, false, "alt port 65536"},
		{"full with bad peer", &api.NetworkMap{Version: 20, Full: true, Self: pbNode(1, "self"), Peers: []*api.Node{{PublicKey: nk(4), Addresses: []string{"x"}}}}, false, `address "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			mustApply(t, s, full())
			before := marshal(t, s)
			beforePeers := len(s.Peers)
			err := s.Apply(tt.msg)
			if err == nil {
				t.Fatal("got nil error, want one")
			}
			if errors.Is(err, ErrGap) != tt.wantGap {
				t.Errorf("got errors.Is(err, ErrGap)=%v, want %v (err %v)", !tt.wantGap, tt.wantGap, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
			if after := marshal(t, s); !bytes.Equal(after, before) {
				t.Errorf("state changed by a rejected message")
			}
			if len(s.Peers) != beforePeers || s.Version != 10 {
				t.Errorf("got %d peers at version %d, want %d at 10", len(s.Peers), s.Version, beforePeers)
			}
		})
	}
}

func TestSaveLoad(t *testing.T) {
	tests := []struct {
		name string
		msgs []*api.NetworkMap
	}{
		{"empty state", nil},
		{"full map", []*api.NetworkMap{full()}},
		{"full map and deltas", []*api.NetworkMap{
			full(),
			{Version: 11, BaseVersion: 10, Peers: []*api.Node{pbNode(4, "four")}, Removed: [][]byte{nk(2)}},
			{Version: 15, BaseVersion: 11, Peers: []*api.Node{{PublicKey: nk(5), Name: "bare"}}},
		}},
		{"with a digest, said current", []*api.NetworkMap{
			withDigest(full(), 7),
			{Version: 3, Current: true, Digest: digest(7)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			for _, m := range tt.msgs {
				mustApply(t, s, m)
			}
			path := filepath.Join(t.TempDir(), "netmap.pb")
			if err := s.Save(path); err != nil {
				t.Fatalf("Save: %v", err)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got.ServicesGen = s.ServicesGen // a change counter, not content
			if !reflect.DeepEqual(got, s) {
				t.Errorf("got %+v, want %+v", got, s)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("got mode %o, want 600", perm)
			}
		})
	}
}

func digest(b byte) []byte { return bytes.Repeat([]byte{b}, 16) }

func withDigest(m *api.NetworkMap, b byte) *api.NetworkMap {
	m.Digest = digest(b)
	return m
}

// The state keeps the digest of the last message applied; a message
// saying the map is current moves only the version, and only if the
// digests match (an agent whose map is not the one the coordinator
// vouches for asks for a full map).
func TestCurrent(t *testing.T) {
	s := New()
	if err := s.Apply(&api.NetworkMap{Version: 1, Current: true, Digest: digest(1)}); !errors.Is(err, ErrNotCurrent) {
		t.Fatalf("current with no map held: %v, want ErrNotCurrent", err)
	}
	mustApply(t, s, withDigest(full(), 1))
	before := marshal(t, s)
	for _, d := range [][]byte{digest(2), nil, digest(1)[:8]} {
		if err := s.Apply(&api.NetworkMap{Version: 99, Current: true, Digest: d}); !errors.Is(err, ErrNotCurrent) {
			t.Errorf("current with digest %x: %v, want ErrNotCurrent", d, err)
		}
	}
	if !bytes.Equal(marshal(t, s), before) {
		t.Fatal("a refused current message changed the state")
	}
	mustApply(t, s, &api.NetworkMap{Version: 4, Current: true, Digest: digest(1)})
	if s.Version != 4 || !reflect.DeepEqual(peerNames(s), []string{"three", "two"}) {
		t.Errorf("after current: version %d peers %v, want 4 and the map held", s.Version, peerNames(s))
	}
	// Deltas on the new coordinator's versions; one without a digest
	// leaves none (the next reconnect gets a full map).
	mustApply(t, s, withDigest(&api.NetworkMap{Version: 5, BaseVersion: 4, Peers: []*api.Node{pbNode(4, "four")}}, 2))
	if !bytes.Equal(s.Digest, digest(2)) {
		t.Errorf("digest %x after a delta, want the delta's", s.Digest)
	}
	mustApply(t, s, &api.NetworkMap{Version: 6, BaseVersion: 5})
	if s.Digest != nil {
		t.Errorf("digest %x after a delta without one, want none", s.Digest)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	delta, err := proto.Marshal(&api.NetworkMap{Version: 3, BaseVersion: 2})
	if err != nil {
		t.Fatal(err)
	}
	noSelf, err := proto.Marshal(&api.NetworkMap{Version: 3, Full: true})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr string
		wantIs  error
	}{
		{"missing file", filepath.Join(dir, "nope"), "nope", os.ErrNotExist},
		{"garbage", write("garbage", []byte("this is not a network map\xff\xff")), "decode " + filepath.Join(dir, "garbage"), nil},
		{"truncated", write("truncated", marshal(t, mustState(t))[:20]), "decode ", nil},
		{"a delta", write("delta", delta), "load " + filepath.Join(dir, "delta"), ErrGap},
		{"full map without self", write("noself", noSelf), "full map without self", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.path)
			if err == nil {
				t.Fatalf("got state %+v, want an error", s)
			}
			if s != nil {
				t.Errorf("got non-nil state with error %v", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("got error %v, want errors.Is %v", err, tt.wantIs)
			}
		})
	}
}

func mustState(t *testing.T) *State {
	s := New()
	mustApply(t, s, full())
	return s
}

// FuzzApply feeds arbitrary bytes, decoded as a NetworkMap, to a state
// holding one peer. Apply must not panic, and a failed Apply must leave
// the state exactly as it was.
func FuzzApply(f *testing.F) {
	seed := func(m *api.NetworkMap) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(full())
	seed(&api.NetworkMap{Version: 2, BaseVersion: 1, Peers: []*api.Node{pbNode(4, "four")}, Removed: [][]byte{nk(2)}})
	seed(&api.NetworkMap{Version: 2, BaseVersion: 1, Self: pbNode(2, "two")})
	seed(&api.NetworkMap{Version: 2, BaseVersion: 1, Peers: []*api.Node{{PublicKey: nk(3), Routes: []string{"10.0.0.1/8"}}}})
	seed(&api.NetworkMap{Version: 2, BaseVersion: 5})
	f.Add([]byte{})
	f.Add([]byte("\x0a\x05hello"))

	f.Fuzz(func(t *testing.T, b []byte) {
		var m api.NetworkMap
		if err := proto.Unmarshal(b, &m); err != nil {
			return
		}
		s := New()
		mustApply(t, s, &api.NetworkMap{
			Version: 1, Full: true, Self: pbNode(1, "self"), Peers: []*api.Node{pbNode(2, "two")},
			OverlayPrefixes: []string{"100.64.0.0/10"},
		})
		before := marshal(t, s)
		if err := s.Apply(&m); err != nil {
			if after := marshal(t, s); !bytes.Equal(after, before) {
				t.Fatalf("Apply failed (%v) but changed the state", err)
			}
			return
		}
		// A state Apply accepted must survive a save and load.
		after := marshal(t, s)
		var saved api.NetworkMap
		if err := proto.Unmarshal(after, &saved); err != nil {
			t.Fatalf("Unmarshal of Marshal output: %v", err)
		}
		s2 := New()
		if err := s2.Apply(&saved); err != nil {
			t.Fatalf("re-applying the marshalled state: %v", err)
		}
		if again := marshal(t, s2); !bytes.Equal(again, after) {
			t.Fatalf("state changed across Marshal and Apply")
		}
		if _, ok := s.Peers[s.Self.Key]; ok {
			t.Fatalf("self %x is among the peers", s.Self.Key)
		}
	})
}

// digestOf is the coordinator's digest of a full map: every node (self
// included among the peers) and Service, and the rest.
func digestOf(m *api.NetworkMap) []byte {
	var s api.MapSums
	for _, n := range m.GetPeers() {
		s.Buckets[api.NodeBucket(n.GetPublicKey())].Xor(api.HashNode(n))
	}
	for _, svc := range m.GetServices() {
		s.Rest.Xor(api.HashService(svc))
	}
	s.Rest.Xor(api.HashRest(m.GetOverlayPrefixes(), m.GetStunServers(), m.GetRelays(), m.GetRelayRevocations()))
	d := s.Digest()
	return d[:]
}

// The agent keeps its own sums when they come to the coordinator's
// digest, and only then; a patch replaces the buckets it names.
func TestSumsAndPatch(t *testing.T) {
	m := full()
	m.Peers = append(m.Peers, pbNode(1, "self"))
	m.Digest = digestOf(m)
	s := New()
	mustApply(t, s, m)
	if s.Buckets() == nil {
		t.Fatal("no sums after a full map with the right digest")
	}

	// The coordinator's map: node 3 moved, node 4 joined in 3's bucket.
	moved := pbNode(3, "three")
	moved.Endpoints = []string{"198.51.100.3:1"}
	four := pbNode(4, "four")
	four.PublicKey = append([]byte{3}, nk(4)[1:]...)
	coord := full()
	coord.Peers = []*api.Node{pbNode(1, "self"), pbNode(2, "two"), moved, four}
	patch := &api.NetworkMap{Version: 7, PatchedBuckets: []byte{3}, Self: pbNode(1, "self"), Peers: []*api.Node{moved, four}, Digest: digestOf(coord)}
	mustApply(t, s, patch)
	if s.Version != 7 || !bytes.Equal(s.Digest, patch.Digest) || s.Buckets() == nil {
		t.Fatalf("after the patch: version %d digest %x sums %v", s.Version, s.Digest, s.Buckets() != nil)
	}
	if got := peerNames(s); !reflect.DeepEqual(got, []string{"four", "three", "two"}) || s.Peers[k32(3)].Endpoints[0].String() != "198.51.100.3:1" {
		t.Errorf("peers %v (three at %v), want four, three moved, two", got, s.Peers[k32(3)].Endpoints)
	}

	// A message whose digest our sums do not reach: sums dropped, not sent.
	mustApply(t, s, &api.NetworkMap{Version: 8, BaseVersion: 7, Peers: []*api.Node{pbNode(5, "five")}, Digest: digest(9)})
	if s.Buckets() != nil {
		t.Error("sums kept although they do not come to the coordinator's digest")
	}
	if err := s.Apply(&api.NetworkMap{Version: 9, PatchedBuckets: []byte{5}, Self: pbNode(1, "self")}); !errors.Is(err, ErrNotCurrent) {
		t.Errorf("a patch without sums: %v, want ErrNotCurrent", err)
	}
}
