package bind

import (
	"encoding/binary"
	"testing"
)

func wg(typ byte, n int) []byte {
	b := make([]byte, n)
	b[0] = typ
	return b
}

func stunMsg(attrLen int) []byte {
	b := make([]byte, stunHeaderSize+attrLen)
	binary.BigEndian.PutUint16(b[0:2], 0x0001) // binding request
	binary.BigEndian.PutUint16(b[2:4], uint16(attrLen))
	binary.BigEndian.PutUint32(b[4:8], stunCookie)
	return b
}

func TestClassify(t *testing.T) {
	badCookie := stunMsg(8)
	badCookie[7] ^= 1
	badLen := stunMsg(8)
	badLen[3] = 12
	topBits := stunMsg(0)
	topBits[0] |= 0x80
	reserved := wg(4, 32)
	reserved[2] = 1
	for _, tc := range []struct {
		name string
		b    []byte
		want Class
	}{
		{"initiation", wg(1, 148), WireGuard},
		{"initiation wrong size", wg(1, 149), Other},
		{"response", wg(2, 92), WireGuard},
		{"response wrong size", wg(2, 148), Other},
		{"cookie reply", wg(3, 64), WireGuard},
		{"keepalive", wg(4, 32), WireGuard},
		{"transport", wg(4, 32+16*80), WireGuard},
		// MTU 1420 is not a multiple of 16: a full packet's padding stops
		// at the MTU, 16 + 1420 + 16 = 1452 bytes. Dropping it broke TCP.
		{"transport padded to an MTU that is not a multiple of 16", wg(4, 1452), WireGuard},
		{"transport short", wg(4, 16), Other},
		{"type 5", wg(5, 148), Other},
		{"type 0", wg(0, 148), Other},
		{"reserved byte set", reserved, Other},
		{"stun", stunMsg(0), STUN},
		{"stun with attributes", stunMsg(24), STUN},
		{"stun bad cookie", badCookie, Other},
		{"stun length mismatch", badLen, Other},
		{"stun top bits", topBits, Other},
		{"stun truncated", stunMsg(8)[:24], Other},
		{"empty", nil, Other},
		{"short", []byte{1, 0, 0}, Other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.b); got != tc.want {
				t.Errorf("Classify: got %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(wg(1, 148))
	f.Add(wg(4, 48))
	f.Add(stunMsg(8))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Classify(b)
		switch c {
		case WireGuard:
			if b[0] < 1 || b[0] > 4 || b[1]|b[2]|b[3] != 0 {
				t.Fatalf("WireGuard class for header %x", b[:4])
			}
		case STUN:
			if len(b) < stunHeaderSize || binary.BigEndian.Uint32(b[4:8]) != stunCookie {
				t.Fatalf("STUN class without a STUN header: %x", b)
			}
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	p := wg(4, 1440)
	b.ReportAllocs()
	for b.Loop() {
		if Classify(p) != WireGuard {
			b.Fatal("misclassified")
		}
	}
}
