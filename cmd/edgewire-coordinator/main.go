// Command edgewire-coordinator runs the edgewire control plane: join
// tokens, node registry, overlay IPAM and the network-map streams.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/edgewire/edgewire/coordinator"
	"github.com/edgewire/edgewire/coordinator/kubesource"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/internal/logging"
	"github.com/edgewire/edgewire/internal/routeguard"
)

func main() {
	var (
		cfg                 coordinator.Config
		prefixes            []string
		relayMap, meshKey   string
		kubeconfig          string
		inCluster           bool
		servicesFile        string
		relayRate           float64
		agentSA             string
		protect             []string
		logLevel, logFormat string
		storeKind           string
		repl                coordinator.Replication
	)
	cmd := &cobra.Command{
		Use:           "edgewire-coordinator",
		Short:         "Run the edgewire coordinator",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(os.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			logging.Install(log)
			klog.SetSlogLogger(log.With("src", "client-go")) // client-go's own lines
			cfg.Logger = log
			for _, p := range prefixes {
				pfx, err := netip.ParsePrefix(p)
				if err != nil {
					return fmt.Errorf("--overlay-prefix %q: %w", p, err)
				}
				cfg.Prefixes = append(cfg.Prefixes, pfx)
			}
			if relayMap != "" {
				if cfg.Relays, cfg.RelaySTUN, err = coordinator.LoadRelayMap(relayMap); err != nil {
					return err
				}
			}
			if cfg.RelayRate, err = relay.RateFromMbit(relayRate); err != nil {
				return fmt.Errorf("--relay-client-rate: %w", err)
			}
			if meshKey != "" {
				if cfg.MeshKey, err = relay.LoadMeshKey(meshKey); err != nil {
					return err
				}
			}
			switch {
			case (kubeconfig != "" || inCluster) && servicesFile != "":
				return fmt.Errorf("--services-file and --kubeconfig/--in-cluster are exclusive")
			case kubeconfig != "" || inCluster:
				src, err := kubesource.New(kubesource.Config{Kubeconfig: kubeconfig, AgentServiceAccount: agentSA, Logger: log.With("src", "kubernetes")})
				if err != nil {
					return err
				}
				cfg.Services = src
			case servicesFile != "":
				if _, err := svcsource.Load(servicesFile); err != nil {
					return err
				}
				cfg.Services = &svcsource.File{Path: servicesFile, Logger: log.With("src", "services-file")}
			}
			switch storeKind {
			case "bolt":
			case "kubernetes":
				if kubeconfig == "" && !inCluster {
					return fmt.Errorf("--store kubernetes needs --kubeconfig or --in-cluster")
				}
				if repl.Kube, err = kubesource.RESTConfig(kubeconfig); err != nil {
					return err
				}
				if repl.Namespace == "" {
					if repl.Namespace = os.Getenv("POD_NAMESPACE"); repl.Namespace == "" {
						return fmt.Errorf("--store kubernetes needs --store-namespace (or $POD_NAMESPACE)")
					}
				}
				if repl.Identity == "" {
					if repl.Identity = os.Getenv("POD_NAME"); repl.Identity == "" {
						repl.Identity, _ = os.Hostname()
					}
				}
				cfg.Replication = &repl
			default:
				return fmt.Errorf("--store %q: want bolt or kubernetes", storeKind)
			}
			for _, p := range protect {
				pfx, err := netip.ParsePrefix(p)
				if err != nil {
					a, aerr := netip.ParseAddr(p)
					if aerr != nil {
						return fmt.Errorf("--protect %q: want an address or a prefix", p)
					}
					pfx = routeguard.Host(a)
				}
				cfg.RoutePolicy.Protected = append(cfg.RoutePolicy.Protected, pfx.Masked())
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return coordinator.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", coordinator.DefaultDataDir, "directory for the store, CA and admin token")
	f.StringVar(&cfg.Listen, "listen", coordinator.DefaultListen, "TLS gRPC listen address for agents and remote admins")
	f.StringVar(&cfg.AdminSocket, "admin-socket", "", "local admin unix socket (default <data-dir>/admin.sock)")
	f.StringSliceVar(&prefixes, "overlay-prefix", []string{coordinator.DefaultPrefix}, "overlay prefix to allocate node addresses from (one per address family)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "serving certificate (PEM); default: generated from the coordinator's own CA")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "serving certificate key (PEM)")
	f.StringVar(&cfg.TLSCA, "tls-ca", "", "CA that issued --tls-cert (its key is what join tokens pin)")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra DNS names or IPs for the generated serving certificate")
	f.StringVar(&cfg.STUNListen, "stun-listen", coordinator.DefaultSTUN, "UDP address of the embedded STUN server (empty: off)")
	f.StringVar(&cfg.STUNAlt, "stun-listen-alt", stunserver.AltAuto, "second UDP address of the STUN server, which lets netcheck tell endpoint-independent NATs from symmetric ones with one coordinator ("+stunserver.AltAuto+": the --stun-listen port + 1; empty: off)")
	f.StringVar(&cfg.RelayListen, "relay-listen", coordinator.DefaultRelay, "TCP address of the embedded relay (HTTPS; empty: off)")
	f.Uint32Var(&cfg.RelayID, "relay-region-id", 1, "region id of the embedded relay")
	f.StringVar(&cfg.RelayName, "relay-region-name", "coordinator", "region name of the embedded relay")
	f.StringVar(&relayMap, "relay-map", "", "JSON file listing further relays (see README)")
	f.StringVar(&meshKey, "mesh-key-file", "", "file with the relay mesh key shared by all relays")
	f.StringVar(&cfg.PprofSocket, "pprof-socket", "", "serve Go runtime profiles (/debug/pprof/profile for CPU, heap, goroutine, ...) on this unix socket, mode 0600 (empty: off)")
	f.Float64Var(&relayRate, "relay-client-rate", relay.DefaultRateBytes*8/1e6, "Mbit/s each node may send through the embedded relay (0: no limit)")
	f.DurationVar(&cfg.TicketTTL, "relay-ticket-ttl", 10*time.Minute, "lifetime of relay tickets (renewed at half)")
	f.StringVar(&agentSA, "agent-service-account", "", "namespace/name of the agent DaemonSet's service account: its pod-bound tokens prove which Kubernetes node an agent runs on (needs --kubeconfig or --in-cluster)")
	f.IntVar(&cfg.RoutePolicy.MinBits4, "min-route-prefix-v4", routeguard.DefaultMinBits4, "shortest IPv4 prefix a node may route")
	f.IntVar(&cfg.RoutePolicy.MinBits6, "min-route-prefix-v6", routeguard.DefaultMinBits6, "shortest IPv6 prefix a node may route")
	f.StringSliceVar(&protect, "protect", nil, "addresses or prefixes no node may route (besides the coordinator's own, its TLS SANs, relays and STUN servers, which are always protected)")
	f.Float64Var(&cfg.FailureRate, "failure-rate", 1, "failed joins and authentications per second allowed per source address and per token (after the burst; negative: no limit)")
	f.IntVar(&cfg.FailureBurst, "failure-burst", 20, "failed joins and authentications allowed at once per source address and per token")
	f.IntVar(&cfg.MaxConnsPerSource, "max-conns-per-source", 4096, "open agent connections allowed per source address (0: no limit); raise it when many nodes share one NAT address")
	f.StringVar(&kubeconfig, "kubeconfig", "", "a Kubernetes cluster: its Services, EndpointSlices and Nodes are watched (and --store kubernetes keeps the state there)")
	f.BoolVar(&inCluster, "in-cluster", false, "watch the cluster the coordinator runs in (service account)")
	f.StringVar(&servicesFile, "services-file", "", "JSON file declaring Services, for fleets without Kubernetes (see README)")
	f.StringVar(&storeKind, "store", "bolt", "where the state lives: bolt (a file in --data-dir, one coordinator) or kubernetes (custom resources in --store-namespace, shared by replicas that elect a leader; needs --kubeconfig or --in-cluster)")
	f.StringVar(&repl.Namespace, "store-namespace", "", "namespace of the Kubernetes store, its Lease and its Secret of shared keys (default $POD_NAMESPACE)")
	f.StringVar(&repl.Identity, "replica-id", "", "this replica's identity in the leader election, unique among replicas (default $POD_NAME, else the hostname)")
	f.StringVar(&repl.LeaseName, "lease-name", "edgewire-coordinator", "name of the Lease the replicas elect a leader on (and prefix of the Secret of shared keys)")
	f.DurationVar(&repl.LeaseDuration, "lease-duration", 6*time.Second, "how long a leader's lease lasts unrenewed: a dead leader is replaced after about this long")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "127.0.0.1:9090", "address for /metrics, /healthz and /readyz (empty: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	cmd.AddCommand(migrateCmd(), crdsCmd(), buildinfo.Command("edgewire-coordinator"))
	buildinfo.SetVersion(cmd, "edgewire-coordinator")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire-coordinator:", err)
		os.Exit(1)
	}
}

// migrateCmd moves a lone coordinator's state into the Kubernetes store.
func migrateCmd() *cobra.Command {
	var (
		dataDir, kubeconfig string
		inCluster           bool
		repl                coordinator.Replication
	)
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Move a stopped coordinator's bbolt store and keys into the Kubernetes store, for replicas",
		Long: `migrate copies the nodes, join tokens and keys (the CA that join tokens and agents pin, the relay
ticket and relay keys, the admin token) of a stopped coordinator's data dir into an empty Kubernetes
store, then reads them back and compares. Replicas started on that store serve the same fleet: no
node joins again. Install the CRDs first (edgewire-coordinator crds | kubectl apply -f -, or the Helm chart).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(os.Stderr, "info", "text")
			if err != nil {
				return err
			}
			if kubeconfig == "" && !inCluster {
				return fmt.Errorf("migrate needs --kubeconfig or --in-cluster")
			}
			if repl.Namespace == "" {
				return fmt.Errorf("migrate needs --store-namespace")
			}
			if repl.Kube, err = kubesource.RESTConfig(kubeconfig); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := coordinator.Migrate(ctx, coordinator.Config{DataDir: dataDir, Replication: &repl, Logger: log})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migrated %d nodes and %d tokens into namespace %s\n", res.Nodes, res.Tokens, repl.Namespace)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&dataDir, "data-dir", coordinator.DefaultDataDir, "the stopped coordinator's data dir (its edgewire.db and keys)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "the Kubernetes cluster of the store")
	f.BoolVar(&inCluster, "in-cluster", false, "the cluster this runs in (service account)")
	f.StringVar(&repl.Namespace, "store-namespace", "", "namespace of the Kubernetes store")
	f.StringVar(&repl.LeaseName, "lease-name", "edgewire-coordinator", "the replicas' --lease-name (names the Secret of shared keys)")
	return c
}

// crdsCmd prints the CustomResourceDefinitions of the Kubernetes store.
func crdsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "crds",
		Short: "Print the CustomResourceDefinitions the Kubernetes store needs (for kubectl apply -f -)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(kubestore.CRDs)
			return err
		},
	}
}
