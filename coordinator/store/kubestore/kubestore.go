// Package kubestore is a store.Store kept in the Kubernetes API: nodes,
// join tokens and uniqueness claims as custom resources in one namespace
// (crds.yaml), so coordinator replicas share their state through the API
// server and its etcd.
//
// The API server has no transactions across objects. Update runs fn
// against a cache, then writes what fn changed with optimistic
// concurrency, in an order that keeps every invariant at every step:
//
//  1. claims: one EdgewireClaim per node name and overlay address, created
//     (never updated), so two writers cannot both hold one;
//  2. tokens, with the resourceVersion they were read at, so concurrent
//     joins cannot overspend a token's uses;
//  3. nodes, likewise;
//  4. claims the writes freed are deleted.
//
// A conflict at any step (another writer got there first) undoes the
// steps before it, refreshes what conflicted and runs fn again. A writer
// that dies between steps leaves at worst claims no node holds, which the
// next writer that needs one deletes, or a token use spent on a join that
// did not finish: never a name or address held twice, never a token used
// more than its limit.
//
// Reads come from the cache: loaded by Open (one list per resource) and
// kept by this store's own writes. A coordinator is its store's only
// writer while it leads (see docs/architecture.md); what another writer
// or a hand edit changed shows up as a conflict, which refreshes the
// object. Objects that do not decode (a hand edit into nonsense) are
// reported, counted and treated as absent; a write to one replaces it.
//
// The store also keeps the fleet's presence for the next leader
// (store.PresenceKeeper) in EdgewirePresence shards: not part of the
// transactions, written by server-side apply (presence.go).
package kubestore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/types/key"
)

// CRDs is the CustomResourceDefinitions the store needs, as YAML.
//
//go:embed crds.yaml
var CRDs []byte

const (
	// maxAttempts bounds how often Update runs fn after conflicts.
	maxAttempts = 8
	// listPage is the objects per list call: a page of EdgewireNodes is
	// about a megabyte.
	listPage = 2000
	// callTimeout bounds each API call, so an API server that stopped
	// answering fails a write in seconds rather than hanging a join.
	callTimeout = 10 * time.Second
)

// Config configures a Store.
type Config struct {
	Client    dynamic.Interface
	Namespace string
	Logger    *slog.Logger
}

// Store is a store.Store in the Kubernetes API.
type Store struct {
	cfg Config
	log *slog.Logger

	// The cache is written with both mu and rmu held, and read with
	// either: Update (holding mu) reads it freely, View takes rmu.
	mu  sync.Mutex // serializes Update
	rmu sync.RWMutex
	c   cache

	rejected atomic.Uint64
	presence presenceState
}

var _ store.Store = (*Store)(nil)

// Open loads the namespace's objects into a new Store.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Client == nil || cfg.Namespace == "" {
		return nil, errors.New("kubestore: a client and a namespace are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{cfg: cfg, log: cfg.Logger}
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

var _ store.Refresher = (*Store)(nil)

// Refresh reloads the cache from the API server: what other writers did
// since it was loaded (another replica's joins) becomes visible.
func (s *Store) Refresh(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load(ctx)
}

// Rejected counts objects that did not decode, since Open.
func (s *Store) Rejected() uint64 { return s.rejected.Load() }

// load lists every resource into a fresh cache: the three lists at once
// (a new leader's takeover waits for them), each in pages.
func (s *Store) load(ctx context.Context) error {
	c := newCache()
	lists := []struct {
		what string
		add  func(*unstructured.Unstructured)
	}{
		{"edgewirenodes", func(u *unstructured.Unstructured) {
			nk, e := s.nodeFrom(u)
			c.nodes[nk] = e
		}},
		{"edgewiretokens", func(u *unstructured.Unstructured) { c.tokens[u.GetName()] = s.tokenFrom(u) }},
		{"edgewireclaims", func(u *unstructured.Unstructured) { c.setClaim(u.GetName(), s.claimFrom(u)) }},
	}
	got := make([][]unstructured.Unstructured, len(lists))
	errs := make([]error, len(lists))
	var wg sync.WaitGroup
	for i, r := range lists {
		wg.Go(func() { got[i], errs[i] = s.list(ctx, r.what) })
	}
	wg.Wait()
	for i, r := range lists {
		if errs[i] != nil {
			return errs[i]
		}
		for j := range got[i] {
			r.add(&got[i][j])
		}
	}
	c.reindex(s.log)
	s.rmu.Lock()
	s.c = *c
	s.rmu.Unlock()
	return nil
}

// list returns every object of one resource in the namespace.
func (s *Store) list(ctx context.Context, resource string) ([]unstructured.Unstructured, error) {
	gvr := nodesGVR
	gvr.Resource = resource
	var out []unstructured.Unstructured
	cont := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		l, err := s.cfg.Client.Resource(gvr).Namespace(s.cfg.Namespace).List(cctx, metav1.ListOptions{Limit: listPage, Continue: cont})
		cancel()
		if err != nil {
			return nil, s.apiErr("list "+resource, err)
		}
		out = append(out, l.Items...)
		if cont = l.GetContinue(); cont == "" {
			return out, nil
		}
	}
}

func (s *Store) reject(kind, name string, err error) {
	s.rejected.Add(1)
	s.log.Error("ignoring a stored object that does not decode; fix or delete it", "kind", kind, "object", name, "err", err)
}

func (s *Store) nodeFrom(u *unstructured.Unstructured) (key.Public, nodeEntry) {
	n, err := decodeNode(u)
	if err != nil {
		s.reject(kindNode, u.GetName(), err)
		nk, _ := parseNodeObjectName(u.GetName())
		return nk, nodeEntry{rv: u.GetResourceVersion(), bad: true}
	}
	return n.Key, nodeEntry{n: n, rv: u.GetResourceVersion()}
}

func (s *Store) tokenFrom(u *unstructured.Unstructured) tokenEntry {
	t, err := decodeToken(u)
	if err != nil {
		s.reject(kindToken, u.GetName(), err)
		return tokenEntry{rv: u.GetResourceVersion(), bad: true}
	}
	return tokenEntry{t: t, rv: u.GetResourceVersion()}
}

func (s *Store) claimFrom(u *unstructured.Unstructured) claimEntry {
	h, err := decodeClaim(u)
	if err != nil {
		s.reject(kindClaim, u.GetName(), err)
		return claimEntry{rv: u.GetResourceVersion(), bad: true}
	}
	return claimEntry{holder: h, rv: u.GetResourceVersion()}
}

// apiErr wraps err as ErrUnavailable when the API server could not be
// reached or did not answer.
func (s *Store) apiErr(what string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || apierrors.IsServerTimeout(err) ||
		apierrors.IsTimeout(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) {
		return fmt.Errorf("%s: %w (Kubernetes API server): %v", what, store.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// View runs fn against the cache.
func (s *Store) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	return fn(&tx{c: &s.c})
}

// Update runs fn and writes what it changed (see the package comment).
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		t := &tx{c: &s.c, write: true, s: s, ctx: ctx}
		err := fn(t)
		if err == nil {
			err = t.err // a read-through that failed
		}
		if err != nil {
			return err
		}
		err = s.commit(ctx, t)
		var c *conflict
		if !errors.As(err, &c) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("kubestore: still conflicting after %d attempts: %w", attempt, err)
		}
		s.log.Debug("write conflict; refreshing and running the transaction again", "object", c.name, "attempt", attempt)
		if err := s.refresh(ctx, c); err != nil {
			return err
		}
	}
}

// Close does nothing: the store holds no connection of its own.
func (s *Store) Close() error { return nil }

// conflict: an object changed under a write (another writer).
type conflict struct {
	kind, name string
	err        error
}

func (c *conflict) Error() string {
	return fmt.Sprintf("%s %s changed meanwhile: %v", c.kind, c.name, c.err)
}

// refresh reads what a conflict was about into the cache: the object,
// and for a claim the node holding it.
func (s *Store) refresh(ctx context.Context, c *conflict) error {
	switch c.kind {
	case kindNode:
		nk, err := parseNodeObjectName(c.name)
		if err != nil {
			return err
		}
		return s.refreshNode(ctx, nk)
	case kindToken:
		return s.fetchToken(ctx, c.name)
	case kindClaim:
		return s.refreshClaim(ctx, c.name)
	}
	return fmt.Errorf("kubestore: conflict on unknown kind %s", c.kind)
}

// fetchToken reads one token into the cache. Called with mu held.
func (s *Store) fetchToken(ctx context.Context, id string) error {
	u, err := s.get(ctx, tokensGVR, id)
	if err != nil {
		return err
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if u == nil {
		delete(s.c.tokens, id)
	} else {
		s.c.tokens[id] = s.tokenFrom(u)
	}
	return nil
}

// refreshClaim reads a claim and the node holding it into the cache.
// Called with mu held.
func (s *Store) refreshClaim(ctx context.Context, name string) error {
	u, err := s.get(ctx, claimsGVR, name)
	if err != nil {
		return err
	}
	var holder key.Public
	s.rmu.Lock()
	if u == nil {
		s.c.dropClaim(name)
	} else {
		e := s.claimFrom(u)
		s.c.setClaim(name, e)
		holder = e.holder
	}
	s.rmu.Unlock()
	if holder.IsZero() {
		return nil
	}
	return s.refreshNode(ctx, holder)
}

// refreshNode reads one node into the cache. Called with mu held.
func (s *Store) refreshNode(ctx context.Context, nk key.Public) error {
	u, err := s.get(ctx, nodesGVR, nodeObjectName(nk))
	if err != nil {
		return err
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if u == nil {
		s.c.dropNode(nk)
	} else if k, e := s.nodeFrom(u); k == nk {
		s.c.setNode(nk, e, s.log)
	}
	return nil
}

// get reads one object; nil if it does not exist.
func (s *Store) get(ctx context.Context, gvr schema.GroupVersionResource, name string) (*unstructured.Unstructured, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	u, err := s.cfg.Client.Resource(gvr).Namespace(s.cfg.Namespace).Get(cctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, s.apiErr("get "+gvr.Resource+" "+name, err)
	}
	return u, nil
}
