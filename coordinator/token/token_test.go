package token

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/jointoken"
)

const (
	goodID     = "0a1b2c3d"
	goodSecret = "00112233445566778899aabbccddeeff"
)

var (
	goodPin    = [32]byte{0: 0xfb, 31: 0x01}
	goodPinStr = jointoken.FormatPin(goodPin)
	good       = "ewt1." + goodID + "." + goodSecret + "." + goodPinStr
)

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	base := store.Token{ID: goodID, SecretHash: HashSecret(goodSecret), MaxUses: 1}
	with := func(f func(*store.Token)) store.Token { st := base; f(&st); return st }
	tests := []struct {
		name    string
		st      store.Token
		secret  string
		wantErr error
		wantMsg string
	}{
		{"ok", base, goodSecret, nil, ""},
		{"wrong secret", base, strings.Repeat("0", 32), ErrInvalid, "invalid join token"},
		{"wrong secret hides revoked", with(func(s *store.Token) { s.Revoked = true }), "x", ErrInvalid, ""},
		{"revoked", with(func(s *store.Token) { s.Revoked = true }), goodSecret, ErrRevoked, "revoked"},
		{"revoked before expired", with(func(s *store.Token) { s.Revoked = true; s.ExpiresAt = now }), goodSecret, ErrRevoked, ""},
		{"expired at now", with(func(s *store.Token) { s.ExpiresAt = now }), goodSecret, ErrExpired, "join token expired at 2026-11-25T10:00:00Z"},
		{"not yet expired", with(func(s *store.Token) { s.ExpiresAt = now.Add(time.Second) }), goodSecret, nil, ""},
		{"expired before used up", with(func(s *store.Token) { s.ExpiresAt = now; s.Uses = 1 }), goodSecret, ErrExpired, ""},
		{"used up", with(func(s *store.Token) { s.Uses = 1 }), goodSecret, ErrUsedUp, "1 of 1 uses"},
		{"uses left", with(func(s *store.Token) { s.MaxUses = 3; s.Uses = 2 }), goodSecret, nil, ""},
		{"reusable ignores uses", with(func(s *store.Token) { s.Reusable = true; s.Uses = 100 }), goodSecret, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.st, tt.secret, now)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got message %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestNewRecord(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := jointoken.Token{ID: goodID, Secret: goodSecret, CAPin: goodPin}
	tests := []struct {
		name     string
		tok      jointoken.Token
		ttl      time.Duration
		reusable bool
		uses     int
		want     store.Token
		wantErr  string
	}{
		{"single use default", tok, time.Hour, false, 0,
			store.Token{ID: goodID, SecretHash: HashSecret(goodSecret), CreatedAt: now, ExpiresAt: now.Add(time.Hour), MaxUses: 1, Tags: []string{"t"}}, ""},
		{"never expires", tok, 0, false, 5,
			store.Token{ID: goodID, SecretHash: HashSecret(goodSecret), CreatedAt: now, MaxUses: 5, Tags: []string{"t"}}, ""},
		{"reusable", tok, time.Minute, true, 0,
			store.Token{ID: goodID, SecretHash: HashSecret(goodSecret), CreatedAt: now, ExpiresAt: now.Add(time.Minute), Reusable: true, Tags: []string{"t"}}, ""},
		{"negative ttl", tok, -time.Second, false, 0, store.Token{}, "negative"},
		{"negative uses", tok, 0, false, -1, store.Token{}, "negative"},
		{"reusable with uses", tok, 0, true, 2, store.Token{}, "--reusable and --uses are exclusive"},
		{"bad id", jointoken.Token{ID: "xyz", Secret: goodSecret}, 0, false, 0, store.Token{}, "id is 3 chars"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tags := []string{"t"}
			got, err := NewRecord(tt.tok, now, tt.ttl, tt.reusable, tt.uses, tags)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			tags[0] = "mutated"
			if got.Tags[0] != "t" {
				t.Errorf("record shares the caller's tags slice")
			}
			if err := Check(got, tt.tok.Secret, now); err != nil {
				t.Errorf("Check on fresh record: got %v, want nil", err)
			}
		})
	}
}
