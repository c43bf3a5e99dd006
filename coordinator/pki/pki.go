// Package pki gives the coordinator a TLS identity with nothing to set up:
// on first start it creates a private CA in the data dir and, on every
// start, a fresh serving certificate signed by that CA. Agents trust the
// CA through the pin carried in their join token, and verify the serving
// certificate against the fixed name ServerName rather than an address,
// since nodes behind NATs reach the coordinator by many addresses.
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
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"

	"time"

	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/types/jointoken"
)

// ServerName is a DNS SAN every generated serving certificate carries and
// the name agents verify by default (jointoken.ServerName).
const ServerName = jointoken.ServerName

const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	caLifetime = 10 * 365 * 24 * time.Hour
	leafLife   = 365 * 24 * time.Hour
)

// Identity is the coordinator's TLS identity.
type Identity struct {
	CA   *x509.Certificate
	Cert tls.Certificate // leaf + CA chain
}

// CAPEM returns the CA certificate in PEM form.
func (id *Identity) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.CA.Raw})
}

// LoadOrCreate loads the CA from dir (creating it if absent) and issues a
// serving certificate for ServerName plus the extra DNS names and IPs.
func LoadOrCreate(dir string, dnsNames []string, ips []net.IP, now time.Time) (*Identity, error) {
	ca, caKey, err := loadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		ca, caKey, err = createCA(dir, now)
	}
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: ServerName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafLife),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     append([]string{ServerName}, dnsNames...),
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	return &Identity{CA: ca, Cert: tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key}}, nil
}

// LoadFiles builds an Identity from operator-provided PEM files. The CA
// file must hold the CA that issued the certificate: its key is what join
// tokens pin.
func LoadFiles(certFile, keyFile, caFile string) (*Identity, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	ca, err := ParseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", caFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse serving certificate: %w", err)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("serving certificate is not issued by the given CA: %w", err)
	}
	if len(cert.Certificate) == 1 {
		cert.Certificate = append(cert.Certificate, ca.Raw)
	}
	return &Identity{CA: ca, Cert: cert}, nil
}

// ParseCertPEM parses the first CERTIFICATE block in b.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		// %v, not %w: an os.ErrNotExist here would make LoadOrCreate
		// replace the CA, silently invalidating every pin.
		return nil, nil, fmt.Errorf("CA certificate present but key missing or unreadable (not creating a new CA: that would invalidate every join token and agent): %v", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", caCertFile, err)
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, nil, fmt.Errorf("parse %s: no PEM block", caKeyFile)
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", caKeyFile, err)
	}
	return cert, key, nil
}

func createCA(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "edgewire coordinator CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	// Key first: a crash between the writes leaves no CA certificate,
	// so the next start creates a fresh pair instead of failing.
	if err := atomicfile.Write(filepath.Join(dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, caCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}
