package cli

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/api"
)

// nodeOut is a node as -o json prints it.
type nodeOut struct {
	Name           string     `json:"name"`
	PublicKey      string     `json:"public_key"` // base64, as wg show prints it
	Hostname       string     `json:"hostname"`
	Addresses      []string   `json:"addresses"`
	Routes         []string   `json:"routes"`         // routed: approved, or the node's pod CIDRs
	PendingRoutes  []string   `json:"pending_routes"` // advertised, waiting for approval
	Endpoints      []string   `json:"endpoints"`
	Online         bool       `json:"online"`
	LastSeen       *time.Time `json:"last_seen"` // null: never connected
	Tags           []string   `json:"tags"`
	KubernetesNode string     `json:"kubernetes_node"`
	Version        string     `json:"version"` // agent version it reported, "" if none
}

func toNodeOut(n *api.Node) nodeOut {
	o := nodeOut{Name: n.GetName(), Hostname: n.GetHostname(), Addresses: n.GetAddresses(), Routes: n.GetRoutes(),
		PendingRoutes: n.GetPendingRoutes(), Endpoints: n.GetEndpoints(), Online: n.GetOnline(), Tags: n.GetTags(),
		KubernetesNode: n.GetKubernetesNode(), Version: n.GetVersion()}
	if len(n.GetPublicKey()) > 0 {
		o.PublicKey = base64.StdEncoding.EncodeToString(n.GetPublicKey())
	}
	if ms := n.GetLastSeenUnixMs(); ms != 0 {
		t := time.UnixMilli(ms).UTC()
		o.LastSeen = &t
	}
	return o
}

func nodesCmd(g *globals) *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List registered nodes",
		Args:  noArgs,
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
				out := make([]nodeOut, 0, len(resp.GetNodes()))
				for _, n := range resp.GetNodes() {
					out = append(out, toNodeOut(n))
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := table(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tADDRESSES\tROUTES\tENDPOINTS\tVERSION\tONLINE\tLAST SEEN")
			now := g.now()
			for _, n := range resp.GetNodes() {
				seen := "never"
				if n.GetOnline() {
					seen = "now"
				} else if n.GetLastSeenUnixMs() != 0 {
					seen = ago(time.UnixMilli(n.GetLastSeenUnixMs()), now)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", n.GetName(), orDash(strings.Join(n.GetAddresses(), ",")),
					routeSummary(n), orDash(strings.Join(n.GetEndpoints(), ",")), orDash(n.GetVersion()), n.GetOnline(), seen)
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a node: it leaves every peer's WireGuard config",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := cl.DeleteNode(c, &api.DeleteNodeRequest{Name: a[0]}); err != nil {
				return rpcErr(err)
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), struct {
					Name    string `json:"name"`
					Deleted bool   `json:"deleted"`
				}{a[0], true})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", a[0])
			return nil
		},
	}
	return group(&cobra.Command{Use: "nodes", Short: "Manage nodes"}, list, del, routesCmd(g))
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
	show := &cobra.Command{
		Use:   "list",
		Short: "List routes: routed (approved, or pod CIDRs) and pending approval",
		Args:  noArgs,
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
				KubernetesNode string   `json:"kubernetes_node"`
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
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if all == (len(a) > 1) {
				return usagef("give the prefixes to approve, or --all")
			}
			return changeRoutes(cmd, g, &api.ApproveRoutesRequest{Name: a[0], Approve: a[1:], All: all})
		},
	}
	approve.Flags().BoolVar(&all, "all", false, "approve every route the node advertises")
	withdraw := &cobra.Command{
		Use:   "withdraw NODE PREFIX...",
		Short: "Withdraw approval of routes: they are no longer routed",
		Args:  args(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return changeRoutes(cmd, g, &api.ApproveRoutesRequest{Name: a[0], Withdraw: a[1:]})
		},
	}
	return group(&cobra.Command{Use: "routes", Short: "Show and approve the routes nodes advertise"}, show, approve, withdraw)
}

func changeRoutes(cmd *cobra.Command, g *globals, req *api.ApproveRoutesRequest) error {
	for _, p := range append(slices.Clone(req.Approve), req.Withdraw...) {
		if _, err := netip.ParsePrefix(p); err != nil {
			return usagef("%q: want a prefix like 10.42.0.0/16", p)
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
		return printJSON(cmd.OutOrStdout(), toNodeOut(resp.GetNode()))
	}
	n := resp.GetNode()
	fmt.Fprintf(cmd.OutOrStdout(), "%s: routed %s, pending %s\n", n.GetName(), orDash(strings.Join(n.GetRoutes(), ",")), orDash(strings.Join(n.GetPendingRoutes(), ",")))
	return nil
}
