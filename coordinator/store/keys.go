package store

import (
	"encoding/base64"
	"fmt"
)

// String returns the key in standard base64, as wg(8) shows keys.
func (k NodeKey) String() string {
	return base64.StdEncoding.EncodeToString(k[:])
}

// ParseNodeKey parses a key in standard base64 (44 characters).
func ParseNodeKey(s string) (NodeKey, error) {
	var k NodeKey
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("parse node key %q: %w", s, err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("parse node key %q: got %d bytes, want %d", s, len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

// MarshalText implements encoding.TextMarshaler so keys read well in JSON.
func (k NodeKey) MarshalText() ([]byte, error) {
	return []byte(k.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *NodeKey) UnmarshalText(b []byte) error {
	p, err := ParseNodeKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}
