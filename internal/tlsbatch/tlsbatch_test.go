package tlsbatch

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// countingConn counts the writes that reach it and can be made to fail.
type countingConn struct {
	net.Conn
	mu     sync.Mutex // guards writes and fail
	writes int
	fail   error
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	fail := c.fail
	c.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// pair returns the server side of a handshaken TLS connection made with
// Credentials, its raw connection, and the client side.
func pair(t *testing.T) (srv net.Conn, raw *countingConn, cli *tls.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	raw = &countingConn{Conn: a}
	creds := Credentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, MinVersion: tls.VersionTLS13}))
	cli = tls.Client(b, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- cli.Handshake() }()
	srv, _, err := creds.ServerHandshake(raw)
	if err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	return srv, raw, cli
}

func TestWriteIsOneRawWrite(t *testing.T) {
	for _, size := range []int{1, 16 << 10, 64 << 10, 300 << 10} {
		srv, raw, cli := pair(t)
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(i * 7)
		}
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, size)
			_, err := io.ReadFull(cli, b)
			if err != nil {
				b = nil
			}
			got <- b
		}()
		before := raw.count()
		n, err := srv.Write(p)
		if err != nil || n != size {
			t.Fatalf("write %d bytes: got %d, %v; want %d, nil", size, n, err, size)
		}
		if w := raw.count() - before; w != 1 {
			t.Errorf("write of %d bytes: got %d raw writes, want 1", size, w)
		}
		if b := <-got; !bytes.Equal(b, p) {
			t.Errorf("write of %d bytes: the client read other bytes (%d of them)", size, len(b))
		}
	}
}

func TestWriteErrorIsReturnedAndSticky(t *testing.T) {
	srv, raw, _ := pair(t)
	boom := errors.New("boom")
	raw.mu.Lock()
	raw.fail = boom
	raw.mu.Unlock()
	if _, err := srv.Write([]byte("hello")); !errors.Is(err, boom) {
		t.Fatalf("write on a failing connection: got %v, want %v", err, boom)
	}
	raw.mu.Lock()
	raw.fail = nil
	raw.mu.Unlock()
	if _, err := srv.Write([]byte("again")); err == nil {
		t.Fatal("write after a failed one: got nil error, want the first failure")
	}
}

func TestConcurrentWritesArriveWhole(t *testing.T) {
	srv, _, cli := pair(t)
	const writers, size = 4, 40 << 10
	done := make(chan []byte, 1)
	go func() {
		b := make([]byte, writers*size)
		if _, err := io.ReadFull(cli, b); err != nil {
			b = nil
		}
		done <- b
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			if _, err := srv.Write(bytes.Repeat([]byte{byte('a' + w)}, size)); err != nil {
				t.Errorf("writer %d: %v", w, err)
			}
		})
	}
	wg.Wait()
	b := <-done
	if len(b) != writers*size {
		t.Fatalf("read %d bytes, want %d", len(b), writers*size)
	}
	// Each writer's bytes arrive in one piece: TLS serialises writes and
	// the batcher keeps their order.
	seen := map[byte]bool{}
	for i := 0; i < len(b); i += size {
		c := b[i]
		if seen[c] || !bytes.Equal(b[i:i+size], bytes.Repeat([]byte{c}, size)) {
			t.Fatalf("bytes %d..%d are not one writer's", i, i+size)
		}
		seen[c] = true
	}
}
