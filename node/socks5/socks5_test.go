package socks5

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
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
