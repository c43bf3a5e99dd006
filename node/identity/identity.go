// Package identity keeps what makes an agent the same node across
// restarts: its WireGuard private key (generated on the node, mode 0600,
// never sent anywhere) and its enrolment with a coordinator (address,
// pinned CA, node name), all in the agent's state dir.
package identity

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"

	"github.com/edgewire/edgewire/internal/atomicfile"
)

const (
	keyFile        = "private.key"
	enrolmentFile  = "enrolment.json"
	enrolmentV1    = 1
	NetworkMapFile = "netmap.pb"
)

// Key is a Curve25519 private or public key.
type Key [32]byte

// String encodes k in base64, as wg(8) does.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey parses a base64 key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return k, fmt.Errorf("key is not base64: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("key is %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

// Public returns the public key of private key k.
func (k Key) Public() Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// LoadOrCreateKey returns the node's private key in dir, creating it on
// first use.
func LoadOrCreateKey(dir string) (Key, error) {
	return LoadOrCreateKeyFile(filepath.Join(dir, keyFile))
}

// LoadOrCreateKeyFile returns the Curve25519 private key in path (base64,
// as wg(8) writes it), creating it with mode 0600 on first use.
func LoadOrCreateKeyFile(path string) (Key, error) {
	dir := filepath.Dir(path)
	b, err := os.ReadFile(path)
	if err == nil {
		st, err := os.Stat(path)
		if err == nil && st.Mode().Perm()&0o077 != 0 {
			return Key{}, fmt.Errorf("private key %s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
		}
		k, err := ParseKey(string(b))
		if err != nil {
			return Key{}, fmt.Errorf("private key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return Key{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Key{}, err
	}
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, err
	}
	// Clamp as WireGuard does, so `wg` shows the same key we use.
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	if err := atomicfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return Key{}, fmt.Errorf("write private key: %w", err)
	}
	return k, nil
}

// Enrolment records a successful join.
type Enrolment struct {
	Version     int    `json:"v"`
	Coordinator string `json:"coordinator"` // host:port
	ServerName  string `json:"server_name"` // TLS name to verify
	CAPEM       string `json:"ca_pem"`      // CA the token pinned
	Name        string `json:"name"`        // node name as registered
}

// ErrNotEnrolled means the agent has not joined a coordinator yet.
var ErrNotEnrolled = errors.New("not joined to a coordinator yet (run `edgewire-agent join` or pass --token)")

// LoadEnrolment reads the enrolment in dir.
func LoadEnrolment(dir string) (Enrolment, error) {
	var e Enrolment
	b, err := os.ReadFile(filepath.Join(dir, enrolmentFile))
	if errors.Is(err, os.ErrNotExist) {
		return e, ErrNotEnrolled
	}
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("parse %s: %w", enrolmentFile, err)
	}
	if e.Version != enrolmentV1 {
		return e, fmt.Errorf("%s has version %d, this agent understands %d", enrolmentFile, e.Version, enrolmentV1)
	}
	if e.Coordinator == "" || e.CAPEM == "" {
		return e, fmt.Errorf("%s is incomplete", enrolmentFile)
	}
	return e, nil
}

// SaveEnrolment writes e to dir.
func SaveEnrolment(dir string, e Enrolment) error {
	e.Version = enrolmentV1
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, enrolmentFile), append(b, '\n'), 0o600)
}
