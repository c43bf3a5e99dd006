package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/types/topoview"
)

func ptime(t time.Time) *time.Time { return &t }

// topology is the view the fake coordinator's Topology returns: a direct
// pair, a relayed one, one without a path, and a node that never reported.
func topology() topoview.View {
	eim := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-independent", PublicAddr: "203.0.113.10"}
	return topoview.View{
		GeneratedAt: now,
		Nodes: []topoview.Node{
			{Name: "alpha", Key: "ERERERER", Addresses: []string{"100.64.0.1"}, Online: true, Version: "v0.9.0", Tags: []string{"edge"},
				Reported: ptime(now.Add(-2 * time.Second)), NAT: eim, HomeRelay: "fra", HomeRelayMs: 11.5},
			{Name: "beta", Key: "IiIiIiIi", Addresses: []string{"100.64.0.2"}, Online: true, Version: "v0.9.0", Tags: []string{},
				Reported: ptime(now.Add(-3 * time.Second)), NAT: topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-dependent"}, HomeRelay: "fra", HomeRelayMs: 14},
			{Name: "gamma", Key: "MzMzMzMz", Addresses: []string{"100.64.0.3"}, Tags: []string{}},
			{Name: "worker-1", Key: "RERERERE", Addresses: []string{"100.64.0.4"}, Online: true, Version: "v0.9.0", Tags: []string{},
				Reported: ptime(now.Add(-time.Second)), NAT: topoview.NAT{Measured: true}, HomeRelay: "fra"},
		},
		Pairs: []topoview.Pair{
			{A: "alpha", B: "worker-1", Path: topoview.PathDirect, RTTMs: 1.25, Since: now.Add(-time.Minute),
				FromA: &topoview.Side{Path: "direct", Local: "srflx", Remote: "host", RTTMs: 1.25, Since: now.Add(-time.Minute)}},
			{A: "alpha", B: "beta", Path: topoview.PathRelay, Relay: "fra", RTTMs: 24, Since: now.Add(-10 * time.Second),
				FromA: &topoview.Side{Path: "relay", Relay: "fra", LastFailure: "no candidate pair answered"},
				FromB: &topoview.Side{Path: "relay", Relay: "fra"}},
			{A: "beta", B: "worker-1", Path: topoview.PathNone, Since: now.Add(-time.Hour)},
		},
		Relays: []topoview.Relay{{ID: 1, Name: "fra", HomeOf: 3, Relayed: 1, Stats: &topoview.RelayStats{Clients: 3, BytesTotal: 1 << 20}}},
		Summary: topoview.Summary{Nodes: 4, Online: 3, Pairs: topoview.Counts{Total: 3, Direct: 1, Relay: 1, None: 1}, DirectShare: 1.0 / 3,
			ByTag:    []topoview.TagCounts{{Tag: "edge", Counts: topoview.Counts{Total: 2, Direct: 1, Relay: 1}}},
			NATKinds: []topoview.KindCount{{Kind: "eim", Nodes: 1}, {Kind: "symmetric", Nodes: 1}, {Kind: "unknown", Nodes: 2}}},
	}
}

// topologyView is what the fake Topology serves; tests may replace it
// before a run (they do not run in parallel).
var topologyView = topology

func (a *fakeAdmin) Topology(context.Context, *api.TopologyRequest) (*api.TopologyResponse, error) {
	b, err := json.Marshal(topologyView())
	return &api.TopologyResponse{ViewJson: b}, err
}

// needDot returns the path of Graphviz's dot, skipping the test when it
// is missing, unless the Makefile runs the tests (EDGEWIRE_TOOLS_REQUIRED):
// `make test` installs it, so there a missing dot is a failure.
func needDot(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("dot")
	if err != nil {
		if os.Getenv("EDGEWIRE_TOOLS_REQUIRED") != "" {
			t.Fatalf("Graphviz dot not found (hack/install-deps.sh installs it): %v", err)
		}
		t.Skip("Graphviz dot not installed (apt-get install graphviz)")
	}
	return p
}

var svgEdge = regexp.MustCompile(`<g id="edge\d+" class="edge">`)
var svgNode = regexp.MustCompile(`<g id="node\d+" class="node">`)

// TestGraphDot: Graphviz parses what `edgewire graph` prints, with one
// node per node and one edge per active pair, also for names that need
// quoting.
func TestGraphDot(t *testing.T) {
	dot := needDot(t)
	defer func() { topologyView = topology }()
	odd := func() topoview.View {
		v := topology()
		v.Nodes[0].Name = `al"pha\`
		v.Nodes[1].Name = "be ta\n-- x"
		v.Pairs[0].A, v.Pairs[1].A = v.Nodes[0].Name, v.Nodes[0].Name
		v.Pairs[1].B, v.Pairs[2].A = v.Nodes[1].Name, v.Nodes[1].Name
		v.Pairs[1].Relay = `fr"a`
		return v
	}
	empty := func() topoview.View {
		return topoview.View{GeneratedAt: now, Nodes: []topoview.Node{}, Pairs: []topoview.Pair{}, Relays: []topoview.Relay{}}
	}
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		view func() topoview.View
	}{{"fixture", topology}, {"names that need quoting", odd}, {"empty", empty}} {
		t.Run(tc.name, func(t *testing.T) {
			topologyView = tc.view
			out, errOut, code := f.run("graph")
			if code != 0 {
				t.Fatalf("edgewire graph: exit %d: %s", code, errOut)
			}
			cmd := exec.Command(dot, "-Tsvg")
			cmd.Stdin = strings.NewReader(out)
			svg, err := cmd.Output()
			if err != nil {
				var stderr string
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = string(ee.Stderr)
				}
				t.Fatalf("dot -Tsvg: %v: %s\ninput:\n%s", err, stderr, out)
			}
			v := tc.view()
			if got := len(svgEdge.FindAll(svg, -1)); got != len(v.Pairs) {
				t.Errorf("dot drew %d edges, want %d (one per active pair)", got, len(v.Pairs))
			}
			if got := len(svgNode.FindAll(svg, -1)); got != len(v.Nodes) {
				t.Errorf("dot drew %d nodes, want %d", got, len(v.Nodes))
			}
		})
	}
}

// TestGraphOutput: -o accepts dot and json for graph, and nothing else.
func TestGraphOutput(t *testing.T) {
	f := newFixture(t)
	dflt, _, _ := f.run("graph")
	for _, tc := range []struct {
		args     []string
		wantCode int
		wantOut  string
	}{
		{[]string{"graph", "-o", "dot"}, 0, dflt},
		{[]string{"graph", "-o", "table"}, 0, dflt},
		{[]string{"graph", "-o", "yaml"}, exitUsage, ""},
		{[]string{"nodes", "list", "-o", "dot"}, exitUsage, ""},
	} {
		out, _, code := f.run(tc.args...)
		if code != tc.wantCode || out != tc.wantOut {
			t.Errorf("edgewire %s: got %d %q, want %d %q", strings.Join(tc.args, " "), code, out, tc.wantCode, tc.wantOut)
		}
	}
	if !strings.HasPrefix(strings.SplitN(dflt, "\n", 2)[1], "graph edgewire {") {
		t.Errorf("default output %q: want DOT", dflt)
	}
	js, _, _ := f.run("graph", "-o", "json")
	var v topoview.View
	if err := json.Unmarshal([]byte(js), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Pairs) != 3 || v.Pairs[1].Relay != "fra" || v.Nodes[0].NAT.Kind() != "eim" {
		t.Errorf("-o json: got %+v, want the coordinator's view", v)
	}
}
