// Package relaytest runs a real relay on a loopback port for tests of the
// parts that use one (the agent's home relay, the coordinator test bed),
// as stuntest does for STUN: TLS with a throwaway certificate (clients
// authenticate a relay by its key, not its certificate), a fresh relay
// key, and the ticket key the test's coordinator signs with.
package relaytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/internal/logging/logtest"
	"github.com/edgewire/edgewire/types/key"
)

// Relay is a relay serving on a loopback port until its test ends.
type Relay struct {
	Server *relay.Server
	Addr   string     // host:port of its HTTPS listener
	Key    key.Public // what the relay map pins for it

	stop func()
}

// Start serves a relay on 127.0.0.1 that accepts tickets signed by the
// private half of ticketKey. It stops when the test ends, or at Stop.
func Start(t testing.TB, ticketKey ed25519.PublicKey) *Relay {
	t.Helper()
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	s, err := relay.NewServer(relay.ServerConfig{PrivateKey: priv, TicketKey: ticketKey, Logger: logtest.New(t).With("src", "relay")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := relay.NewHTTPServer(s, cert(t))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { hs.ServeTLS(ln, "", "") })
	wg.Go(func() {
		if err := s.Run(ctx); err != nil {
			t.Errorf("relaytest: Run: %v", err)
		}
	})
	var once sync.Once
	r := &Relay{Server: s, Addr: ln.Addr().String(), Key: priv.Public()}
	r.stop = func() {
		once.Do(func() {
			cancel()
			hs.Close()
			wg.Wait()
		})
	}
	t.Cleanup(r.stop)
	return r
}

// Stop stops the relay (its clients see their connections end).
func (r *Relay) Stop() { r.stop() }

// cert returns a throwaway self-signed certificate for 127.0.0.1.
func cert(t testing.TB) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relaytest"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}
