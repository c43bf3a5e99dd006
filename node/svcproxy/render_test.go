package svcproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/node/services"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// ep is an endpoint serving the unnamed port (or name, if given) on port.
func ep(ip string, port uint16) services.Endpoint {
	return services.Endpoint{Addresses: addrs(ip), Ports: map[string]uint16{"": port}}
}

func svc(name, clusterIP string, proto services.Protocol, port uint16, eps ...services.Endpoint) *services.Service {
	s := &services.Service{
		Namespace: "default",
		Name:      name,
		Ports:     []services.Port{{Protocol: proto, Port: port}},
		Endpoints: eps,
	}
	if clusterIP != "" {
		s.ClusterIPs = addrs(clusterIP)
	}
	return s
}

func table(t testing.TB, svcs ...*services.Service) *services.Table {
	t.Helper()
	tb, err := services.NewTable(svcs)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// rulesIn returns the "-A chain" lines of a rendered table, without the prefix.
func rulesIn(text, chain string) []string {
	var out []string
	for line := range strings.Lines(text) {
		if r, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "-A "+chain+" "); ok {
			out = append(out, r)
		}
	}
	return out
}

// declared returns the chains a rendered table declares.
func declared(text string) []string {
	var out []string
	for line := range strings.Lines(text) {
		if c, ok := strings.CutPrefix(line, ":"); ok {
			c, _, _ = strings.Cut(c, " ")
			out = append(out, c)
		}
	}
	return out
}

// svcChainOf returns the SVC chain EDGEWIRE-SERVICES sends clusterIP to.
func svcChainOf(t *testing.T, nat, clusterIP string) string {
	t.Helper()
	for _, r := range rulesIn(nat, chainServices) {
		if strings.HasPrefix(r, "-d "+clusterIP+"/32 ") {
			_, target, _ := strings.Cut(r, " -j ")
			return target
		}
	}
	t.Fatalf("no EDGEWIRE-SERVICES rule for %s in:\n%s", clusterIP, nat)
	return ""
}

// independent reimplementation of the chain name, so a change to the hash
// input (which would churn every chain on upgrade) fails a test.
func wantChain(prefix, id string) string {
	sum := sha256.Sum256([]byte(id))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:15]
}

func TestRenderSpread(t *testing.T) {
	tests := []struct {
		name  string
		eps   []services.Endpoint
		probs []string // per SVC rule, "" for unconditional
	}{
		{"one endpoint", []services.Endpoint{ep("10.1.0.1", 8080)}, []string{""}},
		{"two endpoints", []services.Endpoint{ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)}, []string{"0.5000000000", ""}},
		{"three endpoints", []services.Endpoint{ep("10.1.0.3", 8080), ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)},
			[]string{"0.3333333333", "0.5000000000", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, nat := Render(table(t, svc("web", "10.96.0.10", services.TCP, 80, tt.eps...)), "wg0")
			svcChain := wantChain(prefixSVC, "default/web//TCP")
			if got := rulesIn(nat, chainServices); !slices.Equal(got, []string{
				"-d 10.96.0.10/32 -p tcp -m comment --comment default/web -m tcp --dport 80 -j " + svcChain,
			}) {
				t.Fatalf("EDGEWIRE-SERVICES rules: got %q", got)
			}
			rules := rulesIn(nat, svcChain)
			if len(rules) != len(tt.probs) {
				t.Fatalf("got %d SVC rules, want %d:\n%s", len(rules), len(tt.probs), nat)
			}
			// Endpoints are spread in address order.
			for i, r := range rules {
				ip := fmt.Sprintf("10.1.0.%d:8080", i+1)
				sep := wantChain(prefixSEP, "default/web//TCP/"+ip)
				want := "-j " + sep
				if tt.probs[i] != "" {
					want = "-m statistic --mode random --probability " + tt.probs[i] + " -j " + sep
				}
				if r != want {
					t.Errorf("SVC rule %d: got %q, want %q", i, r, want)
				}
				if got, want := rulesIn(nat, sep), []string{
					"-j MARK --or-mark 0x4000",
					"-p tcp -j DNAT --to-destination " + ip,
				}; !slices.Equal(got, want) {
					t.Errorf("SEP %s rules: got %q, want %q", ip, got, want)
				}
			}
			if got, want := len(declared(nat)), 2+1+len(tt.eps); got != want {
				t.Errorf("declared %d nat chains, want %d: %q", got, want, declared(nat))
			}
		})
	}
}

func TestRenderAffinity(t *testing.T) {
	for _, tt := range []struct {
		timeout time.Duration
		seconds string
	}{{0, "10800"}, {60 * time.Second, "60"}, {1500 * time.Millisecond, "2"}} {
		t.Run(tt.seconds, func(t *testing.T) {
			s := svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080))
			s.ClientIPAffinity, s.AffinityTimeout = true, tt.timeout
			_, _, nat := Render(table(t, s), "wg0")
			sep1 := wantChain(prefixSEP, "default/web//TCP/10.1.0.1:8080")
			sep2 := wantChain(prefixSEP, "default/web//TCP/10.1.0.2:8080")
			want := []string{
				"-m recent --name " + sep1 + " --rcheck --seconds " + tt.seconds + " --reap -j " + sep1,
				"-m recent --name " + sep2 + " --rcheck --seconds " + tt.seconds + " --reap -j " + sep2,
				"-m statistic --mode random --probability 0.5000000000 -j " + sep1,
				"-j " + sep2,
			}
			if got := rulesIn(nat, svcChainOf(t, nat, "10.96.0.10")); !slices.Equal(got, want) {
				t.Errorf("SVC rules:\ngot  %q\nwant %q", got, want)
			}
			if got, want := rulesIn(nat, sep2), []string{
				"-j MARK --or-mark 0x4000",
				"-p tcp -m recent --name " + sep2 + " --set -j DNAT --to-destination 10.1.0.2:8080",
			}; !slices.Equal(got, want) {
				t.Errorf("SEP rules: got %q, want %q", got, want)
			}
		})
	}
}

func TestRenderUDPAndNamedPorts(t *testing.T) {
	s := &services.Service{
		Namespace:  "kube-system",
		Name:       "dns",
		ClusterIPs: addrs("10.96.0.10"),
		Ports:      []services.Port{{Name: "dns", Protocol: services.UDP, Port: 53}, {Name: "dns-tcp", Protocol: services.TCP, Port: 53}},
		Endpoints: []services.Endpoint{
			{Addresses: addrs("10.1.0.5"), Ports: map[string]uint16{"dns": 1053, "dns-tcp": 1053}},
			{Addresses: addrs("10.1.0.6"), Ports: map[string]uint16{"dns": 1053}}, // not serving dns-tcp
		},
	}
	_, _, nat := Render(table(t, s), "wg0")
	udp := wantChain(prefixSVC, "kube-system/dns/dns/UDP")
	tcp := wantChain(prefixSVC, "kube-system/dns/dns-tcp/TCP")
	if got, want := rulesIn(nat, chainServices), []string{
		"-d 10.96.0.10/32 -p udp -m comment --comment kube-system/dns:dns -m udp --dport 53 -j " + udp,
		"-d 10.96.0.10/32 -p tcp -m comment --comment kube-system/dns:dns-tcp -m tcp --dport 53 -j " + tcp,
	}; !slices.Equal(got, want) {
		t.Fatalf("EDGEWIRE-SERVICES:\ngot  %q\nwant %q", got, want)
	}
	if got := len(rulesIn(nat, udp)); got != 2 {
		t.Errorf("UDP port spreads over %d endpoints, want 2", got)
	}
	if got := len(rulesIn(nat, tcp)); got != 1 {
		t.Errorf("TCP port spreads over %d endpoints, want 1 (10.1.0.6 lacks the port)", got)
	}
	sep := wantChain(prefixSEP, "kube-system/dns/dns/UDP/10.1.0.6:1053")
	if got, want := rulesIn(nat, sep), []string{"-j MARK --or-mark 0x4000", "-p udp -j DNAT --to-destination 10.1.0.6:1053"}; !slices.Equal(got, want) {
		t.Errorf("UDP SEP: got %q, want %q", got, want)
	}
}

func TestRenderNoEndpointsRejects(t *testing.T) {
	filter, _, nat := Render(table(t,
		svc("empty", "10.96.0.11", services.TCP, 80),
		svc("emptyudp", "10.96.0.12", services.UDP, 53),
		// Only an IPv6 endpoint: nothing IPv4 can reach, so reject too.
		svc("v6only", "10.96.0.13", services.TCP, 80, ep("fd00::1", 80)),
	), "wg0")
	if got, want := rulesIn(filter, chainServices), []string{
		"-d 10.96.0.11/32 -p tcp -m comment --comment default/empty -m tcp --dport 80 -j REJECT",
		"-d 10.96.0.12/32 -p udp -m comment --comment default/emptyudp -m udp --dport 53 -j REJECT",
		"-d 10.96.0.13/32 -p tcp -m comment --comment default/v6only -m tcp --dport 80 -j REJECT",
	}; !slices.Equal(got, want) {
		t.Errorf("filter EDGEWIRE-SERVICES:\ngot  %q\nwant %q", got, want)
	}
	if got := rulesIn(nat, chainServices); len(got) != 0 {
		t.Errorf("nat rules for Services without endpoints: %q", got)
	}
}

func TestRenderNothingToProgram(t *testing.T) {
	v6 := svc("v6", "fd00:96::10", services.TCP, 80, ep("fd00::1", 80))
	dual := svc("dual", "fd00:96::11", services.TCP, 80, ep("10.1.0.1", 80))
	tests := map[string]*services.Table{
		"empty table":                        table(t),
		"nil table":                          nil,
		"headless":                           table(t, svc("headless", "", services.TCP, 80, ep("10.1.0.1", 8080))),
		"ipv6 only":                          table(t, v6),
		"ipv6 cluster IP with ipv4 endpoint": table(t, dual),
	}
	for name, tb := range tests {
		t.Run(name, func(t *testing.T) {
			filter, _, nat := Render(tb, "wg0")
			if got := rulesIn(filter, chainServices); len(got) != 0 {
				t.Errorf("filter rules: %q", got)
			}
			if got := rulesIn(nat, chainServices); len(got) != 0 {
				t.Errorf("nat rules: %q", got)
			}
			if got, want := declared(nat), []string{chainServices, chainPostrouting}; !slices.Equal(got, want) {
				t.Errorf("nat chains: got %q, want %q", got, want)
			}
		})
	}
}

func TestRenderDualStack(t *testing.T) {
	s := svc("dual", "", services.TCP, 80, services.Endpoint{Addresses: addrs("fd00::5", "10.1.0.5"), Ports: map[string]uint16{"": 8080}})
	s.ClusterIPs = addrs("fd00:96::10", "10.96.0.10")
	_, _, nat := Render(table(t, s), "wg0")
	if got := rulesIn(nat, chainServices); len(got) != 1 || !strings.HasPrefix(got[0], "-d 10.96.0.10/32 ") {
		t.Fatalf("EDGEWIRE-SERVICES: got %q, want one rule for 10.96.0.10", got)
	}
	if !strings.Contains(nat, "-j DNAT --to-destination 10.1.0.5:8080\n") || strings.Contains(nat, "fd00") {
		t.Errorf("want DNAT to the IPv4 address only:\n%s", nat)
	}
}

func TestRenderFixedChains(t *testing.T) {
	_, mangle, nat := Render(table(t), "wg7")
	if got, want := rulesIn(mangle, chainMSS), []string{
		"-o wg7 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
		"-i wg7 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
	}; !slices.Equal(got, want) {
		t.Errorf("EDGEWIRE-MSS:\ngot  %q\nwant %q", got, want)
	}
	if got, want := rulesIn(nat, chainPostrouting), []string{"-o wg7 -m mark --mark 0x4000/0x4000 -j MASQUERADE"}; !slices.Equal(got, want) {
		t.Errorf("EDGEWIRE-POSTROUTING: got %q, want %q", got, want)
	}
	for _, text := range []string{mangle, nat} {
		if strings.Contains(text, "PREROUTING ") || strings.Contains(text, "-A OUTPUT") {
			t.Errorf("Render must not contain jump rules (Apply adds them once):\n%s", text)
		}
	}
}

// TestRenderStable checks that the output depends on the Services, not on
// endpoint order or duplicates, and that chain names fit iptables.
func TestRenderStable(t *testing.T) {
	a := svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080), ep("10.1.0.3", 8080))
	b := svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.3", 8080), ep("10.1.0.1", 8080), ep("10.1.0.2", 8080), ep("10.1.0.1", 8080))
	fa, ma, na := Render(table(t, a), "wg0")
	fb, mb, nb := Render(table(t, b), "wg0")
	if fa != fb || ma != mb || na != nb {
		t.Errorf("render depends on endpoint order:\n%s\nvs\n%s", na, nb)
	}
	// Golden names: changing them churns every chain on upgrade.
	if got, want := svcChainOf(t, na, "10.96.0.10"), "EDGEWIRE-SVC-DTJ6GHM4FUOVHJR"; got != want {
		t.Errorf("SVC chain: got %s, want %s", got, want)
	}
	for _, c := range declared(na) {
		if len(c) > 28 {
			t.Errorf("chain %s is %d characters, iptables allows 28", c, len(c))
		}
	}
}

func BenchmarkRender(b *testing.B) {
	tb := bigTable(b, 1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		Render(tb, "wg0")
	}
}

// bigTable returns n Services with eps endpoints each, on distinct IPs.
func bigTable(t testing.TB, n, eps int) *services.Table {
	var svcs []*services.Service
	for i := range n {
		s := svc(fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), services.TCP, 80)
		for j := range eps {
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.%d.%d.%d", 100+j, i/250, i%250+1), 8080))
		}
		svcs = append(svcs, s)
	}
	return table(t, svcs...)
}
