// Package storetest is the contract every store.Store backend must meet,
// as one test suite: the bbolt backend runs it as a unit test, the
// Kubernetes backend against a real kube-apiserver.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// Open returns an empty store for one test; the suite closes it.
type Open func(t *testing.T) store.Store

// Run runs the whole contract against stores from open.
func Run(t *testing.T, open Open) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, Open)
	}{
		{"RoundTrip", roundTrip},
		{"Ordering", ordering},
		{"Names", names},
		{"Addresses", addresses},
		{"UpdateRollback", updateRollback},
		{"ContextCancelled", contextCancelled},
		{"ConcurrentUpdates", concurrentUpdates},
		{"TokenUses", tokenUses},
		{"Presence", presence},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func fresh(t *testing.T, open Open) store.Store {
	t.Helper()
	s := open(t)
	t.Cleanup(func() { s.Close() })
	return s
}

// NodeKey returns a key of 32 b bytes.
func NodeKey(b byte) key.Public {
	var k key.Public
	for i := range k {
		k[i] = b
	}
	return k
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// Addr4 returns 100.64.x.y for node number i (1-based), Addr6 its IPv6
// twin: every test node has its own addresses.
func Addr4(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}) }
func Addr6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0x7a, 0x11, 0x5c, 14: byte(i >> 8), 15: byte(i)})
}

// TestNode is a node with every field set.
func TestNode(k byte, name string) store.Node {
	return store.Node{
		Key:              NodeKey(k),
		Name:             name,
		Hostname:         name + ".example",
		Addresses:        []netip.Addr{Addr4(int(k)), Addr6(int(k))},
		Routes:           []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		AdvertisedRoutes: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("192.168.8.0/22")},
		KubeNode:         "edge-" + name,
		Tags:             []string{"tag:k8s"},
		CreatedAt:        t0,
		LastSeen:         t0.Add(time.Minute),
		TokenID:          "0a1b2c3d",
	}
}

func put(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func roundTrip(t *testing.T, open Open) {
	s := fresh(t, open)
	tok := store.Token{
		ID: "0a1b2c3d", SecretHash: [32]byte{1, 2, 3}, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
		MaxUses: 3, Uses: 1, Revoked: true, Tags: []string{"a", "b"},
		Routes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, KubeNode: "edge-1",
	}
	minimal := store.Token{ID: "ffffffff", CreatedAt: t0, Reusable: true}
	n1 := TestNode(1, "alpha")
	n2 := store.Node{Key: NodeKey(2), Name: "beta"} // empty slices and zero times
	put(t, s, func(tx store.Tx) error {
		for _, tk := range []store.Token{tok, minimal} {
			if err := tx.PutToken(tk); err != nil {
				return err
			}
		}
		for _, n := range []store.Node{n1, n2} {
			if err := tx.PutNode(n); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		tests := []struct {
			name string
			get  func() (any, error)
			want any
		}{
			{"token full", func() (any, error) { return tx.Token(tok.ID) }, tok},
			{"token minimal", func() (any, error) { return tx.Token(minimal.ID) }, minimal},
			{"node by key", func() (any, error) { return tx.Node(n1.Key) }, n1},
			{"node by name", func() (any, error) { return tx.NodeByName("alpha") }, n1},
			{"node minimal", func() (any, error) { return tx.Node(n2.Key) }, n2},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := tt.get()
				if err != nil {
					t.Fatalf("got error %v, want nil", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %+v, want %+v", got, tt.want)
				}
			})
		}
		for name, get := range map[string]func() error{
			"token":        func() error { _, err := tx.Token("99999999"); return err },
			"node":         func() error { _, err := tx.Node(NodeKey(9)); return err },
			"node by name": func() error { _, err := tx.NodeByName("nobody"); return err },
		} {
			if err := get(); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("missing %s: got %v, want ErrNotFound", name, err)
			}
		}
		return nil
	})
}

func ordering(t *testing.T, open Open) {
	s := fresh(t, open)
	put(t, s, func(tx store.Tx) error {
		for _, id := range []string{"cccccccc", "aaaaaaaa", "bbbbbbbb"} {
			if err := tx.PutToken(store.Token{ID: id}); err != nil {
				return err
			}
		}
		// Key order (3,1,2) differs from name order.
		for i, name := range []string{"zulu", "alpha", "mike"} {
			if err := tx.PutNode(store.Node{Key: NodeKey(byte(3 - i)), Name: name}); err != nil {
				return err
			}
		}
		return nil
	})
	var ids, names []string
	view(t, s, func(tx store.Tx) error {
		toks, err := tx.Tokens()
		if err != nil {
			return err
		}
		for _, tk := range toks {
			ids = append(ids, tk.ID)
		}
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		return nil
	})
	if want := []string{"aaaaaaaa", "bbbbbbbb", "cccccccc"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("Tokens order: got %v, want %v", ids, want)
	}
	if want := []string{"alpha", "mike", "zulu"}; !reflect.DeepEqual(names, want) {
		t.Errorf("Nodes order: got %v, want %v", names, want)
	}
}

// errAny marks a test case that wants some error, not a particular one.
var errAny = errors.New("any error")

func checkErr(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == errAny && err == nil:
		t.Fatalf("got nil error, want an error")
	case want != errAny && !errors.Is(err, want):
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func names(t *testing.T, open Open) {
	tests := []struct {
		name    string
		ops     func(tx store.Tx) error
		wantErr error
		// after the ops: name -> owning key byte (0 means absent)
		wantNames map[string]byte
	}{
		{
			name:      "duplicate name from other key",
			ops:       func(tx store.Tx) error { return tx.PutNode(store.Node{Key: NodeKey(2), Name: "alpha"}) },
			wantErr:   store.ErrExists,
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "same key keeps its name",
			ops:       func(tx store.Tx) error { return tx.PutNode(store.Node{Key: NodeKey(1), Name: "alpha", Hostname: "h"}) },
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "rename frees old name",
			ops:       func(tx store.Tx) error { return tx.PutNode(store.Node{Key: NodeKey(1), Name: "bravo"}) },
			wantNames: map[string]byte{"alpha": 0, "bravo": 1},
		},
		{
			name: "renamed-away name can be taken",
			ops: func(tx store.Tx) error {
				if err := tx.PutNode(store.Node{Key: NodeKey(1), Name: "bravo"}); err != nil {
					return err
				}
				return tx.PutNode(store.Node{Key: NodeKey(2), Name: "alpha"})
			},
			wantNames: map[string]byte{"alpha": 2, "bravo": 1},
		},
		{
			name:      "delete removes name index",
			ops:       func(tx store.Tx) error { return tx.DeleteNode(NodeKey(1)) },
			wantNames: map[string]byte{"alpha": 0},
		},
		{
			name:      "delete missing",
			ops:       func(tx store.Tx) error { return tx.DeleteNode(NodeKey(9)) },
			wantErr:   store.ErrNotFound,
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "empty name rejected",
			ops:       func(tx store.Tx) error { return tx.PutNode(store.Node{Key: NodeKey(2)}) },
			wantErr:   errAny,
			wantNames: map[string]byte{"alpha": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fresh(t, open)
			put(t, s, func(tx store.Tx) error { return tx.PutNode(store.Node{Key: NodeKey(1), Name: "alpha"}) })
			checkErr(t, s.Update(context.Background(), tt.ops), tt.wantErr)
			view(t, s, func(tx store.Tx) error {
				live := 0
				for name, want := range tt.wantNames {
					n, err := tx.NodeByName(name)
					if want == 0 {
						if !errors.Is(err, store.ErrNotFound) {
							t.Errorf("NodeByName(%q): got %v, want ErrNotFound", name, err)
						}
						continue
					}
					live++
					if err != nil || n.Key != NodeKey(want) {
						t.Errorf("NodeByName(%q): got key %v err %v, want key %v", name, n.Key, err, NodeKey(want))
					}
				}
				nodes, err := tx.Nodes()
				if err != nil {
					return err
				}
				if len(nodes) != live {
					t.Errorf("Nodes: got %d, want %d", len(nodes), live)
				}
				return nil
			})
		})
	}
}

// addresses: an overlay address belongs to one node at a time.
func addresses(t *testing.T, open Open) {
	a1, a2, a3 := Addr4(1), Addr4(2), Addr4(3)
	node := func(k byte, name string, addrs ...netip.Addr) store.Node {
		return store.Node{Key: NodeKey(k), Name: name, Addresses: addrs}
	}
	tests := []struct {
		name    string
		ops     func(tx store.Tx) error
		wantErr error
		then    store.Node // must be storable afterwards (zero: skip)
		thenErr error
	}{
		{"another node's address", func(tx store.Tx) error { return tx.PutNode(node(2, "bravo", a2, a1)) }, store.ErrAddrInUse,
			node(2, "bravo", a2), nil},
		{"same node keeps its address", func(tx store.Tx) error { return tx.PutNode(node(1, "alpha", a1)) }, nil,
			node(2, "bravo", a1), store.ErrAddrInUse},
		{"a changed address frees the old one", func(tx store.Tx) error { return tx.PutNode(node(1, "alpha", a3)) }, nil,
			node(2, "bravo", a1), nil},
		{"a deleted node frees its address", func(tx store.Tx) error { return tx.DeleteNode(NodeKey(1)) }, nil,
			node(2, "bravo", a1), nil},
		{"a rename keeps the address", func(tx store.Tx) error { return tx.PutNode(node(1, "renamed", a1)) }, nil,
			node(2, "bravo", a1), store.ErrAddrInUse},
		{"taken and freed in one transaction", func(tx store.Tx) error {
			if err := tx.DeleteNode(NodeKey(1)); err != nil {
				return err
			}
			return tx.PutNode(node(2, "bravo", a1))
		}, nil, node(3, "charlie", a1), store.ErrAddrInUse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fresh(t, open)
			put(t, s, func(tx store.Tx) error { return tx.PutNode(node(1, "alpha", a1)) })
			checkErr(t, s.Update(context.Background(), tt.ops), tt.wantErr)
			err := s.Update(context.Background(), func(tx store.Tx) error { return tx.PutNode(tt.then) })
			if tt.thenErr == nil && err != nil || tt.thenErr != nil && !errors.Is(err, tt.thenErr) {
				t.Fatalf("then storing %s with %v: got %v, want %v", tt.then.Name, tt.then.Addresses, err, tt.thenErr)
			}
		})
	}
}

func updateRollback(t *testing.T, open Open) {
	s := fresh(t, open)
	put(t, s, func(tx store.Tx) error {
		if err := tx.PutToken(store.Token{ID: "aaaaaaaa", Uses: 1}); err != nil {
			return err
		}
		return tx.PutNode(store.Node{Key: NodeKey(1), Name: "alpha", Addresses: []netip.Addr{Addr4(1)}})
	})
	boom := errors.New("boom")
	err := s.Update(context.Background(), func(tx store.Tx) error {
		tx.PutToken(store.Token{ID: "aaaaaaaa", Uses: 2})
		tx.PutToken(store.Token{ID: "bbbbbbbb"})
		tx.PutNode(store.Node{Key: NodeKey(1), Name: "renamed", Addresses: []netip.Addr{Addr4(5)}})
		tx.PutNode(store.Node{Key: NodeKey(2), Name: "bravo", Addresses: []netip.Addr{Addr4(1)}})
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: got %v, want %v", err, boom)
	}
	view(t, s, func(tx store.Tx) error {
		toks, _ := tx.Tokens()
		if len(toks) != 1 || toks[0].Uses != 1 {
			t.Errorf("tokens: got %+v, want one token with Uses 1", toks)
		}
		nodes, _ := tx.Nodes()
		if len(nodes) != 1 || nodes[0].Name != "alpha" || !reflect.DeepEqual(nodes[0].Addresses, []netip.Addr{Addr4(1)}) {
			t.Errorf("nodes: got %+v, want only alpha at %s", nodes, Addr4(1))
		}
		if _, err := tx.NodeByName("renamed"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("NodeByName(renamed): got %v, want ErrNotFound", err)
		}
		return nil
	})
	// The rolled-back address change left no claim behind.
	put(t, s, func(tx store.Tx) error {
		return tx.PutNode(store.Node{Key: NodeKey(3), Name: "charlie", Addresses: []netip.Addr{Addr4(5)}})
	})
}

func contextCancelled(t *testing.T, open Open) {
	s := fresh(t, open)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, call := range map[string]func(context.Context, func(store.Tx) error) error{"View": s.View, "Update": s.Update} {
		t.Run(name, func(t *testing.T) {
			ran := false
			if err := call(ctx, func(store.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
			if ran {
				t.Errorf("fn ran, want not run")
			}
		})
	}
}

func concurrentUpdates(t *testing.T, open Open) {
	tests := []struct {
		name    string
		writers int
		failing int // index of the writer whose fn fails; -1: none
	}{
		{"all succeed", 50, -1},
		{"one fails", 50, 17},
		{"alone", 1, -1},
		{"alone failing", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fresh(t, open)
			errBoom := errors.New("boom")
			errs := make([]error, tt.writers)
			var wg sync.WaitGroup
			for i := range tt.writers {
				wg.Go(func() {
					errs[i] = s.Update(context.Background(), func(tx store.Tx) error {
						if err := tx.PutNode(TestNode(byte(i+1), fmt.Sprintf("n%d", i))); err != nil {
							return err
						}
						if i == tt.failing {
							return errBoom
						}
						return nil
					})
				})
			}
			wg.Wait()
			var nodes []store.Node
			view(t, s, func(tx store.Tx) error {
				var err error
				nodes, err = tx.Nodes()
				return err
			})
			want := tt.writers
			for i, err := range errs {
				switch {
				case i == tt.failing && !errors.Is(err, errBoom):
					t.Errorf("writer %d: got %v, want its own error", i, err)
				case i == tt.failing:
					want--
				case err != nil:
					t.Errorf("writer %d: got %v, want nil", i, err)
				}
			}
			if len(nodes) != want {
				t.Errorf("got %d nodes stored, want %d", len(nodes), want)
			}
			for _, n := range nodes {
				if tt.failing >= 0 && n.Key == NodeKey(byte(tt.failing+1)) {
					t.Errorf("the failed writer's node %s was stored", n.Name)
				}
			}
		})
	}
}

// tokenUses: concurrent read-modify-writes of one token lose no update
// (a 3-use token admits exactly three nodes, however many writers race,
// as when two coordinators share the store), and writers racing for one
// address get exactly one winner.
func tokenUses(t *testing.T, open Open) {
	for _, tc := range []struct {
		name     string
		sameAddr bool
	}{
		{"3-use token, 20 writers", false},
		{"one address, 20 writers", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fresh(t, open)
			RaceTokenUses(t, []store.Store{s}, func() store.Store { return s }, tc.sameAddr)
		})
	}
}

// RaceTokenUses has 20 writers, spread over stores (replicas sharing a
// backend), each take a use of a 3-use token and store a node, all for
// one address when sameAddr. It checks through check that exactly three
// won (one, for one address) and that the token counts as many uses, and
// returns the nodes stored; check is called after the race (a fresh store
// reads the backend afresh).
func RaceTokenUses(t *testing.T, stores []store.Store, check func() store.Store, sameAddr bool) []store.Node {
	t.Helper()
	want := 3
	if sameAddr {
		want = 1
	}
	put(t, stores[0], func(tx store.Tx) error { return tx.PutToken(store.Token{ID: "aaaaaaaa", MaxUses: 3}) })
	const writers = 20
	errs := make([]error, writers)
	var wg sync.WaitGroup
	errSpent := errors.New("token spent")
	for i := range writers {
		addr := Addr4(i + 1)
		if sameAddr {
			addr = Addr4(1)
		}
		s := stores[i%len(stores)]
		wg.Go(func() {
			errs[i] = s.Update(context.Background(), func(tx store.Tx) error {
				tk, err := tx.Token("aaaaaaaa")
				if err != nil {
					return err
				}
				if tk.Uses >= tk.MaxUses {
					return errSpent
				}
				tk.Uses++
				if err := tx.PutToken(tk); err != nil {
					return err
				}
				return tx.PutNode(store.Node{Key: NodeKey(byte(i + 1)), Name: fmt.Sprintf("n%d", i), Addresses: []netip.Addr{addr}})
			})
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, store.ErrAddrInUse), errors.Is(err, errSpent):
		default:
			t.Errorf("writer %d: %v", i, err)
		}
	}
	var tk store.Token
	var nodes []store.Node
	view(t, check(), func(tx store.Tx) error {
		var err error
		if tk, err = tx.Token("aaaaaaaa"); err != nil {
			return err
		}
		nodes, err = tx.Nodes()
		return err
	})
	if won != want || len(nodes) != want || tk.Uses != want {
		t.Errorf("%d writers over %d stores: %d won, %d nodes stored, token used %d times; want %d each", writers, len(stores), won, len(nodes), tk.Uses, want)
	}
	return nodes
}

// presence: a PresenceKeeper gives back what it saved last, whole, with
// the save time; an empty store has none. Backends that do not keep
// presence skip this.
func presence(t *testing.T, open Open) {
	s := fresh(t, open)
	pk, ok := s.(store.PresenceKeeper)
	if !ok {
		t.Skip("the store does not keep presence")
	}
	ctx := context.Background()
	if p, at, err := pk.LoadPresence(ctx); err != nil || len(p) != 0 || !at.IsZero() {
		t.Fatalf("empty store: %v, %v, %v; want nothing", p, at, err)
	}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	// Many nodes, so that every part of a sharded backend holds some.
	first := store.Presence{}
	for i := range 64 {
		first[NodeKey(byte(i*4+1))] = store.NodePresence{Endpoints: []netip.AddrPort{netip.AddrPortFrom(Addr4(i), 51820), netip.MustParseAddrPort("[2001:db8::1]:4242")},
			Version: fmt.Sprintf("v0.%d.0", i)}
	}
	first[NodeKey(2)] = store.NodePresence{} // online, no endpoints or version reported
	second := store.Presence{NodeKey(5): {Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.5:1")}, Version: "dev"}, NodeKey(9): {}}
	for i, want := range []store.Presence{first, second, {}} {
		at := at.Add(time.Duration(i) * time.Minute)
		if err := pk.SavePresence(ctx, want, at); err != nil {
			t.Fatalf("save %d: %v", i, err)
		}
		got, gotAt, err := pk.LoadPresence(ctx)
		if err != nil {
			t.Fatalf("load %d: %v", i, err)
		}
		if len(got) != len(want) {
			t.Fatalf("save %d: loaded %d nodes, want %d", i, len(got), len(want))
		}
		for k, np := range want {
			g, ok := got[k]
			if !ok || len(g.Endpoints) != len(np.Endpoints) || (len(np.Endpoints) > 0 && !reflect.DeepEqual(g.Endpoints, np.Endpoints)) || g.Version != np.Version {
				t.Errorf("save %d: node %s: got %v (present %v), want %v", i, k.Short(), g, ok, np)
			}
		}
		if !gotAt.Equal(at) {
			t.Errorf("save %d: saved at %v, want %v", i, gotAt, at)
		}
	}
}
