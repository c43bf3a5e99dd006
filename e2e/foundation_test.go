package e2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/e2e/cluster"
	"github.com/edgewire/edgewire/e2e/lab"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pingAll asserts that from can ping every address with every reply back.
func mustPing(t *testing.T, from *cluster.Agent, to netip.Addr, count int) {
	t.Helper()
	// The first packet may wait for the WireGuard handshake; allow one retry round.
	var got int
	err := lab.Eventually(15*time.Second, 0, func() error {
		var err error
		got, err = from.Host.Ping(ctxT(t, 20*time.Second), to, count)
		if err != nil {
			return err
		}
		if got != count {
			return fmt.Errorf("%d of %d replies", got, count)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ping %s -> %s: %v", from.Name, to, err)
	}
}

// tcpExchange sends a message over TCP from a to b's overlay address and
// checks b receives it intact and answers.
func tcpExchange(t *testing.T, from, to *cluster.Agent) {
	t.Helper()
	ip := to.OverlayIP()
	ln, err := to.Host.ListenTCP(netip.AddrPortFrom(ip, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Large enough for full-size segments: packets at the MTU have padding
	// cut short (a length that is not 32+16k), which a too-strict packet
	// classifier once dropped while pings and small writes still worked.
	msg := "hello over the overlay from " + from.Name + strings.Repeat(" and a full-size payload", 40000)
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			done <- err
			return
		}
		if string(buf) != msg {
			done <- fmt.Errorf("server got %d bytes that differ from the %d sent", len(buf), len(msg))
			return
		}
		_, err = c.Write([]byte("ack"))
		done <- err
	}()
	c, err := from.Host.DialTCP(ctxT(t, 10*time.Second), netip.AddrPortFrom(ip, 7000).String())
	if err != nil {
		t.Fatalf("dial %s over overlay: %v", to.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 3)
	if _, err := io.ReadFull(c, ack); err != nil || string(ack) != "ack" {
		t.Fatalf("read ack: got %q, %v", ack, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFoundation(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	cloud := l.AddPublicHost("cloud")
	hosts := []*lab.Host{l.AddPublicHost("h1"), l.AddPublicHost("h2"), l.AddPublicHost("h3")}
	coord := cluster.StartCoordinator(t, l, cloud)

	t.Run("bad tokens are refused and change nothing", func(t *testing.T) {
		used := coord.Token("--uses", "1")
		revoked := coord.Token()
		expired := coord.Token("--ttl", "1s")
		id := strings.Split(revoked, ".")[1]
		if _, err := coord.CLI("token", "revoke", id); err != nil {
			t.Fatal(err)
		}
		// Spend the one-use token on a throwaway node, then delete it.
		join := func(name, tok string) (string, error) {
			return hosts[0].Exec(ctxT(t, 20*time.Second), cluster.Bin(t, "edgewire-agent"), "join",
				"--state-dir", l.Dir()+"/join-"+name, "--coordinator", coord.Addr(), "--token", tok, "--name", name)
		}
		if out, err := join("scratch", used); err != nil {
			t.Fatalf("first use of a one-use token: %v\n%s", err, out)
		}
		if _, err := coord.CLI("nodes", "delete", "scratch"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond)                       // let the 1s token expire
		tampered := used[:len(used)-44] + strings.Repeat("A", 43) // right shape, wrong CA pin
		for _, tc := range []struct{ name, tok, want string }{
			{"used up", used, "used up"},
			{"revoked", revoked, "revoked"},
			{"expired", expired, "expired"},
			{"malformed", "ewt1.nothex!.x.y", "malformed"},
			{"wrong CA pin", tampered, "pin"},
		} {
			out, err := join("bad-"+strings.ReplaceAll(tc.name, " ", ""), tc.tok)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("%s token: got err=%v output %q, want an error mentioning %q", tc.name, err, out, tc.want)
			}
		}
		out, err := coord.CLI("nodes", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "null" && strings.TrimSpace(out) != "[]" {
			t.Errorf("refused joins left nodes behind: %s", out)
		}
	})

	t.Run("admin over TLS needs the admin token", func(t *testing.T) {
		cli := cluster.Bin(t, "edgewire")
		ca := filepath.Join(coord.DataDir, "pki", "ca.crt")
		good := filepath.Join(coord.DataDir, "admin.token")
		bad := filepath.Join(l.Dir(), "wrong.token")
		if err := os.WriteFile(bad, []byte("ewadm1.0000\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		run := func(tokenFile string) (string, error) {
			return hosts[0].Exec(ctxT(t, 20*time.Second), cli, "--coordinator", coord.Addr(),
				"--admin-token-file", tokenFile, "--ca-file", ca, "token", "list")
		}
		if out, err := run(good); err != nil {
			t.Errorf("token list over TLS with the admin token: %v\n%s", err, out)
		}
		if out, err := run(bad); err == nil || !strings.Contains(out, "admin token") {
			t.Errorf("token list with a wrong token: got err=%v output %q, want a refusal naming the admin token", err, out)
		}
	})

	tok := coord.Token("--uses", "3")
	agents := make([]*cluster.Agent, len(hosts))
	for i, h := range hosts {
		agents[i] = cluster.StartAgent(t, l, h, coord, fmt.Sprintf("n%d", i+1), cluster.AgentOptions{Token: tok})
	}
	for _, a := range agents {
		a.WaitPeers(2, 30*time.Second)
	}
	ips := map[string]netip.Addr{}
	for _, a := range agents {
		ip := a.OverlayIP()
		if !netip.MustParsePrefix("100.64.0.0/10").Contains(ip) {
			t.Fatalf("%s overlay IP %s outside 100.64.0.0/10", a.Name, ip)
		}
		ips[a.Name] = ip
	}

	t.Run("ping and TCP over the overlay", func(t *testing.T) {
		for _, from := range agents {
			for _, to := range agents {
				if from != to {
					mustPing(t, from, ips[to.Name], 3)
				}
			}
		}
		tcpExchange(t, agents[0], agents[1])
		tcpExchange(t, agents[2], agents[0])
	})

	t.Run("wg show lists peers with recent handshakes and traffic", func(t *testing.T) {
		for _, a := range agents {
			peers, err := a.WGShow()
			if err != nil {
				t.Fatal(err)
			}
			if len(peers) != 2 {
				t.Fatalf("%s: wg show lists %d peers, want 2", a.Name, len(peers))
			}
			for k, p := range peers {
				if age := time.Since(p.LastHandshake); p.LastHandshake.IsZero() || age > 2*time.Minute {
					t.Errorf("%s peer %s: last handshake %v ago, want a recent one", a.Name, k, age)
				}
				if p.Rx == 0 || p.Tx == 0 {
					t.Errorf("%s peer %s: rx %d tx %d, want both > 0", a.Name, k, p.Rx, p.Tx)
				}
				if p.Endpoint == "(none)" {
					t.Errorf("%s peer %s has no endpoint", a.Name, k)
				}
			}
			st, err := a.Status()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range st.Peers {
				if p.Path != "direct" || p.RxBytes == 0 || !p.Online {
					t.Errorf("%s status of %s: path %s rx %d online %v, want direct, traffic, online", a.Name, p.Name, p.Path, p.RxBytes, p.Online)
				}
			}
		}
	})

	t.Run("data plane survives the coordinator and agents reconnect", func(t *testing.T) {
		coord.Proc.Kill()
		err := lab.Eventually(15*time.Second, 200*time.Millisecond, func() error {
			st, err := agents[0].Status()
			if err != nil {
				return err
			}
			if st.Self.Connected {
				return fmt.Errorf("still connected")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("agent did not notice the coordinator is gone: %v", err)
		}
		mustPing(t, agents[0], ips["n2"], 5)
		mustPing(t, agents[2], ips["n1"], 5)
		coord.Start()
		for _, a := range agents {
			if err := a.WaitConnected(45 * time.Second); err != nil {
				t.Fatalf("%s: %v", a.Name, err)
			}
		}
		mustPing(t, agents[1], ips["n3"], 3)
	})

	t.Run("restarted agent keeps key and overlay IP and removes its interface on exit", func(t *testing.T) {
		a := agents[2]
		before, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Proc.Stop(10 * time.Second); err != nil {
			t.Fatalf("agent exit: %v", err)
		}
		if out, err := a.Host.Exec(ctxT(t, 5*time.Second), "ip", "link", "show", a.Iface); err == nil {
			t.Fatalf("interface %s still exists after clean exit:\n%s", a.Iface, out)
		}
		a.Start()
		after := a.WaitPeers(2, 30*time.Second)
		if after.Self.PublicKey != before.Self.PublicKey {
			t.Errorf("public key changed across restart: got %s, want %s", after.Self.PublicKey, before.Self.PublicKey)
		}
		if fmt.Sprint(after.Self.Addresses) != fmt.Sprint(before.Self.Addresses) {
			t.Errorf("overlay addresses changed across restart: got %v, want %v", after.Self.Addresses, before.Self.Addresses)
		}
		mustPing(t, agents[0], ips["n3"], 3)
	})

	t.Run("deleted node leaves every peer's WireGuard config within 10s", func(t *testing.T) {
		gone, err := agents[2].Status()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := coord.CLI("nodes", "delete", "n3"); err != nil {
			t.Fatal(err)
		}
		for _, a := range agents[:2] {
			err := lab.Eventually(10*time.Second, 200*time.Millisecond, func() error {
				peers, err := a.WGShow()
				if err != nil {
					return err
				}
				if _, ok := peers[gone.Self.PublicKey]; ok {
					return fmt.Errorf("n3 still in wg show")
				}
				if len(peers) != 1 {
					return fmt.Errorf("%d peers, want 1", len(peers))
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", a.Name, err)
			}
		}
		out, err := coord.CLI("nodes", "list")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "n3") {
			t.Errorf("nodes list still shows n3:\n%s", out)
		}
	})
}
