// Package localapi is the agent's local control surface: HTTP with JSON on
// a unix socket that only root can open. The edgewire CLI is its client.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/edgewire/agent.sock"

// Status is the agent's view of itself and its peers.
type Status struct {
	Self  SelfStatus   `json:"self"`
	Peers []PeerStatus `json:"peers"`
}

// SelfStatus describes the local node.
type SelfStatus struct {
	Name        string   `json:"name"`
	PublicKey   string   `json:"public_key"`
	Addresses   []string `json:"addresses"`
	Interface   string   `json:"interface"`
	ListenPort  int      `json:"listen_port"`
	Endpoints   []string `json:"endpoints"`
	Coordinator string   `json:"coordinator"`
	Connected   bool     `json:"connected"` // stream to the coordinator is up
	MapVersion  uint64   `json:"map_version"`
}

// PeerStatus describes one peer.
type PeerStatus struct {
	Name          string     `json:"name"`
	PublicKey     string     `json:"public_key"`
	Addresses     []string   `json:"addresses"`
	Routes        []string   `json:"routes,omitempty"`
	Online        bool       `json:"online"`             // connected to the coordinator
	Path          string     `json:"path"`               // none, direct
	Endpoint      string     `json:"endpoint,omitempty"` // as WireGuard has it
	LastHandshake time.Time  `json:"last_handshake,omitzero"`
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	ICE           *ICEStatus `json:"ice,omitempty"`
}

// ICEStatus is the state of the peer's ICE session.
type ICEStatus struct {
	State    string         `json:"state"`           // new, checking, connected, disconnected, failed, closed
	Local    *CandidateInfo `json:"local,omitempty"` // selected pair, when connected
	Remote   *CandidateInfo `json:"remote,omitempty"`
	RTTMs    float64        `json:"rtt_ms,omitempty"`
	Restarts uint64         `json:"restarts"`
}

// CandidateInfo is one side of the selected ICE candidate pair.
type CandidateInfo struct {
	Type    string `json:"type"`    // host, srflx, prflx, relay
	Address string `json:"address"` // ip:port
}

// Backend is what the server needs from the agent.
type Backend interface {
	Status() (Status, error)
}

// Serve serves the API on a unix socket at path until ctx ends.
func Serve(ctx context.Context, path string, b Backend, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("local API socket %s is in use by another agent", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
		return nil
	case err := <-errc:
		return err
	}
}

// Client talks to an agent's local API.
type Client struct {
	Socket string
}

func (c Client) http() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket)
		}},
	}
}

// Status fetches the agent's status.
func (c Client) Status(ctx context.Context) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return st, fmt.Errorf("cannot reach the agent at %s (is edgewire-agent running? use --socket): %w", c.Socket, err)
		}
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return st, fmt.Errorf("agent: %s: %s", resp.Status, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
