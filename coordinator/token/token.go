// Package token checks join tokens against their stored records and makes
// those records. The token's text format is types/jointoken: the secret
// is stored only as SHA-256.
package token

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/jointoken"
)

// Sentinel errors callers test with errors.Is.
var (
	ErrInvalid = errors.New("invalid join token")
	ErrRevoked = errors.New("join token revoked")
	ErrExpired = errors.New("join token expired")
	ErrUsedUp  = errors.New("join token used up")
)

// HashSecret returns the hash stored in place of the secret.
func HashSecret(secret string) [32]byte {
	return sha256.Sum256([]byte(secret))
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
func NewRecord(t jointoken.Token, now time.Time, ttl time.Duration, reusable bool, maxUses int, tags []string) (store.Token, error) {
	switch {
	case ttl < 0:
		return store.Token{}, fmt.Errorf("token ttl %s is negative", ttl)
	case maxUses < 0:
		return store.Token{}, fmt.Errorf("token uses %d is negative", maxUses)
	case reusable && maxUses > 0:
		return store.Token{}, errors.New("--reusable and --uses are exclusive")
	}
	if err := t.Valid(); err != nil {
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
