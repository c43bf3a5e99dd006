// Package netmap is the coordinator's live view of the network: every
// registered node with its presence and endpoints, a global version, and a
// log of which node changed at which version. Each agent stream is a
// subscriber that is woken (never blocked on) when anything changes and then
// reads one coalesced delta from its last version, so a change costs one
// wake-up per stream and a burst of changes costs one send per stream.
package netmap

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/coordinator/api"
	"github.com/edgewire/edgewire/coordinator/store"
)

// ErrUnknownNode is returned for a key that is not (or no longer) registered.
var ErrUnknownNode = errors.New("node is not registered")

// DefaultMaxLog bounds the change log. Subscribers further behind than the
// log reaches get a full map instead of a delta.
const DefaultMaxLog = 1 << 16

// change records what changed at a version: a node (svc empty) or a
// Service (svc = "namespace/name").
type change struct {
	version uint64
	key     store.NodeKey
	svc     string
	at      time.Time // when it happened, for fan-out latency
}

type entry struct {
	node      store.Node
	conns     int // open authenticated streams; online when > 0
	lastSeen  time.Time
	endpoints []netip.AddrPort
	podCIDRs  []netip.Prefix // from the Kubernetes Node object of the same name
	version   uint64

	pb *api.Node // built lazily, shared read-only by every stream; nil after a change
}

// Registry is safe for concurrent use.
type Registry struct {
	prefixes []string       // overlay prefixes, sent in full maps
	overlay  []netip.Prefix // the same, parsed
	maxLog   int
	now      func() time.Time

	stun   atomic.Pointer[[]*api.StunServer]  // sent in full maps; read-only once set
	relays atomic.Pointer[[]*api.RelayRegion] // sent in full maps; read-only once set

	mu       sync.Mutex // guards everything below
	nodes    map[store.NodeKey]*entry
	services map[string]*api.Service   // by namespace/name; values read-only
	podCIDRs map[string][]netip.Prefix // by node name, as Kubernetes reports them
	version  uint64
	log      []change // ascending by version
	logFloor uint64   // deltas can be computed only from versions >= logFloor
	subs     map[*Sub]struct{}
}

// New returns an empty registry for the given overlay prefixes.
func New(prefixes []netip.Prefix) *Registry {
	r := &Registry{
		maxLog:   DefaultMaxLog,
		now:      time.Now,
		nodes:    make(map[store.NodeKey]*entry),
		services: make(map[string]*api.Service),
		podCIDRs: make(map[string][]netip.Prefix),
		subs:     make(map[*Sub]struct{}),
	}
	r.overlay = prefixes
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
		r.nodes[n.Key] = &entry{node: n, lastSeen: n.LastSeen, version: r.version, podCIDRs: r.podCIDRs[n.Name]}
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
	e.podCIDRs = r.podCIDRs[n.Name]
	r.changedLocked(n.Key, e)
}

// SetService adds or replaces a Service. svc must not be modified later.
func (r *Registry) SetService(svc *api.Service) {
	k := svc.GetNamespace() + "/" + svc.GetName()
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.services[k]; old != nil && proto.Equal(old, svc) {
		return
	}
	r.services[k] = svc
	r.serviceChangedLocked(k)
}

// DeleteService removes the Service namespace/name.
func (r *Registry) DeleteService(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.services[key]; !ok {
		return
	}
	delete(r.services, key)
	r.serviceChangedLocked(key)
}

// Services returns the number of Services.
func (r *Registry) Services() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.services)
}

// SetPodCIDRs records the pod CIDRs Kubernetes assigned to the node named
// node; they become routes of that node (now, or when it registers). CIDRs
// that overlap the overlay or another node's routes are refused whole,
// with the node keeping what it had.
func (r *Registry) SetPodCIDRs(node string, cidrs []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Equal(r.podCIDRs[node], cidrs) {
		return nil
	}
	for _, c := range cidrs {
		if c != c.Masked() {
			return fmt.Errorf("node %s: pod CIDR %s has host bits set", node, c)
		}
		for _, o := range r.overlay {
			if o.Overlaps(c) {
				return fmt.Errorf("node %s: pod CIDR %s overlaps the overlay prefix %s", node, c, o)
			}
		}
		for other, ocs := range r.podCIDRs {
			for _, oc := range ocs {
				if other != node && oc.Overlaps(c) {
					return fmt.Errorf("node %s: pod CIDR %s overlaps node %s's pod CIDR %s", node, c, other, oc)
				}
			}
		}
		for _, e := range r.nodes {
			for _, rt := range e.node.Routes {
				if e.node.Name != node && rt.Overlaps(c) {
					return fmt.Errorf("node %s: pod CIDR %s overlaps route %s advertised by node %s", node, c, rt, e.node.Name)
				}
			}
		}
	}
	if len(cidrs) == 0 {
		delete(r.podCIDRs, node)
	} else {
		r.podCIDRs[node] = cidrs
	}
	for k, e := range r.nodes {
		if e.node.Name == node {
			e.podCIDRs = cidrs
			r.changedLocked(k, e)
		}
	}
	return nil
}

// CheckRoutes reports whether routes advertised by the node named node
// overlap another node's routes or pod CIDRs.
func (r *Registry) CheckRoutes(node string, routes []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range routes {
		for _, e := range r.nodes {
			if e.node.Name == node {
				continue
			}
			for _, rt := range append(slices.Clip(e.node.Routes), e.podCIDRs...) {
				if rt.Overlaps(c) {
					return fmt.Errorf("route %s overlaps %s of node %s", c, rt, e.node.Name)
				}
			}
		}
	}
	return nil
}

func (r *Registry) serviceChangedLocked(key string) {
	r.version++
	r.appendLocked(change{version: r.version, svc: key, at: r.now()})
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
	r.appendLocked(change{version: r.version, key: key, at: r.now()})
}

func (r *Registry) appendLocked(c change) {
	r.log = append(r.log, c)
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
	for _, p := range e.podCIDRs {
		if !slices.Contains(n.Routes, p) {
			pb.Routes = append(pb.Routes, p.String())
		}
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
	oldest  time.Time     // when the oldest change in the last delta happened
}

// Oldest returns when the oldest change in the last delta Next returned
// happened (zero after a full map): the fan-out latency starts there.
func (s *Sub) Oldest() time.Time { return s.oldest }

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
	s.oldest = time.Time{}
	if s.version == 0 || s.version < r.logFloor {
		m = r.fullLocked(s.self, self)
	} else {
		m, s.oldest = r.deltaLocked(s.self, self, s.version)
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
	m.Services = make([]*api.Service, 0, len(r.services))
	for _, svc := range r.services {
		m.Services = append(m.Services, svc)
	}
	return m
}

func (r *Registry) deltaLocked(key store.NodeKey, self *entry, since uint64) (*api.NetworkMap, time.Time) {
	m := &api.NetworkMap{Version: r.version, BaseVersion: since}
	i := sort.Search(len(r.log), func(i int) bool { return r.log[i].version > since })
	var oldest time.Time
	if i < len(r.log) {
		oldest = r.log[i].at
	}
	seen := make(map[store.NodeKey]struct{}, len(r.log)-i)
	seenSvc := map[string]struct{}{}
	for _, c := range r.log[i:] {
		if c.svc != "" {
			if _, dup := seenSvc[c.svc]; dup {
				continue
			}
			seenSvc[c.svc] = struct{}{}
			if svc := r.services[c.svc]; svc != nil {
				m.Services = append(m.Services, svc)
			} else {
				m.RemovedServices = append(m.RemovedServices, c.svc)
			}
			continue
		}
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
	return m, oldest
}
