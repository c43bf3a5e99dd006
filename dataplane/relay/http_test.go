package relay

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"testing"
)

// TestHTTPServerErrorLog: the HTTP server's own errors (a port scanner's
// failed TLS handshake) go to the relay's logger at debug level, as one
// structured line, not to the standard library's log package.
func TestHTTPServerErrorLog(t *testing.T) {
	var b bytes.Buffer
	s, err := NewServer(ServerConfig{PrivateKey: newKey(), TicketKey: newEnv(t).tpub,
		Logger: slog.New(slog.NewJSONHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	hs := NewHTTPServer(s, tls.Certificate{})
	if hs.ErrorLog == nil {
		t.Fatal("ErrorLog is nil: errors go to the log package's default logger")
	}
	hs.ErrorLog.Printf("http: TLS handshake error from 192.0.2.1:4242: EOF")
	var line struct{ Level, Msg string }
	if err := json.Unmarshal(b.Bytes(), &line); err != nil {
		t.Fatalf("got %q: %v", b.String(), err)
	}
	if line.Level != "DEBUG" || line.Msg != "http: TLS handshake error from 192.0.2.1:4242: EOF" {
		t.Errorf("got level %s msg %q, want DEBUG and the server's message", line.Level, line.Msg)
	}
}
