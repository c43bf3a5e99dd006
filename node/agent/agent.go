// Package agent assembles edgewire-agent: node identity, enrolment, the
// WireGuard device, the coordinator stream, per-peer path selection, and
// the reconcile loop that turns the network map into WireGuard peers and
// routes. It keeps the data plane up on the last known map while the
// coordinator is unreachable.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/dataplane/bind"
	"github.com/edgewire/edgewire/dataplane/linkconf"
	"github.com/edgewire/edgewire/dataplane/wgdev"
	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/internal/rungroup"
	"github.com/edgewire/edgewire/internal/sdnotify"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/node/control"
	"github.com/edgewire/edgewire/node/homerelay"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/node/localapi"
	"github.com/edgewire/edgewire/node/mapstate"
	"github.com/edgewire/edgewire/node/pathsel"
	"github.com/edgewire/edgewire/node/podnet"
	"github.com/edgewire/edgewire/node/svcfwd"
	"github.com/edgewire/edgewire/node/svcproxy"
	"github.com/edgewire/edgewire/node/traversal"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// Defaults, in one place.
const (
	DefaultStateDir   = "/var/lib/edgewire/agent"
	DefaultInterface  = "edgewire0"
	DefaultMTU        = 1420
	DefaultListenPort = 51820
	DefaultRouteTable = linkconf.DefaultTable
	// DefaultMaxInflight is the default bound on the packets the WireGuard
	// device holds each way (see Config.MaxInflight), chosen by `make
	// bench`'s trade curve: one receive batch. It kept (and beat) the
	// unbounded pools' TCP throughput at the least memory; 64 lost
	// throughput, 256 and 1024 only cost memory.
	DefaultMaxInflight = 128
	MaxInflightLimit   = 1 << 16
	DefaultGCPercent   = 50
	keepalive          = 25 * time.Second
	endpointInterval   = 30 * time.Second
)

// Config configures the agent.
type Config struct {
	StateDir   string
	Interface  string
	MTU        int
	ListenPort int
	Socket     string // local API socket

	// Joining, when the state dir holds no enrolment yet (or a token of
	// another overlay is given: the node re-joins). Name, Routes and
	// Coordinator are also the node's desired state on every start:
	// Coordinator when set, Name and Routes when SetName and SetRoutes
	// say they were given (unset ones keep what is registered); see
	// converge.go.
	Coordinator string
	Token       string
	TokenFile   string // holds the token; deleted once enrolled
	ServerName  string
	Name        string
	Routes      []netip.Prefix // advertised routes
	SetName     bool
	SetRoutes   bool
	// KubernetesTokenFile is a projected service account token (audience
	// "edgewire") proving the Kubernetes Node the agent runs on; read at
	// every join and connect (the kubelet rotates it). Empty: none.
	KubernetesTokenFile string

	// RouteTable holds routes through the overlay (see linkconf).
	RouteTable int

	// RelayRegion is the preferred home relay region (used whenever it is
	// up); 0 picks the closest.
	RelayRegion uint32

	// Services layer. DNSAddr invalid: no DNS server; SOCKS5 invalid: no
	// proxy; Services "off": no Service rules.
	DNSAddr       netip.Addr
	DNSInterface  string
	ClusterDomain string
	MeshDomain    string
	ResolvConf    string
	Services      svcproxy.Mode
	SOCKS5        netip.AddrPort
	// ForwardPort is the TCP port on the overlay address where this node
	// takes Service connections for its endpoints whose addresses the
	// overlay cannot route (package svcfwd); 0: forwarding off, and such
	// endpoints are left out. ForwardFirstPort-ForwardLastPort is the
	// local port range for endpoints on other nodes (0, 0: the default).
	ForwardPort                       int
	ForwardFirstPort, ForwardLastPort uint16

	// PodNetwork manages this node's pod networking (package podnet):
	// off, cni or auto. CNIConfDir is where the CNI configuration goes
	// ("" : /etc/cni/net.d), CNIIPAMDir host-local's data directory
	// ("": its default).
	PodNetwork podnet.Mode
	CNIConfDir string
	CNIIPAMDir string

	MetricsListen string // /metrics, /healthz, /readyz; empty: off
	// MetricsPerPeer selects the peers with series of their own ("":
	// active; see PeerMetrics).
	MetricsPerPeer PeerMetrics
	PprofSocket    string // Go runtime profiles on a unix socket; empty: off
	// MemoryLimit is the Go runtime's soft memory limit in bytes
	// (debug.SetMemoryLimit); 0 leaves the runtime's, which honours
	// $GOMEMLIMIT.
	MemoryLimit int64
	// MaxInflight bounds the packets the WireGuard device holds each way
	// between taking them in and handing them on, and with them its
	// buffer pools (64 KiB each): 0 leaves them unbounded. See package
	// inflight and docs/memory.md for the trade against throughput.
	MaxInflight int
	// GCPercent is the Go GC's target heap growth (debug.SetGCPercent);
	// 0 leaves the runtime's, which honours $GOGC. With the data plane's
	// buffers bounded the live heap is small and mostly pointer-free
	// packet buffers, cheap to collect, and what sits resident under load
	// is garbage awaiting the next cycle: DefaultGCPercent halves it.
	GCPercent int

	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.StateDir == "" {
		return errors.New("--state-dir is required")
	}
	if c.Interface == "" || len(c.Interface) > 15 {
		return fmt.Errorf("--interface %q: want 1 to 15 bytes", c.Interface)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 1280 || c.MTU > 9000 {
		return fmt.Errorf("--mtu %d: want 1280 to 9000", c.MTU)
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return fmt.Errorf("--listen-port %d: want 0 to 65535", c.ListenPort)
	}
	if c.RouteTable == 0 {
		c.RouteTable = DefaultRouteTable
	}
	// 253-255 are the kernel's default, main and local tables.
	if c.RouteTable < 1 || int64(c.RouteTable) >= 1<<31 || (c.RouteTable >= 253 && c.RouteTable <= 255) {
		return fmt.Errorf("--route-table %d: want a table number other than 253-255 (default, main, local)", c.RouteTable)
	}
	if c.Socket == "" {
		c.Socket = localapi.DefaultSocket
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MemoryLimit < 0 {
		return fmt.Errorf("--memory-limit-mib %d: want 0 (off) or more", c.MemoryLimit>>20)
	}
	if c.GCPercent < 0 || c.GCPercent > 0 && c.GCPercent < 10 || c.GCPercent > 1000 {
		return fmt.Errorf("--gc-percent %d: want 10 to 1000 (or 0: the runtime's, $GOGC)", c.GCPercent)
	}
	if c.MaxInflight < 0 || c.MaxInflight > MaxInflightLimit {
		return fmt.Errorf("--max-inflight-packets %d: want 0 (no bound) or 1 to %d", c.MaxInflight, MaxInflightLimit)
	}
	if c.ForwardPort < 0 || c.ForwardPort > 65535 {
		return fmt.Errorf("--service-forward-port %d: want 0 (off) to 65535", c.ForwardPort)
	}
	if c.ForwardFirstPort == 0 && c.ForwardLastPort == 0 {
		c.ForwardFirstPort, c.ForwardLastPort = svcfwd.DefaultFirstPort, svcfwd.DefaultLastPort
	}
	if c.ForwardLastPort < c.ForwardFirstPort || c.ForwardFirstPort == 0 {
		return fmt.Errorf("--service-forward-ports %d-%d: want first <= last", c.ForwardFirstPort, c.ForwardLastPort)
	}
	if c.ForwardPort != 0 && c.ForwardPort >= int(c.ForwardFirstPort) && c.ForwardPort <= int(c.ForwardLastPort) {
		return fmt.Errorf("--service-forward-port %d lies in --service-forward-ports %d-%d", c.ForwardPort, c.ForwardFirstPort, c.ForwardLastPort)
	}
	if c.MetricsPerPeer == "" {
		c.MetricsPerPeer = PeerMetricsActive
	}
	if _, err := ParsePeerMetrics(string(c.MetricsPerPeer)); err != nil {
		return fmt.Errorf("--metrics-per-peer: %w", err)
	}
	if c.PodNetwork == "" {
		c.PodNetwork = podnet.ModeOff
	}
	if _, err := podnet.ParseMode(string(c.PodNetwork)); err != nil {
		return fmt.Errorf("--pod-network: %w", err)
	}
	mode, err := svcproxy.ParseMode(string(c.Services))
	if err != nil {
		return fmt.Errorf("--services: %w", err)
	}
	c.Services = mode
	if c.DNSInterface == "" {
		c.DNSInterface = DefaultDNSInterface
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.MeshDomain == "" {
		c.MeshDomain = DefaultMeshDomain
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	for _, d := range []string{c.ClusterDomain, c.MeshDomain} {
		if strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") || strings.ContainsAny(d, " /") {
			return fmt.Errorf("domain %q: want a name like cluster.local", d)
		}
	}
	return nil
}

// JoinConfig is what `edgewire-agent join` needs.
type JoinConfig struct {
	StateDir            string
	Coordinator         string
	Token               string
	TokenFile           string // read when Token is empty; deleted once enrolled
	ServerName          string
	Name                string
	Routes              []netip.Prefix
	KubernetesTokenFile string
	// Host dials the coordinator (nil: the real host, with marked sockets).
	Host Host
}

func (jc JoinConfig) dial() func(context.Context, string) (net.Conn, error) {
	h := jc.Host
	if h == nil {
		h = linuxHost{}
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return h.Dial(ctx, "tcp", addr) }
}

// maxTokenFile bounds what is read of a token file.
const maxTokenFile = 64 << 10

// readSecretFile reads a token file (trimmed), refusing a file others may
// read: it holds a credential.
func readSecretFile(path, what string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	b := make([]byte, maxTokenFile+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%s %s: %w", what, path, err)
	}
	if n > maxTokenFile {
		return "", fmt.Errorf("%s %s is larger than %d bytes", what, path, maxTokenFile)
	}
	return strings.TrimSpace(string(b[:n])), nil
}

// kubernetesToken reads the service account token file, if configured.
func kubernetesToken(path string, log *slog.Logger) string {
	if path == "" {
		return ""
	}
	t, err := readSecretFile(path, "--kubernetes-token-file")
	if err != nil {
		log.Warn("cannot read the Kubernetes service account token", "err", err)
	}
	return t
}

// Join enrols the node with a coordinator and records it in the state dir.
// A token file is deleted once the enrolment is saved: the token has done
// its job and must not stay on disk.
func Join(ctx context.Context, jc JoinConfig) (identity.Enrolment, *api.JoinResponse, error) {
	if jc.Token == "" && jc.TokenFile != "" {
		t, err := readSecretFile(jc.TokenFile, "--token-file")
		if err != nil {
			return identity.Enrolment{}, nil, err
		}
		jc.Token = t
	}
	if jc.Coordinator == "" || jc.Token == "" {
		return identity.Enrolment{}, nil, errors.New("joining needs --coordinator and --token (or --token-file)")
	}
	if _, err := control.Addrs(jc.Coordinator); err != nil {
		return identity.Enrolment{}, nil, fmt.Errorf("--coordinator: %w", err)
	}
	nk, err := identity.LoadOrCreateKey(jc.StateDir)
	if err != nil {
		return identity.Enrolment{}, nil, err
	}
	host, _ := os.Hostname()
	e, resp, err := control.Join(ctx, control.JoinRequest{
		Coordinator: jc.Coordinator, ServerName: jc.ServerName, Token: jc.Token,
		PrivateKey: nk, Name: jc.Name, Hostname: host, Routes: jc.Routes,
		KubernetesToken: kubernetesToken(jc.KubernetesTokenFile, slog.Default()), Dial: jc.dial(),
	})
	if err != nil {
		return e, nil, err
	}
	if err := identity.SaveEnrolment(jc.StateDir, e); err != nil {
		return e, nil, fmt.Errorf("save enrolment: %w", err)
	}
	if err := removeTokenFile(jc.TokenFile); err != nil {
		return e, resp, err
	}
	return e, resp, nil
}

// removeTokenFile deletes a join token file once the node is enrolled.
func removeTokenFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the used join token %s: %w", path, err)
	}
	return nil
}

// Agent is a running agent.
type Agent struct {
	cfg  Config
	env  Env
	host Host
	log  *slog.Logger
	priv key.Private // the node key
	enr  identity.Enrolment

	hosts   hostCache     // resolved coordinator, relay and STUN names
	refused refusedRoutes // map routes refused and logged
	dev     *wgdev.Device
	bind    *bind.Bind
	trav    *traversal.Manager
	home    *homerelay.Manager
	cc      *control.Client
	svc     *servicesLayer
	pods    *podnet.Manager // nil with --pod-network off
	// lastDirect: peers' last direct endpoints, loaded at start (they
	// seed new path machines) and kept by reconcile (which alone touches
	// it) to notice changes worth saving.
	lastDirect map[key.Public]identity.LastDirect
	// waitingHandshake: the last plan held some peer's keepalive for its
	// first handshake (reconcile only); hsWait decides whose.
	waitingHandshake bool
	hsWait           handshakeWait

	dirty     chan struct{} // the map changed; capacity 1
	unsaved   chan struct{} // the map changed since it was saved; capacity 1
	reportNow chan struct{} // a stream opened: report paths now; capacity 1

	// Lock order. mu is the agent's only outer lock, and a leaf: while it
	// is held the agent touches its map and nothing else, never calling
	// into traversal, the home relay, the Bind, the device, the control
	// client or the Host (reconcile and Status copy what they need under
	// mu, release it, then call the parts). The parts' own locks only go
	// downward: traversal.Manager.mu → control.Client.mu (Send) and the
	// Bind's relay table (RelayEndpoint); homerelay.Manager.mu →
	// relay.Client.mu; wgdev.Device.mu → wireguard-go's. The callbacks the
	// parts make into the agent take no agent lock (viaOverlay reads an
	// atomic snapshot, hostAddrs asks the Host) or take only mu with no
	// other lock held (knownKey, from the control client's session).
	mu    sync.Mutex // guards state
	state *mapstate.State

	overlay atomic.Pointer[[]netip.Prefix] // prefixes reached through the overlay; see viaOverlay
}

// Run runs the agent on this machine until ctx ends, then removes its
// interface.
func Run(ctx context.Context, cfg Config) error { return RunWith(ctx, cfg, Env{}) }

// RunWith runs the agent with the parts env gives (the real machine's for
// the zero Env) until ctx ends.
func RunWith(ctx context.Context, cfg Config, env Env) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	// Before a token is spent or the coordinator hears of this key: the
	// privileges, one agent per state dir, the ports (preflight.go).
	if err := preflightPrivileges(env, realHost); err != nil {
		return err
	}
	lock, err := identity.LockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	onHost := env.Host == nil
	if err := preflightPorts(cfg, env, onHost, realHost); err != nil {
		return err
	}
	if onHost {
		env.Host = linuxHost{table: cfg.RouteTable}
	}
	log := cfg.Logger
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	nk, err := identity.LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	enr, err := identity.LoadEnrolment(cfg.StateDir)
	rejoin := false
	if err == nil {
		if rejoin, err = tokenForOtherOverlay(cfg, enr); err != nil {
			return fmt.Errorf("join token: %w", err)
		}
		if rejoin {
			if cfg.Coordinator == "" {
				return fmt.Errorf("the join token is for another overlay than the one this node is enrolled in (%s): give that overlay's --coordinator to re-join it", enr.Coordinator)
			}
			log.Warn("the join token is for another overlay: re-joining; an admin of the old one may delete this node there",
				"enrolled_with", enr.Coordinator, "coordinator", cfg.Coordinator, "name", enr.Name)
			err = identity.ErrNotEnrolled
		}
	}
	// The routes this run advertises: the flags', or else those
	// registered.
	advertised := cfg.Routes
	if !cfg.SetRoutes && err == nil {
		advertised = nil
		for _, r := range enr.Advertised {
			if p, perr := netip.ParsePrefix(r); perr == nil {
				advertised = append(advertised, p)
			}
		}
	}
	if err := preflightForwarding(advertised, onHost, realHost); err != nil {
		return err
	}
	joined := false
	if errors.Is(err, identity.ErrNotEnrolled) && (cfg.Token != "" || cfg.TokenFile != "") {
		enr, err = joinWithRetry(ctx, cfg, env.Host, log)
		joined = err == nil
	}
	if err != nil {
		return err
	}
	if rejoin {
		if err := identity.ForgetOverlay(cfg.StateDir); err != nil {
			return fmt.Errorf("forget the old overlay's state: %w", err)
		}
	}
	if err := removeTokenFile(cfg.TokenFile); err != nil {
		log.Warn("the node is enrolled but its join token file stays", "err", err)
	}
	// The flags are the node's desired state: a join just applied them,
	// otherwise what differs from the registration is asked for now.
	var pending changes
	registered := enr
	if w := cfg.wants(enr, hostname); w.any() && !joined {
		uctx, cancel := context.WithTimeout(ctx, updateTimeout)
		enr, err = updateRegistration(uctx, cfg, enr, w, nk, env.Host, hostname, log)
		cancel()
		switch {
		case errors.Is(err, errPendingUpdate):
			log.Warn("cannot reach the coordinator to update this node's registration; running as registered and asking again in the background",
				"changed", w.String(), "err", err)
			pending = w
		case err != nil:
			return err
		}
	}
	a := &Agent{cfg: cfg, env: env, host: env.Host, log: log, priv: nk, enr: enr, dirty: make(chan struct{}, 1), unsaved: make(chan struct{}, 1), reportNow: make(chan struct{}, 1)}
	a.state, err = mapstate.Load(filepath.Join(cfg.StateDir, identity.NetworkMapFile))
	switch {
	case err == nil:
		log.Info("loaded last network map", "version", a.state.Version, "peers", len(a.state.Peers))
		a.setOverlay()
		a.markDirty()
	case errors.Is(err, os.ErrNotExist):
		a.state = mapstate.New()
	default:
		log.Warn("ignoring unreadable saved network map", "err", err)
		a.state = mapstate.New()
	}

	// Peers' last direct endpoints: without relay or coordinator, a
	// restarted node tries them at once.
	if a.lastDirect, err = identity.LoadLastDirect(cfg.StateDir, time.Now(), lastDirectMaxAge); err != nil {
		log.Warn("ignoring saved direct endpoints", "err", err)
	}
	a.bind = bind.New(env.Bind, log)
	defer a.bind.Shutdown()
	a.dev, err = wgdev.New(wgdev.Config{
		Name: cfg.Interface, MTU: cfg.MTU, ListenPort: cfg.ListenPort,
		PrivateKey: nk, Bind: a.bind, Logger: log, FwMark: linkconf.Mark, TUN: env.TUN,
		MaxInflight: cfg.MaxInflight,
		// A relayed initiation refused: most likely from a node that
		// joined and initiated before its entry reached us.
		OnRefusedInitiation: func(from netip.AddrPort) {
			if k, ok := a.bind.RelayPeer(from); ok {
				a.hsWait.refusedFrom(k, time.Now())
			}
		},
	})
	if err != nil {
		return err
	}
	if cfg.PodNetwork != podnet.ModeOff {
		// Pods keep their network when the agent stops: nothing here is
		// undone on the way out (see `edgewire-agent uninstall`).
		if a.pods, err = podnet.New(podnet.Config{Mode: cfg.PodNetwork, ConfDir: cfg.CNIConfDir, IPAMDir: cfg.CNIIPAMDir,
			MTU: cfg.MTU, Logger: log}); err != nil {
			return err
		}
	}
	removeRules, err := a.host.InstallRules()
	defer removeRules()
	if err != nil {
		a.dev.Close()
		return fmt.Errorf("policy routing: %w", err)
	}
	defer func() {
		a.dev.Close()
		log.Info("interface removed", "iface", cfg.Interface)
	}()
	port, err := a.dev.ListenPort()
	if err != nil {
		return err
	}
	log.Info("wireguard up", "iface", cfg.Interface, "public_key", nk.Public().String(), "listen_port", port)

	a.cc, err = control.New(control.Config{
		Enrolment: enr, PrivateKey: nk, Hostname: hostname, Version: buildinfo.Get().Version, Logger: log, OnMap: a.onMap,
		OnSignal: func(s *api.Signal) {
			if sig, err := traversal.SignalFromProto(s); err == nil {
				a.trav.HandleSignal(sig)
			}
		},
		OnTicket: a.onTicket, KnownKey: a.knownKey,
		// Sessions that failed for want of signalling start over at once.
		OnConnected:     func() { a.trav.Reconnected(); a.kickReport() },
		Dial:            func(ctx context.Context, addr string) (net.Conn, error) { return a.host.Dial(ctx, "tcp", addr) },
		KubernetesToken: func() string { return kubernetesToken(cfg.KubernetesTokenFile, log) },
		HeldMap: func() ([]byte, []byte) {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.state.Digest, a.state.Buckets()
		},
	})
	if err != nil {
		return err
	}
	mux := traversal.NewMux(a.bind.PacketConn(), a.bind.Port, a.hostAddrs, log)
	defer mux.Close()
	a.trav, err = traversal.New(traversal.Config{
		PrivateKey: nk, PublicKey: nk.Public(), Mux: mux,
		Send:      func(s traversal.Signal) bool { return a.cc.SendSignal(s.Proto()) },
		HostAddrs: a.hostAddrs, RelayEndpoint: a.bind.RelayEndpoint, Overlay: a.viaOverlay, Logger: log,
		Prime: func(dst netip.AddrPort, ttl int) {
			// One byte that no peer takes for WireGuard or STUN, if one
			// ever gets there.
			if err := a.bind.SendTTL(dst, []byte{0xff}, ttl); err != nil {
				log.Debug("ICE primer not sent", "to", dst, "err", err)
			}
		},
		SameHost: env.SameHost,
	})
	if err != nil {
		return err
	}
	a.home = homerelay.New(homerelay.Config{
		PrivateKey: nk, Preferred: cfg.RelayRegion, Logger: log,
		OnPacket: func(src key.Public, p []byte) {
			a.trav.Seen(src) // the peer talks to us: worth looking for a direct path
			a.bind.QueueRelayed(src, p)
		},
		OnFlush:  a.bind.FlushRelayed,
		OnChange: a.trav.SetRelay,
		NetDial:  a.host.Dial,
	})
	a.bind.SetRelay(a.home)
	// A saved, unexpired ticket lets a restarted agent use the relays
	// while the coordinator is unreachable.
	if t, exp, ok := identity.LoadTicket(cfg.StateDir, time.Now()); ok {
		a.home.SetTicket(t)
		log.Info("using saved relay ticket", "expires", exp)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := rungroup.New(ctx)
	svcCleanup, err := a.startServices(gctx, g.Go)
	defer svcCleanup()
	if err != nil {
		cancel()
		g.Wait()
		return fmt.Errorf("services layer: %w", err)
	}
	reg := telemetry.NewRegistry()
	a.registerMetrics(reg)
	if cfg.MetricsListen != "" {
		g.Go("metrics", func(ctx context.Context) error { return telemetry.Serve(ctx, cfg.MetricsListen, reg, a.ready, log) })
	}
	if cfg.PprofSocket != "" {
		g.Go("pprof", func(ctx context.Context) error { return telemetry.ServeProfiles(ctx, cfg.PprofSocket, log) })
	}
	g.Go("coordinator stream", a.cc.Run)
	g.Go("traversal", a.trav.Run)
	g.Go("home relay", a.home.Run)
	g.Go("reconcile", a.reconcileLoop)
	g.Go("save map", a.saveLoop)
	g.Go("memory trim", a.trimLoop)
	g.Go("path reports", a.reportLoop)
	g.Go("endpoints", func(ctx context.Context) error { return a.endpointLoop(ctx, port) })
	g.Go("local API", func(ctx context.Context) error { return localapi.Serve(ctx, cfg.Socket, a, log) })
	if pending.any() {
		g.GoOneShot("registration update", func(ctx context.Context) error { return a.updateLoop(ctx, registered, pending, hostname) })
	}

	if _, err := sdnotify.Ready("interface " + cfg.Interface + " up"); err != nil {
		log.Warn("notify systemd", "err", err)
	}
	<-gctx.Done()
	sdnotify.Stopping()
	return g.Wait()
}

// ready is the agent's readiness: it holds a network map (from the
// coordinator or its last saved copy).
func (a *Agent) ready() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.Version == 0 {
		return errors.New("no network map yet")
	}
	return nil
}

func joinWithRetry(ctx context.Context, cfg Config, host Host, log *slog.Logger) (identity.Enrolment, error) {
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		e, resp, err := Join(ctx, JoinConfig{
			StateDir: cfg.StateDir, Coordinator: cfg.Coordinator, Token: cfg.Token, TokenFile: cfg.TokenFile,
			ServerName: cfg.ServerName, Name: cfg.Name, Routes: cfg.Routes, KubernetesTokenFile: cfg.KubernetesTokenFile,
			Host: host,
		})
		if err == nil {
			log.Info("joined", "coordinator", cfg.Coordinator, "name", e.Name, "addresses", resp.GetSelf().GetAddresses(),
				"kubernetes_node", resp.GetSelf().GetKubernetesNode())
			if p := resp.GetPendingRoutes(); len(p) > 0 {
				log.Warn("advertised routes wait for an admin's approval", "routes", p, "approve", "edgewire nodes routes approve "+e.Name)
			}
			return e, nil
		}
		// A refused token or name will not get better by retrying.
		if errors.Is(err, control.ErrRefused) || errors.Is(err, jointoken.ErrMalformed) {
			return e, err
		}
		log.Warn("join failed; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return e, ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// onTicket hands a new relay ticket to the home relay and saves it.
func (a *Agent) onTicket(t *api.RelayTicket) {
	a.home.SetTicket(t.GetTicket())
	if err := identity.SaveTicket(a.cfg.StateDir, t.GetTicket(), time.Unix(t.GetExpiresUnix(), 0)); err != nil {
		a.log.Warn("save relay ticket", "err", err)
	}
}

// onMap applies a coordinator map message; an error asks for a full map.
func (a *Agent) onMap(m *api.NetworkMap) error {
	a.mu.Lock()
	err := a.state.Apply(m)
	if err == nil {
		a.setOverlay()
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	a.markDirty()
	select {
	case a.unsaved <- struct{}{}:
	default:
	}
	return nil
}

// lastDirectMaxAge: saved direct endpoints older than this are not
// tried after a restart (NAT mappings do not live that long).
const lastDirectMaxAge = 24 * time.Hour

// noteDirect schedules a save when a peer's confirmed direct endpoint
// changed since the last one noted. Called from reconcile only.
func (a *Agent) noteDirect(paths map[key.Public]pathsel.Path) {
	changed := false
	for k, p := range paths {
		if p.Kind != pathsel.Direct || p.LastKnown || a.lastDirect[k].Endpoint == p.Endpoint {
			continue
		}
		if a.lastDirect == nil {
			a.lastDirect = map[key.Public]identity.LastDirect{}
		}
		a.lastDirect[k] = identity.LastDirect{Endpoint: p.Endpoint, At: time.Now()}
		changed = true
	}
	if changed {
		select {
		case a.unsaved <- struct{}{}:
		default:
		}
	}
}

// saveDelay batches saves of the map: a burst of deltas (a fleet joining)
// costs one write, and a map at most this old is lost in a crash.
const saveDelay = time.Second

// saveLoop writes the map to the state dir, at most once per saveDelay,
// outside mu (only the encoding holds it), and once more when ctx ends.
func (a *Agent) saveLoop(ctx context.Context) error {
	path := filepath.Join(a.cfg.StateDir, identity.NetworkMapFile)
	save := func() {
		a.mu.Lock()
		b, err := a.state.Marshal()
		a.mu.Unlock()
		if err == nil {
			err = atomicfile.Write(path, b, 0o600)
		}
		if err != nil {
			a.log.Warn("persist network map", "err", err)
		}
		eps := map[key.Public]identity.LastDirect{}
		for k, ld := range a.trav.LastDirect() {
			eps[k] = identity.LastDirect{Endpoint: ld.Endpoint, At: ld.At}
		}
		if err := identity.SaveLastDirect(a.cfg.StateDir, eps); err != nil {
			a.log.Warn("persist direct endpoints", "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			select {
			case <-a.unsaved:
				save()
			default:
			}
			return nil
		case <-a.unsaved:
		}
		select {
		case <-ctx.Done():
		case <-time.After(saveDelay):
		}
		save()
	}
}

func (a *Agent) reconcileLoop(ctx context.Context) error {
	retry := time.NewTimer(0)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.dirty:
		case <-a.trav.Changed():
		case <-retry.C:
		}
		if err := a.reconcile(); err != nil {
			a.log.Warn("reconcile failed; retrying", "err", err)
			retry.Reset(2 * time.Second)
		} else if a.waitingHandshake {
			// Turn keepalives on soon after the peer's handshake arrives,
			// or when the wait is over.
			retry.Reset(firstHandshakeWait / 4)
		}
	}
}

// reconcile makes WireGuard peers and routes match the map and the paths.
func (a *Agent) reconcile() error {
	a.mu.Lock()
	peers := a.state.SortedPeers()
	self := a.state.Self
	prefixes := a.state.Prefixes
	stun := a.stunServers()
	regions := a.relayRegions()
	svcGen, svcs, refused := a.state.ServicesGen, a.state.Services, a.state.Refused
	revs := a.state.RelayRevocations
	names := map[string][]netip.Addr{self.Name: self.Addresses}
	for _, p := range peers {
		names[p.Name] = p.Addresses
	}
	a.mu.Unlock()

	a.home.SetRegions(regions)
	a.home.SetRevocations(revs)
	tp := make([]traversal.Peer, len(peers))
	for i, p := range peers {
		tp[i] = traversal.Peer{Key: p.Key, Name: p.Name, Online: p.Online}
		if ld, ok := a.lastDirect[p.Key]; ok {
			tp[i].LastDirect = traversal.LastDirect{Endpoint: ld.Endpoint, At: ld.At}
		}
	}
	a.trav.SetSTUN(stun)
	a.trav.SetPeers(tp)

	paths := make(map[key.Public]pathsel.Path, len(peers))
	for _, p := range peers {
		paths[p.Key] = a.trav.Path(p.Key)
	}
	a.noteDirect(paths)
	// The node with the larger key starts a pair's first handshake; the
	// other answers it (see makePlan).
	stats, err := a.dev.Stats()
	if err != nil {
		return err
	}
	me := a.priv.Public()
	now := time.Now()
	waiting := func(k key.Public) bool {
		return a.hsWait.waiting(me, k, !stats[k].LastHandshake.IsZero(), paths[k].Kind != pathsel.None, now)
	}
	pl := makePlan(self, peers, prefixes, paths, routePolicy(prefixes, peers, paths, a.underlay(stun, regions)), waiting)
	a.waitingHandshake = pl.waiting
	a.hsWait.prune(func(k key.Public) bool { _, ok := paths[k]; return ok }, now)
	a.logRefusals(pl.refused)
	if err := a.dev.SetPeers(pl.peers); err != nil {
		return err
	}
	if err := a.host.Configure(a.cfg.Interface, pl.addrs, pl.routes); err != nil {
		return err
	}
	view := makeSvcView(self, peers, pl.refused)
	if a.pods != nil {
		// Pod traffic to the overlay and to every node's routes keeps its
		// source; the rest is masqueraded.
		routed := slices.Clone(prefixes)
		for _, p := range append(view.peers, view.self) {
			routed = append(routed, p.Routes...)
		}
		if err := a.pods.Apply(a.localPodCIDRs(), routed); err != nil {
			return err
		}
	}
	return a.svc.update(svcGen, svcs, refused, names, view)
}

// knownKey reports whether k is this node's, a peer's or a relay's key.
func (a *Agent) knownKey(k key.Public) bool {
	if k == a.priv.Public() {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.state.Peers[k]; ok {
		return true
	}
	for _, r := range a.state.Relays {
		if r.Key == k {
			return true
		}
	}
	return false
}

// mapHost resolves a map host: empty means the coordinator's (the first
// of several replicas': a coordinator with an embedded STUN server or
// relay runs alone, replicated ones leave them to separate relays).
func (a *Agent) mapHost(h string) string {
	if h == "" {
		addrs, _ := control.Addrs(a.enr.Coordinator)
		if len(addrs) > 0 {
			h, _, _ = net.SplitHostPort(addrs[0])
		}
	}
	return h
}

// stunServers lists the map's STUN servers and those of its relays as
// host:port, without duplicates. Called with mu held.
func (a *Agent) stunServers() []string {
	var out []string
	add := func(host string, port uint16) {
		if hp := net.JoinHostPort(a.mapHost(host), fmt.Sprint(port)); port != 0 && !slices.Contains(out, hp) {
			out = append(out, hp)
		}
	}
	for _, st := range a.state.STUN {
		add(st.Host, st.Port)
	}
	for _, r := range a.state.Relays {
		add(r.Host, r.STUNPort)
	}
	return out
}

// relayRegions resolves the relay map. Called with mu held.
func (a *Agent) relayRegions() []homerelay.Region {
	var out []homerelay.Region
	for _, r := range a.state.Relays {
		out = append(out, homerelay.Region{ID: r.ID, Name: r.Name, Key: r.Key,
			Addr: net.JoinHostPort(a.mapHost(r.Host), fmt.Sprint(r.Port))})
	}
	return out
}

// hostAddrs returns the addresses ICE offers as host candidates: the
// host's, except those only reachable through the overlay (a pod bridge
// inside this node's advertised pod CIDR, say).
func (a *Agent) hostAddrs() []netip.Addr {
	addrs, err := a.underlayAddrs()
	if err != nil {
		a.log.Warn("list host addresses", "err", err)
	}
	return addrs
}

// underlayAddrs is the host's addresses but those inside what the
// overlay routes (a pod bridge's gateway in this node's pod CIDR is no
// underlay address: offered as an endpoint, peers would protect it and
// refuse this node's pod CIDR).
func (a *Agent) underlayAddrs() ([]netip.Addr, error) {
	addrs, err := a.host.Addrs(a.cfg.Interface)
	return slices.DeleteFunc(addrs, a.viaOverlay), err
}

// viaOverlay reports whether ip is in the overlay prefixes or anyone's
// advertised routes, i.e. reached through WireGuard itself. It reads a
// snapshot kept by reconcile and takes no lock: the traversal manager
// calls it with its own lock held.
func (a *Agent) viaOverlay(ip netip.Addr) bool {
	for _, r := range a.cfg.Routes {
		if r.Contains(ip) {
			return true
		}
	}
	if p := a.overlay.Load(); p != nil {
		for _, r := range *p {
			if r.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// setOverlay records the prefixes reached through the overlay. Called
// with mu held.
func (a *Agent) setOverlay() {
	var ps []netip.Prefix
	ps = append(ps, a.state.Prefixes...)
	ps = append(ps, a.state.Self.Routes...)
	for _, p := range a.state.Peers {
		ps = append(ps, p.Routes...)
	}
	a.overlay.Store(&ps)
}

// endpointLoop reports the node's host addresses with the WireGuard port.
func (a *Agent) endpointLoop(ctx context.Context, port int) error {
	t := time.NewTicker(endpointInterval)
	defer t.Stop()
	for {
		eps, err := a.hostEndpoints(port)
		if err != nil {
			a.log.Warn("list host addresses", "err", err)
		} else {
			a.cc.SetEndpoints(eps)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// hostEndpoints is the host's addresses with port.
func (a *Agent) hostEndpoints(port int) ([]netip.AddrPort, error) {
	addrs, err := a.underlayAddrs()
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, ad := range addrs {
		out = append(out, netip.AddrPortFrom(ad, uint16(port)))
	}
	return out, err
}

// Status implements localapi.Backend.
func (a *Agent) Status() (localapi.Status, error) {
	stats, err := a.dev.Stats()
	if err != nil {
		return localapi.Status{}, err
	}
	port, _ := a.dev.ListenPort()
	// Copy what is needed under mu and release it before asking the
	// traversal and relay managers: they call back into the agent (for
	// viaOverlay) with their own locks held.
	a.mu.Lock()
	self, version := a.state.Self, a.state.Version
	peers := a.state.SortedPeers()
	a.mu.Unlock()
	st := localapi.Status{Self: localapi.SelfStatus{
		Name: self.Name, PublicKey: a.priv.Public().String(), Interface: a.cfg.Interface,
		ListenPort: port, MTU: a.cfg.MTU, Coordinator: a.enr.Coordinator, Connected: a.cc.Connected(), MapVersion: version,
	}}
	if st.Self.Name == "" {
		st.Self.Name = a.enr.Name
	}
	hs := a.home.Status()
	st.Self.Relay = &localapi.RelayStatus{Home: hs.Home, Connected: hs.Connected, Error: hs.Err, LatencyMs: map[string]float64{}}
	for name, d := range hs.Latency {
		st.Self.Relay.LatencyMs[name] = float64(d.Microseconds()) / 1000
	}
	for _, ad := range self.Addresses {
		st.Self.Addresses = append(st.Self.Addresses, ad.String())
	}
	eps, _ := a.hostEndpoints(port)
	for _, e := range eps {
		st.Self.Endpoints = append(st.Self.Endpoints, e.String())
	}
	st.Peers = []localapi.PeerStatus{}
	for _, p := range peers {
		ps := localapi.PeerStatus{Name: p.Name, PublicKey: p.Key.String(), Online: p.Online, Version: p.Version}
		for _, ad := range p.Addresses {
			ps.Addresses = append(ps.Addresses, ad.String())
		}
		for _, r := range p.Routes {
			ps.Routes = append(ps.Routes, r.String())
		}
		if ts, ok := a.trav.Status(p.Key); ok {
			ps.Path = ts.Path.Kind.String()
			ps.LastKnown = ts.Path.LastKnown
			if ts.Path.Kind == pathsel.Relay {
				ps.Relay = hs.Home
			}
			ps.ICE = &localapi.ICEStatus{State: ts.State.String(), Restarts: ts.Stats.Restarts, RTTMs: float64(ts.RTT.Microseconds()) / 1000}
			if ts.Local != nil {
				ps.ICE.Local = &localapi.CandidateInfo{Type: ts.Local.Type, Address: ts.Local.Address.String()}
			}
			if ts.Remote != nil {
				ps.ICE.Remote = &localapi.CandidateInfo{Type: ts.Remote.Type, Address: ts.Remote.Address.String()}
			}
		} else {
			ps.Path = pathsel.None.String()
		}
		if s, ok := stats[p.Key]; ok {
			if s.Endpoint.IsValid() {
				ps.Endpoint = s.Endpoint.String()
			}
			if !s.LastHandshake.IsZero() {
				hs := s.LastHandshake
				ps.LastHandshake = &hs
			}
			ps.RxBytes, ps.TxBytes = s.RxBytes, s.TxBytes
		}
		st.Peers = append(st.Peers, ps)
	}
	return st, nil
}
