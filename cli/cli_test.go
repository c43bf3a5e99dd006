package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/node/localapi"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with what the commands print")

// now is the clock of every run: ages and token expiry are read against it.
var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// fakeAdmin answers the Admin service from fixed tokens and nodes, and
// records the requests that change something.
type fakeAdmin struct {
	api.UnimplementedAdminServer

	mu       sync.Mutex // guards the requests below
	creates  []*api.CreateTokenRequest
	approves []*api.ApproveRoutesRequest
}

var _ api.AdminServer = (*fakeAdmin)(nil)

func (a *fakeAdmin) CreateToken(_ context.Context, req *api.CreateTokenRequest) (*api.CreateTokenResponse, error) {
	a.mu.Lock()
	a.creates = append(a.creates, proto.Clone(req).(*api.CreateTokenRequest))
	a.mu.Unlock()
	info := &api.TokenInfo{Id: "k7q2m9xw", CreatedUnix: now.Unix(), Reusable: req.GetReusable(), MaxUses: max(req.GetUses(), 1),
		Tags: req.GetTags(), Routes: req.GetRoutes(), KubernetesNode: req.GetKubernetesNode()}
	if req.GetTtlSeconds() != 0 {
		info.ExpiresUnix = now.Unix() + req.GetTtlSeconds()
	}
	return &api.CreateTokenResponse{Token: "ewt1.k7q2m9xw.c2VjcmV0LXNlY3JldC1zZWNyZXQ.cGluLXBpbi1waW4", Info: info}, nil
}

func (a *fakeAdmin) ListTokens(context.Context, *api.ListTokensRequest) (*api.ListTokensResponse, error) {
	created := now.Add(-48 * time.Hour).Unix()
	return &api.ListTokensResponse{Tokens: []*api.TokenInfo{
		{Id: "valid001", CreatedUnix: created, ExpiresUnix: now.Add(time.Hour).Unix(), MaxUses: 1},
		{Id: "valid002", CreatedUnix: created, ExpiresUnix: now.Add(time.Second).Unix(), MaxUses: 3, Uses: 2},
		{Id: "expired1", CreatedUnix: created, ExpiresUnix: now.Add(-time.Hour).Unix(), MaxUses: 1},
		{Id: "expired2", CreatedUnix: created, ExpiresUnix: now.Unix(), MaxUses: 1}, // expires this very second
		{Id: "usedup01", CreatedUnix: created, ExpiresUnix: now.Add(time.Hour).Unix(), MaxUses: 3, Uses: 3},
		{Id: "revoked1", CreatedUnix: created, ExpiresUnix: now.Add(time.Hour).Unix(), MaxUses: 1, Revoked: true},
		{Id: "reuse001", CreatedUnix: created, Reusable: true, Uses: 17},
		{Id: "reuse002", CreatedUnix: created, ExpiresUnix: now.Add(-time.Minute).Unix(), Reusable: true, Uses: 4},
	}}, nil
}

func (a *fakeAdmin) RevokeToken(_ context.Context, req *api.RevokeTokenRequest) (*api.RevokeTokenResponse, error) {
	if req.GetId() != "valid001" {
		return nil, status.Errorf(codes.NotFound, "no token %q", req.GetId())
	}
	return &api.RevokeTokenResponse{}, nil
}

// testKey is a fixed 32-byte public key.
func testKey(b byte) []byte { return bytes.Repeat([]byte{b * 17}, 32) }

// nodes is the registry ListNodes shows.
func nodes() []*api.Node {
	return []*api.Node{
		{Name: "alpha", PublicKey: testKey(1), Hostname: "alpha.example", Addresses: []string{"100.64.0.1"}, Routes: []string{"10.42.0.0/24"},
			PendingRoutes: []string{"10.43.0.0/24", "192.168.7.0/24"}, Tags: []string{"edge", "cam"}, Version: "v0.9.0",
			Endpoints: []string{"203.0.113.10:51820", "192.168.1.10:51820"}, Online: true, LastSeenUnixMs: now.UnixMilli()},
		{Name: "beta", PublicKey: testKey(2), Addresses: []string{"100.64.0.2", "fd7a:115c:a1e0::2"}, Endpoints: []string{"198.51.100.4:41641"},
			LastSeenUnixMs: now.Add(-90*time.Second - 400*time.Millisecond).UnixMilli(), Version: "v0.8.2-14-g3f2a9c1-dirty"},
		// Never connected: no endpoints, no version, never seen.
		{Name: "gamma", PublicKey: testKey(3), Addresses: []string{"100.64.0.3"}, PendingRoutes: []string{"192.168.10.0/24"}},
		{Name: "worker-1", PublicKey: testKey(4), Addresses: []string{"100.64.0.4"}, Routes: []string{"10.42.1.0/24"}, KubernetesNode: "worker-1",
			Online: true, LastSeenUnixMs: now.Add(-time.Second).UnixMilli(), Version: "v0.9.0"},
	}
}

func (a *fakeAdmin) ListNodes(context.Context, *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	return &api.ListNodesResponse{Nodes: nodes()}, nil
}

func (a *fakeAdmin) DeleteNode(_ context.Context, req *api.DeleteNodeRequest) (*api.DeleteNodeResponse, error) {
	for _, n := range nodes() {
		if n.GetName() == req.GetName() {
			return &api.DeleteNodeResponse{}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no node named %q", req.GetName())
}

// ApproveRoutes answers with the node as the request would leave it.
func (a *fakeAdmin) ApproveRoutes(_ context.Context, req *api.ApproveRoutesRequest) (*api.ApproveRoutesResponse, error) {
	a.mu.Lock()
	a.approves = append(a.approves, proto.Clone(req).(*api.ApproveRoutesRequest))
	a.mu.Unlock()
	for _, n := range nodes() {
		if n.GetName() != req.GetName() {
			continue
		}
		var pending []string
		for _, p := range n.PendingRoutes {
			if req.GetAll() || slices.Contains(req.GetApprove(), p) {
				n.Routes = append(n.Routes, p)
			} else {
				pending = append(pending, p)
			}
		}
		n.PendingRoutes = pending
		n.Routes = slices.DeleteFunc(n.Routes, func(r string) bool {
			if slices.Contains(req.GetWithdraw(), r) {
				n.PendingRoutes = append(n.PendingRoutes, r)
				return true
			}
			return false
		})
		return &api.ApproveRoutesResponse{Node: n}, nil
	}
	return nil, status.Errorf(codes.NotFound, "no node named %q", req.GetName())
}

func (a *fakeAdmin) requests() ([]*api.CreateTokenRequest, []*api.ApproveRoutesRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.creates), slices.Clone(a.approves)
}

// serveAdmin serves a on a unix socket in dir until the test ends and
// returns the socket's path.
func serveAdmin(t *testing.T, dir string, a api.AdminServer) string {
	t.Helper()
	path := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterAdminServer(srv, a)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("admin server: %v", err)
		}
	})
	return path
}

// fakeAgent is the agent behind the local API: a node with a direct peer,
// a relayed one and one without a path.
type fakeAgent struct{}

var _ localapi.Backend = fakeAgent{}

func (fakeAgent) Status() (localapi.Status, error) {
	return localapi.Status{
		Self: localapi.SelfStatus{
			Name: "edge-3", PublicKey: "mO1e2Uu2Yc0wqDlvXNo1r2vGBZkZk6Q0x0T9CqJcN3E=", Addresses: []string{"100.64.0.7"},
			Interface: "edgewire0", ListenPort: 51820, MTU: 1420, Endpoints: []string{"203.0.113.50:51820"},
			Coordinator: "coord.example.net:7443", Connected: true, MapVersion: 1042,
			Relay: &localapi.RelayStatus{Home: "fra", Connected: true, LatencyMs: map[string]float64{"fra": 11.5, "ams": 17.25}},
		},
		Peers: []localapi.PeerStatus{
			{Name: "db", PublicKey: "Zx4m2vJb2b7cN0uA6jH7p3xkq9wJ8s5T1rL0yQe2VdU=", Addresses: []string{"100.64.0.8"}, Routes: []string{"10.20.0.0/16"},
				Online: true, Path: "direct", Endpoint: "198.51.100.23:51820", LastHandshake: at(now.Add(-12*time.Second - 300*time.Millisecond)), Version: "v0.9.0",
				RxBytes: 1536, TxBytes: 5 << 20,
				ICE: &localapi.ICEStatus{State: "connected", Local: &localapi.CandidateInfo{Type: "srflx", Address: "203.0.113.50:51820"},
					Remote: &localapi.CandidateInfo{Type: "host", Address: "198.51.100.23:51820"}, RTTMs: 4.25, Restarts: 1}},
			{Name: "cam-7", PublicKey: "q9H3nT0aZ7l2wV5xR8cK1mB4yU6eJ0sD2fG3hP5iL7o=", Addresses: []string{"100.64.0.9"},
				Online: true, Path: "relay", Relay: "fra", Endpoint: "127.77.0.2:1", LastHandshake: at(now.Add(-75 * time.Second)), Version: "v0.8.2",
				RxBytes: 512, TxBytes: 3 << 30,
				ICE: &localapi.ICEStatus{State: "checking", Restarts: 4}},
			{Name: "old-laptop", PublicKey: "Enf+hoH/jWtZLBIoXuK8nqgd6F6m2iL/m3feMuENuW0=", Addresses: []string{"100.64.0.10"},
				Path: "none"},
			// No relay and no coordinator: the endpoint that last worked.
			{Name: "gw-2", PublicKey: "dAzxAxn9kKsl/iR26rl4ajGJxzf0ymqjXkFGjSENeN0=", Addresses: []string{"100.64.0.12"},
				Path: "direct", LastKnown: true, Endpoint: "198.51.100.40:51820", LastHandshake: at(now.Add(-3 * time.Second))},
		},
	}, nil
}

func at(t time.Time) *time.Time { return &t }

// Ping answers db directly, cam-7 over relay fra, and loses lossy's
// reply; like the agent it takes a name or an overlay address.
func (fakeAgent) Ping(_ context.Context, peer string) (localapi.PingResult, error) {
	switch peer {
	case "db", "100.64.0.8":
		return localapi.PingResult{Peer: "db", Address: "100.64.0.8", Path: "direct", Endpoint: "198.51.100.23:51820", RTTMs: 4.125}, nil
	case "cam-7", "100.64.0.9":
		return localapi.PingResult{Peer: "cam-7", Address: "100.64.0.9", Path: "relay", Relay: "fra", Endpoint: "127.77.0.2:1", RTTMs: 31.5}, nil
	case "lossy", "100.64.0.11":
		return localapi.PingResult{Peer: "lossy", Address: "100.64.0.11", Path: "relay", Relay: "fra"}, errors.New("no reply within 2s")
	}
	return localapi.PingResult{}, localapi.ErrNoPeer
}

func (fakeAgent) Netcheck(context.Context) (localapi.Netcheck, error) {
	return localapi.Netcheck{UDP: true, PublicAddr: "203.0.113.50", Mapping: "endpoint-independent",
		Meaning: "endpoint-independent NAT (a typical home router): hole punching works",
		STUN: []localapi.STUNResult{
			{Server: "coord.example.net:3478", Mapped: "203.0.113.50:40001", RTTMs: 9.75},
			{Server: "coord.example.net:3479", Alt: true, Mapped: "203.0.113.50:40001", RTTMs: 9.5},
			{Server: "relay-ams.example.net:3478", Error: "timeout"},
		},
		RelayLatencyMs: []localapi.RelayLatency{{Name: "fra", LatencyMs: 11.5}, {Name: "ams", LatencyMs: 17.25}},
		PreferredRelay: "fra",
	}, nil
}

func (fakeAgent) Services() (localapi.Services, error) {
	return localapi.Services{
		Endpoints: []localapi.ServiceEndpoint{
			{Service: "demo/web", Address: "10.244.1.7", NodeName: "edge-1", Via: "edge-1", Path: "l3", Target: "10.244.1.7", Why: "its node routes the address"},
			{Service: "demo/web", Address: "172.17.0.2", NodeName: "edge-2", Via: "edge-2", Path: "forward", Target: "100.64.0.8",
				Why: "address not routable over the overlay: forwarded by its node's agent"},
			{Service: "demo/web", Address: "172.17.0.2", NodeName: "edge-3", Via: "edge-3", Path: "local", Target: "172.17.0.2", Why: "on this node"},
			{Service: "kube-system/node-exporter", Address: "192.168.1.10", NodeName: "edge-2", Via: "edge-2", Path: "host", Target: "100.64.0.8",
				Why: "hostNetwork: through its node's overlay address"},
			{Service: "demo/ghost", Address: "10.9.0.4", NodeName: "cloud-9", Path: "none", Why: "node cloud-9 is not in the overlay and no node routes 10.9.0.4"},
		},
		Forward: localapi.ForwardStats{Ports: 2, Out: 17, OutFailed: 1, In: 4},
	}, nil
}

// serveAgent serves b's local API on a unix socket in dir until the test
// ends and returns the socket's path once it answers.
func serveAgent(t *testing.T, dir string, b localapi.Backend) string {
	t.Helper()
	path := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- localapi.Serve(ctx, path, b, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("local API: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := (localapi.Client{Socket: path}).Status(ctx); err == nil {
			return path
		} else if time.Now().After(deadline) {
			t.Fatalf("local API never answered: %v", err)
		}
	}
}

// fixture is a fake coordinator and a fake agent, and the flags that
// point the CLI at them.
type fixture struct {
	admin *fakeAdmin
	flags []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	a := &fakeAdmin{}
	return &fixture{admin: a, flags: []string{"--admin-socket", serveAdmin(t, dir, a), "--socket", serveAgent(t, dir, fakeAgent{})}}
}

// build is what `version` reports in tests.
var build = buildinfo.Info{Version: "v0.9.0", Revision: "3f2a9c1d5e7b9a0c1e3f5a7b9c0d1e2f3a4b5c6d", GoVersion: "go1.26.0", Platform: "linux/arm64"}

// run runs the CLI in process with the fixed clock and build.
func (f *fixture) run(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = runBuild(append(slices.Clone(args), f.flags...), &out, &errOut, func() time.Time { return now }, build)
	return out.String(), errOut.String(), code
}

// golden compares got with testdata/name.golden byte for byte, or
// rewrites the file under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with -update if the change is meant); - want, + got:\n%s", path, lineDiff(string(want), got))
	}
}

// lineDiff shows the lines of a and b that differ (- a, + b) between the
// common lines, with a trailing "⏎" on lines missing their newline.
func lineDiff(a, b string) string {
	split := func(s string) []string {
		l := strings.SplitAfter(s, "\n")
		if l[len(l)-1] == "" {
			l = l[:len(l)-1]
		}
		for i, x := range l {
			if !strings.HasSuffix(x, "\n") {
				l[i] = x + "⏎\n"
			}
		}
		return l
	}
	x, y := split(a), split(b)
	// lcs[i][j]: length of the longest common subsequence of x[i:], y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var sb strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			sb.WriteString("  " + x[i])
			i, j = i+1, j+1
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			sb.WriteString("- " + x[i])
			i++
		default:
			sb.WriteString("+ " + y[j])
			j++
		}
	}
	return sb.String()
}

// TestLineDiff: the diff a failing golden test shows.
func TestLineDiff(t *testing.T) {
	got := lineDiff("a\nb\nc\n", "a\nB\nc\nd")
	want := "  a\n- b\n+ B\n  c\n+ d⏎\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestGolden runs each command against the fakes, as a table and as
// JSON, and compares what it prints with testdata/<name>.golden; `go test
// ./cli -run TestGolden -update` rewrites those files.
func TestGolden(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"token_list", []string{"token", "list"}},
		{"token_list_json", []string{"token", "list", "-o", "json"}},
		{"token_create", []string{"token", "create"}},
		{"token_create_json", []string{"token", "create", "--ttl", "1h", "--uses", "3", "--tags", "edge,cam", "--routes", "10.42.0.0/16", "-o", "json"}},
		{"token_create_never_json", []string{"token", "create", "--ttl", "0", "--reusable", "-o", "json"}},
		{"token_revoke", []string{"token", "revoke", "valid001"}},
		{"token_revoke_json", []string{"token", "revoke", "valid001", "-o", "json"}},
		{"nodes_list", []string{"nodes", "list"}},
		{"nodes_list_json", []string{"nodes", "list", "-o", "json"}},
		{"nodes_delete", []string{"nodes", "delete", "beta"}},
		{"nodes_delete_json", []string{"nodes", "delete", "beta", "-o", "json"}},
		{"nodes_routes_list", []string{"nodes", "routes", "list"}},
		{"nodes_routes_list_json", []string{"nodes", "routes", "list", "-o", "json"}},
		{"nodes_routes_approve", []string{"nodes", "routes", "approve", "alpha", "10.43.0.0/24"}},
		{"nodes_routes_approve_json", []string{"nodes", "routes", "approve", "alpha", "10.43.0.0/24", "-o", "json"}},
		{"nodes_routes_approve_all", []string{"nodes", "routes", "approve", "gamma", "--all"}},
		{"nodes_routes_withdraw", []string{"nodes", "routes", "withdraw", "alpha", "10.42.0.0/24"}},
		{"nodes_routes_withdraw_json", []string{"nodes", "routes", "withdraw", "alpha", "10.42.0.0/24", "-o", "json"}},
		{"status", []string{"status"}},
		{"status_json", []string{"status", "-o", "json"}},
		{"services", []string{"services"}},
		{"services_json", []string{"services", "-o", "json"}},
		{"ping", []string{"ping", "-c", "2", "-i", "10ms", "db"}},
		{"ping_ip", []string{"ping", "-c", "1", "100.64.0.9"}},
		{"ping_json", []string{"ping", "-c", "1", "db", "-o", "json"}},
		{"ping_relay_json", []string{"ping", "-c", "1", "cam-7", "-o", "json"}},
		{"netcheck", []string{"netcheck"}},
		{"netcheck_json", []string{"netcheck", "-o", "json"}},
		{"graph", []string{"graph"}},
		{"graph_json", []string{"graph", "-o", "json"}},
		{"version", []string{"version"}},
		{"version_json", []string{"version", "-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out, errOut, code := f.run(tc.args...)
			if code != 0 || errOut != "" {
				t.Fatalf("edgewire %s: exit %d, stderr %q; want 0 and nothing", strings.Join(tc.args, " "), code, errOut)
			}
			if strings.HasSuffix(tc.golden, "_json") && !json.Valid([]byte(out)) {
				t.Errorf("edgewire %s: not JSON:\n%s", strings.Join(tc.args, " "), out)
			}
			golden(t, tc.golden, out)
		})
	}
}

// TestGoldenCoversEveryVerb: every command that runs has a table and a
// JSON golden file, so a new verb cannot skip either.
func TestGoldenCoversEveryVerb(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		have[strings.TrimSuffix(filepath.Base(f), ".golden")] = true
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			if sub.HasSubCommands() {
				walk(sub)
				continue
			}
			name := strings.ReplaceAll(strings.TrimPrefix(sub.CommandPath(), "edgewire "), " ", "_")
			if !have[name] {
				t.Errorf("%s: no testdata/%s.golden", sub.CommandPath(), name)
			}
			if !have[name+"_json"] {
				t.Errorf("%s -o json: no testdata/%s_json.golden", sub.CommandPath(), name)
			}
		}
	}
	walk(newRoot(&globals{now: time.Now}))
}

// TestJSONZeroValues: -o json keeps false, 0, "" and empty lists (a
// consumer tells them from a field it does not know) and prints what does
// not apply as null.
func TestJSONZeroValues(t *testing.T) {
	f := newFixture(t)
	decode := func(args ...string) any {
		t.Helper()
		out, errOut, code := f.run(append(args, "-o", "json")...)
		if code != 0 {
			t.Fatalf("edgewire %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		var v any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("edgewire %s: %v", strings.Join(args, " "), err)
		}
		return v
	}
	find := func(list any, field, value string) map[string]any {
		t.Helper()
		for _, e := range list.([]any) {
			if m := e.(map[string]any); m[field] == value {
				return m
			}
		}
		t.Fatalf("no entry with %s %q", field, value)
		return nil
	}
	check := func(what string, m map[string]any, want map[string]any) {
		t.Helper()
		for k, w := range want {
			g, ok := m[k]
			if !ok {
				t.Errorf("%s: no field %q (want %v)", what, k, w)
				continue
			}
			if fmt.Sprint(g) != fmt.Sprint(w) {
				t.Errorf("%s: field %q is %v, want %v", what, k, g, w)
			}
		}
	}
	gamma := find(decode("nodes", "list"), "name", "gamma")
	check("nodes list gamma", gamma, map[string]any{"online": false, "endpoints": []any{}, "routes": []any{}, "tags": []any{},
		"last_seen": nil, "version": "", "kubernetes_node": "", "hostname": ""})
	tok := find(decode("token", "list"), "id", "reuse001")
	check("token list reuse001", tok, map[string]any{"expires": nil, "max_uses": 0, "revoked": false, "tags": []any{}})
	peers := decode("status").(map[string]any)["peers"]
	check("status old-laptop", find(peers, "name", "old-laptop"), map[string]any{"last_handshake": nil, "rx_bytes": 0, "routes": []any{},
		"last_known": false, "relay": "", "endpoint": "", "ice": nil, "online": false, "version": ""})
	stun := decode("netcheck").(map[string]any)["stun"]
	check("netcheck stun timeout", find(stun, "server", "relay-ams.example.net:3478"), map[string]any{"mapped": "", "rtt_ms": 0})
}

// TestRequests checks what the commands ask the coordinator for.
func TestRequests(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		create  *api.CreateTokenRequest
		approve *api.ApproveRoutesRequest
	}{
		{"token defaults", []string{"token", "create"}, &api.CreateTokenRequest{TtlSeconds: 86400}, nil},
		{"ttl rounded up to seconds", []string{"token", "create", "--ttl", "1500ms", "--uses", "2"}, &api.CreateTokenRequest{TtlSeconds: 2, Uses: 2}, nil},
		{"token never expires", []string{"token", "create", "--ttl", "0", "--reusable", "--tags", "a,b", "--routes", "10.42.0.0/16", "--kubernetes-node", "w1"},
			&api.CreateTokenRequest{Reusable: true, Tags: []string{"a", "b"}, Routes: []string{"10.42.0.0/16"}, KubernetesNode: "w1"}, nil},
		{"approve prefixes", []string{"nodes", "routes", "approve", "alpha", "10.43.0.0/24", "192.168.7.0/24"}, nil,
			&api.ApproveRoutesRequest{Name: "alpha", Approve: []string{"10.43.0.0/24", "192.168.7.0/24"}}},
		{"approve all", []string{"nodes", "routes", "approve", "alpha", "--all"}, nil, &api.ApproveRoutesRequest{Name: "alpha", All: true}},
		{"withdraw", []string{"nodes", "routes", "withdraw", "alpha", "10.42.0.0/24"}, nil, &api.ApproveRoutesRequest{Name: "alpha", Withdraw: []string{"10.42.0.0/24"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if _, errOut, code := f.run(tc.args...); code != 0 {
				t.Fatalf("exit %d, stderr %q; want 0", code, errOut)
			}
			creates, approves := f.admin.requests()
			checkOne(t, "CreateToken", creates, tc.create)
			checkOne(t, "ApproveRoutes", approves, tc.approve)
		})
	}
}

// checkOne checks that got is the one request want, or empty for nil.
func checkOne[M proto.Message](t *testing.T, rpc string, got []M, want M) {
	t.Helper()
	if !want.ProtoReflect().IsValid() {
		if len(got) != 0 {
			t.Errorf("%s: got %v, want no call", rpc, got)
		}
		return
	}
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("%s: got %v, want one call with %v", rpc, got, want)
	}
}

// TestErrors: refusals are one line on stderr (no usage); a command line
// that is wrong exits 2, a command that failed exits 1; nothing refused
// by the CLI reaches the coordinator.
func TestErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown flag", []string{"token", "list", "--bogus"}, 2, "edgewire: unknown flag: --bogus\n"},
		{"bad flag value", []string{"token", "create", "--uses", "many"}, 2, `edgewire: invalid argument "many" for "--uses" flag: strconv.ParseInt: parsing "many": invalid syntax` + "\n"},
		{"bad output", []string{"status", "-o", "yaml"}, 2, `edgewire: --output "yaml": want table or json` + "\n"},
		{"ttl under a second", []string{"token", "create", "--ttl", "500ms"}, 2, "edgewire: --ttl 500ms: want at least 1s (or 0 for a token that never expires)\n"},
		{"negative ttl", []string{"token", "create", "--ttl", "-1h"}, 2, "edgewire: --ttl -1h0m0s: must not be negative\n"},
		{"negative uses", []string{"token", "create", "--uses", "-1"}, 2, "edgewire: --uses -1: must not be negative\n"},
		{"approve nothing", []string{"nodes", "routes", "approve", "gamma"}, 2, "edgewire: give the prefixes to approve, or --all\n"},
		{"approve prefixes and all", []string{"nodes", "routes", "approve", "gamma", "192.168.10.0/24", "--all"}, 2, "edgewire: give the prefixes to approve, or --all\n"},
		{"approve a non-prefix", []string{"nodes", "routes", "approve", "gamma", "192.168.10.1"}, 2, `edgewire: "192.168.10.1": want a prefix like 10.42.0.0/16` + "\n"},
		{"withdraw nothing", []string{"nodes", "routes", "withdraw", "alpha"}, 2, "edgewire: requires at least 2 arg(s), only received 1\n"},
		{"delete nothing", []string{"nodes", "delete"}, 2, "edgewire: accepts 1 arg(s), received 0\n"},
		{"revoke two", []string{"token", "revoke", "a", "b", "-o", "json"}, 2, "edgewire: accepts 1 arg(s), received 2\n"},
		{"rpc error delete", []string{"nodes", "delete", "nosuch"}, 1, `edgewire: no node named "nosuch"` + "\n"},
		{"rpc error delete json", []string{"nodes", "delete", "nosuch", "-o", "json"}, 1, `edgewire: no node named "nosuch"` + "\n"},
		{"rpc error approve", []string{"nodes", "routes", "approve", "nosuch", "--all"}, 1, `edgewire: no node named "nosuch"` + "\n"},
		{"rpc error revoke", []string{"token", "revoke", "zzzz"}, 1, `edgewire: no token "zzzz"` + "\n"},
		{"rpc error revoke json", []string{"token", "revoke", "zzzz", "-o", "json"}, 1, `edgewire: no token "zzzz"` + "\n"},
		{"ping no such peer", []string{"ping", "-c", "1", "nosuch"}, 1, "edgewire: no such peer\n"},
		{"ping no such address", []string{"ping", "-c", "1", "100.64.0.99"}, 1, "edgewire: no such peer\n"},
		{"ping count", []string{"ping", "-c", "0", "db"}, 2, "edgewire: -c 0: want at least 1\n"},
		{"ping interval", []string{"ping", "-i", "1ms", "db"}, 2, "edgewire: --interval 1ms: want at least 10ms\n"},
		{"ping nothing", []string{"ping"}, 2, "edgewire: accepts 1 arg(s), received 0\n"},
		{"ping never direct", []string{"ping", "-c", "1", "--until-direct", "cam-7"}, 1, "edgewire: no direct path to cam-7 after 1 pings\n"},
		{"unknown command", []string{"nodez"}, 2, `edgewire: unknown command "nodez" for "edgewire" (did you mean nodes?)` + "\n"},
		{"unknown command, no suggestion", []string{"frobnicate"}, 2, `edgewire: unknown command "frobnicate" for "edgewire" (see edgewire --help)` + "\n"},
		{"unknown subcommand", []string{"nodes", "lst"}, 2, `edgewire: unknown command "lst" for "edgewire nodes" (did you mean list?)` + "\n"},
		{"unknown subcommand json", []string{"nodes", "lst", "-o", "json"}, 2, `edgewire: unknown command "lst" for "edgewire nodes" (did you mean list?)` + "\n"},
		{"unknown token subcommand", []string{"token", "revok", "valid001"}, 2, `edgewire: unknown command "revok" for "edgewire token" (did you mean revoke?)` + "\n"},
		{"unknown routes subcommand", []string{"nodes", "routes", "aprove", "alpha"}, 2, `edgewire: unknown command "aprove" for "edgewire nodes routes" (did you mean approve?)` + "\n"},
		{"argument to a leaf", []string{"status", "db"}, 2, `edgewire: unknown command "db" for "edgewire status" (it takes no arguments)` + "\n"},
		{"argument to nodes list", []string{"nodes", "list", "alpha"}, 2, `edgewire: unknown command "alpha" for "edgewire nodes list" (it takes no arguments)` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := f.run(tc.args...)
			if code != tc.code || errOut != tc.stderr {
				t.Errorf("edgewire %s: got exit %d, stderr %q; want exit %d, stderr %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.stderr)
			}
			if tc.code == 2 && out != "" {
				t.Errorf("edgewire %s: printed %q on stdout for a usage error, want nothing", strings.Join(tc.args, " "), out)
			}
			if strings.Contains(errOut, "Usage:") {
				t.Errorf("stderr carries the usage:\n%s", errOut)
			}
		})
	}
	creates, approves := f.admin.requests()
	if len(creates) != 0 {
		t.Errorf("refused token creates reached the coordinator: %v", creates)
	}
	if len(approves) != 1 || approves[0].GetName() != "nosuch" {
		t.Errorf("route approvals that reached the coordinator: got %v, want only the one for nosuch", approves)
	}
}

// TestGroupAlone: a command that only groups others, run alone, prints
// its help and succeeds (asking for it is not an error).
func TestGroupAlone(t *testing.T) {
	f := newFixture(t)
	for _, args := range [][]string{{}, {"nodes"}, {"token"}, {"nodes", "routes"}} {
		out, errOut, code := f.run(args...)
		if code != 0 || errOut != "" || !strings.Contains(out, "Available Commands:") {
			t.Errorf("edgewire %s: got exit %d, stderr %q, stdout %q; want 0 and the help", strings.Join(args, " "), code, errOut, out)
		}
	}
}

// TestLostPing: a lost reply is shown with the path it was sent on, and
// no reply at all is an error.
func TestLostPing(t *testing.T) {
	f := newFixture(t)
	out, errOut, code := f.run("ping", "-c", "1", "lossy")
	wantOut := "no reply from lossy (path relay via fra): no reply within 2s\n"
	if code != 1 || out != wantOut || errOut != "edgewire: no replies from lossy\n" {
		t.Errorf("got exit %d, stdout %q, stderr %q; want 1, %q, %q", code, out, errOut, wantOut, "edgewire: no replies from lossy\n")
	}
}

// TestNoServers: without a coordinator socket or an agent the CLI says
// where it looked.
func TestNoServers(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nodes", "list", "--admin-socket", filepath.Join(dir, "admin.sock")},
			fmt.Sprintf("edgewire: no coordinator admin socket at %s (run on the coordinator host, pass --admin-socket, or use --coordinator with --admin-token-file)\n", filepath.Join(dir, "admin.sock"))},
		{[]string{"token", "list", "--coordinator", "coord:7443"}, "edgewire: --coordinator needs --admin-token-file and --ca-file\n"},
		{[]string{"status", "--socket", filepath.Join(dir, "agent.sock")},
			fmt.Sprintf("edgewire: cannot reach the agent at %s (is edgewire-agent running? use --socket)", filepath.Join(dir, "agent.sock"))},
	} {
		var out, errOut bytes.Buffer
		code := run(tc.args, &out, &errOut, func() time.Time { return now })
		if code != 1 || out.Len() != 0 || !strings.HasPrefix(errOut.String(), tc.want) {
			t.Errorf("edgewire %s: got exit %d, stdout %q, stderr %q; want 1, nothing, %q", strings.Join(tc.args, " "), code, out.String(), errOut.String(), tc.want)
		}
	}
}
