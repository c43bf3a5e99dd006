package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// pageSettle bounds how long the page may lag the agents: a path change
// reaches the page within this of the agents' own status showing it
// (agents report within 5 s, the page redraws every 2 s).
const pageSettle = 30 * time.Second

// pageRow is a pair row as the browser rendered it.
type pageRow struct {
	A     string `json:"a"`
	B     string `json:"b"`
	Path  string `json:"path"`
	Relay string `json:"relay"`
	Edge  string `json:"edge"` // the picture's edge class for the pair, "" without one
}

// pageState is what the test reads from the rendered page.
type pageState struct {
	Pairs   []pageRow         `json:"pairs"`
	NAT     map[string]string `json:"nat"` // node name -> data-nat
	Edges   int               `json:"edges"`
	Refused string            `json:"refused"` // the login form's message, if shown
}

// readPage is the DOM of the topology page, as rendered now.
const readPage = `(() => {
  const edge = (a, b) => {
    const e = document.querySelector('#topology line.edge[data-a="' + CSS.escape(a) + '"][data-b="' + CSS.escape(b) + '"]');
    return e ? e.getAttribute('class') : '';
  };
  const nat = {};
  document.querySelectorAll('tr.node').forEach(r => { nat[r.dataset.name] = r.dataset.nat; });
  const refused = document.getElementById('refused');
  return {
    pairs: Array.from(document.querySelectorAll('tr.pair')).map(r => ({a: r.dataset.a, b: r.dataset.b, path: r.dataset.path, relay: r.dataset.relay, edge: edge(r.dataset.a, r.dataset.b)})),
    nat: nat,
    edges: document.querySelectorAll('#topology line.edge[data-a]').length,
    refused: refused ? refused.textContent : '',
  };
})()`

// pageMismatch compares the page with the paths want expects for every
// pair of nodes; "" when they agree.
func pageMismatch(st pageState, nodes []*natNode, want func(a, b *natNode) string) string {
	got := map[[2]string]pageRow{}
	for _, r := range st.Pairs {
		got[[2]string{r.A, r.B}] = r
	}
	var bad []string
	for i, x := range nodes {
		for _, y := range nodes[i+1:] {
			a, b := x, y
			if b.name < a.name {
				a, b = b, a
			}
			w := want(a, b)
			r, ok := got[[2]string{a.name, b.name}]
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("%s-%s: no row, want %s", a.name, b.name, w))
			case r.Path != w:
				bad = append(bad, fmt.Sprintf("%s-%s: page shows %s, want %s", a.name, b.name, r.Path, w))
			case w == "relay" && r.Relay != embeddedRelay:
				bad = append(bad, fmt.Sprintf("%s-%s: relayed via %q, want %q", a.name, b.name, r.Relay, embeddedRelay))
			case r.Edge != "edge edge-"+w:
				bad = append(bad, fmt.Sprintf("%s-%s: picture edge %q, want \"edge edge-%s\"", a.name, b.name, r.Edge, w))
			}
		}
	}
	n := len(nodes) * (len(nodes) - 1) / 2
	if len(st.Pairs) != n || st.Edges != n {
		bad = append(bad, fmt.Sprintf("%d pair rows and %d edges, want %d of each", len(st.Pairs), st.Edges, n))
	}
	return strings.Join(bad, "; ")
}

// waitPage polls the rendered page until it agrees with want, for up to
// pageSettle, and returns how long that took.
func waitPage(t *testing.T, ctx context.Context, nodes []*natNode, want func(a, b *natNode) string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	err := lab.Eventually(pageSettle, 500*time.Millisecond, func() error {
		st, err := eval[pageState](ctx, readPage)
		if err != nil {
			return err
		}
		if last = pageMismatch(st, nodes, want); last != "" {
			return fmt.Errorf("%s", last)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the page did not show the expected paths within %s: %v", pageSettle, err)
	}
	return time.Since(start)
}

// screenshot saves the page as PNG into the lab's dir and, when
// EDGEWIRE_LAB_LOGS is set, next to the kept logs: the whole page as
// name.png and its top 1300 pixels, recompressed, as name-top.png (small
// enough for docs/topology.png).
func screenshot(t *testing.T, ctx context.Context, l *lab.Lab, name string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	full, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := chromedp.Do(sctx, chromedp.EmulateViewport(1200, 1300)); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	top, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	top = recompress(t, top)
	dirs := []string{l.Dir()}
	if keep := os.Getenv("EDGEWIRE_LAB_LOGS"); keep != "" {
		dirs = append(dirs, filepath.Join(keep, strings.NewReplacer("/", "_").Replace(t.Name())))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Errorf("screenshot: %v", err)
			continue
		}
		for file, png := range map[string][]byte{name + ".png": full, name + "-top.png": top} {
			p := filepath.Join(d, file)
			if err := os.WriteFile(p, png, 0o644); err != nil {
				t.Errorf("screenshot: %v", err)
				continue
			}
			t.Logf("screenshot: %s (%d KB)", p, len(png)>>10)
		}
	}
}

// recompress re-encodes a PNG with the best compression (Chromium's is
// fast, not small); on any error it returns the original.
func recompress(t *testing.T, b []byte) []byte {
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Logf("recompress screenshot: %v", err)
		return b
	}
	var out bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&out, img); err != nil || out.Len() >= len(b) {
		return b
	}
	return out.Bytes()
}

// TestTopologyPage opens the coordinator's topology page in headless
// Chromium from another lab host and checks, from the rendered DOM, that
// every pair of a NAT matrix shows the path physics allows (EIM-EIM and
// public pairs direct, anything symmetric or UDP-blocked relayed), that the
// page follows a direct pair to the relay and back within 30 s of the
// agents changing path, and that the page is refused without the admin
// token from a non-local address (and open from loopback).
func TestTopologyPage(t *testing.T) {
	lab.Require(t)
	chromium := needChromium(t)
	l := lab.New(t)

	cloud := l.AddPublicHost("cloud")
	const metricsPort = 9090
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{
		Extra: []string{"--metrics-listen", fmt.Sprintf("0.0.0.0:%d", metricsPort)},
	})
	pageURL := fmt.Sprintf("http://%s/topology", net.JoinHostPort(cloud.IP().String(), fmt.Sprint(metricsPort)))
	tokenBytes, err := os.ReadFile(filepath.Join(coord.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	adminToken := strings.TrimSpace(string(tokenBytes))

	siteA, siteB := l.AddSite("a", lab.NATEIM), l.AddSite("b", lab.NATEIM)
	siteE, siteF := l.AddSite("e", lab.NATSymmetric), l.AddSite("f", lab.NATSymmetric)
	siteU := l.AddSite("u", lab.NATUDPBlocked)
	nodes := []*natNode{
		{name: "pub", spot: natSpot{kind: natPublic}, host: l.AddPublicHost("pub")},
		behindNAT("eim1", natEIM, siteA),
		behindNAT("eim2", natEIM, siteB),
		behindNAT("sym1", natSym, siteE),
		behindNAT("sym2", natSym, siteF),
		behindNAT("udp1", natUDPBlocked, siteU),
	}
	eim1, eim2 := nodes[1], nodes[2]
	wantNAT := map[string]string{"pub": "none", "eim1": "eim", "eim2": "eim", "sym1": "symmetric", "sym2": "symmetric", "udp1": "blocked"}
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)

	browserHost := l.AddPublicHost("browser")
	ctx := startBrowser(t, l, browserHost, chromium, cloud.IP())

	t.Run("refused from a non-local address without the admin token", func(t *testing.T) {
		code, err := navigate(ctx, pageURL)
		if err != nil {
			t.Fatal(err)
		}
		st, err := eval[pageState](ctx, readPage)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusUnauthorized || st.Refused == "" || len(st.NAT) != 0 {
			t.Errorf("GET /topology from %s: got %d, login message %q, %d nodes shown; want 401, the login form and no nodes", browserHost.IP(), code, st.Refused, len(st.NAT))
		}
		// What a script in that browser gets, with and without a token.
		for _, tc := range []struct {
			auth string
			want int
		}{{"", 401}, {"Bearer ewadm1.wrong", 403}, {"Bearer " + adminToken, 200}} {
			headers := "{}"
			if tc.auth != "" {
				headers = fmt.Sprintf(`{"Authorization": %q}`, tc.auth)
			}
			got, err := eval[int](ctx, `fetch("/topology.json", {headers: `+headers+`}).then(r => r.status)`)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("fetch /topology.json with Authorization %q: got %d, want %d", strings.Replace(tc.auth, adminToken, "<admin token>", 1), got, tc.want)
			}
		}
	})

	t.Run("open from loopback on the coordinator's host", func(t *testing.T) {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return cloud.DialTCP(ctx, addr) },
		}}
		defer client.CloseIdleConnections()
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/topology.json", metricsPort))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"nodes":[`) {
			t.Errorf("GET /topology.json from 127.0.0.1: got %d %.200q, want 200 and the view", resp.StatusCode, b)
		}
	})

	t.Run("a wrong token at the login form is refused", func(t *testing.T) {
		if _, err := navigate(ctx, pageURL); err != nil {
			t.Fatal(err)
		}
		code, err := login(ctx, "ewadm1.wrong")
		if err != nil {
			t.Fatal(err)
		}
		st, err := eval[pageState](ctx, readPage)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusForbidden || !strings.Contains(st.Refused, "wrong admin token") || len(st.NAT) != 0 {
			t.Errorf("after a wrong token: got %d, message %q, %d nodes shown; want 403, \"wrong admin token\" and no nodes", code, st.Refused, len(st.NAT))
		}
	})

	t.Run("the admin token at the login form opens the page", func(t *testing.T) {
		code, err := login(ctx, adminToken)
		if err != nil {
			t.Fatal(err)
		}
		st, err := eval[pageState](ctx, readPage)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusOK || st.Refused != "" || len(st.NAT) != len(nodes) {
			t.Errorf("after logging in: got %d, message %q, %d nodes shown; want 200, none and %d nodes", code, st.Refused, len(st.NAT), len(nodes))
		}
		// The session cookie is HttpOnly: scripts cannot read it.
		if c, err := eval[string](ctx, `document.cookie`); err != nil || c != "" {
			t.Errorf("document.cookie: got %q (%v), want \"\" (HttpOnly)", c, err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// Agents report only pairs that talk: every pair pings.
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	for _, err := range pingAll(allPairs(nodes), 2) {
		t.Error(err)
	}
	settled := time.Now()
	byPath := func(a, b *natNode) string { return expectedPath(a.spot, b.spot) }

	t.Run("every pair shows the path the NAT matrix expects", func(t *testing.T) {
		waitPage(t, ctx, nodes, byPath)
		t.Logf("the page showed every pair's path %v after the agents' paths settled", time.Since(settled).Round(time.Millisecond))
		err := lab.Eventually(pageSettle, 500*time.Millisecond, func() error {
			st, err := eval[pageState](ctx, readPage)
			if err != nil {
				return err
			}
			if !mapsEqual(st.NAT, wantNAT) {
				return fmt.Errorf("NAT kinds %v, want %v", st.NAT, wantNAT)
			}
			return nil
		})
		if err != nil {
			t.Errorf("nodes' NAT kinds on the page: %v", err)
		}
		screenshot(t, ctx, l, "topology")
	})

	t.Run("edgewire graph draws one edge per active pair", func(t *testing.T) {
		dot := needTool(t, "dot", "graphviz")
		out, err := coord.CLI("graph")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, dot, "-Tsvg")
		cmd.Stdin = strings.NewReader(out)
		svg, err := cmd.Output()
		if err != nil {
			t.Fatalf("dot -Tsvg: %v\n%s", err, out)
		}
		n := len(nodes) * (len(nodes) - 1) / 2
		if got := strings.Count(string(svg), `class="edge"`); got != n {
			t.Errorf("dot drew %d edges, want %d (one per active pair):\n%s", got, n, out)
		}
		for _, want := range []string{`"eim1" -- "eim2" [style=solid`, `"sym1" -- "sym2" [style=dashed`, `"eim1" -- "udp1" [style=dashed`} {
			if !strings.Contains(out, want) {
				t.Errorf("edgewire graph: no %q in\n%s", want, out)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// Cut UDP between the two EIM sites: eim1-eim2 falls back to the
	// relay; restore it: direct again. A pinger keeps the pair talking.
	cut := func(op string) {
		t.Helper()
		for _, sp := range [][2]*lab.Site{{siteA, siteB}, {siteB, siteA}} {
			self, other := sp[0], sp[1].PublicIP().String()
			for _, r := range [][]string{
				{"FORWARD", "-p", "udp", "-d", other, "-j", "DROP"},
				{"FORWARD", "-p", "udp", "-s", other, "-j", "DROP"},
			} {
				self.Router().MustExec(t, append([]string{"iptables", "-w", op}, r...)...)
			}
		}
	}
	p := startPinger(t, eim1.host, eim2.overlay, 120*time.Second)
	defer p.proc.Stop(2 * time.Second)
	pairIs := func(path string) func(a, b *natNode) string {
		return func(a, b *natNode) string {
			if (a == eim1 && b == eim2) || (a == eim2 && b == eim1) {
				return path
			}
			return expectedPath(a.spot, b.spot)
		}
	}

	for _, step := range []struct {
		name, path, op string
	}{
		{"eim1-eim2 turns relay on the page when UDP between their sites is cut", "relay", "-I"},
		{"eim1-eim2 turns direct again on the page when UDP is back", "direct", "-D"},
	} {
		t.Run(step.name, func(t *testing.T) {
			// Agents report pairs that talked in the last 2 minutes; a
			// slow run must not lose the others.
			for _, err := range pingAll(allPairs(nodes), 1) {
				t.Error(err)
			}
			changed := time.Now()
			cut(step.op)
			err := lab.Eventually(60*time.Second, 250*time.Millisecond, func() error {
				snap, err := takeSnapshot([]*natNode{eim1, eim2})
				if err != nil {
					return err
				}
				if a, b := snap.path(eim1, eim2), snap.path(eim2, eim1); a != step.path || b != step.path {
					return fmt.Errorf("eim1 sees %s, eim2 sees %s; want %s", a, b, step.path)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("agents: %v", err)
			}
			agents := time.Since(changed)
			took := waitPage(t, ctx, nodes, pairIs(step.path))
			t.Logf("agents on %s %v after the change; the page %v after the agents", step.path, agents.Round(time.Millisecond), took.Round(time.Millisecond))
		})
		if t.Failed() {
			t.FailNow()
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if bv, ok := b[k]; !ok || bv != a[k] {
			return false
		}
	}
	return true
}

// login submits the page's login form with tok and returns the HTTP
// status of the page it leads to.
func login(ctx context.Context, tok string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.SetValue(chromedp.ID("token"), tok), chromedp.Submit(chromedp.ID("login")))
	if err != nil {
		return 0, err
	}
	return resp.Status, nil
}
