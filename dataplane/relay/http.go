package relay

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"
)

// NewHTTPServer returns an HTTPS server for h (a relay Server) that speaks
// HTTP/1.1 only: the relay protocol starts with an Upgrade, which HTTP/2
// does not have. Serve it with ServeTLS(ln, "", "").
//
// The HTTP server's own errors (a failed TLS handshake: any port scanner)
// go to the relay Server's logger at debug level, not to the standard
// library's log package.
func NewHTTPServer(h http.Handler, cert tls.Certificate) *http.Server {
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	if s, ok := h.(*Server); ok {
		hs.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	}
	return hs
}

// LoadMeshKey reads a relay mesh key: at least 32 characters of secret,
// the same file on every relay of the mesh.
func LoadMeshKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k := []byte(strings.TrimSpace(string(b)))
	if len(k) < 32 {
		return nil, fmt.Errorf("mesh key in %s is %d bytes; want at least 32 (e.g. `head -c 32 /dev/urandom | base64`)", path, len(k))
	}
	return k, nil
}
