// Command edgewire-agent runs on every node: it joins the overlay, runs
// the WireGuard device and keeps it in line with the network map.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/internal/logging"
	"github.com/edgewire/edgewire/node/agent"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/podnet"
	"github.com/edgewire/edgewire/node/svcproxy"
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
		dnsAddr, socksAddr  string
		services            string
		forwardPorts        string
		podNetwork          string
		logLevel, logFormat string
		memLimitMiB         int64
		configFile          string
	)
	root := &cobra.Command{
		Use:           "edgewire-agent",
		Short:         "Run the edgewire node agent",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfigFile(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			if cfg.Token == "" {
				cfg.Token = os.Getenv("EDGEWIRE_TOKEN")
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&configFile, "config", "", "YAML file of settings: keys are these flags' names without dashes (advertise-routes: [10.42.3.0/24]); flags given on the command line win")
	pf.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory for the node key, enrolment and last network map")
	pf.StringVar(&cfg.Coordinator, "coordinator", "", "coordinator host:port; replicas as a comma-separated list, tried in order (default: the one the node joined)")
	// The token's default is read when the command runs, not shown here:
	// --help must never print a secret from the environment.
	pf.StringVar(&cfg.Token, "token", "", "join token (default $EDGEWIRE_TOKEN; prefer --token-file: a command line shows in ps)")
	pf.StringVar(&cfg.TokenFile, "token-file", "", "file holding the join token; deleted once the node is enrolled")
	pf.StringVar(&cfg.KubernetesTokenFile, "kubernetes-token-file", "", "projected service account token (audience edgewire) proving which Kubernetes node this agent runs on (DaemonSet agents)")
	pf.StringVar(&cfg.ServerName, "coordinator-server-name", "", "TLS name the coordinator's certificate must carry (default edgewire-coordinator)")
	pf.StringVar(&cfg.Name, "name", "", "node name (default: hostname at join; then the registered name)")
	pf.StringSliceVar(&routes, "advertise-routes", nil, "prefixes behind this node to route over the overlay, e.g. the pod CIDR (default: none at join; then the registered ones; --advertise-routes= clears them)")
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
			logging.Install(log)
			if cfg.Routes, err = parseRoutes(routes); err != nil {
				return err
			}
			// Given flags are the node's desired state; others keep
			// what is registered.
			cfg.SetName, cfg.SetRoutes = cmd.Flags().Changed("name"), cmd.Flags().Changed("advertise-routes")
			if dnsAddr != "" {
				if cfg.DNSAddr, err = netip.ParseAddr(dnsAddr); err != nil {
					return fmt.Errorf("--dns-addr %q: %w", dnsAddr, err)
				}
			}
			switch socksAddr {
			case "":
			case "default":
				if !cfg.DNSAddr.IsValid() {
					return fmt.Errorf("--socks5-listen default listens on the DNS address; with --dns-addr off give an address")
				}
				cfg.SOCKS5 = netip.AddrPortFrom(cfg.DNSAddr, agent.DefaultSOCKS5Port)
			default:
				if cfg.SOCKS5, err = netip.ParseAddrPort(socksAddr); err != nil {
					return fmt.Errorf("--socks5-listen %q: %w", socksAddr, err)
				}
				if !cfg.SOCKS5.Addr().IsLoopback() && !cfg.SOCKS5.Addr().IsLinkLocalUnicast() && !cfg.SOCKS5.Addr().IsPrivate() && !cfg.SOCKS5.Addr().IsUnspecified() {
					log.Warn("SOCKS5 proxy listens on a public address; it serves only this node's own clients and pods, the rest are dropped or closed", "listen", cfg.SOCKS5)
				}
			}
			cfg.Services = svcproxy.Mode(services)
			if cfg.ForwardFirstPort, cfg.ForwardLastPort, err = parsePortRange(forwardPorts); err != nil {
				return fmt.Errorf("--service-forward-ports: %w", err)
			}
			cfg.PodNetwork = podnet.Mode(podNetwork)
			cfg.MemoryLimit = memLimitMiB << 20
			if !cmd.Flags().Changed("gc-percent") && os.Getenv("GOGC") != "" {
				cfg.GCPercent = 0 // $GOGC, read by the runtime, stands
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
	rf.StringVar(&dnsAddr, "dns-addr", agent.DefaultDNSAddr, "address of the agent's DNS server, added to a dummy interface, for this node's own clients (and pods) only (empty: no DNS)")
	rf.StringVar(&cfg.DNSInterface, "dns-interface", agent.DefaultDNSInterface, "dummy interface holding the DNS address")
	rf.StringVar(&cfg.ClusterDomain, "cluster-domain", agent.DefaultClusterDomain, "Kubernetes cluster domain")
	rf.StringVar(&cfg.MeshDomain, "mesh-domain", agent.DefaultMeshDomain, "domain of node names (<node>.<mesh-domain>)")
	rf.StringVar(&cfg.ResolvConf, "resolv-conf", "/etc/resolv.conf", "where the upstream resolvers for other names are read from")
	rf.StringVar(&services, "services", "auto", "program ClusterIP rules: auto (not where kube-proxy runs), on or off")
	rf.IntVar(&cfg.ForwardPort, "service-forward-port", agent.DefaultForwardPort, "TCP port on the overlay address where this node takes Service connections other nodes forward to its endpoints whose addresses the overlay cannot route (0: off; endpoints that need it are left out)")
	rf.StringVar(&forwardPorts, "service-forward-ports", agent.DefaultForwardPorts, "local port range (first-last) on the overlay address for Service endpoints reached through their node")
	rf.StringVar(&podNetwork, "pod-network", "off", "manage this node's pod networking: write a CNI configuration (bridge, host-local, portmap) for its pod CIDR and masquerade pod traffic that leaves the overlay: cni, auto (only when no other CNI configuration is present) or off")
	rf.StringVar(&cfg.CNIConfDir, "cni-conf-dir", podnet.DefaultConfDir, "where container runtimes read CNI configurations (with --pod-network)")
	rf.StringVar(&cfg.CNIIPAMDir, "cni-ipam-dir", "", "host-local IPAM's data directory (default: host-local's own, /var/lib/cni/networks)")
	rf.StringVar(&socksAddr, "socks5-listen", "", "SOCKS5 proxy to reach nodes by name, for this node's own clients (and pods) only: ip:port, \"default\" (the DNS address, port 1080) or empty (off, the default)")
	rf.StringVar(&cfg.MetricsListen, "metrics-listen", "127.0.0.1:9092", "address for /metrics, /healthz and /readyz (empty: off)")
	rf.StringVar((*string)(&cfg.MetricsPerPeer), "metrics-per-peer", string(agent.PeerMetricsActive), "which peers get metric series of their own (they grow with the square of the fleet): active (traffic beyond keepalives in the last 5 minutes, or an ICE session deciding the path), all, or off; fleet-wide gauges are always exported")
	rf.StringVar(&cfg.PprofSocket, "pprof-socket", "", "serve Go runtime profiles (/debug/pprof/profile for CPU, heap, goroutine, allocs, ...) on this unix socket, for debugging (empty: off)")
	rf.Int64Var(&memLimitMiB, "memory-limit-mib", 0, "soft memory limit for the Go runtime in MiB: the GC works harder as the heap nears it (0: none, or $GOMEMLIMIT)")
	rf.IntVar(&cfg.MaxInflight, "max-inflight-packets", agent.DefaultMaxInflight, "bound on the packets the WireGuard device holds each way between the socket and the interface; each costs up to 64 KiB of memory while it is held, so this bounds the agent's memory under load (0: no bound; see docs/memory.md for throughput against memory)")
	rf.IntVar(&cfg.GCPercent, "gc-percent", agent.DefaultGCPercent, "Go GC target: heap growth over live data, in percent, before the next collection; lower holds less garbage resident under load for a little CPU (0: the runtime's; $GOGC, when set, stands unless this flag is given)")
	rf.IntVar(&cfg.RouteTable, "route-table", agent.DefaultRouteTable, "routing table for routes through the overlay (policy rules send the rest to main)")
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
			if err := agent.CheckPrivileges(); err != nil {
				return err
			}
			// Not while an agent runs on this state dir: it holds the key.
			lock, err := identity.LockStateDir(cfg.StateDir)
			if err != nil {
				return err
			}
			defer lock.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			e, resp, err := agent.Join(ctx, agent.JoinConfig{
				StateDir: cfg.StateDir, Coordinator: cfg.Coordinator, Token: cfg.Token, TokenFile: cfg.TokenFile,
				ServerName: cfg.ServerName, Name: cfg.Name, Routes: rs, KubernetesTokenFile: cfg.KubernetesTokenFile,
			})
			if err != nil {
				return err
			}
			fmt.Printf("joined %s as %s, overlay addresses %v\n", e.Coordinator, e.Name, resp.GetSelf().GetAddresses())
			if p := resp.GetPendingRoutes(); len(p) > 0 {
				fmt.Printf("routes waiting for an admin's approval (edgewire nodes routes approve %s): %v\n", e.Name, p)
			}
			return nil
		},
	}
	var uninstallConf string
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what the agent leaves on the host when it stops: the pod network (CNI configuration, masquerade rules, bridge) and firewall tables",
		Long: `Remove what edgewire leaves on the host when the agent stops (so that pods
keep their network across restarts): the CNI configuration edgewire wrote,
the pod masquerade rules and the pod bridge, and the Service rules of an
agent that did not exit cleanly. Running pods lose their network. The
node's identity (--state-dir) is kept; delete it to forget the node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			return agent.Uninstall(agent.UninstallConfig{CNIConfDir: uninstallConf, Logger: log})
		},
	}
	uninstall.Flags().StringVar(&uninstallConf, "cni-conf-dir", podnet.DefaultConfDir, "where the agent wrote its CNI configuration")
	root.AddCommand(run, join, uninstall, buildinfo.Command("edgewire-agent"))
	buildinfo.SetVersion(root, "edgewire-agent")
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire-agent:", err)
		os.Exit(1)
	}
}

// parsePortRange parses "first-last".
func parsePortRange(s string) (uint16, uint16, error) {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(a, 10, 16)
	last, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || first == 0 || last < first {
		return 0, 0, fmt.Errorf("%q: want first-last, two ports with first <= last", s)
	}
	return uint16(first), uint16(last), nil
}
