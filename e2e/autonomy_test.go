package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

// TestCoordinatorDown: edge autonomy. Two nodes behind EIM NATs are
// direct; the coordinator (and its embedded relay) goes away. A 15 s UDP
// outage at one site must not kill the direct path for good: the pair
// answers again within 10 s of the outage ending. An agent restarted
// while the coordinator is still down reaches its peer within 10 s from
// its saved direct endpoints. When the coordinator returns, both agents
// are on a stream again within their backoff cap (no second backoff
// hidden in the gRPC client) and the pair is confirmed direct again
// within 15 s of that.
func TestCoordinatorDown(t *testing.T) {
	lab.Require(t)
	start := time.Now()
	phase := func(name string) { t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name) }
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	sa, sb := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM)
	a := &natNode{name: "a", spot: natSpot{natEIM, "sa"}, host: sa.AddNode("a"), nats: []*lab.Site{sa}}
	b := &natNode{name: "b", spot: natSpot{natEIM, "sb"}, host: sb.AddNode("b"), nats: []*lab.Site{sb}}
	nodes := []*natNode{a, b}
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)
	phase("a and b direct")

	if err := coord.Proc.Stop(10 * time.Second); err != nil {
		t.Logf("coordinator stop: %v", err)
	}
	replies := func(from, to *natNode, within time.Duration) (time.Duration, error) {
		t0 := time.Now()
		err := lab.Eventually(within, 0, func() error {
			n, err := from.host.Ping(context.Background(), to.overlay, 1)
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("no reply from %s", to.name)
			}
			return nil
		})
		return time.Since(t0), err
	}
	if _, err := replies(a, b, 10*time.Second); err != nil {
		routes, _ := a.host.Exec(context.Background(), "sh", "-c", "ip route get "+b.overlay.String()+"; ip rule; ip route show table all | grep 100.64")
		t.Fatalf("coordinator down, before any outage: %v\n\t%s\n\t%s\n%s", err, wgPeerState(a, b), wgPeerState(b, a), routes)
	}
	phase("coordinator and relay down; a and b still talk")

	t.Run("a 15 s UDP outage at one site heals without the coordinator", func(t *testing.T) {
		block := []string{"iptables", "-w", "-I", "FORWARD", "-p", "udp", "-j", "DROP"}
		sa.Router().MustExec(t, block...)
		time.Sleep(15 * time.Second)
		sa.Router().MustExec(t, "iptables", "-w", "-D", "FORWARD", "-p", "udp", "-j", "DROP")
		d, err := replies(a, b, 10*time.Second)
		if err != nil {
			t.Fatalf("no reply a -> b within 10 s of the outage ending: %v\n\t%s\n\t%s", err, wgPeerState(a, b), wgPeerState(b, a))
		}
		t.Logf("a -> b answered %v after the outage ended", d.Round(100*time.Millisecond))
		if _, err := replies(b, a, 5*time.Second); err != nil {
			t.Errorf("b -> a: %v", err)
		}
		st, err := a.agent.Status()
		if err == nil && len(st.Peers) == 1 && (st.Peers[0].Path != "direct" || !st.Peers[0].LastKnown) {
			t.Errorf("a's path to b without relay and coordinator: %s (last known %v), want the last known direct endpoint", st.Peers[0].Path, st.Peers[0].LastKnown)
		}
	})
	phase("outage healed")

	t.Run("an agent restarted while the coordinator is down reaches its peer", func(t *testing.T) {
		if err := a.agent.Proc.Stop(30 * time.Second); err != nil {
			t.Logf("stop a: %v", err)
		}
		a.agent.Start()
		d, err := replies(a, b, 10*time.Second)
		if err != nil {
			t.Fatalf("restarted a -> b: no reply within 10 s: %v\n\t%s\n\t%s", err, wgPeerState(a, b), wgPeerState(b, a))
		}
		t.Logf("restarted a reached b %v after its start", d.Round(100*time.Millisecond))
	})
	phase("restart healed")

	t.Run("the coordinator back: streams and direct paths return promptly", func(t *testing.T) {
		coord.Start()
		up := time.Now()
		// The agents' own backoff is capped at 30 s (with jitter below it).
		for _, n := range nodes {
			if err := n.agent.WaitConnected(35 * time.Second); err != nil {
				t.Fatalf("%s: not on a stream %v after the coordinator came back: %v", n.name, time.Since(up).Round(time.Second), err)
			}
		}
		connected := time.Since(up)
		err := lab.Eventually(15*time.Second, 200*time.Millisecond, func() error {
			for _, x := range nodes {
				st, err := x.agent.Status()
				if err != nil {
					return err
				}
				if len(st.Peers) != 1 || st.Peers[0].Path != "direct" || st.Peers[0].LastKnown {
					return fmt.Errorf("%s's path: %+v", x.name, st.Peers)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("not confirmed direct within 15 s of reconnecting (%v after the coordinator): %v", connected.Round(time.Second), err)
		}
		t.Logf("both on a stream %v and confirmed direct %v after the coordinator came back", connected.Round(100*time.Millisecond), time.Since(up).Round(100*time.Millisecond))
		if _, err := replies(a, b, 5*time.Second); err != nil {
			t.Error(err)
		}
	})
}

// TestSmallUnderlayMTU: one site reaches the internet through a link with
// a 1280-byte MTU (its ISP's router fragments or answers "fragmentation
// needed", as a real one does). With the default configuration bulk
// traffic must not blackhole: a 20 MB TCP transfer completes both ways,
// and 1400-byte DF pings over the overlay pass.
func TestSmallUnderlayMTU(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	isp := l.AddSite("isp", lab.NATEIM)
	sa := isp.AddSite("sa", lab.NATEIM)
	sb := l.AddSite("sb", lab.NATEIM)
	// The 1280 link is between the ISP's router and the site's.
	sa.SetUplinkMTU(1280)
	a := &natNode{name: "a", spot: natSpot{natEIM, "sa"}, host: sa.AddNode("a"), nats: []*lab.Site{sa, isp}}
	b := &natNode{name: "b", spot: natSpot{natEIM, "sb"}, host: sb.AddNode("b"), nats: []*lab.Site{sb}}
	nodes := []*natNode{a, b}
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)

	for _, dir := range [][2]*natNode{{a, b}, {b, a}} {
		from, to := dir[0], dir[1]
		t.Run(fmt.Sprintf("20 MB TCP %s to %s", from.name, to.name), func(t *testing.T) {
			t0 := time.Now()
			transfer(t, from, to, 20<<20)
			t.Logf("20 MB in %v", time.Since(t0).Round(time.Millisecond))
		})
	}
	t.Run("1400-byte DF pings over the overlay pass", func(t *testing.T) {
		out, err := a.host.Exec(ctxT(t, 20*time.Second), "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1372", b.overlay.String())
		if !strings.Contains(out, " 5 received") {
			t.Errorf("ping -M do -s 1372 a -> b: %v\n%s", err, out)
		}
	})
}

// TestLossPerDatagram: the lab's loss is per datagram, as on a real
// link. With single datagrams on the wire, a router sees every
// WireGuard datagram of a bulk transfer as its own packet (before, one
// packet per GSO batch of about 23), so 5% loss drops about 5% of them
// and a transfer still completes.
func TestLossPerDatagram(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	coord := cluster.StartCoordinator(t, l, cloud)
	sa, sb := l.AddSite("sa", lab.NATEIM), l.AddSite("sb", lab.NATEIM)
	a := &natNode{name: "a", spot: natSpot{natEIM, "sa"}, host: sa.AddNode("a"), nats: []*lab.Site{sa}}
	b := &natNode{name: "b", spot: natSpot{natEIM, "sb"}, host: sb.AddNode("b"), nats: []*lab.Site{sb}}
	nodes := []*natNode{a, b}
	for _, n := range nodes {
		if err := n.host.SendSingleDatagrams(); err != nil {
			t.Fatal(err)
		}
	}
	startNodes(t, l, coord, nodes, nil)
	defer matrixOnFailure(t, nodes, expectedPath)
	waitPaths(t, nodes, expectedPath, 45*time.Second)

	udp, err := sa.Router().AddCounter("FORWARD", "-i", "lan", "-p", "udp")
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	before, _ := udp.Packets()
	transfer(t, a, b, size)
	after, err := udp.Packets()
	if err != nil {
		t.Fatal(err)
	}
	// 8 MiB in datagrams of at most 1420 bytes of payload.
	if n, want := after-before, uint64(size/1420); n < want*9/10 {
		t.Errorf("the router saw %d UDP packets for 8 MiB over the overlay; want about %d or more (one per datagram, not per GSO batch)", n, want)
	}
	t.Run("a transfer completes through 5% loss per datagram", func(t *testing.T) {
		undo := sa.DropUDP(5)
		defer undo()
		transfer(t, a, b, size)
		// Not vacuous: the rule dropped some of it.
		out := sa.Router().MustExec(t, "iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n")
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) > 2 && strings.Contains(line, "statistic") && f[2] == "DROP" {
				if f[0] == "0" {
					t.Errorf("the 5%% rule dropped nothing:\n%s", out)
				}
				return
			}
		}
		t.Errorf("no drop rule in the router's FORWARD chain:\n%s", out)
	})
}

// transfer sends size bytes over TCP from one node to the other's
// overlay address and fails the test unless all of them arrive within
// 60 s.
func transfer(t *testing.T, from, to *natNode, size int64) {
	t.Helper()
	ln, err := to.host.ListenTCP(to.overlay.String() + ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		c.SetDeadline(time.Now().Add(60 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	c, err := from.host.DialTCP(ctxT(t, 60*time.Second), to.overlay.String()+":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	sent, err := io.Copy(c, io.LimitReader(zeros{}, size))
	c.CloseWrite()
	if err != nil {
		t.Fatalf("%s -> %s: sent %d of %d bytes: %v", from.name, to.name, sent, size, err)
	}
	if n := <-got; n != size {
		t.Fatalf("%s -> %s: received %d of %d bytes", from.name, to.name, n, size)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
