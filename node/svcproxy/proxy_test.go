package svcproxy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/edgewire/edgewire/node/services"
)

// fakeIPTables records commands and keeps jump rules so -C answers like
// the real thing. It needs no privileges.
type fakeIPTables struct {
	mu       sync.Mutex // guards all fields
	calls    []string
	restores []string // inputs, in order
	jumps    map[string]bool
	save     string          // iptables-save output for every table
	fail     map[string]bool // table whose restore fails
}

func (f *fakeIPTables) exec(_ context.Context, argv ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, strings.Join(argv, " "))
	switch argv[0] {
	case "iptables": // iptables -w -t T -C CHAIN spec...
		if f.jumps[argv[3]+" "+strings.Join(argv[5:], " ")] {
			return nil, nil
		}
		return []byte("iptables: Bad rule"), errors.New("exit status 1")
	case "iptables-save":
		return []byte(f.save), nil
	case "iptables-restore":
		b, err := os.ReadFile(argv[len(argv)-1])
		if err != nil {
			return nil, err
		}
		in := string(b)
		table := strings.TrimPrefix(strings.SplitN(in, "\n", 2)[0], "*")
		if f.fail[table] {
			return []byte("iptables-restore: line 3 failed"), errors.New("exit status 1")
		}
		f.restores = append(f.restores, in)
		for line := range strings.Lines(in) {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "-I "); ok {
				chain, spec, _ := strings.Cut(rest, " 1 ")
				f.jumps[table+" "+chain+" "+spec] = true
			}
		}
		return nil, nil
	}
	return nil, errors.New("unexpected command " + argv[0])
}

func (f *fakeIPTables) takeRestores() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.restores
	f.restores = nil
	return r
}

func newFake(t *testing.T, mode Mode) (*Proxy, *fakeIPTables) {
	t.Helper()
	f := &fakeIPTables{jumps: map[string]bool{}, fail: map[string]bool{}}
	p, err := New(Config{Mode: mode, Interface: "wg0", Exec: f.exec})
	if err != nil {
		t.Fatal(err)
	}
	return p, f
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Mode: "maybe", Interface: "wg0"},
		{Mode: ModeOn},
		{Mode: ModeAuto, Interface: "has space"},
		{Mode: ModeOn, Interface: "waytoolonginterfacename"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): got nil error, want one", cfg)
		}
	}
	if _, err := New(Config{Mode: ModeOff}); err != nil {
		t.Errorf("mode off needs no interface: %v", err)
	}
	if p, err := New(Config{Interface: "wg0"}); err != nil || p.cfg.Mode != ModeAuto {
		t.Errorf("default mode: got %v, %v; want auto", p, err)
	}
}

func TestApplyFake(t *testing.T) {
	ctx := context.Background()
	p, f := newFake(t, ModeOn)
	t1 := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)))

	if err := p.Apply(ctx, t1); err != nil {
		t.Fatal(err)
	}
	rs := f.takeRestores()
	if len(rs) != 3 || !strings.HasPrefix(rs[0], "*filter") || !strings.HasPrefix(rs[1], "*mangle") || !strings.HasPrefix(rs[2], "*nat") {
		t.Fatalf("want restores filter, mangle, nat; got %d: %q", len(rs), rs)
	}
	for _, want := range []string{
		"-I PREROUTING 1 -m comment --comment edgewire -j EDGEWIRE-SERVICES\n",
		"-I OUTPUT 1 -m comment --comment edgewire -j EDGEWIRE-SERVICES\n",
		"-I POSTROUTING 1 -m comment --comment edgewire -j EDGEWIRE-POSTROUTING\n",
	} {
		if strings.Count(rs[2], want) != 1 {
			t.Errorf("nat restore: want %q once in\n%s", want, rs[2])
		}
	}

	// Unchanged: no restore at all.
	if err := p.Apply(ctx, t1); err != nil {
		t.Fatal(err)
	}
	if rs := f.takeRestores(); len(rs) != 0 {
		t.Errorf("unchanged apply restored %q", rs)
	}

	// One endpoint gone: only nat changes, its SEP chain is deleted, no jump re-added.
	t2 := table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))
	if err := p.Apply(ctx, t2); err != nil {
		t.Fatal(err)
	}
	rs = f.takeRestores()
	gone := chainName(prefixSEP, "default/web//TCP/10.1.0.2:8080")
	kept := chainName(prefixSEP, "default/web//TCP/10.1.0.1:8080")
	if len(rs) != 1 || !strings.Contains(rs[0], "-X "+gone+"\n") || strings.Contains(rs[0], "-I ") || strings.Contains(rs[0], ":"+kept+" ") ||
		!strings.Contains(rs[0], ":"+chainName(prefixSVC, "default/web//TCP")+" ") {
		t.Errorf("want one nat restore rewriting only the SVC chain, deleting %s and adding no jump, got %q", gone, rs)
	}

	// A failed restore reports the table and leaves the state unknown.
	f.fail[tableNAT] = true
	err := p.Apply(ctx, t1)
	if err == nil || !strings.Contains(err.Error(), "nat") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("got error %v, want one naming the nat table and the failing line", err)
	}
	f.fail[tableNAT] = false
	f.save = ":" + gone + " - [0:0]\n:EDGEWIRE-SEP-LEFTOVERFROMOLD - [0:0]\n"
	if err := p.Apply(ctx, t2); err != nil {
		t.Fatal(err)
	}
	rs = f.takeRestores()
	if len(rs) != 1 || !strings.Contains(rs[0], "-X EDGEWIRE-SEP-LEFTOVERFROMOLD\n") || !strings.Contains(rs[0], "-X "+gone+"\n") ||
		!strings.Contains(rs[0], ":"+kept+" ") {
		t.Errorf("after an error the next apply must reread chains, rewrite all and delete stale ones, got %q", rs)
	}

	if got, want := p.Stats(), (Stats{Applies: 3, Skipped: 1, Errors: 1}); got.Applies != want.Applies || got.Skipped != want.Skipped || got.Errors != want.Errors || got.LastApplyDuration <= 0 {
		t.Errorf("stats: got %+v, want %+v and a duration", got, want)
	}
}

func TestModeOffTouchesNothing(t *testing.T) {
	ctx := context.Background()
	p, f := newFake(t, ModeOff)
	if on, err := p.Enabled(ctx); on || err != nil {
		t.Errorf("Enabled: got %v, %v; want false", on, err)
	}
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 0 {
		t.Errorf("mode off ran %q", f.calls)
	}
}

func TestAutoWithKubeProxy(t *testing.T) {
	ctx := context.Background()
	p, f := newFake(t, ModeAuto)
	f.save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
	if on, err := p.Enabled(ctx); on || err != nil {
		t.Errorf("Enabled with KUBE-SERVICES: got %v, %v; want false", on, err)
	}
	if err := p.Apply(ctx, table(t, svc("web", "10.96.0.10", services.TCP, 80, ep("10.1.0.1", 8080)))); err != nil {
		t.Fatal(err)
	}
	if rs := f.takeRestores(); len(rs) != 0 {
		t.Errorf("auto mode beside kube-proxy restored %q", rs)
	}
	f.save = "*nat\n:KUBE-SERVICES-NOT - [0:0]\n"
	if on, err := p.Enabled(ctx); !on || err != nil {
		t.Errorf("Enabled without KUBE-SERVICES: got %v, %v; want true", on, err)
	}
}

func TestCleanupFake(t *testing.T) {
	p, f := newFake(t, ModeOn)
	f.save = `*nat
:PREROUTING ACCEPT [0:0]
:EDGEWIRE-SERVICES - [0:0]
:EDGEWIRE-SVC-AAAAAAAAAAAAAAA - [0:0]
-A PREROUTING -m comment --comment edgewire -j EDGEWIRE-SERVICES
-A PREROUTING -m comment --comment "someone else" -j KUBE-SERVICES
-A EDGEWIRE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j EDGEWIRE-SVC-AAAAAAAAAAAAAAA
COMMIT
`
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs := f.takeRestores()
	if len(rs) != 3 {
		t.Fatalf("got %d restores, want 3", len(rs))
	}
	for _, want := range []string{
		"-D PREROUTING -m comment --comment edgewire -j EDGEWIRE-SERVICES\n",
		"-X EDGEWIRE-SERVICES\n",
		"-X EDGEWIRE-SVC-AAAAAAAAAAAAAAA\n",
	} {
		if !strings.Contains(rs[0], want) {
			t.Errorf("cleanup input lacks %q:\n%s", want, rs[0])
		}
	}
	if strings.Contains(rs[0], "KUBE-SERVICES") {
		t.Errorf("cleanup touched a foreign rule:\n%s", rs[0])
	}
}

func TestBatches(t *testing.T) {
	r := render(bigTable(t, 50, 10), "wg0", discardLog())
	nat := r[2]
	for _, max := range []int{1, 100, 1000, 1 << 20} {
		bs := nat.batches(nat.chains, max)
		seen := map[string]int{}
		for i, b := range bs {
			if i > 0 && !strings.HasPrefix(b[0], prefixSVC) {
				t.Errorf("max %d: batch %d starts with %s, want an SVC chain", max, i, b[0])
			}
			for _, c := range b {
				seen[c]++
				if (c == chainServices || c == chainPostrouting) && i != len(bs)-1 {
					t.Errorf("max %d: fixed chain %s in batch %d of %d, want the last", max, c, i, len(bs))
				}
			}
			// Every SEP chain a batch's SVC chains jump to is in that batch.
			for _, c := range b {
				for line := range strings.Lines(nat.rules[c]) {
					if _, target, ok := strings.Cut(strings.TrimSpace(line), " -j "+prefixSEP); ok && strings.HasPrefix(c, prefixSVC) {
						if !slices.Contains(b, prefixSEP+target) {
							t.Errorf("max %d: %s jumps to %s outside its batch", max, c, prefixSEP+target)
						}
					}
				}
			}
		}
		if len(seen) != len(nat.chains) {
			t.Errorf("max %d: batches hold %d chains, want %d", max, len(seen), len(nat.chains))
		}
		for c, n := range seen {
			if n != 1 {
				t.Errorf("max %d: %s in %d batches", max, c, n)
			}
		}
		if max == 1 && len(bs) != 50 || max == 1<<20 && len(bs) != 1 {
			t.Errorf("max %d: got %d batches", max, len(bs))
		}
	}
}

func TestApplyBatchesLargeRewrite(t *testing.T) {
	p, f := newFake(t, ModeOn)
	if err := p.Apply(context.Background(), bigTable(t, 1000, 10)); err != nil {
		t.Fatal(err)
	}
	rs := f.takeRestores()
	var nat []string
	for _, r := range rs {
		if strings.HasPrefix(r, "*nat") {
			nat = append(nat, r)
		}
	}
	if len(nat) < 2 {
		t.Fatalf("got %d nat transactions for 42,000 lines, want several", len(nat))
	}
	for i, r := range nat {
		last := i == len(nat)-1
		if got := strings.Contains(r, ":"+chainServices+" "); got != last {
			t.Errorf("transaction %d of %d declares the portal chain: %v", i+1, len(nat), got)
		}
		if got := strings.Contains(r, "-I PREROUTING"); got != last {
			t.Errorf("transaction %d of %d inserts jumps: %v", i+1, len(nat), got)
		}
		if n := strings.Count(r, "\n"); n > maxRestoreLines+1500 {
			t.Errorf("transaction %d has %d lines", i+1, n)
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
