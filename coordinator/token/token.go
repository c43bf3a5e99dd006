// Package token creates, parses and checks join tokens. A join token lets a
// new node register once (or several times if reusable) and pins the
// coordinator's TLS CA, as kubeadm's discovery hash does, so a fresh host
// can join over TLS with no CA file.
package token

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/edgewire/edgewire/coordinator/store"
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

// Sentinel errors callers test with errors.Is.
var (
	ErrMalformed = errors.New("malformed join token")
	ErrInvalid   = errors.New("invalid join token")
	ErrRevoked   = errors.New("join token revoked")
	ErrExpired   = errors.New("join token expired")
	ErrUsedUp    = errors.New("join token used up")
)

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

// HashSecret returns the hash stored in place of the secret.
func HashSecret(secret string) [32]byte {
	return sha256.Sum256([]byte(secret))
}

// PinCert returns the pin of a CA certificate: sha256 over its
// SubjectPublicKeyInfo, so a CA re-issued with the same key keeps its pin.
func PinCert(cert *x509.Certificate) [32]byte {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}

// Check reports whether secret may join with the stored token st at now.
// A wrong secret is reported first, so a caller without the secret learns
// nothing about the token's state.
func Check(st store.Token, secret string, now time.Time) error {
	h := HashSecret(secret)
	if subtle.ConstantTimeCompare(h[:], st.SecretHash[:]) != 1 {
		return ErrInvalid
	}
	if st.Revoked {
		return ErrRevoked
	}
	if !st.ExpiresAt.IsZero() && !now.Before(st.ExpiresAt) {
		return fmt.Errorf("%w at %s", ErrExpired, st.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if !st.Reusable && st.MaxUses > 0 && st.Uses >= st.MaxUses {
		return fmt.Errorf("%w (%d of %d uses)", ErrUsedUp, st.Uses, st.MaxUses)
	}
	return nil
}

// NewRecord returns the stored form of t. ttl 0 means the token never
// expires. A non-reusable token with maxUses 0 may be used once.
func NewRecord(t Token, now time.Time, ttl time.Duration, reusable bool, maxUses int, tags []string) (store.Token, error) {
	switch {
	case ttl < 0:
		return store.Token{}, fmt.Errorf("token ttl %s is negative", ttl)
	case maxUses < 0:
		return store.Token{}, fmt.Errorf("token uses %d is negative", maxUses)
	case reusable && maxUses > 0:
		return store.Token{}, errors.New("--reusable and --uses are exclusive")
	}
	if err := checkHex("id", t.ID, idLen); err != nil {
		return store.Token{}, err
	}
	if err := checkHex("secret", t.Secret, secretLen); err != nil {
		return store.Token{}, err
	}
	if !reusable && maxUses == 0 {
		maxUses = 1
	}
	rec := store.Token{
		ID:         t.ID,
		SecretHash: HashSecret(t.Secret),
		CreatedAt:  now,
		Reusable:   reusable,
		MaxUses:    maxUses,
		Tags:       append([]string(nil), tags...),
	}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl)
	}
	return rec, nil
}
