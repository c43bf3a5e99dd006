// Package mapstate is the agent's copy of the network map: it applies full
// maps and deltas from the coordinator, detects version gaps, and persists
// the result so the agent can keep the data plane up across restarts while
// the coordinator is unreachable.
package mapstate

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/services"
)

// ErrGap means a delta does not follow the version held: ask for a full map.
var ErrGap = errors.New("network map version gap")

// Peer is a peer as the agent uses it, parsed and validated.
type Peer struct {
	Key       key.Public
	Name      string
	KubeNode  string // the Kubernetes Node it is verified to be, "" if none
	Addresses []netip.Addr
	Routes    []netip.Prefix
	Endpoints []netip.AddrPort
	Online    bool
	LastSeen  int64  // unix ms
	Version   string // agent version the node reported, "" if none
}

// Self is the local node as the coordinator sees it.
type Self struct {
	Key       key.Public
	Name      string
	KubeNode  string // the Kubernetes Node it is verified to be, "" if none
	Addresses []netip.Addr
	Routes    []netip.Prefix
}

// State is the agent's network map. It is not safe for concurrent use.
type State struct {
	Version  uint64
	Self     Self
	Prefixes []netip.Prefix
	STUN     []STUNServer
	Relays   []RelayRegion
	Peers    map[key.Public]Peer
	// Services by "namespace/name", converted from the map and valid.
	Services map[string]*services.Service
	// Refused are Services of the map that did not validate, by
	// "namespace/name": one bad Service is left out, the others work.
	Refused map[string]error
	// ServicesGen changes whenever Services does.
	ServicesGen uint64
	// RelayRevocations is the coordinator's signed list of nodes relays
	// must refuse, handed to the home relay as is (relays verify it).
	RelayRevocations []byte
	// Digest is the coordinator's digest of this map (NetworkMap.digest),
	// empty if the last message applied had none. The agent sends it when
	// it reconnects: a coordinator whose map has the same digest answers
	// that the map is current instead of sending a full one.
	Digest []byte
	// sums: the agent's own sums of the map (sums.go); nil when not known
	// (a state loaded from disk, whose entries were rebuilt).
	sums *sums
}

// Buckets returns the agent's own sums of the map as Hello.map_buckets
// carries them, or nil if it has none.
func (s *State) Buckets() []byte {
	if s.sums == nil {
		return nil
	}
	return s.sums.s.Wire()
}

// ErrNotCurrent means a map message said the held map is current, but
// the digests differ: ask for a full map.
var ErrNotCurrent = errors.New("network map said to be current is not the one held")

// RelayRegion is a relay from the relay map. An empty Host means the
// coordinator's host.
type RelayRegion struct {
	ID       uint32
	Name     string
	Host     string
	Port     uint16
	Key      key.Public
	STUNPort uint16
}

// STUNServer is a STUN server to gather server-reflexive candidates
// against. An empty Host means the coordinator's host. AltPort (0: none)
// is the server's second port, for netcheck's mapping test only.
type STUNServer struct {
	Host    string
	Port    uint16
	AltPort uint16
}

// New returns an empty state.
func New() *State {
	return &State{Peers: map[key.Public]Peer{}, Services: map[string]*services.Service{}, Refused: map[string]error{}}
}

// Apply applies a map message. A full map replaces everything; a delta must
// start at the held version (ErrGap otherwise). Malformed entries make the
// whole message fail and leave the state unchanged.
func (s *State) Apply(m *api.NetworkMap) error {
	if m.GetCurrent() {
		if len(s.Digest) == 0 || !bytes.Equal(m.GetDigest(), s.Digest) {
			return fmt.Errorf("%w (version %d)", ErrNotCurrent, m.GetVersion())
		}
		s.Version = m.GetVersion()
		return nil
	}
	patch := !m.GetFull() && len(m.GetPatchedBuckets()) > 0
	if patch && s.sums == nil {
		return fmt.Errorf("%w: a patch for a map whose sums are not known", ErrNotCurrent)
	}
	if !m.GetFull() && !patch && m.GetBaseVersion() != s.Version {
		return fmt.Errorf("%w: have %d, delta from %d", ErrGap, s.Version, m.GetBaseVersion())
	}
	next := &State{Version: m.GetVersion(), Self: s.Self, Prefixes: s.Prefixes, STUN: s.STUN, Relays: s.Relays, Peers: s.Peers,
		Services: s.Services, Refused: s.Refused, ServicesGen: s.ServicesGen, RelayRevocations: s.RelayRevocations,
		Digest: m.GetDigest()}
	if m.GetFull() || len(m.GetRelayRevocations()) > 0 {
		next.RelayRevocations = m.GetRelayRevocations()
	}
	switch {
	case m.GetFull():
		next.sums = newSums()
		next.sums.prefixes, next.sums.stun, next.sums.relays = m.GetOverlayPrefixes(), m.GetStunServers(), m.GetRelays()
	case s.sums != nil:
		next.sums = s.sums.clone()
	}
	if next.sums != nil && (m.GetFull() || len(m.GetRelayRevocations()) > 0) {
		next.sums.revs = m.GetRelayRevocations()
	}
	if m.GetFull() {
		next.Peers = make(map[key.Public]Peer, len(m.GetPeers()))
		next.Prefixes = nil
		for _, p := range m.GetOverlayPrefixes() {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return fmt.Errorf("overlay prefix %q: %w", p, err)
			}
			next.Prefixes = append(next.Prefixes, pfx)
		}
		if m.GetSelf() == nil {
			return errors.New("full map without self")
		}
		next.STUN = nil
		for _, st := range m.GetStunServers() {
			if st.GetPort() == 0 || st.GetPort() > 65535 || st.GetAltPort() > 65535 || strings.ContainsAny(st.GetHost(), "/ ") {
				return fmt.Errorf("bad STUN server %q port %d alt port %d", st.GetHost(), st.GetPort(), st.GetAltPort())
			}
			next.STUN = append(next.STUN, STUNServer{Host: st.GetHost(), Port: uint16(st.GetPort()), AltPort: uint16(st.GetAltPort())})
		}
		next.Relays = nil
		for _, r := range m.GetRelays() {
			if r.GetId() == 0 || r.GetPort() == 0 || r.GetPort() > 65535 || r.GetStunPort() > 65535 ||
				len(r.GetKey()) != 32 || strings.ContainsAny(r.GetHost(), "/ ") {
				return fmt.Errorf("bad relay region %d %q", r.GetId(), r.GetName())
			}
			next.Relays = append(next.Relays, RelayRegion{ID: r.GetId(), Name: r.GetName(), Host: r.GetHost(),
				Port: uint16(r.GetPort()), Key: key.Public(r.GetKey()), STUNPort: uint16(r.GetStunPort())})
		}
	} else {
		next.Peers = make(map[key.Public]Peer, len(s.Peers))
		for k, v := range s.Peers {
			next.Peers[k] = v
		}
	}
	if patch {
		// The buckets patched are replaced whole.
		var in [api.MapBuckets]bool
		for _, b := range m.GetPatchedBuckets() {
			in[b] = true
			next.sums.dropBucket(int(b))
		}
		for k := range next.Peers {
			if in[api.NodeBucket(k[:])] {
				delete(next.Peers, k)
			}
		}
	}
	if m.GetSelf() != nil {
		p, err := parseNode(m.GetSelf())
		if err != nil {
			return fmt.Errorf("self: %w", err)
		}
		next.Self = Self{Key: p.Key, Name: p.Name, KubeNode: p.KubeNode, Addresses: p.Addresses, Routes: p.Routes}
		// Self is never a peer, even if it was listed as one before.
		delete(next.Peers, next.Self.Key)
	}
	for _, n := range m.GetPeers() {
		p, err := parseNode(n)
		if err != nil {
			return fmt.Errorf("peer %q: %w", n.GetName(), err)
		}
		if next.sums != nil {
			next.sums.setNode(n)
		}
		if p.Key == next.Self.Key {
			continue
		}
		next.Peers[p.Key] = p
	}
	if m.GetFull() || len(m.GetServices()) > 0 || len(m.GetRemovedServices()) > 0 {
		svcs := make(map[string]*services.Service, len(s.Services))
		refused := map[string]error{}
		if !m.GetFull() {
			maps.Copy(svcs, s.Services)
			maps.Copy(refused, s.Refused)
		}
		if next.sums != nil && m.GetFull() {
			next.sums.svcs, next.sums.svcSum = map[string]api.MapHash{}, api.MapHash{}
		}
		for _, p := range m.GetServices() {
			k := p.GetNamespace() + "/" + p.GetName()
			if next.sums != nil {
				next.sums.setService(k, p)
			}
			svc, err := services.FromProto(p)
			if err != nil {
				delete(svcs, k)
				refused[k] = err
				continue
			}
			delete(refused, k)
			svcs[k] = svc
		}
		for _, k := range m.GetRemovedServices() {
			if next.sums != nil {
				next.sums.dropService(k)
			}
			delete(svcs, k)
			delete(refused, k)
		}
		next.Services, next.Refused = svcs, refused
		next.ServicesGen++
	}
	for _, k := range m.GetRemoved() {
		if len(k) != 32 {
			return fmt.Errorf("removed key of %d bytes", len(k))
		}
		delete(next.Peers, key.Public(k))
		if next.sums != nil {
			next.sums.dropNode(key.Public(k))
		}
	}
	if next.sums != nil {
		next.sums.seal()
		// Our own account must come to the coordinator's digest; if it
		// does not (entries that do not hash back as sent, a state
		// rebuilt from disk), it is not sent at all.
		if d := next.sums.s.Digest(); len(next.Digest) == 0 || !bytes.Equal(d[:], next.Digest) {
			next.sums = nil
		}
	}
	*s = *next
	return nil
}

func parseNode(n *api.Node) (Peer, error) {
	var p Peer
	if len(n.GetPublicKey()) != 32 {
		return p, fmt.Errorf("public key of %d bytes", len(n.GetPublicKey()))
	}
	p.Key = key.Public(n.GetPublicKey())
	p.Name = n.GetName()
	p.KubeNode = n.GetKubernetesNode()
	p.Online = n.GetOnline()
	p.LastSeen = n.GetLastSeenUnixMs()
	p.Version = n.GetVersion()
	for _, a := range n.GetAddresses() {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return p, fmt.Errorf("address %q: %w", a, err)
		}
		p.Addresses = append(p.Addresses, addr)
	}
	for _, r := range n.GetRoutes() {
		pfx, err := netip.ParsePrefix(r)
		if err != nil || pfx != pfx.Masked() {
			return p, fmt.Errorf("route %q: not a masked prefix", r)
		}
		p.Routes = append(p.Routes, pfx)
	}
	for _, e := range n.GetEndpoints() {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			return p, fmt.Errorf("endpoint %q: %w", e, err)
		}
		p.Endpoints = append(p.Endpoints, ap)
	}
	return p, nil
}

// SortedPeers returns the peers ordered by name, then key.
func (s *State) SortedPeers() []Peer {
	out := make([]Peer, 0, len(s.Peers))
	for _, p := range s.Peers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return string(out[i].Key[:]) < string(out[j].Key[:])
	})
	return out
}

// Marshal encodes the state as a full NetworkMap.
func (s *State) Marshal() ([]byte, error) {
	m := &api.NetworkMap{Version: s.Version, Full: true, Self: &api.Node{PublicKey: s.Self.Key[:], Name: s.Self.Name, KubernetesNode: s.Self.KubeNode},
		RelayRevocations: s.RelayRevocations, Digest: s.Digest}
	for _, a := range s.Self.Addresses {
		m.Self.Addresses = append(m.Self.Addresses, a.String())
	}
	for _, r := range s.Self.Routes {
		m.Self.Routes = append(m.Self.Routes, r.String())
	}
	for _, p := range s.Prefixes {
		m.OverlayPrefixes = append(m.OverlayPrefixes, p.String())
	}
	for _, st := range s.STUN {
		m.StunServers = append(m.StunServers, &api.StunServer{Host: st.Host, Port: uint32(st.Port), AltPort: uint32(st.AltPort)})
	}
	keys := make([]string, 0, len(s.Services))
	for k := range s.Services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.Services = append(m.Services, services.ToProto(s.Services[k]))
	}
	for _, r := range s.Relays {
		m.Relays = append(m.Relays, &api.RelayRegion{Id: r.ID, Name: r.Name, Host: r.Host, Port: uint32(r.Port),
			Key: r.Key[:], StunPort: uint32(r.STUNPort)})
	}
	for _, p := range s.SortedPeers() {
		n := &api.Node{PublicKey: p.Key[:], Name: p.Name, KubernetesNode: p.KubeNode, Online: p.Online, LastSeenUnixMs: p.LastSeen, Version: p.Version}
		for _, a := range p.Addresses {
			n.Addresses = append(n.Addresses, a.String())
		}
		for _, r := range p.Routes {
			n.Routes = append(n.Routes, r.String())
		}
		for _, e := range p.Endpoints {
			n.Endpoints = append(n.Endpoints, e.String())
		}
		m.Peers = append(m.Peers, n)
	}
	return proto.Marshal(m)
}

// Save writes the state to path atomically.
func (s *State) Save(path string) error {
	b, err := s.Marshal()
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// Load reads a state saved by Save. A missing file gives os.ErrNotExist.
func Load(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m api.NetworkMap
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	s := New()
	if err := s.Apply(&m); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return s, nil
}
