package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgewire/edgewire/dataplane/linkconf"
	"github.com/edgewire/edgewire/node/dnsserver"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/localsrc"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/podnet"
	"github.com/edgewire/edgewire/node/socks5"
	"github.com/edgewire/edgewire/node/svcfwd"
	"github.com/edgewire/edgewire/node/svcpath"
	"github.com/edgewire/edgewire/node/svcproxy"
	"github.com/edgewire/edgewire/types/services"
)

// Services-layer defaults.
const (
	DefaultDNSAddr       = "169.254.96.16"
	DefaultDNSInterface  = "edgewire-dns"
	DefaultClusterDomain = "cluster.local"
	DefaultMeshDomain    = "edgewire.internal"
	DefaultSOCKS5Port    = 1080
	DefaultForwardPort   = svcfwd.DefaultPort
	DefaultForwardPorts  = "40960-42959" // svcfwd.DefaultFirstPort-DefaultLastPort
)

// servicesLayer is the agent's DNS server, Service DNAT and SOCKS5 proxy.
// DNS and SOCKS5 serve local clients only: sources in local (loopback,
// host addresses, this node's pod CIDRs), checked by the servers, and the
// nftables guard in proxy's table in front of them.
type servicesLayer struct {
	a     *Agent
	dns   *dnsserver.Server // nil when off
	proxy *svcproxy.Proxy   // nil when neither Service rules nor the guard are needed
	socks *socks5.Server    // nil when off
	local *localsrc.Set     // who DNS and SOCKS5 serve
	fwd   *forwarding       // nil when Service rules are off or --service-forward-port is 0
	gen   uint64            // ServicesGen last applied
	view  string            // the node view (svcView.key) last applied
	pods  []netip.Prefix    // local pod CIDRs last set

	mu        sync.Mutex         // guards decisions
	decisions []svcpath.Decision // how each endpoint is reached, of the last apply
}

// svcView is what decides how Service endpoints are reached: this node
// and its peers, with the routes this node actually routes to them.
type svcView struct {
	self  svcpath.Node
	peers []svcpath.Node
}

// key identifies a view: a new one re-decides the endpoints.
func (v svcView) key() string { return fmt.Sprint(v.self, v.peers) }

// makeSvcView builds the view from the map's self and peers and the plan's
// refused routes (a route this node does not route reaches nothing).
func makeSvcView(self mapstate.Self, peers []mapstate.Peer, refused []refusal) svcView {
	first4 := func(as []netip.Addr) netip.Addr {
		for _, a := range as {
			if a.Is4() {
				return a
			}
		}
		return netip.Addr{}
	}
	v := svcView{self: svcpath.Node{Name: self.Name, KubeNode: self.KubeNode, Overlay: first4(self.Addresses), Routes: self.Routes, Online: true}}
	for _, p := range peers {
		var routes []netip.Prefix
		for _, r := range p.Routes {
			if !slices.ContainsFunc(refused, func(rf refusal) bool { return rf.peer.Key == p.Key && rf.route == r }) {
				routes = append(routes, r)
			}
		}
		v.peers = append(v.peers, svcpath.Node{Name: p.Name, KubeNode: p.KubeNode, Overlay: first4(p.Addresses), Routes: routes, Online: p.Online})
	}
	return v
}

// Pod CIDRs broader than these are not taken as this node's pods (an
// exit node's 0.0.0.0/0 route is not a pod CIDR): they would make every
// source local.
const (
	minPodBits4 = 8
	minPodBits6 = 32
)

// localPodCIDRs is the node's own pod CIDRs: its advertised routes and
// the routes the map gives it (Kubernetes podCIDRs).
func (a *Agent) localPodCIDRs() []netip.Prefix {
	a.mu.Lock()
	self := a.state.Self.Routes
	a.mu.Unlock()
	var out []netip.Prefix
	for _, p := range append(slices.Clone(a.cfg.Routes), self...) {
		least := minPodBits6
		if p.Addr().Is4() {
			least = minPodBits4
		}
		if p.Bits() < least || slices.Contains(out, p.Masked()) {
			continue
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
	return out
}

// startServices sets up the dummy interface and the servers; they run
// until ctx ends. The returned cleanup removes rules and the interface.
func (a *Agent) startServices(ctx context.Context, run func(string, func(context.Context) error)) (func(), error) {
	cfg := a.cfg
	sl := &servicesLayer{a: a, local: localsrc.New(localsrc.Config{})}
	a.svc = sl
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	sl.pods = a.localPodCIDRs()
	sl.local.SetPodCIDRs(sl.pods)
	var localOnly []svcproxy.LocalPort
	if cfg.DNSAddr.IsValid() {
		dns := netip.AddrPortFrom(cfg.DNSAddr, 53)
		localOnly = append(localOnly, svcproxy.LocalPort{Addr: dns, Proto: services.UDP}, svcproxy.LocalPort{Addr: dns, Proto: services.TCP})
	}
	if cfg.SOCKS5.IsValid() {
		localOnly = append(localOnly, svcproxy.LocalPort{Addr: cfg.SOCKS5, Proto: services.TCP})
	}
	if cfg.Services != svcproxy.ModeOff || len(localOnly) > 0 {
		p, err := svcproxy.New(svcproxy.Config{Mode: cfg.Services, Interface: cfg.Interface, LocalOnly: localOnly, Logger: a.log})
		if err != nil {
			return cleanup, err
		}
		rulesOn, err := p.Enabled(ctx)
		if err != nil {
			return cleanup, err
		}
		if cfg.Services == svcproxy.ModeAuto && !rulesOn {
			a.log.Info("kube-proxy serves this node; not programming Service rules")
		}
		sl.proxy = p
		// Forwarding serves the rules: where they are programmed, this
		// node both sends and takes node-forwarded connections.
		if cfg.ForwardPort != 0 && rulesOn {
			sl.fwd = &forwarding{a: a, port: uint16(cfg.ForwardPort), first: cfg.ForwardFirstPort, last: cfg.ForwardLastPort, parent: ctx}
			cleanups = append(cleanups, sl.fwd.close)
		}
		cleanups = append(cleanups, func() {
			// Removing the table is one netlink message; the timeout only
			// bounds a wedged netlink socket.
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := p.Cleanup(c); err != nil {
				a.log.Warn("remove service rules", "err", err)
			}
		})
		// The guard goes in before the servers listen.
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = p.SetPodCIDRs(gctx, sl.pods)
		cancel()
		if err != nil {
			a.log.Warn("local-only firewall guard not installed (will retry); DNS and SOCKS5 still refuse foreign clients themselves", "err", err)
		}
	}
	if cfg.DNSAddr.IsValid() {
		remove, err := linkconf.HostAddress(cfg.DNSInterface, netip.PrefixFrom(cfg.DNSAddr, cfg.DNSAddr.BitLen()))
		if err != nil {
			return cleanup, err
		}
		cleanups = append(cleanups, func() {
			if err := remove(); err != nil {
				a.log.Warn("remove DNS address", "err", err)
			}
		})
	}
	if cfg.DNSAddr.IsValid() {
		var upstreams []netip.AddrPort
		if f, err := os.Open(cfg.ResolvConf); err != nil {
			a.log.Warn("no upstream resolvers", "err", err)
		} else {
			upstreams, err = dnsserver.ParseResolvConf(f)
			f.Close()
			if err != nil {
				a.log.Warn("parse resolv.conf", "path", cfg.ResolvConf, "err", err)
			}
		}
		s, err := dnsserver.New(dnsserver.Config{
			Listen: netip.AddrPortFrom(cfg.DNSAddr, 53), ClusterDomain: cfg.ClusterDomain,
			MeshDomain: cfg.MeshDomain, Upstreams: upstreams, Logger: a.log.With("src", "dns"),
			Local: sl.local.Contains,
		})
		if err != nil {
			return cleanup, err
		}
		sl.dns = s
		run("dns", s.Run)
	}
	if cfg.SOCKS5.IsValid() {
		s, err := socks5.New(socks5.Config{Listen: cfg.SOCKS5, Resolver: nodeResolver{a}, Logger: a.log.With("src", "socks5"), Local: sl.local.Contains})
		if err != nil {
			return cleanup, err
		}
		sl.socks = s
		run("socks5", s.Run)
	}
	return cleanup, nil
}

// update feeds the current map to DNS and the rules, and the node's pod
// CIDRs to the local-only checks. Called from reconcile.
func (sl *servicesLayer) update(gen uint64, svcs map[string]*services.Service, refused map[string]error, nodes map[string][]netip.Addr, view svcView) error {
	if sl.dns != nil {
		sl.dns.SetNodes(nodes)
	}
	pods := sl.a.localPodCIDRs()
	if !slices.Equal(pods, sl.pods) {
		sl.a.log.Info("local pod CIDRs served by DNS and SOCKS5", "pod_cidrs", pods)
		sl.pods = pods
		sl.local.SetPodCIDRs(pods)
	}
	if sl.proxy != nil {
		// Cheap when unchanged and installed; retried here after a failure.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := sl.proxy.SetPodCIDRs(ctx, pods)
		cancel()
		if err != nil {
			sl.a.log.Warn("local-only firewall guard", "err", err)
		}
	}
	if sl.fwd != nil {
		sl.fwd.setAddr(view.self.Overlay)
	}
	viewKey := view.key()
	if gen == sl.gen && sl.gen != 0 && viewKey == sl.view {
		return nil
	}
	if gen != sl.gen {
		for k, err := range refused {
			// One bad Service is refused; the others still work.
			sl.a.log.Warn("refusing Service from the network map", "service", k, "err", err)
		}
	}
	t, err := services.NewTable(slices.Collect(maps.Values(svcs)))
	if err != nil {
		return err
	}
	// Where each endpoint is decides how it is reached; an address alone
	// is never DNATed to when its node says it is elsewhere.
	ds := svcpath.Resolve(t, view.self, view.peers)
	ports := func(svcpath.Forwarding) (uint16, bool) { return 0, false }
	if sl.fwd != nil {
		sl.fwd.setAllow(t, view.self, view.peers)
		ports = sl.fwd.ports(svcpath.Forwardings(t, ds))
	}
	rules, names, err := svcpath.Rewrite(t, ds, view.self.Overlay, ports)
	if err != nil {
		return err
	}
	for i := range ds {
		if ds[i].Path != svcpath.Forward {
			continue
		}
		// A forward without a port is left out of the rules: say so.
		if !hasForwardPort(rules, ds[i], view.self.Overlay) {
			ds[i].Path, ds[i].Target = svcpath.None, netip.Addr{}
			if sl.fwd == nil {
				ds[i].Why = "address not routable over the overlay, and forwarding is off here (--service-forward-port 0, or no Service rules)"
			} else {
				ds[i].Why = "address not routable over the overlay, and no forwarding port is free here (--service-forward-ports)"
			}
		}
	}
	// Rules first, then names: a client that resolves a new Service and
	// connects at once must find its DNAT rule in place (a UDP flow that
	// misses it would stick to the untranslated conntrack entry).
	if sl.proxy != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := sl.proxy.Apply(ctx, rules); err != nil {
			return fmt.Errorf("apply Service rules: %w", err)
		}
	}
	if sl.dns != nil {
		sl.dns.SetServices(names)
	}
	sl.logDecisions(ds)
	sl.gen, sl.view = gen, viewKey
	return nil
}

// hasForwardPort reports whether the rules reach forward decision d
// through this node's forwarding address.
func hasForwardPort(rules *services.Table, d svcpath.Decision, local netip.Addr) bool {
	ns, name, _ := services.SplitKey(d.Service)
	s := rules.Get(ns, name)
	if s == nil || !local.IsValid() {
		return false
	}
	for _, e := range s.Endpoints {
		if e.Addresses[0] == local && len(e.Ports) > 0 {
			return true
		}
	}
	return false
}

// logDecisions keeps ds for `edgewire services` and logs what changed
// for endpoints that are forwarded or left out.
func (sl *servicesLayer) logDecisions(ds []svcpath.Decision) {
	sl.mu.Lock()
	old := sl.decisions
	sl.decisions = ds
	sl.mu.Unlock()
	type k struct {
		svc, node string
		ep        netip.Addr
	}
	was := map[k]svcpath.Path{}
	for _, d := range old {
		was[k{d.Service, d.KubeNode, d.Endpoint}] = d.Path
	}
	for _, d := range ds {
		if p, ok := was[k{d.Service, d.KubeNode, d.Endpoint}]; ok && p == d.Path {
			continue
		}
		switch d.Path {
		case svcpath.None:
			sl.a.log.Warn("Service endpoint left out", "service", d.Service, "endpoint", d.Endpoint, "node", d.KubeNode, "why", d.Why)
		case svcpath.Forward, svcpath.Host:
			sl.a.log.Info("Service endpoint reached through its node", "service", d.Service, "endpoint", d.Endpoint, "node", d.KubeNode, "path", d.Path, "via", d.Target)
		}
	}
}

// nodeResolver lets SOCKS5 reach nodes by name (or <name>.<mesh-domain>)
// and overlay addresses, nothing else.
type nodeResolver struct{ a *Agent }

func (r nodeResolver) Resolve(host string) (netip.Addr, error) {
	a := r.a
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	host = strings.TrimSuffix(host, "."+a.cfg.MeshDomain)
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, err := netip.ParseAddr(host); err == nil {
		for _, p := range a.state.Prefixes {
			if p.Contains(ip) {
				return ip, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("%w: %s is not an overlay address", socks5.ErrNotAllowed, ip)
	}
	if host == a.state.Self.Name && len(a.state.Self.Addresses) > 0 {
		return a.state.Self.Addresses[0], nil
	}
	for _, p := range a.state.Peers {
		if p.Name == host && len(p.Addresses) > 0 {
			return p.Addresses[0], nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: no node named %q", socks5.ErrNotAllowed, host)
}

// Services implements localapi.Backend: how this node reaches each
// Service endpoint, as of the last apply.
func (a *Agent) Services() (localapi.Services, error) {
	out := localapi.Services{Endpoints: []localapi.ServiceEndpoint{}}
	sl := a.svc
	if sl == nil {
		return out, nil
	}
	sl.mu.Lock()
	ds := sl.decisions
	sl.mu.Unlock()
	for _, d := range ds {
		e := localapi.ServiceEndpoint{Service: d.Service, Address: d.Endpoint.String(), NodeName: d.KubeNode, Via: d.Node, Path: string(d.Path), Why: d.Why}
		if d.Target.IsValid() {
			e.Target = d.Target.String()
		}
		out.Endpoints = append(out.Endpoints, e)
	}
	if sl.fwd != nil {
		is, ss := sl.fwd.stats()
		out.Forward = localapi.ForwardStats{Ports: is.Ports, Out: is.TCP + is.UDP, OutFailed: is.Failed,
			In: ss.TCP + ss.UDP, InRefused: ss.Refused, InNoAnswer: ss.DialFailed}
	}
	return out, nil
}

// UninstallConfig is what `edgewire-agent uninstall` needs.
type UninstallConfig struct {
	CNIConfDir string // "": podnet.DefaultConfDir
	Logger     *slog.Logger
}

// Uninstall removes what the agent leaves on the host when it stops: the
// pod network and the Service rules' table (an agent that exits cleanly
// removes that itself).
func Uninstall(cfg UninstallConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pn, err := podnet.New(podnet.Config{Mode: podnet.ModeCNI, ConfDir: cfg.CNIConfDir, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	errs := []error{pn.Uninstall()}
	p, err := svcproxy.New(svcproxy.Config{Mode: svcproxy.ModeOn, Interface: DefaultInterface, Logger: cfg.Logger})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = p.Cleanup(ctx)
		cancel()
	}
	return errors.Join(append(errs, err)...)
}
