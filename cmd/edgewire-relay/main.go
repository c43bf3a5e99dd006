// Command edgewire-relay runs a standalone relay (and STUN server) for
// extra regions, meshed with the coordinator's embedded relay and other
// relays.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/coordinator/pki"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/connlimit"
	"github.com/edgewire/edgewire/internal/logging"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/types/key"
)

func main() {
	var (
		dataDir, listen, stunListen, ticketKey, meshKeyFile string
		tlsCert, tlsKey                                     string
		meshPeers                                           []string
		printKey                                            bool
		clientRate                                          float64
		queueBudgetMiB, queueMiB                            int64
		maxPending, maxPendingPerIP, maxConnsPerIP          int
		metricsListen                                       string
		logLevel, logFormat                                 string
	)
	cmd := &cobra.Command{
		Use:           "edgewire-relay",
		Short:         "Run a standalone edgewire relay",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return err
			}
			priv, err := key.LoadOrCreatePrivateFile(filepath.Join(dataDir, "relay.key"))
			if err != nil {
				return err
			}
			pub := priv.Public()
			if printKey {
				fmt.Println(pub)
				return nil
			}
			tk, err := parseTicketKey(ticketKey)
			if err != nil {
				return err
			}
			cfg := relay.ServerConfig{
				PrivateKey: priv, TicketKey: tk, Logger: log,
				MaxPendingHandshakes: maxPending, MaxPendingPerIP: maxPendingPerIP, MaxConnsPerIP: maxConnsPerIP,
			}
			if cfg.RateBytes, err = relay.RateFromMbit(clientRate); err != nil {
				return fmt.Errorf("--client-rate: %w", err)
			}
			for _, f := range []struct {
				name string
				mib  int64
				dst  *int64
			}{{"--queue-budget-mib", queueBudgetMiB, &cfg.QueueBudget}, {"--client-queue-mib", queueMiB, &cfg.QueueBytes}} {
				if f.mib < 1 || f.mib > 1<<20 {
					return fmt.Errorf("%s %d: want 1 to %d", f.name, f.mib, 1<<20)
				}
				*f.dst = f.mib << 20
			}
			if cfg.QueueBudget < cfg.QueueBytes {
				return fmt.Errorf("--queue-budget-mib %d is below --client-queue-mib %d", queueBudgetMiB, queueMiB)
			}
			for _, f := range []struct {
				name string
				v    int
			}{{"--max-pending-handshakes", maxPending}, {"--max-pending-per-ip", maxPendingPerIP}, {"--max-conns-per-ip", maxConnsPerIP}} {
				if f.v < 1 {
					return fmt.Errorf("%s %d: want at least 1", f.name, f.v)
				}
			}
			if meshKeyFile != "" {
				if cfg.MeshKey, err = relay.LoadMeshKey(meshKeyFile); err != nil {
					return err
				}
			}
			for _, mp := range meshPeers {
				p, err := parseMeshPeer(mp)
				if err != nil {
					return err
				}
				cfg.MeshPeers = append(cfg.MeshPeers, p)
			}
			if len(cfg.MeshPeers) > 0 && cfg.MeshKey == nil {
				return fmt.Errorf("--mesh-peer needs --mesh-key-file")
			}
			rs, err := relay.NewServer(cfg)
			if err != nil {
				return err
			}
			cert, err := servingCert(dataDir, tlsCert, tlsKey)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if stunListen != "" {
				ss, err := stunserver.Listen(stunListen, log.With("src", "stun"))
				if err != nil {
					return fmt.Errorf("STUN server: %w", err)
				}
				defer ss.Close()
				go ss.Serve()
			}
			tcpLn, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			// The relay bounds connections per address from the Upgrade
			// request on; this bounds them before it too (TLS handshakes,
			// connections that never send a request).
			ln := connlimit.New(tcpLn, maxConnsPerIP+maxPendingPerIP)
			hs := relay.NewHTTPServer(rs, cert)
			go hs.ServeTLS(ln, "", "")
			log.Info("relay started", "listen", ln.Addr(), "key", pub.String(), "mesh_peers", len(cfg.MeshPeers))
			reg := telemetry.NewRegistry()
			rs.RegisterMetrics(reg)
			go func() {
				if err := telemetry.Serve(ctx, metricsListen, reg, nil, log); err != nil {
					log.Error("metrics server", "err", err)
				}
			}()
			err = rs.Run(ctx)
			shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			hs.Shutdown(shut)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "/var/lib/edgewire/relay", "directory for the relay key")
	f.StringVar(&listen, "listen", ":8444", "TCP address of the relay's HTTPS listener")
	f.StringVar(&stunListen, "stun-listen", ":3478", "UDP address of the STUN server (empty: off)")
	f.StringVar(&ticketKey, "ticket-key", "", "coordinator's ticket public key: base64, or a file holding it (<coordinator data-dir>/ticket.key.pub)")
	f.StringVar(&meshKeyFile, "mesh-key-file", "", "file with the relay mesh key")
	f.StringSliceVar(&meshPeers, "mesh-peer", nil, "another relay of the mesh as https://host:port/relay=<base64 key> (repeatable)")
	f.StringVar(&tlsCert, "tls-cert", "", "serving certificate (PEM); default: self-signed (clients authenticate the relay by its key)")
	f.StringVar(&tlsKey, "tls-key", "", "serving certificate key (PEM)")
	f.Float64Var(&clientRate, "client-rate", relay.DefaultRateBytes*8/1e6, "Mbit/s each node may send through this relay (0: no limit)")
	f.Int64Var(&queueBudgetMiB, "queue-budget-mib", relay.DefaultQueueBudget>>20, "MiB all queued packets may hold together; beyond it the oldest packets of the fullest queues are dropped")
	f.Int64Var(&queueMiB, "client-queue-mib", relay.DefaultQueueBytes>>20, "MiB of packets queued for one node before its oldest are dropped")
	f.IntVar(&maxPending, "max-pending-handshakes", relay.DefaultMaxPendingHandshakes, "connections in the handshake at once; more are answered 503")
	f.IntVar(&maxPendingPerIP, "max-pending-per-ip", relay.DefaultMaxPendingPerIP, "connections in the handshake from one IPv4 address or IPv6 /64; more are answered 429")
	f.IntVar(&maxConnsPerIP, "max-conns-per-ip", relay.DefaultMaxConnsPerIP, "connections from one IPv4 address or IPv6 /64; more are answered 429")
	f.BoolVar(&printKey, "print-key", false, "print the relay's public key (for the relay map) and exit")
	f.StringVar(&metricsListen, "metrics-listen", "127.0.0.1:9091", "address for /metrics, /healthz and /readyz (empty: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire-relay:", err)
		os.Exit(1)
	}
}

func parseTicketKey(s string) (ed25519.PublicKey, error) {
	if s == "" {
		return nil, fmt.Errorf("--ticket-key is required: without it the relay cannot tell members from strangers")
	}
	if b, err := os.ReadFile(s); err == nil {
		s = string(b)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("--ticket-key: want a base64 Ed25519 public key or a file holding one")
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
	if certFile != "" || keyFile != "" {
		return tls.LoadX509KeyPair(certFile, keyFile)
	}
	id, err := pki.LoadOrCreate(filepath.Join(dir, "pki"), nil, nil, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	return id.Cert, nil
}
