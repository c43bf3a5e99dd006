package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/jointoken"
)

func newIdentity(t *testing.T, dir string) *Identity {
	t.Helper()
	id, err := LoadOrCreate(dir, []string{"coord.example"}, []net.IP{net.ParseIP("192.0.2.10")}, time.Now())
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return id
}

func leafOf(t *testing.T, id *Identity) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(id.Cert.Certificate[0])
	if err != nil {
		t.Fatalf("parse leaf: %v", err)
	}
	return c
}

func TestLoadOrCreateKeepsCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki") // created on demand
	first := newIdentity(t, dir)
	second := newIdentity(t, dir)

	if p1, p2 := jointoken.PinCert(first.CA), jointoken.PinCert(second.CA); p1 != p2 {
		t.Errorf("got pins %x and %x, want the same pin across restarts", p1, p2)
	}
	if !first.CA.Equal(second.CA) {
		t.Errorf("got a different CA certificate on the second start")
	}
	if !first.CA.IsCA {
		t.Errorf("got CA with IsCA=false")
	}
	if l1, l2 := leafOf(t, first), leafOf(t, second); l1.SerialNumber.Cmp(l2.SerialNumber) == 0 {
		t.Errorf("got the same leaf serial twice, want a fresh leaf per start")
	}
	if fi, err := os.Stat(filepath.Join(dir, caKeyFile)); err != nil {
		t.Fatal(err)
	} else if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("got CA key mode %o, want 600", perm)
	}

	roots := x509.NewCertPool()
	roots.AddCert(second.CA)
	leaf := leafOf(t, second)
	for _, name := range []string{ServerName, "coord.example", "192.0.2.10"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("verify leaf for %q: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example"}); err == nil {
		t.Errorf("leaf verified for other.example, want an error")
	}
	if len(second.Cert.Certificate) != 2 || string(second.Cert.Certificate[1]) != string(second.CA.Raw) {
		t.Errorf("got chain of %d certificates, want [leaf, CA]", len(second.Cert.Certificate))
	}
	if got, err := ParseCertPEM(second.CAPEM()); err != nil || !got.Equal(second.CA) {
		t.Errorf("CAPEM does not parse back to the CA: %v", err)
	}
}

// A CA certificate without its key must not be silently replaced: a new
// CA changes the pin and locks out every agent.
func TestLoadOrCreateMissingKey(t *testing.T) {
	dir := t.TempDir()
	newIdentity(t, dir)
	if err := os.Remove(filepath.Join(dir, caKeyFile)); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreate(dir, nil, nil, time.Now())
	if err == nil || !strings.Contains(err.Error(), "key missing") {
		t.Errorf("got %v, want an error about the missing CA key", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil || string(after) != string(before) {
		t.Errorf("CA certificate replaced (err %v), want it kept", err)
	}
}

// serveTLS runs a TLS server presenting chain and key on 127.0.0.1 until
// the test ends. Each connection completes the handshake and is closed.
func serveTLS(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake() // fails when the client refuses us
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// otherCA makes a CA unrelated to any Identity and a leaf for ServerName
// signed by it.
func otherCA(t *testing.T) (ca *x509.Certificate, caKey *ecdsa.PrivateKey, leaf tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "impostor CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: ServerName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{ServerName},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return ca, caKey, tls.Certificate{Certificate: [][]byte{leafDER, der}, PrivateKey: leafKey}
}

func TestPinnedConfig(t *testing.T) {
	id := newIdentity(t, t.TempDir())
	pin := jointoken.PinCert(id.CA)
	impostorCA, _, impostorLeaf := otherCA(t)

	// The impostor's leaf, with the genuine CA appended to its chain.
	mixed := tls.Certificate{
		Certificate: [][]byte{impostorLeaf.Certificate[0], id.CA.Raw},
		PrivateKey:  impostorLeaf.PrivateKey,
	}
	// The impostor's full chain, with the genuine CA appended as well.
	mixedFull := tls.Certificate{
		Certificate: [][]byte{impostorLeaf.Certificate[0], impostorCA.Raw, id.CA.Raw},
		PrivateKey:  impostorLeaf.PrivateKey,
	}
	// The genuine leaf without the CA in the chain.
	leafOnly := tls.Certificate{Certificate: id.Cert.Certificate[:1], PrivateKey: id.Cert.PrivateKey}

	tests := []struct {
		name       string
		serve      tls.Certificate
		pin        [32]byte
		serverName string
		wantErr    string // empty: success
	}{
		{"right pin", id.Cert, pin, ServerName, ""},
		{"right pin, extra SAN", id.Cert, pin, "coord.example", ""},
		{"wrong pin", id.Cert, [32]byte{1}, ServerName, "does not match the pin"},
		{"impostor's own pin", impostorLeaf, pin, ServerName, "does not match the pin"},
		{"wrong server name", id.Cert, pin, "other.example", "verify coordinator certificate"},
		{"leaf from another CA, pinned CA in chain", mixed, pin, ServerName, "verify coordinator certificate"},
		{"chain of another CA, pinned CA appended", mixedFull, pin, ServerName, "verify coordinator certificate"},
		{"no CA in chain", leafOnly, pin, ServerName, "does not match the pin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serveTLS(t, tt.serve)
			var got *x509.Certificate
			cfg := jointoken.PinnedConfig(tt.pin, tt.serverName, &got)
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
			if err == nil {
				c.Close()
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				if got == nil || !got.Equal(id.CA) {
					t.Errorf("got CA %v, want the pinned CA stored", got)
				}
				return
			}
			if err == nil {
				t.Fatalf("dial succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
			if got != nil {
				t.Errorf("got CA stored after a failed verification, want nil")
			}
		})
	}
}

func TestClientConfig(t *testing.T) {
	id := newIdentity(t, t.TempDir())
	addr := serveTLS(t, id.Cert)
	cfg, err := jointoken.ClientConfig(id.CAPEM(), ServerName)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial with the right CA: %v", err)
	}
	c.Close()

	other := newIdentity(t, t.TempDir())
	cfg, err = jointoken.ClientConfig(other.CAPEM(), ServerName)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	if c, err := tls.Dial("tcp", addr, cfg); err == nil {
		c.Close()
		t.Errorf("dial with another CA succeeded, want an error")
	}
	if _, err := jointoken.ClientConfig([]byte("not pem"), ServerName); err == nil {
		t.Errorf("ClientConfig of garbage: got nil error, want one")
	}
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	id := newIdentity(t, filepath.Join(dir, "genuine"))
	impostorCA, _, impostorLeaf := otherCA(t)

	keyDER, err := x509.MarshalECPrivateKey(id.Cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	certFile := writePEM(t, dir, "tls.crt", "CERTIFICATE", id.Cert.Certificate[0])
	keyFile := writePEM(t, dir, "tls.key", "EC PRIVATE KEY", keyDER)
	caFile := writePEM(t, dir, "ca.crt", "CERTIFICATE", id.CA.Raw)
	otherCAFile := writePEM(t, dir, "other-ca.crt", "CERTIFICATE", impostorCA.Raw)
	impKeyDER, err := x509.MarshalECPrivateKey(impostorLeaf.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	impCertFile := writePEM(t, dir, "imp.crt", "CERTIFICATE", impostorLeaf.Certificate[0])
	impKeyFile := writePEM(t, dir, "imp.key", "EC PRIVATE KEY", impKeyDER)
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("nothing here"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name          string
		cert, key, ca string
		wantErr       string
		wantErrIs     error
	}{
		{"matching CA", certFile, keyFile, caFile, "", nil},
		{"cert from another CA", impCertFile, impKeyFile, caFile, "not issued by the given CA", nil},
		{"CA that did not issue the cert", certFile, keyFile, otherCAFile, "not issued by the given CA", nil},
		{"key does not match cert", certFile, impKeyFile, caFile, "load TLS key pair", nil},
		{"missing CA file", certFile, keyFile, filepath.Join(dir, "nope"), "read CA file", os.ErrNotExist},
		{"CA file without PEM", certFile, keyFile, garbage, "no PEM certificate", nil},
		{"missing cert", filepath.Join(dir, "nope"), keyFile, caFile, "load TLS key pair", os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadFiles(tt.cert, tt.key, tt.ca)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("LoadFiles: %v", err)
				}
				if !got.CA.Equal(id.CA) {
					t.Errorf("got a different CA")
				}
				if n := len(got.Cert.Certificate); n != 2 {
					t.Errorf("got chain of %d certificates, want 2 (CA appended)", n)
				}
				return
			}
			if err == nil {
				t.Fatalf("got nil error, want one containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("got error %v, want errors.Is %v", err, tt.wantErrIs)
			}
		})
	}
}

// A server whose identity came from LoadFiles is accepted by the pin of
// the operator's CA.
func TestLoadFilesServesPinnedClient(t *testing.T) {
	dir := t.TempDir()
	id := newIdentity(t, filepath.Join(dir, "genuine"))
	keyDER, err := x509.MarshalECPrivateKey(id.Cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadFiles(
		writePEM(t, dir, "tls.crt", "CERTIFICATE", id.Cert.Certificate[0]),
		writePEM(t, dir, "tls.key", "EC PRIVATE KEY", keyDER),
		writePEM(t, dir, "ca.crt", "CERTIFICATE", id.CA.Raw),
	)
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	addr := serveTLS(t, loaded.Cert)
	var got *x509.Certificate
	c, err := tls.Dial("tcp", addr, jointoken.PinnedConfig(jointoken.PinCert(loaded.CA), jointoken.ServerName, &got))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
	if got == nil || !got.Equal(id.CA) {
		t.Errorf("got CA %v, want the operator's CA", got)
	}
}

// A key without a certificate is what a crash between the two writes
// leaves behind; the next start creates a fresh CA.
func TestLoadOrCreateKeyWithoutCert(t *testing.T) {
	dir := t.TempDir()
	first := newIdentity(t, dir)
	if err := os.Remove(filepath.Join(dir, caCertFile)); err != nil {
		t.Fatal(err)
	}
	second := newIdentity(t, dir)
	if jointoken.PinCert(first.CA) == jointoken.PinCert(second.CA) {
		t.Errorf("got the old pin, want a fresh CA")
	}
	third := newIdentity(t, dir)
	if jointoken.PinCert(second.CA) != jointoken.PinCert(third.CA) {
		t.Errorf("fresh CA not persisted: pin changed again on the next start")
	}
}
