//go:build bench

package bench

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// benchPodNet measures the agent's pod networking and the node-forwarded
// Service path on one direct pair behind two EIM NATs: pod to pod against
// node to node over the overlay, a ClusterIP whose endpoint is reached
// through its node's agent (a runtime bridge's unroutable 172.17.0.2)
// against one whose endpoint is a routed pod IP, and the latency of a CNI
// ADD (cnitool running bridge, host-local and portmap from the agent's
// configuration). Both pairs of numbers come from the same run, the two
// sides of each alternating.
func benchPodNet(t *testing.T, rep *Report, cfg config) {
	sec := "Pod networking and node-forwarded Services (one direct pair, two EIM NATs)"
	cnitool := lab.CNITool(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	svcFile := filepath.Join(l.Dir(), "services.json")
	writeSvcs := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(svcFile+".tmp", b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(svcFile+".tmp", svcFile); err != nil {
			t.Fatal(err)
		}
	}
	writeSvcs(map[string]any{"services": []any{}})
	coord := cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{Extra: append([]string{"--services-file", svcFile}, quiet...)})
	sa, sb := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM)
	ha, hb := sa.AddNode("a"), sb.AddNode("b")
	cidr := map[string]string{"a": "10.246.1.0/24", "b": "10.246.2.0/24"}
	agents := map[string]*cluster.Agent{}
	for name, h := range map[string]*lab.Host{"a": ha, "b": hb} {
		// The admin vouches for the node's Kubernetes name (endpoints name
		// it) and allows its pod CIDR.
		tok := coord.Token("--kubernetes-node", name, "--routes", cidr[name])
		agents[name] = cluster.StartAgent(t, l, h, coord, name, cluster.AgentOptions{Token: tok, Extra: append([]string{
			"--advertise-routes", cidr[name], "--pod-network", "cni",
			"--cni-conf-dir", filepath.Join(l.Dir(), name+"-net.d"), "--cni-ipam-dir", filepath.Join(l.Dir(), name+"-ipam"),
		}, quiet...)})
	}
	a, b := agents["a"], agents["b"]
	a.WaitPeers(1, 45*time.Second)
	b.WaitPeers(1, 45*time.Second)
	if err := lab.Eventually(60*time.Second, 200*time.Millisecond, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if len(st.Peers) != 1 || st.Peers[0].Path != "direct" || len(st.Peers[0].Routes) == 0 {
			return fmt.Errorf("a's peer: %+v", st.Peers)
		}
		_, err = os.Stat(filepath.Join(l.Dir(), "b-net.d", "90-edgewire.conflist"))
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// CNI ADD latency: ten pods on a, as a runtime starts them.
	var add []float64
	var podA *lab.Host
	for i := range 10 {
		t0 := time.Now()
		p := ha.AddCNIPod(fmt.Sprintf("pa%d", i), cnitool, "edgewire", filepath.Join(l.Dir(), "a-net.d"))
		add = append(add, time.Since(t0).Seconds()*1e3)
		if podA == nil {
			podA = p
		}
	}
	podB := hb.AddCNIPod("pb", cnitool, "edgewire", filepath.Join(l.Dir(), "b-net.d"))
	dock := hb.AddPod("dock", netip.MustParsePrefix("172.17.0.0/16")) // a runtime's own bridge: 172.17.0.2
	rep.Add(&Measure{Section: sec, Name: "CNI ADD of a pod (cnitool: bridge, host-local, portmap)", Unit: "ms", Edgewire: add})

	srvs := map[string]*iperfServer{}
	for _, h := range []*lab.Host{hb, podB, dock} {
		s, err := startIperfServer(h)
		if err != nil {
			t.Fatal(err)
		}
		srvs[h.Name()] = s
	}
	l3IP, fwdIP := "10.96.210.1", "10.96.210.2"
	svc := func(name, ip string, ep netip.Addr) map[string]any {
		return map[string]any{"namespace": "bench", "name": name, "cluster_ips": []string{ip},
			"ports":     []any{map[string]any{"name": "iperf", "protocol": "TCP", "port": iperfPort}},
			"endpoints": []any{map[string]any{"addresses": []string{ep.String()}, "node_name": "b", "ports": map[string]int{"iperf": iperfPort}}}}
	}
	writeSvcs(map[string]any{"services": []any{svc("l3", l3IP, podB.IP()), svc("fwd", fwdIP, dock.IP())}})
	if err := lab.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		sv, err := a.Services()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, e := range sv.Endpoints {
			got[e.Service] = e.Path
		}
		if got["bench/l3"] != "l3" || got["bench/fwd"] != "forward" {
			return fmt.Errorf("paths %v, want l3 and forward", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	f := flows[0]
	runs := []struct {
		name   string
		from   *lab.Host
		target string
		srv    *iperfServer
		out    []float64
	}{
		{"node to node", ha, b.OverlayIP().String(), srvs["b"], nil},
		{"pod to pod", podA, podB.IP().String(), srvs["pb"], nil},
		{"ClusterIP l3", ha, l3IP, srvs["pb"], nil},
		{"ClusterIP forward", ha, fwdIP, srvs["dock"], nil},
	}
	for r := range cfg.reps {
		for i := range runs {
			// Alternate the order within each pair of rows.
			x := &runs[i]
			if r%2 == 1 {
				x = &runs[i^1]
			}
			g, err := iperf(x.from, x.target, f, cfg.dur)
			if err != nil {
				t.Logf("rep %d %s: %v", r, x.name, err)
				x.srv.restart()
				continue
			}
			x.out = append(x.out, g)
		}
	}
	m := rep.Add(&Measure{Section: sec, Name: "iperf3 TCP 1 stream, pod to pod across nodes", Unit: "Gbit/s",
		Edgewire: runs[1].out, RefName: "node to node over the overlay", Reference: runs[0].out, Target: ">= 0.95x node to node"})
	if m.Ratio != 0 {
		m.Met = met(m.Ratio >= 0.95)
	}
	m = rep.Add(&Measure{Section: sec, Name: "iperf3 TCP 1 stream to a ClusterIP, endpoint reached through its node's agent", Unit: "Gbit/s",
		Edgewire: runs[3].out, RefName: "ClusterIP to a routed pod IP (l3)", Reference: runs[2].out, Target: ">= 0.5x l3"})
	if m.Ratio != 0 {
		m.Met = met(m.Ratio >= 0.5)
	}
	if sv, err := a.Services(); err == nil {
		rep.Note("Node-forwarded Services: agent a forwarded %d connections (%d failed); the forward path is two userspace splices (ingress on a, server on b) around the tunnel, the l3 path none.",
			sv.Forward.Out, sv.Forward.OutFailed)
	}
}
