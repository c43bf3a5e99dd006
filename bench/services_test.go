//go:build bench

package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/svcproxy"
	"github.com/edgewire/edgewire/types/services"
)

// benchServices times node/svcproxy programming 1,000 Services x 10
// endpoints into a fresh lab namespace's nftables and applying one
// endpoint change, then compares iperf3 through a ClusterIP (DNAT by
// those rules) with iperf3 to the pod IP directly.
func benchServices(t *testing.T, rep *Report, cfg config) {
	l := lab.New(t)
	sec := "Services (node/svcproxy, nftables over netlink in a lab namespace)"

	const nsvc, neps = 1000, 10
	table := func(changed int) *services.Table {
		var svcs []*services.Service
		for i := range nsvc {
			s := &services.Service{
				Namespace:  fmt.Sprintf("ns-%d", i%20),
				Name:       fmt.Sprintf("svc-%d", i),
				ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
				Ports:      []services.Port{{Name: "http", Protocol: services.TCP, Port: 80}},
			}
			for e := range neps {
				a := netip.AddrFrom4([4]byte{10, 244, byte(i % 250), byte(e + 1)})
				if i == 0 && e == 0 && changed > 0 {
					a = netip.AddrFrom4([4]byte{10, 245, byte(changed), 1})
				}
				s.Endpoints = append(s.Endpoints, services.Endpoint{Addresses: []netip.Addr{a}, Ports: map[string]uint16{"http": 8080}})
			}
			svcs = append(svcs, s)
		}
		tb, err := services.NewTable(svcs)
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	initial := table(0)
	var full, one, noop []float64
	var lines string
	for r := range cfg.reps {
		h := l.AddPublicHost(fmt.Sprintf("svc%d", r))
		p := newProxy(t, h, "eth0")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		t0 := time.Now()
		if err := p.Apply(ctx, initial); err != nil {
			cancel()
			t.Fatalf("apply 1000x10: %v", err)
		}
		full = append(full, time.Since(t0).Seconds())
		changed := table(r + 1)
		t0 = time.Now()
		if err := p.Apply(ctx, changed); err != nil {
			cancel()
			t.Fatalf("apply one change: %v", err)
		}
		one = append(one, time.Since(t0).Seconds()*1e3)
		// The same table again: render, diff and one netlink round trip
		// (the check that our table is intact), no batch. This is the
		// part of one change's time that does not depend on the change.
		t0 = time.Now()
		if err := p.Apply(ctx, changed); err != nil {
			cancel()
			t.Fatalf("apply unchanged: %v", err)
		}
		noop = append(noop, time.Since(t0).Seconds()*1e3)
		cancel()
		if r == 0 {
			lines = strings.TrimSpace(h.MustExec(t, "sh", "-c", "nft list table ip edgewire | wc -l"))
			rep.SetRaw("services/nft_table_lines", lines)
		}
	}
	rep.SetRaw("services/unchanged_apply_ms", noop)
	where := "the batch itself, not the fixed per-Apply work"
	if median(noop) >= median(one)/2 {
		where = "the fixed per-Apply work (rendering and diffing 1,000 Services in Go, one netlink round trip to check the table), not the batch"
	}
	rep.Note("Services: the 1,000 x 10 table is %s lines of `nft list table ip edgewire` (one chain, one rule and one numgen endpoint map per Service port, plus one services map), loaded as one netlink batch. One endpoint change is one batch of a few messages (flush that Service's chain, a new endpoint map and rule). An Apply with nothing to change took %.1f ms (median) against %.1f ms for one change, so most of a change's time is %s (kernel %s).",
		lines, median(noop), median(one), where, kernelRelease())
	rep.Add(&Measure{Section: sec, Name: "program 1,000 Services x 10 endpoints (empty namespace)", Unit: "s", Edgewire: full,
		Target: "< 1 s", Met: met(median(full) < 1)})
	rep.Add(&Measure{Section: sec, Name: "apply one endpoint change", Unit: "ms", Edgewire: one,
		Target: "< 50 ms", Met: met(median(one) < 50)})

	// ClusterIP vs pod IP: client and server on the lab's internet bridge.
	cli, srvHost := l.AddPublicHost("svccli"), l.AddPublicHost("svcsrv")
	srv, err := startIperfServer(srvHost)
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr("10.96.200.10")
	svc := &services.Service{Namespace: "bench", Name: "iperf", ClusterIPs: []netip.Addr{clusterIP},
		Ports:     []services.Port{{Name: "iperf", Protocol: services.TCP, Port: iperfPort}},
		Endpoints: []services.Endpoint{{Addresses: []netip.Addr{srvHost.IP()}, Ports: map[string]uint16{"iperf": iperfPort}}}}
	tb, err := services.NewTable([]*services.Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, cli, "eth0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Apply(ctx, tb); err != nil {
		t.Fatal(err)
	}
	f := flows[0]
	var viaSvc, direct []float64
	for r := range cfg.reps {
		for _, x := range []struct {
			dst string
			out *[]float64
		}{{clusterIP.String(), &viaSvc}, {srvHost.IP().String(), &direct}} {
			g, err := iperf(cli, x.dst, f, cfg.dur)
			if err != nil {
				t.Logf("rep %d: %v", r, err)
				srv.restart()
				continue
			}
			*x.out = append(*x.out, g)
		}
	}
	m := rep.Add(&Measure{Section: sec, Name: "iperf3 TCP 1 stream to a ClusterIP (DNAT to the server)", Unit: "Gbit/s",
		Edgewire: viaSvc, RefName: "pod IP directly", Reference: direct, Target: ">= 0.95x pod IP"})
	if m.Ratio != 0 {
		m.Met = met(m.Ratio >= 0.95)
	}
}

func kernelRelease() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "(unknown)"
	}
	return strings.TrimSpace(string(out))
}

func newProxy(t *testing.T, h *lab.Host, iface string) *svcproxy.Proxy {
	t.Helper()
	p, err := svcproxy.New(svcproxy.Config{Mode: svcproxy.ModeOn, Interface: iface, NetNS: "/var/run/netns/" + h.NS()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
