package relay

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// A ticket is the coordinator's word that a node may use the relays until
// it expires. Relays verify it offline with the coordinator's Ed25519 key.
//
//	version (1) | node public key (32) | expiry, unix seconds (8, BE) | Ed25519 signature (64)
//
// The signature covers ticketContext || the first 41 bytes.
const (
	ticketVersion = 1
	ticketBodyLen = 1 + 32 + 8
	// TicketLen is the length of an encoded ticket.
	TicketLen     = ticketBodyLen + ed25519.SignatureSize
	ticketContext = "edgewire-relay-ticket-v1"
	// MaxTicketTTL is the longest lifetime a relay accepts: a ticket
	// expiring later is refused, so a deleted node's saved ticket outlives
	// the revocations of relays that never hear of the deletion by at most
	// this. Coordinators must issue tickets of at most this lifetime.
	MaxTicketTTL = time.Hour
	// ticketClockSkew is how much later than MaxTicketTTL from now a
	// ticket may expire, for a coordinator clock ahead of the relay's.
	ticketClockSkew = time.Minute
)

var (
	// ErrTicketInvalid means a ticket has the wrong length or version or
	// a bad signature.
	ErrTicketInvalid = errors.New("relay ticket invalid")
	// ErrTicketExpired means a well-signed ticket is past its expiry.
	ErrTicketExpired = errors.New("relay ticket expired")
)

// Ticket is the content of a relay ticket.
type Ticket struct {
	Node    key.Public // node public key the ticket is for
	Expires time.Time  // second precision on the wire
}

// SignTicket encodes and signs t with the coordinator key priv (which must
// be a valid Ed25519 private key).
func SignTicket(priv ed25519.PrivateKey, t Ticket) []byte {
	b := make([]byte, ticketBodyLen, TicketLen)
	b[0] = ticketVersion
	copy(b[1:33], t.Node[:])
	binary.BigEndian.PutUint64(b[33:41], uint64(t.Expires.Unix()))
	return append(b, ed25519.Sign(priv, ticketMessage(b))...)
}

// VerifyTicket checks b against the coordinator key pub and returns its
// content. A ticket expiring more than MaxTicketTTL (plus a minute of
// clock skew) after now is invalid. Errors wrap ErrTicketInvalid or
// ErrTicketExpired.
func VerifyTicket(pub ed25519.PublicKey, b []byte, now time.Time) (Ticket, error) {
	if len(pub) != ed25519.PublicKeySize {
		return Ticket{}, fmt.Errorf("%w: verification key is %d bytes, want %d", ErrTicketInvalid, len(pub), ed25519.PublicKeySize)
	}
	if len(b) != TicketLen {
		return Ticket{}, fmt.Errorf("%w: %d bytes, want %d", ErrTicketInvalid, len(b), TicketLen)
	}
	if b[0] != ticketVersion {
		return Ticket{}, fmt.Errorf("%w: version %d, want %d", ErrTicketInvalid, b[0], ticketVersion)
	}
	if !ed25519.Verify(pub, ticketMessage(b[:ticketBodyLen]), b[ticketBodyLen:]) {
		return Ticket{}, fmt.Errorf("%w: bad signature", ErrTicketInvalid)
	}
	var t Ticket
	copy(t.Node[:], b[1:33])
	exp := binary.BigEndian.Uint64(b[33:41])
	if exp > maxUnix {
		return Ticket{}, fmt.Errorf("%w: expiry %d out of range", ErrTicketInvalid, exp)
	}
	t.Expires = time.Unix(int64(exp), 0)
	if !now.Before(t.Expires) {
		return t, fmt.Errorf("%w: at %s", ErrTicketExpired, t.Expires.UTC().Format(time.RFC3339))
	}
	if t.Expires.After(now.Add(MaxTicketTTL + ticketClockSkew)) {
		return t, fmt.Errorf("%w: expires %s, more than %v ahead", ErrTicketInvalid, t.Expires.UTC().Format(time.RFC3339), MaxTicketTTL)
	}
	return t, nil
}

func ticketMessage(body []byte) []byte {
	m := make([]byte, 0, len(ticketContext)+len(body))
	return append(append(m, ticketContext...), body...)
}
