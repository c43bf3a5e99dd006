package cli

import (
	"bytes"
	"context"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/edgewire/edgewire/api"
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

// nodes is the registry ListNodes shows.
func nodes() []*api.Node {
	return []*api.Node{
		{Name: "alpha", Addresses: []string{"100.64.0.1"}, Routes: []string{"10.42.0.0/24"}, PendingRoutes: []string{"10.43.0.0/24", "192.168.7.0/24"},
			Endpoints: []string{"203.0.113.10:51820", "192.168.1.10:51820"}, Online: true, LastSeenUnixMs: now.UnixMilli()},
		{Name: "beta", Addresses: []string{"100.64.0.2", "fd7a:115c:a1e0::2"}, Endpoints: []string{"198.51.100.4:41641"},
			LastSeenUnixMs: now.Add(-90*time.Second - 400*time.Millisecond).UnixMilli()},
		{Name: "gamma", Addresses: []string{"100.64.0.3"}, PendingRoutes: []string{"192.168.10.0/24"}},
		{Name: "worker-1", Addresses: []string{"100.64.0.4"}, Routes: []string{"10.42.1.0/24"}, KubernetesNode: "worker-1",
			Online: true, LastSeenUnixMs: now.Add(-time.Second).UnixMilli()},
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
				Online: true, Path: "direct", Endpoint: "198.51.100.23:51820", LastHandshake: now.Add(-12*time.Second - 300*time.Millisecond),
				RxBytes: 1536, TxBytes: 5 << 20,
				ICE: &localapi.ICEStatus{State: "connected", Local: &localapi.CandidateInfo{Type: "srflx", Address: "203.0.113.50:51820"},
					Remote: &localapi.CandidateInfo{Type: "host", Address: "198.51.100.23:51820"}, RTTMs: 4.25, Restarts: 1}},
			{Name: "cam-7", PublicKey: "q9H3nT0aZ7l2wV5xR8cK1mB4yU6eJ0sD2fG3hP5iL7o=", Addresses: []string{"100.64.0.9"},
				Online: true, Path: "relay", Relay: "fra", Endpoint: "127.77.0.2:1", LastHandshake: now.Add(-75 * time.Second),
				RxBytes: 512, TxBytes: 3 << 30,
				ICE: &localapi.ICEStatus{State: "checking", Restarts: 4}},
			{Name: "old-laptop", PublicKey: "b2Xc4Vn6Mm8Qq0Ww2Ee4Rr6Tt8Yy0Uu2Ii4Oo6Pp8A=", Addresses: []string{"100.64.0.10"},
				Path: "none"},
			// No relay and no coordinator: the endpoint that last worked.
			{Name: "gw-2", PublicKey: "c3Yd5Wo7Nn9Rr1Xx3Ff5Ss7Uu9Zz1Vv3Jj5Pp7Qq9B=", Addresses: []string{"100.64.0.12"},
				Path: "direct", LastKnown: true, Endpoint: "198.51.100.40:51820", LastHandshake: now.Add(-3 * time.Second)},
		},
	}, nil
}

// Ping answers db directly, cam-7 over relay fra, and loses lossy's reply.
func (fakeAgent) Ping(_ context.Context, peer string) (localapi.PingResult, error) {
	switch peer {
	case "db":
		return localapi.PingResult{Address: "100.64.0.8", Path: "direct", Endpoint: "198.51.100.23:51820", RTTMs: 4.125}, nil
	case "cam-7":
		return localapi.PingResult{Address: "100.64.0.9", Path: "relay", Relay: "fra", Endpoint: "127.77.0.2:1", RTTMs: 31.5}, nil
	case "lossy":
		return localapi.PingResult{Address: "100.64.0.11", Path: "relay", Relay: "fra"}, errors.New("no reply within 2s")
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

// run runs the CLI in process with the fixed clock.
func (f *fixture) run(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = run(append(slices.Clone(args), f.flags...), &out, &errOut, func() time.Time { return now })
	return out.String(), errOut.String(), code
}

// golden compares got with testdata/name.golden, or rewrites the file
// under -update.
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
		t.Errorf("output differs from %s (rerun with -update if the change is meant)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestGolden runs each command against the fakes and compares what it
// prints with testdata/<name>.golden; `go test ./cli -run TestGolden
// -update` rewrites those files.
func TestGolden(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"token_list", []string{"token", "list"}},
		{"token_create", []string{"token", "create"}},
		{"token_create_json", []string{"token", "create", "--ttl", "1h", "--uses", "3", "--tags", "edge,cam", "--routes", "10.42.0.0/16", "-o", "json"}},
		{"token_revoke", []string{"token", "revoke", "valid001"}},
		{"nodes_list", []string{"nodes", "list"}},
		{"nodes_delete", []string{"nodes", "delete", "beta"}},
		{"nodes_routes_list", []string{"nodes", "routes", "list"}},
		{"nodes_routes_approve", []string{"nodes", "routes", "approve", "alpha", "10.43.0.0/24"}},
		{"nodes_routes_approve_all", []string{"nodes", "routes", "approve", "gamma", "--all"}},
		{"nodes_routes_withdraw", []string{"nodes", "routes", "withdraw", "alpha", "10.42.0.0/24"}},
		{"status", []string{"status"}},
		{"status_json", []string{"status", "-o", "json"}},
		{"services", []string{"services"}},
		{"services_json", []string{"services", "-o", "json"}},
		{"ping", []string{"ping", "-c", "2", "-i", "10ms", "db"}},
		{"ping_relay_json", []string{"ping", "-c", "1", "cam-7", "-o", "json"}},
		{"netcheck", []string{"netcheck"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out, errOut, code := f.run(tc.args...)
			if code != 0 || errOut != "" {
				t.Fatalf("edgewire %s: exit %d, stderr %q; want 0 and nothing", strings.Join(tc.args, " "), code, errOut)
			}
			golden(t, tc.golden, out)
		})
	}
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

// TestErrors: refusals are one line on stderr (no usage) and exit 1, and
// nothing refused by the CLI reaches the coordinator.
func TestErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"unknown flag", []string{"token", "list", "--bogus"}, "edgewire: unknown flag: --bogus\n"},
		{"bad flag value", []string{"token", "create", "--uses", "many"}, `edgewire: invalid argument "many" for "--uses" flag: strconv.ParseInt: parsing "many": invalid syntax` + "\n"},
		{"bad output", []string{"status", "-o", "yaml"}, `edgewire: --output "yaml": want table or json` + "\n"},
		{"ttl under a second", []string{"token", "create", "--ttl", "500ms"}, "edgewire: --ttl 500ms: want at least 1s (or 0 for a token that never expires)\n"},
		{"negative ttl", []string{"token", "create", "--ttl", "-1h"}, "edgewire: --ttl -1h0m0s: must not be negative\n"},
		{"negative uses", []string{"token", "create", "--uses", "-1"}, "edgewire: --uses -1: must not be negative\n"},
		{"approve nothing", []string{"nodes", "routes", "approve", "gamma"}, "edgewire: give the prefixes to approve, or --all\n"},
		{"approve prefixes and all", []string{"nodes", "routes", "approve", "gamma", "192.168.10.0/24", "--all"}, "edgewire: give the prefixes to approve, or --all\n"},
		{"approve a non-prefix", []string{"nodes", "routes", "approve", "gamma", "192.168.10.1"}, `edgewire: "192.168.10.1": want a prefix like 10.42.0.0/16` + "\n"},
		{"withdraw nothing", []string{"nodes", "routes", "withdraw", "alpha"}, "edgewire: requires at least 2 arg(s), only received 1\n"},
		{"rpc error delete", []string{"nodes", "delete", "nosuch"}, `edgewire: no node named "nosuch"` + "\n"},
		{"rpc error approve", []string{"nodes", "routes", "approve", "nosuch", "--all"}, `edgewire: no node named "nosuch"` + "\n"},
		{"rpc error revoke", []string{"token", "revoke", "zzzz"}, `edgewire: no token "zzzz"` + "\n"},
		{"ping no such peer", []string{"ping", "-c", "1", "nosuch"}, "edgewire: no such peer\n"},
		{"ping count", []string{"ping", "-c", "0", "db"}, "edgewire: -c 0: want at least 1\n"},
		{"ping interval", []string{"ping", "-i", "1ms", "db"}, "edgewire: --interval 1ms: want at least 10ms\n"},
		{"ping never direct", []string{"ping", "-c", "1", "--until-direct", "cam-7"}, "edgewire: no direct path to cam-7 after 1 pings\n"},
		{"unknown command", []string{"nodez"}, "edgewire: unknown command \"nodez\" for \"edgewire\"\n\nDid you mean this?\n\tnodes\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := f.run(tc.args...)
			if code != 1 || errOut != tc.stderr {
				t.Errorf("edgewire %s: got exit %d, stderr %q; want exit 1, stderr %q", strings.Join(tc.args, " "), code, errOut, tc.stderr)
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
