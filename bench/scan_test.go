//go:build bench

package bench

import (
	"bytes"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
)

// split cuts b into buffers at the given offsets (taken modulo len(b)).
func split(b []byte, cuts ...int) mem.BufferSlice {
	var out mem.BufferSlice
	last := 0
	for _, c := range cuts {
		if len(b) == 0 {
			break
		}
		c %= len(b)
		if c <= last {
			continue
		}
		out = append(out, mem.SliceBuffer(b[last:c]))
		last = c
	}
	return append(out, mem.SliceBuffer(b[last:]))
}

func scanWith(t testing.TB, data mem.BufferSlice, watch []byte) (scanned, error) {
	t.Helper()
	var w atomic.Pointer[[32]byte]
	if watch != nil {
		w.Store((*[32]byte)(watch))
	}
	// A fresh model wants every map: the scan gathers it for the model
	// and still finds the watched key.
	m := scanned{watch: &w, model: &mapModel{}}
	err := scanCodec{}.Unmarshal(data, &m)
	return m, err
}

func TestScanAcrossBuffers(t *testing.T) {
	key := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	var peers []*api.Node
	for i := range 50 {
		peers = append(peers, &api.Node{PublicKey: key(byte(i)), Name: "sim", Addresses: []string{"100.64.0.1"}, Online: true})
	}
	digest := bytes.Repeat([]byte{0xd1}, 32)
	full, err := proto.Marshal(&api.ServerMessage{Msg: &api.ServerMessage_Map{Map: &api.NetworkMap{
		Version: 7, Full: true, Self: peers[3], Peers: peers, Digest: digest, PatchedBuckets: []byte{1, 2}}}})
	if err != nil {
		t.Fatal(err)
	}
	current, err := proto.Marshal(&api.ServerMessage{Msg: &api.ServerMessage_Map{Map: &api.NetworkMap{Version: 9, Current: true, Digest: digest}}})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := proto.Marshal(&api.ServerMessage{Msg: &api.ServerMessage_Challenge{Challenge: &api.Challenge{Nonce: key(9)}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		msg         []byte
		watch       []byte
		isMap       bool
		found       bool
		current     bool
		patch       bool
		digest      []byte
		challengeOK bool
	}{
		{name: "full map, watched peer", msg: full, watch: key(42), isMap: true, found: true, patch: true, digest: digest},
		{name: "full map, unknown key", msg: full, watch: key(200), isMap: true, digest: digest, patch: true},
		{name: "current", msg: current, watch: key(1), isMap: true, current: true, digest: digest},
		{name: "challenge", msg: ch, challengeOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Every single cut, and a frame-like cut every 7 bytes.
			var every []int
			for c := 7; c < len(tt.msg); c += 7 {
				every = append(every, c)
			}
			cases := []mem.BufferSlice{split(tt.msg), split(tt.msg, every...)}
			for c := 1; c < len(tt.msg); c++ {
				cases = append(cases, split(tt.msg, c))
			}
			for i, data := range cases {
				m, err := scanWith(t, data, tt.watch)
				if err != nil {
					t.Fatalf("case %d (%d buffers): %v", i, len(data), err)
				}
				if m.isMap != tt.isMap || m.found != tt.found || m.current != tt.current || m.patch != tt.patch || !bytes.Equal(m.digest, tt.digest) {
					t.Fatalf("case %d (%d buffers): got map %v found %v current %v patch %v digest %x, want %v %v %v %v %x",
						i, len(data), m.isMap, m.found, m.current, m.patch, m.digest, tt.isMap, tt.found, tt.current, tt.patch, tt.digest)
				}
				if m.size != len(tt.msg) {
					t.Fatalf("case %d: got size %d, want %d", i, m.size, len(tt.msg))
				}
				if got := m.challenge != nil && bytes.Equal(m.challenge.GetNonce(), key(9)); got != tt.challengeOK {
					t.Fatalf("case %d: got challenge %v, want %v", i, m.challenge, tt.challengeOK)
				}
			}
		})
	}
}

// FuzzScan: the fleet's scan of a server message never panics, and reads
// the same whatever buffers the message arrives in.
func FuzzScan(f *testing.F) {
	m, _ := proto.Marshal(&api.ServerMessage{Msg: &api.ServerMessage_Map{Map: &api.NetworkMap{
		Version: 1, Full: true, Peers: []*api.Node{{PublicKey: bytes.Repeat([]byte{1}, 32), Name: "a"}}, Digest: []byte{1, 2, 3}, Current: true}}})
	f.Add(m, 3, 17)
	f.Add([]byte{0x12, 0x80}, 1, 1)
	f.Fuzz(func(t *testing.T, b []byte, c1, c2 int) {
		if c1 < 0 || c2 < 0 {
			return
		}
		watch := bytes.Repeat([]byte{1}, 32)
		one, err1 := scanWith(t, split(b), watch)
		many, err2 := scanWith(t, split(b, c1, c2), watch)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("one buffer: %v; split: %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		if one.isMap != many.isMap || one.found != many.found || one.current != many.current || one.patch != many.patch || !bytes.Equal(one.digest, many.digest) {
			t.Fatalf("one buffer and split read differently")
		}
	})
}
