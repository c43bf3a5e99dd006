package socks5

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// inputConn is the server's end of a net.Pipe carrying n bytes of input.
// starved is closed when the server reads after consuming all of them:
// it waits for more than the client sent.
type inputConn struct {
	net.Conn
	mu      sync.Mutex // guards left, closed
	left    int
	closed  bool
	starved chan struct{}
}

func (c *inputConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.left == 0 && !c.closed {
		c.closed = true
		close(c.starved)
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.left -= n
	c.mu.Unlock()
	return n, err
}

// upConn is the proxy's end of a fake upstream; a half-close closes it.
type upConn struct{ net.Conn }

func (c upConn) CloseWrite() error { return c.Conn.Close() }

// FuzzHandle drives the per-connection handler (greeting, request,
// proxying) with arbitrary client bytes over net.Pipe. Whatever comes in,
// the handler must return once the client is gone, write only a
// well-formed SOCKS5 transcript, and dial only what the Resolver allows,
// exactly when it reports success.
func FuzzHandle(f *testing.F) {
	greet := []byte{5, 1, 0}
	f.Add(append(append([]byte{}, greet...), connectReq("edge-node-01", 22)...))
	f.Add(append(append(append([]byte{}, greet...), connectReq("edge-node-01", 22)...), "SSH-2.0-x\r\n"...))
	f.Add(append(append([]byte{}, greet...), connectReq("example.com", 80)...))
	f.Add(append([]byte{5, 2, 2, 0}, 5, 1, 0, 1, 100, 64, 0, 2, 0, 22))
	f.Add(append([]byte{5, 1, 0}, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22))
	f.Add([]byte{5, 1, 2})
	f.Add([]byte{4, 1, 0, 80})
	f.Add([]byte{5, 0})
	f.Add(append([]byte{5, 1, 0}, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80))
	f.Add([]byte{})

	allowed := netip.MustParseAddr("100.64.0.2")
	res := mapResolver{"edge-node-01": allowed, "100.64.0.2": allowed}
	f.Fuzz(func(t *testing.T, in []byte) {
		var mu sync.Mutex // guards dials
		var dials []string
		var echoes sync.WaitGroup
		s, err := New(Config{
			Listen:   netip.MustParseAddrPort("127.0.0.1:1080"),
			Resolver: res,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				mu.Lock()
				dials = append(dials, addr)
				mu.Unlock()
				near, far := net.Pipe()
				echoes.Go(func() {
					io.Copy(far, far)
					far.Close()
				})
				return upConn{near}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		srv := &inputConn{Conn: server, left: len(in), starved: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan struct{})
		go func() {
			s.handle(ctx, srv)
			close(done)
		}()
		var out bytes.Buffer
		var io2 sync.WaitGroup
		io2.Go(func() { io.Copy(&out, client) })
		io2.Go(func() { client.Write(in) })

		select {
		case <-done:
		case <-srv.starved:
		case <-time.After(5 * time.Second):
			t.Fatalf("handler neither finished nor asked for more input, input %x", in)
		}
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("handler did not return after the client left, input %x", in)
		}
		io2.Wait()
		echoes.Wait()

		o := out.Bytes()
		success := false
		switch {
		case len(o) == 0:
		case len(o) < 2 || o[0] != version5 || (o[1] != methodNoAuth && o[1] != methodNone):
			t.Fatalf("method selection %x, want 05 00 or 05 ff; input %x", o, in)
		case o[1] == methodNone && len(o) != 2:
			t.Fatalf("bytes after refusing every method: %x; input %x", o, in)
		case len(o) == 2:
		case len(o) < 12:
			t.Fatalf("short reply %x; input %x", o, in)
		default:
			rep := o[2:12]
			if rep[0] != version5 || rep[2] != 0 || rep[3] != atypIPv4 {
				t.Fatalf("malformed reply %x; input %x", rep, in)
			}
			switch rep[1] {
			case repSucceeded:
				success = true
			case repFailure, repNotAllowed, repHostUnreach, repRefused, repCmdUnsupp, repAtypUnsupp:
				if len(o) != 12 {
					t.Fatalf("bytes after a failure reply: %x; input %x", o, in)
				}
			default:
				t.Fatalf("reply code %d; input %x", rep[1], in)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(dials) > 1 {
			t.Fatalf("dialled %v, want at most one", dials)
		}
		if success != (len(dials) == 1) {
			t.Fatalf("success reply %v but dials %v; input %x", success, dials, in)
		}
		for _, d := range dials {
			ap, err := netip.ParseAddrPort(d)
			if err != nil || ap.Addr() != allowed || ap.Port() == 0 {
				t.Fatalf("dialled %q, want %s with a port", d, allowed)
			}
		}
	})
}
