package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestReady(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Ready("x"); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: got %v, %v, want no-op", sent, err)
	}
	path := filepath.Join(t.TempDir(), "notify.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if sent, err := Ready("interface up"); !sent || err != nil {
		t.Fatalf("Ready: got %v, %v", sent, err)
	}
	l.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, err := l.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf[:n]), "READY=1\nSTATUS=interface up"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
