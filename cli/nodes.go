package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/api"
)

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
			now := g.now()
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
