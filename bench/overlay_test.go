//go:build bench

package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
	"github.com/edgewire/edgewire/node/agent"
)

// overlay is the data-plane lab: a cloud host (coordinator + embedded
// relay "coordinator", region 1), a second relay "r2" (region 2) meshed
// with it, two endpoint-independent NAT sites A and B whose nodes a and b
// go direct, and two symmetric NAT sites C and D whose nodes c and d can
// only use the relays (c homed on region 1, d on region 2). a and b also
// run the plain wireguard-go reference (wgplain) between the same NATed
// hosts, and router B forwards iperf3 and ping to b so the raw underlay
// takes the same NATs. The relays run without their per-node rate limit
// (default 400 Mbit/s, an operator's fairness policy) so the relayed rows
// measure what the relay path can carry.
type overlay struct {
	l              *lab.Lab
	coord          *cluster.Coordinator
	relay2         *cluster.Relay
	siteA, siteB   *lab.Site
	ha, hb, hc, hd *lab.Host
	a, b, c, d     *cluster.Agent
	ipB, ipC, ipD  netip.Addr // overlay addresses
	tok            string
	plainA, plainB *lab.Process
	plainIPB       string
	srvB, srvC     *iperfServer

	aArgs, bArgs []string // agents a's and b's flags after the join (to restart them)

	bPprof    string            // agent b's pprof socket
	pprofs    map[string]string // the relay path's pprof sockets (agents a, c, the coordinator)
	fleetGen  int               // simulated fleets brought up so far (names stay unique)
	freshRSS  []float64         // agent b's idle RSS with 53 peers before any traffic
	freshAnon []float64         // and its anonymous part
	idleRows  []*Measure        // the idle measurements, reported together at the end
}

var quiet = []string{"--log-level", "info"}

// agentArgs is the overlay agents' extra flags: info logs, and whatever
// BENCH_AGENT_ARGS adds (to compare settings, e.g. --memory-limit-mib).
var agentArgs = append(slices.Clone(quiet), strings.Fields(os.Getenv("BENCH_AGENT_ARGS"))...)

func setupOverlay(t *testing.T, cfg config, wgplain string) *overlay {
	o := &overlay{l: lab.New(t)}
	l := o.l
	cloud := l.AddPublicHost("cloud")
	r2host := l.AddPublicHost("relay2")
	meshKey := filepath.Join(l.Dir(), "mesh.key")
	mk := make([]byte, 32)
	rand.Read(mk)
	if err := os.WriteFile(meshKey, []byte(base64.StdEncoding.EncodeToString(mk)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o.relay2 = cluster.NewRelay(t, l, r2host)
	relayMap := filepath.Join(l.Dir(), "relaymap.json")
	rm := fmt.Sprintf(`{"regions":[{"id":2,"name":"r2","host":%q,"port":%d,"key":%q,"stun_port":3478}]}`, r2host.IP(), cluster.RelayPort, o.relay2.Key)
	if err := os.WriteFile(relayMap, []byte(rm), 0o644); err != nil {
		t.Fatal(err)
	}
	coordExtra := []string{"--relay-map", relayMap, "--mesh-key-file", meshKey, "--relay-client-rate", "0"}
	// The relay path's three processes serve pprof, so the throughput
	// section can profile a relayed TCP run (see profilePaths).
	withPprof := func(name string, extra []string) []string {
		if o.pprofs == nil {
			o.pprofs = map[string]string{}
		}
		o.pprofs[name] = filepath.Join(l.Dir(), name+"-pprof.sock")
		return append(slices.Clone(extra), "--pprof-socket", o.pprofs[name])
	}
	o.coord = cluster.StartCoordinatorWith(t, l, cloud, cluster.CoordinatorOptions{
		Extra: append(withPprof("coordinator", coordExtra), quiet...),
	})
	o.relay2.StartWith(cluster.RelayOptions{TicketKey: o.coord.TicketKeyFile(), MeshKeyFile: meshKey,
		MeshPeers: []string{o.coord.RelayMeshPeer()}, Extra: append([]string{"--client-rate", "0"}, quiet...)})

	o.siteA, o.siteB = l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM)
	siteC, siteD := l.AddSite("sc", lab.NATSymmetric), l.AddSite("sd", lab.NATSymmetric)
	o.ha, o.hb, o.hc, o.hd = o.siteA.AddNode("a"), o.siteB.AddNode("b"), siteC.AddNode("c"), siteD.AddNode("d")
	o.tok = o.coord.Token("--reusable")
	start := func(h *lab.Host, name, region string) *cluster.Agent {
		extra := []string{"--relay-region", region}
		if name == "a" || name == "c" {
			extra = withPprof("agent-"+name, extra)
		}
		extra = append(extra, agentArgs...)
		if name == "a" {
			o.aArgs = append([]string{"--coordinator", o.coord.Addr(), "--name", name}, extra...)
		}
		return cluster.StartAgent(t, l, h, o.coord, name, cluster.AgentOptions{Token: o.tok, Extra: extra})
	}
	o.bPprof = filepath.Join(l.Dir(), "agent-b-pprof.sock")
	o.a, o.c, o.d = start(o.ha, "a", "1"), start(o.hc, "c", "1"), start(o.hd, "d", "2")
	bExtra := append([]string{"--relay-region", "1", "--pprof-socket", o.bPprof}, agentArgs...)
	o.bArgs = append([]string{"--coordinator", o.coord.Addr(), "--name", "b"}, bExtra...)
	o.b = cluster.StartAgent(t, l, o.hb, o.coord, "b", cluster.AgentOptions{Token: o.tok, Extra: bExtra})
	for _, ag := range []*cluster.Agent{o.a, o.b, o.c, o.d} {
		ag.WaitPeers(3, 45*time.Second)
	}
	o.ipB, o.ipC, o.ipD = o.b.OverlayIP(), o.c.OverlayIP(), o.d.OverlayIP()
	if err := o.waitPaths(60*time.Second, map[[2]*cluster.Agent]string{
		{o.a, o.b}: "direct", {o.b, o.a}: "direct", {o.a, o.c}: "relay", {o.c, o.a}: "relay", {o.c, o.d}: "relay", {o.d, o.c}: "relay",
	}); err != nil {
		t.Fatal(err)
	}

	// Raw underlay: router B forwards iperf3 and ping to b.
	bIP := o.hb.IP().String()
	for _, spec := range [][]string{
		{"-p", "tcp", "--dport", strconv.Itoa(iperfPort)},
		{"-p", "udp", "--dport", strconv.Itoa(iperfPort)},
		{"-p", "icmp", "--icmp-type", "echo-request"},
	} {
		argv := append([]string{"iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-i", "wan"}, spec...)
		o.siteB.Router().MustExec(t, append(argv, "-j", "DNAT", "--to-destination", bIP)...)
	}

	o.startPlain(t, wgplain)
	var err error
	if o.srvB, err = startIperfServer(o.hb); err != nil {
		t.Fatal(err)
	}
	if o.srvC, err = startIperfServer(o.hc); err != nil {
		t.Fatal(err)
	}
	return o
}

// startPlain runs wgplain on a and b (port 51900, 10.250.0.0/24) aimed at
// each other's NAT, as the agents' direct path is; persistent keepalive
// punches both EIM NATs.
func (o *overlay) startPlain(t *testing.T, wgplain string) {
	const port = 51900
	type side struct {
		h    *lab.Host
		site *lab.Site
		ifc  string
		ip   string
		priv [32]byte
		pub  [32]byte
	}
	sides := []*side{
		{h: o.ha, site: o.siteA, ifc: "ew" + o.l.ID() + "pa", ip: "10.250.0.1"},
		{h: o.hb, site: o.siteB, ifc: "ew" + o.l.ID() + "pb", ip: "10.250.0.2"},
	}
	for _, s := range sides {
		rand.Read(s.priv[:])
		s.priv[0] &= 248
		s.priv[31] = s.priv[31]&127 | 64
		curve25519.ScalarBaseMult(&s.pub, &s.priv)
	}
	for i, s := range sides {
		peer := sides[1-i]
		p, err := s.h.Start("wgplain", nil, wgplain, s.ifc, "1420")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			o.plainA = p
		} else {
			o.plainB = p
		}
		sock := filepath.Join("/var/run/wireguard", s.ifc+".sock")
		if err := lab.Eventually(10*time.Second, 50*time.Millisecond, func() error {
			if p.Exited() {
				return fmt.Errorf("wgplain exited: %v\n%s", p.ExitErr(), p.Log())
			}
			_, err := os.Stat(sock)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nListenPort = %d\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:%d\nAllowedIPs = %s/32\nPersistentKeepalive = 5\n",
			base64.StdEncoding.EncodeToString(s.priv[:]), port, base64.StdEncoding.EncodeToString(peer.pub[:]), peer.site.PublicIP(), port, peer.ip)
		cf := filepath.Join(o.l.Dir(), s.ifc+".conf")
		if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		s.h.MustExec(t, "wg", "setconf", s.ifc, cf)
		s.h.MustExec(t, "ip", "addr", "add", s.ip+"/24", "dev", s.ifc)
		s.h.MustExec(t, "ip", "link", "set", s.ifc, "up")
	}
	o.plainIPB = sides[1].ip
	if err := lab.Eventually(30*time.Second, 0, func() error {
		_, lost, err := pingRTTs(o.ha, o.plainIPB, 3, 200*time.Millisecond)
		if err != nil || lost > 0 {
			return fmt.Errorf("plain wireguard-go a -> b: lost %d (%v)", lost, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// path returns from's path to the peer named to, and the relay it uses.
func path(from *cluster.Agent, to string) (string, string, error) {
	st, err := from.Status()
	if err != nil {
		return "", "", err
	}
	for _, p := range st.Peers {
		if p.Name == to {
			return p.Path, p.Relay, nil
		}
	}
	return "", "", fmt.Errorf("%s does not list %s", from.Name, to)
}

func (o *overlay) waitPaths(timeout time.Duration, want map[[2]*cluster.Agent]string) error {
	return lab.Eventually(timeout, 200*time.Millisecond, func() error {
		var bad []string
		for pair, w := range want {
			p, _, err := path(pair[0], pair[1].Name)
			if err != nil {
				return err
			}
			if p != w {
				bad = append(bad, fmt.Sprintf("%s sees %s %s, want %s", pair[0].Name, pair[1].Name, p, w))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%s", strings.Join(bad, "; "))
		}
		return nil
	})
}

func benchOverlay(t *testing.T, rep *Report, cfg config, wgplain string) {
	o := setupOverlay(t, cfg, wgplain)
	defer func() { // both idle measurements in one table, after the forwarding sections
		for _, m := range o.idleRows {
			rep.Add(m)
		}
	}()
	t.Run("idle-fresh", func(t *testing.T) { o.idleFresh(t, rep, cfg) })
	t.Run("latency", func(t *testing.T) { o.latency(t, rep, cfg) })
	t.Run("throughput", func(t *testing.T) { o.throughput(t, rep, cfg) })
	t.Run("memory-bound", func(t *testing.T) { o.memoryBound(t, rep, cfg) })
	t.Run("connectivity", func(t *testing.T) { o.connectivity(t, rep, cfg) })
	t.Run("recovery", func(t *testing.T) { o.recovery(t, rep, cfg) })
	t.Run("idle-after", func(t *testing.T) { o.idleAfter(t, rep, cfg) })
}

func (o *overlay) latency(t *testing.T, rep *Report, cfg config) {
	const count, interval = 200, 10 * time.Millisecond
	targets := []struct{ name, addr string }{
		{"direct", o.ipB.String()}, {"plain", o.plainIPB}, {"underlay", o.siteB.PublicIP().String()}, {"relay", o.ipC.String()},
	}
	p50, p99 := map[string][]float64{}, map[string][]float64{}
	raw := map[string][]float64{}
	for r := range cfg.reps {
		for _, x := range targets {
			rtts, lost, err := pingRTTs(o.ha, x.addr, count, interval)
			if err != nil {
				t.Errorf("rep %d %s: %v", r, x.name, err)
				continue
			}
			if lost > 0 {
				t.Logf("rep %d %s: %d of %d pings lost", r, x.name, lost, count)
			}
			p50[x.name] = append(p50[x.name], quantile(rtts, 0.5))
			p99[x.name] = append(p99[x.name], quantile(rtts, 0.99))
			raw[x.name] = append(raw[x.name], rtts...)
		}
	}
	rep.SetRaw("latency/rtts_ms", raw)
	// Large-packet probe: full-MTU (1420 B) packets with DF, as bulk TCP
	// sends them, against 1300 B ones.
	probe := map[string]string{}
	for _, x := range targets {
		for _, size := range []int{1272, 1392} { // + 28 B headers: 1300 and 1420 B packets
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			out, _ := o.ha.Exec(ctx, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "-M", "do", "-s", strconv.Itoa(size), x.addr)
			cancel()
			got := len(rttLine.FindAllString(out, -1))
			probe[fmt.Sprintf("%s/%dB", x.name, size+28)] = fmt.Sprintf("%d/5", got)
		}
	}
	rep.SetRaw("latency/large_packet_probe", probe)
	rep.Note("Large-packet probe (5 pings with DF set, replies received): %v.", probe)
	sec := "Latency (ping a -> b, 200 pings at 10 ms, RTT)"
	over := func(xs, ys []float64) []float64 {
		var d []float64
		for i := range min(len(xs), len(ys)) {
			d = append(d, xs[i]-ys[i])
		}
		return d
	}
	rep.Add(&Measure{Section: sec, Name: "direct (NAT to NAT), median RTT", Unit: "ms", Edgewire: p50["direct"], RefName: "underlay", Reference: p50["underlay"]})
	rep.Add(&Measure{Section: sec, Name: "direct, p99 RTT", Unit: "ms", Edgewire: p99["direct"], RefName: "underlay", Reference: p99["underlay"]})
	ov := over(p50["direct"], p50["underlay"])
	rep.Add(&Measure{Section: sec, Name: "overlay overhead: direct minus underlay, median RTT", Unit: "ms", Edgewire: ov,
		Target: "< 0.2 ms", Met: met(median(ov) < 0.2)})
	rep.Add(&Measure{Section: sec, Name: "direct vs plain wireguard-go, median RTT", Unit: "ms", Edgewire: p50["direct"], RefName: "plain wireguard-go", Reference: p50["plain"]})
	rep.Add(&Measure{Section: sec, Name: "relay (a -> c via relay region 1), median RTT", Unit: "ms", Edgewire: p50["relay"], RefName: "underlay", Reference: p50["underlay"]})
	rep.Add(&Measure{Section: sec, Name: "relay, p99 RTT", Unit: "ms", Edgewire: p99["relay"], RefName: "underlay", Reference: p99["underlay"]})
}

func (o *overlay) throughput(t *testing.T, rep *Report, cfg config) {
	type target struct {
		name, addr string
		srv        *iperfServer
	}
	targets := []target{
		{"direct", o.ipB.String(), o.srvB},
		{"plain", o.plainIPB, o.srvB},
		{"raw", o.siteB.PublicIP().String(), o.srvB},
		{"relay", o.ipC.String(), o.srvC},
	}
	res := map[string]map[string][]float64{} // flow -> target -> Gbit/s
	cpu := map[string][]float64{}            // process -> cores during TCP 1 stream
	machine := map[string][]float64{}        // tunnel -> the whole machine's busy cores during TCP 1 stream
	rss := map[string][]float64{}
	stalls := map[string]int{}
	procs := map[string]int{"agent a (sender)": o.a.Proc.Pid(), "agent b (receiver)": o.b.Proc.Pid(),
		"wgplain a (sender)": o.plainA.Pid(), "wgplain b (receiver)": o.plainB.Pid(),
		"relay: agent a": o.a.Proc.Pid(), "relay: coordinator": o.coord.Proc.Pid(), "relay: agent c": o.c.Proc.Pid()}
	// Which processes each tunnel's TCP 1 stream run meters.
	metered := map[string]string{"direct": "agent ", "plain": "wgplain ", "relay": "relay: "}
	// Kernel counters of the tunnel runs: GSO/GRO in use, where packets drop.
	tuns := map[string][2]string{"direct": {o.a.Iface, o.b.Iface}, "plain": {"ew" + o.l.ID() + "pa", "ew" + o.l.ID() + "pb"}}
	counters := map[string]map[string][]flowCounters{} // flow -> target -> per run
	agents := []struct {
		name string
		pid  int
	}{{"sender", o.a.Proc.Pid()}, {"receiver", o.b.Proc.Pid()}}
	peakRSS := map[string][]float64{} // agent -> peak RSS of each direct run, sampled every 100 ms
	var before [2]float64             // the agents' RSS before the first run
	for i, ag := range agents {
		before[i], _, _ = procMem(ag.pid)
	}
	for r := range cfg.reps {
		// Alternate which tunnel goes first, so drift in the machine's
		// load does not favour one of the two.
		order := append([]target(nil), targets...)
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range flows {
			if res[f.name] == nil {
				res[f.name] = map[string][]float64{}
				counters[f.name] = map[string][]flowCounters{}
			}
			for _, x := range order {
				var meters map[string]*cpuMeter
				var busy0 time.Duration
				var wall0 time.Time
				if prefix, ok := metered[x.name]; ok && f == flows[0] {
					busy0, wall0 = machineBusy(), time.Now()
					meters = map[string]*cpuMeter{}
					for name, pid := range procs {
						if strings.HasPrefix(name, prefix) {
							meters[name], _ = startCPU(pid)
						}
					}
				}
				var g float64
				var err error
				run := func() { g, err = iperf(o.ha, x.addr, f, cfg.dur) }
				if x.name == "direct" {
					iperfRun := run
					run = func() {
						smp := sampleRSS(map[string]int{"sender": o.a.Proc.Pid(), "receiver": o.b.Proc.Pid()})
						iperfRun()
						for name, p := range smp.stop() {
							peakRSS[name] = append(peakRSS[name], p)
						}
					}
				}
				if tun, ok := tuns[x.name]; ok {
					fc, cerr := measureFlow(o.ha, o.hb, tun[0], tun[1], run)
					if cerr != nil {
						t.Logf("rep %d %s %s: counters: %v", r, f.name, x.name, cerr)
					} else {
						counters[f.name][x.name] = append(counters[f.name][x.name], fc)
					}
				} else {
					run()
				}
				if err != nil {
					stalled := strings.Contains(err.Error(), "nothing received")
					t.Logf("rep %d %s %s: %.300v", r, f.name, x.name, err)
					x.srv.restart()
					if !stalled {
						continue
					}
					stalls[x.name+"/"+f.name]++
					g = 0 // ran, moved nothing: a real result
				}
				res[f.name][x.name] = append(res[f.name][x.name], g)
				if meters != nil && busy0 > 0 {
					machine[x.name] = append(machine[x.name], (machineBusy()-busy0).Seconds()/time.Since(wall0).Seconds())
				}
				for name, m := range meters {
					if m == nil {
						continue
					}
					c, _ := m.cores()
					cpu[name] = append(cpu[name], c)
					rs, _, _ := procMem(procs[name])
					rss[name] = append(rss[name], rs)
				}
			}
		}
	}
	dprof, rprof, perr := o.profilePaths(cfg)
	if perr != nil {
		t.Errorf("profiles: %v", perr)
	}
	// What the agents keep once traffic stops: 10 s after the last run
	// against what they held before the first, and the peak in between.
	time.Sleep(10 * time.Second)
	memSec := "Agent memory around the throughput runs"
	for i, ag := range agents {
		after, peak, err := procMem(ag.pid)
		if err != nil {
			t.Logf("agent %s memory: %v", ag.name, err)
			continue
		}
		rep.Add(&Measure{Section: memSec, Name: "RSS 10 s after the last run, " + ag.name, Unit: "MiB", Edgewire: []float64{after},
			RefName: "before the first", Reference: []float64{before[i]}, Target: "<= 1.2x"}).Met = met(after <= 1.2*before[i])
		rep.Add(&Measure{Section: memSec, Name: "peak RSS (VmHWM) since start, " + ag.name, Unit: "MiB", Edgewire: []float64{peak}})
		if v := peakRSS[ag.name]; len(v) > 0 {
			rep.Add(&Measure{Section: memSec, Name: fmt.Sprintf("peak RSS while forwarding (every direct run, all flows; sampled every 100 ms; --max-inflight-packets %s), %s", inflightFlag(), ag.name),
				Unit: "MiB", Edgewire: v, Target: "<= 64 MiB (the largest run)"}).Met = met(slices.Max(v) <= 64)
		}
	}
	rep.SetRaw("throughput/gbps", res)
	rep.SetRaw("throughput/tcp_stalls", stalls)
	if len(stalls) > 0 {
		rep.Note("Throughput: iperf3 runs that connected but moved no data after the first second (TCP stuck at a 1-MSS congestion window with retransmits), counted as 0 Gbit/s: %v. Plain wireguard-go between the same hosts, same MTU, carried TCP in the same run; see the large-packet probe below.", stalls)
	}
	rep.SetRaw("throughput/kernel_counters", counters)
	rep.Note("Throughput data path (kernel counters, median over runs): %s.", counterNote(counters))
	rep.SetRaw("throughput/cpu_cores_tcp1", cpu)
	rep.SetRaw("throughput/rss_mib_tcp1", rss)
	sec := fmt.Sprintf("Throughput (iperf3 a -> b, %v per run, MTU 1420 overlay)", cfg.dur)
	for _, f := range flows {
		d := res[f.name]
		m := rep.Add(&Measure{Section: sec, Name: f.name + ": direct (EIM NAT to EIM NAT) vs plain wireguard-go", Unit: "Gbit/s",
			Edgewire: d["direct"], RefName: "plain wireguard-go", Reference: d["plain"], Target: ">= 0.95x"})
		if len(m.Edgewire) > 0 && len(m.Reference) > 0 {
			m.Met = met(m.Ratio >= 0.95)
		}
		m = rep.Add(&Measure{Section: sec, Name: f.name + ": relay (a -> c) vs direct", Unit: "Gbit/s",
			Edgewire: d["relay"], RefName: "direct", Reference: d["direct"], Target: ">= 0.5x"})
		if len(m.Edgewire) > 0 && len(m.Reference) > 0 {
			m.Met = met(m.Ratio >= 0.5)
		}
		rep.Add(&Measure{Section: sec, Name: f.name + ": direct vs raw underlay", Unit: "Gbit/s",
			Edgewire: d["direct"], RefName: "raw underlay", Reference: d["raw"]})
	}
	sec = "Agent cost while forwarding (during the TCP 1 stream runs)"
	rep.Add(&Measure{Section: sec, Name: "CPU while forwarding TCP 1 stream, sender side", Unit: "cores",
		Edgewire: cpu["agent a (sender)"], RefName: "wgplain", Reference: cpu["wgplain a (sender)"]})
	rep.Add(&Measure{Section: sec, Name: "CPU while forwarding TCP 1 stream, receiver side", Unit: "cores",
		Edgewire: cpu["agent b (receiver)"], RefName: "wgplain", Reference: cpu["wgplain b (receiver)"]})
	// CPU per Gbit/s is the efficiency of the two data paths; unlike the
	// rate it hardly moves with what else the machine runs.
	perGbit := func(proc, target string) []float64 {
		var v []float64
		for i, c := range cpu[proc] {
			if g := res[flows[0].name][target]; i < len(g) && g[i] > 0 {
				v = append(v, c/g[i])
			}
		}
		return v
	}
	rep.Add(&Measure{Section: sec, Name: "CPU per Gbit/s, TCP 1 stream, sender + receiver", Unit: "cores",
		Edgewire: sumEach(perGbit("agent a (sender)", "direct"), perGbit("agent b (receiver)", "direct")),
		RefName:  "wgplain", Reference: sumEach(perGbit("wgplain a (sender)", "plain"), perGbit("wgplain b (receiver)", "plain"))})
	// The relay path's cost: both agents and the relay between them,
	// against the direct path's two agents, per Gbit/s carried.
	relayCPU := rep.Add(&Measure{Section: sec, Name: "CPU per Gbit/s, TCP 1 stream over the relay: agent a + relay + agent c", Unit: "cores",
		Edgewire: sumEach(sumEach(perGbit("relay: agent a", "relay"), perGbit("relay: coordinator", "relay")), perGbit("relay: agent c", "relay")),
		RefName:  "direct: agents a + b", Reference: sumEach(perGbit("agent a (sender)", "direct"), perGbit("agent b (receiver)", "direct"))})
	// The whole machine in the same runs: every process and the kernel.
	machPerGbit := func(target string) []float64 {
		var v []float64
		for i, c := range machine[target] {
			if g := res[flows[0].name][target]; i < len(g) && g[i] > 0 {
				v = append(v, c/g[i])
			}
		}
		return v
	}
	rep.Add(&Measure{Section: sec, Name: fmt.Sprintf("machine CPU busy during TCP 1 stream (every process and the kernel, of %d cores): relay vs direct", runtime.NumCPU()), Unit: "cores",
		Edgewire: machine["relay"], RefName: "direct", Reference: machine["direct"]})
	machCPU := rep.Add(&Measure{Section: sec, Name: "machine CPU per Gbit/s, TCP 1 stream (every process and the kernel): relay vs direct", Unit: "cores",
		Edgewire: machPerGbit("relay"), RefName: "direct", Reference: machPerGbit("direct")})
	if d, r := res[flows[0].name]["direct"], res[flows[0].name]["relay"]; len(d) > 0 && len(r) > 0 && relayCPU.Ratio > 0 && machCPU.Ratio > 0 {
		rep.Note("Relay against direct (TCP, 1 stream): %.2fx the rate at %.2fx the machine's CPU per Gbit/s (%.3f cores against %.3f: every process and the kernel) and %.2fx the edgewire processes' (agent a + relay + agent c: %.3f, against agents a + b: %.3f). "+
			"The machine was %.2f of %d cores busy in the relay runs and %.2f in the direct runs, so the rate follows the cost: %.2f/%.2f x 1/%.2f = %.2f.",
			medianOf(r)/medianOf(d), machCPU.Ratio, medianOf(machCPU.Edgewire), medianOf(machCPU.Reference), relayCPU.Ratio, medianOf(relayCPU.Edgewire), medianOf(relayCPU.Reference),
			medianOf(machine["relay"]), runtime.NumCPU(), medianOf(machine["direct"]), medianOf(machine["relay"]), medianOf(machine["direct"]), machCPU.Ratio,
			medianOf(machine["relay"])/medianOf(machine["direct"])/machCPU.Ratio)
		// What 0.7x would take: at the relay runs' load, the CPU per
		// Gbit/s left for the relay path to add over the direct path's.
		budget := medianOf(machine["relay"])/(0.7*medianOf(d)) - medianOf(machCPU.Reference)
		relayProc := medianOf(perGbit("relay: coordinator", "relay"))
		var added []string
		if perr == nil {
			for _, k := range cpuKindNames() {
				added = append(added, fmt.Sprintf("%s %+.3f", k, rprof.of("", k)-dprof.of("", k)))
			}
		}
		rep.Note("What 0.7x of direct takes (TCP, 1 stream): at the relay runs' load (%.2f cores), 0.7x of direct's %.2f Gbit/s leaves %.3f cores per Gbit/s for everything, so the relay path may add at most %.3f to the direct path's %.3f; it adds %.3f. "+
			"The relay process alone costs %.3f per Gbit/s (%.0f%% of that allowance): it reads each byte from one TCP socket and writes it to another, with a TLS open and seal between, and the kernel's TCP work for both legs is in its system calls. "+
			"Relay path minus direct path by kind of work, cores per Gbit/s, from the profiles (section above): %s.",
			medianOf(machine["relay"]), medianOf(d), budget+medianOf(machCPU.Reference), budget, medianOf(machCPU.Reference), medianOf(machCPU.Edgewire)-medianOf(machCPU.Reference),
			relayProc, 100*relayProc/budget, strings.Join(added, ", "))
		if relayProc >= budget {
			rep.Note("So on this machine 0.7x is out of reach of a relay that terminates TCP and TLS on both legs: with agents that spent no more than on the direct path, the relay process alone (%.3f cores per Gbit/s) would still exceed the %.3f that 0.7x allows. "+
				"It takes a relay that does less per byte, e.g. one that forwards WireGuard's UDP datagrams as they are (they are end-to-end encrypted and authenticated already), with TCP and TLS kept for networks that let no UDP through.",
				relayProc, budget)
		}
	}
	for _, p := range []string{"agent a", "coordinator", "agent c"} {
		rep.Add(&Measure{Section: sec, Name: "CPU per Gbit/s, TCP 1 stream over the relay: " + p, Unit: "cores",
			Edgewire: perGbit("relay: "+p, "relay")})
	}
	rep.Add(&Measure{Section: sec, Name: "RSS while forwarding, sender side", Unit: "MiB",
		Edgewire: rss["agent a (sender)"], RefName: "wgplain", Reference: rss["wgplain a (sender)"]})
	if perr == nil {
		reportProfiles(rep, dprof, rprof)
	}
}

// connectivity starts fresh agents behind site A's EIM NAT and times
// agent start -> first ping reply from b (relay-first) -> direct path.
func (o *overlay) connectivity(t *testing.T, rep *Report, cfg config) {
	var toRelay, toDirect []float64
	firstVia := map[string]int{}
	phases := map[string][]float64{}
	for r := range cfg.ttcReps {
		name := fmt.Sprintf("ttc%d", r)
		h := o.siteA.AddNode(name)
		t0 := time.Now()
		ag := cluster.StartAgent(t, o.l, h, o.coord, name, cluster.AgentOptions{Token: o.tok, Extra: append(append([]string{"--relay-region", "1"}, agentArgs...), "--log-format", "json", "--log-level", "debug")})
		first, err := firstReply(h, o.ipB, t0, 30*time.Second)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			ag.Proc.Stop(5 * time.Second)
			continue
		}
		via, _, _ := path(ag, "b")
		firstVia[via]++
		var direct time.Duration
		for time.Since(t0) < 40*time.Second {
			if p, _, err := path(ag, "b"); err == nil && p == "direct" {
				if q, _, err := path(o.b, name); err == nil && q == "direct" {
					direct = time.Since(t0)
					break
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		ag.Proc.Stop(5 * time.Second)
		if direct != 0 {
			for ph, at := range directPhases(ag.Proc.Log(), t0) {
				phases[ph] = append(phases[ph], at.Seconds()*1000)
			}
		}
		if _, err := o.coord.CLI("nodes", "delete", name); err != nil {
			t.Logf("delete %s: %v", name, err)
		}
		toRelay = append(toRelay, first.Seconds())
		if direct == 0 {
			t.Logf("%s: not direct on both sides within 40s", name)
			continue
		}
		toDirect = append(toDirect, direct.Seconds())
	}
	rep.SetRaw("connectivity/first_reply_path", firstVia)
	sec := "Time to connectivity (fresh agent behind an EIM NAT, peer behind another; includes join)"
	note := fmt.Sprintf("first reply came via: %v", firstVia)
	rep.Add(&Measure{Section: sec, Name: "agent start -> first ping reply", Unit: "s", Edgewire: toRelay, Target: "< 1 s (via relay)", Met: met(median(toRelay) < 1), Note: note})
	rep.Add(&Measure{Section: sec, Name: "agent start -> direct on both sides", Unit: "s", Edgewire: toDirect, Target: "< 3 s", Met: met(len(toDirect) > 0 && median(toDirect) < 3)})
	for _, ph := range directPhaseOrder {
		if xs := phases[ph.name]; len(xs) > 0 {
			rep.Add(&Measure{Section: sec, Name: "agent start -> " + ph.name + " (from the new agent's debug log)", Unit: "ms", Edgewire: xs})
		}
	}
}

// directPhaseOrder are the steps from an agent's start to its direct path,
// found in its JSON log by message: the first line matching each.
var directPhaseOrder = []struct {
	name string
	msg  func(string) bool
}{
	{"joined (token spent, enrolment saved)", func(m string) bool { return m == "joined" }},
	{"WireGuard up", func(m string) bool { return m == "wireguard up" }},
	{"relay connected", func(m string) bool { return m == "relay: connected" }},
	{"first network map", func(m string) bool { return m == "connected to coordinator" }},
	{"ICE session started", func(m string) bool { return strings.HasPrefix(m, "Started agent") }},
	{"ICE checking", func(m string) bool { return m == "Setting new connection state: Checking" }},
	{"ICE pair selected", func(m string) bool { return m == "Setting new connection state: Connected" }},
	{"WireGuard endpoint switched to direct", func(m string) bool { return m == "path changed" }},
}

// directPhases reads an agent's JSON log and returns, per phase of
// directPhaseOrder, when it first happened after t0; a "path changed"
// line counts only when it goes direct.
func directPhases(log string, t0 time.Time) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
			To   string    `json:"to"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Time.IsZero() {
			continue
		}
		for _, ph := range directPhaseOrder {
			if _, done := out[ph.name]; done || !ph.msg(rec.Msg) {
				continue
			}
			if rec.Msg == "path changed" && !strings.HasPrefix(rec.To, "direct") {
				continue
			}
			out[ph.name] = rec.Time.Sub(t0)
		}
	}
	return out
}

// pinger is a timestamped `ping -D` in a lab namespace.
type pinger struct{ proc *lab.Process }

// firstReply pings to from h every 20 ms, from the moment h has a route
// to it (ping exits at once while it has none, and is started again), and
// returns how long after t0 the first reply came, by ping's own timestamp
// of the reply: a reply to a ping sent before the path was up counts when
// it arrives, so the resolution is the 20 ms interval, not a ping timeout.
func firstReply(h *lab.Host, to netip.Addr, t0 time.Time, within time.Duration) (time.Duration, error) {
	deadline := t0.Add(within)
	for n := 0; time.Now().Before(deadline); n++ {
		p, err := h.Start(fmt.Sprintf("ping-first-%s-%d", to, n), nil,
			"ping", "-n", "-D", "-i", "0.02", "-W", "1", "-w", strconv.Itoa(int(time.Until(deadline).Seconds())+1), to.String())
		if err != nil {
			return 0, err
		}
		pg := &pinger{proc: p}
		for {
			exited := p.Exited() // before reading, so no reply is missed
			if rs := pg.replies(); len(rs) > 0 {
				p.Kill()
				return rs[0].Sub(t0), nil
			}
			if exited || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		p.Kill()
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("no reply from %s within %v", to, within)
}

var pingReply = regexp.MustCompile(`(?m)^\[(\d+\.\d+)\] \d+ bytes from`)

func startPinger(h *lab.Host, to netip.Addr, d time.Duration) (*pinger, error) {
	p, err := h.Start("ping-"+to.String()+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), nil,
		"ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", strconv.Itoa(int(d.Seconds())), to.String())
	if err != nil {
		return nil, err
	}
	return &pinger{proc: p}, nil
}

func (p *pinger) replies() []time.Time {
	var ts []time.Time
	for _, m := range pingReply.FindAllStringSubmatch(p.proc.Log(), -1) {
		f, err := strconv.ParseFloat(m[1], 64)
		if err == nil {
			ts = append(ts, time.Unix(0, int64(f*1e9)))
		}
	}
	return ts
}

// waitReplies waits until n replies arrived after t0.
func (p *pinger) waitReplies(t0 time.Time, n int, timeout time.Duration) error {
	return lab.Eventually(timeout, 50*time.Millisecond, func() error {
		got := 0
		for _, r := range p.replies() {
			if r.After(t0) {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d replies since %v, want %d", got, t0.Format("15:04:05.000"), n)
		}
		return nil
	})
}

// outage is the longest time without a reply between the last reply
// before ev and the last reply before until.
func outage(replies []time.Time, ev, until time.Time) time.Duration {
	prev, gap := ev, time.Duration(0)
	for _, r := range replies {
		if r.After(until) {
			break
		}
		if !r.After(ev) {
			prev = r
			continue
		}
		gap = max(gap, r.Sub(prev))
		prev = r
	}
	return gap
}

func (o *overlay) recovery(t *testing.T, rep *Report, cfg config) {
	sec := "Recovery (continuous ping every 50 ms; outage = longest gap between replies)"
	both := func(p string) map[[2]*cluster.Agent]string {
		return map[[2]*cluster.Agent]string{{o.a, o.b}: p, {o.b, o.a}: p}
	}
	// Direct path cut: UDP between the two sites' public addresses dropped
	// on both routers; STUN and the relay (TCP) to the cloud still pass.
	var rules [][]string
	for _, sp := range [][2]*lab.Site{{o.siteA, o.siteB}, {o.siteB, o.siteA}} {
		other := sp[1].PublicIP().String()
		for _, r := range [][]string{
			{"FORWARD", "-p", "udp", "-d", other, "-j", "DROP"},
			{"FORWARD", "-p", "udp", "-s", other, "-j", "DROP"},
			{"OUTPUT", "-p", "udp", "-d", other, "-j", "DROP"},
			{"INPUT", "-p", "udp", "-s", other, "-j", "DROP"},
		} {
			rules = append(rules, append([]string{sp[0].Router().NS()}, r...))
		}
	}
	iptables := func(op string) error {
		for _, r := range rules {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := runNS(ctx, r[0], append([]string{"iptables", "-w", op}, r[1:]...)...)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}
	var cutGap, healDirect, healGap, rebindGap, rebindDirect, relayGap []float64
	// Record whatever was measured, even when a repetition fails.
	defer func() {
		rep.Add(&Measure{Section: sec, Name: "direct path cut -> traffic on the relay: outage", Unit: "s", Edgewire: cutGap})
		rep.Add(&Measure{Section: sec, Name: "path healed -> direct again on both sides", Unit: "s", Edgewire: healDirect,
			Note: fmt.Sprintf("outage while upgrading: median %.2f s", median(healGap))})
		rep.Add(&Measure{Section: sec, Name: "NAT rebinding (new ports, conntrack flushed): outage", Unit: "s", Edgewire: rebindGap})
		rep.Add(&Measure{Section: sec, Name: "NAT rebinding -> direct again on both sides", Unit: "s", Edgewire: rebindDirect})
		rep.Add(&Measure{Section: sec, Name: "home relay killed -> traffic via the other relay: outage", Unit: "s", Edgewire: relayGap})
	}()
	for r := range cfg.recReps {
		p, err := startPinger(o.ha, o.ipB, 120*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.waitReplies(time.Now(), 5, 10*time.Second); err != nil {
			t.Errorf("rep %d before the cut: %v (agent a exited: %v)", r, err, o.a.Proc.Exited())
			p.proc.Stop(time.Second)
			break
		}
		cut := time.Now()
		if err := iptables("-I"); err != nil {
			t.Fatal(err)
		}
		if err := p.waitReplies(cut, 20, 30*time.Second); err != nil {
			t.Errorf("rep %d after the cut: %v", r, err)
			iptables("-D")
			p.proc.Stop(time.Second)
			continue
		}
		if err := o.waitPaths(20*time.Second, both("relay")); err != nil {
			t.Logf("rep %d: not on relay after the cut: %v", r, err)
		}
		cutGap = append(cutGap, outage(p.replies(), cut, time.Now()).Seconds())
		healed := time.Now()
		iptables("-D")
		if err := o.waitPaths(60*time.Second, both("direct")); err != nil {
			t.Errorf("rep %d: not direct again after healing: %v", r, err)
		} else {
			healDirect = append(healDirect, time.Since(healed).Seconds())
		}
		time.Sleep(time.Second)
		healGap = append(healGap, outage(p.replies(), healed, time.Now()).Seconds())

		// NAT rebinding: site A's router maps UDP to a new port range and
		// forgets every mapping.
		lo := 40000 + 1000*r
		rebound := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = o.siteA.RemapUDP(ctx, lo, lo+999)
		cancel()
		if err != nil {
			t.Error(err)
			break
		}
		if err := p.waitReplies(rebound, 20, 30*time.Second); err != nil {
			t.Errorf("rep %d after NAT rebinding: %v", r, err)
		}
		if err := o.waitPaths(60*time.Second, both("direct")); err != nil {
			t.Errorf("rep %d: not direct after rebinding: %v", r, err)
		} else {
			rebindDirect = append(rebindDirect, time.Since(rebound).Seconds())
		}
		time.Sleep(time.Second)
		rebindGap = append(rebindGap, outage(p.replies(), rebound, time.Now()).Seconds())
		p.proc.Stop(time.Second)

		// Home relay killed: c (region 1) pings d (homed on r2); r2 dies.
		p, err = startPinger(o.hc, o.ipD, 90*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.waitReplies(time.Now(), 5, 15*time.Second); err != nil {
			t.Errorf("rep %d c -> d before killing r2: %v", r, err)
			p.proc.Stop(time.Second)
			continue
		}
		killed := time.Now()
		o.relay2.Proc.Kill()
		if err := p.waitReplies(killed, 20, 30*time.Second); err != nil {
			t.Errorf("rep %d c -> d after killing r2: %v", r, err)
		} else {
			relayGap = append(relayGap, outage(p.replies(), killed, time.Now()).Seconds())
		}
		p.proc.Stop(time.Second)
		o.relay2.Start()
		if err := lab.Eventually(60*time.Second, 250*time.Millisecond, func() error {
			st, err := o.d.Status()
			if err != nil {
				return err
			}
			if st.Self.Relay == nil || st.Self.Relay.Home != "r2" || !st.Self.Relay.Connected {
				return fmt.Errorf("d not back home on r2: %+v", st.Self.Relay)
			}
			return nil
		}); err != nil {
			t.Errorf("rep %d: %v", r, err)
		}
	}
}

// The idle measurements look at agent b, which runs with a pprof socket
// so its RSS can be split into binary pages, Go heap, stacks and runtime
// metadata. idleFresh runs before any traffic went through b: 3 lab
// peers, then 50 simulated peers more (real keys and netmap entries,
// their streams kept open by an in-process fleet dialling from the cloud
// host). idleAfter runs after the forwarding runs, once b has been idle
// for the settle time, again with 50 simulated peers. Between the two the
// simulated nodes are deleted, so the other measurements see the 4-node
// lab only.

// addFleet brings 50 simulated peers up and returns a function that
// closes their streams and deletes them from the coordinator.
func (o *overlay) addFleet(t *testing.T) (remove func()) {
	cloud := o.coord.Host
	f, err := newFleet(func(ctx context.Context, addr string) (net.Conn, error) { return cloud.DialTCP(ctx, addr) }, "127.0.0.1:8443", o.tok)
	if err != nil {
		t.Fatal(err)
	}
	o.fleetGen++
	var names []string
	remove = func() {
		f.Close()
		for _, n := range names {
			if _, err := o.coord.CLI("nodes", "delete", n); err != nil {
				t.Logf("delete %s: %v", n, err)
			}
		}
	}
	var nodes []*simNode
	for i := range 50 {
		name := fmt.Sprintf("idle%d-%d", o.fleetGen, i)
		names = append(names, name)
		n, err := f.newNode(name)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	if _, err := f.bringUp(nodes, 8, 2*time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(60*time.Second, 500*time.Millisecond, func() error {
		st, err := o.b.Status()
		if err != nil {
			return err
		}
		if len(st.Peers) < 53 {
			return fmt.Errorf("agent b has %d peers, want 53", len(st.Peers))
		}
		return nil
	}); err != nil {
		remove()
		t.Fatal(err)
	}
	return remove
}

// sampleIdle measures agent b's CPU over window and then its RSS, reps times.
func (o *overlay) sampleIdle(t *testing.T, cfg config, window time.Duration) (cores, rss []float64) {
	pid := o.b.Proc.Pid()
	for range cfg.reps {
		m, err := startCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(window)
		c, _ := m.cores()
		r, _, _ := procMem(pid)
		cores, rss = append(cores, c), append(rss, r)
	}
	return cores, rss
}

// memNote records b's memory breakdown as a finding, a row for its
// anonymous (private) memory, and its profiles, and returns the breakdown
// (ok false when it could not be measured).
func (o *overlay) memNote(t *testing.T, rep *Report, cfg config, name, what string, ref []float64) (memBreakdown, bool) {
	mem, err := agentMem(o.b.Proc.Pid(), o.bPprof)
	if err != nil {
		t.Errorf("memory breakdown: %v", err)
		return mem, false
	}
	rep.SetRaw("idle/"+name, mem)
	top := "the binary's file-backed pages, which the kernel can drop and share between processes"
	if mem.Anon > mem.File {
		top = "anonymous memory (Go heap, stacks, runtime)"
	}
	rep.Note("Agent b idle memory, %s: %s. Largest part: %s.", what, mem, top)
	t.Logf("%s: %s", what, mem)
	if err := saveProfiles(o.bPprof, cfg.profiles, "agent-b-"+name); err != nil {
		t.Errorf("save profiles: %v", err)
	}
	m := &Measure{Section: "Agent cost while idle (agent b)", Name: what + ": anonymous memory (RSS without the binary's pages)", Unit: "MiB", Edgewire: []float64{mem.Anon}}
	if len(ref) > 0 {
		m.RefName, m.Reference = "fresh", ref
	}
	o.idleRows = append(o.idleRows, m)
	return mem, true
}

// idleFresh also splits b's idle memory into what is fixed and what
// each peer adds: the breakdown with 3 peers against the one with 53,
// and how much of the binary's resident pages the idle agent touches.
func (o *overlay) idleFresh(t *testing.T, rep *Report, cfg config) {
	sec := "Agent cost while idle (agent b)"
	pid := o.b.Proc.Pid()
	time.Sleep(5 * time.Second)
	c3, r3 := o.sampleIdle(t, cfg, 10*time.Second)
	mem3, err := agentMem(pid, o.bPprof)
	if err != nil {
		t.Errorf("memory breakdown, 3 peers: %v", err)
	}
	rep.SetRaw("idle/fresh3", mem3)
	defer o.addFleet(t)()
	peers, _ := o.b.WGShow()
	time.Sleep(15 * time.Second) // let the map and any ICE attempts to the silent peers settle
	if err := clearRefs(pid); err != nil {
		t.Errorf("clear referenced bits: %v", err)
	}
	c53, r53 := o.sampleIdle(t, cfg, 20*time.Second)
	fileRSS, fileRef, err := fileReferenced(pid)
	if err != nil {
		t.Errorf("referenced pages: %v", err)
	}
	o.freshRSS = r53
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: "fresh (no traffic yet), 53 peers (50 simulated): RSS", Unit: "MiB", Edgewire: r53,
		RefName: "same agent, 3 peers", Reference: r3, Target: "< 20 MB", Met: met(median(r53) < 20*1e6/(1<<20))})
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: "fresh, 53 peers: CPU", Unit: "cores", Edgewire: c53,
		RefName: "same agent, 3 peers", Reference: c3, Note: fmt.Sprintf("wg show lists %d peers", len(peers))})
	idle := time.Duration(cfg.reps) * 20 * time.Second
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: fmt.Sprintf("fresh, 53 peers: the binary's pages touched in %v idle", idle), Unit: "MiB", Edgewire: []float64{fileRef},
		RefName: "resident", Reference: []float64{fileRSS}})
	mem53, ok := o.memNote(t, rep, cfg, "fresh", "fresh with 53 peers", nil)
	if !ok {
		return
	}
	o.freshAnon = []float64{mem53.Anon}
	if mem3.RSS == 0 {
		return
	}
	// Per peer: what 50 more peers added, over 50. Anonymous memory
	// includes garbage not yet collected, which the trimmer bounds.
	const n = 50
	perPeer := (median(r53) - median(r3)) * 1024 / n
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: "per peer (RSS with 53 peers minus with 3, over 50)", Unit: "KiB", Edgewire: []float64{perPeer}})
	fixed := median(r3) - 3*perPeer/1024
	rep.Note("Agent b idle memory, fixed vs per peer: fixed %.1f MiB (RSS with 3 peers less 3 peers' share), of which the binary's file-backed pages %.1f "+
		"(%.1f of them touched in %v idle: init touches most 64 KiB windows of the binary and the kernel maps whole windows), anonymous %.1f "+
		"(the runtime's metadata, %.1f MiB mapped and partly resident, stacks %.1f for %d goroutines, the rest heap: %.0f MiB in use, mostly wireguard-go's batch buffers, resident only where written); "+
		"per peer %.0f KiB of RSS: %.1f goroutines (wireguard-go runs a sequential sender and receiver per peer) with %.1f KiB of stacks, and %.0f KiB of anonymous memory in all "+
		"(from one breakdown each: wireguard-go's peer, its queues and handshake state, the agent's path machine and map entry, and garbage awaiting the next trim).",
		fixed, mem3.File, fileRef, idle, mem3.Anon, mem3.RuntimeOther, mem3.Stacks, mem3.Goroutines, mem3.HeapInuse,
		perPeer, float64(mem53.Goroutines-mem3.Goroutines)/n, (mem53.Stacks-mem3.Stacks)*1024/n, (mem53.Anon-mem3.Anon)*1024/n)
}

func (o *overlay) idleAfter(t *testing.T, rep *Report, cfg config) {
	sec := "Agent cost while idle (agent b)"
	settled := time.Now().Add(cfg.idleSettle) // counted from the last forwarding (the recovery pings)
	defer o.addFleet(t)()
	time.Sleep(time.Until(settled))
	c, r := o.sampleIdle(t, cfg, 20*time.Second)
	what := fmt.Sprintf("after the forwarding runs and %v idle, 53 peers", cfg.idleSettle)
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: what + ": RSS", Unit: "MiB", Edgewire: r,
		RefName: "fresh", Reference: o.freshRSS, Target: "< 20 MB", Met: met(median(r) < 20*1e6/(1<<20))})
	o.idleRows = append(o.idleRows, &Measure{Section: sec, Name: what + ": CPU", Unit: "cores", Edgewire: c})
	o.memNote(t, rep, cfg, "after", what, o.freshAnon)
}

// runNS runs argv inside namespace ns.
func runNS(ctx context.Context, ns string, argv ...string) (string, error) {
	cmd := execCommand(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// pathProfile is where one more TCP 1 stream run's CPU went: cores per
// Gbit/s by kind of work (cpuKinds), per process, from CPU profiles.
type pathProfile struct {
	gbps  float64
	procs map[string]map[string]float64 // process -> kind -> cores per Gbit/s
}

// of returns proc's cores per Gbit/s on kind ("" for every kind; proc ""
// for every process).
func (p pathProfile) of(proc, kind string) float64 {
	var s float64
	for pr, kinds := range p.procs {
		for k, v := range kinds {
			if (proc == "" || pr == proc) && (kind == "" || k == kind) {
				s += v
			}
		}
	}
	return s
}

// profilePath runs one more TCP 1 stream (not counted in the throughput
// rows) from a to addr while taking CPU profiles of the processes whose
// pprof sockets socks names, and sorts their samples by kind. The
// profiles are kept in BENCH_PROFILES when it is set.
func (o *overlay) profilePath(cfg config, name, addr string, socks map[string]string) (pathProfile, error) {
	dir := cfg.profiles
	if dir == "" {
		dir = o.l.Dir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return pathProfile{}, err
	}
	dur := max(cfg.dur, 8*time.Second) // enough samples at pprof's 100 Hz
	secs := int(dur.Seconds()) - 2
	files := map[string]string{}
	errs := make(chan error, len(socks))
	var wg sync.WaitGroup
	for proc, sock := range socks {
		file := filepath.Join(dir, name+"-tcp1-"+proc+".cpu.pprof")
		files[proc] = file // the goroutines read only their own file, never the map
		wg.Go(func() {
			time.Sleep(time.Second) // past iperf3's slow start
			b, err := pprofGet(sock, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs))
			if err == nil {
				err = os.WriteFile(file, b, 0o644)
			}
			if err != nil {
				errs <- fmt.Errorf("profile of %s: %w", proc, err)
			}
		})
	}
	g, err := iperf(o.ha, addr, flows[0], dur)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	if err == nil && g <= 0 {
		err = fmt.Errorf("moved nothing")
	}
	if err != nil {
		return pathProfile{}, fmt.Errorf("%s TCP 1 stream while profiling: %w", name, err)
	}
	p := pathProfile{gbps: g, procs: map[string]map[string]float64{}}
	for proc, f := range files {
		kinds, err := profileKinds(f)
		if err != nil {
			return pathProfile{}, err
		}
		for k := range kinds {
			kinds[k] /= g
		}
		p.procs[proc] = kinds
	}
	return p, nil
}

// profilePaths profiles one more direct and one more relayed TCP 1 stream.
func (o *overlay) profilePaths(cfg config) (direct, relay pathProfile, err error) {
	direct, err = o.profilePath(cfg, "direct", o.ipB.String(), map[string]string{"agent a": o.pprofs["agent-a"], "agent b": o.bPprof})
	if err == nil {
		relay, err = o.profilePath(cfg, "relay", o.ipC.String(), map[string]string{"agent a": o.pprofs["agent-a"], "relay": o.pprofs["coordinator"], "agent c": o.pprofs["agent-c"]})
	}
	return direct, relay, err
}

// reportProfiles reports, by kind of work, what the relay path costs per
// Gbit/s against the direct path: where its extra CPU goes.
func reportProfiles(rep *Report, direct, relay pathProfile) {
	sec := fmt.Sprintf("Where the CPU goes, TCP 1 stream (CPU profiles of one more run each way: direct %.2f Gbit/s, relay %.2f Gbit/s; cores per Gbit/s by the function each sample was in)", direct.gbps, relay.gbps)
	for _, kind := range append(cpuKindNames(), "") {
		name := kind
		if kind == "" {
			name = "all"
		}
		rep.Add(&Measure{Section: sec, Name: name + ": relay path (agent a + relay + agent c) vs direct (agents a + b)", Unit: "cores",
			Edgewire: []float64{relay.of("", kind)}, RefName: "direct", Reference: []float64{direct.of("", kind)},
			Note: fmt.Sprintf("relay: agent a %.3f, relay %.3f, agent c %.3f; direct: agent a %.3f, agent b %.3f",
				relay.of("agent a", kind), relay.of("relay", kind), relay.of("agent c", kind), direct.of("agent a", kind), direct.of("agent b", kind))})
	}
}

// inflightFlag is the --max-inflight-packets the overlay agents run with:
// BENCH_AGENT_ARGS's, or the agent's default.
func inflightFlag() string {
	v := strconv.Itoa(agent.DefaultMaxInflight)
	for i, a := range agentArgs {
		if a == "--max-inflight-packets" && i+1 < len(agentArgs) {
			v = agentArgs[i+1]
		} else if after, ok := strings.CutPrefix(a, "--max-inflight-packets="); ok {
			v = after
		}
	}
	return v
}

// memoryBound draws the trade curve of --max-inflight-packets: TCP, 1
// stream, a -> b direct, with both agents restarted (fresh memory) for
// every run, settings taken in a rotating order in every round so drift in
// the machine's load is shared. Each run's peak RSS is sampled every 100
// ms on both agents. The reference is the agent as it was before the
// bound: no bound and the Go runtime's default GC target (100).
func (o *overlay) memoryBound(t *testing.T, rep *Report, cfg config) {
	type setting struct{ bound, gc int } // gc 0: the agent's default
	before := setting{0, 100}
	settings := []setting{before, {0, 0}, {64, 0}, {128, 0}, {256, 0}, {1024, 0}}
	if !slices.Contains(settings, setting{agent.DefaultMaxInflight, 0}) {
		settings = append(settings, setting{agent.DefaultMaxInflight, 0})
	}
	settings = append(settings, setting{agent.DefaultMaxInflight, 100}) // what the GC target adds to the bound
	// Plain wireguard-go's tunnel between a and b is done with (latency
	// and throughput ran before): its interfaces would offer restarted
	// agents' ICE host candidates on a path through it, whose MTU is the
	// tunnel's own.
	for _, p := range []*lab.Process{o.plainA, o.plainB} {
		p.Stop(10 * time.Second)
	}
	gbps := map[setting][]float64{}
	peak := map[setting]map[string][]float64{}
	// restart starts agents a and b again as they were, plus extra flags,
	// and waits until the tunnel between them is direct and carries a
	// ping.
	restart := func(extra ...string) error {
		for _, ag := range []*cluster.Agent{o.a, o.b} {
			if err := ag.Proc.Stop(10 * time.Second); err != nil {
				return fmt.Errorf("stop agent %s: %w", ag.Name, err)
			}
		}
		o.a.StartWith(append(slices.Clone(o.aArgs), extra...)...)
		o.b.StartWith(append(slices.Clone(o.bArgs), extra...)...)
		if err := o.waitPaths(60*time.Second, map[[2]*cluster.Agent]string{{o.a, o.b}: "direct", {o.b, o.a}: "direct"}); err != nil {
			return err
		}
		// Both ends restarted at once: a handshake initiation sent before
		// the other end was up is retried only after WireGuard's 5 s
		// rekey timeout. Wait for the tunnel to carry a ping.
		return lab.Eventually(20*time.Second, 100*time.Millisecond, func() error {
			_, _, err := pingRTTs(o.ha, o.ipB.String(), 1, 100*time.Millisecond)
			return err
		})
	}
	defer func() { // the later sections run with the agents as they were
		if err := restart(); err != nil {
			t.Fatalf("agents restarted as they were: %v", err)
		}
	}()
	for r := range cfg.reps {
		for i := range settings {
			st := settings[(i+r)%len(settings)]
			args := []string{"--max-inflight-packets", strconv.Itoa(st.bound)}
			if st.gc != 0 {
				args = append(args, "--gc-percent", strconv.Itoa(st.gc))
			}
			if err := restart(args...); err != nil {
				t.Fatalf("%+v: %v", st, err)
			}
			smp := sampleRSS(map[string]int{"sender": o.a.Proc.Pid(), "receiver": o.b.Proc.Pid()})
			g, err := iperf(o.ha, o.ipB.String(), flows[0], cfg.dur)
			p := smp.stop()
			if err != nil {
				t.Logf("%+v: %.300v", st, err)
				o.srvB.restart()
				continue
			}
			gbps[st] = append(gbps[st], g)
			if peak[st] == nil {
				peak[st] = map[string][]float64{}
			}
			for name, v := range p {
				peak[st][name] = append(peak[st][name], v)
			}
		}
	}
	raw := map[string]any{}
	for _, st := range settings {
		raw[fmt.Sprintf("bound=%d,gc=%d", st.bound, st.gc)] = map[string]any{"gbps": gbps[st], "peak_rss_mib": peak[st]}
	}
	rep.SetRaw("memory_bound", raw)
	sec := fmt.Sprintf("Data-plane memory bound: --max-inflight-packets against throughput and memory (TCP, 1 stream, direct a -> b, %v per run; agents restarted for each run; --gc-percent %d unless said)", cfg.dur, agent.DefaultGCPercent)
	for _, st := range settings {
		name := fmt.Sprintf("--max-inflight-packets %d", st.bound)
		switch {
		case st == before:
			name += " --gc-percent 100 (before: no bound, the runtime's GC target)"
		case st.gc != 0:
			name += fmt.Sprintf(" --gc-percent %d", st.gc)
		case st.bound == 0:
			name += " (no bound)"
		case st.bound == agent.DefaultMaxInflight:
			name += " (the default)"
		}
		m := &Measure{Section: sec, Name: name + ": throughput", Unit: "Gbit/s", Edgewire: gbps[st]}
		if st != before {
			m.RefName, m.Reference = "before", gbps[before]
		}
		rep.Add(m)
		if st == (setting{agent.DefaultMaxInflight, 0}) {
			m.Target = ">= 0.95x"
			if len(m.Edgewire) > 0 && len(m.Reference) > 0 {
				m.Met = met(m.Ratio >= 0.95)
			}
		}
		for _, side := range []string{"sender", "receiver"} {
			m := rep.Add(&Measure{Section: sec, Name: name + ": peak RSS, " + side, Unit: "MiB", Edgewire: peak[st][side]})
			if st == (setting{agent.DefaultMaxInflight, 0}) && len(m.Edgewire) > 0 {
				m.Target = "<= 64 MiB (the largest run)"
				m.Met = met(slices.Max(m.Edgewire) <= 64)
				if slices.Max(m.Edgewire) > 64 {
					rep.Note("Memory bound: the %s's peak at the default bound (%.0f MiB at most) is above 64 MiB. Its parts: the binary's pages (about 19 MiB), "+
						"wireguard-go's batch buffers (128 x 64 KiB per reader: the IPv4 and IPv6 sockets, the relay, the TUN device; 32 MiB of heap, resident where written), "+
						"up to %d packets of 64 KiB in flight, and garbage: the GC counts the batch buffers as live, written or not, so its goal (%d%% over live data) "+
						"leaves that much more heap before it collects. A lower --gc-percent trades throughput for the rest (docs/memory.md).",
						side, slices.Max(m.Edgewire), 2*agent.DefaultMaxInflight, agent.DefaultGCPercent)
				}
			}
		}
	}
}
