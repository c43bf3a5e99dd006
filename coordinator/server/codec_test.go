package server

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/netmap"
)

func TestCodecEncodedMap(t *testing.T) {
	self := &api.Node{PublicKey: make([]byte, 32), Name: "self", Online: true}
	selfB, err := proto.Marshal(&api.NetworkMap{Self: self})
	if err != nil {
		t.Fatal(err)
	}
	peers := &api.NetworkMap{Version: 7, BaseVersion: 5, Peers: []*api.Node{{PublicKey: make([]byte, 32), Name: "peer"}, {Name: "self"}}}
	peersB, err := proto.Marshal(peers)
	if err != nil {
		t.Fatal(err)
	}
	big := &api.NetworkMap{Version: 9, Full: true}
	for range 2000 { // a NetworkMap longer than a one-byte varint
		big.Peers = append(big.Peers, &api.Node{PublicKey: make([]byte, 32), Name: "n"})
	}
	bigB, err := proto.Marshal(big)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		u    netmap.Update
		want *api.NetworkMap
	}{
		{"shared only", netmap.Update{Shared: peersB}, peers},
		{"head and shared", netmap.Update{Head: selfB, Shared: peersB},
			&api.NetworkMap{Version: 7, BaseVersion: 5, Self: self, Peers: peers.Peers}},
		{"head only", netmap.Update{Head: selfB}, &api.NetworkMap{Self: self}},
		{"long length prefix", netmap.Update{Head: selfB, Shared: bigB},
			&api.NetworkMap{Version: 9, Full: true, Self: self, Peers: big.Peers}},
	}
	c := Codec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shared := append([]byte(nil), tt.u.Shared...)
			bs, err := c.Marshal(newEncodedMap(&tt.u))
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if len(tt.u.Shared) > 0 && &bs[len(bs)-1].ReadOnlyData()[0] != &tt.u.Shared[0] {
				t.Errorf("the shared part was copied, want it sent as is")
			}
			var got api.ServerMessage
			if err := c.Unmarshal(bs, &got); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if !proto.Equal(got.GetMap(), tt.want) {
				t.Errorf("got %v, want map %v", &got, tt.want)
			}
			bs.Free()
			if string(tt.u.Shared) != string(shared) {
				t.Errorf("shared bytes changed after Free")
			}
		})
	}
}

// Everything else is plain protobuf, both ways.
func TestCodecFallsBackToProto(t *testing.T) {
	c := Codec()
	if c.Name() != "proto" {
		t.Errorf("got name %q, want proto (agents negotiate nothing else)", c.Name())
	}
	msg := &api.ServerMessage{Msg: &api.ServerMessage_Challenge{Challenge: &api.Challenge{Nonce: make([]byte, 24)}}}
	bs, err := c.Marshal(msg)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var got api.ServerMessage
	if err := proto.Unmarshal(bs.Materialize(), &got); err != nil || !proto.Equal(&got, msg) {
		t.Errorf("got %v (%v), want %v", &got, err, msg)
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer{0x0a}}, new(encodedMap)); err == nil {
		t.Errorf("Unmarshal into an encoded map: got nil error, want one")
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Errorf("Marshal of a string: got nil error, want one")
	}
}
