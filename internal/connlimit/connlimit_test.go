package connlimit

import (
	"net"
	"testing"
	"time"
)

func TestPerSource(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := New(inner, 3)
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var server []net.Conn
	for range 3 {
		dial()
		server = append(server, <-accepted)
	}
	// The fourth from the same address is closed by the listener: a read
	// on it ends.
	extra := dial()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on the connection over the limit succeeded, want it closed")
	}
	if got := ln.Refused(); got != 1 {
		t.Errorf("Refused() = %d, want 1", got)
	}
	// Closing one makes room for one more.
	server[0].Close()
	dial()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted after one closed")
	}
	if got := ln.Refused(); got != 1 {
		t.Errorf("Refused() = %d after a slot freed, want 1", got)
	}
}
