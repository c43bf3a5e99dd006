package dhkey

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/edgewire/edgewire/types/key"
)

func pair(t *testing.T) (key.Private, key.Public) {
	t.Helper()
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return priv, priv.Public()
}

// lowOrderHex are the Curve25519 points of order 1, 2, 4 and 8 in their
// canonical and non-canonical encodings (the list libsodium blocks),
// written out apart from the package's list.
var lowOrderHex = []string{
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0100000000000000000000000000000000000000000000000000000000000000",
	"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
	"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
}

func TestCheckPublic(t *testing.T) {
	for _, h := range lowOrderHex {
		var k key.Public
		hex.Decode(k[:], []byte(h))
		if err := CheckPublic(k); !errors.Is(err, ErrLowOrder) {
			t.Errorf("CheckPublic(%s) = %v, want ErrLowOrder", h[:16], err)
		}
		priv, _ := pair(t)
		if _, err := Derive(priv, k, Signal); !errors.Is(err, ErrLowOrder) {
			t.Errorf("Derive with %s = %v, want ErrLowOrder", h[:16], err)
		}
		l, err := GenerateLocal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Derive(k, Signal); !errors.Is(err, ErrLowOrder) {
			t.Errorf("Local.Derive with %s = %v, want ErrLowOrder", h[:16], err)
		}
	}
	_, pub := pair(t)
	if err := CheckPublic(pub); err != nil {
		t.Errorf("CheckPublic(real key) = %v, want nil", err)
	}
}

func TestDerive(t *testing.T) {
	aPriv, aPub := pair(t)
	bPriv, bPub := pair(t)
	ab, err := Derive(aPriv, bPub, Signal, aPub[:], bPub[:])
	if err != nil {
		t.Fatal(err)
	}
	ba, err := Derive(bPriv, aPub, Signal, aPub[:], bPub[:])
	if err != nil {
		t.Fatal(err)
	}
	if ab != ba {
		t.Fatal("the two sides derived different keys")
	}
	others := map[string][Size]byte{}
	others["other purpose"], _ = Derive(aPriv, bPub, ControlAuth, aPub[:], bPub[:])
	others["parts swapped"], _ = Derive(aPriv, bPub, Signal, bPub[:], aPub[:])
	others["parts split differently"], _ = Derive(aPriv, bPub, Signal, append(aPub[:], bPub[:1]...), bPub[1:])
	others["no transcript"], _ = Derive(aPriv, bPub, Signal)
	for name, k := range others {
		if k == ab {
			t.Errorf("%s: same key, want a different one", name)
		}
	}
}

// A prepared key agrees with its bare form, on both sides.
func TestLocal(t *testing.T) {
	aPriv, aPub := pair(t)
	bPriv, bPub := pair(t)
	a, err := NewLocal(aPriv)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Public(); got != aPub {
		t.Fatalf("Public() = %s, want %s", got, aPub)
	}
	want, err := Derive(aPriv, bPub, ControlAuth, aPub[:], bPub[:])
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Derive(bPub, ControlAuth, aPub[:], bPub[:])
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Local.Derive = %x, want Derive's %x", got, want)
	}
	eph, err := GenerateLocal()
	if err != nil {
		t.Fatal(err)
	}
	ePub := eph.Public()
	fromEph, err := eph.Derive(bPub, Signal)
	if err != nil {
		t.Fatal(err)
	}
	fromB, err := Derive(bPriv, ePub, Signal)
	if err != nil {
		t.Fatal(err)
	}
	if fromEph != fromB {
		t.Error("a generated key and its peer derived different keys")
	}
}

func TestMAC(t *testing.T) {
	var k [Size]byte
	a := MAC(k, []byte("a"), []byte("b"))
	if b := MAC(k, []byte("ab")); !Equal(a[:], b[:]) {
		t.Error("MAC of the same bytes differs")
	}
	k[0] = 1
	if b := MAC(k, []byte("ab")); Equal(a[:], b[:]) {
		t.Error("MAC under another key is equal")
	}
}

// ladderLowOrder is CheckPublic's definition: the agreement of pub with
// the scalar is all zeros.
func ladderLowOrder(t testing.TB, scalar key.Private, pub key.Public) bool {
	l, err := NewLocal(scalar)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.agree(pub)
	return errors.Is(err, ErrLowOrder)
}

// CheckPublic's list says what a ladder says, for the listed keys with
// and without bit 255, for every key near 0 and near p, and for random
// keys, under random scalars.
func TestCheckPublicLadder(t *testing.T) {
	var keys []key.Public
	for _, lo := range lowOrder {
		k := key.Public(lo)
		keys = append(keys, k)
		k[Size-1] |= 0x80
		keys = append(keys, k)
	}
	for d := -40; d <= 40; d++ {
		var k key.Public
		if d >= 0 {
			k[0] = byte(d)
		} else {
			k = key.Public(pMinus(-d - 20)) // p-20 .. p+19
		}
		keys = append(keys, k)
		k[Size-1] |= 0x80
		keys = append(keys, k)
	}
	for range 64 {
		_, pub := pair(t)
		keys = append(keys, pub)
	}
	for _, k := range keys {
		scalar, _ := pair(t)
		want := ladderLowOrder(t, scalar, k)
		if got := CheckPublic(k) != nil; got != want {
			t.Errorf("CheckPublic(%x) refused: %v, want %v (the ladder's zero)", k[:], got, want)
		}
	}
}

func FuzzCheckPublic(f *testing.F) {
	for _, lo := range lowOrder {
		f.Add(lo[:], []byte{1})
	}
	f.Add(make([]byte, Size), make([]byte, Size))
	f.Fuzz(func(t *testing.T, pubB, scalarB []byte) {
		var pub key.Public
		var scalar key.Private
		copy(pub[:], pubB)
		copy(scalar[:], scalarB)
		want := ladderLowOrder(t, scalar, pub)
		if got := CheckPublic(pub) != nil; got != want {
			t.Errorf("CheckPublic(%x) refused: %v, want %v (the ladder's zero under scalar %x)", pub[:], got, want, scalar[:])
		}
	})
}
