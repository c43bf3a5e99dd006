package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/api"
)

// tokenOut is a join token's record as -o json prints it (never the
// secret: only token create prints that, once).
type tokenOut struct {
	ID             string     `json:"id"`
	Created        time.Time  `json:"created"`
	Expires        *time.Time `json:"expires"` // null: never
	Reusable       bool       `json:"reusable"`
	Uses           int32      `json:"uses"`
	MaxUses        int32      `json:"max_uses"` // 0 when reusable
	Revoked        bool       `json:"revoked"`
	State          string     `json:"state"` // valid, expired, used up, revoked (as of the CLI's clock)
	Tags           []string   `json:"tags"`
	Routes         []string   `json:"routes"`
	KubernetesNode string     `json:"kubernetes_node"`
}

func toTokenOut(t *api.TokenInfo, now time.Time) tokenOut {
	o := tokenOut{ID: t.GetId(), Created: time.Unix(t.GetCreatedUnix(), 0).UTC(), Reusable: t.GetReusable(), Uses: t.GetUses(),
		MaxUses: t.GetMaxUses(), Revoked: t.GetRevoked(), State: tokenState(t, now), Tags: t.GetTags(), Routes: t.GetRoutes(),
		KubernetesNode: t.GetKubernetesNode()}
	if t.GetExpiresUnix() != 0 {
		e := time.Unix(t.GetExpiresUnix(), 0).UTC()
		o.Expires = &e
	}
	return o
}

// tokenState is what a token can do as of now.
func tokenState(t *api.TokenInfo, now time.Time) string {
	switch {
	case t.GetRevoked():
		return "revoked"
	case t.GetExpiresUnix() != 0 && !now.Before(time.Unix(t.GetExpiresUnix(), 0)):
		return "expired"
	case !t.GetReusable() && t.GetUses() >= t.GetMaxUses():
		return "used up"
	}
	return "valid"
}

func tokenCmd(g *globals) *cobra.Command {
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
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return usagef("--ttl %s: must not be negative", ttl)
			}
			// The coordinator counts whole seconds, where 0 is "never
			// expires": a TTL under a second must not become that.
			if ttl > 0 && ttl < time.Second {
				return usagef("--ttl %s: want at least 1s (or 0 for a token that never expires)", ttl)
			}
			if uses < 0 {
				return usagef("--uses %d: must not be negative", uses)
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
				return printJSON(cmd.OutOrStdout(), struct {
					Token string   `json:"token"` // the secret: printed this once
					Info  tokenOut `json:"info"`
				}{resp.GetToken(), toTokenOut(resp.GetInfo(), g.now())})
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
		Args:  noArgs,
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
			now := g.now()
			if g.output == "json" {
				out := make([]tokenOut, 0, len(resp.GetTokens()))
				for _, t := range resp.GetTokens() {
					out = append(out, toTokenOut(t, now))
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := table(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tCREATED\tEXPIRES\tUSES\tSTATE")
			for _, t := range resp.GetTokens() {
				exp := "never"
				if t.GetExpiresUnix() != 0 {
					exp = time.Unix(t.GetExpiresUnix(), 0).UTC().Format(time.RFC3339)
				}
				usesStr := fmt.Sprintf("%d/%d", t.GetUses(), t.GetMaxUses())
				if t.GetReusable() {
					usesStr = fmt.Sprintf("%d/unlimited", t.GetUses())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.GetId(), time.Unix(t.GetCreatedUnix(), 0).UTC().Format(time.RFC3339), exp, usesStr, tokenState(t, now))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token (nodes that joined with it stay)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := cl.RevokeToken(c, &api.RevokeTokenRequest{Id: a[0]}); err != nil {
				return rpcErr(err)
			}
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), struct {
					ID      string `json:"id"`
					Revoked bool   `json:"revoked"`
				}{a[0], true})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", a[0])
			return nil
		},
	}
	return group(&cobra.Command{Use: "token", Short: "Manage join tokens"}, create, list, revoke)
}
