package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/topoview"
)

// graphCmd is `edgewire graph`: the coordinator's topology view as
// Graphviz DOT (the default), or -o json as the Admin service returns it.
func graphCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "graph",
		Short: "Print the fleet's topology as Graphviz DOT (or -o json): direct and relayed pairs",
		Long: `Print the fleet's topology as the coordinator sees it from its agents' path
reports, as Graphviz DOT: one node per registered node (its name and NAT kind),
one edge per active pair, solid when direct, dashed and labelled with the relay
when relayed, dotted without a path. Draw it with

  edgewire graph | dot -Tsvg > topology.svg   (circo -Tsvg: nodes on a circle)

With -o json it prints the view itself (the coordinator's /topology.json).`,
		Args: noArgs,
		// -o takes dot here (the default, also as "table"), or json.
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch g.output {
			case "table", "dot", "json":
				return nil
			}
			return usagef("--output %q: want dot or json", g.output)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, c, done, err := g.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := cl.Topology(c, &api.TopologyRequest{})
			if err != nil {
				return rpcErr(err)
			}
			raw := resp.GetViewJson()
			if g.output == "json" {
				// The view as the coordinator made it, fields it knows
				// and this CLI may not included.
				var buf bytes.Buffer
				if err := json.Indent(&buf, raw, "", "  "); err != nil {
					return fmt.Errorf("the coordinator's topology is not JSON: %w", err)
				}
				buf.WriteByte('\n')
				_, err := cmd.OutOrStdout().Write(buf.Bytes())
				return err
			}
			var v topoview.View
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("the coordinator's topology: %w", err)
			}
			return writeDOT(cmd.OutOrStdout(), v)
		},
	}
}

// Edge styles by path: the page's colours.
var dotEdge = map[string]string{
	topoview.PathDirect: `style=solid, color="#1a7f37", penwidth=2`,
	topoview.PathRelay:  `style=dashed, color="#c2410c", fontcolor="#c2410c", penwidth=2`,
	topoview.PathNone:   `style=dotted, color="#8b8b8b"`,
}

// Node fill by NAT kind (topoview.NAT.Kind).
var dotFill = map[string]string{
	"none": "#dbeafe", "eim": "#dcfce7", "symmetric": "#ffedd5", "blocked": "#fee2e2", "unknown": "#f3f4f6",
}

// writeDOT writes v as an undirected DOT graph: nodes in the view's order
// (by name), then one edge per pair.
func writeDOT(w io.Writer, v topoview.View) error {
	var b strings.Builder
	s := v.Summary
	fmt.Fprintf(&b, "// edgewire topology at %s: %d nodes (%d online), %d active pairs (%d direct, %d relayed, %d without a path)\n",
		v.GeneratedAt.UTC().Format("2006-01-02T15:04:05Z"), s.Nodes, s.Online, s.Pairs.Total, s.Pairs.Direct, s.Pairs.Relay, s.Pairs.None)
	b.WriteString("graph edgewire {\n")
	b.WriteString("  graph [fontname=\"sans-serif\"];\n")
	b.WriteString("  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\"];\n")
	b.WriteString("  edge [fontname=\"sans-serif\", fontsize=10];\n")
	for _, n := range v.Nodes {
		kind := n.NAT.Kind()
		attrs := fmt.Sprintf(`label="%s\n%s", fillcolor="%s"`, dotEscape(n.Name), dotEscape(kind), dotEscape(dotFill[kind]))
		if !n.Online {
			attrs += `, style="rounded,filled,dashed", fontcolor="#6e7781"`
		}
		fmt.Fprintf(&b, "  %s [%s];\n", dotQuote(n.Name), attrs)
	}
	for _, p := range v.Pairs {
		style, ok := dotEdge[p.Path]
		if !ok {
			style = dotEdge[topoview.PathNone]
		}
		attrs := style
		if p.Path == topoview.PathRelay && p.Relay != "" {
			attrs += ", label=" + dotQuote(p.Relay)
		}
		if p.RTTMs > 0 {
			attrs += fmt.Sprintf(`, tooltip="%s, %.1f ms"`, dotEscape(p.Path), p.RTTMs)
		}
		fmt.Fprintf(&b, "  %s -- %s [%s];\n", dotQuote(p.A), dotQuote(p.B), attrs)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// dotQuote makes s a DOT quoted ID.
func dotQuote(s string) string { return `"` + dotEscape(s) + `"` }

// dotEscape escapes s for the inside of a DOT quoted string: backslashes
// (DOT reads \n, \l, \N... in labels) and quotes; control characters
// become spaces, since a line break would end nothing but confuse readers.
func dotEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '"':
			b.WriteString(`\"`)
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
