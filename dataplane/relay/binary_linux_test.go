package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// relayBinary is $EDGEWIRE_BIN/edgewire-relay (the lab's binaries) or a
// fresh build of ./cmd/edgewire-relay.
func relayBinary(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("EDGEWIRE_BIN"); d != "" {
		p := filepath.Join(d, "edgewire-relay")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Skipf("no module root to build edgewire-relay in: %v", err)
	}
	out := filepath.Join(t.TempDir(), "edgewire-relay")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/edgewire-relay")
	cmd.Dir = strings.TrimSpace(string(root))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build edgewire-relay (the module may be mid-edit elsewhere): %v\n%s", err, b)
	}
	return out
}

// procKiB reads a "Vm...: N kB" line of /proc/pid/status.
func procKiB(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TLS adds to a connection the record buffers of crypto/tls (a record is
// at most 16 KiB plus overhead, in and out) and, during the handshake,
// its state (certificate, key shares, transcript).
const (
	tlsConnMem      = 2 * (16<<10 + 1<<10)
	tlsHandshakeMem = 32 << 10
	// goGCFactor: with GOGC=100 the heap may grow to twice what is live
	// before a collection, and RSS follows the heap.
	goGCFactor = 2
	// runtimeSlack covers what the bound above does not model: goroutine
	// stacks (two per connection, 8 KiB each to start), GC metadata and
	// pages the runtime keeps.
	runtimeSlack = 32 << 20
)

// TestRelayBinaryRSS runs the real edgewire-relay on loopback and attacks
// it at once with ticket holders that stop reading, senders of
// maximum-size packets to them, and 1,000 connections that stall in the
// handshake. The relay's peak RSS must stay under its budget and the
// per-connection costs, times the GC's headroom. (Before issue 12, four
// stalled receivers took a relay from 127 to 508 MB.)
func TestRelayBinaryRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the relay binary")
	}
	const (
		budgetMiB = 16
		stalled   = 200
		senders   = 4
		perDst    = 16 // packets to each stalled receiver from each sender
		pending   = 1000
		perIP     = DefaultMaxPendingPerIP
	)
	bin := relayBinary(t)
	dir := t.TempDir()
	tpub, tpriv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--data-dir", dir, "--print-key").Output()
	if err != nil {
		t.Fatal(err)
	}
	relayPub, err := key.ParsePublic(string(out))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenLoopback()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--data-dir", dir, "--listen", addr, "--stun-listen", "", "--metrics-listen", "",
		"--ticket-key", base64.StdEncoding.EncodeToString(tpub), "--client-rate", "0",
		"--queue-budget-mib", strconv.Itoa(budgetMiB), "--log-level", "error")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	pid := cmd.Process.Pid
	eventually(t, 10*time.Second, "the relay to listen", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	time.Sleep(200 * time.Millisecond) // let start-up allocations settle
	base := procKiB(t, pid, "VmRSS") << 10

	u, err := parseRelayURL("https://" + addr + "/relay")
	if err != nil {
		t.Fatal(err)
	}
	ticket := func(k key.Private) []byte {
		return SignTicket(tpriv, Ticket{Node: k.Public(), Expires: time.Now().Add(time.Hour)})
	}
	// node connects as a new node and returns its connection.
	node := func() (net.Conn, *bufio.Writer, Key) {
		k := newKey()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hello := newClientHello(k.Public())
		nc, br, _, err := dialUpgrade(ctx, nil, u, nil, hello)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		bw := bufio.NewWriter(nc)
		if _, err := clientHandshake(br, bw, relayPub, k, hello, ticket(k)); err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Time{})
		return nc, bw, k.Public()
	}
	var dsts []Key
	for range stalled {
		_, _, pub := node() // never read
		dsts = append(dsts, pub)
	}
	var wg sync.WaitGroup
	pkt := make([]byte, maxPacketSize)
	for range senders {
		nc, bw, _ := node()
		nc.SetWriteDeadline(time.Now().Add(60 * time.Second))
		wg.Go(func() {
			for range perDst {
				for _, d := range dsts {
					if err := writeFrame(bw, frameSendPacket, d[:], pkt); err != nil {
						t.Error(err)
						return
					}
				}
			}
			if err := bw.Flush(); err != nil {
				t.Error(err)
			}
		})
	}
	// Meanwhile, connections that stall in the handshake, from enough
	// addresses to pass the per-address bound.
	codes := map[int]int{}
	var cmu sync.Mutex
	for i := range pending {
		wg.Go(func() {
			code := stallHandshake(t, addr, fmt.Sprintf("127.0.2.%d", 1+i/perIP))
			cmu.Lock()
			codes[code]++
			cmu.Unlock()
		})
	}
	wg.Wait()
	peak := procKiB(t, pid, "VmHWM") << 10
	now := procKiB(t, pid, "VmRSS") << 10
	live := uint64(budgetMiB<<20 +
		(stalled+senders)*(relayConnMem+tlsConnMem) +
		DefaultMaxPendingHandshakes*(pendingConnMem+tlsHandshakeMem))
	bound := base + goGCFactor*live + runtimeSlack
	t.Logf("relay RSS: %.1f MiB at start, peak %.1f MiB, now %.1f MiB; bound %.1f MiB; handshake answers %v",
		mib(base), mib(peak), mib(now), mib(bound), codes)
	if peak > bound {
		t.Errorf("relay peak RSS: got %.1f MiB, want at most %.1f MiB", mib(peak), mib(bound))
	}
	if codes[http.StatusServiceUnavailable] == 0 {
		t.Errorf("handshake answers %v: want some 503s beyond %d pending", codes, DefaultMaxPendingHandshakes)
	}
}

// stallHandshake opens a TLS connection from src, sends a v2 Upgrade
// request and reads the status; a 101 connection then sends nothing
// more and is left open until the relay gives up on it.
func stallHandshake(t *testing.T, addr, src string) int {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	nc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Error(err)
		return 0
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /relay HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\n" +
		versionHeader + ": 2\r\n" + clientHeader + ": " + newClientHello(newKey().Public()).header() + "\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		t.Error(err)
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(nc, 512), nil)
	if err != nil {
		t.Error(err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
