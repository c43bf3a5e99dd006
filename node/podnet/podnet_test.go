package podnet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var nsPrefix = fmt.Sprintf("ewpod-%d-", os.Getpid())

func TestMain(m *testing.M) {
	code := m.Run()
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil && strings.Contains(string(out), nsPrefix) {
		fmt.Fprintf(os.Stderr, "leaked network namespaces:\n%s", out)
		code = 1
	}
	os.Exit(code)
}

// newNS creates a namespace and removes it at cleanup; it skips without
// root or nft.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := nsPrefix + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func pfxs(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func newManager(t *testing.T, mode Mode, ns string) (*Manager, string) {
	t.Helper()
	dir := t.TempDir()
	m, err := New(Config{Mode: mode, ConfDir: dir, MTU: 1420, IPAMDir: "/var/lib/edgewire/ipam", NetNS: "/var/run/netns/" + ns})
	if err != nil {
		t.Fatal(err)
	}
	return m, dir
}

// conflist is the part of our configuration the tests look at.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []struct {
		Type      string `json:"type"`
		Bridge    string `json:"bridge"`
		IsGateway bool   `json:"isGateway"`
		IPMasq    bool   `json:"ipMasq"`
		MTU       int    `json:"mtu"`
		IPAM      struct {
			Type    string `json:"type"`
			DataDir string `json:"dataDir"`
			Ranges  [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
		Capabilities map[string]bool `json:"capabilities"`
	} `json:"plugins"`
}

func readConf(t *testing.T, dir string) (conflist, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ConfFile))
	if os.IsNotExist(err) {
		return conflist{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var c conflist
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("our configuration is not JSON: %v\n%s", err, b)
	}
	return c, true
}

func nftTable(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", tableName).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

func TestApplyWritesConfigAndRules(t *testing.T) {
	ns := newNS(t)
	m, dir := newManager(t, ModeAuto, ns)
	pods := pfxs("10.244.5.0/24")
	routed := pfxs("100.64.0.0/10", "10.244.1.0/24", "10.244.2.0/24", "fd7a::/48")
	if err := m.Apply(pods, routed); err != nil {
		t.Fatal(err)
	}
	c, ok := readConf(t, dir)
	if !ok {
		t.Fatal("no configuration written")
	}
	if c.CNIVersion != "1.0.0" || c.Name != "edgewire" || len(c.Plugins) != 2 {
		t.Fatalf("configuration %+v", c)
	}
	br, pm := c.Plugins[0], c.Plugins[1]
	if br.Type != "bridge" || br.Bridge != DefaultBridge || !br.IsGateway || br.IPMasq || br.MTU != 1420 ||
		br.IPAM.Type != "host-local" || br.IPAM.DataDir != "/var/lib/edgewire/ipam" ||
		len(br.IPAM.Ranges) != 1 || br.IPAM.Ranges[0][0].Subnet != "10.244.5.0/24" {
		t.Errorf("bridge plugin %+v", br)
	}
	if pm.Type != "portmap" || !pm.Capabilities["portMappings"] {
		t.Errorf("portmap plugin %+v", pm)
	}
	rules := nftTable(t, ns)
	for _, want := range []string{
		"ip saddr 10.244.5.0/24 goto masq",
		"ip daddr 100.64.0.0/10 return",
		"ip daddr 10.244.1.0/24 return",
		"ip daddr 10.244.5.0/24 return", // pod to pod on this node
		"masquerade",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "fd7a") {
		t.Errorf("IPv6 prefix in an ip table:\n%s", rules)
	}

	// A new pod CIDR rewrites the file and the rules; an unchanged one
	// rewrites nothing.
	info, _ := os.Stat(filepath.Join(dir, ConfFile))
	if err := m.Apply(pods, routed); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Stat(filepath.Join(dir, ConfFile)); !again.ModTime().Equal(info.ModTime()) {
		t.Errorf("an unchanged Apply rewrote the configuration")
	}
	if err := m.Apply(pfxs("10.244.6.0/24"), routed); err != nil {
		t.Fatal(err)
	}
	if c, _ := readConf(t, dir); c.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.6.0/24" {
		t.Errorf("configuration not updated: %+v", c.Plugins[0].IPAM.Ranges)
	}
	if rules := nftTable(t, ns); !strings.Contains(rules, "ip saddr 10.244.6.0/24 goto masq") || strings.Contains(rules, "10.244.5.0") {
		t.Errorf("rules not updated:\n%s", rules)
	}

	// No pod CIDR: no configuration (no new pods), no rules.
	if err := m.Apply(nil, routed); err != nil {
		t.Fatal(err)
	}
	if _, ok := readConf(t, dir); ok {
		t.Error("configuration left with no pod CIDR")
	}
	if rules := nftTable(t, ns); rules != "" {
		t.Errorf("rules left with no pod CIDR:\n%s", rules)
	}
}

func TestAutoLeavesAnotherCNIAlone(t *testing.T) {
	ns := newNS(t)
	m, dir := newManager(t, ModeAuto, ns)
	other := filepath.Join(dir, "10-calico.conflist")
	if err := os.WriteFile(other, []byte(`{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(pfxs("10.244.5.0/24"), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := readConf(t, dir); ok {
		t.Error("mode auto wrote a configuration beside another CNI's")
	}
	if rules := nftTable(t, ns); rules != "" {
		t.Errorf("mode auto programmed rules beside another CNI:\n%s", rules)
	}
	if on, _ := m.Managing(); on {
		t.Error("Managing says yes")
	}
	// Mode cni writes anyway.
	mc, err := New(Config{Mode: ModeCNI, ConfDir: dir, NetNS: "/var/run/netns/" + ns})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.Apply(pfxs("10.244.5.0/24"), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := readConf(t, dir); !ok {
		t.Error("mode cni wrote nothing")
	}
	// Once ours is there, auto keeps it in step (a restart must not drop
	// the pods' network because another file appeared).
	if err := m.Apply(pfxs("10.244.7.0/24"), nil); err != nil {
		t.Fatal(err)
	}
	if c, _ := readConf(t, dir); c.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.7.0/24" {
		t.Errorf("auto did not keep its own configuration in step: %+v", c.Plugins[0].IPAM.Ranges)
	}
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, ok := readConf(t, dir); ok {
		t.Error("uninstall left our configuration")
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("uninstall touched another CNI's configuration: %v", err)
	}
}

// Uninstall removes only a configuration edgewire wrote, and our bridge.
func TestUninstall(t *testing.T) {
	ns := newNS(t)
	m, dir := newManager(t, ModeCNI, ns)
	foreign := filepath.Join(dir, ConfFile)
	if err := os.WriteFile(foreign, []byte(`{"name":"someone-else","plugins":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", ns, "link", "add", DefaultBridge, "type", "bridge")
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("uninstall removed a file edgewire did not write: %v", err)
	}
	if out := run(t, "ip", "-n", ns, "link"); strings.Contains(out, DefaultBridge) {
		t.Errorf("bridge left:\n%s", out)
	}
	// A link of another kind (a veth) with our bridge's name is left alone.
	run(t, "ip", "-n", ns, "link", "add", DefaultBridge, "type", "veth", "peer", "name", "other")
	if err := m.Uninstall(); err == nil || !strings.Contains(err.Error(), "not our bridge") {
		t.Errorf("uninstall with a veth named %s: %v", DefaultBridge, err)
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{
		{Mode: "maybe"},
		{Mode: ModeCNI, Bridge: "a-bridge-name-too-long"},
		{Mode: ModeCNI, MTU: 100},
		{Mode: ModeCNI, IPAMDir: "relative/dir"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	m, err := New(Config{Mode: ModeCNI, ConfDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.render(pfxs("10.244.5.0/31")); err == nil {
		t.Error("a /31 pod CIDR rendered")
	}
}

// A prefix an interface is attached to (a subnet router's LAN, docker0)
// is not a pod CIDR; our own bridge does not count.
func TestAttachedPrefixIsNotAPodCIDR(t *testing.T) {
	ns := newNS(t)
	m, dir := newManager(t, ModeCNI, ns)
	run(t, "ip", "-n", ns, "link", "add", "lan0", "type", "bridge")
	run(t, "ip", "-n", ns, "addr", "add", "192.168.1.2/24", "dev", "lan0")
	run(t, "ip", "-n", ns, "link", "add", DefaultBridge, "type", "bridge")
	run(t, "ip", "-n", ns, "addr", "add", "10.244.5.1/24", "dev", DefaultBridge)
	if err := m.Apply(pfxs("192.168.1.0/24", "10.244.5.0/24"), nil); err != nil {
		t.Fatal(err)
	}
	c, ok := readConf(t, dir)
	if !ok || len(c.Plugins[0].IPAM.Ranges) != 1 || c.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.5.0/24" {
		t.Errorf("ranges %+v, want only 10.244.5.0/24", c.Plugins[0].IPAM.Ranges)
	}
	if rules := nftTable(t, ns); strings.Contains(rules, "ip saddr 192.168.1.0/24") {
		t.Errorf("the LAN is masqueraded as pods:\n%s", rules)
	}
}
