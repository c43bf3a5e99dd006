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
	"net/url"
	"strings"
	"time"

	"github.com/edgewire/edgewire/internal/httpserve"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/edgewire/agent.sock"

// The types below are the local API's JSON and what `edgewire ... -o
// json` prints: every field is always present (no omitempty), so a
// consumer can tell false, 0 and "" from a field it does not know. An
// object that does not apply is null.

// Status is the agent's view of itself and its peers.
type Status struct {
	Self  SelfStatus   `json:"self"`
	Peers []PeerStatus `json:"peers"`
}

// SelfStatus describes the local node.
type SelfStatus struct {
	Name       string   `json:"name"`
	PublicKey  string   `json:"public_key"`
	Addresses  []string `json:"addresses"`
	Interface  string   `json:"interface"`
	ListenPort int      `json:"listen_port"`
	// MTU is the overlay interface's, and every peer's effective MTU:
	// outer packets go without DF, so a smaller underlay MTU on the way
	// to a peer is fragmented by its router instead of lowering it.
	MTU         int          `json:"mtu"`
	Endpoints   []string     `json:"endpoints"`
	Coordinator string       `json:"coordinator"`
	Connected   bool         `json:"connected"` // stream to the coordinator is up
	MapVersion  uint64       `json:"map_version"`
	Relay       *RelayStatus `json:"relay"`
}

// RelayStatus describes the node's home relay.
type RelayStatus struct {
	Home      string             `json:"home"` // region name
	Connected bool               `json:"connected"`
	Error     string             `json:"error"`
	LatencyMs map[string]float64 `json:"latency_ms"` // by region name
}

// PeerStatus describes one peer.
type PeerStatus struct {
	Name          string     `json:"name"`
	PublicKey     string     `json:"public_key"`
	Addresses     []string   `json:"addresses"`
	Routes        []string   `json:"routes"`
	Online        bool       `json:"online"`         // connected to the coordinator
	Path          string     `json:"path"`           // none, direct, relay
	LastKnown     bool       `json:"last_known"`     // direct to the last endpoint that worked (no relay; not confirmed now)
	Relay         string     `json:"relay"`          // relay region, when Path is relay
	Endpoint      string     `json:"endpoint"`       // as WireGuard has it
	LastHandshake *time.Time `json:"last_handshake"` // nil (null): never
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	ICE           *ICEStatus `json:"ice"`     // nil (null): no ICE session
	Version       string     `json:"version"` // agent version the peer reported, "" if none
}

// ICEStatus is the state of the peer's ICE session.
type ICEStatus struct {
	State    string         `json:"state"` // new, checking, connected, disconnected, failed, closed
	Local    *CandidateInfo `json:"local"` // selected pair, when connected
	Remote   *CandidateInfo `json:"remote"`
	RTTMs    float64        `json:"rtt_ms"`
	Restarts uint64         `json:"restarts"`
}

// CandidateInfo is one side of the selected ICE candidate pair.
type CandidateInfo struct {
	Type    string `json:"type"`    // host, srflx, prflx, relay
	Address string `json:"address"` // ip:port
}

// PingResult is one echo to a peer.
type PingResult struct {
	Peer     string  `json:"peer"`    // the peer's name
	Address  string  `json:"address"` // the overlay address pinged
	Path     string  `json:"path"`
	Relay    string  `json:"relay"`
	Endpoint string  `json:"endpoint"`
	RTTMs    float64 `json:"rtt_ms"`
}

// Netcheck is what `edgewire netcheck` reports.
type Netcheck struct {
	UDP            bool           `json:"udp"` // some STUN server answered
	PublicAddr     string         `json:"public_addr"`
	Mapping        string         `json:"mapping"` // endpoint-independent, endpoint-dependent or unknown
	Meaning        string         `json:"meaning"` // what the verdict means for direct paths, in plain words
	NoNAT          bool           `json:"no_nat"`  // the public address is the node's own
	STUN           []STUNResult   `json:"stun"`
	RelayLatencyMs []RelayLatency `json:"relays"`
	PreferredRelay string         `json:"preferred_relay"`
}

// STUNResult is one STUN server's answer.
type STUNResult struct {
	Server string  `json:"server"`
	Alt    bool    `json:"alt"` // the server's second port (mapping test only)
	Mapped string  `json:"mapped"`
	RTTMs  float64 `json:"rtt_ms"`
	Error  string  `json:"error"`
}

// RelayLatency is the measured latency to one relay.
type RelayLatency struct {
	Name      string  `json:"name"`
	LatencyMs float64 `json:"latency_ms"`
}

// Services is how this node reaches each Service endpoint.
type Services struct {
	Endpoints []ServiceEndpoint `json:"endpoints"`
	Forward   ForwardStats      `json:"forward"`
}

// ServiceEndpoint is one endpoint of a Service and its path from here.
type ServiceEndpoint struct {
	Service  string `json:"service"` // namespace/name
	Address  string `json:"address"` // the endpoint's address
	NodeName string `json:"node"`    // its Kubernetes node
	Via      string `json:"via"`     // the overlay node it is reached through
	Path     string `json:"path"`    // local, l3, host, forward, address, none
	Target   string `json:"target"`  // where the rules send it
	Why      string `json:"why"`
}

// ForwardStats counts node-forwarded Service connections.
type ForwardStats struct {
	Ports      int   `json:"ports"`        // local ports for endpoints on other nodes
	Out        int64 `json:"out"`          // connections and flows sent to other nodes
	OutFailed  int64 `json:"out_failed"`   // refused or unanswered by the endpoint's node
	In         int64 `json:"in"`           // taken for endpoints on this node
	InRefused  int64 `json:"in_refused"`   // not an endpoint here, or not from a peer
	InNoAnswer int64 `json:"in_no_answer"` // the local endpoint did not answer
}

// ErrNoPeer is returned for a ping to a name or address that is not a
// peer's.
var ErrNoPeer = errors.New("no such peer")

// Backend is what the server needs from the agent.
type Backend interface {
	Status() (Status, error)
	// Ping pings peer, a peer's node name or one of its overlay
	// addresses, once.
	Ping(ctx context.Context, peer string) (PingResult, error)
	Netcheck(ctx context.Context) (Netcheck, error)
	Services() (Services, error)
}

// Serve serves the API on a unix socket at path until ctx ends.
func Serve(ctx context.Context, path string, b Backend, log *slog.Logger) error {
	// The directory stays readable (0755): the socket itself is 0600.
	ln, err := httpserve.ListenUnix(path, 0o755)
	if err != nil {
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
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		sv, err := b.Services()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sv)
	})
	mux.HandleFunc("POST /v1/netcheck", func(w http.ResponseWriter, r *http.Request) {
		nc, err := b.Netcheck(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(nc)
	})
	mux.HandleFunc("POST /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		res, err := b.Ping(r.Context(), r.URL.Query().Get("peer"))
		if errors.Is(err, ErrNoPeer) {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusGatewayTimeout)
			json.NewEncoder(w).Encode(struct {
				PingResult
				Error string `json:"error"`
			}{res, err.Error()})
			return
		}
		json.NewEncoder(w).Encode(res)
	})
	return httpserve.Serve(ctx, ln, mux)
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

// Ping asks the agent to ping a peer once. A lost reply is an error; the
// result still says which path the peer had.
func (c Client) Ping(ctx context.Context, peer string) (PingResult, error) {
	var res struct {
		PingResult
		Error string `json:"error"`
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/ping?peer="+url.QueryEscape(peer), nil)
	if err != nil {
		return res.PingResult, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return res.PingResult, fmt.Errorf("cannot reach the agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return res.PingResult, errors.New(strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res.PingResult, fmt.Errorf("agent: %s", resp.Status)
	}
	if res.Error != "" {
		return res.PingResult, errors.New(res.Error)
	}
	return res.PingResult, nil
}

// Netcheck asks the agent to probe its network.
func (c Client) Netcheck(ctx context.Context) (Netcheck, error) {
	var nc Netcheck
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/netcheck", nil)
	if err != nil {
		return nc, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nc, fmt.Errorf("cannot reach the agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nc, fmt.Errorf("agent: %s: %s", resp.Status, b)
	}
	return nc, json.NewDecoder(resp.Body).Decode(&nc)
}

// Status fetches the agent's status.
func (c Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.get(ctx, "/v1/status", &st)
}

// Services fetches how the agent reaches each Service endpoint.
func (c Client) Services(ctx context.Context) (Services, error) {
	var sv Services
	return sv, c.get(ctx, "/v1/services", &sv)
}

// get fetches path and decodes its JSON into v.
func (c Client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return fmt.Errorf("cannot reach the agent at %s (is edgewire-agent running? use --socket): %w", c.Socket, err)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent: %s: %s", resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
