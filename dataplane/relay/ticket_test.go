package relay

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"
)

func TestTicket(t *testing.T) {
	pub, priv := testTicketKey(1)
	otherPub, _ := testTicketKey(2)
	now := time.Unix(1_800_000_000, 0)
	node := Key{1, 2, 3}
	good := SignTicket(priv, Ticket{Node: node, Expires: now.Add(time.Hour)})
	tamper := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name string
		pub  ed25519.PublicKey
		b    []byte
		now  time.Time
		want error
	}{
		{"good", pub, good, now, nil},
		{"good until the last second", pub, good, now.Add(time.Hour - time.Second), nil},
		{"expired at expiry", pub, good, now.Add(time.Hour), ErrTicketExpired},
		{"expired after", pub, good, now.Add(2 * time.Hour), ErrTicketExpired},
		{"wrong key", otherPub, good, now, ErrTicketInvalid},
		{"short verification key", pub[:31], good, now, ErrTicketInvalid},
		{"tampered version", pub, tamper(0), now, ErrTicketInvalid},
		{"tampered node", pub, tamper(5), now, ErrTicketInvalid},
		{"tampered expiry", pub, tamper(40), now, ErrTicketInvalid},
		{"tampered signature", pub, tamper(TicketLen - 1), now, ErrTicketInvalid},
		{"short", pub, good[:TicketLen-1], now, ErrTicketInvalid},
		{"long", pub, append(append([]byte(nil), good...), 0), now, ErrTicketInvalid},
		{"empty", pub, nil, now, ErrTicketInvalid},
		{"version 2, well signed", pub, signVersion(priv, 2, node, now.Add(time.Hour)), now, ErrTicketInvalid},
		{"good at the longest lifetime", pub, good, now.Add(time.Hour - MaxTicketTTL - ticketClockSkew), nil},
		{"lifetime beyond MaxTicketTTL", pub, good, now.Add(time.Hour - MaxTicketTTL - ticketClockSkew - time.Second), ErrTicketInvalid},
		{"a year ahead", pub, SignTicket(priv, Ticket{Node: node, Expires: now.Add(365 * 24 * time.Hour)}), now, ErrTicketInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyTicket(tt.pub, tt.b, tt.now)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
			if err == nil && (got.Node != node || !got.Expires.Equal(now.Add(time.Hour))) {
				// every accepted case above is the one-hour ticket
				t.Errorf("got %x until %v, want %x until %v", got.Node, got.Expires, node, now.Add(time.Hour))
			}
		})
	}
}

// signVersion signs a ticket body with an arbitrary version byte.
func signVersion(priv ed25519.PrivateKey, v byte, node Key, exp time.Time) []byte {
	b := SignTicket(priv, Ticket{Node: node, Expires: exp})
	b[0] = v
	return append(b[:ticketBodyLen], ed25519.Sign(priv, ticketMessage(b[:ticketBodyLen]))...)
}

func testTicketKey(seed byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	s := make([]byte, ed25519.SeedSize)
	s[0] = seed
	priv := ed25519.NewKeyFromSeed(s)
	return priv.Public().(ed25519.PublicKey), priv
}

func FuzzVerifyTicket(f *testing.F) {
	pub, priv := testTicketKey(1)
	now := time.Unix(1_800_000_000, 0)
	f.Add(SignTicket(priv, Ticket{Node: Key{9}, Expires: now.Add(time.Hour)}))
	f.Add(SignTicket(priv, Ticket{Node: Key{9}, Expires: now.Add(-time.Hour)}))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		tk, err := VerifyTicket(pub, b, now)
		if err == nil {
			// Only a real signature passes; re-signing must reproduce it.
			if again := SignTicket(priv, tk); string(again) != string(b) {
				t.Fatalf("accepted %x, which is not the canonical signed ticket %x", b, again)
			}
			return
		}
		if !errors.Is(err, ErrTicketInvalid) && !errors.Is(err, ErrTicketExpired) {
			t.Fatalf("error %v wraps neither sentinel", err)
		}
	})
}
