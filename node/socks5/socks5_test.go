package socks5

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

type mapResolver map[string]netip.Addr

func (m mapResolver) Resolve(h string) (netip.Addr, error) {
	if a, ok := m[h]; ok {
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: %s", ErrNotAllowed, h)
}

func connectReq(host string, port uint16) []byte {
	b := []byte{5, 1, 0, 3, byte(len(host))}
	b = append(b, host...)
	return binary.BigEndian.AppendUint16(b, port)
}

func TestProxy(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	echoPort := uint16(echo.Addr().(*net.TCPAddr).Port)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:1"), Resolver: mapResolver{"edge-node-01": netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{5, 1, 0}); err != nil {
			t.Fatal(err)
		}
		var m [2]byte
		if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0} {
			t.Fatalf("method selection: got %v, %v", m, err)
		}
		return c
	}
	t.Run("connect by node name", func(t *testing.T) {
		c := dial(t)
		defer c.Close()
		c.Write(connectReq("edge-node-01", echoPort))
		var rep [10]byte
		if _, err := io.ReadFull(c, rep[:]); err != nil || rep[1] != repSucceeded {
			t.Fatalf("reply: got %v, %v, want success", rep, err)
		}
		msg := []byte("ssh-2.0 hello")
		c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: got %q, %v", got, err)
		}
	})
	for _, tc := range []struct {
		name string
		req  []byte
		want byte
	}{
		{"name outside the overlay", connectReq("example.com", 80), repNotAllowed},
		{"bind command", []byte{5, 2, 0, 1, 127, 0, 0, 1, 0, 80}, repCmdUnsupp},
		{"bad address type", []byte{5, 1, 0, 9, 0, 0}, repAtypUnsupp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t)
			defer c.Close()
			c.Write(tc.req)
			var rep [10]byte
			if _, err := io.ReadFull(c, rep[:]); err != nil || rep[1] != tc.want {
				t.Errorf("reply: got %v, %v, want code %d", rep, err, tc.want)
			}
		})
	}
	t.Run("no acceptable method", func(t *testing.T) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{5, 1, 2}) // username/password only
		var m [2]byte
		if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0xff} {
			t.Errorf("got %v, %v, want no acceptable methods", m, err)
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	f.Add(connectReq("edge-node-01", 22))
	f.Add([]byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 22})
	f.Add([]byte{5, 1, 0, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, _, err := ReadRequest(bytes.NewReader(b))
		if err == nil && (req.Port == 0 || req.Host == "" || len(req.Host) > 255) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

// serve starts s on a loopback listener until the test ends.
func serve(t *testing.T, s *Server) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return ln.Addr()
}

// TestForeignClientRefused is the attack of issue 12: a client that is
// not local (here 127.0.0.2, which the test's Local function treats as
// foreign, like a LAN neighbour routing the proxy's address through the
// node) sends a valid CONNECT for a node name. It must get the connection
// closed without a byte, and nothing may be dialled.
func TestForeignClientRefused(t *testing.T) {
	var dialled atomic.Int32
	s, err := New(Config{
		Listen:   netip.MustParseAddrPort("127.0.0.1:1"),
		Resolver: mapResolver{"edge-node-01": netip.MustParseAddr("127.0.0.1")},
		Local:    func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.1") },
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialled.Add(1)
			return nil, errors.New("test dialer")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(append([]byte{5, 1, 0}, connectReq("edge-node-01", 22)...))
	got, err := io.ReadAll(c)
	if len(got) != 0 {
		t.Errorf("foreign client got %v, want no bytes", got)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connection from a foreign client left open (read timed out)")
	}
	for deadline := time.Now().Add(2 * time.Second); s.Refused() == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	if s.Refused() != 1 || dialled.Load() != 0 || s.Connections() != 0 {
		t.Errorf("refused %d, dialled %d, proxied %d; want 1, 0, 0", s.Refused(), dialled.Load(), s.Connections())
	}

	// The local client is served.
	lc, err := net.Dial("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	lc.SetDeadline(time.Now().Add(5 * time.Second))
	lc.Write([]byte{5, 1, 0})
	var m [2]byte
	if _, err := io.ReadFull(lc, m[:]); err != nil || m != [2]byte{5, 0} {
		t.Errorf("local client: method selection %v, %v; want [5 0]", m, err)
	}
}

func TestDefaultLocalIsLoopback(t *testing.T) {
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:1"), Resolver: mapResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{"127.0.0.1": true, "::1": true, "10.0.0.1": false, "169.254.96.16": false} {
		if got := s.cfg.Local(netip.MustParseAddr(a)); got != want {
			t.Errorf("default Local(%s): got %v, want %v", a, got, want)
		}
	}
}

// TestMaxConns: past MaxConns a new client waits until one leaves.
func TestMaxConns(t *testing.T) {
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:1"), Resolver: mapResolver{}, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	greet := func() (net.Conn, error) {
		c, err := net.Dial("tcp4", addr.String())
		if err != nil {
			return nil, err
		}
		c.Write([]byte{5, 1, 0})
		return c, nil
	}
	reply := func(c net.Conn, wait time.Duration) error {
		c.SetReadDeadline(time.Now().Add(wait))
		var m [2]byte
		_, err := io.ReadFull(c, m[:])
		return err
	}
	var held []net.Conn
	for range 2 {
		c, err := greet()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := reply(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	third, err := greet()
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if err := reply(third, 200*time.Millisecond); err == nil {
		t.Fatalf("third connection served while two are open, want it to wait")
	}
	held[0].Close()
	if err := reply(third, 5*time.Second); err != nil {
		t.Errorf("third connection after one left: %v, want served", err)
	}
}
