package store

import (
	"bytes"
	"errors"
	"net/netip"
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
		presenceKey(1): {netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("[2001:db8::1]:1")},
		presenceKey(2): nil,
		// A v4-mapped address is kept as the IPv4 address it is.
		presenceKey(3): {netip.MustParseAddrPort("[::ffff:192.0.2.3]:7")},
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
	if g := got[presenceKey(3)]; len(g) != 1 || g[0] != netip.MustParseAddrPort("192.0.2.3:7") {
		t.Errorf("mapped endpoint decoded as %v", g)
	}
	if g := got[presenceKey(1)]; len(g) != 2 || g[1] != netip.MustParseAddrPort("[2001:db8::1]:1") {
		t.Errorf("node 1: %v", g)
	}

	many := make([]netip.AddrPort, MaxPresenceEndpoints+5)
	for i := range many {
		many[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 1)
	}
	got = Presence{}
	if _, err := DecodePresence(EncodePresence(Presence{presenceKey(1): many}, at), got); err != nil || len(got[presenceKey(1)]) != MaxPresenceEndpoints {
		t.Errorf("too many endpoints: kept %d (%v), want %d", len(got[presenceKey(1)]), err, MaxPresenceEndpoints)
	}

	bad := map[string][]byte{
		"empty":          nil,
		"other format":   append([]byte{2}, b[1:]...),
		"truncated node": b[:9+20],
		"truncated ep":   b[:9+33+3],
		"trailing byte":  append(bytes.Clone(b), 0),
		"node twice":     append(bytes.Clone(b), b[9:9+33+1+4+2+1+16+2]...),
		"bad addr len":   func() []byte { c := bytes.Clone(b); c[9+33] = 5; return c }(),
		"too many eps":   func() []byte { c := bytes.Clone(b); c[9+32] = MaxPresenceEndpoints + 1; return c }(),
	}
	for name, in := range bad {
		into := Presence{presenceKey(9): nil}
		if _, err := DecodePresence(in, into); !errors.Is(err, ErrBadPresence) {
			t.Errorf("%s: err %v, want ErrBadPresence", name, err)
		}
		if len(into) != 1 {
			t.Errorf("%s: a failed decode added %d nodes", name, len(into)-1)
		}
	}
}

// FuzzDecodePresence: saved presence comes back from the Kubernetes API,
// where anyone with write access can edit it. Whatever it holds, decoding
// never panics, adds nothing unless it all decodes, and what decodes
// encodes back to the same bytes.
func FuzzDecodePresence(f *testing.F) {
	at := time.UnixMilli(1_800_000_000_000)
	f.Add(EncodePresence(Presence{}, at))
	f.Add(EncodePresence(Presence{presenceKey(1): {netip.MustParseAddrPort("192.0.2.1:51820")}, presenceKey(2): nil}, at))
	f.Add(EncodePresence(Presence{presenceKey(3): {netip.MustParseAddrPort("[2001:db8::1]:1")}}, at))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Presence{}
		gotAt, err := DecodePresence(b, got)
		if err != nil {
			if len(got) != 0 {
				t.Fatalf("failed decode added %d nodes", len(got))
			}
			return
		}
		if again := EncodePresence(got, gotAt); !bytes.Equal(again, b) && sortedInput(b) {
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
	}
	return true
}
