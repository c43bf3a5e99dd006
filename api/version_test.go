package api

import (
	"bytes"
	"strings"
	"testing"
)

func TestValidVersion(t *testing.T) {
	long := strings.Repeat("v", MaxVersionLen)
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"", true},
		{"dev", true},
		{"v0.4.1-12-g3f2a9c1-dirty", true},
		{"v1.2.3+incompatible", true},
		{long, true},
		{long + "v", false},
		{"v1 beta", false},
		{"v1\n", false},
		{"v1\x1b[31m", false},
		{"v1\x7f", false},
		{"v1é", false},
	} {
		if got := ValidVersion(tc.v); got != tc.want {
			t.Errorf("ValidVersion(%q): got %v, want %v", tc.v, got, tc.want)
		}
	}
}

// TestVersionInDigest: the version is part of a node's map entry, so the
// digest covers it: an agent holding a map with another version of a
// node holds another map.
func TestVersionInDigest(t *testing.T) {
	n := &Node{PublicKey: bytes.Repeat([]byte{7}, 32), Name: "n", Version: "v1.0.0"}
	m := &Node{PublicKey: bytes.Repeat([]byte{7}, 32), Name: "n", Version: "v1.0.1"}
	if HashNode(n) == HashNode(m) {
		t.Errorf("nodes differing only in version hash alike: %x", HashNode(n))
	}
}
