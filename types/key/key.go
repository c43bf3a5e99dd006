// Package key is the one type for a node's (or relay's) Curve25519 keys,
// shared by the agent, the coordinator, the relay and the data plane.
//
// A public key prints in two forms: String, the full base64 that wg(8)
// shows, and Short, its first 8 characters, which every log line uses
// (through slog's LogValuer), so one peer can be followed through the
// coordinator's, the relays' and the agents' logs with one grep, and
// found in wg(8)'s output as a prefix. Named adds the node's name. A
// private key never prints.
package key

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"

	"github.com/edgewire/edgewire/internal/atomicfile"
)

// Size is the size of a key in bytes.
const Size = 32

// Public is a Curve25519 public key.
type Public [Size]byte

// Private is a Curve25519 private key.
type Private [Size]byte

// String is the key in base64, as wg(8) prints it.
func (k Public) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// shortLen is how much of the base64 form Short keeps: 48 bits, unique
// enough to tell a fleet's nodes apart in logs.
const shortLen = 8

// Short is the key's log form: the first 8 characters of String.
func (k Public) Short() string { return k.String()[:shortLen] }

// LogValue makes slog print the short form.
func (k Public) LogValue() slog.Value { return slog.StringValue(k.Short()) }

// Named is a node's key with the node's name: how a log line names a
// peer. slog prints it as the group {name, key} ("peer.name=n2
// peer.key=AbCdEfGh" in text); the name is left out when unknown.
type Named struct {
	Name string
	Key  Public
}

// LogValue makes slog print the group {name, key}.
func (n Named) LogValue() slog.Value {
	if n.Name == "" {
		return slog.GroupValue(slog.Any("key", n.Key))
	}
	return slog.GroupValue(slog.String("name", n.Name), slog.Any("key", n.Key))
}

// IsZero reports whether k is all zeros (no key).
func (k Public) IsZero() bool { return k == Public{} }

// MarshalText encodes k as String (JSON, flags).
func (k Public) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses String's form.
func (k *Public) UnmarshalText(b []byte) error {
	p, err := ParsePublic(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ParsePublic parses a base64 public key.
func ParsePublic(s string) (Public, error) {
	var k Public
	err := parse(s, k[:])
	return k, err
}

// PublicFromBytes returns the key in b, which must be Size bytes long.
func PublicFromBytes(b []byte) (Public, error) {
	var k Public
	if len(b) != Size {
		return k, fmt.Errorf("key is %d bytes, want %d", len(b), Size)
	}
	copy(k[:], b)
	return k, nil
}

// Public returns the public key of k.
func (k Private) Public() Public {
	var pub Public
	curve25519.ScalarBaseMult((*[Size]byte)(&pub), (*[Size]byte)(&k))
	return pub
}

// String never shows the key.
func (k Private) String() string { return "(private key)" }

// LogValue never shows the key.
func (k Private) LogValue() slog.Value { return slog.StringValue(k.String()) }

// NewPrivate returns a fresh random private key.
func NewPrivate() (Private, error) {
	var k Private
	if _, err := rand.Read(k[:]); err != nil {
		return k, err
	}
	// Clamp as wg(8) does, so the file reads the same to wg.
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// ParsePrivate parses a base64 private key.
func ParsePrivate(s string) (Private, error) {
	var k Private
	err := parse(s, k[:])
	return k, err
}

func parse(s string, dst []byte) error {
	b, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("key is not base64: %w", err)
	}
	if len(b) != len(dst) {
		return fmt.Errorf("key is %d bytes, want %d", len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

// LoadOrCreatePrivateFile returns the private key in path (base64, as
// wg(8) writes it), creating it with mode 0600 on first use. A key file
// others may read is refused.
func LoadOrCreatePrivateFile(path string) (Private, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		st, err := os.Stat(path)
		if err == nil && st.Mode().Perm()&0o077 != 0 {
			return Private{}, fmt.Errorf("private key %s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
		}
		k, err := ParsePrivate(string(b))
		if err != nil {
			return Private{}, fmt.Errorf("private key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return Private{}, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Private{}, err
	}
	k, err := NewPrivate()
	if err != nil {
		return Private{}, err
	}
	if err := atomicfile.Write(path, []byte(base64.StdEncoding.EncodeToString(k[:])+"\n"), 0o600); err != nil {
		return Private{}, fmt.Errorf("write private key %s: %w", path, err)
	}
	return k, nil
}
