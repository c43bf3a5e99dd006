package api

import (
	"bytes"
	"testing"
)

func TestMapSums(t *testing.T) {
	node := func(b byte, ep string) *Node {
		return &Node{PublicKey: bytes.Repeat([]byte{b}, 32), Name: "n", Endpoints: []string{ep}}
	}
	add := func(s *MapSums, n *Node) { s.Buckets[NodeBucket(n.PublicKey)].Xor(HashNode(n)) }
	var a, b MapSums
	for _, n := range []*Node{node(1, "192.0.2.1:1"), node(2, "192.0.2.2:1"), node(200, "192.0.2.3:1")} {
		add(&a, n)
	}
	// The same nodes in another order: the same sums.
	for _, n := range []*Node{node(200, "192.0.2.3:1"), node(1, "192.0.2.1:1"), node(2, "192.0.2.2:1")} {
		add(&b, n)
	}
	if a.Digest() != b.Digest() {
		t.Fatal("order changed the digest")
	}
	diff, rest, ok := a.DiffBuckets(b.Wire())
	if !ok || !rest || len(diff) != 0 {
		t.Fatalf("equal sums: diff %v rest %v ok %v", diff, rest, ok)
	}
	// Node 2 moves: its bucket alone differs.
	b.Buckets[2].Xor(HashNode(node(2, "192.0.2.2:1")))
	b.Buckets[2].Xor(HashNode(node(2, "198.51.100.2:1")))
	if diff, rest, ok := a.DiffBuckets(b.Wire()); !ok || !rest || !bytes.Equal(diff, []byte{2}) {
		t.Errorf("one node moved: diff %v rest %v ok %v, want bucket 2", diff, rest, ok)
	}
	b.Rest.Xor(HashService(&Service{Namespace: "ns", Name: "s"}))
	if _, rest, _ := a.DiffBuckets(b.Wire()); rest {
		t.Error("a Service more left the rest equal")
	}
	if _, _, ok := a.DiffBuckets(b.Wire()[1:]); ok {
		t.Error("a short wire form was accepted")
	}
	// A node and a Service with the same bytes do not hash alike.
	if HashNode(&Node{}) == HashService(&Service{}) {
		t.Error("an empty node hashes as an empty Service")
	}
}

// A STUN server's alt port is part of the rest's hash, so a coordinator
// that starts or stops advertising one changes the digest, and equal
// content built apart hashes equal.
func TestHashRestAltPort(t *testing.T) {
	rest := func(alt uint32) MapHash {
		return HashRest([]string{"100.64.0.0/10"}, []*StunServer{{Port: 3478, AltPort: alt}}, nil, nil)
	}
	if rest(3479) != rest(3479) {
		t.Error("equal STUN servers hash differently")
	}
	if rest(3479) == rest(0) {
		t.Error("an alt port left the hash unchanged")
	}
	if rest(3479) == rest(3480) {
		t.Error("another alt port left the hash unchanged")
	}
}
