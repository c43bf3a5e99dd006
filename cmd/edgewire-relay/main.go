// Command edgewire-relay runs a standalone relay (and STUN server) for
// extra regions, meshed with the coordinator's embedded relay and other
// relays. The daemon is package relayd; this turns flags into its Config.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/dataplane/relayd"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/internal/logging"
)

func main() {
	var (
		cfg                 = relayd.DefaultConfig()
		printKey            bool
		logLevel, logFormat string
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
			logging.Install(log)
			cfg.Logger = log
			if printKey {
				priv, err := relayd.LoadKey(cfg.DataDir)
				if err != nil {
					return err
				}
				fmt.Println(priv.Public())
				return nil
			}
			r, err := relayd.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return r.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the relay key")
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "TCP address of the relay's HTTPS listener")
	f.StringVar(&cfg.STUNListen, "stun-listen", cfg.STUNListen, "UDP address of the STUN server (empty: off)")
	f.StringVar(&cfg.STUNAlt, "stun-listen-alt", cfg.STUNAlt, "second UDP address of the STUN server, which lets netcheck tell endpoint-independent NATs from symmetric ones ("+stunserver.AltAuto+": the --stun-listen port + 1; empty: off); give its port as stun_alt_port in the coordinator's relay map")
	f.StringVar(&cfg.TicketKey, "ticket-key", "", "coordinator's ticket public key: base64, or a file holding it (<coordinator data-dir>/ticket.key.pub)")
	f.StringVar(&cfg.MeshKeyFile, "mesh-key-file", "", "file with the relay mesh key")
	f.StringSliceVar(&cfg.MeshPeers, "mesh-peer", nil, "another relay of the mesh as https://host:port/relay=<base64 key> (repeatable)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "serving certificate (PEM); default: self-signed (clients authenticate the relay by its key)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "serving certificate key (PEM)")
	f.Float64Var(&cfg.ClientRateMbit, "client-rate", cfg.ClientRateMbit, "Mbit/s each node may send through this relay (0: no limit)")
	f.Int64Var(&cfg.QueueBudgetMiB, "queue-budget-mib", cfg.QueueBudgetMiB, "MiB all queued packets may hold together; beyond it the oldest packets of the fullest queues are dropped")
	f.Int64Var(&cfg.ClientQueueMiB, "client-queue-mib", cfg.ClientQueueMiB, "MiB of packets queued for one node before its oldest are dropped")
	f.IntVar(&cfg.MaxPendingHandshakes, "max-pending-handshakes", cfg.MaxPendingHandshakes, "connections in the handshake at once; more are answered 503")
	f.IntVar(&cfg.MaxPendingPerIP, "max-pending-per-ip", cfg.MaxPendingPerIP, "connections in the handshake from one IPv4 address or IPv6 /64; more are answered 429")
	f.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", cfg.MaxConnsPerIP, "connections from one IPv4 address or IPv6 /64; more are answered 429")
	f.BoolVar(&printKey, "print-key", false, "print the relay's public key (for the relay map) and exit")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "address for /metrics, /healthz and /readyz (empty: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	cmd.AddCommand(buildinfo.Command("edgewire-relay"))
	buildinfo.SetVersion(cmd, "edgewire-relay")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire-relay:", err)
		os.Exit(1)
	}
}
