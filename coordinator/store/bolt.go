package store

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/edgewire/edgewire/types/key"
)

// Bucket names. Every bucket is created when the file is opened.
var (
	bucketTokens = []byte("tokens")     // token ID -> tokenRecord JSON
	bucketNodes  = []byte("nodes")      // 32B node key -> nodeRecord JSON
	bucketNames  = []byte("node-names") // node name -> 32B node key
	bucketAddrs  = []byte("node-addrs") // overlay address (text) -> 32B node key
	bucketMisc   = []byte("misc")       // keyPresence -> EncodePresence
)

var keyPresence = []byte("presence")

// schemaVersion is written into every record as "v". Records with a
// higher version come from a newer build and are refused, not misread.
const schemaVersion = 1

// batchDelay is how long a write waits for concurrent writes to share its
// transaction (bbolt's default is 10 ms).
const batchDelay = 2 * time.Millisecond

// openTimeout bounds the wait for bbolt's file lock, so a second process
// fails fast instead of hanging.
const openTimeout = time.Second

// ErrLocked means another process holds the database file open.
var ErrLocked = errors.New("database is locked by another process")

// Bolt is a Store kept in one bbolt file.
type Bolt struct {
	db *bolt.DB
}

var (
	_ Store          = (*Bolt)(nil)
	_ PresenceKeeper = (*Bolt)(nil)
)

// OpenBolt opens or creates the bbolt file at path (mode 0600).
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (waited %s)", path, ErrLocked, openTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		indexed := tx.Bucket(bucketAddrs) != nil
		for _, name := range [][]byte{bucketTokens, bucketNodes, bucketNames, bucketAddrs, bucketMisc} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if !indexed {
			// A file from a build before the address index.
			return indexAddrs(tx)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	return &Bolt{db: db}, nil
}

// View runs fn in a read-only transaction.
func (b *Bolt) View(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Update runs fn in a read-write transaction, committed only if fn
// returns nil. Concurrent calls share one transaction and one fsync
// (bbolt's Batch): a burst of joins costs one disk flush, not one each. If
// one fn fails, the others are run again without it and it is run again
// alone, which is why the Store contract wants fn free of side effects.
func (b *Bolt) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Batch(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// SavePresence keeps p in the file (one value, replaced whole), so the
// coordinator restarted on it starts with the fleet it had.
func (b *Bolt) SavePresence(ctx context.Context, p Presence, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v := EncodePresence(p, at)
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMisc).Put(keyPresence, v) })
}

// LoadPresence returns what SavePresence kept last.
func (b *Bolt) LoadPresence(ctx context.Context) (Presence, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	p := Presence{}
	var at time.Time
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMisc).Get(keyPresence)
		if v == nil {
			return nil
		}
		var err error
		at, err = DecodePresence(v, p)
		return err
	})
	if err != nil {
		return Presence{}, time.Time{}, fmt.Errorf("load presence: %w", err)
	}
	return p, at, nil
}

// Close releases the file and its lock.
func (b *Bolt) Close() error {
	return b.db.Close()
}

// boltTx adapts a bbolt transaction to Tx.
type boltTx struct {
	tx *bolt.Tx
}

var _ Tx = boltTx{}

// tokenRecord is the stored form of Token.
type tokenRecord struct {
	V          int            `json:"v"`
	ID         string         `json:"id"`
	SecretHash string         `json:"secret_hash"` // hex
	CreatedAt  time.Time      `json:"created_at"`
	ExpiresAt  time.Time      `json:"expires_at"`
	Reusable   bool           `json:"reusable,omitempty"`
	MaxUses    int            `json:"max_uses,omitempty"`
	Uses       int            `json:"uses,omitempty"`
	Revoked    bool           `json:"revoked,omitempty"`
	Tags       []string       `json:"tags,omitempty"`
	Routes     []netip.Prefix `json:"routes,omitempty"`
	KubeNode   string         `json:"kube_node,omitempty"`
}

// nodeRecord is the stored form of Node.
type nodeRecord struct {
	V          int            `json:"v"`
	Key        key.Public     `json:"key"`
	Name       string         `json:"name"`
	Hostname   string         `json:"hostname,omitempty"`
	Addresses  []netip.Addr   `json:"addresses,omitempty"`
	Routes     []netip.Prefix `json:"routes,omitempty"`
	Tags       []string       `json:"tags,omitempty"`
	CreatedAt  time.Time      `json:"created_at"`
	LastSeen   time.Time      `json:"last_seen"`
	TokenID    string         `json:"token_id,omitempty"`
	Advertised []netip.Prefix `json:"advertised_routes,omitempty"`
	KubeNode   string         `json:"kube_node,omitempty"`
}

// decode unmarshals a record and checks its schema version.
func decode(what string, data []byte, v any, version func() int) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	switch got := version(); {
	case got > schemaVersion:
		return fmt.Errorf("decode %s: schema version %d is newer than this build supports (%d); upgrade edgewire", what, got, schemaVersion)
	case got < 1:
		return fmt.Errorf("decode %s: missing or invalid schema version %d", what, got)
	}
	return nil
}

func decodeToken(data []byte) (Token, error) {
	var r tokenRecord
	if err := decode("token", data, &r, func() int { return r.V }); err != nil {
		return Token{}, err
	}
	t := Token{
		ID:        r.ID,
		CreatedAt: r.CreatedAt,
		ExpiresAt: r.ExpiresAt,
		Reusable:  r.Reusable,
		MaxUses:   r.MaxUses,
		Uses:      r.Uses,
		Revoked:   r.Revoked,
		Tags:      r.Tags,
		Routes:    r.Routes,
		KubeNode:  r.KubeNode,
	}
	h, err := hex.DecodeString(r.SecretHash)
	if err != nil || len(h) != len(t.SecretHash) {
		return Token{}, fmt.Errorf("decode token %s: bad secret hash", r.ID)
	}
	copy(t.SecretHash[:], h)
	return t, nil
}

func decodeNode(data []byte) (Node, error) {
	var r nodeRecord
	if err := decode("node", data, &r, func() int { return r.V }); err != nil {
		return Node{}, err
	}
	return Node{
		Key:              r.Key,
		Name:             r.Name,
		Hostname:         r.Hostname,
		Addresses:        r.Addresses,
		Routes:           r.Routes,
		Tags:             r.Tags,
		CreatedAt:        r.CreatedAt,
		LastSeen:         r.LastSeen,
		TokenID:          r.TokenID,
		AdvertisedRoutes: r.Advertised,
		KubeNode:         r.KubeNode,
	}, nil
}

func (t boltTx) Token(id string) (Token, error) {
	data := t.tx.Bucket(bucketTokens).Get([]byte(id))
	if data == nil {
		return Token{}, fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	return decodeToken(data)
}

func (t boltTx) Tokens() ([]Token, error) {
	var out []Token
	err := t.tx.Bucket(bucketTokens).ForEach(func(_, v []byte) error {
		tok, err := decodeToken(v)
		if err != nil {
			return err
		}
		out = append(out, tok)
		return nil
	})
	return out, err
}

func (t boltTx) PutToken(tok Token) error {
	if tok.ID == "" {
		return errors.New("put token: empty ID")
	}
	data, err := json.Marshal(tokenRecord{
		V:          schemaVersion,
		ID:         tok.ID,
		SecretHash: hex.EncodeToString(tok.SecretHash[:]),
		CreatedAt:  tok.CreatedAt,
		ExpiresAt:  tok.ExpiresAt,
		Reusable:   tok.Reusable,
		MaxUses:    tok.MaxUses,
		Uses:       tok.Uses,
		Revoked:    tok.Revoked,
		Tags:       tok.Tags,
		Routes:     tok.Routes,
		KubeNode:   tok.KubeNode,
	})
	if err != nil {
		return fmt.Errorf("put token %s: %w", tok.ID, err)
	}
	if err := t.tx.Bucket(bucketTokens).Put([]byte(tok.ID), data); err != nil {
		return fmt.Errorf("put token %s: %w", tok.ID, err)
	}
	return nil
}

func (t boltTx) DeleteToken(id string) error {
	b := t.tx.Bucket(bucketTokens)
	if b.Get([]byte(id)) == nil {
		return fmt.Errorf("delete token %s: %w", id, ErrNotFound)
	}
	if err := b.Delete([]byte(id)); err != nil {
		return fmt.Errorf("delete token %s: %w", id, err)
	}
	return nil
}

func (t boltTx) Node(nk key.Public) (Node, error) {
	data := t.tx.Bucket(bucketNodes).Get(nk[:])
	if data == nil {
		return Node{}, fmt.Errorf("node %s: %w", nk, ErrNotFound)
	}
	return decodeNode(data)
}

func (t boltTx) NodeByName(name string) (Node, error) {
	k := t.tx.Bucket(bucketNames).Get([]byte(name))
	if k == nil {
		return Node{}, fmt.Errorf("node %q: %w", name, ErrNotFound)
	}
	nk, err := indexKey(name, k)
	if err != nil {
		return Node{}, err
	}
	return t.Node(nk)
}

// Nodes walks the name index, so nodes come back ordered by name.
func (t boltTx) Nodes() ([]Node, error) {
	var out []Node
	err := t.tx.Bucket(bucketNames).ForEach(func(name, k []byte) error {
		nk, err := indexKey(string(name), k)
		if err != nil {
			return err
		}
		n, err := t.Node(nk)
		if err != nil {
			return fmt.Errorf("name index for %q: %w", name, err)
		}
		out = append(out, n)
		return nil
	})
	return out, err
}

func (t boltTx) PutNode(n Node) error {
	if n.Name == "" {
		return fmt.Errorf("put node %s: empty name", n.Key)
	}
	names := t.tx.Bucket(bucketNames)
	nodes := t.tx.Bucket(bucketNodes)
	addrs := t.tx.Bucket(bucketAddrs)
	if owner := names.Get([]byte(n.Name)); owner != nil && string(owner) != string(n.Key[:]) {
		return fmt.Errorf("put node %s: name %q: %w", n.Key, n.Name, ErrExists)
	}
	for _, a := range n.Addresses {
		if owner := addrs.Get([]byte(a.String())); owner != nil && string(owner) != string(n.Key[:]) {
			e := &AddrInUseError{Addr: a, Node: n.Key}
			copy(e.Owner[:], owner)
			return e
		}
	}
	// A rename frees the old name, a changed address the old address.
	if old := nodes.Get(n.Key[:]); old != nil {
		prev, err := decodeNode(old)
		if err != nil {
			return fmt.Errorf("put node %s: %w", n.Key, err)
		}
		if prev.Name != n.Name {
			if err := names.Delete([]byte(prev.Name)); err != nil {
				return fmt.Errorf("put node %s: %w", n.Key, err)
			}
		}
		for _, a := range prev.Addresses {
			if !slices.Contains(n.Addresses, a) {
				if err := deleteOwned(addrs, a.String(), n.Key); err != nil {
					return fmt.Errorf("put node %s: %w", n.Key, err)
				}
			}
		}
	}
	data, err := json.Marshal(nodeRecord{
		V:          schemaVersion,
		Key:        n.Key,
		Name:       n.Name,
		Hostname:   n.Hostname,
		Addresses:  n.Addresses,
		Routes:     n.Routes,
		Tags:       n.Tags,
		CreatedAt:  n.CreatedAt,
		LastSeen:   n.LastSeen,
		TokenID:    n.TokenID,
		Advertised: n.AdvertisedRoutes,
		KubeNode:   n.KubeNode,
	})
	if err != nil {
		return fmt.Errorf("put node %s: %w", n.Key, err)
	}
	if err := nodes.Put(n.Key[:], data); err != nil {
		return fmt.Errorf("put node %s: %w", n.Key, err)
	}
	if err := names.Put([]byte(n.Name), n.Key[:]); err != nil {
		return fmt.Errorf("put node %s: %w", n.Key, err)
	}
	for _, a := range n.Addresses {
		if err := addrs.Put([]byte(a.String()), n.Key[:]); err != nil {
			return fmt.Errorf("put node %s: %w", n.Key, err)
		}
	}
	return nil
}

func (t boltTx) DeleteNode(nk key.Public) error {
	nodes := t.tx.Bucket(bucketNodes)
	data := nodes.Get(nk[:])
	if data == nil {
		return fmt.Errorf("delete node %s: %w", nk, ErrNotFound)
	}
	n, err := decodeNode(data)
	if err != nil {
		return fmt.Errorf("delete node %s: %w", nk, err)
	}
	if err := t.tx.Bucket(bucketNames).Delete([]byte(n.Name)); err != nil {
		return fmt.Errorf("delete node %s: %w", nk, err)
	}
	for _, a := range n.Addresses {
		if err := deleteOwned(t.tx.Bucket(bucketAddrs), a.String(), nk); err != nil {
			return fmt.Errorf("delete node %s: %w", nk, err)
		}
	}
	if err := nodes.Delete(nk[:]); err != nil {
		return fmt.Errorf("delete node %s: %w", nk, err)
	}
	return nil
}

// indexKey converts a name-index value to a node key.
func indexKey(name string, v []byte) (key.Public, error) {
	var k key.Public
	if len(v) != len(k) {
		return k, fmt.Errorf("name index for %q: corrupt key of %d bytes", name, len(v))
	}
	copy(k[:], v)
	return k, nil
}

// deleteOwned deletes an index entry if nk holds it.
func deleteOwned(b *bolt.Bucket, k string, nk key.Public) error {
	if owner := b.Get([]byte(k)); string(owner) != string(nk[:]) {
		return nil
	}
	return b.Delete([]byte(k))
}

// indexAddrs fills the address index from the nodes. Two nodes with one
// address (possible only in a file written before the index) are left to
// the coordinator, which reports and skips the second when it loads.
func indexAddrs(tx *bolt.Tx) error {
	addrs := tx.Bucket(bucketAddrs)
	return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
		n, err := decodeNode(v)
		if err != nil {
			return err
		}
		for _, a := range n.Addresses {
			if addrs.Get([]byte(a.String())) == nil {
				if err := addrs.Put([]byte(a.String()), k); err != nil {
					return fmt.Errorf("index address %s: %w", a, err)
				}
			}
		}
		return nil
	})
}
