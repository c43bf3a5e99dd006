// Package netmap is the coordinator's live view of the network: every
// registered node with its presence and endpoints, a global version, and a
// log of which node changed at which version. Each agent stream is a
// subscriber that is woken (never blocked on) when anything changes and then
// reads one coalesced delta from its last version, so a change costs one
// wake-up per stream and a burst of changes costs one send per stream.
package netmap

import (
	"errors"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/coordinator/api"
	"github.com/edgewire/edgewire/coordinator/store"
)

// ErrUnknownNode is returned for a key that is not (or no longer) registered.
var ErrUnknownNode = errors.New("node is not registered")

// DefaultMaxLog bounds the change log. Subscribers further behind than the
// log reaches get a full map instead of a delta.
const DefaultMaxLog = 1 << 16

type change struct {
	version uint64
	key     store.NodeKey
}

type entry struct {
	node      store.Node
	conns     int // open authenticated streams; online when > 0
	lastSeen  time.Time
	endpoints []netip.AddrPort
	version   uint64

	pb *api.Node // built lazily, shared read-only by every stream; nil after a change
}

// Registry is safe for concurrent use.
type Registry struct {
	prefixes []string // overlay prefixes, sent in full maps
	maxLog   int

	stun   atomic.Pointer[[]*api.StunServer]  // sent in full maps; read-only once set
	relays atomic.Pointer[[]*api.RelayRegion] // sent in full maps; read-only once set

	mu       sync.Mutex // guards everything below
	nodes    map[store.NodeKey]*entry
	version  uint64
	log      []change // ascending by version
	logFloor uint64   // deltas can be computed only from versions >= logFloor
	subs     map[*Sub]struct{}
}

// New returns an empty registry for the given overlay prefixes.
func New(prefixes []netip.Prefix) *Registry {
	r := &Registry{
		maxLog: DefaultMaxLog,
		nodes:  make(map[store.NodeKey]*entry),
		subs:   make(map[*Sub]struct{}),
	}
	for _, p := range prefixes {
		r.prefixes = append(r.prefixes, p.String())
	}
	return r
}

// SetSTUN sets the STUN servers announced in full maps. The slice and its
// elements must not be modified afterwards.
func (r *Registry) SetSTUN(servers []*api.StunServer) { r.stun.Store(&servers) }

// SetRelays sets the relay map announced in full maps. The slice and its
// elements must not be modified afterwards.
func (r *Registry) SetRelays(regions []*api.RelayRegion) { r.relays.Store(&regions) }

// Version returns the current version.
func (r *Registry) Version() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.version
}

// Load fills the registry from stored nodes without logging changes; use
// it once before any subscriber exists.
func (r *Registry) Load(nodes []store.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range nodes {
		r.version++
		r.nodes[n.Key] = &entry{node: n, lastSeen: n.LastSeen, version: r.version}
	}
	r.logFloor = r.version
}

// Upsert adds a node or replaces its registration data, keeping presence.
func (r *Registry) Upsert(n store.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[n.Key]
	if e == nil {
		e = &entry{lastSeen: n.LastSeen}
		r.nodes[n.Key] = e
	}
	e.node = n
	r.changedLocked(n.Key, e)
}

// Delete removes a node. Its own subscribers see ErrUnknownNode.
func (r *Registry) Delete(key store.NodeKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.nodes[key]; !ok {
		return
	}
	delete(r.nodes, key)
	r.changedLocked(key, nil)
}

// Connected marks one more stream of key as online and records the
// endpoints it reported. It fails for unknown keys.
func (r *Registry) Connected(key store.NodeKey, eps []netip.AddrPort, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[key]
	if e == nil {
		return ErrUnknownNode
	}
	e.conns++
	e.lastSeen = now
	e.endpoints = eps
	r.changedLocked(key, e)
	return nil
}

// Disconnected undoes Connected.
func (r *Registry) Disconnected(key store.NodeKey, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[key]
	if e == nil || e.conns == 0 {
		return
	}
	e.conns--
	e.lastSeen = now
	if e.conns == 0 {
		r.changedLocked(key, e)
	}
}

// SetEndpoints records the endpoints a node reported; no-op if unchanged.
func (r *Registry) SetEndpoints(key store.NodeKey, eps []netip.AddrPort) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[key]
	if e == nil {
		return ErrUnknownNode
	}
	if slices.Equal(e.endpoints, eps) {
		return nil
	}
	e.endpoints = eps
	r.changedLocked(key, e)
	return nil
}

// Node returns a node's registration and whether it is online.
func (r *Registry) Node(key store.NodeKey) (store.Node, bool, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[key]
	if e == nil {
		return store.Node{}, false, false
	}
	return e.node, e.conns > 0, true
}

// Nodes returns every node as it would appear in a network map, sorted by name.
func (r *Registry) Nodes() []*api.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*api.Node, 0, len(r.nodes))
	for _, e := range r.nodes {
		out = append(out, e.protoLocked())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (r *Registry) changedLocked(key store.NodeKey, e *entry) {
	r.version++
	if e != nil {
		e.version = r.version
		e.pb = nil
	}
	r.log = append(r.log, change{version: r.version, key: key})
	if len(r.log) > r.maxLog {
		drop := len(r.log) / 2
		r.logFloor = r.log[drop-1].version
		r.log = append(r.log[:0:0], r.log[drop:]...)
	}
	for s := range r.subs {
		s.wake()
	}
}

func (e *entry) protoLocked() *api.Node {
	if e.pb != nil {
		return e.pb
	}
	n := &e.node
	pb := &api.Node{
		PublicKey: n.Key[:],
		Name:      n.Name,
		Hostname:  n.Hostname,
		Online:    e.conns > 0,
		Tags:      n.Tags,
	}
	if !e.lastSeen.IsZero() {
		pb.LastSeenUnixMs = e.lastSeen.UnixMilli()
	}
	for _, a := range n.Addresses {
		pb.Addresses = append(pb.Addresses, a.String())
	}
	for _, p := range n.Routes {
		pb.Routes = append(pb.Routes, p.String())
	}
	for _, ep := range e.endpoints {
		pb.Endpoints = append(pb.Endpoints, ep.String())
	}
	e.pb = pb
	return pb
}

// Sub is one subscriber (one agent stream). Its methods are not safe for
// concurrent use: one goroutine owns a Sub.
type Sub struct {
	r       *Registry
	self    store.NodeKey
	c       chan struct{} // capacity 1: pending wake-ups coalesce
	version uint64        // version of the last map handed out; 0 = none yet
}

// Subscribe registers a subscriber for node self. Call Close when done.
func (r *Registry) Subscribe(self store.NodeKey) *Sub {
	s := &Sub{r: r, self: self, c: make(chan struct{}, 1)}
	r.mu.Lock()
	r.subs[s] = struct{}{}
	r.mu.Unlock()
	s.wake() // the first Next returns the full map
	return s
}

func (s *Sub) wake() {
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// C is signalled when the network may have changed since the last Next.
func (s *Sub) C() <-chan struct{} { return s.c }

// Close unregisters the subscriber.
func (s *Sub) Close() {
	s.r.mu.Lock()
	delete(s.r.subs, s)
	s.r.mu.Unlock()
}

// Resync makes the next Next return a full map.
func (s *Sub) Resync() {
	s.version = 0
	s.wake()
}

// Next returns what changed since the previous call: a full map on the
// first call, after Resync, or when the log no longer reaches back; a delta
// otherwise; nil when nothing changed for this subscriber. It returns
// ErrUnknownNode once the subscriber's own node is deleted.
func (s *Sub) Next() (*api.NetworkMap, error) {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	self := r.nodes[s.self]
	if self == nil {
		return nil, ErrUnknownNode
	}
	if s.version == r.version {
		return nil, nil
	}
	var m *api.NetworkMap
	if s.version == 0 || s.version < r.logFloor {
		m = r.fullLocked(s.self, self)
	} else {
		m = r.deltaLocked(s.self, self, s.version)
	}
	s.version = r.version
	return m, nil
}

func (r *Registry) fullLocked(key store.NodeKey, self *entry) *api.NetworkMap {
	m := &api.NetworkMap{
		Version:         r.version,
		Full:            true,
		Self:            self.protoLocked(),
		Peers:           make([]*api.Node, 0, len(r.nodes)),
		OverlayPrefixes: r.prefixes,
	}
	if p := r.stun.Load(); p != nil {
		m.StunServers = *p
	}
	if p := r.relays.Load(); p != nil {
		m.Relays = *p
	}
	for k, e := range r.nodes {
		if k != key {
			m.Peers = append(m.Peers, e.protoLocked())
		}
	}
	return m
}

func (r *Registry) deltaLocked(key store.NodeKey, self *entry, since uint64) *api.NetworkMap {
	m := &api.NetworkMap{Version: r.version, BaseVersion: since}
	i := sort.Search(len(r.log), func(i int) bool { return r.log[i].version > since })
	seen := make(map[store.NodeKey]struct{}, len(r.log)-i)
	for _, c := range r.log[i:] {
		if _, dup := seen[c.key]; dup {
			continue
		}
		seen[c.key] = struct{}{}
		if c.key == key {
			m.Self = self.protoLocked()
			continue
		}
		if e := r.nodes[c.key]; e != nil {
			m.Peers = append(m.Peers, e.protoLocked())
		} else {
			k := c.key
			m.Removed = append(m.Removed, k[:])
		}
	}
	return m
}
