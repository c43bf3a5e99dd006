package store

import (
	"context"
	"errors"
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

// TestAddrIndexBuiltOnOpen opens a file from a build before the address
// index: the index is built from the nodes, so their addresses are taken.
func TestAddrIndexBuiltOnOpen(t *testing.T) {
	s, path := openTest(t)
	put(t, s, func(tx Tx) error { return tx.PutNode(testNode(1, "alpha")) })
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAddrs) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	n := testNode(2, "bravo")
	err = s2.Update(context.Background(), func(tx Tx) error { return tx.PutNode(n) })
	if !errors.Is(err, ErrAddrInUse) {
		t.Errorf("another node on alpha's addresses after reopening: got %v, want ErrAddrInUse", err)
	}
}
