// Command edgewire-agent runs on every node: it joins the overlay, runs
// the WireGuard device and keeps it in line with the network map.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/internal/logging"
	"github.com/edgewire/edgewire/node/agent"
	"github.com/edgewire/edgewire/node/localapi"
)

func parseRoutes(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, r := range in {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, fmt.Errorf("--advertise-routes %q: %w", r, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("--advertise-routes %s has host bits set (did you mean %s?)", p, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func main() {
	var (
		cfg                 agent.Config
		routes              []string
		logLevel, logFormat string
	)
	root := &cobra.Command{
		Use:           "edgewire-agent",
		Short:         "Run the edgewire node agent",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory for the node key, enrolment and last network map")
	pf.StringVar(&cfg.Coordinator, "coordinator", "", "coordinator host:port (for joining)")
	pf.StringVar(&cfg.Token, "token", os.Getenv("EDGEWIRE_TOKEN"), "join token (default $EDGEWIRE_TOKEN)")
	pf.StringVar(&cfg.ServerName, "coordinator-server-name", "", "TLS name the coordinator's certificate must carry (default edgewire-coordinator)")
	pf.StringVar(&cfg.Name, "name", "", "node name (default: hostname)")
	pf.StringSliceVar(&routes, "advertise-routes", nil, "prefixes behind this node to route over the overlay (e.g. the pod CIDR)")
	pf.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	pf.StringVar(&logFormat, "log-format", "text", "text or json")

	run := &cobra.Command{
		Use:   "run",
		Short: "Run the agent (joins first if --token is given and the node has not joined)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			if cfg.Routes, err = parseRoutes(routes); err != nil {
				return err
			}
			cfg.Logger = log
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx, cfg)
		},
	}
	rf := run.Flags()
	rf.StringVar(&cfg.Interface, "interface", agent.DefaultInterface, "WireGuard interface name")
	rf.IntVar(&cfg.MTU, "mtu", agent.DefaultMTU, "WireGuard interface MTU")
	rf.IntVar(&cfg.ListenPort, "listen-port", agent.DefaultListenPort, "WireGuard UDP port (0: any)")
	rf.StringVar(&cfg.Socket, "socket", localapi.DefaultSocket, "local API unix socket")
	rf.Uint32Var(&cfg.RelayRegion, "relay-region", 0, "preferred home relay region id, used whenever it is up (0: the closest)")

	join := &cobra.Command{
		Use:   "join",
		Short: "Join a coordinator with a join token and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := parseRoutes(routes)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			e, resp, err := agent.Join(ctx, agent.JoinConfig{
				StateDir: cfg.StateDir, Coordinator: cfg.Coordinator, Token: cfg.Token,
				ServerName: cfg.ServerName, Name: cfg.Name, Routes: rs,
			})
			if err != nil {
				return err
			}
			fmt.Printf("joined %s as %s, overlay addresses %v\n", e.Coordinator, e.Name, resp.GetSelf().GetAddresses())
			return nil
		},
	}
	root.AddCommand(run, join)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire-agent:", err)
		os.Exit(1)
	}
}
