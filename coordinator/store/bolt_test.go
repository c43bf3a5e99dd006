package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgewire/edgewire/types/key"
)

func openTest(t *testing.T) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b, path
}

func nodeKey(b byte) key.Public {
	var k key.Public
	for i := range k {
		k[i] = b
	}
	return k
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func testNode(k byte, name string) Node {
	return Node{
		Key:       nodeKey(k),
		Name:      name,
		Hostname:  name + ".example",
		Addresses: []netip.Addr{netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("fd7a:115c::1")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Tags:      []string{"tag:k8s"},
		CreatedAt: t0,
		LastSeen:  t0.Add(time.Minute),
		TokenID:   "0a1b2c3d",
	}
}

func put(t *testing.T, s Store, fn func(Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	tok := Token{
		ID: "0a1b2c3d", SecretHash: [32]byte{1, 2, 3}, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
		MaxUses: 3, Uses: 1, Revoked: true, Tags: []string{"a", "b"},
	}
	minimal := Token{ID: "ffffffff", CreatedAt: t0, Reusable: true}
	n1 := testNode(1, "alpha")
	n2 := Node{Key: nodeKey(2), Name: "beta"} // empty slices and zero times
	put(t, s, func(tx Tx) error {
		for _, tk := range []Token{tok, minimal} {
			if err := tx.PutToken(tk); err != nil {
				return err
			}
		}
		for _, n := range []Node{n1, n2} {
			if err := tx.PutNode(n); err != nil {
				return err
			}
		}
		return nil
	})

	err := s.View(context.Background(), func(tx Tx) error {
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
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOrdering(t *testing.T) {
	s, _ := openTest(t)
	put(t, s, func(tx Tx) error {
		for _, id := range []string{"cccccccc", "aaaaaaaa", "bbbbbbbb"} {
			if err := tx.PutToken(Token{ID: id}); err != nil {
				return err
			}
		}
		// Key order (3,1,2) differs from name order.
		for i, name := range []string{"zulu", "alpha", "mike"} {
			if err := tx.PutNode(Node{Key: nodeKey(byte(3 - i)), Name: name}); err != nil {
				return err
			}
		}
		return nil
	})
	var ids, names []string
	err := s.View(context.Background(), func(tx Tx) error {
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
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"aaaaaaaa", "bbbbbbbb", "cccccccc"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("Tokens order: got %v, want %v", ids, want)
	}
	if want := []string{"alpha", "mike", "zulu"}; !reflect.DeepEqual(names, want) {
		t.Errorf("Nodes order: got %v, want %v", names, want)
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		name    string
		ops     func(tx Tx) error
		wantErr error
		// after the ops: name -> owning key byte (0 means absent)
		wantNames map[string]byte
	}{
		{
			name:      "duplicate name from other key",
			ops:       func(tx Tx) error { return tx.PutNode(Node{Key: nodeKey(2), Name: "alpha"}) },
			wantErr:   ErrExists,
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "same key keeps its name",
			ops:       func(tx Tx) error { return tx.PutNode(Node{Key: nodeKey(1), Name: "alpha", Hostname: "h"}) },
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "rename frees old name",
			ops:       func(tx Tx) error { return tx.PutNode(Node{Key: nodeKey(1), Name: "bravo"}) },
			wantNames: map[string]byte{"alpha": 0, "bravo": 1},
		},
		{
			name: "renamed-away name can be taken",
			ops: func(tx Tx) error {
				if err := tx.PutNode(Node{Key: nodeKey(1), Name: "bravo"}); err != nil {
					return err
				}
				return tx.PutNode(Node{Key: nodeKey(2), Name: "alpha"})
			},
			wantNames: map[string]byte{"alpha": 2, "bravo": 1},
		},
		{
			name:      "delete removes name index",
			ops:       func(tx Tx) error { return tx.DeleteNode(nodeKey(1)) },
			wantNames: map[string]byte{"alpha": 0},
		},
		{
			name:      "delete missing",
			ops:       func(tx Tx) error { return tx.DeleteNode(nodeKey(9)) },
			wantErr:   ErrNotFound,
			wantNames: map[string]byte{"alpha": 1},
		},
		{
			name:      "empty name rejected",
			ops:       func(tx Tx) error { return tx.PutNode(Node{Key: nodeKey(2)}) },
			wantErr:   errAny,
			wantNames: map[string]byte{"alpha": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t)
			put(t, s, func(tx Tx) error { return tx.PutNode(Node{Key: nodeKey(1), Name: "alpha"}) })
			err := s.Update(context.Background(), tt.ops)
			switch {
			case tt.wantErr == errAny && err == nil:
				t.Fatalf("got nil error, want an error")
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			err = s.View(context.Background(), func(tx Tx) error {
				for name, want := range tt.wantNames {
					n, err := tx.NodeByName(name)
					if want == 0 {
						if !errors.Is(err, ErrNotFound) {
							t.Errorf("NodeByName(%q): got %v, want ErrNotFound", name, err)
						}
						continue
					}
					if err != nil || n.Key != nodeKey(want) {
						t.Errorf("NodeByName(%q): got key %v err %v, want key %v", name, n.Key, err, nodeKey(want))
					}
				}
				nodes, err := tx.Nodes()
				if err != nil {
					return err
				}
				live := 0
				for _, w := range tt.wantNames {
					if w != 0 {
						live++
					}
				}
				if len(nodes) != live {
					t.Errorf("Nodes: got %d, want %d", len(nodes), live)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// errAny marks a test case that wants some error, not a particular one.
var errAny = errors.New("any error")

func TestUpdateRollback(t *testing.T) {
	s, _ := openTest(t)
	put(t, s, func(tx Tx) error {
		if err := tx.PutToken(Token{ID: "aaaaaaaa", Uses: 1}); err != nil {
			return err
		}
		return tx.PutNode(Node{Key: nodeKey(1), Name: "alpha"})
	})
	boom := errors.New("boom")
	err := s.Update(context.Background(), func(tx Tx) error {
		tx.PutToken(Token{ID: "aaaaaaaa", Uses: 2})
		tx.PutToken(Token{ID: "bbbbbbbb"})
		tx.PutNode(Node{Key: nodeKey(1), Name: "renamed"})
		tx.PutNode(Node{Key: nodeKey(2), Name: "bravo"})
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: got %v, want %v", err, boom)
	}
	err = s.View(context.Background(), func(tx Tx) error {
		toks, _ := tx.Tokens()
		if len(toks) != 1 || toks[0].Uses != 1 {
			t.Errorf("tokens: got %+v, want one token with Uses 1", toks)
		}
		nodes, _ := tx.Nodes()
		if len(nodes) != 1 || nodes[0].Name != "alpha" {
			t.Errorf("nodes: got %+v, want only alpha", nodes)
		}
		if _, err := tx.NodeByName("renamed"); !errors.Is(err, ErrNotFound) {
			t.Errorf("NodeByName(renamed): got %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestContextCancelled(t *testing.T) {
	s, _ := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	fn := func(Tx) error { ran = true; return nil }
	for name, call := range map[string]func(context.Context, func(Tx) error) error{"View": s.View, "Update": s.Update} {
		t.Run(name, func(t *testing.T) {
			if err := call(ctx, fn); !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
			if ran {
				t.Errorf("fn ran, want not run")
			}
		})
	}
}

func TestReopenPersists(t *testing.T) {
	s, path := openTest(t)
	n := testNode(7, "gamma")
	put(t, s, func(tx Tx) error {
		if err := tx.PutToken(Token{ID: "aaaaaaaa", CreatedAt: t0}); err != nil {
			return err
		}
		return tx.PutNode(n)
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	err = s2.View(context.Background(), func(tx Tx) error {
		if _, err := tx.Token("aaaaaaaa"); err != nil {
			t.Errorf("Token after reopen: got %v, want nil", err)
		}
		got, err := tx.NodeByName("gamma")
		if err != nil || !reflect.DeepEqual(got, n) {
			t.Errorf("NodeByName after reopen: got %+v, %v, want %+v", got, err, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpenFails(t *testing.T) {
	_, path := openTest(t)
	start := time.Now()
	s2, err := OpenBolt(path)
	if err == nil {
		s2.Close()
		t.Fatal("second OpenBolt: got nil error, want locked")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second OpenBolt: got %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second OpenBolt took %v, want about %v", d, openTimeout)
	}
}

func TestFutureSchemaRejected(t *testing.T) {
	s, _ := openTest(t)
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put([]byte("aaaaaaaa"), []byte(`{"v":2,"id":"aaaaaaaa"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.View(context.Background(), func(tx Tx) error {
		_, err := tx.Token("aaaaaaaa")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "schema version 2") {
		t.Errorf("got %v, want schema version error", err)
	}
}

func TestConcurrentUpdates(t *testing.T) {
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
			b, _ := openTest(t)
			errBoom := errors.New("boom")
			errs := make([]error, tt.writers)
			done := make(chan struct{})
			for i := range tt.writers {
				go func() {
					defer func() { done <- struct{}{} }()
					errs[i] = b.Update(context.Background(), func(tx Tx) error {
						if err := tx.PutNode(testNode(byte(i+1), fmt.Sprintf("n%d", i))); err != nil {
							return err
						}
						if i == tt.failing {
							return errBoom
						}
						return nil
					})
				}()
			}
			for range tt.writers {
				<-done
			}
			var nodes []Node
			if err := b.View(context.Background(), func(tx Tx) error {
				var err error
				nodes, err = tx.Nodes()
				return err
			}); err != nil {
				t.Fatal(err)
			}
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
				if tt.failing >= 0 && n.Key == nodeKey(byte(tt.failing+1)) {
					t.Errorf("the failed writer's node %s was stored", n.Name)
				}
			}
		})
	}
}
