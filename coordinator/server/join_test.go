package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/store"
)

// Joins run concurrently (the store commits them in shared transactions):
// each gets its own address, refused ones change nothing, and the store,
// the registry and the token's use count agree afterwards.
func TestConcurrentJoins(t *testing.T) {
	tests := []struct {
		name    string
		good    int
		bad     int // joins with a wrong token secret
		clashes int // joins reusing the name of a good join, with another key
		routes  bool
	}{
		{"no routes", 40, 0, 0, false},
		{"with refusals", 40, 10, 10, false},
		{"with routes", 20, 5, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			tok := e.createToken(t, &api.CreateTokenRequest{Reusable: true})
			badTok := tok[:len(tok)-1] + "x"
			if badTok == tok {
				badTok = tok[:len(tok)-1] + "y"
			}
			type result struct {
				name string
				good bool
				err  error
			}
			var (
				wg  sync.WaitGroup
				mu  sync.Mutex
				res []result
			)
			run := func(name, tk string, good bool, routes []string) {
				wg.Go(func() {
					_, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: tk, PublicKey: newAgent(t).key(), Name: name, Routes: routes})
					mu.Lock()
					res = append(res, result{name, good, err})
					mu.Unlock()
				})
			}
			for i := range tt.good {
				var routes []string
				if tt.routes {
					routes = []string{fmt.Sprintf("10.%d.0.0/16", i)}
				}
				run(fmt.Sprintf("n%d", i), tok, true, routes)
			}
			for i := range tt.bad {
				run(fmt.Sprintf("bad%d", i), badTok, false, nil)
			}
			wg.Wait()
			// Name clashes after the good joins committed.
			for i := range tt.clashes {
				run(fmt.Sprintf("n%d", i), tok, false, nil)
			}
			wg.Wait()
			for _, r := range res {
				switch {
				case r.good && r.err != nil:
					t.Errorf("join %s: got %v, want success", r.name, r.err)
				case !r.good && r.err == nil:
					t.Errorf("join %s: got success, want a refusal", r.name)
				case !r.good && code(r.err) != codes.PermissionDenied && code(r.err) != codes.AlreadyExists && code(r.err) != codes.InvalidArgument:
					t.Errorf("join %s: got %v, want a refusal", r.name, r.err)
				}
			}
			snap := e.snapshot(t)
			if len(snap.Nodes) != tt.good {
				t.Errorf("got %d nodes stored, want %d", len(snap.Nodes), tt.good)
			}
			addrs := map[string]string{}
			for _, n := range snap.Nodes {
				if len(n.Addresses) != 1 {
					t.Errorf("node %s: got addresses %v, want one", n.Name, n.Addresses)
					continue
				}
				if other, dup := addrs[n.Addresses[0].String()]; dup {
					t.Errorf("nodes %s and %s share address %s", other, n.Name, n.Addresses[0])
				}
				addrs[n.Addresses[0].String()] = n.Name
				if _, _, ok := e.srv.Registry().Node(n.Key); !ok {
					t.Errorf("node %s stored but not in the registry", n.Name)
				}
			}
			if got := len(e.srv.Registry().Nodes()); got != tt.good {
				t.Errorf("got %d nodes in the registry, want %d", got, tt.good)
			}
			if got := e.srv.pools[0].InUse(); got != tt.good {
				t.Errorf("got %d addresses in use, want %d", got, tt.good)
			}
			if len(snap.Tokens) != 1 || snap.Tokens[0].Uses != tt.good {
				t.Errorf("got tokens %+v, want one with %d uses", snap.Tokens, tt.good)
			}
		})
	}
}

// retryingStore runs every Update's function once in a transaction it
// throws away before the real one, as a backend with optimistic
// concurrency does after a conflict.
type retryingStore struct{ store.Store }

var errThrowAway = errors.New("thrown away")

func (s retryingStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := s.Store.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errThrowAway
	}); !errors.Is(err, errThrowAway) {
		return err
	}
	return s.Store.Update(ctx, fn)
}

// TestJoinAllocation: a join's function may run twice without leaking an
// address, and an address another writer took meanwhile (a coordinator
// replica sharing the store) is skipped, not handed out twice.
func TestJoinAllocation(t *testing.T) {
	var st store.Store
	e := newEnv(t, func(c *Config) {
		st = c.Store
		c.Store = retryingStore{c.Store}
	})
	tok, err := e.srv.CreateToken(ctxT(t), &api.CreateTokenRequest{Reusable: true})
	if err != nil {
		t.Fatal(err)
	}
	// Another writer registers a node on 100.64.0.2 behind this server.
	other := newAgent(t).pub
	if err := st.Update(ctxT(t), func(tx store.Tx) error {
		return tx.PutNode(store.Node{Key: other, Name: "elsewhere", Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.2")}})
	}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range 3 {
		got = append(got, e.join(t, newAgent(t), fmt.Sprint("n", i), tok.Token).Self.Addresses...)
	}
	if want := []string{"100.64.0.1", "100.64.0.3", "100.64.0.4"}; !slices.Equal(got, want) {
		t.Errorf("addresses: got %v, want %v", got, want)
	}
	// Each address once in the store; the pool holds exactly those.
	seen := map[netip.Addr]string{}
	if err := st.View(ctxT(t), func(tx store.Tx) error {
		nodes, err := tx.Nodes()
		for _, n := range nodes {
			for _, a := range n.Addresses {
				if prev, ok := seen[a]; ok {
					t.Errorf("address %s held by %s and %s", a, prev, n.Name)
				}
				seen[a] = n.Name
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := e.srv.pools[0].InUse(); got != 4 {
		t.Errorf("pool: %d addresses in use, want 4 (3 joined, 1 taken elsewhere)", got)
	}
	// A join the token refuses leaks nothing either.
	if _, err := e.joinReq(ctxT(t), &api.JoinRequest{Token: "bad", PublicKey: newAgent(t).key(), Name: "bad"}); err == nil {
		t.Fatal("join with a bad token succeeded")
	}
	if got := e.join(t, newAgent(t), "n3", tok.Token).Self.Addresses; !slices.Equal(got, []string{"100.64.0.5"}) {
		t.Errorf("after a refused join: got %v, want [100.64.0.5]", got)
	}
}

// extraNodeStore lists one more node than it holds, as a store edited by
// hand into a duplicate address would.
type extraNodeStore struct {
	store.Store
	extra store.Node
}

type extraNodeTx struct {
	store.Tx
	extra store.Node
}

func (s extraNodeStore) View(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.View(ctx, func(tx store.Tx) error { return fn(extraNodeTx{tx, s.extra}) })
}

func (tx extraNodeTx) Nodes() ([]store.Node, error) {
	nodes, err := tx.Tx.Nodes()
	return append(nodes, tx.extra), err
}

// TestStoredDuplicateAddress: a stored node holding another's address is
// reported and not loaded; the first keeps it and the server starts.
func TestStoredDuplicateAddress(t *testing.T) {
	a, b := newAgent(t).pub, newAgent(t).pub
	addr := netip.MustParseAddr("100.64.0.7")
	e := newEnv(t, func(c *Config) {
		if err := c.Store.Update(context.Background(), func(tx store.Tx) error {
			return tx.PutNode(store.Node{Key: a, Name: "first", Addresses: []netip.Addr{addr}})
		}); err != nil {
			t.Fatal(err)
		}
		c.Store = extraNodeStore{c.Store, store.Node{Key: b, Name: "second", Addresses: []netip.Addr{addr}}}
	})
	if _, _, ok := e.srv.Registry().Node(a); !ok {
		t.Error("the first node holding the address was not loaded")
	}
	if _, _, ok := e.srv.Registry().Node(b); ok {
		t.Error("the second node holding the address was loaded")
	}
	if got := e.srv.m.storeRejects.Load(); got != 1 {
		t.Errorf("rejected stored nodes: got %d, want 1", got)
	}
	if got := e.srv.pools[0].InUse(); got != 1 {
		t.Errorf("pool: %d in use, want 1", got)
	}
}
