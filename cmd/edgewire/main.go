// Command edgewire is the operator's CLI: the local agent's status, and
// join tokens and nodes on the coordinator.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/types/jointoken"
)

type globals struct {
	output         string
	agentSocket    string
	adminSocket    string
	coordinator    string
	adminTokenFile string
	caFile         string
	serverName     string
}

func main() {
	var g globals
	root := &cobra.Command{
		Use:           "edgewire",
		Short:         "Operate an edgewire overlay",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("--output %q: want table or json", g.output)
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.output, "output", "o", "table", "table or json")
	pf.StringVar(&g.agentSocket, "socket", localapi.DefaultSocket, "agent local API socket")
	pf.StringVar(&g.adminSocket, "admin-socket", filepath.Join(api.DefaultCoordinatorDataDir, api.AdminSocketName), "coordinator admin socket (on the coordinator host)")
	pf.StringVar(&g.coordinator, "coordinator", "", "reach the coordinator over TLS at host:port instead of the admin socket (needs --admin-token-file and --ca-file)")
	pf.StringVar(&g.adminTokenFile, "admin-token-file", "", "file holding the coordinator's admin token (<data-dir>/admin.token)")
	pf.StringVar(&g.caFile, "ca-file", "", "coordinator CA certificate (<data-dir>/pki/ca.crt)")
	pf.StringVar(&g.serverName, "coordinator-server-name", jointoken.ServerName, "TLS name of the coordinator")

	root.AddCommand(statusCmd(&g), pingCmd(&g), netcheckCmd(&g), tokenCmd(&g), nodesCmd(&g))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "edgewire:", err)
		os.Exit(1)
	}
}

// admin connects to the coordinator's Admin service and returns a client,
// a context for one call (15 s) and a function that ends both.
func (g *globals) admin() (api.AdminClient, context.Context, func(), error) {
	var conn *grpc.ClientConn
	var err error
	if g.coordinator == "" {
		if _, serr := os.Stat(g.adminSocket); serr != nil {
			return nil, nil, nil, fmt.Errorf("no coordinator admin socket at %s (run on the coordinator host, pass --admin-socket, or use --coordinator with --admin-token-file)", g.adminSocket)
		}
		conn, err = grpc.NewClient("unix://"+g.adminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		if g.adminTokenFile == "" || g.caFile == "" {
			return nil, nil, nil, errors.New("--coordinator needs --admin-token-file and --ca-file")
		}
		tok, rerr := os.ReadFile(g.adminTokenFile)
		if rerr != nil {
			return nil, nil, nil, rerr
		}
		caPEM, rerr := os.ReadFile(g.caFile)
		if rerr != nil {
			return nil, nil, nil, rerr
		}
		var tc *tls.Config
		if tc, err = jointoken.ClientConfig(caPEM, g.serverName); err != nil {
			return nil, nil, nil, fmt.Errorf("--ca-file: %w", err)
		}
		conn, err = grpc.NewClient(g.coordinator, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(string(tok)))))
	}
	if err != nil {
		return nil, nil, nil, err
	}
	c, cancel := ctx()
	return api.NewAdminClient(conn), c, func() { cancel(); conn.Close() }, nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func rpcErr(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show this node and its peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, cancel := ctx()
			defer cancel()
			st, err := localapi.Client{Socket: g.agentSocket}.Status(c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, st)
			}
			now := time.Now()
			conn := "disconnected"
			if st.Self.Connected {
				conn = "connected"
			}
			fmt.Fprintf(out, "self: %s %s iface %s port %d coordinator %s (%s) map v%d\n",
				st.Self.Name, strings.Join(st.Self.Addresses, ","), st.Self.Interface, st.Self.ListenPort,
				st.Self.Coordinator, conn, st.Self.MapVersion)
			if r := st.Self.Relay; r != nil && r.Home != "" {
				state := "connected"
				if !r.Connected {
					state = "down: " + r.Error
				}
				fmt.Fprintf(out, "home relay: %s (%s)\n", r.Home, state)
			}
			tw := table(out)
			fmt.Fprintln(tw, "NAME\tOVERLAY IP\tPATH\tENDPOINT\tHANDSHAKE\tRX\tTX\tONLINE")
			for _, p := range st.Peers {
				ep := p.Endpoint
				if ep == "" {
					ep = "-"
				}
				path := p.Path
				if p.Relay != "" {
					path += ":" + p.Relay
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%v\n", p.Name, strings.Join(p.Addresses, ","), path, ep,
					ago(p.LastHandshake, now), bytesIEC(p.RxBytes), bytesIEC(p.TxBytes), p.Online)
			}
			return tw.Flush()
		},
	}
}

func pingCmd(g *globals) *cobra.Command {
	var (
		count       int
		untilDirect bool
		interval    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "ping NODE",
		Short: "Ping a peer over the overlay and show the path each reply took",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return fmt.Errorf("-c %d: want at least 1", count)
			}
			if interval < 10*time.Millisecond {
				return fmt.Errorf("--interval %v: want at least 10ms", interval)
			}
			cl := localapi.Client{Socket: g.agentSocket}
			out := cmd.OutOrStdout()
			var results []localapi.PingResult
			replies := 0
			for i := 0; i < count; i++ {
				if i > 0 {
					time.Sleep(interval)
				}
				c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				res, err := cl.Ping(c, args[0])
				cancel()
				if err != nil && res.Path == "" {
					return err
				}
				results = append(results, res)
				path := res.Path
				if res.Relay != "" {
					path += " via " + res.Relay
				}
				if err != nil {
					if g.output == "table" {
						fmt.Fprintf(out, "no reply from %s (path %s): %v\n", args[0], path, err)
					}
					continue
				}
				replies++
				if g.output == "table" {
					fmt.Fprintf(out, "reply from %s (%s) path %s endpoint %s time %.2f ms\n", args[0], res.Address, path, res.Endpoint, res.RTTMs)
				}
				if untilDirect && res.Path == "direct" {
					break
				}
			}
			if g.output == "json" {
				if err := printJSON(out, results); err != nil {
					return err
				}
			}
			if untilDirect && (len(results) == 0 || results[len(results)-1].Path != "direct") {
				return fmt.Errorf("no direct path to %s after %d pings", args[0], len(results))
			}
			if replies == 0 {
				return fmt.Errorf("no replies from %s", args[0])
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&count, "count", "c", 4, "number of pings (with --until-direct: at most this many)")
	cmd.Flags().BoolVar(&untilDirect, "until-direct", false, "keep pinging until a reply comes over a direct path")
	cmd.Flags().DurationVarP(&interval, "interval", "i", time.Second, "time between pings")
	return cmd
}

func netcheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "netcheck",
		Short: "Probe this node's network: UDP, NAT mapping, public address, relay latency",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			nc, err := localapi.Client{Socket: g.agentSocket}.Netcheck(c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, nc)
			}
			fmt.Fprintf(out, "UDP:             %v\n", nc.UDP)
			fmt.Fprintf(out, "public address:  %s\n", nc.PublicAddr)
			fmt.Fprintf(out, "NAT mapping:     %s\n", nc.Mapping)
			for _, s := range nc.STUN {
				if s.Error != "" {
					fmt.Fprintf(out, "  stun %s: %s\n", s.Server, s.Error)
				} else {
					fmt.Fprintf(out, "  stun %s: mapped %s in %.2f ms\n", s.Server, s.Mapped, s.RTTMs)
				}
			}
			fmt.Fprintf(out, "preferred relay: %s\n", nc.PreferredRelay)
			for _, r := range nc.RelayLatencyMs {
				fmt.Fprintf(out, "  relay %s: %.2f ms\n", r.Name, r.LatencyMs)
			}
			return nil
		},
	}
}

func tokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var (
		ttl      time.Duration
		reusable bool
		uses     int
		tags     []string
		routes   []string
		kubeNode string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token (printed once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return fmt.Errorf("--ttl %s: must not be negative", ttl)
			}
			// The coordinator counts whole seconds, where 0 is "never
			// expires": a TTL under a second must not become that.
			if ttl > 0 && ttl < time.Second {
				return fmt.Errorf("--ttl %s: want at least 1s (or 0 for a token that never expires)", ttl)
			}
			if uses < 0 {
				return fmt.Errorf("--uses %d: must not be negative", uses)
			}
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			secs := int64((ttl + time.Second - 1) / time.Second) // rounded up
			resp, err := cl.CreateToken(c, &api.CreateTokenRequest{TtlSeconds: secs, Reusable: reusable, Uses: int32(uses), Tags: tags,
				Routes: routes, KubernetesNode: kubeNode})
			if err != nil {
				return rpcErr(err)
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime (0: never expires)")
	create.Flags().BoolVar(&reusable, "reusable", false, "allow any number of joins until it expires")
	create.Flags().IntVar(&uses, "uses", 0, "number of joins allowed (default 1; exclusive with --reusable)")
	create.Flags().StringSliceVar(&tags, "tags", nil, "tags given to nodes that join with it")
	create.Flags().StringSliceVar(&routes, "routes", nil, "prefixes within which routes the nodes advertise are approved without an admin (e.g. the pod network 10.42.0.0/16)")
	create.Flags().StringVar(&kubeNode, "kubernetes-node", "", "admit only the node that is this Kubernetes node (its name, its pod CIDRs): for an edge host without a service account")

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.ListTokens(c, &api.ListTokensRequest{})
			if err != nil {
				return rpcErr(err)
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.GetTokens())
			}
			tw := table(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tCREATED\tEXPIRES\tUSES\tSTATE")
			now := time.Now()
			for _, t := range resp.GetTokens() {
				exp, state := "never", "valid"
				if t.GetExpiresUnix() != 0 {
					e := time.Unix(t.GetExpiresUnix(), 0)
					exp = e.UTC().Format(time.RFC3339)
					if !now.Before(e) {
						state = "expired"
					}
				}
				usesStr := fmt.Sprintf("%d/%d", t.GetUses(), t.GetMaxUses())
				if t.GetReusable() {
					usesStr = fmt.Sprintf("%d/unlimited", t.GetUses())
				} else if t.GetUses() >= t.GetMaxUses() && state == "valid" {
					state = "used up"
				}
				if t.GetRevoked() {
					state = "revoked"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.GetId(), time.Unix(t.GetCreatedUnix(), 0).UTC().Format(time.RFC3339), exp, usesStr, state)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token (nodes that joined with it stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := cl.RevokeToken(c, &api.RevokeTokenRequest{Id: args[0]}); err != nil {
				return rpcErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func nodesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "nodes", Short: "Manage nodes"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List registered nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.ListNodes(c, &api.ListNodesRequest{})
			if err != nil {
				return rpcErr(err)
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.GetNodes())
			}
			tw := table(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tADDRESSES\tROUTES\tENDPOINTS\tONLINE\tLAST SEEN")
			now := time.Now()
			for _, n := range resp.GetNodes() {
				seen := "never"
				if n.GetOnline() {
					seen = "now"
				} else if n.GetLastSeenUnixMs() != 0 {
					seen = ago(time.UnixMilli(n.GetLastSeenUnixMs()), now)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", n.GetName(), strings.Join(n.GetAddresses(), ","),
					routeSummary(n), strings.Join(n.GetEndpoints(), ","), n.GetOnline(), seen)
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a node: it leaves every peer's WireGuard config",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := cl.DeleteNode(c, &api.DeleteNodeRequest{Name: args[0]}); err != nil {
				return rpcErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, del, routesCmd(g))
	return cmd
}

// routeSummary shows routes, with pending ones marked.
func routeSummary(n *api.Node) string {
	out := slices.Clone(n.GetRoutes())
	for _, p := range n.GetPendingRoutes() {
		out = append(out, p+" (pending)")
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func routesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "routes", Short: "Show and approve the routes nodes advertise"}
	show := &cobra.Command{
		Use:   "list",
		Short: "List routes: routed (approved, or pod CIDRs) and pending approval",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.ListNodes(c, &api.ListNodesRequest{})
			if err != nil {
				return rpcErr(err)
			}
			type row struct {
				Node           string   `json:"node"`
				KubernetesNode string   `json:"kubernetes_node,omitempty"`
				Routes         []string `json:"routes"`
				Pending        []string `json:"pending"`
			}
			var rows []row
			for _, n := range resp.GetNodes() {
				if len(n.GetRoutes())+len(n.GetPendingRoutes()) == 0 {
					continue
				}
				rows = append(rows, row{n.GetName(), n.GetKubernetesNode(), n.GetRoutes(), n.GetPendingRoutes()})
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), rows)
			}
			tw := table(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NODE\tKUBERNETES NODE\tROUTED\tPENDING")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Node, orDash(r.KubernetesNode), orDash(strings.Join(r.Routes, ",")), orDash(strings.Join(r.Pending, ",")))
			}
			return tw.Flush()
		},
	}
	var all bool
	approve := &cobra.Command{
		Use:   "approve NODE [PREFIX...]",
		Short: "Approve routes a node advertises (--all: every one)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 1) {
				return errors.New("give the prefixes to approve, or --all")
			}
			return changeRoutes(cmd, g, &api.ApproveRoutesRequest{Name: args[0], Approve: args[1:], All: all})
		},
	}
	approve.Flags().BoolVar(&all, "all", false, "approve every route the node advertises")
	withdraw := &cobra.Command{
		Use:   "withdraw NODE PREFIX...",
		Short: "Withdraw approval of routes: they are no longer routed",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeRoutes(cmd, g, &api.ApproveRoutesRequest{Name: args[0], Withdraw: args[1:]})
		},
	}
	cmd.AddCommand(show, approve, withdraw)
	return cmd
}

func changeRoutes(cmd *cobra.Command, g *globals, req *api.ApproveRoutesRequest) error {
	for _, p := range append(slices.Clone(req.Approve), req.Withdraw...) {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("%q: want a prefix like 10.42.0.0/16", p)
		}
	}
	cl, c, done, err := g.admin()
	if err != nil {
		return err
	}
	defer done()
	resp, err := cl.ApproveRoutes(c, req)
	if err != nil {
		return rpcErr(err)
	}
	if g.output == "json" {
		return printJSON(cmd.OutOrStdout(), resp.GetNode())
	}
	n := resp.GetNode()
	fmt.Fprintf(cmd.OutOrStdout(), "%s: routed %s, pending %s\n", n.GetName(), orDash(strings.Join(n.GetRoutes(), ",")), orDash(strings.Join(n.GetPendingRoutes(), ",")))
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
