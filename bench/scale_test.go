//go:build bench

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/types/topoview"
)

// benchScale runs the coordinator binary in a lab namespace and brings up
// 1,000 / 5,000 / 10,000 simulated nodes (see fleet) over real TLS gRPC:
// time until all joined and hold their first map, how long one change
// takes to reach every stream, the coordinator's RSS and CPU, and the
// harness's own CPU so the bottleneck is visible.
func benchScale(t *testing.T, rep *Report, cfg config) {
	lim, err := raiseNoFile(65536)
	if err != nil {
		t.Fatalf("raise RLIMIT_NOFILE: %v", err)
	}
	rep.Config["nofile_limit"] = lim
	if top := slices.Max(cfg.scale); uint64(top)+1000 > lim {
		t.Fatalf("RLIMIT_NOFILE is %d here: too few for %d streams (one TCP connection each)", lim, top)
	}
	// The harness is 10,000 agents' worth of TLS and gRPC in one process,
	// and garbage collection was an eighth of its CPU at the default
	// GOGC: let its heap grow further between collections (a few GB on a
	// machine with 24), so that it does not take CPU the coordinator
	// needs.
	defer debug.SetGCPercent(debug.SetGCPercent(harnessGOGC))
	rep.Config["harness_gogc"] = harnessGOGC
	t.Run("topology view", func(t *testing.T) { benchTopologyView(t, rep, 10000) })
	sec := "Coordinator scale (simulated nodes over real TLS gRPC, coordinator in a lab namespace)"
	l := lab.New(t)
	for i, n := range cfg.scale {
		complete := false
		ok := t.Run(fmt.Sprintf("%d", n), func(t *testing.T) { complete = scaleStep(t, l, rep, cfg, sec, i, n) })
		if !ok || !complete {
			rep.Note("scale %d: the step did not complete (see its row and the test log). Larger steps were skipped.", n)
			break
		}
	}
}

// harnessGOGC is the harness's GOGC during the scale section.
const harnessGOGC = 400

// scaleStep measures one fleet size and reports whether the fleet came up:
// a fleet that does not is a result (recorded as a missed target), not a
// test failure, since benchmarks never fail on time.
func scaleStep(t *testing.T, l *lab.Lab, rep *Report, cfg config, sec string, i, n int) bool {
	h := l.AddPublicHost(fmt.Sprintf("scale%d", i))
	var extra []string
	pprofSock := ""
	if cfg.profiles != "" {
		pprofSock = filepath.Join(l.Dir(), fmt.Sprintf("coord-scale%d-pprof.sock", i))
		extra = []string{"--pprof-socket", pprofSock}
	}
	proc, sock := startCoordinatorNoFile(t, l, h, extra...)
	defer proc.Kill() // before the fleet closes: no 10,000 last-seen writes
	tok := adminCLI(t, sock, "token", "create", "--reusable")
	f, err := newFleet(func(ctx context.Context, addr string) (net.Conn, error) { return h.DialTCP(ctx, addr) }, "127.0.0.1:8443", tok)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nodes, err := f.newNodes(n)
	if err != nil {
		t.Fatal(err)
	}

	pid := proc.Pid()
	cm, err := startCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	h0, t0, m0 := selfCPU(), time.Now(), machineBusy()
	load0 := loadAvg()
	profiled := profileBringUp(t, cfg.profiles, pprofSock, fmt.Sprintf("scale-%d", n))
	const bringUpCap = 10 * time.Minute
	var reconnects atomic.Int64
	joined, err := f.bringUp(nodes, 64, bringUpCap, &reconnects)
	// Measured before the profile ends: it runs a fixed time, which a
	// quicker bring-up would otherwise take on.
	upAll := time.Since(t0)
	coordCores, _ := cm.cores()
	harnessCores := (selfCPU() - h0).Seconds() / upAll.Seconds()
	// What neither used: other processes and the kernel's work outside
	// either (loopback softirqs may land on either side or on neither).
	otherCores := (machineBusy()-m0).Seconds()/upAll.Seconds() - coordCores - harnessCores
	profiled()
	if err != nil {
		// Record how far it got before giving up.
		up := 0
		for _, nd := range nodes {
			select {
			case <-nd.gotMap:
				up++
			default:
			}
		}
		_, hwm, _ := procMem(pid)
		rep.Add(&Measure{Section: sec, Name: fmt.Sprintf("%d nodes: all joined and holding their first map", n), Unit: "s",
			Target: "< 60 s", Met: met(false), Note: fmt.Sprintf("gave up after %v with %d of %d up; coordinator %.2f cores, peak RSS %.0f MiB", bringUpCap, up, n, coordCores, hwm)})
		t.Logf("bring up %d nodes: %v", n, err)
		return false
	}
	rss, hwm, _ := procMem(pid)
	_, harnessHWM, _ := procMem(os.Getpid())
	load1 := loadAvg()
	t.Logf("%d nodes: joined in %v, all with a map in %v; coordinator %.2f cores, harness %.2f cores, the rest of the machine %.2f cores, RSS %.0f MiB (peak %.0f; harness peak %.0f MiB), %d map messages, %.1f MB; load average %s -> %s; %d streams reconnected",
		n, joined.Round(time.Millisecond), upAll.Round(time.Millisecond), coordCores, harnessCores, otherCores, rss, hwm, harnessHWM, f.msgs.Load(), float64(f.bytes.Load())/1e6, load0, load1, reconnects.Load())

	if err := f.quiesce(2*time.Second, 2*time.Minute); err != nil {
		t.Logf("quiesce: %v", err)
	}
	// Idle: every stream open, nothing changing.
	cm, _ = startCPU(pid)
	time.Sleep(10 * time.Second)
	idleCores, _ := cm.cores()
	idleRSS, _, _ := procMem(pid)

	// One change at a time: a node joins, then two endpoint updates.
	var p50s, p99s, maxs []float64
	var raw []map[string]any
	cm, _ = startCPU(pid)
	h0, t0 = selfCPU(), time.Now()
	for c := range 3 {
		var (
			lat     []float64
			missing int
			what    string
		)
		if c == 0 {
			what = "new node joins"
			extra, err := f.newNode(fmt.Sprintf("late%d", i))
			if err != nil {
				t.Fatal(err)
			}
			lat, missing, err = f.propagation(nodes, extra.pub, func() error { return f.join(extra) }, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
		} else {
			what = "endpoint update"
			src := nodes[c]
			others := append(append([]*simNode{}, nodes[:c]...), nodes[c+1:]...)
			lat, missing, err = f.propagation(others, src.pub, func() error {
				return src.setEndpoints(fmt.Sprintf("203.0.113.%d:%d", 100+c, 40000+c))
			}, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
		}
		if missing > 0 {
			t.Logf("change %d (%s): %d streams did not see it within 30s", c, what, missing)
		}
		p50s = append(p50s, quantile(lat, 0.5))
		p99s = append(p99s, quantile(lat, 0.99))
		maxs = append(maxs, quantile(lat, 1))
		raw = append(raw, map[string]any{"change": what, "reached": len(lat), "missing": missing,
			"p50_ms": quantile(lat, 0.5), "p90_ms": quantile(lat, 0.9), "p99_ms": quantile(lat, 0.99), "max_ms": quantile(lat, 1)})
		f.quiesce(time.Second, 30*time.Second)
	}
	chWall := time.Since(t0)
	chCoord, _ := cm.cores()
	chHarness := (selfCPU() - h0).Seconds() / chWall.Seconds()

	// The same changes while the fleet sends path reports at the rate a
	// fleet of 10,000 may reach (issue 19: at most 200/s), nodes[10:]
	// reporting 5 peers each; then the view of what they reported.
	const reportRate = 200
	var rp99s []float64
	var sent atomic.Int64
	stop := make(chan struct{})
	rwg := reporter(nodes[10:], reportRate, stop, &sent)
	time.Sleep(2 * time.Second)
	for c := range 3 {
		var lat []float64
		var err error
		if c == 0 {
			extra, err2 := f.newNode(fmt.Sprintf("later%d", i))
			if err2 != nil {
				t.Fatal(err2)
			}
			lat, _, err = f.propagation(nodes, extra.pub, func() error { return f.join(extra) }, 30*time.Second)
		} else {
			src := nodes[2+c]
			others := append(append([]*simNode{}, nodes[:2+c]...), nodes[3+c:]...)
			lat, _, err = f.propagation(others, src.pub, func() error {
				return src.setEndpoints(fmt.Sprintf("203.0.113.%d:%d", 110+c, 40000+c))
			}, 30*time.Second)
		}
		if err != nil {
			t.Fatal(err)
		}
		rp99s = append(rp99s, quantile(lat, 0.99))
		f.quiesce(time.Second, 30*time.Second)
	}
	close(stop)
	rwg.Wait()
	viewTook, viewJSON, viewErr := adminView(sock)
	var view topoview.View
	if viewErr == nil {
		viewErr = json.Unmarshal(viewJSON, &view)
	}
	_, hwm, _ = procMem(pid)

	rate := float64(n) / joined.Seconds()
	bottleneck := "the coordinator's CPU"
	switch {
	case coordCores+harnessCores < 1.5:
		bottleneck = fmt.Sprintf("not the harness: coordinator and harness together used well under the 2 cores; with the 1-minute load average at %s (start) and %s (end) of bring-up, other work on the machine had the rest, so both waited for CPU", load0, load1)
	case harnessCores > coordCores:
		bottleneck = "the harness's CPU (it used more than the coordinator): the number is a lower bound"
	}
	rep.Note("Scale %d: %.0f joins/s (64 concurrent joiners); during bring-up the coordinator used %.2f cores, the harness %.2f cores and the rest of the machine %.2f cores; the bottleneck was %s. %d map messages (%.0f MB) reached the streams during bring-up and changes.",
		n, rate, coordCores, harnessCores, otherCores, bottleneck, f.msgs.Load(), float64(f.bytes.Load())/1e6)
	rep.SetRaw(fmt.Sprintf("scale/%d", n), map[string]any{
		"join_rpcs_done_s": joined.Seconds(), "all_with_map_s": upAll.Seconds(),
		"bringup_coordinator_cores": coordCores, "bringup_harness_cores": harnessCores, "bringup_other_cores": otherCores, "harness_rss_peak_mib": harnessHWM,
		"rss_after_bringup_mib": rss, "rss_idle_mib": idleRSS, "rss_peak_mib": hwm,
		"idle_coordinator_cores": idleCores, "changes": raw,
		"changes_coordinator_cores": chCoord, "changes_harness_cores": chHarness,
		"map_messages": f.msgs.Load(), "map_bytes": f.bytes.Load(), "load_average": []string{load0, load1},
		"reconnects": reconnects.Load(),
	})
	name := func(s string) string { return fmt.Sprintf("%d nodes: %s", n, s) }
	big := n >= 10000
	target := func(s string, ok bool) (string, *bool) {
		if !big {
			return "", nil
		}
		return s, met(ok)
	}
	tg, m := target("< 60 s", upAll.Seconds() < 60)
	rep.Add(&Measure{Section: sec, Name: name("all joined and holding their first map"), Unit: "s", Edgewire: []float64{upAll.Seconds()}, Target: tg, Met: m,
		Note: fmt.Sprintf("Join RPCs done at %.1f s; 64 at a time", joined.Seconds())})
	rep.Add(&Measure{Section: sec, Name: name("one change reaches all, p50"), Unit: "ms", Edgewire: p50s})
	tg, m = target("< 2000 ms", median(p99s) < 2000)
	rep.Add(&Measure{Section: sec, Name: name("one change reaches all, p99"), Unit: "ms", Edgewire: p99s, Target: tg, Met: m,
		Note: "per change: 1 join, 2 endpoint updates"})
	rep.Add(&Measure{Section: sec, Name: name("one change reaches all, max"), Unit: "ms", Edgewire: maxs})
	rep.Add(&Measure{Section: sec, Name: name(fmt.Sprintf("one change reaches all, p99, with path reports at %d/s", reportRate)), Unit: "ms", Edgewire: rp99s,
		RefName: "without reports", Reference: p99s, Note: fmt.Sprintf("%d reports sent during the changes", sent.Load())})
	if viewErr != nil {
		t.Errorf("topology view: %v", viewErr)
	} else {
		rep.Add(&Measure{Section: sec, Name: name("topology view served (Admin.Topology)"), Unit: "s", Edgewire: []float64{viewTook.Seconds()},
			Note: fmt.Sprintf("%d nodes, %d pairs from the reports received; %.2f MB JSON, %.2f MB gzipped", len(view.Nodes), len(view.Pairs),
				float64(len(viewJSON))/1e6, float64(gzipSize(viewJSON))/1e6)})
	}
	tg, m = target("< 1024 MiB", hwm < 1024)
	rep.Add(&Measure{Section: sec, Name: name("coordinator peak RSS (VmHWM)"), Unit: "MiB", Edgewire: []float64{hwm}, Target: tg, Met: m,
		Note: fmt.Sprintf("idle RSS %.0f MiB", idleRSS)})
	rep.Add(&Measure{Section: sec, Name: name("coordinator CPU during bring-up"), Unit: "cores", Edgewire: []float64{coordCores},
		RefName: "harness", Reference: []float64{harnessCores}})
	rep.Add(&Measure{Section: sec, Name: name("coordinator CPU idle, all streams open"), Unit: "cores", Edgewire: []float64{idleCores}})
	rep.Add(&Measure{Section: sec, Name: name("coordinator CPU during the changes"), Unit: "cores", Edgewire: []float64{chCoord},
		RefName: "harness", Reference: []float64{chHarness}})
	return true
}

// profileWindow is how much of a bring-up BENCH_PROFILES profiles: the
// coordinator's profile has a length fixed when it is asked for.
const profileWindow = 20 * time.Second

// profileBringUp, with BENCH_PROFILES set, takes CPU profiles of the
// coordinator (through its pprof socket) and of the harness (this
// process) over the same first profileWindow of a bring-up, written to
// dir as <name>-coordinator.cpu.pprof and <name>-harness.cpu.pprof. The
// returned function waits for both; call it when the bring-up is over.
func profileBringUp(t *testing.T, dir, sock, name string) (wait func()) {
	if dir == "" || sock == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Errorf("profiles: %v", err)
		return func() {}
	}
	var self bytes.Buffer
	if err := pprof.StartCPUProfile(&self); err != nil {
		t.Errorf("harness CPU profile: %v", err)
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, err := pprofGet(sock, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(profileWindow.Seconds())))
		pprof.StopCPUProfile()
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+"-coordinator.cpu.pprof"), b, 0o644)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+"-harness.cpu.pprof"), self.Bytes(), 0o644)
		}
		if err != nil {
			t.Errorf("bring-up profiles: %v", err)
		}
	}()
	return func() { <-done }
}

// startCoordinatorNoFile starts edgewire-coordinator on h with a raised
// open-file limit, a fresh data dir and extra flags, and waits for its
// admin socket.
func startCoordinatorNoFile(t *testing.T, l *lab.Lab, h *lab.Host, extra ...string) (*lab.Process, string) {
	t.Helper()
	dir := filepath.Join(l.Dir(), "coord-"+h.Name())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	argv := []string{"bash", "-c", `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`,
		cluster.Bin(t, "edgewire-coordinator"), "--data-dir", dir, "--listen", ":8443", "--log-level", "warn",
		// Every simulated node dials from the one loopback address.
		"--max-conns-per-source", "0"}
	p, err := h.Start("coordinator", nil, append(argv, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	err = lab.Eventually(15*time.Second, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("coordinator exited: %v\n%s", p.ExitErr(), p.Log())
		}
		_, err := os.Stat(sock)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, sock
}

func adminCLI(t *testing.T, sock string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cluster.Bin(t, "edgewire"), append([]string{"--admin-socket", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("edgewire %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// loadAvg returns the 1-minute load average, "?" if unknown: the
// coordinator and the harness share the machine with whatever else runs.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
