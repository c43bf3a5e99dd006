// Package netmap is the coordinator's live view of the network: every
// registered node with its presence and endpoints, a global version, and a
// log of which node changed at which version.
//
// Changes are published at most once per interval in the long run (global,
// not per stream), with a small burst after a quiet spell, and every agent
// stream is a subscriber that is woken (never blocked on) by a publication
// and then reads one coalesced update from its last version to the
// published one. The map bytes are personalised only by the stream's own
// node, so the rest of each update is marshalled once per (base version,
// published version) and shared read-only by every stream at that base:
// with all streams in step, one publication costs one marshal and one
// wake-up per stream, however many streams there are.
package netmap

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/types/key"
	"github.com/edgewire/edgewire/types/services"
)

// ErrUnknownNode is returned for a key that is not (or no longer) registered.
var ErrUnknownNode = errors.New("node is not registered")

// DefaultMaxLog bounds the change log. Subscribers further behind than the
// log reaches get a full map instead of a delta.
const DefaultMaxLog = 1 << 16

// change records what changed at a version: a node (svc empty), a
// Service (svc = "namespace/name") or the relay revocations (rev).
type change struct {
	version uint64
	nk      key.Public
	svc     string
	rev     bool
	at      time.Time // when it happened, for fan-out latency
}

type entry struct {
	node  store.Node
	conns int // open authenticated streams; online when > 0
	// carried: online as the previous coordinator saved it (Carry), until
	// the node connects or the carry-over ends.
	carried   bool
	lastSeen  time.Time
	endpoints []netip.AddrPort
	// agent is the agent version the node reported when it last
	// connected (api.ValidVersion): presence, like endpoints, kept after
	// it disconnects.
	agent   string
	version uint64

	pb     *api.Node   // map entry, built lazily, shared read-only by every stream; nil after a change
	hash   api.MapHash // of pb, in Registry.sums while hashed
	hashed bool
}

func (e *entry) online() bool { return e.conns > 0 || e.carried }

// svcEntry is a Service and its map entry. A change replaces the whole
// entry, so pb never outlives the Service it was built from.
type svcEntry struct {
	svc    *services.Service // read-only
	pb     *api.Service      // map entry, built lazily, shared read-only by every stream
	hash   api.MapHash       // of pb, in Registry.svcSum while hashed
	hashed bool
}

// pub is one publication: the version every woken subscriber moves to,
// and the updates to it, each marshalled once and shared by every stream
// that needs it. A publication is immutable apart from its caches.
type pub struct {
	version uint64
	full    *shared            // nil until a subscriber needs a full map
	deltas  map[uint64]*shared // by base version
}

// shared is the marshalled common part of one update. msg is filled under
// Registry.mu by the first subscriber that needs it; the marshal runs
// outside the lock, once.
type shared struct {
	version uint64 // the registry's version the content is exactly
	once    sync.Once
	msg     *api.NetworkMap // input; nil once b is set
	b       []byte          // NetworkMap wire bytes without self; read-only
	err     error
	oldest  time.Time // when the oldest change in a delta happened
}

func (sh *shared) bytes() ([]byte, error) {
	sh.once.Do(func() {
		sh.b, sh.err = proto.Marshal(sh.msg)
		sh.msg = nil
	})
	return sh.b, sh.err
}

// Registry is safe for concurrent use.
type Registry struct {
	prefixes []string       // overlay prefixes, sent in full maps
	overlay  []netip.Prefix // the same, parsed
	maxLog   int

	stun   atomic.Pointer[[]*api.StunServer]  // sent in full maps; read-only once set
	relays atomic.Pointer[[]*api.RelayRegion] // sent in full maps; read-only once set

	mu       sync.Mutex  // guards everything below
	clk      clock.Clock // change times and the publication interval
	nodes    map[key.Public]*entry
	services map[string]*svcEntry // by namespace/name
	// kubeNodes are the Kubernetes Nodes by name with their pod CIDRs.
	// A CIDR is routed to the node whose verified KubeNode has that name,
	// never to a node that merely chose the name.
	kubeNodes   map[string][]netip.Prefix
	policy      routeguard.Policy // what pod CIDRs must pass
	revocations []byte            // signed relay revocations; read-only
	version     uint64
	log         []change // ascending by version
	logFloor    uint64   // deltas can be computed only from versions >= logFloor
	subs        map[*Sub]struct{}
	interval    time.Duration // sustained least time between two publications; 0: publish every change
	perSub      time.Duration // added to interval for every subscriber
	burst       int           // publications that may go out at once after a quiet spell; >= 1
	pub         *pub          // the latest publication; never nil
	// paidUntil: the publications so far, at one interval each, are paid
	// for until then (clk; monotonic with clock.Real). One may go out at
	// once while that is less than burst-1 intervals ahead of now: a
	// token bucket (in GCRA form) of burst tokens, one back per interval.
	paidUntil time.Time
	pending   clock.Timer // non-nil while a publication is scheduled

	// sums holds the XOR of the hashes of the hashed node entries by
	// bucket, svcSum of the hashed Service entries; digest caches the
	// map's digest at digestAt (resume.go).
	sums     api.MapSums
	svcSum   api.MapHash
	digest   []byte
	digestAt uint64
	history  []versionDigest // recent digests, oldest first
	// presenceGen moves whenever a node's presence or endpoints may have
	// changed (what SavePresence keeps).
	presenceGen uint64
	carryTimer  clock.Timer // ends the carry-over; nil if none

	synced     chan struct{} // closed by Synced
	syncedOnce sync.Once
}

// New returns an empty registry for the given overlay prefixes.
func New(prefixes []netip.Prefix) *Registry {
	r := &Registry{
		maxLog:    DefaultMaxLog,
		clk:       clock.Real{},
		nodes:     make(map[key.Public]*entry),
		services:  make(map[string]*svcEntry),
		kubeNodes: make(map[string][]netip.Prefix),
		subs:      make(map[*Sub]struct{}),
		burst:     1,
		pub:       &pub{},
		synced:    make(chan struct{}),
	}
	r.overlay = prefixes
	r.policy.Overlay = prefixes
	for _, p := range prefixes {
		r.prefixes = append(r.prefixes, p.String())
	}
	return r
}

// SetInterval sets the sustained least time between two publications to
// d plus perSub for every subscriber, with up to burst (at least 1)
// publications at once after a quiet spell of burst such intervals.
// Changes beyond the burst coalesce into one update per stream per
// interval, and streams stay in step so they share the marshalled updates.
// A publication costs one wake-up and one send per stream, so with perSub
// the rate of them falls as streams are added, keeping the fan-out's cost
// bounded while changes keep coming (a fleet joining); the burst lets the
// few changes of one event (a node joins, connects and reports its
// endpoints) each go out at once instead of an interval apart. 0, 0 (the
// default) publishes every change at once.
func (r *Registry) SetInterval(d, perSub time.Duration, burst int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.interval, r.perSub, r.burst = d, perSub, max(burst, 1)
}

// SetClock sets the clock that times changes and publications (nil:
// clock.Real, the default). Call it before the first change.
func (r *Registry) SetClock(c clock.Clock) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clk = clock.Or(c)
}

// SetSTUN sets the STUN servers announced in full maps. The slice and its
// elements must not be modified afterwards.
func (r *Registry) SetSTUN(servers []*api.StunServer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stun.Store(&servers)
	r.digest, r.history = nil, nil // the maps at past versions had other ones
}

// SetRelays sets the relay map announced in full maps. The slice and its
// elements must not be modified afterwards.
func (r *Registry) SetRelays(regions []*api.RelayRegion) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.relays.Store(&regions)
	r.digest, r.history = nil, nil // the maps at past versions had other ones
}

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
	r.pub = &pub{version: r.version}
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

// SetService adds or replaces a Service; one equal to the one held is no
// change. svc must be valid (services.Service.Validate: sources check
// what they build) and must not be modified later.
func (r *Registry) SetService(svc *services.Service) {
	k := svc.Key()
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.services[k]
	if old != nil && sameService(old.svc, svc) {
		return
	}
	r.unhashServiceLocked(old)
	r.services[k] = &svcEntry{svc: svc}
	r.serviceChangedLocked(k)
}

// DeleteService removes the Service namespace/name.
func (r *Registry) DeleteService(nk string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.services[nk]
	if !ok {
		return
	}
	r.unhashServiceLocked(old)
	delete(r.services, nk)
	r.serviceChangedLocked(nk)
}

// Synced records that the Service source has handed over everything it
// had at its start (svcsource.Sink).
func (r *Registry) Synced() { r.syncedOnce.Do(func() { close(r.synced) }) }

// SourceSynced is closed once the Service source called Synced.
func (r *Registry) SourceSynced() <-chan struct{} { return r.synced }

// Services returns the number of Services.
func (r *Registry) Services() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.services)
}

// protoLocked returns the Service's map entry, converting it on first
// use: once per change, however many streams it goes to. Registry.mu is
// held.
func (se *svcEntry) protoLocked() *api.Service {
	if se.pb == nil {
		se.pb = services.ToProto(se.svc)
	}
	return se.pb
}

// sameService reports whether a and b would put the same entry in the
// map. It is order-sensitive: a reordering costs a redundant version,
// never a missed change, and sources build Services in a stable order.
func sameService(a, b *services.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name &&
		a.ClientIPAffinity == b.ClientIPAffinity && a.AffinityTimeout == b.AffinityTimeout &&
		slices.Equal(a.ClusterIPs, b.ClusterIPs) && slices.Equal(a.Ports, b.Ports) &&
		slices.EqualFunc(a.Endpoints, b.Endpoints, func(x, y services.Endpoint) bool {
			return x.Hostname == y.Hostname && x.NodeName == y.NodeName &&
				slices.Equal(x.Addresses, y.Addresses) && maps.Equal(x.Ports, y.Ports)
		})
}

// SetRoutePolicy sets what pod CIDRs must pass besides not overlapping
// the overlay (special-purpose ranges, minimum length, protected
// addresses). Call it before the first SetKubeNode.
func (r *Registry) SetRoutePolicy(p routeguard.Policy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.Overlay = r.overlay
	r.policy = p
}

// SetKubeNode records that the Kubernetes Node name exists with the pod
// CIDRs Kubernetes assigned to it. They become routes of the node verified
// to be that Kubernetes Node (now, or when it registers), taking
// precedence over advertised routes of other nodes that overlap them.
// CIDRs that the route policy refuses, or that overlap another
// Kubernetes Node's, are refused whole; the Node keeps what it had.
func (r *Registry) SetKubeNode(name string, cidrs []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, existed := r.kubeNodes[name]
	if existed && slices.Equal(old, cidrs) {
		return nil
	}
	for _, c := range cidrs {
		if err := r.policy.Check(c); err != nil {
			return fmt.Errorf("node %s: pod CIDR %w", name, err)
		}
		for other, ocs := range r.kubeNodes {
			for _, oc := range ocs {
				if other != name && oc.Overlaps(c) {
					return fmt.Errorf("node %s: pod CIDR %s overlaps node %s's pod CIDR %s", name, c, other, oc)
				}
			}
		}
	}
	r.kubeNodes[name] = slices.Clone(cidrs)
	r.podCIDRsChangedLocked(name, old, cidrs)
	return nil
}

// DeleteKubeNode records that the Kubernetes Node name is gone.
func (r *Registry) DeleteKubeNode(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.kubeNodes[name]
	if !ok {
		return
	}
	delete(r.kubeNodes, name)
	r.podCIDRsChangedLocked(name, old, nil)
}

// podCIDRsChangedLocked marks changed the node that is Kubernetes Node
// name and every node whose approved routes the old or new CIDRs shadow.
func (r *Registry) podCIDRsChangedLocked(name string, old, cidrs []netip.Prefix) {
	for k, e := range r.nodes {
		if e.node.KubeNode == name || overlapsAny(e.node.Routes, old) || overlapsAny(e.node.Routes, cidrs) {
			r.changedLocked(k, e)
		}
	}
}

func overlapsAny(a, b []netip.Prefix) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Overlaps(y) {
				return true
			}
		}
	}
	return false
}

// KubeNodeOwner returns the name of the registered node other than except
// that is verified to be Kubernetes Node kube, if any.
func (r *Registry) KubeNodeOwner(kube string, except key.Public) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.nodes {
		if k != except && e.node.KubeNode == kube {
			return e.node.Name, true
		}
	}
	return "", false
}

// IsKubeNode reports whether a Kubernetes Node of that name exists. Its
// name is reserved for the node verified to be it.
func (r *Registry) IsKubeNode(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.kubeNodes[name]
	return ok
}

// CheckRoutes reports whether routes about to be approved for the node
// with key k, verified to be Kubernetes node kube (empty: none), overlap
// another node's approved routes or any pod CIDR that is not the node's
// own. The node is known by its key, not its name: a node that is being
// renamed still owns its routes.
func (r *Registry) CheckRoutes(k key.Public, kube string, routes []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range routes {
		for _, e := range r.nodes {
			if e.node.Key == k {
				continue
			}
			for _, rt := range e.node.Routes {
				if rt.Overlaps(c) {
					return fmt.Errorf("route %s overlaps %s of node %s", c, rt, e.node.Name)
				}
			}
		}
		for name, cidrs := range r.kubeNodes {
			for _, pc := range cidrs {
				if (kube == "" || name != kube) && pc.Overlaps(c) {
					return fmt.Errorf("route %s overlaps pod CIDR %s of Kubernetes node %s", c, pc, name)
				}
			}
		}
	}
	return nil
}

// SetRelayRevocations sets the signed relay revocations every map
// carries from now on. b must not be modified later.
func (r *Registry) SetRelayRevocations(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revocations = b
	r.version++
	r.appendLocked(change{version: r.version, rev: true, at: r.clk.Now()})
}

func (r *Registry) serviceChangedLocked(nk string) {
	r.version++
	r.appendLocked(change{version: r.version, svc: nk, at: r.clk.Now()})
}

// Delete removes a node. Its own subscribers see ErrUnknownNode.
func (r *Registry) Delete(nk key.Public) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.nodes[nk]
	if !ok {
		return
	}
	r.unhashLocked(e)
	delete(r.nodes, nk)
	r.presenceGen++
	r.changedLocked(nk, nil)
}

// Connected marks one more stream of key as online and records the
// endpoints and the agent version it reported (which must be
// api.ValidVersion; the server checks). It fails for unknown keys.
func (r *Registry) Connected(nk key.Public, eps []netip.AddrPort, agentVersion string, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[nk]
	if e == nil {
		return ErrUnknownNode
	}
	was := e.online()
	e.conns++
	e.carried = false
	e.lastSeen = now
	// Maps carry presence and endpoints, not last-seen: a second stream
	// with the same endpoints, or the first of a node carried over from
	// the previous coordinator, changes nothing a peer would see.
	if !was || !slices.Equal(e.endpoints, eps) || e.agent != agentVersion {
		e.endpoints = eps
		e.agent = agentVersion
		r.presenceGen++
		r.changedLocked(nk, e)
	}
	return nil
}

// Disconnected undoes Connected.
func (r *Registry) Disconnected(nk key.Public, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[nk]
	if e == nil || e.conns == 0 {
		return
	}
	e.conns--
	e.lastSeen = now
	if e.conns == 0 {
		r.presenceGen++
		r.changedLocked(nk, e)
	}
}

// SetEndpoints records the endpoints a node reported; no-op if unchanged.
func (r *Registry) SetEndpoints(nk key.Public, eps []netip.AddrPort) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[nk]
	if e == nil {
		return ErrUnknownNode
	}
	if slices.Equal(e.endpoints, eps) {
		return nil
	}
	e.endpoints = eps
	r.presenceGen++
	r.changedLocked(nk, e)
	return nil
}

// Node returns a node's registration and whether it is online.
func (r *Registry) Node(nk key.Public) (store.Node, bool, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.nodes[nk]
	if e == nil {
		return store.Node{}, false, false
	}
	return e.node, e.online(), true
}

// Nodes returns every node as it appears in a network map plus what only
// admins see (hostname, last seen), sorted by name.
func (r *Registry) Nodes() []*api.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*api.Node, 0, len(r.nodes))
	for _, e := range r.nodes {
		pb := proto.CloneOf(r.protoLocked(e))
		pb.Hostname = e.node.Hostname
		if !e.lastSeen.IsZero() {
			pb.LastSeenUnixMs = e.lastSeen.UnixMilli()
		}
		for _, p := range e.node.AdvertisedRoutes {
			if !slices.Contains(e.node.Routes, p) {
				pb.PendingRoutes = append(pb.PendingRoutes, p.String())
			}
		}
		out = append(out, pb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (r *Registry) changedLocked(nk key.Public, e *entry) {
	r.version++
	if e != nil {
		e.version = r.version
		e.pb = nil
		r.unhashLocked(e)
	}
	r.appendLocked(change{version: r.version, nk: nk, at: r.clk.Now()})
}

func (r *Registry) appendLocked(c change) {
	r.log = append(r.log, c)
	if len(r.log) > r.maxLog {
		drop := len(r.log) / 2
		r.logFloor = r.log[drop-1].version
		r.log = append(r.log[:0:0], r.log[drop:]...)
	}
	r.publishSoonLocked()
}

// publishSoonLocked publishes now if the bucket holds a publication, else
// schedules one for when it will: sporadic changes go out at once, a
// stream of them once per interval. Time is r.clk's, as the timer's is
// (monotonic with clock.Real).
func (r *Registry) publishSoonLocked() {
	if r.pending != nil {
		return
	}
	// Times, not durations: paidUntil is the zero time before the first
	// publication, and a duration from there would saturate.
	now := r.clk.Now()
	at := r.paidUntil.Add(-time.Duration(r.burst-1) * r.stepLocked())
	if !at.After(now) {
		r.publishLocked()
		return
	}
	r.pending = r.clk.AfterFunc(at.Sub(now), func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.pending = nil
		r.publishLocked()
	})
}

// stepLocked is the sustained interval between publications.
func (r *Registry) stepLocked() time.Duration {
	return r.interval + time.Duration(len(r.subs))*r.perSub
}

func (r *Registry) publishLocked() {
	if r.pub.version == r.version {
		return
	}
	r.pub = &pub{version: r.version}
	now := r.clk.Now()
	if r.paidUntil.Before(now) {
		r.paidUntil = now // a full bucket does not grow
	}
	r.paidUntil = r.paidUntil.Add(r.stepLocked())
	for s := range r.subs {
		s.wake()
	}
}

// protoLocked returns the node's map entry: what peers need (key, name,
// addresses, routes, endpoints, presence, agent version), nothing only
// admins read, so
// every byte of it is sent to every node. Routes are the approved ones
// that no other node's pod CIDR shadows, plus the node's own pod CIDRs.
func (r *Registry) protoLocked(e *entry) *api.Node {
	if e.pb != nil {
		return e.pb
	}
	n := &e.node
	k := n.Key // a copy: entries are overwritten in place, and pb is read outside the lock
	pb := &api.Node{
		PublicKey: k[:],
		Name:      n.Name,
		Online:    e.online(),
		Tags:      n.Tags,
		// Agents match Service endpoints to nodes by it.
		KubernetesNode: n.KubeNode,
		Version:        e.agent,
	}
	for _, a := range n.Addresses {
		pb.Addresses = append(pb.Addresses, a.String())
	}
	var pods []netip.Prefix
	if n.KubeNode != "" {
		pods = r.kubeNodes[n.KubeNode]
	}
	for _, p := range n.Routes {
		if !slices.Contains(pods, p) && !r.shadowedLocked(n.KubeNode, p) {
			pb.Routes = append(pb.Routes, p.String())
		}
	}
	for _, p := range pods {
		pb.Routes = append(pb.Routes, p.String())
	}
	for _, ep := range e.endpoints {
		pb.Endpoints = append(pb.Endpoints, ep.String())
	}
	e.pb = pb
	return pb
}

// shadowedLocked reports whether route p overlaps a pod CIDR of a
// Kubernetes Node other than kube: Kubernetes decides where pods live.
func (r *Registry) shadowedLocked(kube string, p netip.Prefix) bool {
	for name, cidrs := range r.kubeNodes {
		if name == kube {
			continue
		}
		for _, c := range cidrs {
			if c.Overlaps(p) {
				return true
			}
		}
	}
	return false
}

// Sub is one subscriber (one agent stream). Its methods are not safe for
// concurrent use: one goroutine owns a Sub.
type Sub struct {
	r       *Registry
	self    key.Public
	c       chan struct{} // capacity 1: pending wake-ups coalesce
	version uint64        // version of the last update handed out; 0 = none yet
	held    *Held         // the map the agent holds, until the first Next
}

// Held is what an agent says of the map it holds when it connects
// (Hello.map_digest and map_buckets).
type Held struct {
	Digest  []byte // the coordinator's digest of it, as last received
	Buckets []byte // the agent's own sums of it (api.MapSums.Wire)
}

// Update is one network-map message for one stream. Its NetworkMap wire
// encoding is Head followed by Shared (protobuf messages concatenate).
type Update struct {
	Version uint64
	Base    uint64 // the version a delta applies to; 0 in full maps
	Full    bool
	// Current: the agent's map (the digest it subscribed with) is the
	// registry's at Version; Shared says so and nothing else.
	Current bool
	// Patch: the agent's map differed from the registry's in a few node
	// buckets only; Shared replaces those (and carries self).
	Patch bool
	// Head is this stream's own part: NetworkMap.self, set in full maps
	// and when the node changed since Base; empty otherwise.
	Head []byte
	// Shared is everything else, the same bytes for every stream at
	// Base: peers list every node, the subscriber's own included
	// (agents skip their own key). Read-only.
	Shared []byte
	// Oldest is when the oldest change in a delta happened (zero in a
	// full map): the fan-out latency starts there.
	Oldest time.Time
}

// selfField is NetworkMap.self's field number.
var selfField = (&api.NetworkMap{}).ProtoReflect().Descriptor().Fields().ByName("self").Number()

// Subscribe registers a subscriber for node self. Call Close when done.
// held is what the agent said of the map it holds (nil: nothing): if the
// registry's map is that one (now, or at a recent version) when the first
// update is due, that update says the agent's map is current; if it
// differs in a few node buckets only, the update patches those; else it
// is a full map.
func (r *Registry) Subscribe(self key.Public, held *Held) *Sub {
	s := &Sub{r: r, self: self, c: make(chan struct{}, 1), held: held}
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

// C is signalled when a publication may have something for this
// subscriber since the last Next.
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

// Next returns the update from the previous call's version to the latest
// publication: on the first call, a current-map update if the registry's
// digest is the one the subscriber came with, else a full map; a full map
// after Resync or when the log no longer reaches back; a delta otherwise;
// nil when the subscriber is already there. It returns ErrUnknownNode
// once the subscriber's own node is deleted.
//
// An update is built, when first needed, from the registry as it is then:
// its Version is the registry's version at that moment, which may be newer
// than the publication that woke the subscriber, and its content is
// exactly the map at that version, so its digest is exact too.
func (s *Sub) Next() (*Update, error) {
	r := s.r
	r.mu.Lock()
	self := r.nodes[s.self]
	if self == nil {
		r.mu.Unlock()
		return nil, ErrUnknownNode
	}
	p := r.pub
	if p.version == 0 || s.version >= p.version {
		r.mu.Unlock()
		return nil, nil
	}
	if s.version == 0 && s.held != nil {
		held := s.held
		s.held = nil
		if v, ok := r.resumeLocked(held.Digest); ok {
			// The agent holds the map at v: say so, and if the registry
			// has moved on since, the delta from v follows.
			s.version = v
			if v < p.version {
				s.wake()
			}
			r.mu.Unlock()
			b, err := proto.Marshal(&api.NetworkMap{Version: v, Current: true, Digest: held.Digest})
			if err != nil {
				return nil, fmt.Errorf("marshal network map: %w", err)
			}
			return &Update{Version: v, Current: true, Shared: b}, nil
		}
		if m := r.patchLocked(self, held.Buckets); m != nil {
			s.version = m.Version
			r.mu.Unlock()
			b, err := proto.Marshal(m)
			if err != nil {
				return nil, fmt.Errorf("marshal network map: %w", err)
			}
			return &Update{Version: m.Version, Patch: true, Shared: b}, nil
		}
	}
	u := &Update{}
	var sh *shared
	if s.version == 0 || s.version < r.logFloor {
		u.Full = true
		if p.full == nil {
			p.full = &shared{version: r.version, msg: r.fullLocked(r.version)}
		}
		sh = p.full
	} else {
		u.Base = s.version
		if sh = p.deltas[s.version]; sh == nil {
			if p.deltas == nil {
				p.deltas = make(map[uint64]*shared)
			}
			sh = r.deltaLocked(s.version, r.version)
			p.deltas[s.version] = sh
		}
	}
	var selfPB *api.Node
	if u.Full || self.version > s.version {
		selfPB = r.protoLocked(self)
	}
	u.Version = sh.version
	s.version = sh.version
	r.mu.Unlock()

	b, err := sh.bytes()
	if err != nil {
		return nil, fmt.Errorf("marshal network map: %w", err)
	}
	u.Shared, u.Oldest = b, sh.oldest
	if selfPB != nil {
		pb, err := proto.Marshal(selfPB)
		if err != nil {
			return nil, fmt.Errorf("marshal self: %w", err)
		}
		u.Head = protowire.AppendTag(make([]byte, 0, len(pb)+8), selfField, protowire.BytesType)
		u.Head = protowire.AppendBytes(u.Head, pb)
	}
	return u, nil
}

// fullLocked collects the full map at version v: every node, self included.
func (r *Registry) fullLocked(v uint64) *api.NetworkMap {
	m := &api.NetworkMap{
		Version:         v,
		Full:            true,
		Peers:           make([]*api.Node, 0, len(r.nodes)),
		OverlayPrefixes: r.prefixes,
		Digest:          r.digestLocked(),
	}
	if p := r.stun.Load(); p != nil {
		m.StunServers = *p
	}
	if p := r.relays.Load(); p != nil {
		m.Relays = *p
	}
	for _, e := range r.nodes {
		m.Peers = append(m.Peers, r.protoLocked(e))
	}
	m.RelayRevocations = r.revocations
	m.Services = make([]*api.Service, 0, len(r.services))
	for _, se := range r.services {
		m.Services = append(m.Services, se.protoLocked())
	}
	return m
}

// deltaLocked collects what changed in (since, until]: each changed node
// or Service once, as it is now.
func (r *Registry) deltaLocked(since, until uint64) *shared {
	m := &api.NetworkMap{Version: until, BaseVersion: since, Digest: r.digestLocked()}
	i := sort.Search(len(r.log), func(i int) bool { return r.log[i].version > since })
	j := sort.Search(len(r.log), func(i int) bool { return r.log[i].version > until })
	sh := &shared{version: until, msg: m}
	if i < j {
		sh.oldest = r.log[i].at
	}
	seen := make(map[key.Public]struct{}, j-i)
	seenSvc := map[string]struct{}{}
	for _, c := range r.log[i:j] {
		if c.rev {
			m.RelayRevocations = r.revocations
			continue
		}
		if c.svc != "" {
			if _, dup := seenSvc[c.svc]; dup {
				continue
			}
			seenSvc[c.svc] = struct{}{}
			if se := r.services[c.svc]; se != nil {
				m.Services = append(m.Services, se.protoLocked())
			} else {
				m.RemovedServices = append(m.RemovedServices, c.svc)
			}
			continue
		}
		if _, dup := seen[c.nk]; dup {
			continue
		}
		seen[c.nk] = struct{}{}
		if e := r.nodes[c.nk]; e != nil {
			m.Peers = append(m.Peers, r.protoLocked(e))
		} else {
			k := c.nk
			m.Removed = append(m.Removed, k[:])
		}
	}
	return sh
}
