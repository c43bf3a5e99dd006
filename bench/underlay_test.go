//go:build bench

package bench

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// benchUnderlay measures hostile underlays: throughput over a path with a
// 1280-byte link (outer packets go without DF, so its router fragments)
// against the same double-NAT topology at 1500, and how long two EIM
// NATs that keep state for unsolicited WAN input take to go direct, over
// fresh labs.
func benchUnderlay(t *testing.T, rep *Report, cfg config) {
	sec := "Hostile underlays (ISP hop, small MTU, routers without a WAN input firewall)"
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: quiet})
	// a and c sit behind a home NAT behind a carrier NAT; a's home router
	// reaches its carrier over a 1280-byte link.
	isp1, isp2 := l.AddSite("isp1", lab.NATEIM), l.AddSite("isp2", lab.NATEIM)
	sa, sc := isp1.AddSite("sa", lab.NATEIM), isp2.AddSite("sc", lab.NATEIM)
	sb := l.AddSite("sb", lab.NATEIM)
	sa.SetUplinkMTU(1280)
	tok := coord.Token("--reusable")
	ha, hb, hc := sa.AddNode("a"), sb.AddNode("b"), sc.AddNode("c")
	a := cluster.StartAgent(t, l, ha, coord, "a", cluster.AgentOptions{Token: tok, Extra: quiet})
	b := cluster.StartAgent(t, l, hb, coord, "b", cluster.AgentOptions{Token: tok, Extra: quiet})
	c := cluster.StartAgent(t, l, hc, coord, "c", cluster.AgentOptions{Token: tok, Extra: quiet})
	for _, ag := range []*cluster.Agent{a, b, c} {
		ag.WaitPeers(2, 45*time.Second)
	}
	if err := lab.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		for _, from := range []*cluster.Agent{a, c} {
			if p, _, err := path(from, "b"); err != nil || p != "direct" {
				return fmt.Errorf("%s to b: %s %v", from.Name, p, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	srv, err := startIperfServer(hb)
	if err != nil {
		t.Fatal(err)
	}
	ipB := b.OverlayIP().String()
	var small, full []float64
	for r := range cfg.reps {
		runs := []struct {
			from *lab.Host
			out  *[]float64
		}{{ha, &small}, {hc, &full}}
		if r%2 == 1 {
			runs[0], runs[1] = runs[1], runs[0]
		}
		for _, x := range runs {
			g, err := iperf(x.from, ipB, flows[0], cfg.dur)
			if err != nil {
				t.Logf("rep %d: %v", r, err)
				srv.restart()
				continue
			}
			*x.out = append(*x.out, g)
		}
	}
	m := rep.Add(&Measure{Section: sec, Name: "iperf3 TCP 1 stream, direct, over a 1280-byte underlay link", Unit: "Gbit/s",
		Edgewire: small, RefName: "same topology, 1500-byte link", Reference: full, Target: "completes (no blackhole)"})
	m.Met = met(len(small) == cfg.reps && medianOf(small) > 0)

	// Routers without a WAN input firewall, each behind an ISP hop: time
	// from agent start to a direct pair, over fresh labs.
	var took []float64
	failed := 0
	for i := range cfg.recReps + 2 {
		d, err := openWANRun(t, fmt.Sprint(i))
		if err != nil {
			t.Logf("open-WAN run %d: %v", i, err)
			failed++
			continue
		}
		took = append(took, d.Seconds())
	}
	m = rep.Add(&Measure{Section: sec, Name: "agent start to direct, two EIM NATs without a WAN input firewall (fresh lab per run)", Unit: "s",
		Edgewire: took, Target: "direct within 60 s in every run"})
	m.Met = met(failed == 0)
	if failed > 0 {
		m.Note = fmt.Sprintf("%d of %d runs not direct within 60 s", failed, failed+len(took))
	}
}

// openWANRun brings up two agents behind open-WAN EIM NATs with ISP hops
// in a fresh lab and returns how long they took to go direct.
func openWANRun(t *testing.T, name string) (time.Duration, error) {
	var d time.Duration
	var err error
	t.Run("open WAN "+name, func(t *testing.T) {
		l := lab.New(t)
		cloud := l.AddPublicHost("cloud")
		coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: quiet})
		opts := lab.SiteOptions{OpenWAN: true, ISP: true}
		sa, sb := l.AddSiteWith("sa", lab.NATEIM, opts), l.AddSiteWith("sb", lab.NATEIM, opts)
		tok := coord.Token("--reusable")
		start := time.Now()
		a := cluster.StartAgent(t, l, sa.AddNode("a"), coord, "a", cluster.AgentOptions{Token: tok, Extra: quiet})
		cluster.StartAgent(t, l, sb.AddNode("b"), coord, "b", cluster.AgentOptions{Token: tok, Extra: quiet})
		err = lab.Eventually(60*time.Second, 50*time.Millisecond, func() error {
			p, _, err := path(a, "b")
			if err != nil || p != "direct" {
				return fmt.Errorf("a to b: %s %v", p, err)
			}
			return nil
		})
		d = time.Since(start)
	})
	return d, err
}
