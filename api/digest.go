package api

import (
	"crypto/sha256"

	"google.golang.org/protobuf/proto"
)

// A network map's digest, computed the same way by the coordinator (over
// the entries it sends) and by agents (over the entries they received),
// so that an agent reconnecting to another coordinator replica can say
// which map it holds: NetworkMap.digest, Hello.map_digest and
// Hello.map_buckets (edgewire.proto).
//
// Every element of a map hashes on its own: each node entry, each
// Service entry, and the rest of a full map (prefixes, STUN servers,
// relays, relay revocations) as one element. The digest is the XOR of
// all, so it does not depend on order or on versions and follows a change
// by XORing the old element out and the new one in. Nodes also fall into
// MapBuckets buckets by the first byte of their key; a bucket's sum is the
// XOR of its nodes, so two maps that differ in a few nodes differ in a
// few buckets.

// MapHash is the hash of one map element, or a XOR of them.
type MapHash [16]byte

// Xor sets h to h XOR o.
func (h *MapHash) Xor(o MapHash) {
	for i := range h {
		h[i] ^= o[i]
	}
}

// MapBuckets is the number of node buckets.
const MapBuckets = 256

// BucketHashLen is how many bytes of each bucket's sum Hello.map_buckets
// carries: MapBuckets node buckets, then the rest (Services and the full
// map's other fields), BucketHashLen bytes each.
const BucketHashLen = 8

// NodeBucket returns the bucket of the node with public key k (32 bytes).
func NodeBucket(k []byte) int { return int(k[0]) }

// Element kinds, hashed in so that no node can hash as a Service.
const (
	hashNode    = 'n'
	hashService = 's'
	hashRest    = 'g'
)

// deterministic marshals map fields in key order (ServiceEndpoint.ports),
// so equal content hashes equal wherever it is marshalled.
var deterministic = proto.MarshalOptions{Deterministic: true}

func hashOf(kind byte, m proto.Message) MapHash {
	b, err := deterministic.Marshal(m)
	if err != nil {
		// Entries come from validated data; one that cannot be
		// marshalled cannot be sent either. Hash the kind alone: the
		// digest is then wrong, which costs a full map, nothing else.
		b = nil
	}
	sum := sha256.Sum256(append([]byte{kind}, b...))
	return MapHash(sum[:16])
}

// HashNode hashes a node entry of a map.
func HashNode(n *Node) MapHash { return hashOf(hashNode, n) }

// HashService hashes a Service entry of a map.
func HashService(s *Service) MapHash { return hashOf(hashService, s) }

// HashRest hashes the fields of a full map that are not entries.
func HashRest(prefixes []string, stun []*StunServer, relays []*RelayRegion, revocations []byte) MapHash {
	return hashOf(hashRest, &NetworkMap{OverlayPrefixes: prefixes, StunServers: stun, Relays: relays, RelayRevocations: revocations})
}

// MapSums is a map's digest kept by parts: a sum per node bucket, and one
// for the rest (Services and the full map's other fields).
type MapSums struct {
	Buckets [MapBuckets]MapHash
	Rest    MapHash
}

// Digest returns the map's digest: every part XORed.
func (s *MapSums) Digest() MapHash {
	d := s.Rest
	for _, b := range s.Buckets {
		d.Xor(b)
	}
	return d
}

// Wire returns the sums as Hello.map_buckets carries them.
func (s *MapSums) Wire() []byte {
	out := make([]byte, 0, (MapBuckets+1)*BucketHashLen)
	for _, b := range s.Buckets {
		out = append(out, b[:BucketHashLen]...)
	}
	return append(out, s.Rest[:BucketHashLen]...)
}

// DiffBuckets compares the sums with wire (Hello.map_buckets): it returns
// the node buckets that differ and whether the rest is equal. ok is false
// if wire is not the right length.
func (s *MapSums) DiffBuckets(wire []byte) (buckets []byte, restEqual, ok bool) {
	if len(wire) != (MapBuckets+1)*BucketHashLen {
		return nil, false, false
	}
	for i := range MapBuckets {
		if string(s.Buckets[i][:BucketHashLen]) != string(wire[i*BucketHashLen:(i+1)*BucketHashLen]) {
			buckets = append(buckets, byte(i))
		}
	}
	return buckets, string(s.Rest[:BucketHashLen]) == string(wire[MapBuckets*BucketHashLen:]), true
}
