package svcfwd

import (
	"bytes"
	"testing"
)

// FuzzParseRequest: any bytes a peer sends parse or are refused; what
// parses encodes back to the same bytes.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("EWF1\x06\x04\xac\x11\x00\x02\x1f\x90"))
	f.Add([]byte("EWF1\x11\x04\xc0\xa8\x01\x0a\x00\x35"))
	f.Add([]byte("EWF1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		out, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatalf("parsed %v does not encode: %v", r, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("%x parsed as %v encodes as %x", b, r, out)
		}
	})
}

// FuzzReadFrame: any stream of frames reads without panic and never
// returns more than a datagram.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 1, 'x', 0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		buf := make([]byte, MaxDatagram)
		for range 1000 {
			p, err := ReadFrame(r, buf)
			if err != nil {
				return
			}
			if len(p) > MaxDatagram {
				t.Fatalf("frame of %d", len(p))
			}
		}
	})
}
