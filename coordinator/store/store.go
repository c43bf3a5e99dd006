// Package store holds the coordinator's durable state: join tokens and the
// node registry. The coordinator talks to it only through Store, so the
// embedded bbolt backend (this package) and a later Kubernetes backend are
// interchangeable.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// Sentinel errors callers test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrAddrInUse: another node holds one of the addresses PutNode was
	// given (another writer allocated it meanwhile). The error is an
	// *AddrInUseError naming the address.
	ErrAddrInUse = errors.New("overlay address in use by another node")
	// ErrUnavailable: the backend cannot be reached (the Kubernetes API
	// server); reads may still be served from memory.
	ErrUnavailable = errors.New("store unavailable")
)

// AddrInUseError is PutNode's error for an address another node holds.
type AddrInUseError struct {
	Addr  netip.Addr
	Node  key.Public // the node that wanted it
	Owner key.Public // the node that holds it
}

func (e *AddrInUseError) Error() string {
	return fmt.Sprintf("put node %s: address %s: %v (node %s)", e.Node.Short(), e.Addr, ErrAddrInUse, e.Owner.Short())
}

// Is makes errors.Is(err, ErrAddrInUse) true.
func (e *AddrInUseError) Is(target error) bool { return target == ErrAddrInUse }

// Token is a stored join token. The secret itself is never stored: only
// its SHA-256.
type Token struct {
	ID         string    // public identifier, also the storage key
	SecretHash [32]byte  // sha256 of the secret part
	CreatedAt  time.Time //
	ExpiresAt  time.Time // zero: never expires
	Reusable   bool      // true: any number of uses until expiry
	MaxUses    int       // >0: the token is used up after this many joins (ignored when Reusable)
	Uses       int       // joins done with this token
	Revoked    bool      //
	Tags       []string  // copied onto nodes that join with it
	// Routes are the prefixes within which routes advertised by nodes
	// joining with this token are approved without an admin.
	Routes []netip.Prefix
	// KubeNode, when set, binds the token to one node: the admin vouches
	// that whoever holds it is this Kubernetes Node (name and pod CIDRs).
	KubeNode string
}

// Node is a registered node.
type Node struct {
	Key       key.Public
	Name      string         // unique within the registry
	Hostname  string         // as the node reported it
	Addresses []netip.Addr   // overlay addresses: one per configured family
	Routes    []netip.Prefix // approved routes (site subnets): routed to this node
	// AdvertisedRoutes is what the node asked for at its last join; those
	// not in Routes wait for an admin's approval.
	AdvertisedRoutes []netip.Prefix
	// KubeNode is the Kubernetes Node this node is verified to be (by a
	// service account token bound to a pod on it, or a token the admin
	// bound to it); that Node's pod CIDRs are routed to this node. Empty:
	// none, whatever the node's name.
	KubeNode  string
	Tags      []string
	CreatedAt time.Time
	LastSeen  time.Time
	TokenID   string // token it joined with
}

// Refresher is a Store whose reads come from a cache that other writers
// can leave behind (the Kubernetes backend); Refresh reloads it whole.
type Refresher interface {
	Refresh(ctx context.Context) error
}

// Tx is one transaction. Methods must not be called after the function
// passed to View or Update returns.
type Tx interface {
	Token(id string) (Token, error) // ErrNotFound
	Tokens() ([]Token, error)       // ordered by ID
	PutToken(t Token) error         // create or replace
	DeleteToken(id string) error    // ErrNotFound

	Node(k key.Public) (Node, error)      // ErrNotFound
	NodeByName(name string) (Node, error) // ErrNotFound
	Nodes() ([]Node, error)               // ordered by Name
	PutNode(n Node) error                 // create or replace; ErrExists if another key holds n.Name, ErrAddrInUse if another holds one of n.Addresses
	DeleteNode(k key.Public) error        // ErrNotFound
}

// Store is the coordinator's durable state. Implementations are safe for
// concurrent use. Update runs fn in a read-write transaction and commits
// only if fn returns nil: an error leaves the store unchanged. A backend
// with optimistic concurrency may run fn more than once, so fn must not
// have side effects outside tx: whatever it needs from outside (an
// allocated address, the time) is decided before Update, and undone by
// the caller if Update fails.
//
// Names and overlay addresses are unique across nodes in every backend:
// PutNode refuses a name or an address another node holds, so two
// writers (two coordinator replicas) can never hand out the same one.
type Store interface {
	View(ctx context.Context, fn func(Tx) error) error
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}
