// Package jointoken is the join token's text format and the trust a
// joining node puts in the coordinator: the token pins the coordinator
// CA's key (as kubeadm's discovery hash does), so a fresh host can join
// over TLS with no CA file, and later connections verify the CA saved at
// join. Both the coordinator (which issues tokens) and agents (which
// present them) import it; the stored record and its checks stay in the
// coordinator (coordinator/token).
package jointoken

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Token text format, version 1:
//
//	ewt1.<id>.<secret>.<pin>
//
//	ewt1    prefix: "edgewire token", format version 1
//	id      8 lowercase hex chars (4 random bytes); public, the store key
//	secret  32 lowercase hex chars (16 random bytes); only its SHA-256 is stored
//	pin     43 chars, base64 raw-URL (no padding) of SHA-256 over the
//	        coordinator CA certificate's RawSubjectPublicKeyInfo
const (
	prefix    = "ewt1"
	idBytes   = 4
	secBytes  = 16
	idLen     = 2 * idBytes  // hex
	secretLen = 2 * secBytes // hex
	pinLen    = 43           // base64.RawURLEncoding.EncodedLen(32)
)

var pinEncoding = base64.RawURLEncoding.Strict()

// ErrMalformed wraps every error Parse and Valid return.
var ErrMalformed = errors.New("malformed join token")

// Token is a parsed join token.
type Token struct {
	ID     string   // 8 lowercase hex chars
	Secret string   // 32 lowercase hex chars
	CAPin  [32]byte // sha256 of the CA's SubjectPublicKeyInfo
}

// Generate makes a token with a fresh ID and secret read from rand
// (normally crypto/rand.Reader).
func Generate(caPin [32]byte, rand io.Reader) (Token, error) {
	var b [idBytes + secBytes]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return Token{}, fmt.Errorf("generate join token: %w", err)
	}
	return Token{
		ID:     hex.EncodeToString(b[:idBytes]),
		Secret: hex.EncodeToString(b[idBytes:]),
		CAPin:  caPin,
	}, nil
}

// String returns the token in its text format.
func (t Token) String() string {
	return prefix + "." + t.ID + "." + t.Secret + "." + FormatPin(t.CAPin)
}

// FormatPin returns a CA pin as it appears in a token (43 chars of
// unpadded base64url), for logs and operator output.
func FormatPin(pin [32]byte) string {
	return pinEncoding.EncodeToString(pin[:])
}

// Parse parses a token in text format, ignoring surrounding whitespace.
// Errors wrap ErrMalformed and never echo the secret.
func Parse(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 {
		return Token{}, fmt.Errorf("%w: got %d dot-separated parts, want 4 (%s.<id>.<secret>.<pin>)", ErrMalformed, len(parts), prefix)
	}
	if parts[0] != prefix {
		return Token{}, fmt.Errorf("%w: prefix is not %q", ErrMalformed, prefix)
	}
	t := Token{ID: parts[1], Secret: parts[2]}
	if err := checkHex("id", t.ID, idLen); err != nil {
		return Token{}, err
	}
	if err := checkHex("secret", t.Secret, secretLen); err != nil {
		return Token{}, err
	}
	if len(parts[3]) != pinLen {
		return Token{}, fmt.Errorf("%w: CA pin is %d chars, want %d", ErrMalformed, len(parts[3]), pinLen)
	}
	pin, err := pinEncoding.DecodeString(parts[3])
	if err != nil || len(pin) != len(t.CAPin) {
		return Token{}, fmt.Errorf("%w: CA pin is not %d bytes of unpadded base64url", ErrMalformed, len(t.CAPin))
	}
	copy(t.CAPin[:], pin)
	return t, nil
}

// checkHex reports whether s is n lowercase hex chars.
func checkHex(what, s string, n int) error {
	if len(s) != n {
		return fmt.Errorf("%w: %s is %d chars, want %d", ErrMalformed, what, len(s), n)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: %s must be lowercase hex", ErrMalformed, what)
		}
	}
	return nil
}

// PinCert returns the pin of a CA certificate: sha256 over its
// SubjectPublicKeyInfo, so a CA re-issued with the same key keeps its pin.
func PinCert(cert *x509.Certificate) [32]byte {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}

// Valid reports whether t's ID and secret have the token format.
func (t Token) Valid() error {
	if err := checkHex("id", t.ID, idLen); err != nil {
		return err
	}
	return checkHex("secret", t.Secret, secretLen)
}
