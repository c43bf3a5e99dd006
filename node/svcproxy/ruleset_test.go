package svcproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/services"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// ep is an endpoint serving the unnamed port on port.
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

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Mode: "maybe", Interface: "wg0"},
		{Mode: ModeOn},
		{Mode: ModeAuto, Interface: "has space"},
		{Mode: ModeOn, Interface: "waytoolonginterfacename"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): got nil error, want one", cfg)
		}
	}
	if _, err := New(Config{Mode: ModeOff}); err != nil {
		t.Errorf("mode off needs no interface: %v", err)
	}
	if p, err := New(Config{Interface: "wg0"}); err != nil || p.cfg.Mode != ModeAuto {
		t.Errorf("default mode: got %v, %v; want auto", p, err)
	}
	dns := netip.MustParseAddrPort("169.254.96.16:53")
	for _, cfg := range []Config{
		{Mode: ModeOff, LocalOnly: []LocalPort{{dns, services.UDP}}}, // the guard needs the overlay interface
		{Mode: ModeOff, Interface: "wg0", LocalOnly: []LocalPort{{dns, "SCTP"}}},
		{Mode: ModeOff, Interface: "wg0", LocalOnly: []LocalPort{{netip.MustParseAddrPort("169.254.96.16:0"), services.UDP}}},
		{Mode: ModeOff, Interface: "wg0", LocalOnly: []LocalPort{{}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): got nil error, want one", cfg)
		}
	}
	p, err := New(Config{Mode: ModeOff, Interface: "wg0", LocalOnly: []LocalPort{
		{dns, services.UDP}, {dns, services.UDP}, {netip.MustParseAddrPort("[::ffff:169.254.96.16]:53"), services.TCP}, {netip.MustParseAddrPort("[fd00::53]:53"), services.UDP},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(p.guard), "[169.254.96.16:53/UDP 169.254.96.16:53/TCP]"; got != want {
		t.Errorf("guard ports: got %s, want %s (deduplicated, unmapped, IPv4 only)", got, want)
	}
}

func TestPodCIDRs(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		in   []netip.Prefix
		want string
	}{
		{nil, "[]"},
		{pfx("10.244.1.7/24"), "[10.244.1.0/24]"},
		{pfx("10.244.2.0/24", "10.244.1.0/24", "10.244.1.0/24"), "[10.244.1.0/24 10.244.2.0/24]"},
		{pfx("10.244.1.128/25", "10.244.0.0/16"), "[10.244.0.0/16]"},
		{pfx("fd00::/64", "::ffff:10.1.0.0/112", "::ffff:0.0.0.0/80"), "[10.1.0.0/16]"},
	}
	for _, tt := range tests {
		if got := fmt.Sprint(podCIDRs(tt.in)); got != tt.want && !(tt.want == "[]" && got == "[]") {
			t.Errorf("podCIDRs(%v): got %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestModeOffGuardNeedsNetlink: in mode off with local-only ports the
// Proxy programs the guard (here into a namespace that does not exist,
// so it fails), and with none it touches nothing.
func TestModeOffGuardNeedsNetlink(t *testing.T) {
	ctx := context.Background()
	p, err := New(Config{Mode: ModeOff, Interface: "wg0", NetNS: "/nonexistent/netns",
		LocalOnly: []LocalPort{{netip.MustParseAddrPort("169.254.96.16:53"), services.UDP}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetPodCIDRs(ctx, nil); err == nil {
		t.Errorf("SetPodCIDRs in mode off with a guard: got nil error, want the netlink failure")
	}
	if err := p.Apply(ctx, nil); err == nil {
		t.Errorf("Apply in mode off with a guard: got nil error, want the netlink failure")
	}
}

// TestModeOffTouchesNothing points the Proxy at a namespace that does
// not exist: any netlink use would fail.
func TestModeOffTouchesNothing(t *testing.T) {
	ctx := context.Background()
	p, err := New(Config{Mode: ModeOff, NetNS: "/nonexistent/netns"})
	if err != nil {
		t.Fatal(err)
	}
	if on, err := p.Enabled(ctx); on || err != nil {
		t.Errorf("Enabled: got %v, %v; want false", on, err)
	}
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Errorf("Apply: %v", err)
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
	if s := p.Stats(); s != (Stats{}) {
		t.Errorf("stats: got %+v, want zero", s)
	}
}

func TestRender(t *testing.T) {
	aff := svc("aff", "10.96.0.12", services.UDP, 53, ep("10.1.0.2", 5353), ep("10.1.0.1", 5353))
	aff.ClientIPAffinity = true
	aff.AffinityTimeout = 1500 * time.Millisecond
	named := &services.Service{Namespace: "prod", Name: "api", ClusterIPs: addrs("10.96.0.13", "fd00::13"),
		Ports: []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}, {Name: "grpc", Protocol: services.TCP, Port: 9090}},
		Endpoints: []services.Endpoint{
			{Addresses: addrs("fd00::1", "10.1.0.5"), Ports: map[string]uint16{"http": 8080}},
			{Addresses: addrs("fd00::2"), Ports: map[string]uint16{"http": 8080, "grpc": 9090}},
		}}
	rs, err := render(table(t,
		svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.3", 8080), ep("10.1.0.1", 8080), ep("10.1.0.1", 8080)),
		svc("empty", "10.96.0.11", services.UDP, 53),
		svc("headless", "", services.TCP, 80, ep("10.1.0.9", 80)),
		aff, named), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	pt := func(ip string, proto services.Protocol, port uint16) portal {
		return portal{netip.MustParseAddr(ip), proto, port}
	}
	wantPortals := map[portal]string{
		pt("10.96.0.10", services.TCP, 80): "svc-default/web/tcp",
		pt("10.96.0.12", services.UDP, 53): "svc-default/aff/udp",
		pt("10.96.0.13", services.TCP, 80): "svc-prod/api/tcp/http",
	}
	if !maps.Equal(rs.portals, wantPortals) {
		t.Errorf("portals: got %v, want %v", rs.portals, wantPortals)
	}
	// grpc has no IPv4 endpoint: rejected like a Service without endpoints.
	wantRejects := map[portal]bool{pt("10.96.0.11", services.UDP, 53): true, pt("10.96.0.13", services.TCP, 9090): true}
	if !maps.Equal(rs.rejects, wantRejects) {
		t.Errorf("rejects: got %v, want %v", rs.rejects, wantRejects)
	}
	web := rs.chains["svc-default/web/tcp"]
	if web == nil || fmt.Sprint(web.eps) != "[10.1.0.1:8080 10.1.0.3:8080]" || web.proto != services.TCP || web.targets != nil {
		t.Errorf("web: got %+v, want a dnat over 10.1.0.1:8080 and 10.1.0.3:8080 (sorted, deduplicated), no endpoint chains", web)
	}
	if api := rs.chains["svc-prod/api/tcp/http"]; api == nil || fmt.Sprint(api.eps) != "[10.1.0.5:8080]" {
		t.Errorf("api http: got %+v, want the endpoint's IPv4 address only", api)
	}
	wantChains := []string{
		"ep-default/aff/udp__10.1.0.1/5353", "ep-default/aff/udp__10.1.0.2/5353",
		"svc-default/aff/udp", "svc-default/web/tcp", "svc-prod/api/tcp/http",
	}
	if got := slices.Sorted(maps.Keys(rs.chains)); !slices.Equal(got, wantChains) {
		t.Errorf("chains: got %q, want %q", got, wantChains)
	}
	a := rs.chains["svc-default/aff/udp"]
	if !slices.Equal(a.targets, wantChains[:2]) || !slices.Equal(a.affSets, []string{"aff-default/aff/udp__10.1.0.1/5353", "aff-default/aff/udp__10.1.0.2/5353"}) {
		t.Errorf("affinity svc chain: got targets %q sets %q", a.targets, a.affSets)
	}
	if e := rs.chains[wantChains[0]]; e.affSet != a.affSets[0] || e.timeout != 2*time.Second || e.proto != services.UDP {
		t.Errorf("affinity ep chain: got %+v, want set %s, timeout rounded to 2s, udp", e, a.affSets[0])
	}
	if len(rs.sets) != 2 {
		t.Errorf("sets: got %v, want the two affinity sets", rs.sets)
	}

	aff.AffinityTimeout = 0
	rs, _ = render(table(t, aff), discardLog())
	if e := rs.chains[wantChains[0]]; e.timeout != 3*time.Hour {
		t.Errorf("affinity without a timeout: got %v, want Kubernetes' default 3h", e.timeout)
	}
}

func TestRenderConflict(t *testing.T) {
	for _, tc := range []struct {
		name string
		svcs []*services.Service
		want string
	}{
		{"two with endpoints", []*services.Service{
			svc("a", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 80)),
			svc("b", "10.96.0.10", services.TCP, 80, ep("10.1.0.2", 80))}, "default/a and default/b both want 10.96.0.10:80/TCP"},
		{"one without endpoints", []*services.Service{
			svc("a", "10.96.0.10", services.UDP, 53, ep("10.1.0.1", 53)),
			svc("b", "10.96.0.10", services.UDP, 53)}, "10.96.0.10:53/UDP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(table(t, tc.svcs...), discardLog())
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrConflict mentioning %q", err, tc.want)
			}
		})
	}
	// Same IP and port, other protocol: no conflict.
	if _, err := render(table(t, svc("a", "10.96.0.10", services.TCP, 53, ep("10.1.0.1", 53)),
		svc("b", "10.96.0.10", services.UDP, 53, ep("10.1.0.1", 53))), discardLog()); err != nil {
		t.Errorf("TCP and UDP on one port: %v", err)
	}
}

func TestDiff(t *testing.T) {
	mustRender := func(svcs ...*services.Service) *ruleset {
		t.Helper()
		rs, err := render(table(t, svcs...), discardLog())
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	other := svc("other", "10.96.0.20", services.TCP, 443, ep("10.2.0.1", 8443), ep("10.2.0.2", 8443))
	affine := func(s *services.Service) *services.Service { s.ClientIPAffinity = true; return s }
	three := mustRender(svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080), ep("10.1.0.3", 8080)), other)
	two := mustRender(svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)), other)
	none := mustRender(svc("web", "10.96.0.10", services.TCP, 80), other)
	affTwo := mustRender(affine(svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080))), other)
	affOne := mustRender(affine(svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080))), other)
	web := portal{netip.MustParseAddr("10.96.0.10"), services.TCP, 80}

	for _, tc := range []struct {
		name     string
		old, cur *ruleset
		want     plan
	}{
		{"unchanged", three, mustRender(svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.3", 8080), ep("10.1.0.2", 8080), ep("10.1.0.1", 8080)), other), plan{}},
		{"one endpoint fewer rewrites one chain", three, two, plan{flush: []string{"svc-default/web/tcp"}, fill: []string{"svc-default/web/tcp"}}},
		{"last endpoint gone: reject instead", two, none, plan{delPortals: []portal{web}, flush: []string{"svc-default/web/tcp"},
			delChains: []string{"svc-default/web/tcp"}, addRejects: []portal{web}}},
		{"endpoints back", none, two, plan{delRejects: []portal{web}, addChains: []string{"svc-default/web/tcp"},
			fill: []string{"svc-default/web/tcp"}, addPortals: []portal{web}}},
		{"from empty", emptyRuleset(), none, plan{addChains: []string{"svc-default/other/tcp"}, fill: []string{"svc-default/other/tcp"},
			addPortals: []portal{{netip.MustParseAddr("10.96.0.20"), services.TCP, 443}}, addRejects: []portal{web}}},
		{"affinity endpoint gone", affTwo, affOne, plan{
			flush:     []string{"ep-default/web/tcp__10.1.0.2/8080", "svc-default/web/tcp"},
			delChains: []string{"ep-default/web/tcp__10.1.0.2/8080"}, delSets: []string{"aff-default/web/tcp__10.1.0.2/8080"},
			fill: []string{"svc-default/web/tcp"}}},
		{"affinity switched on", two, affTwo, plan{
			flush:     []string{"svc-default/web/tcp"},
			addSets:   []string{"aff-default/web/tcp__10.1.0.1/8080", "aff-default/web/tcp__10.1.0.2/8080"},
			addChains: []string{"ep-default/web/tcp__10.1.0.1/8080", "ep-default/web/tcp__10.1.0.2/8080"},
			fill:      []string{"ep-default/web/tcp__10.1.0.1/8080", "ep-default/web/tcp__10.1.0.2/8080", "svc-default/web/tcp"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := diff(tc.old, tc.cur)
			if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", tc.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tc.want)
			}
			if got.empty() != (fmt.Sprintf("%+v", tc.want) == fmt.Sprintf("%+v", plan{})) {
				t.Errorf("empty() = %v", got.empty())
			}
		})
	}
}
