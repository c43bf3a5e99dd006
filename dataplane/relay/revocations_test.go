package relay

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRevocationsFormat(t *testing.T) {
	pub, priv := testTicketKey(1)
	otherPub, otherPriv := testTicketKey(2)
	now := time.Unix(1_800_000_000, 0)
	want := Revocations{Issued: now, Entries: []Revocation{
		{Node: Key{1}, Until: now.Add(time.Hour)},
		{Node: Key{2}, Until: now.Add(time.Minute)},
	}}
	good := SignRevocations(priv, want)
	tamper := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 1
		return b
	}
	// resign signs a body as the coordinator would, whatever it says.
	resign := func(body []byte) []byte {
		return append(append([]byte(nil), body...), ed25519.Sign(priv, body)...)
	}
	body := good[:len(good)-ed25519.SignatureSize]
	withCount := func(n uint16) []byte {
		b := append([]byte(nil), body...)
		binary.BigEndian.PutUint16(b[len(revocationsMagic)+8:], n)
		return resign(b)
	}
	tooMany := make([]byte, revocationsHead, revocationsHead+(MaxRevocations+1)*revocationLen)
	copy(tooMany, body[:revocationsHead])
	binary.BigEndian.PutUint16(tooMany[len(revocationsMagic)+8:], MaxRevocations+1)
	tooMany = resign(append(tooMany, make([]byte, (MaxRevocations+1)*revocationLen)...))
	farUntil := append([]byte(nil), body...)
	binary.BigEndian.PutUint64(farUntil[revocationsHead+32:], 1<<63)
	farIssued := append([]byte(nil), body...)
	binary.BigEndian.PutUint64(farIssued[len(revocationsMagic):], 1<<63)
	tests := []struct {
		name string
		pub  ed25519.PublicKey
		b    []byte
		ok   bool
	}{
		{"good", pub, good, true},
		{"empty list", pub, SignRevocations(priv, Revocations{Issued: now}), true},
		{"other coordinator", otherPub, good, false},
		{"signed by another key", pub, SignRevocations(otherPriv, want), false},
		{"short verification key", pub[:31], good, false},
		{"tampered magic", pub, tamper(0), false},
		{"tampered issue time", pub, tamper(len(revocationsMagic) + 7), false},
		{"tampered node", pub, tamper(revocationsHead), false},
		{"tampered until", pub, tamper(revocationsHead + 39), false},
		{"tampered signature", pub, tamper(len(good) - 1), false},
		{"count says fewer, well signed", pub, withCount(1), false},
		{"count says more, well signed", pub, withCount(3), false},
		{"count over the max, well signed", pub, tooMany, false},
		{"until out of range, well signed", pub, resign(farUntil), false},
		{"issued out of range, well signed", pub, resign(farIssued), false},
		{"truncated", pub, good[:len(good)-1], false},
		{"trailing byte", pub, append(append([]byte(nil), good...), 0), false},
		{"a ticket", pub, SignTicket(priv, Ticket{Node: Key{1}, Expires: now}), false},
		{"empty", pub, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifyRevocations(tt.pub, tt.b)
			if tt.ok != (err == nil) {
				t.Fatalf("got error %v, want ok %v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrRevocationsInvalid) {
					t.Fatalf("error %v does not wrap ErrRevocationsInvalid", err)
				}
				return
			}
			if tt.name == "good" && fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

// TestSignRevocationsBound: a list over MaxRevocations keeps the entries
// that end last, and relays accept it.
func TestSignRevocationsBound(t *testing.T) {
	pub, priv := testTicketKey(1)
	now := time.Unix(1_800_000_000, 0)
	r := Revocations{Issued: now}
	for i := range MaxRevocations + 10 {
		r.Entries = append(r.Entries, Revocation{Node: Key{byte(i), byte(i >> 8)}, Until: now.Add(time.Duration(i) * time.Second)})
	}
	b := SignRevocations(priv, r)
	if len(b) > maxRevocationsLen {
		t.Fatalf("signed list is %d bytes, max %d", len(b), maxRevocationsLen)
	}
	got, err := VerifyRevocations(pub, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != MaxRevocations {
		t.Fatalf("got %d entries, want %d", len(got.Entries), MaxRevocations)
	}
	for _, e := range got.Entries {
		if e.Until.Before(now.Add(10 * time.Second)) {
			t.Fatalf("kept entry until %v, one of the 10 that end first", e.Until)
		}
	}
}

func FuzzVerifyRevocations(f *testing.F) {
	pub, priv := testTicketKey(1)
	now := time.Unix(1_800_000_000, 0)
	f.Add(SignRevocations(priv, Revocations{Issued: now}))
	f.Add(SignRevocations(priv, Revocations{Issued: now, Entries: []Revocation{{Node: Key{1}, Until: now.Add(time.Hour)}}}))
	f.Add([]byte(revocationsMagic + "\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff"))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := VerifyRevocations(pub, b)
		if err != nil {
			if !errors.Is(err, ErrRevocationsInvalid) {
				t.Fatalf("error %v does not wrap ErrRevocationsInvalid", err)
			}
			return
		}
		// Only a real signature passes; re-signing must reproduce it.
		if again := SignRevocations(priv, r); string(again) != string(b) {
			t.Fatalf("accepted %x, which is not the canonical signed list %x", b, again)
		}
		if len(r.Entries) > MaxRevocations {
			t.Fatalf("accepted %d entries, max %d", len(r.Entries), MaxRevocations)
		}
	})
}
