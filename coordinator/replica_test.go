package coordinator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/internal/kubetest"
	"github.com/edgewire/edgewire/internal/logging/logtest"
	"github.com/edgewire/edgewire/node/control"
	"github.com/edgewire/edgewire/node/identity"
	"github.com/edgewire/edgewire/types/key"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// replica is one coordinator replica run in process.
type replica struct {
	cfg    Config
	cancel context.CancelFunc
	done   chan error
}

func startReplica(t *testing.T, api *kubetest.API, ns, id string) *replica {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		DataDir:       dir,
		Listen:        freePort(t),
		Prefixes:      testConfig(t).Prefixes,
		TicketTTL:     10 * time.Minute,
		MetricsListen: freePort(t),
		Logger:        logtest.New(t).With("replica", id),
		Replication: &Replication{Kube: api.Config(t, nil), Namespace: ns, Identity: id,
			LeaseName: "edgewire-coordinator", LeaseDuration: 2 * time.Second},
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, cfg) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *replica) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("replica %s: Run: %v", r.cfg.Replication.Identity, err)
		}
	case <-time.After(timeout):
		t.Errorf("replica %s did not stop", r.cfg.Replication.Identity)
	}
}

// readyz returns the replica's /readyz status and body.
func (r *replica) readyz() (int, string) {
	resp, err := http.Get("http://" + r.cfg.MetricsListen + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func waitReady(t *testing.T, r *replica, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		code, body := r.readyz()
		if code == 200 {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("replica %s not ready after %s: %d %s", r.cfg.Replication.Identity, d, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func join(t *testing.T, addr, token, name string) (*api.JoinResponse, error) {
	t.Helper()
	priv, err := key.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, resp, err := control.Join(ctx, control.JoinRequest{Coordinator: addr, Token: token, PrivateKey: priv, Name: name, Hostname: name})
	return resp, err
}

// TestReplicas runs two coordinator replicas on a real API server: one
// leads and serves, the other stands by not ready; a join token made on
// the leader works on the standby once it takes over (the CA and the
// store are shared), and addresses continue where the first left off.
func TestReplicas(t *testing.T) {
	kapi := kubetest.Start(t)
	_, dyn := kapi.Clients(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, dyn); err != nil {
		t.Fatal(err)
	}
	ns := kapi.Namespace(t)
	r1 := startReplica(t, kapi, ns, "r1")
	waitReady(t, r1, 20*time.Second)
	r2 := startReplica(t, kapi, ns, "r2")
	time.Sleep(3 * time.Second) // longer than the lease: r2 must still wait
	if code, body := r2.readyz(); code != 503 || body != `not ready: standby replica; the leader is "r1"` {
		t.Errorf("standby /readyz: %d %q", code, body)
	}
	if c, err := net.DialTimeout("tcp", r2.cfg.Listen, time.Second); err == nil {
		c.Close()
		t.Error("the standby accepts agent connections")
	}

	conn := dialAdmin(t, filepath.Join(r1.cfg.DataDir, AdminSocket), r1.done)
	tok, err := api.NewAdminClient(conn).CreateToken(ctx, &api.CreateTokenRequest{Uses: 3, TtlSeconds: 3600})
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := join(t, r1.cfg.Listen, tok.GetToken(), "one")
	if err != nil {
		t.Fatal(err)
	}
	first := resp.GetSelf().GetAddresses()

	r1.stop(t)
	if took := waitReady(t, r2, 10*time.Second); took > 2*time.Second {
		t.Errorf("r2 ready %s after r1 stopped; want at once (a clean stop releases the lease)", took)
	}
	resp, err = join(t, r2.cfg.Listen, tok.GetToken(), "two")
	if err != nil {
		t.Fatalf("join on the new leader with the old leader's token: %v", err)
	}
	if got := resp.GetSelf().GetAddresses(); len(got) != 1 || len(first) != 1 || got[0] == first[0] {
		t.Errorf("addresses: first node %v, second %v; want one each, different", first, got)
	}
	for _, f := range []string{"pki/ca.crt", TicketKeyFile, AdminTokenFile} {
		a, err1 := os.ReadFile(filepath.Join(r1.cfg.DataDir, f))
		b, err2 := os.ReadFile(filepath.Join(r2.cfg.DataDir, f))
		if err1 != nil || err2 != nil || string(a) != string(b) {
			t.Errorf("%s differs between the replicas (%v, %v)", f, err1, err2)
		}
	}
	if _, err := join(t, r2.cfg.Listen, tok.GetToken(), "one"); err == nil || !strings.Contains(err.Error(), "taken") {
		t.Errorf("joining as a name the first leader gave out: got %v, want it taken", err)
	}
}

// TestMigrate moves a lone coordinator's bbolt store into the Kubernetes
// store: a replica then serves the same nodes with the same names, keys
// and addresses, an enrolled node's stream comes up without joining
// again, and the old token still joins (the CA moved too).
func TestMigrate(t *testing.T) {
	kapi := kubetest.Start(t)
	_, dyn := kapi.Clients(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, dyn); err != nil {
		t.Fatal(err)
	}
	// A lone coordinator with two nodes and a reusable token.
	lone := testConfig(t)
	lone.Listen, lone.STUNListen, lone.RelayListen, lone.Services = freePort(t), "", "", nil
	lctx, lcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(lctx, lone) }()
	conn := dialAdmin(t, filepath.Join(lone.DataDir, AdminSocket), done)
	admin := api.NewAdminClient(conn)
	tok, err := admin.CreateToken(ctx, &api.CreateTokenRequest{Reusable: true, TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	privs := map[string]key.Private{}
	var enrolled identity.Enrolment
	for _, name := range []string{"one", "two"} {
		priv, _ := key.NewPrivate()
		privs[name] = priv
		e, _, err := control.Join(ctx, control.JoinRequest{Coordinator: lone.Listen, Token: tok.GetToken(), PrivateKey: priv, Name: name, Hostname: name})
		if err != nil {
			t.Fatal(err)
		}
		enrolled = e
	}
	before, err := admin.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	lcancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	ns := kapi.Namespace(t)
	repl := &Replication{Kube: kapi.Config(t, nil), Namespace: ns, LeaseName: "edgewire-coordinator"}
	res, err := Migrate(ctx, Config{DataDir: lone.DataDir, Replication: repl, Logger: logtest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Nodes != 2 || res.Tokens != 1 {
		t.Errorf("migrated %+v, want 2 nodes and 1 token", res)
	}
	if _, err := Migrate(ctx, Config{DataDir: lone.DataDir, Replication: repl, Logger: logtest.New(t)}); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("second migration into the same namespace: got %v, want a refusal", err)
	}

	r := startReplica(t, kapi, ns, "r1")
	waitReady(t, r, 20*time.Second)
	conn = dialAdmin(t, filepath.Join(r.cfg.DataDir, AdminSocket), r.done)
	defer conn.Close()
	after, err := api.NewAdminClient(conn).ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	type nodeID struct{ name, key, addrs string }
	ids := func(ns []*api.Node) (out []nodeID) {
		for _, n := range ns {
			out = append(out, nodeID{n.GetName(), fmt.Sprint(n.GetPublicKey()), fmt.Sprint(n.GetAddresses())})
		}
		return out
	}
	if b, a := ids(before.GetNodes()), ids(after.GetNodes()); !slices.Equal(b, a) {
		t.Errorf("nodes before the migration %v, after %v", b, a)
	}

	// The last enrolled node connects to the replica as it is.
	enrolled.Coordinator = r.cfg.Listen
	maps := make(chan struct{}, 1)
	c, err := control.New(control.Config{Enrolment: enrolled, PrivateKey: privs["two"], OnMap: func(*api.NetworkMap) error {
		select {
		case maps <- struct{}{}:
		default:
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(cctx) }()
	select {
	case <-maps:
	case <-time.After(15 * time.Second):
		t.Error("the migrated node got no map from the replica within 15 s")
	}
	ccancel()
	<-cdone
	if _, err := join(t, r.cfg.Listen, tok.GetToken(), "three"); err != nil {
		t.Errorf("the lone coordinator's token on the replica: %v", err)
	}
}
