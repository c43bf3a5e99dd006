package netmap

import (
	"slices"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
)

// A fleet that reconnects (to a new coordinator replica after a
// failover, or to a restarted coordinator) would cost one full map per
// node, each as large as the fleet: 10,000 nodes fetch 10,000 maps of
// about a megabyte. Two things make most of that unnecessary:
//
//   - The digest. Every map message carries the digest of the whole map
//     the agent holds once it is applied; the agent sends the last one
//     back when it reconnects, and if the registry's map has the same
//     digest the agent is told its map is current. The digest depends on
//     the content only (not on map versions, which are per replica), so
//     a replica that loaded the same store agrees with its predecessor.
//   - Carried presence. Presence, endpoints and the agent version each
//     node reported are part of the map but not of the durable store;
//     the serving coordinator saves them in batches
//     (store.PresenceKeeper), and the next one starts from them (Carry),
//     so its map is the one agents hold and their reconnections change
//     nothing a peer would see.

// DigestSize is the length of a map digest.
const DigestSize = len(api.MapHash{})

// unhashLocked takes a node entry out of the sum before it changes.
func (r *Registry) unhashLocked(e *entry) {
	if e.hashed {
		r.sums.Buckets[api.NodeBucket(e.node.Key[:])].Xor(e.hash)
		e.hashed = false
	}
}

// unhashServiceLocked takes a Service entry out of the sum before it is
// replaced or deleted.
func (r *Registry) unhashServiceLocked(se *svcEntry) {
	if se != nil && se.hashed {
		r.svcSum.Xor(se.hash)
		se.hashed = false
	}
}

// digestLocked returns the digest of the map at the current version:
// every node and Service entry as the map carries it, plus the parts of a
// full map that are not entries (prefixes, STUN servers, relays, relay
// revocations). The result is read-only.
func (r *Registry) digestLocked() []byte {
	if r.digest != nil && r.digestAt == r.version {
		return r.digest
	}
	sums := r.sumsLocked()
	d := sums.Digest()
	r.digest, r.digestAt = d[:], r.version
	r.history = append(r.history, versionDigest{r.version, d})
	if len(r.history) > historyLen {
		r.history = slices.Delete(r.history, 0, len(r.history)-historyLen)
	}
	return r.digest
}

// sumsLocked brings every entry's hash into the sums and returns them as
// they are at the current version (Rest: the Services and the full map's
// other fields).
func (r *Registry) sumsLocked() api.MapSums {
	for _, e := range r.nodes {
		if !e.hashed {
			e.hash, e.hashed = api.HashNode(r.protoLocked(e)), true
			r.sums.Buckets[api.NodeBucket(e.node.Key[:])].Xor(e.hash)
		}
	}
	for _, se := range r.services {
		if !se.hashed {
			se.hash, se.hashed = api.HashService(se.protoLocked()), true
			r.svcSum.Xor(se.hash)
		}
	}
	var stun []*api.StunServer
	if p := r.stun.Load(); p != nil {
		stun = *p
	}
	var relays []*api.RelayRegion
	if p := r.relays.Load(); p != nil {
		relays = *p
	}
	sums := r.sums
	sums.Rest = r.svcSum
	sums.Rest.Xor(api.HashRest(r.prefixes, stun, relays, r.revocations))
	return sums
}

// historyLen bounds the digests remembered: an agent whose map is one of
// them gets the delta from there instead of a full map. Digests are taken
// when updates are built, about one per publication, so this reaches back
// a minute or more of publications even at 10,000 streams.
const historyLen = 64

type versionDigest struct {
	version uint64
	digest  api.MapHash
}

// resumeLocked returns the version whose map has digest d: the current
// one, or a recent one the change log still reaches back from.
func (r *Registry) resumeLocked(d []byte) (uint64, bool) {
	if slices.Equal(r.digestLocked(), d) {
		return r.version, true
	}
	for i := len(r.history) - 1; i >= 0; i-- {
		h := r.history[i]
		if h.version >= r.logFloor && slices.Equal(h.digest[:], d) {
			return h.version, true
		}
	}
	return 0, false
}

// Digest returns the digest of the map at the current version.
func (r *Registry) Digest() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.digestLocked())
}

// Presence is which nodes are online, with the endpoints and agent
// version they reported.
type Presence = store.Presence

// Carry starts the registry from the presence a previous coordinator
// saved: those nodes are online with those endpoints until each connects
// (its own report then counts) or until the carry-over ends at until,
// when those that have not connected go offline. Keys the registry does
// not hold are ignored. Call it after Load, before any subscriber.
func (r *Registry) Carry(p Presence, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, np := range p {
		e := r.nodes[k]
		if e == nil || e.conns > 0 {
			continue
		}
		e.carried = true
		e.endpoints = slices.Clone(np.Endpoints)
		// The version is part of the entry agents hold: without it the
		// map would differ from theirs in every node until it connects.
		if api.ValidVersion(np.Version) {
			e.agent = np.Version
		}
		e.pb = nil
		r.unhashLocked(e)
	}
	r.digest = nil
	r.digestLocked() // the map agents hold: the one to resume from
	r.presenceGen++
	if r.carryTimer != nil {
		r.carryTimer.Stop()
	}
	r.carryTimer = r.clk.AfterFunc(until.Sub(r.clk.Now()), r.endCarry)
}

// endCarry takes offline the carried nodes that have not connected.
func (r *Registry) endCarry() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.carryTimer = nil
	for k, e := range r.nodes {
		if e.carried {
			e.carried = false
			r.presenceGen++
			r.changedLocked(k, e)
		}
	}
}

// Carried returns how many nodes are online only by carry-over.
func (r *Registry) Carried() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.nodes {
		if e.carried {
			n++
		}
	}
	return n
}

// Presence returns which nodes are online now, with their endpoints, and
// the presence generation it is from (see PresenceGen).
func (r *Registry) Presence() (Presence, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := make(Presence)
	for k, e := range r.nodes {
		if e.online() {
			p[k] = store.NodePresence{Endpoints: e.endpoints, Version: e.agent} // endpoints are never modified in place: replaced on change
		}
	}
	return p, r.presenceGen
}

// PresenceGen returns a generation that moves whenever presence or
// endpoints may have changed.
func (r *Registry) PresenceGen() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.presenceGen
}

// maxPatchBuckets: an agent whose map differs in more node buckets than
// this gets a full map, about as cheap by then.
const maxPatchBuckets = api.MapBuckets / 4

// patchLocked returns the message that brings a map with the given
// bucket sums (Hello.map_buckets) to the registry's, if it differs in a
// few node buckets only: those buckets' nodes as they are now, and self.
// nil if it differs elsewhere, in too many buckets, or not at all (then
// the digests would have matched, so the sums are not of a map the
// registry can vouch for).
func (r *Registry) patchLocked(self *entry, buckets []byte) *api.NetworkMap {
	if len(buckets) == 0 {
		return nil
	}
	sums := r.sumsLocked()
	diff, restEqual, ok := sums.DiffBuckets(buckets)
	if !ok || !restEqual || len(diff) == 0 || len(diff) > maxPatchBuckets {
		return nil
	}
	var in [api.MapBuckets]bool
	for _, b := range diff {
		in[b] = true
	}
	m := &api.NetworkMap{Version: r.version, PatchedBuckets: diff, Digest: r.digestLocked(), Self: r.protoLocked(self)}
	for k, e := range r.nodes {
		if in[api.NodeBucket(k[:])] {
			m.Peers = append(m.Peers, r.protoLocked(e))
		}
	}
	return m
}
