package e2e

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestDemo is `make demo`: a coordinator with its embedded relay, four
// edge nodes behind different NATs, and a Service on one of them; it
// prints what a user would look at, then tears everything down. It also
// runs in `make test`, so the demo cannot rot.
func TestDemo(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }

	// The Service is declared in a services file (no Kubernetes needed):
	// web.demo -> a pod on edge-b.
	podCIDR := netip.MustParsePrefix("10.244.2.0/24")
	svcFile := filepath.Join(l.Dir(), "services.json")
	if err := os.WriteFile(svcFile, []byte(`{"services": [{"namespace": "demo", "name": "web",
		"cluster_ips": ["10.96.0.10"], "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
		"endpoints": [{"addresses": ["10.244.2.2"], "node_name": "edge-b", "ports": {"http": 8080}}]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: []string{"--services-file", svcFile}})
	say("== coordinator (with relay and STUN) on %s", coord.Addr())
	// Routes are routed only where the token allows them (or an admin
	// approves them): this one allows the pod network.
	tok := coord.Token("--uses", "4", "--ttl", "10m", "--routes", "10.244.0.0/16")
	say("== join token (routes within 10.244.0.0/16 approved): %s", tok)

	type node struct {
		name string
		nat  lab.NATKind
		args []string
	}
	nodes := []node{
		{"edge-a", lab.NATEIM, nil},
		{"edge-b", lab.NATEIM, []string{"--advertise-routes", podCIDR.String()}},
		{"edge-c", lab.NATSymmetric, nil},
		{"edge-d", lab.NATSymmetric, nil},
	}
	var agents []*cluster.Agent
	var b *lab.Host
	for i, n := range nodes {
		site := l.AddSite(fmt.Sprintf("site%d", i), n.nat)
		h := site.AddNode(strings.ReplaceAll(n.name, "-", ""))
		if n.name == "edge-b" {
			b = h
		}
		say("== %s behind a %s NAT (public %s)", n.name, n.nat, site.PublicIP())
		agents = append(agents, cluster.StartAgent(t, l, h, coord, n.name, cluster.AgentOptions{Token: tok, Extra: n.args}))
	}
	pod := b.AddPod("web", podCIDR)
	ln, err := pod.ListenTCP(netip.AddrPortFrom(pod.IP(), 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod web (%s) on edge-b\n", pod.IP())
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	for _, a := range agents {
		a.WaitPeers(len(agents)-1, 30*time.Second)
	}
	a := agents[0]
	// edge-a reaches edge-b directly (both NATs endpoint-independent) and
	// the symmetric ones through the relay.
	want := map[string]string{"edge-b": "direct", "edge-c": "relay", "edge-d": "relay"}
	err = lab.Eventually(40*time.Second, 250*time.Millisecond, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Path != want[p.Name] {
				return fmt.Errorf("%s path %s, want %s", p.Name, p.Path, want[p.Name])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("edge-a paths: %v", err)
	}
	for _, to := range agents[1:] {
		mustPing(t, a, to.OverlayIP(), 2)
	}
	out, err := coord.CLI("nodes", "list")
	if err != nil {
		t.Fatal(err)
	}
	say("\n$ edgewire nodes list   # on the coordinator\n%s", out)
	st, err := a.CLI("status")
	if err != nil {
		t.Fatal(err)
	}
	say("$ edgewire status   # on edge-a\n%s", st)
	wg := a.Host.MustExec(t, "wg", "show", a.Iface)
	say("$ wg show %s   # on edge-a\n%s", a.Iface, wg)
	if strings.Count(wg, "latest handshake") != len(agents)-1 {
		t.Fatalf("wg show: want %d peers with a handshake:\n%s", len(agents)-1, wg)
	}

	// curl by Service name: edge-a's resolver is the agent's DNS server.
	etc := filepath.Join("/etc/netns", a.Host.NS())
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 169.254.96.16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var body string
	err = lab.Eventually(20*time.Second, 500*time.Millisecond, func() error {
		body, err = a.Host.Exec(ctxT(t, 10*time.Second), "curl", "-sS", "--max-time", "5", "http://web.demo.svc.cluster.local/")
		return err
	})
	if err != nil {
		t.Fatalf("curl by Service name: %v", err)
	}
	say("$ curl http://web.demo.svc.cluster.local/   # on edge-a, across two NATs to a pod on edge-b\n%s", body)
	if !strings.Contains(body, "hello from pod web") {
		t.Fatalf("curl: got %q, want the pod's greeting", body)
	}
	say("== tearing down the lab")
}
