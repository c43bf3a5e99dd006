package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/types/key"
)

// The commands in this file ask the agent on this host, over its local API.

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show this node and its peers",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, cancel := callContext()
			defer cancel()
			st, err := localapi.Client{Socket: g.agentSocket}.Status(c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, st)
			}
			now := g.now()
			conn := "disconnected"
			if st.Self.Connected {
				conn = "connected"
			}
			fmt.Fprintf(out, "self: %s key %s %s iface %s mtu %d port %d coordinator %s (%s) map v%d\n",
				st.Self.Name, shortKey(st.Self.PublicKey), strings.Join(st.Self.Addresses, ","), st.Self.Interface, st.Self.MTU, st.Self.ListenPort,
				st.Self.Coordinator, conn, st.Self.MapVersion)
			if r := st.Self.Relay; r != nil && r.Home != "" {
				state := "connected"
				if !r.Connected {
					state = "down: " + r.Error
				}
				fmt.Fprintf(out, "home relay: %s (%s)\n", r.Home, state)
			}
			tw := table(out)
			fmt.Fprintln(tw, "NAME\tKEY\tOVERLAY IP\tPATH\tENDPOINT\tHANDSHAKE\tRX\tTX\tONLINE")
			for _, p := range st.Peers {
				ep := p.Endpoint
				if ep == "" {
					ep = "-"
				}
				path := p.Path
				if p.LastKnown {
					path += " (last known)"
				}
				if p.Relay != "" {
					path += ":" + p.Relay
				}
				hs := "never"
				if p.LastHandshake != nil {
					hs = ago(*p.LastHandshake, now)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%v\n", p.Name, shortKey(p.PublicKey), orDash(strings.Join(p.Addresses, ",")), path, ep,
					hs, bytesIEC(p.RxBytes), bytesIEC(p.TxBytes), p.Online)
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
		Use:   "ping NODE|OVERLAY-IP",
		Short: "Ping a peer, by node name or overlay address, and show the path each reply took",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return usagef("-c %d: want at least 1", count)
			}
			if interval < 10*time.Millisecond {
				return usagef("--interval %v: want at least 10ms", interval)
			}
			cl := localapi.Client{Socket: g.agentSocket}
			out := cmd.OutOrStdout()
			var results []pingOut
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
				po := pingOut{PingResult: res}
				if err != nil {
					po.Error = err.Error()
				}
				results = append(results, po)
				name := args[0]
				if res.Peer != "" {
					name = res.Peer
				}
				path := res.Path
				if res.Relay != "" {
					path += " via " + res.Relay
				}
				if err != nil {
					if g.output == "table" {
						fmt.Fprintf(out, "no reply from %s (path %s): %v\n", name, path, err)
					}
					continue
				}
				replies++
				if g.output == "table" {
					fmt.Fprintf(out, "reply from %s (%s) path %s endpoint %s time %.2f ms\n", name, res.Address, path, orDash(res.Endpoint), res.RTTMs)
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
			if untilDirect && (len(results) == 0 || results[len(results)-1].Path != "direct" || results[len(results)-1].Error != "") {
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

// pingOut is one ping as -o json prints it: the agent's result, and why
// no reply came ("" for a reply).
type pingOut struct {
	localapi.PingResult
	Error string `json:"error"`
}

// shortKey is the KEY column: the first 8 characters of the base64 key,
// the start of what `wg show` prints on the peer's line (and the form
// logs use, key.Public.Short), so `wg show | grep KEY` finds the peer.
func shortKey(k string) string {
	pk, err := key.ParsePublic(k)
	if err != nil { // not a key: its start, as the same rule would show one
		if len(k) > 8 {
			return k[:8]
		}
		return orDash(k)
	}
	return pk.Short()
}

func netcheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "netcheck",
		Short: "Probe this node's network: UDP, NAT mapping, public address, relay latency",
		Long: `Probe this node's network from one UDP socket: STUN requests to every STUN
server of the network map, and to the second port of those that have one
(the coordinator's --stun-listen-alt), tell whether UDP gets out, the public
address, and how the NAT maps the socket:
  endpoint-independent  one public port whatever the destination (a home
                        router): hole punching works, direct paths to most peers
  endpoint-dependent    a new public port per destination (symmetric NAT):
                        direct only to peers with a public address or an
                        endpoint-independent NAT, the others through a relay
  unknown               fewer than two STUN endpoints answered; none at all
                        means UDP is blocked and every peer goes through a relay
Then the latency to each relay.`,
		Args: noArgs,
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
			if nc.Meaning != "" {
				fmt.Fprintf(out, "what it means:   %s\n", nc.Meaning)
			}
			for _, s := range nc.STUN {
				server := s.Server
				if s.Alt {
					server += " (second port)"
				}
				if s.Error != "" {
					fmt.Fprintf(out, "  stun %s: %s\n", server, s.Error)
				} else {
					fmt.Fprintf(out, "  stun %s: mapped %s in %.2f ms\n", server, s.Mapped, s.RTTMs)
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

func servicesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "services",
		Short: "Show how this node reaches each Service endpoint, and why",
		Long: `Show how this node reaches each Service endpoint:
  local    on this node
  l3       its node routes the address over the overlay (pod CIDR, route)
  host     a hostNetwork endpoint, through its node's overlay address
  forward  an address the overlay cannot route (a runtime's default bridge):
           its node's agent takes the connection and connects locally
  address  no node name: the address as given
  none     left out, with the reason`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, cancel := callContext()
			defer cancel()
			sv, err := localapi.Client{Socket: g.agentSocket}.Services(c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, sv)
			}
			tw := table(out)
			fmt.Fprintln(tw, "SERVICE\tENDPOINT\tNODE\tPATH\tTARGET\tWHY")
			for _, e := range sv.Endpoints {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Service, e.Address, orDash(e.NodeName), e.Path, orDash(e.Target), e.Why)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			f := sv.Forward
			_, err = fmt.Fprintf(out, "forwarded: %d out (%d failed) on %d ports, %d in (%d refused, %d unanswered)\n",
				f.Out, f.OutFailed, f.Ports, f.In, f.InRefused, f.InNoAnswer)
			return err
		},
	}
}
