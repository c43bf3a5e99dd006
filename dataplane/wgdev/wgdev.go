// Package wgdev runs a wireguard-go device over a TUN interface, with its
// UAPI socket in /var/run/wireguard so stock `wg show` works, and applies
// peer sets to it as diffs. The agent is the only authority on endpoints:
// wireguard-go's own roaming is turned off.
package wgdev

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/edgewire/edgewire/dataplane/inflight"
	"github.com/edgewire/edgewire/types/key"
)

// Config configures a Device.
type Config struct {
	Name       string // interface name, at most 15 bytes
	MTU        int
	ListenPort int // 0: pick one
	PrivateKey key.Private
	Bind       conn.Bind // nil: wireguard-go's default (batching, GSO/GRO)
	// FwMark is the socket mark of the WireGuard socket (0: none); see
	// linkconf.Mark, which keeps the tunnel's own packets off overlay
	// routes.
	FwMark uint32
	Logger *slog.Logger
	// MaxInflight bounds the packets the device holds each way between
	// taking them in and handing them on (see package inflight), and so
	// its buffer pools: about 64 KiB of memory per packet. 0: no bound
	// (wireguard-go's pools grow with the load).
	MaxInflight int

	// OnRefusedInitiation, if set, is called with the endpoint a
	// handshake initiation came from when WireGuard refused it: most
	// often one from a key that is not (yet) a peer. It runs on
	// WireGuard's receive path and must not block.
	OnRefusedInitiation func(from netip.AddrPort)

	// TUN, when set, is used instead of creating a kernel TUN device, and
	// no UAPI socket is opened: two devices then run in one process with
	// no interface and no root (tests, with wireguard-go's tuntest and
	// bindtest).
	TUN tun.Device
}

// PeerConfig is the desired state of one peer.
type PeerConfig struct {
	PublicKey  key.Public
	Name       string // the node's name, for log lines only (Equal ignores it)
	AllowedIPs []netip.Prefix
	Endpoint   netip.AddrPort // invalid: no endpoint (the peer only answers handshakes until one is set; see writePeer)
	Keepalive  time.Duration  // persistent keepalive; 0 off
}

// Equal reports whether p and q configure a peer the same way.
func (p PeerConfig) Equal(q PeerConfig) bool {
	return p.PublicKey == q.PublicKey && p.Endpoint == q.Endpoint && p.Keepalive == q.Keepalive &&
		slices.Equal(p.AllowedIPs, q.AllowedIPs)
}

// PeerStats is what WireGuard reports about a peer.
type PeerStats struct {
	PublicKey     key.Public
	Endpoint      netip.AddrPort
	LastHandshake time.Time // zero: never
	RxBytes       uint64
	TxBytes       uint64
}

// Device is a running WireGuard interface. Its methods are safe for
// concurrent use.
type Device struct {
	name string
	dev  *device.Device
	uapi net.Listener
	log  *slog.Logger
	wg   sync.WaitGroup    // UAPI accept loop
	lim  *inflight.Limiter // nil: no bound

	onRefused func(netip.AddrPort) // Config.OnRefusedInitiation; nil: none

	mu      sync.Mutex // guards applied
	applied map[key.Public]PeerConfig

	// The UAPI dump Stats parses, kept between calls: the agent asks
	// every 2 s (its memory trimmer) and on every metrics scrape, and a
	// fresh copy each time (about 330 bytes a peer) was garbage an idle
	// agent holds until its next GC.
	statsMu  sync.Mutex // guards statsBuf
	statsBuf bytes.Buffer

	// names maps wireguard-go's name of a peer ("peer(AbCd…wXyZ)") to
	// the peer for log lines. Replaced, never changed, by SetPeers; read
	// without a lock because wireguard-go logs while SetPeers holds mu.
	names atomic.Pointer[map[string]key.Named]
}

// UAPIPath returns where the UAPI socket of interface name lives.
func UAPIPath(name string) string { return filepath.Join("/var/run/wireguard", name+".sock") }

// New creates the TUN interface and the WireGuard device and brings it up.
func New(cfg Config) (*Device, error) {
	if cfg.Name == "" || len(cfg.Name) > 15 {
		return nil, fmt.Errorf("interface name %q: want 1 to 15 bytes", cfg.Name)
	}
	if cfg.MTU < 1280 || cfg.MTU > 9000 {
		return nil, fmt.Errorf("MTU %d: want 1280 to 9000", cfg.MTU)
	}
	if cfg.MaxInflight < 0 {
		return nil, fmt.Errorf("max in-flight packets %d: want 0 (no bound) or more", cfg.MaxInflight)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Bind == nil {
		cfg.Bind = conn.NewDefaultBind()
	}
	tdev := cfg.TUN
	if tdev == nil {
		if _, err := os.Stat(UAPIPath(cfg.Name)); err == nil {
			if c, err := net.Dial("unix", UAPIPath(cfg.Name)); err == nil {
				c.Close()
				return nil, fmt.Errorf("interface %s is already run by another WireGuard process (%s answers)", cfg.Name, UAPIPath(cfg.Name))
			}
		}
		var err error
		if tdev, err = tun.CreateTUN(cfg.Name, cfg.MTU); err != nil {
			return nil, fmt.Errorf("create TUN %s: %w", cfg.Name, err)
		}
	}
	log := cfg.Logger.With("iface", cfg.Name)
	d := &Device{name: cfg.Name, log: log, applied: make(map[key.Public]PeerConfig), onRefused: cfg.OnRefusedInitiation}
	d.names.Store(&map[string]key.Named{})
	wlog := &device.Logger{Verbosef: d.wireguardLog(slog.LevelDebug), Errorf: d.wireguardLog(slog.LevelWarn)}
	// wireguard-go turns TUN offloads (IFF_VNET_HDR, TSO, USO) on where
	// the kernel allows and then reads and writes up to IdealBatchSize
	// packets per syscall; without them it moves one packet per syscall
	// and TCP through the tunnel costs several times the CPU per byte.
	if tdev.BatchSize() > 1 {
		log.Info("TUN offloads on", "batch", tdev.BatchSize(), "bind_batch", cfg.Bind.BatchSize())
	} else {
		log.Warn("TUN offloads unavailable (no IFF_VNET_HDR/TSO): one packet per syscall, throughput will suffer", "bind_batch", cfg.Bind.BatchSize())
	}
	bind := cfg.Bind
	if cfg.MaxInflight > 0 {
		d.lim = inflight.New(cfg.MaxInflight, 0)
		tdev, bind = d.lim.TUN(tdev), d.lim.Bind(bind)
	}
	dev := device.NewDevice(tdev, bind, wlog)
	dev.DisableSomeRoamingForBrokenMobileSemantics()
	d.dev = dev
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\nfwmark=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort, cfg.FwMark)
	if err := dev.IpcSet(conf); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure device: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("bring device up: %w", err)
	}
	if cfg.TUN != nil {
		return d, nil
	}
	f, err := ipc.UAPIOpen(cfg.Name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("open UAPI socket: %w", err)
	}
	d.uapi, err = ipc.UAPIListen(cfg.Name, f)
	if err != nil {
		f.Close()
		dev.Close()
		return nil, fmt.Errorf("listen on UAPI socket: %w", err)
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := d.uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	return d, nil
}

// Inflight returns the limiter bounding the packets the device holds, or
// nil when there is no bound.
func (d *Device) Inflight() *inflight.Limiter { return d.lim }

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// ListenPort returns the UDP port WireGuard listens on.
func (d *Device) ListenPort() (int, error) {
	s, err := d.dev.IpcGet()
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(s) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("listen_port missing from device state")
}

// wireguardLog is wireguard-go's logging at level. Its lines about a peer
// name it "peer(AbCd…wXyZ)"; they get a peer attribute with the node's
// name and our short key.
func (d *Device) wireguardLog(level slog.Level) func(string, ...any) {
	return func(format string, args ...any) {
		if format == refusedInitiation && d.onRefused != nil && len(args) == 1 {
			if s, ok := args[0].(string); ok {
				if ap, err := netip.ParseAddrPort(s); err == nil {
					d.onRefused(ap)
				}
			}
		}
		ctx := context.Background()
		if !d.log.Enabled(ctx, level) {
			return // wireguard-go logs every handshake and keepalive; format none of it unread
		}
		attrs := []any{"src", "wireguard"}
		for _, a := range args {
			if p, ok := a.(*device.Peer); ok {
				if n, ok := (*d.names.Load())[p.String()]; ok {
					attrs = append(attrs, "peer", n)
				}
				break
			}
		}
		d.log.Log(ctx, level, fmt.Sprintf(format, args...), attrs...)
	}
}

// refusedInitiation is the line wireguard-go logs (device/receive.go)
// for a handshake initiation it refuses, with the sender's endpoint: the
// only sign it gives of one from an unknown key (TestRefusedInitiation
// pins it).
const refusedInitiation = "Received invalid initiation message from %s"

// wireguardName is how wireguard-go's (*device.Peer).String names the
// peer with key k.
func wireguardName(k key.Public) string {
	s := k.String()
	return "peer(" + s[0:4] + "…" + s[39:43] + ")"
}

// setNames makes log lines name the peers in peers and in d.applied,
// so the lines of a removal still name the peer. Called with mu held.
func (d *Device) setNames(peers map[key.Public]PeerConfig) {
	names := make(map[string]key.Named, len(peers)+len(d.applied))
	for _, m := range []map[key.Public]PeerConfig{d.applied, peers} {
		for k, p := range m {
			names[wireguardName(k)] = key.Named{Name: p.Name, Key: k}
		}
	}
	d.names.Store(&names)
}

// SetPeers makes the device's peers exactly peers, in one UAPI transaction
// holding only the differences.
func (d *Device) SetPeers(peers []PeerConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[key.Public]PeerConfig, len(peers))
	for _, p := range peers {
		want[p.PublicKey] = p
	}
	var b strings.Builder
	for k := range d.applied {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
		}
	}
	var moved []PeerConfig // peers whose endpoint is set or changed
	for k, p := range want {
		old, ok := d.applied[k]
		if ok && old.Equal(p) {
			continue
		}
		writePeer(&b, p)
		if p.Endpoint.IsValid() && (!ok || old.Endpoint != p.Endpoint) {
			moved = append(moved, p)
		}
	}
	d.setNames(want)
	if b.Len() == 0 {
		d.applied = want // names may have changed
		return nil
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		// The device may hold part of the change; forget what we think
		// is applied so the next call rewrites every peer.
		d.applied = map[key.Public]PeerConfig{}
		return fmt.Errorf("apply peers: %w", err)
	}
	if err := d.pinEndpoints(moved); err != nil {
		d.applied = map[key.Public]PeerConfig{}
		return err
	}
	d.applied = want
	return nil
}

// pinEndpoints makes the endpoints just set stick. wireguard-go disables
// roaming (DisableSomeRoamingForBrokenMobileSemantics) only for peers
// that had an endpoint when they were created or when it was called; our
// peers are created without one (see writePeer), so without this the first
// packet a peer sends over the relay after its path went direct would
// move WireGuard's endpoint back to the relay, behind the agent's back,
// and the pair would go silent once the relay did. Roaming is disabled
// again now that every peer with a path has an endpoint, and the
// endpoints are written once more: a packet that roamed one in between
// is undone. (Once disabled, roaming stays disabled for a peer.) Called
// with mu held.
func (d *Device) pinEndpoints(moved []PeerConfig) error {
	if len(moved) == 0 {
		return nil
	}
	var b strings.Builder
	for _, p := range moved {
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nendpoint=%s\n", hex.EncodeToString(p.PublicKey[:]), p.Endpoint)
	}
	d.dev.DisableSomeRoamingForBrokenMobileSemantics()
	if err := d.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("pin peer endpoints: %w", err)
	}
	return nil
}

// writePeer writes p's UAPI set section. A peer without an endpoint is
// configured to answer only: no allowed IPs (nothing is routed to it) and
// no keepalive. Otherwise a packet or keepalive for it would start a
// handshake with nowhere to go, and WireGuard would then hold the real
// first handshake back by 5 s once the endpoint arrives. It still answers
// a handshake the other side starts (over the relay, learning the
// endpoint from it), so both sides are on one session when its endpoint
// comes; the peer is never re-created, which once threw away exactly such
// an answered handshake and left the two sides silent until WireGuard's
// 15 s retry.
func writePeer(b *strings.Builder, p PeerConfig) {
	fmt.Fprintf(b, "public_key=%s\nreplace_allowed_ips=true\n", hex.EncodeToString(p.PublicKey[:]))
	if !p.Endpoint.IsValid() {
		b.WriteString("persistent_keepalive_interval=0\n")
		return
	}
	for _, a := range p.AllowedIPs {
		fmt.Fprintf(b, "allowed_ip=%s\n", a)
	}
	fmt.Fprintf(b, "endpoint=%s\npersistent_keepalive_interval=%d\n", p.Endpoint, int(p.Keepalive/time.Second))
}

// Stats returns per-peer statistics.
func (d *Device) Stats() (map[key.Public]PeerStats, error) {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	d.statsBuf.Reset()
	if err := d.dev.IpcGetOperation(&d.statsBuf); err != nil {
		return nil, err
	}
	return parseStats(d.statsBuf.Bytes())
}

// ParseStats parses the peer sections of a UAPI get response.
func ParseStats(s string) (map[key.Public]PeerStats, error) { return parseStats([]byte(s)) }

// parseStats is ParseStats on the dump's bytes, without a string per
// line: only the map and the endpoints are allocated.
func parseStats(b []byte) (map[key.Public]PeerStats, error) {
	out := map[key.Public]PeerStats{}
	var cur *PeerStats
	var sec, nsec int64
	flush := func() {
		if cur == nil {
			return
		}
		if sec != 0 || nsec != 0 {
			cur.LastHandshake = time.Unix(sec, nsec)
		}
		out[cur.PublicKey] = *cur
	}
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok {
			continue
		}
		var err error
		switch string(k) {
		case "public_key":
			flush()
			cur, sec, nsec = &PeerStats{}, 0, 0
			if hex.DecodedLen(len(v)) != len(cur.PublicKey) {
				err = fmt.Errorf("key length %d", hex.DecodedLen(len(v)))
			} else {
				_, err = hex.Decode(cur.PublicKey[:], v)
			}
		case "endpoint":
			if cur != nil {
				cur.Endpoint, err = netip.ParseAddrPort(string(v))
			}
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(string(v), 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(string(v), 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.RxBytes, err = strconv.ParseUint(string(v), 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.TxBytes, err = strconv.ParseUint(string(v), 10, 64)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s=%q: %w", k, v, err)
		}
	}
	flush()
	return out, nil
}

// Close stops the device, which removes the interface and its routes, and
// removes the UAPI socket.
func (d *Device) Close() error {
	if d.uapi != nil {
		d.uapi.Close()
		d.wg.Wait()
		os.Remove(UAPIPath(d.name))
	}
	d.dev.Close()
	return nil
}
