package jointoken

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

const (
	goodID     = "0a1b2c3d"
	goodSecret = "00112233445566778899aabbccddeeff"
)

var (
	goodPin    = [32]byte{0: 0xfb, 31: 0x01}
	goodPinStr = FormatPin(goodPin)
	good       = "ewt1." + goodID + "." + goodSecret + "." + goodPinStr
)

func TestParse(t *testing.T) {
	want := Token{ID: goodID, Secret: goodSecret, CAPin: goodPin}
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; empty means success
	}{
		{"good", good, ""},
		{"surrounding whitespace", " \t" + good + "\n", ""},
		{"empty", "", "got 1 dot-separated parts"},
		{"too few parts", "ewt1." + goodID + "." + goodSecret, "got 3 dot-separated parts"},
		{"too many parts", good + ".x", "got 5 dot-separated parts"},
		{"wrong prefix", "ewt2." + goodID + "." + goodSecret + "." + goodPinStr, "prefix"},
		{"short id", "ewt1.0a1b2c." + goodSecret + "." + goodPinStr, "id is 6 chars, want 8"},
		{"uppercase id", "ewt1.0A1B2C3D." + goodSecret + "." + goodPinStr, "id must be lowercase hex"},
		{"non-hex id", "ewt1.0a1b2c3z." + goodSecret + "." + goodPinStr, "id must be lowercase hex"},
		{"short secret", "ewt1." + goodID + ".0011." + goodPinStr, "secret is 4 chars, want 32"},
		{"non-hex secret", "ewt1." + goodID + "." + strings.Repeat("g", 32) + "." + goodPinStr, "secret must be lowercase hex"},
		{"short pin", "ewt1." + goodID + "." + goodSecret + "." + goodPinStr[:42], "CA pin is 42 chars, want 43"},
		{"padded pin", "ewt1." + goodID + "." + goodSecret + "." + goodPinStr + "=", "CA pin is 44 chars"},
		{"std base64 pin", "ewt1." + goodID + "." + goodSecret + "." + strings.Repeat("+", 43), "base64url"},
		{"inner whitespace", "ewt1." + goodID + " ." + goodSecret + "." + goodPinStr, "id is 9 chars"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got error %v, want nil", err)
				}
				if got != want {
					t.Errorf("got %+v, want %+v", got, want)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %v, want ErrMalformed containing %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), goodSecret) {
				t.Errorf("error %q leaks the secret", err)
			}
		})
	}
}

func TestGenerateRoundTrip(t *testing.T) {
	src := bytes.NewReader(bytes.Repeat([]byte{0xab}, 20))
	tok, err := Generate(goodPin, src)
	if err != nil {
		t.Fatal(err)
	}
	if want := "abababab"; tok.ID != want {
		t.Errorf("ID: got %q, want %q", tok.ID, want)
	}
	if want := strings.Repeat("ab", 16); tok.Secret != want {
		t.Errorf("Secret: got %q, want %q", tok.Secret, want)
	}
	s := tok.String()
	if want := "ewt1.abababab." + strings.Repeat("ab", 16) + "." + goodPinStr; s != want {
		t.Errorf("String: got %q, want %q", s, want)
	}
	got, err := Parse(s)
	if err != nil || got != tok {
		t.Errorf("Parse(String()): got %+v, %v, want %+v", got, err, tok)
	}

	// Real randomness: two tokens differ.
	a, _ := Generate(goodPin, rand.Reader)
	b, _ := Generate(goodPin, rand.Reader)
	if a == b {
		t.Errorf("two generated tokens are equal: %v", a)
	}
	if _, err := Generate(goodPin, iotest.ErrReader(errors.New("no entropy"))); err == nil {
		t.Error("Generate with failing reader: got nil error, want error")
	}
}

func TestPinCert(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "edgewire test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := PinCert(cert), sha256.Sum256(spki); got != want {
		t.Errorf("PinCert: got %x, want %x", got, want)
	}

	// Re-issuing with the same key keeps the pin.
	tmpl.SerialNumber = big.NewInt(2)
	der2, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert2, _ := x509.ParseCertificate(der2)
	if PinCert(cert2) != PinCert(cert) {
		t.Errorf("PinCert changed across re-issue with the same key")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(good)
	f.Add(" " + good + "\n")
	f.Add("ewt1...")
	f.Add("ewt1." + goodID + "." + goodSecret + "." + strings.Repeat("_", 43))
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse(%q): error %v does not wrap ErrMalformed", s, err)
			}
			return
		}
		again, err := Parse(tok.String())
		if err != nil || again != tok {
			t.Fatalf("Parse(String()) of %q: got %+v, %v, want %+v", s, again, err, tok)
		}
		if got, want := tok.String(), strings.TrimSpace(s); got != want {
			t.Fatalf("String: got %q, want %q (format not canonical)", got, want)
		}
	})
}
