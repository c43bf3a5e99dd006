package topoweb

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/topoview"
)

const adminToken = "ewadm1.0123456789abcdef"

var t0 = time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)

func at(t time.Time) *time.Time { return &t }

// synthetic is a fleet of four: a direct pair, a relayed one and one
// without a path; one node never reported.
func synthetic() topoview.View {
	eim := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-independent", PublicAddr: "203.0.113.1"}
	sym := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-dependent", PublicAddr: "203.0.113.2"}
	v := topoview.View{
		GeneratedAt: t0,
		Nodes: []topoview.Node{
			{Name: "eim1", Key: "AAAAAAAA", Addresses: []string{"100.64.0.1"}, Online: true, Version: "v1", Tags: []string{"site-a"}, Reported: at(t0.Add(-3 * time.Second)), NAT: eim, HomeRelay: "cloud", HomeRelayMs: 1.5},
			{Name: "eim2", Key: "BBBBBBBB", Addresses: []string{"100.64.0.2"}, Online: true, Version: "v1", Reported: at(t0.Add(-4 * time.Second)), NAT: eim, HomeRelay: "cloud", HomeRelayMs: 2},
			{Name: "sym1", Key: "CCCCCCCC", Addresses: []string{"100.64.0.3"}, Online: true, Version: "v1", Reported: at(t0.Add(-5 * time.Second)), NAT: sym, HomeRelay: "cloud", HomeRelayMs: 12.25},
			{Name: "old", Key: "DDDDDDDD", Addresses: []string{"100.64.0.4"}, Tags: []string{}},
		},
		Pairs: []topoview.Pair{
			{A: "eim1", B: "eim2", Path: topoview.PathDirect, RTTMs: 0.8, Since: t0.Add(-90 * time.Second),
				FromA: &topoview.Side{Path: "direct", Local: "srflx", Remote: "srflx", RTTMs: 0.8, Since: t0.Add(-91 * time.Second)},
				FromB: &topoview.Side{Path: "direct", Local: "srflx", Remote: "prflx", RTTMs: 0.8, Since: t0.Add(-90 * time.Second)}},
			{A: "eim1", B: "sym1", Path: topoview.PathRelay, Relay: "cloud", RTTMs: 3, Since: t0.Add(-10 * time.Second),
				FromA: &topoview.Side{Path: "relay", Relay: "cloud", LastFailure: "ICE failed: no candidate pair answered"}},
			{A: "eim2", B: "sym1", Path: topoview.PathNone, Since: t0.Add(-time.Hour)},
		},
		Relays: []topoview.Relay{
			{ID: 1, Name: "cloud", HomeOf: 3, Relayed: 1, Stats: &topoview.RelayStats{Clients: 3, BytesPerSec: 2048, BytesTotal: 5 << 20, DroppedTotal: 7}},
			{ID: 2, Name: "far", Stats: nil},
		},
	}
	v.Summary = topoview.Summary{Nodes: 4, Online: 3, Pairs: topoview.Counts{Total: 3, Direct: 1, Relay: 1, None: 1}, DirectShare: 1.0 / 3,
		ByTag:    []topoview.TagCounts{{Tag: "site-a", Counts: topoview.Counts{Total: 2, Direct: 1, Relay: 1}}},
		NATKinds: []topoview.KindCount{{Kind: "eim", Nodes: 2}, {Kind: "symmetric", Nodes: 1}, {Kind: "unknown", Nodes: 1}}}
	return v
}

func newHandler(t *testing.T, v topoview.View, clk clock.Clock) *Handler {
	t.Helper()
	h, err := New(Config{View: func() (topoview.View, error) { return v, nil }, AdminHash: sha256.Sum256([]byte(adminToken)), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// do serves one request from remote and returns the response.
func do(h http.Handler, method, target, remote string, hdr map[string]string, body io.Reader) *http.Response {
	r := httptest.NewRequest(method, target, body)
	r.RemoteAddr = remote
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func read(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// login posts the form from remote and returns the session cookie set,
// if any, and the status.
func login(t *testing.T, h http.Handler, tok string) (*http.Cookie, int) {
	t.Helper()
	resp := do(h, "POST", "/topology/login", "198.51.100.7:40000",
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, strings.NewReader(url.Values{"token": {tok}}.Encode()))
	for _, c := range resp.Cookies() {
		if c.Name == CookieName {
			return c, resp.StatusCode
		}
	}
	return nil, resp.StatusCode
}

func TestAccess(t *testing.T) {
	clk := clock.NewFake(t0)
	h := newHandler(t, synthetic(), clk)
	cookie, code := login(t, h, adminToken)
	if code != http.StatusSeeOther || cookie == nil {
		t.Fatalf("login with the admin token: got %d, cookie %v; want 303 and a cookie", code, cookie)
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/", cookie)
	}
	if strings.Contains(cookie.Value, adminToken) {
		t.Errorf("cookie %q carries the admin token itself", cookie.Value)
	}
	if c, code := login(t, h, "ewadm1.wrong"); c != nil || code != http.StatusForbidden {
		t.Errorf("login with a wrong token: got %d, cookie %v; want 403 and none", code, c)
	}
	forged := *cookie
	forged.Value = cookie.Value[:len(cookie.Value)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(cookie.Value, "0")]
	later := *cookie
	later.Value = strings.Replace(cookie.Value, fmt.Sprint(t0.Add(SessionTTL).Unix()), fmt.Sprint(t0.Add(10*SessionTTL).Unix()), 1)
	if later.Value == cookie.Value {
		t.Fatalf("cookie %q does not carry its expiry", cookie.Value)
	}
	const remote = "198.51.100.7:40000"
	for _, tc := range []struct {
		name     string
		remote   string
		header   map[string]string
		cookie   *http.Cookie
		wantCode int
	}{
		{"loopback v4", "127.0.0.1:5555", nil, nil, 200},
		{"loopback v6", "[::1]:5555", nil, nil, 200},
		{"loopback v4 in v6", "[::ffff:127.0.0.1]:5555", nil, nil, 200},
		{"remote without token", remote, nil, nil, 401},
		{"remote, wrong token", remote, map[string]string{"Authorization": "Bearer ewadm1.wrong"}, nil, 403},
		{"remote, token without Bearer", remote, map[string]string{"Authorization": adminToken}, nil, 403},
		{"remote, right token", remote, map[string]string{"Authorization": "Bearer " + adminToken}, nil, 200},
		{"remote, session cookie", remote, nil, cookie, 200},
		{"remote, forged cookie", remote, nil, &forged, 403},
		{"remote, cookie with a later expiry", remote, nil, &later, 403},
		{"remote, garbage cookie", remote, nil, &http.Cookie{Name: CookieName, Value: "v1.x.y"}, 403},
		{"remote, wrong token and a good cookie", remote, map[string]string{"Authorization": "Bearer nope"}, cookie, 403},
		{"remote IP that looks local", "10.0.0.1:1", map[string]string{"X-Forwarded-For": "127.0.0.1"}, nil, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/topology", "/topology.json", "/topology?part=main"} {
				r := httptest.NewRequest("GET", path, nil)
				r.RemoteAddr = tc.remote
				for k, v := range tc.header {
					r.Header.Set(k, v)
				}
				if tc.cookie != nil {
					r.AddCookie(tc.cookie)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				body := w.Body.String()
				if w.Code != tc.wantCode {
					t.Errorf("GET %s: got %d %q, want %d", path, w.Code, body, tc.wantCode)
				}
				if w.Code != 200 && strings.Contains(body, "eim1") {
					t.Errorf("GET %s: refused (%d) but shows a node: %q", path, w.Code, body)
				}
				if w.Code == 200 && !strings.Contains(body, "eim1") {
					t.Errorf("GET %s: 200 without the nodes: %q", path, body)
				}
			}
		})
	}
	// A browser without a session is shown the login form.
	resp := do(h, "GET", "/topology", remote, nil, nil)
	if body := read(t, resp); resp.StatusCode != 401 || !strings.Contains(body, `action="/topology/login"`) {
		t.Errorf("browser without session: got %d %q, want 401 and the login form", resp.StatusCode, body)
	}
	// Sessions end.
	clk.Advance(SessionTTL)
	r := httptest.NewRequest("GET", "/topology.json", nil)
	r.RemoteAddr = remote
	r.AddCookie(cookie)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 403 {
		t.Errorf("expired session: got %d, want 403", w.Code)
	}
}

// Assets are served to anyone (the login form uses the stylesheet), and
// nothing but them.
func TestAssets(t *testing.T) {
	h := newHandler(t, synthetic(), nil)
	for _, tc := range []struct {
		path, wantType string
		wantCode       int
	}{
		{"/topology/assets/page.css", "text/css; charset=utf-8", 200},
		{"/topology/assets/page.js", "text/javascript; charset=utf-8", 200},
		{"/topology/assets/page.tmpl", "", 404},
		{"/topology/assets/nope.js", "", 404},
	} {
		resp := do(h, "GET", tc.path, "198.51.100.7:1", nil, nil)
		if resp.StatusCode != tc.wantCode || (tc.wantType != "" && resp.Header.Get("Content-Type") != tc.wantType) {
			t.Errorf("GET %s: got %d %q, want %d %q", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.wantCode, tc.wantType)
		}
	}
}

func TestJSON(t *testing.T) {
	v := synthetic()
	h := newHandler(t, v, nil)
	want, _ := json.Marshal(v)
	for _, tc := range []struct {
		path   string
		accept string
	}{
		{"/topology.json", ""},
		{"/topology", "application/json"},
		{"/topology", "application/json, */*;q=0.5"},
	} {
		resp := do(h, "GET", tc.path, "127.0.0.1:1", map[string]string{"Accept": tc.accept}, nil)
		body := strings.TrimSpace(read(t, resp))
		if resp.Header.Get("Content-Type") != "application/json" || body != string(want) {
			t.Errorf("GET %s (Accept %q): got %s %q, want the view as JSON", tc.path, tc.accept, resp.Header.Get("Content-Type"), body)
		}
	}
	resp := do(h, "GET", "/topology", "127.0.0.1:1", map[string]string{"Accept": "text/html,application/xhtml+xml,application/json;q=0.9"}, nil)
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("browser's Accept: got %s, want HTML", ct)
	}
}

func TestNoView(t *testing.T) {
	h, err := New(Config{View: func() (topoview.View, error) {
		return topoview.View{}, fmt.Errorf("%w: this replica stands by", ErrNoView)
	}, AdminHash: sha256.Sum256([]byte(adminToken))})
	if err != nil {
		t.Fatal(err)
	}
	resp := do(h, "GET", "/topology", "127.0.0.1:1", nil, nil)
	if body := read(t, resp); resp.StatusCode != 503 || !strings.Contains(body, "stands by") {
		t.Errorf("got %d %q, want 503 saying why", resp.StatusCode, body)
	}
}

// parse returns the page's document.
func parse(t *testing.T, body string) *html.Node {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// find returns the elements named tag with class cls, in document order.
func find(n *html.Node, tag, cls string) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == tag && hasClass(n, cls) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

// hasClass: n has class cls; any n when cls is "".
func hasClass(n *html.Node, cls string) bool {
	if cls == "" {
		return true
	}
	for _, f := range strings.Fields(attr(n, "class")) {
		if f == cls {
			return true
		}
	}
	return false
}

func attr(n *html.Node, name string) string {
	for _, a := range n.Attr {
		if a.Key == name {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

// TestRender: the page's rows and the picture's edges are the view's.
func TestRender(t *testing.T) {
	v := synthetic()
	h := newHandler(t, v, nil)
	for _, path := range []string{"/topology", "/topology?part=main"} {
		t.Run(path, func(t *testing.T) {
			resp := do(h, "GET", path, "127.0.0.1:1", nil, nil)
			doc := parse(t, read(t, resp))
			type row struct{ A, B, Path, Relay string }
			var want []row
			for _, p := range v.Pairs {
				want = append(want, row{p.A, p.B, p.Path, p.Relay})
			}
			var rows, edges []row
			for _, tr := range find(doc, "tr", "pair") {
				rows = append(rows, row{attr(tr, "data-a"), attr(tr, "data-b"), attr(tr, "data-path"), attr(tr, "data-relay")})
			}
			for _, l := range find(doc, "line", "edge") {
				if attr(l, "data-a") == "" {
					continue // the legend's
				}
				edges = append(edges, row{attr(l, "data-a"), attr(l, "data-b"), attr(l, "data-path"), attr(l, "data-relay")})
				if want := "edge-" + attr(l, "data-path"); !hasClass(l, want) {
					t.Errorf("edge %s-%s: class %q, want %s (solid, dashed and dotted by path)", attr(l, "data-a"), attr(l, "data-b"), attr(l, "class"), want)
				}
			}
			if !reflect.DeepEqual(rows, want) {
				t.Errorf("pair rows %v, want %v", rows, want)
			}
			if !reflect.DeepEqual(edges, want) {
				t.Errorf("picture edges %v, want %v", edges, want)
			}
			trs := find(doc, "tr", "pair")
			if len(trs) == 3 {
				for i, wantText := range []string{"direct", "relay via cloud", "none"} {
					if got := text(trs[i]); !strings.Contains(got, wantText) {
						t.Errorf("pair row %d %q: want %q in it", i, got, wantText)
					}
				}
				if got := text(trs[1]); !strings.Contains(got, "ICE failed: no candidate pair answered") || !strings.Contains(got, "no report") || !strings.Contains(got, "10s ago") {
					t.Errorf("relayed row %q: want a's failure, b's missing report and its age", got)
				}
				if got := text(trs[0]); !strings.Contains(got, "srflx → prflx") {
					t.Errorf("direct row %q: want b's candidates", got)
				}
			}
			var names, nats []string
			for _, tr := range find(doc, "tr", "node") {
				names = append(names, attr(tr, "data-name"))
				nats = append(nats, attr(tr, "data-nat"))
			}
			if want := []string{"eim1", "eim2", "sym1", "old"}; !reflect.DeepEqual(names, want) {
				t.Errorf("node rows %v, want %v", names, want)
			}
			if want := []string{"eim", "eim", "symmetric", "unknown"}; !reflect.DeepEqual(nats, want) {
				t.Errorf("node NAT kinds %v, want %v", nats, want)
			}
			if got := find(doc, "g", "gnode"); len(got) != 4 {
				t.Errorf("picture has %d nodes, want 4", len(got))
			}
			if rs := find(doc, "tr", "relay"); len(rs) != 2 {
				t.Errorf("%d relay rows, want 2", len(rs))
			} else {
				if got := text(rs[0]); !strings.Contains(got, "2.0 KiB/s") || !strings.Contains(got, "5.0 MiB") || !strings.Contains(got, "3 nodes") {
					t.Errorf("relay row %q: want its stats", got)
				}
				if got := text(rs[1]); strings.Contains(got, "B/s") {
					t.Errorf("relay without stats %q shows a rate", got)
				}
			}
			if s := byID(doc, "summary"); s == nil || attr(s, "data-pairs") != "3" || attr(s, "data-direct") != "1" || attr(s, "data-relay") != "1" {
				t.Errorf("summary: want 3 pairs, 1 direct, 1 relayed in its data attributes")
			}
			if s := byID(doc, "direct-share"); s == nil || text(s) != "33%" {
				t.Errorf("direct share: want 33%%")
			}
		})
	}
}

func byID(n *html.Node, id string) *html.Node {
	if n.Type == html.ElementNode && attr(n, "id") == id {
		return n
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := byID(c, id); f != nil {
			return f
		}
	}
	return nil
}

// TestEscaping: names are DNS labels, but the page escapes whatever it is
// given, in text and in attributes.
func TestEscaping(t *testing.T) {
	v := synthetic()
	evil := `x"><script>alert(1)</script>`
	v.Nodes[0].Name = evil
	v.Pairs[0].A = evil
	v.Pairs[1].Relay = `</text><script>alert(2)</script>`
	v.Nodes[1].Version = `<img src=x onerror=alert(3)>`
	h := newHandler(t, v, nil)
	body := read(t, do(h, "GET", "/topology", "127.0.0.1:1", nil, nil))
	for _, raw := range []string{"<script>alert", "<img src=x"} {
		if strings.Contains(body, raw) {
			t.Errorf("page contains %q unescaped", raw)
		}
	}
	doc := parse(t, body)
	if scripts := find(doc, "script", ""); len(scripts) != 1 || attr(scripts[0], "src") != "/topology/assets/page.js" {
		t.Errorf("page has %d scripts, want only its own", len(scripts))
	}
	rows := find(doc, "tr", "pair")
	if len(rows) == 0 || attr(rows[0], "data-a") != evil {
		t.Errorf("first pair row's data-a: want the name back unchanged after parsing")
	}
	if n := find(doc, "tr", "node"); len(n) == 0 || attr(n[0], "data-name") != evil {
		t.Errorf("first node row's data-name: want the name back unchanged after parsing")
	}
}

// TestPictureBounds: a fleet too large to draw gets no picture (and a
// pointer to `edgewire graph`); one node sits in the middle.
func TestPictureBounds(t *testing.T) {
	v := topoview.View{GeneratedAt: t0}
	for i := range maxPictureNodes + 1 {
		v.Nodes = append(v.Nodes, topoview.Node{Name: fmt.Sprintf("n%04d", i)})
	}
	if d := build(v); d.Picture != nil || !d.TooMany {
		t.Errorf("%d nodes: got a picture", len(v.Nodes))
	}
	v.Nodes = v.Nodes[:1]
	d := build(v)
	if d.Picture == nil || len(d.Picture.Nodes) != 1 || d.Picture.Nodes[0].X != d.Picture.Size/2 || d.Picture.Nodes[0].Y != d.Picture.Size/2 {
		t.Errorf("one node: got %+v, want it in the middle", d.Picture)
	}
	// Distinct places for every node, inside the picture.
	v = synthetic()
	d = build(v)
	seen := map[[2]float64]bool{}
	for _, n := range d.Picture.Nodes {
		if n.X < 0 || n.Y < 0 || n.X > d.Picture.Size || n.Y > d.Picture.Size || seen[[2]float64{n.X, n.Y}] {
			t.Errorf("node %s at (%.1f, %.1f): outside the %.0f picture or on another node", n.Name, n.X, n.Y, d.Picture.Size)
		}
		seen[[2]float64{n.X, n.Y}] = true
	}
}

// TestRelayLabels: relayed links name their relay only when there are
// several relays to tell apart.
func TestRelayLabels(t *testing.T) {
	for _, tc := range []struct {
		relays int
		want   []string
	}{{2, []string{"cloud"}}, {1, nil}} {
		v := synthetic()
		v.Relays = v.Relays[:tc.relays]
		doc := parse(t, read(t, do(newHandler(t, v, nil), "GET", "/topology", "127.0.0.1:1", nil, nil)))
		var got []string
		for _, n := range find(doc, "text", "edge-label") {
			got = append(got, text(n))
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%d relays: edge labels %q, want %q", tc.relays, got, tc.want)
		}
	}
}

// TestLargeFleet: 10,000 nodes with 5 active pairs each are served as
// JSON in at most 5 MB gzipped, and as a page without a picture.
func TestLargeFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("large fleet")
	}
	const nodes, pairsPer = 10000, 5
	v := topoview.View{GeneratedAt: t0, Nodes: make([]topoview.Node, 0, nodes), Pairs: make([]topoview.Pair, 0, nodes*pairsPer/2), Relays: []topoview.Relay{}}
	eim := topoview.NAT{Measured: true, UDP: true, Mapping: "endpoint-independent"}
	name := func(i int) string { return fmt.Sprintf("edge-%05d", i) }
	for i := range nodes {
		v.Nodes = append(v.Nodes, topoview.Node{Name: name(i), Key: fmt.Sprintf("%08x", i), Addresses: []string{fmt.Sprintf("100.64.%d.%d", i/256, i%256)},
			Online: true, Version: "v1.2.3", Tags: []string{"site-" + fmt.Sprint(i%50)}, Reported: at(t0), NAT: eim, HomeRelay: "fra", HomeRelayMs: 12.5})
	}
	for i := range nodes {
		for j := 1; j <= pairsPer/2+1 && len(v.Pairs) < nodes*pairsPer/2; j++ {
			side := &topoview.Side{Path: "direct", Local: "srflx", Remote: "srflx", RTTMs: 3.25, Since: t0}
			v.Pairs = append(v.Pairs, topoview.Pair{A: name(i), B: name((i + j) % nodes), Path: topoview.PathDirect, RTTMs: 3.25, Since: t0, FromA: side, FromB: side})
		}
	}
	h := newHandler(t, v, nil)
	start := time.Now()
	resp := do(h, "GET", "/topology.json", "127.0.0.1:1", map[string]string{"Accept-Encoding": "gzip"}, nil)
	body := read(t, resp)
	t.Logf("%d nodes, %d pairs: JSON %d KB gzipped in %v", len(v.Nodes), len(v.Pairs), len(body)>>10, time.Since(start).Round(time.Millisecond))
	if resp.Header.Get("Content-Encoding") != "gzip" || len(body) > 5<<20 {
		t.Errorf("JSON: %d bytes, encoding %q; want gzip, at most 5 MB", len(body), resp.Header.Get("Content-Encoding"))
	}
	start = time.Now()
	resp = do(h, "GET", "/topology", "127.0.0.1:1", map[string]string{"Accept-Encoding": "gzip"}, nil)
	body = read(t, resp)
	t.Logf("page %d KB gzipped in %v", len(body)>>10, time.Since(start).Round(time.Millisecond))
	if resp.StatusCode != 200 || len(body) > 5<<20 {
		t.Errorf("page: %d, %d bytes; want 200, at most 5 MB", resp.StatusCode, len(body))
	}
}
