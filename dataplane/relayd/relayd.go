// Package relayd assembles the standalone relay daemon (edgewire-relay)
// that serves regions beyond the coordinator's embedded relay: its key
// and certificate, the coordinator's ticket key, the relay mesh, the
// relay's HTTPS listener, a STUN server and metrics, run as the parts of
// one run group. cmd/edgewire-relay only turns flags into a Config.
package relayd

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgewire/edgewire/coordinator/pki"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/connlimit"
	"github.com/edgewire/edgewire/internal/rungroup"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/types/key"
)

// Defaults, in one place (DefaultConfig).
const (
	DefaultDataDir = "/var/lib/edgewire/relay"
	DefaultListen  = ":8444"
	DefaultSTUN    = ":3478"
	DefaultMetrics = "127.0.0.1:9091"
	// KeyFile holds the relay's private key in the data directory.
	KeyFile = "relay.key"

	maxQueueMiB = 1 << 20
	// shutdownGrace bounds how long requests in flight (probes, TLS
	// handshakes) may hold up a stop; relay connections are cut at once.
	shutdownGrace = 2 * time.Second
)

// Config configures the relay daemon. Its fields are the daemon's flags,
// in their units, and its errors name them.
type Config struct {
	DataDir     string   // KeyFile, and the self-signed certificate (pki/) unless TLSCert is given
	Listen      string   // TCP address of the relay's HTTPS listener
	STUNListen  string   // UDP address of the STUN server; empty: off
	STUNAlt     string   // its second UDP address, for netcheck (stunserver.AltListen); empty: off
	TicketKey   string   // the coordinator's ticket public key: base64, or a file holding it; required
	MeshKeyFile string   // file with the relay mesh key; empty: no mesh
	MeshPeers   []string // other relays of the mesh, "https://host:port/relay=<base64 key>"
	TLSCert     string   // serving certificate (PEM); empty: self-signed (clients check the relay's key)
	TLSKey      string   // its key (PEM)

	ClientRateMbit       float64 // what each node may send through the relay; 0: no limit
	QueueBudgetMiB       int64   // all queued packets together, 1 to 1<<20
	ClientQueueMiB       int64   // one node's queue, 1 to QueueBudgetMiB
	MaxPendingHandshakes int     // handshakes at once (more: 503)
	MaxPendingPerIP      int     // handshakes per IPv4 address or IPv6 /64 (more: 429)
	MaxConnsPerIP        int     // connections per IPv4 address or IPv6 /64 (more: 429)

	MetricsListen string // /metrics, /healthz, /readyz; empty: off
	Logger        *slog.Logger
}

// DefaultConfig is the daemon's defaults (the flags' defaults). A zero
// Config is not valid: limits of 0 are refused, as the flags refuse them.
func DefaultConfig() Config {
	return Config{
		DataDir:              DefaultDataDir,
		Listen:               DefaultListen,
		STUNListen:           DefaultSTUN,
		STUNAlt:              stunserver.AltAuto,
		ClientRateMbit:       relay.DefaultRateBytes * 8 / 1e6,
		QueueBudgetMiB:       relay.DefaultQueueBudget >> 20,
		ClientQueueMiB:       relay.DefaultQueueBytes >> 20,
		MaxPendingHandshakes: relay.DefaultMaxPendingHandshakes,
		MaxPendingPerIP:      relay.DefaultMaxPendingPerIP,
		MaxConnsPerIP:        relay.DefaultMaxConnsPerIP,
		MetricsListen:        DefaultMetrics,
	}
}

// Relay is a relay daemon whose sockets are open. It holds them from New
// on and Run releases them, so every Relay New returns must be Run (with
// a cancelled context, if it is not to serve).
type Relay struct {
	cfg  Config
	log  *slog.Logger
	srv  *relay.Server
	cert tls.Certificate
	ln   net.Listener       // the HTTPS listener, bounded per source address
	stun *stunserver.Server // nil: off
	alt  *stunserver.Server // its second port; nil: off
	reg  *prometheus.Registry
}

// LoadKey returns the relay's private key kept in dataDir, creating the
// directory (0700) and the key on first use.
func LoadKey(dataDir string) (key.Private, error) {
	if dataDir == "" {
		return key.Private{}, errors.New("--data-dir is required")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return key.Private{}, err
	}
	return key.LoadOrCreatePrivateFile(filepath.Join(dataDir, KeyFile))
}

// New validates cfg, loads the keys and the certificate, and opens the
// relay's listeners.
func New(cfg Config) (*Relay, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	priv, err := LoadKey(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	rcfg, err := cfg.serverConfig(priv)
	if err != nil {
		return nil, err
	}
	rs, err := relay.NewServer(rcfg)
	if err != nil {
		return nil, err
	}
	cert, err := servingCert(cfg.DataDir, cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, srv: rs, cert: cert, reg: telemetry.NewRegistry()}
	rs.RegisterMetrics(r.reg)
	altAddr, err := stunserver.AltListen(cfg.STUNListen, cfg.STUNAlt)
	if err != nil {
		return nil, fmt.Errorf("STUN server: %w", err)
	}
	closeSTUN := func() {
		for _, s := range []*stunserver.Server{r.stun, r.alt} {
			if s != nil {
				s.Close()
			}
		}
	}
	if cfg.STUNListen != "" {
		if r.stun, err = stunserver.Listen(cfg.STUNListen, cfg.Logger.With("src", "stun")); err != nil {
			return nil, fmt.Errorf("STUN server: %w", err)
		}
	}
	if altAddr != "" {
		if r.alt, err = stunserver.Listen(altAddr, cfg.Logger.With("src", "stun-alt")); err != nil {
			closeSTUN()
			return nil, fmt.Errorf("STUN server (--stun-listen-alt): %w", err)
		}
	}
	tcpLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		closeSTUN()
		return nil, err
	}
	// The relay bounds connections per address from the Upgrade request
	// on; this bounds them before it too (TLS handshakes, connections
	// that never send a request).
	r.ln = connlimit.New(tcpLn, cfg.MaxConnsPerIP+cfg.MaxPendingPerIP)
	return r, nil
}

// serverConfig checks the relay's limits and mesh and turns them into the
// relay server's configuration.
func (c *Config) serverConfig(priv key.Private) (relay.ServerConfig, error) {
	tk, err := parseTicketKey(c.TicketKey)
	if err != nil {
		return relay.ServerConfig{}, err
	}
	rc := relay.ServerConfig{
		PrivateKey: priv, TicketKey: tk, Logger: c.Logger,
		MaxPendingHandshakes: c.MaxPendingHandshakes, MaxPendingPerIP: c.MaxPendingPerIP, MaxConnsPerIP: c.MaxConnsPerIP,
	}
	if rc.RateBytes, err = relay.RateFromMbit(c.ClientRateMbit); err != nil {
		return relay.ServerConfig{}, fmt.Errorf("--client-rate: %w", err)
	}
	for _, f := range []struct {
		name string
		mib  int64
		dst  *int64
	}{{"--queue-budget-mib", c.QueueBudgetMiB, &rc.QueueBudget}, {"--client-queue-mib", c.ClientQueueMiB, &rc.QueueBytes}} {
		if f.mib < 1 || f.mib > maxQueueMiB {
			return relay.ServerConfig{}, fmt.Errorf("%s %d: want 1 to %d", f.name, f.mib, maxQueueMiB)
		}
		*f.dst = f.mib << 20
	}
	if rc.QueueBudget < rc.QueueBytes {
		return relay.ServerConfig{}, fmt.Errorf("--queue-budget-mib %d is below --client-queue-mib %d", c.QueueBudgetMiB, c.ClientQueueMiB)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"--max-pending-handshakes", c.MaxPendingHandshakes}, {"--max-pending-per-ip", c.MaxPendingPerIP}, {"--max-conns-per-ip", c.MaxConnsPerIP}} {
		if f.v < 1 {
			return relay.ServerConfig{}, fmt.Errorf("%s %d: want at least 1", f.name, f.v)
		}
	}
	if c.MeshKeyFile != "" {
		if rc.MeshKey, err = relay.LoadMeshKey(c.MeshKeyFile); err != nil {
			return relay.ServerConfig{}, err
		}
	}
	for _, mp := range c.MeshPeers {
		p, err := parseMeshPeer(mp)
		if err != nil {
			return relay.ServerConfig{}, err
		}
		rc.MeshPeers = append(rc.MeshPeers, p)
	}
	if len(rc.MeshPeers) > 0 && rc.MeshKey == nil {
		return relay.ServerConfig{}, errors.New("--mesh-peer needs --mesh-key-file")
	}
	return rc, nil
}

// PublicKey is the relay's public key (what relay maps carry).
func (r *Relay) PublicKey() key.Public { return r.srv.PublicKey() }

// Addr is the address of the relay's HTTPS listener.
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// STUNAddr is the STUN server's address; nil when it is off.
func (r *Relay) STUNAddr() net.Addr {
	if r.stun == nil {
		return nil
	}
	return r.stun.Addr()
}

// STUNAltAddr is the address of the STUN server's second port; nil when
// it is off.
func (r *Relay) STUNAltAddr() net.Addr {
	if r.alt == nil {
		return nil
	}
	return r.alt.Addr()
}

// Run serves until ctx ends or a part fails, and returns once every part
// has stopped and the listeners are closed: nil after ctx ended, else the
// failure ("<part>: <error>"). Call it once.
func (r *Relay) Run(ctx context.Context) error {
	g, ctx := rungroup.New(ctx)
	if r.stun != nil {
		g.Go("STUN", func(ctx context.Context) error {
			return rungroup.Serve(ctx, r.stun.Serve, func() { r.stun.Close() })
		})
	}
	if r.alt != nil {
		g.Go("STUN alt", func(ctx context.Context) error {
			return rungroup.Serve(ctx, r.alt.Serve, func() { r.alt.Close() })
		})
	}
	g.Go("relay", func(ctx context.Context) error { return Serve(ctx, r.srv, r.ln, r.cert) })
	if r.cfg.MetricsListen != "" {
		g.Go("metrics", func(ctx context.Context) error {
			return telemetry.Serve(ctx, r.cfg.MetricsListen, r.reg, nil, r.log)
		})
	}
	r.log.Info("relay started", "listen", r.ln.Addr(), "public_key", r.PublicKey().String(), "mesh_peers", len(r.cfg.MeshPeers))
	err := g.Wait()
	r.log.Info("relay stopped", "err", err)
	return err
}

// Serve serves rs over HTTPS with cert on ln (closing it when done) and
// keeps rs.Run running beside it, until ctx ends or either fails. It
// returns once both have stopped: every relay connection closed and its
// handler returned, the HTTPS server shut down (requests in flight get
// a short grace). The coordinator serves its embedded relay with it too.
func Serve(ctx context.Context, rs *relay.Server, ln net.Listener, cert tls.Certificate) error {
	hs := relay.NewHTTPServer(rs, cert)
	g, ctx := rungroup.New(ctx)
	// Run closes the relay connections, which the HTTPS server no longer
	// tracks once they are upgraded, and waits for their handlers.
	g.Go("relay", rs.Run)
	g.Go("https", func(ctx context.Context) error {
		serve := func() error {
			if err := hs.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}
		return rungroup.Serve(ctx, serve, func() {
			shut, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			if hs.Shutdown(shut) != nil {
				hs.Close()
			}
		})
	})
	return g.Wait()
}

func parseTicketKey(s string) (ed25519.PublicKey, error) {
	if s == "" {
		return nil, errors.New("--ticket-key is required: without it the relay cannot tell members from strangers")
	}
	if b, err := os.ReadFile(s); err == nil {
		s = string(b)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, errors.New("--ticket-key: want a base64 Ed25519 public key or a file holding one")
	}
	return ed25519.PublicKey(k), nil
}

func parseMeshPeer(s string) (relay.MeshPeer, error) {
	url, b64, ok := strings.Cut(s, "=")
	if !ok || !strings.HasPrefix(url, "https://") {
		return relay.MeshPeer{}, fmt.Errorf("--mesh-peer %q: want https://host:port/relay=<base64 key>", s)
	}
	k, err := key.ParsePublic(b64)
	if err != nil {
		return relay.MeshPeer{}, fmt.Errorf("--mesh-peer %q: %w", s, err)
	}
	return relay.MeshPeer{URL: url, Key: k}, nil
}

func servingCert(dir, certFile, keyFile string) (tls.Certificate, error) {
	if (certFile == "") != (keyFile == "") {
		return tls.Certificate{}, errors.New("--tls-cert and --tls-key go together")
	}
	if certFile != "" {
		return tls.LoadX509KeyPair(certFile, keyFile)
	}
	id, err := pki.LoadOrCreate(filepath.Join(dir, "pki"), nil, nil, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	return id.Cert, nil
}
