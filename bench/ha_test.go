//go:build bench

package bench

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgewire/edgewire/coordinator/store/kubestore"
	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/kube"
	"github.com/edgewire/edgewire/e2e/lab"
)

// benchHA runs two coordinator replicas on the Kubernetes store (a real
// kube-apiserver and etcd in a lab namespace) under 1,000 and 10,000
// simulated nodes: writes the API server takes at steady state, how fast
// one change reaches every stream, and how long after the leader is
// killed each node is back on a stream with a map.
func benchHA(t *testing.T, rep *Report, cfg config) {
	if _, err := raiseNoFile(65536); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE: %v", err)
	}
	sec := "Replicated coordinator (Kubernetes store: a real kube-apiserver and etcd, two replicas, simulated nodes)"
	l := lab.New(t)
	for i, n := range cfg.haScale {
		ok := t.Run(fmt.Sprintf("%d", n), func(t *testing.T) { haStep(t, l, rep, sec, i, n) })
		if !ok {
			rep.Note("replicated %d: the step failed (see the test log); larger steps were skipped.", n)
			break
		}
	}
}

// haReplicaPorts are the two replicas' agent ports on one host: the
// fleet's dialer tries both, as an agent tries every replica it knows.
var haReplicaPorts = []int{8443, 8444}

func haStep(t *testing.T, l *lab.Lab, rep *Report, sec string, i, n int) {
	h := l.AddPublicHost(fmt.Sprintf("ha%d", i))
	kc, cs, dyn := startBenchKube(t, l, h)
	ns := "edgewire"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kubestore.InstallCRDs(ctx, dyn); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var replicas []*lab.Process
	var socks []string
	start := func(r int) *lab.Process {
		dir := filepath.Join(l.Dir(), fmt.Sprintf("ha%d-r%d", i, r))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p, err := h.Start(fmt.Sprintf("coordinator-r%d-%d", r, time.Now().UnixNano()), nil, "bash", "-c", `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`,
			cluster.Bin(t, "edgewire-coordinator"), "--data-dir", dir, "--listen", fmt.Sprintf(":%d", haReplicaPorts[r]), "--log-level", "info",
			"--max-conns-per-source", "0", "--relay-listen", "", "--stun-listen", "", "--metrics-listen", "",
			"--store", "kubernetes", "--kubeconfig", kc.Kubeconfig, "--store-namespace", ns, "--replica-id", fmt.Sprintf("r%d", r))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		// BENCH_LOGS keeps the replicas' logs: where a failover's seconds
		// went (Lease taken, store loaded, serving).
		if dir := os.Getenv("BENCH_LOGS"); dir != "" {
			t.Cleanup(func() {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("ha-%d-r%d-%d.log", n, r, time.Now().UnixNano())), []byte(p.Log()), 0o644)
			})
		}
		return p
	}
	for r := range haReplicaPorts {
		replicas = append(replicas, start(r))
		socks = append(socks, filepath.Join(l.Dir(), fmt.Sprintf("ha%d-r%d", i, r), "admin.sock"))
		if r == 0 {
			waitServing(t, socks[:1], time.Minute) // the first creates the shared keys
		}
	}
	leader := waitServing(t, socks, time.Minute)
	tok := adminCLI(t, socks[leader], "token", "create", "--reusable")
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var last error
		for _, port := range haReplicaPorts {
			c, err := h.DialTCP(ctx, fmt.Sprintf("127.0.0.1:%d", port))
			if err == nil {
				return c, nil
			}
			last = err
		}
		return nil, last
	}
	f, err := newFleet(dial, "coordinator", tok)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nodes, err := f.newNodes(n)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := f.bringUp(nodes, 64, 15*time.Minute, nil); err != nil {
		t.Fatalf("bring up %d nodes on the Kubernetes store: %v", n, err)
	}
	upAll := time.Since(t0)
	f.quiesce(2*time.Second, 2*time.Minute)
	name := func(s string) string { return fmt.Sprintf("%d nodes: %s", n, s) }
	rep.Add(&Measure{Section: sec, Name: name("all joined and holding their first map"), Unit: "s", Edgewire: []float64{upAll.Seconds()},
		Note: "64 joins at a time; each join writes a token use, a node and its name and address claims"})

	// Steady state: every stream open, a hundred nodes changing their
	// endpoints every second (agents do on roaming), for 30 s.
	w0, err := apiWrites(kc)
	if err != nil {
		t.Fatal(err)
	}
	steady := 30 * time.Second
	end := time.Now().Add(steady)
	for k := 0; time.Now().Before(end); k++ {
		for _, nd := range nodes[:min(100, len(nodes))] {
			nd.setEndpoints(fmt.Sprintf("198.51.100.%d:%d", k%250+1, 40000+k%1000))
		}
		time.Sleep(time.Second)
	}
	w1, err := apiWrites(kc)
	if err != nil {
		t.Fatal(err)
	}
	wps := (w1 - w0) / steady.Seconds()
	rep.Add(&Measure{Section: sec, Name: name("API server writes at steady state"), Unit: "writes/s", Edgewire: []float64{wps},
		Target: "<= 10", Met: met(wps <= 10), Note: "apiserver_request_total, POST/PUT/PATCH/APPLY/DELETE, over 30 s with 100 nodes changing endpoints each second"})
	f.quiesce(time.Second, 30*time.Second)

	// Fan-out on the Kubernetes store: a join, then two endpoint updates.
	var p99s []float64
	for c := range 3 {
		var lat []float64
		if c == 0 {
			extra, err := f.newNode("late")
			if err != nil {
				t.Fatal(err)
			}
			lat, _, err = f.propagation(nodes, extra.pub, func() error { return f.join(extra) }, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
		} else {
			src := nodes[c]
			others := append(append([]*simNode{}, nodes[:c]...), nodes[c+1:]...)
			lat, _, err = f.propagation(others, src.pub, func() error { return src.setEndpoints(fmt.Sprintf("203.0.113.%d:%d", 100+c, 40000+c)) }, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
		}
		p99s = append(p99s, quantile(lat, 0.99))
		f.quiesce(time.Second, 30*time.Second)
	}
	rep.Add(&Measure{Section: sec, Name: name("one change reaches all, p99"), Unit: "ms", Edgewire: p99s,
		Target: "<= 1000", Met: met(median(p99s) <= 1000), Note: "per change: 1 join, 2 endpoint updates; compare the bbolt rows of the scale section"})

	// Failover: SIGKILL the leader; every node reconnects as an agent
	// does (a wait in [0.5, 1) s before each try) until it has a map.
	standby := replicas[1-leader]
	cm, err := startCPU(standby.Pid())
	if err != nil {
		t.Fatal(err)
	}
	h0 := selfCPU()
	current0, patched0 := f.current.Load(), f.patched.Load()
	killed := time.Now()
	replicas[leader].Kill()
	lat, err := f.resync(nodes, killed, 2*time.Minute)
	if err != nil {
		t.Logf("resync: %v", err)
	}
	took := quantile(lat, 1)
	newCores, _ := cm.cores()
	harnessCores := (selfCPU() - h0).Seconds() / time.Since(killed).Seconds()
	rep.Add(&Measure{Section: sec, Name: name("CPU from the kill until every node is back"), Unit: "cores", Edgewire: []float64{newCores},
		RefName: "harness", Reference: []float64{harnessCores},
		Note: "the new leader's, and the harness's own (10,000 TLS clients reading a full map each): they share the 2 cores with the API server and etcd"})
	rep.Add(&Measure{Section: sec, Name: name("leader killed -> node back on a stream with a map, p50"), Unit: "s", Edgewire: []float64{quantile(lat, 0.5)}})
	rep.Add(&Measure{Section: sec, Name: name("leader killed -> node back on a stream with a map, p99"), Unit: "s", Edgewire: []float64{quantile(lat, 0.99)},
		Target: "<= 30 s", Met: met(quantile(lat, 0.99) <= 30 && len(lat) == n), Note: fmt.Sprintf("%d of %d back: %d told their map is current, %d sent the few buckets that differ, the rest a full map; the last after %.1f s; lease 6 s",
			len(lat), n, f.current.Load()-current0, f.patched.Load()-patched0, took)})
	if len(lat) < n {
		return
	}

	// A rolling update: the killed replica comes back as a standby, then
	// the leader is stopped (SIGTERM); it saves the fleet's presence as it
	// stops and releases the Lease.
	f.quiesce(time.Second, time.Minute)
	killedIdx := leader
	leader = 1 - leader
	replicas[killedIdx] = start(killedIdx)
	time.Sleep(3 * time.Second) // the standby is up and watching the Lease
	current0, patched0 = f.current.Load(), f.patched.Load()
	stopped := time.Now()
	stopErr := make(chan error, 1)
	go func() { stopErr <- replicas[leader].Stop(30 * time.Second) }()
	lat, err = f.resync(nodes, stopped, 2*time.Minute)
	if err != nil {
		t.Logf("resync after the stop: %v", err)
	}
	if err := <-stopErr; err != nil {
		t.Logf("stop the leader: %v", err)
	}
	rep.Add(&Measure{Section: sec, Name: name("leader stopped (SIGTERM, a rolling update) -> node back on a stream with a map, p99"), Unit: "s",
		Edgewire: []float64{quantile(lat, 0.99)}, Target: "<= 30 s", Met: met(quantile(lat, 0.99) <= 30 && len(lat) == n),
		Note: fmt.Sprintf("%d of %d back: %d told their map is current, %d sent the few buckets that differ, the rest a full map; the last after %.1f s",
			len(lat), n, f.current.Load()-current0, f.patched.Load()-patched0, quantile(lat, 1))})
}

// waitServing waits until exactly one of the admin sockets exists (its
// replica serves) and returns its index.
func waitServing(t *testing.T, socks []string, d time.Duration) int {
	t.Helper()
	idx := -1
	err := lab.Eventually(d, 50*time.Millisecond, func() error {
		idx = -1
		for i, s := range socks {
			if _, err := os.Stat(s); err == nil {
				if idx >= 0 {
					return fmt.Errorf("two replicas serve")
				}
				idx = i
			}
		}
		if idx < 0 {
			return fmt.Errorf("no replica serves")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// resync waits for every node's stream to end, then reconnects each (a
// wait in [0.5, 1) s before every try, as agents do in their failover
// window) until its first map, and returns the seconds from since until
// then per node. At most 128 connects run at once (the harness's limit,
// not the coordinator's).
func (f *fleet) resync(nodes []*simNode, since time.Time, timeout time.Duration) ([]float64, error) {
	ctx, cancel := context.WithTimeout(f.ctx, timeout)
	defer cancel()
	var mu sync.Mutex
	var lat []float64
	var wg sync.WaitGroup
	// Each dial into the lab namespace holds an OS thread: bound how many
	// run at once (the process has 10,000 threads at most).
	dials := make(chan struct{}, 128)
	for _, n := range nodes {
		wg.Go(func() {
			select {
			case <-n.stream.Context().Done():
			case <-ctx.Done():
				return
			}
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(500*time.Millisecond + rand.N(500*time.Millisecond)):
				}
				n.gotMap = make(chan struct{})
				n.conn.ResetConnectBackoff()
				dials <- struct{}{}
				err := f.connect(n)
				<-dials
				if err != nil {
					continue
				}
				select {
				case <-n.gotMap:
					mu.Lock()
					lat = append(lat, time.Since(since).Seconds())
					mu.Unlock()
					return
				case <-n.stream.Context().Done():
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Wait()
	if len(lat) < len(nodes) {
		return lat, fmt.Errorf("%d of %d nodes not back within %v", len(nodes)-len(lat), len(nodes), timeout)
	}
	return lat, nil
}

// apiWrites sums the API server's write requests so far.
func apiWrites(kc *kube.Cluster) (float64, error) {
	resp, err := kc.HTTPClient().Get(kc.URL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		write := false
		// Server-side applies count as verb APPLY.
		for _, v := range []string{`verb="POST"`, `verb="PUT"`, `verb="PATCH"`, `verb="APPLY"`, `verb="DELETE"`} {
			write = write || strings.Contains(line, v)
		}
		if !write {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// startBenchKube runs etcd and kube-apiserver in h's namespace on h's
// address, so replicas on h reach it by the kubeconfig it writes.
func startBenchKube(t *testing.T, l *lab.Lab, h *lab.Host) (*kube.Cluster, kubernetes.Interface, dynamic.Interface) {
	t.Helper()
	k := cluster.StartKube(t, l, h, cluster.KubeOptions{OnHostAddr: true})
	cs, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	return k.Cluster, cs, dyn
}
