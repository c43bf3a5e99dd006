package kubestore

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// tx is a transaction: reads see the cache with this transaction's own
// writes laid over it; writes are buffered until commit.
type tx struct {
	c     *cache
	write bool
	// A write transaction reads through to the API server what the
	// cache lacks (another writer created it since the cache was loaded);
	// err keeps the first failure of such a read.
	s   *Store
	ctx context.Context
	err error
	// buffered writes; a nil value is a delete
	nodes  map[key.Public]*store.Node
	tokens map[string]*store.Token
}

var _ store.Tx = (*tx)(nil)

func (t *tx) writable(what string) error {
	if !t.write {
		return fmt.Errorf("kubestore: %s in a read-only transaction", what)
	}
	if t.nodes == nil {
		t.nodes = map[key.Public]*store.Node{}
		t.tokens = map[string]*store.Token{}
	}
	return nil
}

func (t *tx) Token(id string) (store.Token, error) {
	if b, ok := t.tokens[id]; ok {
		if b == nil {
			return store.Token{}, fmt.Errorf("token %s: %w", id, store.ErrNotFound)
		}
		return cloneToken(*b), nil
	}
	if e, ok := t.c.tokens[id]; ok && !e.bad {
		return cloneToken(e.t), nil
	} else if !ok && t.write && t.readThrough(func() error { return t.s.fetchToken(t.ctx, id) }) {
		if e, ok := t.c.tokens[id]; ok && !e.bad {
			return cloneToken(e.t), nil
		}
	}
	return store.Token{}, fmt.Errorf("token %s: %w", id, store.ErrNotFound)
}

// readThrough runs fetch, noting a failure; it reports success.
func (t *tx) readThrough(fetch func() error) bool {
	if t.err != nil {
		return false
	}
	if err := fetch(); err != nil {
		t.err = err
		return false
	}
	return true
}

func (t *tx) Tokens() ([]store.Token, error) {
	var out []store.Token
	for id, e := range t.c.tokens {
		if _, ok := t.tokens[id]; !ok && !e.bad {
			out = append(out, cloneToken(e.t))
		}
	}
	for _, b := range t.tokens {
		if b != nil {
			out = append(out, cloneToken(*b))
		}
	}
	slices.SortFunc(out, func(a, b store.Token) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func (t *tx) PutToken(tk store.Token) error {
	if err := t.writable("PutToken"); err != nil {
		return err
	}
	if !validTokenID(tk.ID) {
		return fmt.Errorf("put token: ID %q is not 1-63 lower-case letters and digits", tk.ID)
	}
	tk = cloneToken(tk)
	t.tokens[tk.ID] = &tk
	return nil
}

func (t *tx) DeleteToken(id string) error {
	if err := t.writable("DeleteToken"); err != nil {
		return err
	}
	if _, err := t.Token(id); err != nil {
		return fmt.Errorf("delete %w", err)
	}
	t.tokens[id] = nil
	return nil
}

func (t *tx) Node(k key.Public) (store.Node, error) {
	if b, ok := t.nodes[k]; ok {
		if b == nil {
			return store.Node{}, fmt.Errorf("node %s: %w", k, store.ErrNotFound)
		}
		return cloneNode(*b), nil
	}
	if e, ok := t.c.nodes[k]; ok && !e.bad {
		return cloneNode(e.n), nil
	} else if !ok && t.write && t.readThrough(func() error { return t.s.refreshNode(t.ctx, k) }) {
		if e, ok := t.c.nodes[k]; ok && !e.bad {
			return cloneNode(e.n), nil
		}
	}
	return store.Node{}, fmt.Errorf("node %s: %w", k, store.ErrNotFound)
}

func (t *tx) NodeByName(name string) (store.Node, error) {
	for _, b := range t.nodes {
		if b != nil && b.Name == name {
			return cloneNode(*b), nil
		}
	}
	k, ok := t.c.byName[name]
	if !ok && t.write && t.readThrough(func() error { return t.s.refreshClaim(t.ctx, nameClaim(name)) }) {
		k, ok = t.c.byName[name]
	}
	if ok {
		if _, changed := t.nodes[k]; !changed {
			return cloneNode(t.c.nodes[k].n), nil
		}
	}
	return store.Node{}, fmt.Errorf("node %q: %w", name, store.ErrNotFound)
}

// addrHolder returns the node holding a, if any.
func (t *tx) addrHolder(a netip.Addr) (key.Public, bool) {
	for k, b := range t.nodes {
		if b != nil && slices.Contains(b.Addresses, a) {
			return k, true
		}
	}
	if k, ok := t.c.byAddr[a]; ok {
		if _, changed := t.nodes[k]; !changed {
			return k, true
		}
	}
	return key.Public{}, false
}

func (t *tx) Nodes() ([]store.Node, error) {
	var out []store.Node
	for k, e := range t.c.nodes {
		if _, ok := t.nodes[k]; !ok && !e.bad {
			out = append(out, cloneNode(e.n))
		}
	}
	for _, b := range t.nodes {
		if b != nil {
			out = append(out, cloneNode(*b))
		}
	}
	slices.SortFunc(out, func(a, b store.Node) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

func (t *tx) PutNode(n store.Node) error {
	if err := t.writable("PutNode"); err != nil {
		return err
	}
	if n.Name == "" {
		return fmt.Errorf("put node %s: empty name", n.Key)
	}
	if other, err := t.NodeByName(n.Name); err == nil && other.Key != n.Key {
		return fmt.Errorf("put node %s: name %q: %w", n.Key, n.Name, store.ErrExists)
	}
	for i, a := range n.Addresses {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || slices.Contains(n.Addresses[:i], a) {
			return fmt.Errorf("put node %s: bad overlay address %v", n.Key, a)
		}
		if h, ok := t.addrHolder(a); ok && h != n.Key {
			return &store.AddrInUseError{Addr: a, Node: n.Key, Owner: h}
		}
	}
	n = cloneNode(n)
	t.nodes[n.Key] = &n
	return nil
}

func (t *tx) DeleteNode(k key.Public) error {
	if err := t.writable("DeleteNode"); err != nil {
		return err
	}
	if _, err := t.Node(k); err != nil {
		return fmt.Errorf("delete %w", err)
	}
	t.nodes[k] = nil
	return nil
}

// validTokenID: a token's ID names its object.
func validTokenID(id string) bool {
	if len(id) == 0 || len(id) > 63 {
		return false
	}
	for _, r := range id {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9') {
			return false
		}
	}
	return true
}

func cloneNode(n store.Node) store.Node {
	n.Addresses = slices.Clone(n.Addresses)
	n.Routes = slices.Clone(n.Routes)
	n.AdvertisedRoutes = slices.Clone(n.AdvertisedRoutes)
	n.Tags = slices.Clone(n.Tags)
	return n
}

func cloneToken(t store.Token) store.Token {
	t.Tags = slices.Clone(t.Tags)
	t.Routes = slices.Clone(t.Routes)
	return t
}

// claimsOf returns the claim object names a node holds.
func claimsOf(n *store.Node) []string {
	if n == nil {
		return nil
	}
	out := []string{nameClaim(n.Name)}
	for _, a := range n.Addresses {
		out = append(out, addrClaim(a))
	}
	return out
}
