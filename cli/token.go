package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/api"
)

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
			now := g.now()
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
