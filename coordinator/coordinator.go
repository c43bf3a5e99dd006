// Package coordinator assembles the edgewire coordinator daemon: TLS
// identity, store, the gRPC services on a TLS port for agents (and remote
// admins holding the admin token), and on a local unix socket for admins.
package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/pki"
	"github.com/edgewire/edgewire/coordinator/server"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/svcsource"
	"github.com/edgewire/edgewire/dataplane/relay"
	"github.com/edgewire/edgewire/dataplane/relayd"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/atomicfile"
	"github.com/edgewire/edgewire/internal/connlimit"
	"github.com/edgewire/edgewire/internal/httpserve"
	"github.com/edgewire/edgewire/internal/routeguard"
	"github.com/edgewire/edgewire/internal/rungroup"
	"github.com/edgewire/edgewire/internal/telemetry"
	"github.com/edgewire/edgewire/types/jointoken"
	"github.com/edgewire/edgewire/types/key"
)

// Defaults, in one place.
const (
	DefaultDataDir = api.DefaultCoordinatorDataDir
	DefaultListen  = ":8443"
	DefaultPrefix  = "100.64.0.0/10"
	DefaultSTUN    = ":3478"
	DefaultRelay   = ":8444"
	TicketKeyFile  = "ticket.key"
	RelayKeyFile   = "relay.key"
	AdminTokenFile = "admin.token"
	AdminSocket    = api.AdminSocketName
	StoreFile      = "edgewire.db"

	agentWriteBuffer = 16 << 10 // per writing agent connection, pooled; gRPC's default is 32 KiB
	// Agents send small messages (signals are at most 8 KiB sealed, a
	// join at most 64 routes and a service account token); anything
	// bigger is refused before it is read whole.
	maxRecvMsg = 64 << 10
	// An agent needs one stream, plus a join or an admin call.
	maxStreamsPerConn = 16
	// MinTicketTTL is the shortest relay ticket lifetime allowed.
	MinTicketTTL = time.Minute
)

// Config configures the daemon.
type Config struct {
	DataDir     string
	Listen      string             // TLS gRPC listen address
	AdminSocket string             // empty: <DataDir>/admin.sock
	Prefixes    []netip.Prefix     // overlay prefixes
	TLSCert     string             // optional operator-provided serving cert...
	TLSKey      string             // ...its key...
	TLSCA       string             // ...and the CA that issued it (pinned by tokens)
	TLSSANs     []string           // extra DNS names / IPs for the generated cert
	STUNListen  string             // UDP address of the embedded STUN server; empty: none
	STUNAlt     string             // its second UDP address, the map's alt_port (stunserver.AltListen); empty: none
	RelayListen string             // TCP address of the embedded relay; empty: none
	RelayID     uint32             // region id of the embedded relay
	RelayName   string             // region name of the embedded relay
	Relays      []*api.RelayRegion // further relays (--relay-map)
	RelaySTUN   []*api.StunServer  // STUN servers of further relays with a second port (--relay-map's stun_alt_port)
	MeshKey     []byte             // relay mesh key; nil: the embedded relay does not mesh
	RelayRate   float64            // embedded relay's per-client bytes/s (relay.ServerConfig.RateBytes; 0: default)
	TicketTTL   time.Duration      // relay ticket lifetime
	Services    svcsource.Source   // where Services and pod CIDRs come from; nil: none
	// RoutePolicy bounds advertised routes and pod CIDRs; the addresses
	// agents need underneath the overlay (the coordinator's own, the TLS
	// SANs agents dial, relays, STUN) are added to its Protected list.
	RoutePolicy routeguard.Policy
	// FailureRate and FailureBurst bound failed joins and authentications
	// per source address and token ID (server.Config); rate < 0: off.
	FailureRate  float64
	FailureBurst int
	// MaxConnsPerSource bounds open agent connections per source address
	// (0: no limit).
	MaxConnsPerSource int
	MetricsListen     string // /metrics, /healthz, /readyz; empty: off
	PprofSocket       string // unix socket for net/http/pprof; empty: off
	Logger            *slog.Logger
	// Replication, if set, keeps the state in the Kubernetes API and
	// runs this process as one of several replicas; nil: bbolt in the
	// data dir, one process.
	Replication *Replication
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if c.Listen == "" {
		return errors.New("--listen is required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", c.Listen, err)
	}
	if len(c.Prefixes) == 0 {
		return errors.New("at least one --overlay-prefix is required")
	}
	for _, p := range c.Prefixes {
		if p != p.Masked() {
			return fmt.Errorf("--overlay-prefix %s has host bits set (did you mean %s?)", p, p.Masked())
		}
	}
	given := 0
	for _, f := range []string{c.TLSCert, c.TLSKey, c.TLSCA} {
		if f != "" {
			given++
		}
	}
	if given != 0 && given != 3 {
		return errors.New("--tls-cert, --tls-key and --tls-ca go together")
	}
	for _, r := range c.Relays {
		if c.RelayListen != "" && r.GetId() == c.RelayID {
			return fmt.Errorf("relay map region id %d is the embedded relay's (--relay-region-id)", r.GetId())
		}
	}
	if c.RelayListen != "" && c.RelayID == 0 {
		return errors.New("--relay-region-id must be > 0")
	}
	if len(c.Relays) > 0 && c.RelayListen != "" && c.MeshKey == nil {
		return errors.New("--relay-map with an embedded relay needs --mesh-key-file, or nodes on different relays cannot reach each other")
	}
	if c.TicketTTL < MinTicketTTL || c.TicketTTL > relay.MaxTicketTTL {
		return fmt.Errorf("--relay-ticket-ttl %s: want %s to %s (a deleted node keeps using relays that do not hear of it for at most this long)", c.TicketTTL, MinTicketTTL, relay.MaxTicketTTL)
	}
	if err := c.RoutePolicy.Validate(); err != nil {
		return err
	}
	if c.MaxConnsPerSource < 0 {
		return fmt.Errorf("--max-conns-per-source %d: want 0 (no limit) or more", c.MaxConnsPerSource)
	}
	if c.AdminSocket == "" {
		c.AdminSocket = filepath.Join(c.DataDir, AdminSocket)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Run runs the coordinator until ctx ends or one of its parts fails. It
// opens everything first (a failure there starts nothing), then runs
// every server as a part of one run group, and returns once all of them
// have stopped: gRPC handlers, relay connections, STUN and the services
// source. The error is the failure that stopped it, nil after ctx ended.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	if cfg.Replication != nil {
		return runReplica(ctx, cfg)
	}
	st, err := store.OpenBolt(filepath.Join(cfg.DataDir, StoreFile))
	if err != nil {
		return err
	}
	defer st.Close() // after every part: handlers use the store until Stop returns
	reg := telemetry.NewRegistry()
	// Ready once agents are served (the listener accepts, the Service
	// source has synced), as a replica is.
	var serving atomic.Bool
	ready := func() error {
		if !serving.Load() {
			return errors.New("starting")
		}
		return nil
	}
	telemetry.ReadyGauge(reg, readyMetric, readyHelp, ready)
	views := &topologyViews{}
	page, err := topologyPage(cfg, views)
	if err != nil {
		return err
	}
	g, ctx := rungroup.New(ctx)
	if cfg.MetricsListen != "" {
		g.Go("metrics", func(ctx context.Context) error {
			return telemetry.Serve(ctx, cfg.MetricsListen, reg, ready, cfg.Logger, page...)
		})
	}
	g.Go("coordinator", func(ctx context.Context) error {
		return serve(ctx, cfg, st, reg, func() { serving.Store(true) }, views)
	})
	return g.Wait()
}

// readyMetric is what /readyz answers, as a gauge: on every replica, so
// max() over them says whether any serves.
const (
	readyMetric = "edgewire_coordinator_ready"
	readyHelp   = "1 while this coordinator serves agents (what /readyz answers: a standby replica is 0)."
)

// serve runs the coordinator on st until ctx ends. serving, if not nil,
// is called once agents are served (the listener accepts, the Service
// source has synced): a replica is ready from then on.
// views, if not nil, is given the server while it runs.
func serve(ctx context.Context, cfg Config, st store.Store, reg prometheus.Registerer, serving func(), views *topologyViews) error {
	log := cfg.Logger
	id, err := tlsIdentity(cfg)
	if err != nil {
		return err
	}
	adminHash, err := adminToken(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		return err
	}
	// The sockets below are closed by the parts that serve them; these
	// deferred closes matter only when Run fails before they start, and
	// are harmless after.
	var stunSrv, stunAlt *stunserver.Server
	var stunServers []*api.StunServer
	if cfg.STUNListen != "" {
		altAddr, err := stunserver.AltListen(cfg.STUNListen, cfg.STUNAlt)
		if err != nil {
			return fmt.Errorf("STUN server: %w", err)
		}
		stunSrv, err = stunserver.Listen(cfg.STUNListen, log.With("src", "stun"))
		if err != nil {
			return fmt.Errorf("STUN server: %w", err)
		}
		defer stunSrv.Close()
		if altAddr != "" {
			if stunAlt, err = stunserver.Listen(altAddr, log.With("src", "stun-alt")); err != nil {
				return fmt.Errorf("STUN server (--stun-listen-alt): %w", err)
			}
			defer stunAlt.Close()
		}
		// Agents reach it on the host they dial the coordinator at.
		stunServers = append(stunServers, &api.StunServer{Port: stunserver.Port(stunSrv), AltPort: stunserver.Port(stunAlt)})
	}
	ticketKey, err := loadOrCreateTicketKey(filepath.Join(cfg.DataDir, TicketKeyFile))
	if err != nil {
		return err
	}
	relays := cfg.Relays
	var embedded *embeddedRelay
	if cfg.RelayListen != "" {
		embedded, err = newRelay(cfg, ticketKey, stunServers)
		if err != nil {
			return err
		}
		defer embedded.ln.Close()
		relays = append([]*api.RelayRegion{embedded.region}, relays...)
	}
	stunServers = append(stunServers, cfg.RelaySTUN...)
	policy := cfg.RoutePolicy
	policy.Protected = append(policy.Protected, protectedAddrs(ctx, cfg, relays, log)...)
	var embeddedStats *relayStats
	if embedded != nil {
		embeddedStats = &relayStats{srv: embedded.srv, id: cfg.RelayID}
	}
	var kube server.KubeVerifier
	if v, ok := cfg.Services.(server.KubeVerifier); ok {
		kube = v
	}
	srv, err := server.New(ctx, server.Config{
		Store: st, Prefixes: cfg.Prefixes, CAPin: jointoken.PinCert(id.CA), Logger: log, STUN: stunServers,
		Relays: relays, TicketKey: ticketKey, TicketTTL: cfg.TicketTTL,
		RelayStats:  embeddedStats.stats,
		RoutePolicy: policy, Kube: kube, FailureRate: rate.Limit(cfg.FailureRate), FailureBurst: cfg.FailureBurst,
		OnDelete: func(nk key.Public, until time.Time) {
			if embedded != nil {
				embedded.srv.Revoke(nk, until)
			}
		},
	})
	if err != nil {
		return err
	}

	srv.RegisterMetrics(reg)
	if views != nil {
		views.srv.Store(srv)
		defer views.srv.Store(nil)
	}
	if embedded != nil {
		embedded.srv.RegisterMetrics(reg)
	}

	unary, stream := server.AdminAuth(adminHash)
	netSrv := grpc.NewServer(
		// Full records from the start: a new agent's first message is its
		// largest (the full map), and small records cost a write each.
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{id.Cert}, MinVersion: tls.VersionTLS13,
			DynamicRecordSizingDisabled: true})),
		grpc.ForceServerCodecV2(server.Codec()),
		// One connection per agent, tens of thousands of them, nearly all
		// idle: write buffers come from a pool while a write is under
		// way, and the read buffer only ever holds small client messages.
		// A write buffer of one TLS record: larger ones save no system
		// calls (TLS writes a record at a time) but, with every stream
		// writing at each publication, cost memory per connection. No
		// read buffer: the TLS connection already buffers a decrypted
		// record, so gRPC's would only copy it once more.
		grpc.SharedWriteBuffer(true),
		grpc.WriteBufferSize(agentWriteBuffer),
		grpc.ReadBufferSize(0),
		grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream),
		grpc.MaxRecvMsgSize(maxRecvMsg),
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		grpc.MaxHeaderListSize(16<<10),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WaitForHandlers(true),
	)
	srv.Register(netSrv)
	localSrv := grpc.NewServer(grpc.ForceServerCodecV2(server.Codec()), grpc.WaitForHandlers(true))
	srv.Register(localSrv)

	tcpLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	ln := connlimit.New(tcpLn, cfg.MaxConnsPerSource)
	defer ln.Close()
	uln, err := httpserve.ListenUnix(cfg.AdminSocket, 0o700)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.AdminSocket)
	defer uln.Close()

	g, ctx := rungroup.New(ctx)
	g.Go("agent gRPC", func(ctx context.Context) error {
		if cfg.Services != nil {
			// Agents' first maps must have the Services and pod CIDRs
			// there are, or they tear their rules down until the next.
			waitSynced(ctx, srv.Registry().SourceSynced(), sourceSyncWait, log)
		}
		if serving != nil {
			serving()
		}
		return serveGRPC(ctx, netSrv, ln)
	})
	g.Go("admin gRPC", func(ctx context.Context) error { return serveGRPC(ctx, localSrv, uln) })
	if stunSrv != nil {
		g.Go("STUN", func(ctx context.Context) error {
			return rungroup.Serve(ctx, stunSrv.Serve, func() { stunSrv.Close() })
		})
		log.Info("STUN server started", "listen", stunSrv.Addr())
	}
	if stunAlt != nil {
		g.Go("STUN alt", func(ctx context.Context) error {
			return rungroup.Serve(ctx, stunAlt.Serve, func() { stunAlt.Close() })
		})
		log.Info("STUN server started on its second port", "listen", stunAlt.Addr())
	}
	if embedded != nil {
		g.Go("relay", func(ctx context.Context) error { return relayd.Serve(ctx, embedded.srv, embedded.ln, id.Cert) })
		log.Info("relay started", "listen", embedded.ln.Addr(), "region", cfg.RelayID, "name", cfg.RelayName,
			"public_key", embedded.srv.PublicKey().String(), "mesh_peers", embedded.meshPeers)
	}
	g.Go("presence", srv.KeepPresence)
	if cfg.Services != nil {
		g.Go("services source", func(ctx context.Context) error { return cfg.Services.Run(ctx, srv.Registry()) })
	}
	if cfg.PprofSocket != "" {
		g.Go("pprof", func(ctx context.Context) error { return telemetry.ServeProfiles(ctx, cfg.PprofSocket, log) })
	}
	log.Info("coordinator started", "listen", ln.Addr(), "admin_socket", cfg.AdminSocket,
		"overlay", cfg.Prefixes, "ca_pin", jointoken.FormatPin(jointoken.PinCert(id.CA)))
	err = g.Wait()
	log.Info("coordinator stopped", "err", err)
	return err
}

// sourceSyncWait bounds how long agents wait for the Service source's
// first sync before the coordinator serves them anyway.
const sourceSyncWait = 15 * time.Second

// waitSynced waits until synced is closed, ctx ends or d passes.
func waitSynced(ctx context.Context, synced <-chan struct{}, d time.Duration, log *slog.Logger) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-synced:
	case <-ctx.Done():
	case <-t.C:
		log.Warn("serving agents before the Service source synced: their first maps may lack Services and pod CIDRs", "waited", d)
	}
}

// grpcGrace is how long unary calls in flight get to finish on stop;
// agent streams never end on their own and are cut after it.
const grpcGrace = 2 * time.Second

// serveGRPC serves gs on ln until ctx ends, then stops it: gracefully for
// up to grpcGrace, then by force. It returns once Serve has, which (with
// grpc.WaitForHandlers) is after every handler returned.
func serveGRPC(ctx context.Context, gs *grpc.Server, ln net.Listener) error {
	return rungroup.Serve(ctx, func() error { return gs.Serve(ln) }, func() {
		done := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(done)
		}()
		t := time.NewTimer(grpcGrace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			gs.Stop()
			<-done
		}
	})
}

// protectedAddrs lists addresses no route may cover: the ones agents use
// to reach the coordinator (the TLS SANs they dial, the host's own
// addresses), the relays and the STUN servers. Names are resolved once,
// at start; a name that does not resolve is logged and skipped (agents
// check the addresses they actually use again).
func protectedAddrs(ctx context.Context, cfg Config, relays []*api.RelayRegion, log *slog.Logger) []netip.Prefix {
	var out []netip.Prefix
	add := func(host string) {
		if host == "" {
			return
		}
		if a, err := netip.ParseAddr(host); err == nil {
			out = append(out, routeguard.Host(a))
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		if err != nil {
			log.Warn("cannot resolve a name to protect from overlay routes", "name", host, "err", err)
			return
		}
		for _, a := range addrs {
			out = append(out, routeguard.Host(a))
		}
	}
	for _, s := range cfg.TLSSANs {
		add(s)
	}
	for _, r := range relays {
		add(r.GetHost())
	}
	if ifAddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifAddrs {
			if ipn, ok := ia.(*net.IPNet); ok {
				if a, ok := netip.AddrFromSlice(ipn.IP); ok && a.Unmap().IsGlobalUnicast() {
					out = append(out, routeguard.Host(a))
				}
			}
		}
	}
	return out
}

func tlsIdentity(cfg Config) (*pki.Identity, error) {
	if cfg.TLSCert != "" {
		return pki.LoadFiles(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA)
	}
	var dns []string
	var ips []net.IP
	for _, s := range cfg.TLSSANs {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, s)
		}
	}
	return pki.LoadOrCreate(filepath.Join(cfg.DataDir, "pki"), dns, ips, time.Now())
}

// adminToken loads the admin token from path, creating it on first start.
func adminToken(path string) ([32]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		tok, err := server.NewAdminToken()
		if err != nil {
			return [32]byte{}, err
		}
		if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600); err != nil {
			return [32]byte{}, fmt.Errorf("write admin token: %w", err)
		}
		return server.AdminTokenHash(tok), nil
	}
	if err != nil {
		return [32]byte{}, fmt.Errorf("read admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return [32]byte{}, fmt.Errorf("admin token file %s is empty", path)
	}
	return server.AdminTokenHash(tok), nil
}

// relayKey loads the embedded relay's key, creating it on first start.
func relayKey(cfg Config) (key.Private, error) {
	return key.LoadOrCreatePrivateFile(filepath.Join(cfg.DataDir, RelayKeyFile))
}

// embeddedRelay is the coordinator's own relay, ready to serve.
type embeddedRelay struct {
	srv       *relay.Server
	ln        net.Listener // bounded per source address
	region    *api.RelayRegion
	meshPeers int
}

// newRelay prepares the embedded relay on cfg.RelayListen, meshed with
// the relays of the relay map; it serves with the coordinator's TLS
// identity.
func newRelay(cfg Config, ticketKey ed25519.PrivateKey, stun []*api.StunServer) (*embeddedRelay, error) {
	nk, err := relayKey(cfg)
	if err != nil {
		return nil, fmt.Errorf("relay key: %w", err)
	}
	var peers []relay.MeshPeer
	if cfg.MeshKey != nil {
		for _, r := range cfg.Relays {
			peers = append(peers, relay.MeshPeer{
				URL: fmt.Sprintf("https://%s/relay", net.JoinHostPort(r.GetHost(), fmt.Sprint(r.GetPort()))),
				Key: key.Public(r.GetKey()),
			})
		}
	}
	rs, err := relay.NewServer(relay.ServerConfig{
		PrivateKey: nk, TicketKey: ticketKey.Public().(ed25519.PublicKey), MeshKey: cfg.MeshKey, MeshPeers: peers,
		RateBytes: cfg.RelayRate, Logger: cfg.Logger.With("src", "relay"),
	})
	if err != nil {
		return nil, err
	}
	tcpLn, err := net.Listen("tcp", cfg.RelayListen)
	if err != nil {
		return nil, fmt.Errorf("relay listen %s: %w", cfg.RelayListen, err)
	}
	// Bounded before the relay's own per-address limits start (at the
	// Upgrade request): TLS handshakes and idle connections count too.
	ln := connlimit.New(tcpLn, relay.DefaultMaxConnsPerIP+relay.DefaultMaxPendingPerIP)
	region := &api.RelayRegion{
		Id: cfg.RelayID, Name: cfg.RelayName, Port: uint32(ln.Addr().(*net.TCPAddr).Port),
		Key: func() []byte { k := nk.Public(); return k[:] }(),
	}
	if len(stun) > 0 {
		region.StunPort = stun[0].GetPort()
	}
	return &embeddedRelay{srv: rs, ln: ln, region: region, meshPeers: len(peers)}, nil
}
