package jointoken

import (
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerName is the TLS name in the coordinator's generated serving
// certificate, which agents verify by default.
const ServerName = "edgewire-coordinator"

// ClientConfig verifies the server against caPEM and serverName.
func ClientConfig(caPEM []byte, serverName string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no usable CA certificate")
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13}, nil
}

// PinnedConfig trusts the server if its chain holds a CA whose key matches
// pin and that CA issued the serving certificate for serverName. The CA
// found is stored in *ca for the caller to persist after a successful call.
func PinnedConfig(pin [32]byte, serverName string, ca **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server sent no certificate")
			}
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return fmt.Errorf("parse server certificate: %w", err)
				}
				certs = append(certs, c)
			}
			var root *x509.Certificate
			for _, c := range certs[1:] {
				p := PinCert(c)
				if c.IsCA && subtle.ConstantTimeCompare(p[:], pin[:]) == 1 {
					root = c
					break
				}
			}
			if root == nil {
				return errors.New("coordinator's CA does not match the pin in the join token (wrong coordinator, or a machine in the middle)")
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(root)
			for _, c := range certs[1:] {
				if !bytes.Equal(c.Raw, root.Raw) {
					inter.AddCert(c)
				}
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: serverName}); err != nil {
				return fmt.Errorf("verify coordinator certificate against pinned CA: %w", err)
			}
			*ca = root
			return nil
		},
	}
}
