package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// certLifetime outlives any test run; the files are thrown away with it.
const certLifetime = 7 * 24 * time.Hour

// pki holds the paths of the files writePKI wrote, and the CA to trust.
type pki struct {
	ca                   *x509.Certificate
	caFile               string // CA certificate (PEM)
	certFile, keyFile    string // API server serving certificate and key
	saPubFile, saKeyFile string // service-account token verification and signing keys
}

// writePKI writes a self-signed CA, a serving certificate it signed for
// loopback, addr and the in-cluster names of the API server, and a
// service-account key pair, all ECDSA P-256.
func writePKI(dir string, addr netip.Addr, now time.Time) (pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return pki{}, fmt.Errorf("write pki: %w", err)
	}
	p := pki{
		caFile:    filepath.Join(dir, "ca.crt"),
		certFile:  filepath.Join(dir, "apiserver.crt"),
		keyFile:   filepath.Join(dir, "apiserver.key"),
		saPubFile: filepath.Join(dir, "sa.pub"),
		saKeyFile: filepath.Join(dir, "sa.key"),
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pki{}, fmt.Errorf("generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "edgewire-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return pki{}, fmt.Errorf("sign CA: %w", err)
	}
	if p.ca, err = x509.ParseCertificate(caDER); err != nil {
		return pki{}, fmt.Errorf("parse CA: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pki{}, fmt.Errorf("generate serving key: %w", err)
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}
	if !addr.IsLoopback() {
		ips = append(ips, addr.AsSlice())
	}
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(certLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: ips,
	}
	der, err := sign(serving, p.ca, &key.PublicKey, caKey)
	if err != nil {
		return pki{}, fmt.Errorf("sign serving certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pki{}, fmt.Errorf("generate service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return pki{}, fmt.Errorf("marshal service-account key: %w", err)
	}
	files := []struct {
		path, typ string
		der       []byte
		err       error
	}{
		{p.caFile, "CERTIFICATE", caDER, nil},
		{p.certFile, "CERTIFICATE", der, nil},
		{p.keyFile, "EC PRIVATE KEY", nil, nil},
		{p.saPubFile, "PUBLIC KEY", saPub, nil},
		{p.saKeyFile, "EC PRIVATE KEY", nil, nil},
	}
	files[2].der, files[2].err = x509.MarshalECPrivateKey(key)
	files[4].der, files[4].err = x509.MarshalECPrivateKey(saKey)
	for _, f := range files {
		if f.err != nil {
			return pki{}, fmt.Errorf("marshal %s: %w", f.path, f.err)
		}
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return pki{}, fmt.Errorf("write pki: %w", err)
		}
	}
	return p, nil
}

// sign sets a random serial number on tmpl and signs it with parent's key.
func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, priv *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
}
