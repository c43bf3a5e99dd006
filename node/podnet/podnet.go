// Package podnet gives pods on an edge node routable addresses from the
// node's pod CIDR, where no other CNI does: it writes a CNI network
// configuration list for the standard reference plugins (bridge with
// host-local IPAM, portmap) and masquerades pod traffic that leaves the
// overlay. The container runtime runs the plugins; edgewire only writes
// their configuration, so pods keep their network while the agent
// restarts or is down.
//
// Where runtimes look: containerd's CRI plugin and CRI-O both read the
// lexically first configuration in /etc/cni/net.d (ours is
// 90-edgewire.conflist, so another CNI's file wins) and look for plugin
// binaries in /opt/cni/bin (containerd) or /opt/cni/bin and
// /usr/libexec/cni (CRI-O); Debian's containernetworking-plugins package
// installs them in /usr/lib/cni, which a runtime must be pointed at
// (containerd: plugins."io.containerd.grpc.v1.cri".cni.bin_dir).
//
// Pod traffic to the overlay and to every node's routed prefixes (their
// pod CIDRs) keeps its pod source address; traffic anywhere else is
// masqueraded to the node's address, in nftables table ip edgewire-pods:
//
//	chain postrouting (nat, srcnat)  per local pod CIDR: ip saddr <cidr> goto masq
//	chain masq                       per routed prefix: ip daddr <prefix> return
//	                                 masquerade
//
// The table is replaced whole in one netlink batch on every change.
// IPv4 only: IPv6 pod CIDRs are left to a later release.
package podnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/edgewire/edgewire/internal/atomicfile"
)

// Mode is the --pod-network setting.
type Mode string

const (
	// ModeOff writes no CNI configuration (the default: another CNI, or
	// no pods).
	ModeOff Mode = "off"
	// ModeCNI always manages pod networking.
	ModeCNI Mode = "cni"
	// ModeAuto manages pod networking when no other CNI configuration is
	// in the configuration directory (or ours already is).
	ModeAuto Mode = "auto"
)

// ParseMode parses a --pod-network value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeOff, ModeCNI, ModeAuto:
		return m, nil
	}
	return "", fmt.Errorf("pod network mode %q: want cni, auto or off", s)
}

// Defaults.
const (
	DefaultConfDir = "/etc/cni/net.d"
	DefaultBridge  = "edgewire-br"
	// NetworkName is the CNI network's name.
	NetworkName = "edgewire"
	// ConfFile is the configuration list we write.
	ConfFile = "90-edgewire.conflist"
	// marker names the configuration as edgewire's, so we never remove
	// another's.
	marker = "edgewire-agent"
	// cniVersion: the newest the reference plugins 1.1 and later speak.
	cniVersion = "1.0.0"
)

// Config configures a Manager.
type Config struct {
	Mode    Mode
	ConfDir string // default DefaultConfDir
	Bridge  string // default DefaultBridge
	MTU     int    // the pods' MTU: the overlay's, so pod-to-pod packets fit the tunnel
	// IPAMDir is host-local's data directory; "" is its default
	// (/var/lib/cni/networks).
	IPAMDir string
	Logger  *slog.Logger
	// NetNS is the path of the network namespace whose firewall to
	// program; "" is the caller's (tests use a lab namespace).
	NetNS string
}

var bridgeName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// Manager keeps the CNI configuration and the masquerade rules in step
// with the node's pod CIDRs. Its methods are safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	managing bool            // we wrote our configuration
	loaded   *tableSpec      // the rules in the kernel; nil: unknown
	pods     []netip.Prefix  // of the last Apply
	said     string          // the last "not managing" reason logged
	skipped  map[string]bool // prefixes logged as attached to an interface
	lastIn   string          // the input of the last successful Apply
}

// New validates cfg. It touches nothing.
func New(cfg Config) (*Manager, error) {
	if cfg.Mode == "" {
		cfg.Mode = ModeOff
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if cfg.ConfDir == "" {
		cfg.ConfDir = DefaultConfDir
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if !bridgeName.MatchString(cfg.Bridge) {
		return nil, fmt.Errorf("pod network: bridge name %q: want 1-15 of [A-Za-z0-9_.-]", cfg.Bridge)
	}
	if cfg.MTU != 0 && (cfg.MTU < 576 || cfg.MTU > 9000) {
		return nil, fmt.Errorf("pod network: MTU %d", cfg.MTU)
	}
	if cfg.IPAMDir != "" && !filepath.IsAbs(cfg.IPAMDir) {
		return nil, fmt.Errorf("pod network: IPAM directory %q is not absolute", cfg.IPAMDir)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, log: cfg.Logger.With("src", "podnet"), skipped: map[string]bool{}}, nil
}

// Enabled reports whether the mode is not off.
func (m *Manager) Enabled() bool { return m.cfg.Mode != ModeOff }

// Apply makes the CNI configuration give pods addresses from pods (this
// node's IPv4 routed prefixes: its Kubernetes pod CIDRs, its advertised
// routes) and the rules keep pod traffic to routed (the overlay's
// prefixes and every node's routes) unmasqueraded. A prefix that an
// interface other than our bridge is attached to is not a pod CIDR (a
// subnet router's LAN, a runtime's docker0) and is skipped. An
// empty pods removes our configuration (no new pod can get an address)
// but leaves running pods alone. In mode off, and in mode auto when
// another CNI's configuration is present, it does nothing. An Apply with
// the input of the last successful one returns at once: the files and
// rules are looked at again when the pod CIDRs or routes change.
func (m *Manager) Apply(pods, routed []netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg.Mode == ModeOff {
		return nil
	}
	// The agent calls this on every reconcile; unchanged input after a
	// successful Apply costs nothing (no directory scan, no netlink).
	in := fmt.Sprint(v4(pods), v4(routed))
	if in == m.lastIn {
		return nil
	}
	m.lastIn = ""
	if err := m.applyLocked(pods, routed); err != nil {
		return err
	}
	m.lastIn = in
	return nil
}

func (m *Manager) applyLocked(pods, routed []netip.Prefix) error {
	pods, err := m.unattached(v4(pods))
	if err != nil {
		return err
	}
	manage, why, err := m.shouldManage()
	if err != nil {
		return err
	}
	if !manage {
		if why != m.said {
			m.log.Info("not managing pod networking", "why", why)
			m.said = why
		}
		return nil
	}
	m.said = ""
	path := filepath.Join(m.cfg.ConfDir, ConfFile)
	if len(pods) == 0 {
		if m.managing || fileIsOurs(path) {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("pod network: %w", err)
			}
			m.log.Warn("no pod CIDR: CNI configuration removed; running pods keep their addresses", "path", path)
		}
		m.managing = false
		m.pods = nil
		return m.programLocked(nil, nil)
	}
	b, err := m.render(pods)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err != nil || !bytes.Equal(old, b) {
		if err := os.MkdirAll(m.cfg.ConfDir, 0o755); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		if err := atomicfile.Write(path, b, 0o644); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		m.log.Info("CNI configuration written", "path", path, "pod_cidrs", pods, "bridge", m.cfg.Bridge)
	}
	m.managing = true
	m.pods = pods
	return m.programLocked(pods, routed)
}

// shouldManage decides for Apply.
func (m *Manager) shouldManage() (bool, string, error) {
	if m.cfg.Mode == ModeCNI {
		return true, "", nil
	}
	ours := fileIsOurs(filepath.Join(m.cfg.ConfDir, ConfFile))
	others, err := otherConfigs(m.cfg.ConfDir)
	if err != nil {
		return false, "", err
	}
	switch {
	case ours:
		if len(others) > 0 && others[0] < ConfFile {
			m.log.Warn("another CNI configuration sorts first; the container runtime uses it, not ours", "other", others[0])
		}
		return true, "", nil
	case len(others) > 0:
		return false, fmt.Sprintf("another CNI configuration is present (%s); --pod-network cni overrides", strings.Join(others, ", ")), nil
	}
	return true, "", nil
}

// otherConfigs lists the CNI configuration files in dir that are not
// ours, sorted.
func otherConfigs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pod network: %w", err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || n == ConfFile || strings.HasPrefix(n, ".") {
			continue
		}
		switch filepath.Ext(n) {
		case ".conf", ".conflist", ".json":
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// fileIsOurs reports whether path holds a configuration edgewire wrote.
func fileIsOurs(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var c struct {
		Name  string `json:"name"`
		Owner string `json:"edgewireOwner"`
	}
	return json.Unmarshal(b, &c) == nil && c.Owner == marker && c.Name == NetworkName
}

// render is the configuration list for pods.
func (m *Manager) render(pods []netip.Prefix) ([]byte, error) {
	type rng struct {
		Subnet string `json:"subnet"`
	}
	type route struct {
		Dst string `json:"dst"`
	}
	ipam := map[string]any{"type": "host-local", "ranges": [][]rng{}, "routes": []route{{Dst: "0.0.0.0/0"}}}
	ranges := [][]rng{}
	for _, p := range pods {
		if p.Bits() > 30 {
			return nil, fmt.Errorf("pod network: pod CIDR %s is too small (want /30 or larger)", p)
		}
		ranges = append(ranges, []rng{{Subnet: p.String()}})
	}
	ipam["ranges"] = ranges
	if m.cfg.IPAMDir != "" {
		ipam["dataDir"] = m.cfg.IPAMDir
	}
	bridge := map[string]any{
		"type": "bridge", "bridge": m.cfg.Bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true, "ipam": ipam,
	}
	if m.cfg.MTU != 0 {
		bridge["mtu"] = m.cfg.MTU
	}
	conf := map[string]any{
		"cniVersion":    cniVersion,
		"name":          NetworkName,
		"edgewireOwner": marker,
		"plugins": []any{
			bridge,
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Uninstall removes our configuration, the masquerade rules and the
// bridge (running pods lose their network: use it when removing
// edgewire from the node, never on a restart).
func (m *Manager) Uninstall() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	path := filepath.Join(m.cfg.ConfDir, ConfFile)
	if fileIsOurs(path) {
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		} else {
			m.log.Info("CNI configuration removed", "path", path)
		}
	}
	if err := m.removeTable(); err != nil {
		errs = append(errs, err)
	}
	if err := m.removeBridge(); err != nil {
		errs = append(errs, err)
	}
	m.managing, m.loaded, m.lastIn = false, nil, ""
	return errors.Join(errs...)
}

// Managing reports whether the last Apply wrote our configuration, and
// for which pod CIDRs.
func (m *Manager) Managing() (bool, []netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.managing, slices.Clone(m.pods)
}

func v4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() && !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	return out
}
