package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

const haNS = "edgewire"

// haMetricsPort is each replica's metrics listener, on its own host.
const haMetricsPort = 9464

// haKube is the API server of the HA lab, reachable from every lab host.
type haKube struct {
	*cluster.Kube
	cs  kubernetes.Interface
	dyn dynamic.Interface
}

func startHAKube(t *testing.T, l *lab.Lab, h *lab.Host) *haKube {
	t.Helper()
	k := &haKube{Kube: cluster.StartKube(t, l, h, cluster.KubeOptions{OnHostAddr: true})}
	var err error
	if k.cs, err = kubernetes.NewForConfig(k.Config); err != nil {
		t.Fatal(err)
	}
	if k.dyn, err = dynamic.NewForConfig(k.Config); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	mustKube(t, "install the CRDs", func() error { return kubestore.InstallCRDs(ctx, k.dyn) })
	mustKube(t, "create namespace", func() error {
		_, err := k.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: haNS}}, metav1.CreateOptions{})
		return err
	})
	return k
}

// leaseHolder reads the coordinators' Lease: holder and transitions.
func (k *haKube) leaseHolder(ctx context.Context) (string, int32, error) {
	l, err := k.cs.CoordinationV1().Leases(haNS).Get(ctx, "edgewire-coordinator", metav1.GetOptions{})
	if err != nil {
		return "", 0, err
	}
	holder, trans := "", int32(0)
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if l.Spec.LeaseTransitions != nil {
		trans = *l.Spec.LeaseTransitions
	}
	return holder, trans, nil
}

// haLab is three coordinator replicas on the Kubernetes store, a
// standalone relay with STUN (the replicas run neither), and agents that
// know all three replicas.
type haLab struct {
	l        *lab.Lab
	kube     *haKube
	replicas []*cluster.Coordinator
	relay    *cluster.Relay
	addrs    string // every replica's host:port
}

func startHALab(t *testing.T, l *lab.Lab) *haLab {
	t.Helper()
	h := &haLab{l: l}
	h.kube = startHAKube(t, l, l.AddPublicHost("kube"))
	relayHost := l.AddPublicHost("relay")
	h.relay = cluster.NewRelay(t, l, relayHost)
	relayMap := filepath.Join(l.Dir(), "relaymap.json")
	rm := fmt.Sprintf(`{"regions":[{"id":2,"name":"r2","host":%q,"port":%d,"key":%q,"stun_port":3478}]}`,
		relayHost.IP(), cluster.RelayPort, h.relay.Key)
	if err := os.WriteFile(relayMap, []byte(rm), 0o644); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for i := range 3 {
		id := fmt.Sprintf("c%d", i+1)
		c := cluster.StartCoordinatorWith(t, l, l.AddPublicHost(id), cluster.CoordinatorOptions{Replica: true, Extra: []string{
			"--store", "kubernetes", "--kubeconfig", h.kube.Kubeconfig, "--store-namespace", haNS, "--replica-id", id,
			"--lease-duration", "4s", "--relay-listen", "", "--stun-listen", "", "--relay-map", relayMap,
			"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", haMetricsPort),
		}})
		// Stop replicas before the API server (cleanups run last first).
		t.Cleanup(func() { c.Proc.Stop(5 * time.Second) })
		h.replicas = append(h.replicas, c)
		addrs = append(addrs, c.Addr())
		if i == 0 {
			// The first replica creates the shared keys; the relay takes
			// the ticket key from them.
			h.waitLeader(t, 30*time.Second)
			h.relay.StartWith(cluster.RelayOptions{TicketKey: c.TicketKeyFile()})
		}
	}
	h.addrs = strings.Join(addrs, ",")
	return h
}

// waitLeader waits until exactly one replica serves and returns it.
func (h *haLab) waitLeader(t *testing.T, d time.Duration) *cluster.Coordinator {
	t.Helper()
	var leader *cluster.Coordinator
	err := lab.Eventually(d, 50*time.Millisecond, func() error {
		var serving []*cluster.Coordinator
		for _, c := range h.replicas {
			if c.Serving() {
				serving = append(serving, c)
			}
		}
		if len(serving) != 1 {
			return fmt.Errorf("%d replicas serve, want 1", len(serving))
		}
		leader = serving[0]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return leader
}

// fastPinger pings every 50 ms; lost counts the sequence numbers without
// a reply between the first and the last reply.
type fastPinger struct{ proc *lab.Process }

func startFastPinger(t *testing.T, h *lab.Host, to netip.Addr, d time.Duration) *fastPinger {
	t.Helper()
	p, err := h.Start("fastping-"+to.String(), nil, "ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", strconv.Itoa(int(d.Seconds())), to.String())
	if err != nil {
		t.Fatal(err)
	}
	return &fastPinger{proc: p}
}

var replySeq = regexp.MustCompile(`(?m)^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+)`)

// lost checks the replies over [from, to]: it returns an error unless a
// reply came within 200 ms of each end and no sequence number between
// the first and the last reply went unanswered.
func (p *fastPinger) lost(from, to time.Time) (got int, err error) {
	seen := map[int]bool{}
	lo, hi := -1, -1
	var first, last time.Time
	for _, m := range replySeq.FindAllStringSubmatch(p.proc.Log(), -1) {
		f, _ := strconv.ParseFloat(m[1], 64)
		at := time.Unix(0, int64(f*1e9))
		if at.Before(from.Add(-200*time.Millisecond)) || at.After(to.Add(200*time.Millisecond)) {
			continue
		}
		if first.IsZero() {
			first = at
		}
		last = at
		n, _ := strconv.Atoi(m[2])
		seen[n] = true
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	var missing []int
	for n := lo; lo >= 0 && n <= hi; n++ {
		if !seen[n] {
			missing = append(missing, n)
		}
	}
	switch {
	case len(seen) == 0:
		return 0, errors.New("no replies")
	case first.Sub(from) > 200*time.Millisecond || to.Sub(last) > 200*time.Millisecond:
		return len(seen), fmt.Errorf("replies only from %s to %s of the %s checked", first.Sub(from).Round(time.Millisecond), last.Sub(from).Round(time.Millisecond), to.Sub(from))
	case len(missing) > 0:
		return len(seen), fmt.Errorf("%d lost: sequence numbers %v", len(missing), missing)
	}
	return len(seen), nil
}

// TestHACoordinator runs three coordinator replicas on the Kubernetes
// store (a real kube-apiserver and etcd) with four agents behind NATs,
// direct and relayed pairs, and kills the serving replica with SIGKILL:
// no ping between established pairs is lost, every agent is back on a
// stream within 15 s, a new node joins within 20 s, and a direct path cut
// afterwards is handled (signalling works through the new leader). Then
// the API server stops for 60 s: streams stay up, pings flow, a join is
// refused with a clear error, and on its return everything resumes with
// the same leader and no restart.
func TestHACoordinator(t *testing.T) {
	lab.Require(t)
	start := time.Now()
	phase := func(name string) { t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name) }
	l := lab.New(t)
	h := startHALab(t, l)
	leader := h.waitLeader(t, 30*time.Second)
	phase("three replicas up, " + leader.Host.Name() + " leads")

	sa, sb, sc, sd := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM), l.AddSite("sc", lab.NATSymmetric), l.AddSite("sd", lab.NATEIM)
	node := func(name string, kind natKind, s *lab.Site) *natNode {
		return &natNode{name: name, spot: natSpot{kind, s.Router().Name()}, host: s.AddNode(name), nats: []*lab.Site{s}}
	}
	a, b, c, d := node("a", natEIM, sa), node("b", natEIM, sb), node("c", natSym, sc), node("d", natEIM, sd)
	nodes := []*natNode{a, b, c, d}
	tok := leader.Token("--uses", "4")
	for _, n := range nodes {
		n.agent = cluster.StartAgent(t, l, n.host, leader, n.name, cluster.AgentOptions{Token: tok, Coordinator: h.addrs})
	}
	for _, n := range nodes {
		st := n.agent.WaitPeers(len(nodes)-1, 30*time.Second)
		n.overlay = netip.MustParseAddr(st.Self.Addresses[0])
	}
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	phase("a-b direct, c relayed")

	lateTok, reuseTok := leader.Token(), leader.Token("--reusable")
	direct := startFastPinger(t, a.host, b.overlay, 40*time.Second)
	relayed := startFastPinger(t, a.host, c.overlay, 40*time.Second)
	time.Sleep(2 * time.Second)

	leader.Proc.Kill()
	killed := time.Now()
	phase("leader " + leader.Host.Name() + " killed")
	e := node("e", natEIM, l.AddSite("se", lab.NATEIM))
	e.agent = cluster.StartAgent(t, l, e.host, leader, e.name, cluster.AgentOptions{Token: lateTok, Coordinator: h.addrs})

	t.Run("a standby takes over and every agent is back on a stream within 15 s", func(t *testing.T) {
		next := h.waitLeader(t, 15*time.Second)
		phase(fmt.Sprintf("%s leads, %.1f s after the kill", next.Host.Name(), time.Since(killed).Seconds()))
		for _, n := range nodes {
			if err := n.agent.WaitConnected(15*time.Second - time.Since(killed)); err != nil {
				t.Errorf("%s not on a stream %.1f s after the kill: %v", n.name, time.Since(killed).Seconds(), err)
			}
		}
		phase(fmt.Sprintf("all four agents on a stream, %.1f s after the kill", time.Since(killed).Seconds()))
		// They held the map the new leader has (presence carried over),
		// so none fetched it whole: the first map each got says current,
		// or patches the few buckets that changed.
		out, err := scrape(next.Host, fmt.Sprintf("127.0.0.1:%d", haMetricsPort))
		if err != nil {
			t.Fatal(err)
		}
		current, _ := metricSum(out, "edgewire_coordinator_first_maps_total", `kind="current"`)
		patched, _ := metricSum(out, "edgewire_coordinator_first_maps_total", `kind="patch"`)
		resumed := current + patched
		if resumed < float64(len(nodes)) {
			t.Errorf("the new leader resumed %v streams without a full map, want the %d established agents:\n%s", resumed, len(nodes), grepLines(out, "first_maps"))
		}
	})
	t.Run("a new node joins within 20 s of the kill", func(t *testing.T) {
		st := e.agent.WaitPeers(len(nodes), 20*time.Second-time.Since(killed))
		e.overlay = netip.MustParseAddr(st.Self.Addresses[0])
		phase(fmt.Sprintf("e joined and sees its %d peers, %.1f s after the kill", len(st.Peers), time.Since(killed).Seconds()))
	})
	t.Run("no ping lost between established pairs", func(t *testing.T) {
		time.Sleep(time.Until(killed.Add(20 * time.Second)))
		for name, p := range map[string]*fastPinger{"a -> b (direct)": direct, "a -> c (relayed)": relayed} {
			got, err := p.lost(killed.Add(-time.Second), killed.Add(20*time.Second))
			p.proc.Stop(2 * time.Second)
			if err != nil {
				t.Errorf("%s, from 1 s before the kill to 20 s after: %d replies at 50 ms: %v", name, got, err)
			} else {
				t.Logf("%s: %d replies from 1 s before the kill to 20 s after, none lost", name, got)
			}
		}
	})
	all := append(slices.Clone(nodes), e)
	t.Run("a direct path cut after the failover moves to the relay and back", func(t *testing.T) {
		rules := [][]string{
			{"FORWARD", "-p", "udp", "-d", sb.PublicIP().String(), "-j", "DROP"},
			{"FORWARD", "-p", "udp", "-s", sb.PublicIP().String(), "-j", "DROP"},
		}
		for _, r := range rules {
			sa.Router().MustExec(t, append([]string{"iptables", "-w", "-I"}, r...)...)
		}
		pairPath := func(want string, within time.Duration) {
			t.Helper()
			err := lab.Eventually(within, 250*time.Millisecond, func() error {
				snap, err := takeSnapshot([]*natNode{a, b})
				if err != nil {
					return err
				}
				if p, q := snap.path(a, b), snap.path(b, a); p != want || q != want {
					return fmt.Errorf("a sees b %s, b sees a %s; want %s", p, q, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		pairPath("relay", 30*time.Second)
		phase("a-b cut: relay")
		for _, r := range rules {
			sa.Router().MustExec(t, append([]string{"iptables", "-w", "-D"}, r...)...)
		}
		pairPath("direct", 30*time.Second)
		phase("a-b healed: direct again")
	})
	if t.Failed() {
		return
	}

	t.Run("the API server away for 60 s", func(t *testing.T) {
		ctx := ctxT(t, 3*time.Minute)
		leader := h.waitLeader(t, 5*time.Second)
		holder, transitions, err := h.kube.leaseHolder(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pid := leader.Proc.Pid()
		p := startFastPinger(t, a.host, b.overlay, 75*time.Second)
		h.kube.Stop("kube-apiserver")
		down := time.Now()
		phase("API server stopped")
		time.Sleep(5 * time.Second)
		out, err := e.host.Exec(ctx, cluster.Bin(t, "edgewire-agent"), "join", "--state-dir", filepath.Join(l.Dir(), "late-join"),
			"--coordinator", h.addrs, "--token", reuseTok, "--name", "late")
		if err == nil || !strings.Contains(out+err.Error(), "cannot reach its store") {
			t.Errorf("join while the API server is away: %v: %s; want a refusal saying the store cannot be reached", err, out)
		}
		if _, err := leader.CLI("token", "create"); err == nil || !strings.Contains(err.Error(), "cannot reach its store") {
			t.Errorf("token create while the API server is away: %v; want a refusal saying the store cannot be reached", err)
		}
		time.Sleep(time.Until(down.Add(60 * time.Second)))
		if got, err := p.lost(down, time.Now()); err != nil {
			t.Errorf("a -> b while the API server was away: %d replies: %v", got, err)
		}
		for _, n := range all {
			if err := n.agent.WaitConnected(time.Second); err != nil {
				t.Errorf("%s lost its stream while the API server was away: %v", n.name, err)
			}
		}
		if err := h.kube.Start("kube-apiserver"); err != nil {
			t.Fatal(err)
		}
		phase("API server back")
		var now string
		err = lab.Eventually(60*time.Second, 500*time.Millisecond, func() error {
			var err error
			if now, _, err = h.kube.leaseHolder(ctx); err != nil {
				return err
			}
			_, err = leader.CLI("token", "create")
			return err
		})
		if err != nil {
			t.Fatalf("writes did not resume within 60 s of the API server's return: %v", err)
		}
		phase("writes resume")
		p.proc.Stop(2 * time.Second)
		_, transNow, _ := h.kube.leaseHolder(ctx)
		if now != holder || transNow != transitions || leader.Proc.Exited() || leader.Proc.Pid() != pid {
			t.Errorf("after the outage: leader %q (transitions %d, exited %v), want %q (transitions %d) unchanged and running",
				now, transNow, leader.Proc.Exited(), holder, transitions)
		}
		if !h.replicas[0].Serving() && !h.replicas[1].Serving() && !h.replicas[2].Serving() {
			t.Error("no replica serves after the outage")
		}
	})
}
