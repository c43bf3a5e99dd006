// Package coordinator assembles the edgewire coordinator daemon: TLS
// identity, store, the gRPC services on a TLS port for agents (and remote
// admins holding the admin token), and on a local unix socket for admins.
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/edgewire/edgewire/coordinator/api"
	"github.com/edgewire/edgewire/coordinator/pki"
	"github.com/edgewire/edgewire/coordinator/server"
	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/token"
	"github.com/edgewire/edgewire/dataplane/stunserver"
	"github.com/edgewire/edgewire/internal/atomicfile"
)

// Defaults, in one place.
const (
	DefaultDataDir = "/var/lib/edgewire/coordinator"
	DefaultListen  = ":8443"
	DefaultPrefix  = "100.64.0.0/10"
	DefaultSTUN    = ":3478"
	AdminTokenFile = "admin.token"
	AdminSocket    = "admin.sock"
	StoreFile      = "edgewire.db"
)

// Config configures the daemon.
type Config struct {
	DataDir     string
	Listen      string         // TLS gRPC listen address
	AdminSocket string         // empty: <DataDir>/admin.sock
	Prefixes    []netip.Prefix // overlay prefixes
	TLSCert     string         // optional operator-provided serving cert...
	TLSKey      string         // ...its key...
	TLSCA       string         // ...and the CA that issued it (pinned by tokens)
	TLSSANs     []string       // extra DNS names / IPs for the generated cert
	STUNListen  string         // UDP address of the embedded STUN server; empty: none
	Logger      *slog.Logger
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
	if c.AdminSocket == "" {
		c.AdminSocket = filepath.Join(c.DataDir, AdminSocket)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Run runs the coordinator until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	id, err := identity(cfg)
	if err != nil {
		return err
	}
	st, err := store.OpenBolt(filepath.Join(cfg.DataDir, StoreFile))
	if err != nil {
		return err
	}
	defer st.Close()
	adminHash, err := adminToken(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		return err
	}
	var stunServers []*api.StunServer
	if cfg.STUNListen != "" {
		ss, err := stunserver.Listen(cfg.STUNListen, log.With("src", "stun"))
		if err != nil {
			return fmt.Errorf("STUN server: %w", err)
		}
		defer ss.Close()
		go ss.Serve()
		// Agents reach it on the host they dial the coordinator at.
		stunServers = append(stunServers, &api.StunServer{Port: uint32(ss.Addr().(*net.UDPAddr).Port)})
		log.Info("STUN server started", "listen", ss.Addr())
	}
	srv, err := server.New(ctx, server.Config{
		Store: st, Prefixes: cfg.Prefixes, CAPin: token.PinCert(id.CA), Logger: log, STUN: stunServers,
	})
	if err != nil {
		return err
	}

	unary, stream := server.AdminAuth(adminHash)
	netSrv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{id.Cert}, MinVersion: tls.VersionTLS13})),
		grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 20 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(netSrv)
	localSrv := grpc.NewServer()
	srv.Register(localSrv)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	uln, err := listenUnix(cfg.AdminSocket)
	if err != nil {
		ln.Close()
		return err
	}
	log.Info("coordinator started", "listen", ln.Addr(), "admin_socket", cfg.AdminSocket,
		"overlay", cfg.Prefixes, "ca_pin", token.FormatPin(token.PinCert(id.CA)))

	errc := make(chan error, 2)
	go func() { errc <- netSrv.Serve(ln) }()
	go func() { errc <- localSrv.Serve(uln) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	localSrv.Stop()
	// Agent streams never end on their own; give unary calls a moment, then cut.
	done := make(chan struct{})
	go func() { netSrv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		netSrv.Stop()
	}
	os.Remove(cfg.AdminSocket)
	log.Info("coordinator stopped")
	return err
}

func identity(cfg Config) (*pki.Identity, error) {
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

// listenUnix listens on a unix socket only root (the owner) can use.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// A stale socket from a crashed run would make Listen fail.
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s is in use by another coordinator", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
