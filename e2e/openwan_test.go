package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestOpenWANNATs: two sites behind endpoint-independent NATs that do not
// drop unsolicited WAN input, each behind its own ISP hop. A peer's early
// check leaves a conntrack entry on such a router that makes MASQUERADE
// move the site's mapping to another port, and ICE then fails every time
// (before primers: relay after 60 s, ICE failed, in every run). With
// primers (a TTL-limited datagram that opens a node's own mapping and
// dies at its ISP) the pair must go direct within 60 s in each of 10
// fresh labs.
func TestOpenWANNATs(t *testing.T) {
	lab.Require(t)
	const runs = 10
	var took []time.Duration
	for i := range runs {
		ok := t.Run(fmt.Sprintf("run %d", i+1), func(t *testing.T) {
			l := lab.New(t)
			cloud := l.AddPublicHost("cloud")
			coord := cluster.StartCoordinator(t, l, cloud)
			opts := lab.SiteOptions{OpenWAN: true, ISP: true}
			sa, sb := l.AddSiteWith("sa", lab.NATEIM, opts), l.AddSiteWith("sb", lab.NATEIM, opts)
			a := &natNode{name: "a", spot: natSpot{natEIM, "sa"}, host: sa.AddNode("a"), nats: []*lab.Site{sa}}
			b := &natNode{name: "b", spot: natSpot{natEIM, "sb"}, host: sb.AddNode("b"), nats: []*lab.Site{sb}}
			nodes := []*natNode{a, b}
			start := time.Now()
			startNodes(t, l, coord, nodes, nil)
			defer matrixOnFailure(t, nodes, expectedPath)
			waitPaths(t, nodes, expectedPath, 60*time.Second)
			took = append(took, time.Since(start))
			if errs := pingAll([]nodePair{{a, b}, {b, a}}, 3); len(errs) > 0 {
				t.Error(errs)
			}
		})
		if !ok {
			break
		}
	}
	slices.Sort(took)
	t.Logf("agent start to direct, %d runs: %v", len(took), took)
}
