// Package tlsbatch makes a server's TLS connections hand each write to
// the kernel in one system call. crypto/tls writes every record (at most
// 16 KiB of data) with a system call of its own, so a 64 KiB write costs
// four, and on a loopback or LAN peer four wake-ups of the reader too;
// a coordinator streaming network maps to thousands of agents spends more
// on those calls than on the bytes they carry.
package tlsbatch

import (
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// Credentials wraps transport credentials whose server handshake returns
// a connection that writes through the raw connection it was given, as
// TLS does: after the handshake, the records of one Write of the returned
// connection reach the raw connection as one Write. Client handshakes are
// unchanged.
func Credentials(inner credentials.TransportCredentials) credentials.TransportCredentials {
	return creds{inner}
}

type creds struct {
	credentials.TransportCredentials
}

var _ credentials.TransportCredentials = creds{}

func (c creds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := &batcher{Conn: raw}
	conn, info, err := c.TransportCredentials.ServerHandshake(b)
	if err != nil {
		return nil, nil, err
	}
	return &Conn{Conn: conn, b: b}, info, nil
}

func (c creds) Clone() credentials.TransportCredentials {
	return creds{c.TransportCredentials.Clone()}
}

// Conn is a connection whose writes reach the network one Write at a
// time. It is safe for concurrent use as its inner connection is.
type Conn struct {
	net.Conn          // the TLS connection
	b        *batcher // the raw connection under it
}

// Write writes p through the TLS connection, collecting the records it
// produces and writing them to the raw connection at once when done.
func (c *Conn) Write(p []byte) (int, error) {
	c.b.hold()
	n, err := c.Conn.Write(p)
	if ferr := c.b.release(); ferr != nil && err == nil {
		return 0, ferr
	}
	return n, err
}

// bufPool holds the buffers records are collected in: only for the
// length of a write, so idle connections hold none.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 72<<10) // 64 KiB of data in four records, with their overheads
	return &b
}}

// maxPooled bounds the buffers returned to bufPool: one huge write must
// not keep its buffer alive.
const maxPooled = 256 << 10

// batcher is the raw connection under TLS. While held, writes are
// collected instead of written.
type batcher struct {
	net.Conn

	mu    sync.Mutex // guards holds, buf and err, and orders writes to Conn
	holds int        // Writes of Conn in progress
	buf   *[]byte    // collected records; nil when none
	err   error      // the first failed write: every later one fails too
}

func (b *batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.holds == 0 {
		return b.write(p)
	}
	if b.buf == nil {
		b.buf = bufPool.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// write writes p to the raw connection; b.mu is held.
func (b *batcher) write(p []byte) (int, error) {
	n, err := b.Conn.Write(p)
	if err != nil {
		b.err = err
	}
	return n, err
}

func (b *batcher) hold() {
	b.mu.Lock()
	b.holds++
	b.mu.Unlock()
}

// release ends a hold; the last one writes what was collected.
func (b *batcher) release() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holds--
	if b.holds > 0 || b.buf == nil {
		return b.err
	}
	buf := b.buf
	b.buf = nil
	var err error
	if b.err != nil {
		err = b.err
	} else {
		_, err = b.write(*buf)
	}
	if cap(*buf) <= maxPooled {
		*buf = (*buf)[:0]
		bufPool.Put(buf)
	}
	return err
}
