package relay

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
)

// A revocation list is the coordinator's word that nodes it deleted must
// be refused until their last ticket has expired. Agents carry it to
// their relay (frameRevocations), so it reaches relays that are not
// meshed with the coordinator's. It is signed with the ticket key:
//
//	"EWREVOK1" (8) | issued, unix seconds (8, BE) | count (2, BE) |
//	count × (node public key (32) | until, unix seconds (8, BE)) |
//	Ed25519 signature (64) over everything before it
//
// A relay applies a list only when it was issued after the newest it
// applied, so replaying an old list changes nothing.
const (
	revocationsMagic = "EWREVOK1"
	revocationsHead  = len(revocationsMagic) + 8 + 2
	revocationLen    = 32 + 8
	// MaxRevocations bounds a list's entries. Entries are needed only
	// until the deleted node's last ticket expires (at most MaxTicketTTL
	// after the deletion), so this is the deletions of an hour.
	MaxRevocations    = 4096
	maxRevocationsLen = revocationsHead + MaxRevocations*revocationLen + ed25519.SignatureSize
	// maxUnix bounds times on the wire (as tickets do), so none overflows
	// time.Time arithmetic.
	maxUnix = 1 << 62
)

// ErrRevocationsInvalid means a revocation list is malformed or not
// signed by the coordinator.
var ErrRevocationsInvalid = errors.New("relay revocation list invalid")

// Revocations is the content of a revocation list.
type Revocations struct {
	Issued  time.Time // second precision on the wire; a relay applies only lists newer than the last
	Entries []Revocation
}

// Revocation refuses one node.
type Revocation struct {
	Node  Key
	Until time.Time // refused until then; second precision on the wire
}

// SignRevocations encodes and signs r with the coordinator's ticket key
// priv (a valid Ed25519 private key). A list longer than MaxRevocations
// keeps the entries that end last; those it leaves out end sooner.
// Relays apply a list only if it was issued after the last one they
// applied, at second precision: each list must be issued at least a
// second after the previous one, and carry every entry still in force.
func SignRevocations(priv ed25519.PrivateKey, r Revocations) []byte {
	es := r.Entries
	if len(es) > MaxRevocations {
		es = slices.Clone(es)
		slices.SortStableFunc(es, func(a, b Revocation) int { return b.Until.Compare(a.Until) })
		es = es[:MaxRevocations]
	}
	b := make([]byte, 0, revocationsHead+len(es)*revocationLen+ed25519.SignatureSize)
	b = append(b, revocationsMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Issued.Unix()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(es)))
	for _, e := range es {
		b = append(b, e.Node[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(e.Until.Unix()))
	}
	return append(b, ed25519.Sign(priv, b)...)
}

// VerifyRevocations checks b against the coordinator's ticket key pub and
// returns its content. Errors wrap ErrRevocationsInvalid.
func VerifyRevocations(pub ed25519.PublicKey, b []byte) (Revocations, error) {
	if len(pub) != ed25519.PublicKeySize {
		return Revocations{}, fmt.Errorf("%w: verification key is %d bytes, want %d", ErrRevocationsInvalid, len(pub), ed25519.PublicKeySize)
	}
	if len(b) < revocationsHead+ed25519.SignatureSize || string(b[:len(revocationsMagic)]) != revocationsMagic {
		return Revocations{}, fmt.Errorf("%w: not a revocation list (%d bytes)", ErrRevocationsInvalid, len(b))
	}
	n := int(binary.BigEndian.Uint16(b[len(revocationsMagic)+8:]))
	if n > MaxRevocations {
		return Revocations{}, fmt.Errorf("%w: %d entries, max %d", ErrRevocationsInvalid, n, MaxRevocations)
	}
	if want := revocationsHead + n*revocationLen + ed25519.SignatureSize; len(b) != want {
		return Revocations{}, fmt.Errorf("%w: %d bytes for %d entries, want %d", ErrRevocationsInvalid, len(b), n, want)
	}
	body := b[:len(b)-ed25519.SignatureSize]
	if !ed25519.Verify(pub, body, b[len(body):]) {
		return Revocations{}, fmt.Errorf("%w: bad signature", ErrRevocationsInvalid)
	}
	issued := binary.BigEndian.Uint64(b[len(revocationsMagic):])
	if issued > maxUnix {
		return Revocations{}, fmt.Errorf("%w: issue time %d out of range", ErrRevocationsInvalid, issued)
	}
	r := Revocations{Issued: time.Unix(int64(issued), 0), Entries: make([]Revocation, n)}
	for i := range r.Entries {
		e := body[revocationsHead+i*revocationLen:]
		until := binary.BigEndian.Uint64(e[32:])
		if until > maxUnix {
			return Revocations{}, fmt.Errorf("%w: entry %d: time %d out of range", ErrRevocationsInvalid, i, until)
		}
		r.Entries[i] = Revocation{Node: Key(e[:32]), Until: time.Unix(int64(until), 0)}
	}
	return r, nil
}
