package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

func presenceKey(b byte) key.Public {
	var k key.Public
	k[0], k[31] = b, 0xee
	return k
}

func TestPresenceEncoding(t *testing.T) {
	at := time.UnixMilli(1_800_000_000_123)
	p := Presence{
		presenceKey(1): {Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("[2001:db8::1]:1")}, Version: "v1.2.3"},
		presenceKey(2): {},
		// A v4-mapped address is kept as the IPv4 address it is.
		presenceKey(3): {Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:192.0.2.3]:7")}, Version: "dev"},
	}
	b := EncodePresence(p, at)
	if !bytes.Equal(b, EncodePresence(p, at)) {
		t.Fatal("two encodings of one presence differ")
	}
	got := Presence{}
	gotAt, err := DecodePresence(b, got)
	if err != nil || !gotAt.Equal(at) || len(got) != 3 {
		t.Fatalf("decode: %v at %v, %v; want 3 nodes at %v", got, gotAt, err, at)
	}
	if g := got[presenceKey(3)]; len(g.Endpoints) != 1 || g.Endpoints[0] != netip.MustParseAddrPort("192.0.2.3:7") || g.Version != "dev" {
		t.Errorf("node 3 decoded as %v, want 192.0.2.3:7 and dev", g)
	}
	if g := got[presenceKey(1)]; len(g.Endpoints) != 2 || g.Endpoints[1] != netip.MustParseAddrPort("[2001:db8::1]:1") || g.Version != "v1.2.3" {
		t.Errorf("node 1 decoded as %v", g)
	}
	if g := got[presenceKey(2)]; len(g.Endpoints) != 0 || g.Version != "" {
		t.Errorf("node 2 decoded as %v, want nothing", g)
	}

	many := make([]netip.AddrPort, MaxPresenceEndpoints+5)
	for i := range many {
		many[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 1)
	}
	got = Presence{}
	if _, err := DecodePresence(EncodePresence(Presence{presenceKey(1): {Endpoints: many}}, at), got); err != nil || len(got[presenceKey(1)].Endpoints) != MaxPresenceEndpoints {
		t.Errorf("too many endpoints: kept %d (%v), want %d", len(got[presenceKey(1)].Endpoints), err, MaxPresenceEndpoints)
	}
	// A version the map would not carry is not saved either.
	got = Presence{}
	if _, err := DecodePresence(EncodePresence(Presence{presenceKey(1): {Version: "v1\x1b[2J"}}, at), got); err != nil || got[presenceKey(1)].Version != "" {
		t.Errorf("bad version: decoded %q (%v), want none", got[presenceKey(1)].Version, err)
	}

	node1 := 33 + (1 + 4 + 2) + (1 + 16 + 2) + 1 + len("v1.2.3") // node 1's bytes
	ver1 := 9 + node1 - 1 - len("v1.2.3")                        // node 1's version length
	bad := map[string][]byte{
		"empty":              nil,
		"other format":       append([]byte{3}, b[1:]...),
		"truncated node":     b[:9+20],
		"truncated ep":       b[:9+33+3],
		"truncated version":  b[:9+node1-2],
		"no version length":  b[:ver1],
		"trailing byte":      append(bytes.Clone(b), 0),
		"node twice":         append(bytes.Clone(b), b[9:9+node1]...),
		"bad addr len":       func() []byte { c := bytes.Clone(b); c[9+33] = 5; return c }(),
		"too many eps":       func() []byte { c := bytes.Clone(b); c[9+32] = MaxPresenceEndpoints + 1; return c }(),
		"control in version": func() []byte { c := bytes.Clone(b); c[ver1+2] = '\n'; return c }(),
		"version too long": func() []byte {
			c := append(bytes.Clone(b[:ver1]), byte(65))
			return append(c, bytes.Repeat([]byte("v"), 65)...)
		}(),
	}
	for name, in := range bad {
		into := Presence{presenceKey(9): {}}
		if _, err := DecodePresence(in, into); !errors.Is(err, ErrBadPresence) {
			t.Errorf("%s: err %v, want ErrBadPresence", name, err)
		}
		if len(into) != 1 {
			t.Errorf("%s: a failed decode added %d nodes", name, len(into)-1)
		}
	}
}

// TestPresenceFormat1: what a coordinator from before agent versions
// saved still decodes, without versions, so an upgrade keeps the carried
// presence.
func TestPresenceFormat1(t *testing.T) {
	at := time.UnixMilli(1_800_000_000_123)
	k := presenceKey(1)
	b := []byte{1}
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMilli()))
	b = append(b, k[:]...)
	b = append(b, 1, 4, 192, 0, 2, 1, 0xca, 0x6c) // one endpoint, 192.0.2.1:51820
	got := Presence{}
	gotAt, err := DecodePresence(b, got)
	want := NodePresence{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}}
	if err != nil || !gotAt.Equal(at) || len(got) != 1 || !slices.Equal(got[k].Endpoints, want.Endpoints) || got[k].Version != "" {
		t.Errorf("format 1: got %v at %v, %v; want %v at %v", got, gotAt, err, want, at)
	}
}

// FuzzDecodePresence: saved presence comes back from the Kubernetes API,
// where anyone with write access can edit it. Whatever it holds, decoding
// never panics, adds nothing unless it all decodes, and what decodes
// encodes back to the same bytes.
func FuzzDecodePresence(f *testing.F) {
	at := time.UnixMilli(1_800_000_000_000)
	f.Add(EncodePresence(Presence{}, at))
	f.Add(EncodePresence(Presence{presenceKey(1): {Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}, Version: "v0.9.0"}, presenceKey(2): {}}, at))
	f.Add(EncodePresence(Presence{presenceKey(3): {Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:1")}}}, at))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Presence{}
		gotAt, err := DecodePresence(b, got)
		if err != nil {
			if len(got) != 0 {
				t.Fatalf("failed decode added %d nodes", len(got))
			}
			return
		}
		// Format 1 input encodes back as the current format.
		if again := EncodePresence(got, gotAt); !bytes.Equal(again, b) && b[0] == presenceFormat && sortedInput(b) {
			t.Fatalf("decoded and encoded back differs:\n%x\n%x", b, again)
		}
	})
}

// sortedInput reports whether the nodes in a decodable b are in key
// order, as EncodePresence writes them (the decoder accepts any order).
func sortedInput(b []byte) bool {
	b = b[9:]
	var prev []byte
	for len(b) > 0 {
		k := b[:32]
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			return false
		}
		prev = k
		n := int(b[32])
		b = b[33:]
		for range n {
			b = b[1+int(b[0])+2:]
		}
		b = b[1+int(b[0]):] // the version
	}
	return true
}
